"""A fake ingest for forwarder tests: receives a gateway's batches and publishes app acks.

It decodes every batch with the contract, remembers what arrived on which topic and when, and
acks according to its mode: always, never, only from the n-th delivery of a batch on, or
held back until released (to watch the in-flight window).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from contracts.topics import ack_topic, backfill_topic, readings_topic
from contracts.wire import Ack, Batch, decode_batch, encode
from tests.support.mqtt import client


@dataclass(frozen=True)
class Received:
    topic_kind: str  # "readings" or "backfill"
    batch: Batch
    at: float  # time.monotonic() on arrival


class FakeIngest:
    def __init__(
        self, url: str, gateway_id: str, *, ack: bool = True, ack_from_delivery: int = 1
    ) -> None:
        self.gateway_id = gateway_id
        self.ack_enabled = ack
        self.ack_from_delivery = ack_from_delivery
        self.received: list[Received] = []
        self.acked: set[int] = set()
        self.held: list[tuple[Ack, list[int]]] = []
        self.hold = False
        self._deliveries: dict[tuple[object, int], int] = {}
        self._changed = threading.Condition()
        self._client = client(url, "fake-ingest")
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: subscribed.set()
        # Subscribe again after every reconnect (a killed broker may have lost the session).
        self._client.on_connect = lambda *a: self._subscribe()
        self._subscribe()
        assert subscribed.wait(10), "fake ingest could not subscribe"

    def _subscribe(self) -> None:
        self._client.subscribe(
            [(readings_topic(self.gateway_id), 1), (backfill_topic(self.gateway_id), 1)]
        )

    def _on_message(self, c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        decoded = decode_batch(
            bytes(message.payload),
            topic_gateway_id=self.gateway_id,
            now=dt.datetime.now(dt.UTC),
        )
        assert not decoded.rejected, decoded.rejected
        batch = decoded.batch
        kind = message.topic.rsplit("/", 1)[-1]
        key = (batch.boot_id, batch.seq_first)
        with self._changed:
            self.received.append(Received(kind, batch, time.monotonic()))
            self._deliveries[key] = self._deliveries.get(key, 0) + 1
            deliveries = self._deliveries[key]
            self._changed.notify_all()
        if not self.ack_enabled or deliveries < self.ack_from_delivery:
            return
        ack = Ack(
            v=1,
            boot_id=batch.boot_id,
            from_seq=batch.seq_first,
            upto_seq=batch.seq_last,
            status="stored",
            accepted=len(batch.readings),
        )
        seqs = [r.seq for r in batch.readings]
        with self._changed:
            if self.hold:
                self.held.append((ack, seqs))
                return
        self._send(ack, seqs)

    def _send(self, ack: Ack, seqs: list[int]) -> None:
        self._client.publish(ack_topic(self.gateway_id), encode(ack), qos=1)
        with self._changed:
            self.acked.update(seqs)
            self._changed.notify_all()

    def release(self) -> None:
        """Stop holding acks and send the held ones."""
        with self._changed:
            self.hold = False
            held, self.held = self.held, []
        for ack, seqs in held:
            self._send(ack, seqs)

    def seqs(self, kind: str | None = None) -> set[int]:
        with self._changed:
            return {
                r.seq
                for rec in self.received
                if kind is None or rec.topic_kind == kind
                for r in rec.batch.readings
            }

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
