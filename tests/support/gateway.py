"""A test gateway that behaves as the delivery guarantee requires: it keeps every batch until
ingest's application ack covers it, and resends what is unacknowledged. Enough to drive ingest
through faults before the real agent exists; not the agent."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from contracts.topics import ack_topic, readings_topic
from contracts.wire import Batch, Reading, decode_ack, encode


@dataclass
class GatewayDouble:
    url: str
    code: str
    meters: list[str]
    boot_id: uuid.UUID = field(default_factory=uuid.uuid4)
    resend_after_s: float = 2.0

    def __post_init__(self) -> None:
        self.outbox: dict[int, tuple[bytes, float]] = {}  # seq_first -> (payload, sent_at)
        self.sent: list[Reading] = []
        self.acked_ranges: list[tuple[int, int]] = []
        self._seq = 0
        self._lock = threading.Lock()
        parts = urlsplit(self.url)
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-gw-{self.code}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 2)
        self._client.connect_async(parts.hostname or "127.0.0.1", parts.port or 1883, 10)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, *args: object) -> None:
        client.subscribe(ack_topic(self.code), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        ack = decode_ack(bytes(msg.payload))
        if ack.boot_id != self.boot_id:
            return
        with self._lock:
            for first in [f for f in self.outbox if ack.from_seq <= f <= ack.upto_seq]:
                del self.outbox[first]
            self.acked_ranges.append((ack.from_seq, ack.upto_seq))

    def send(self, ts: dt.datetime, value: float, channel: str = "power_w") -> None:
        """One batch: one reading per meter at `ts`."""
        with self._lock:
            readings = []
            for meter in self.meters:
                readings.append(Reading(meter, channel, ts, value, "W", self._seq))  # type: ignore[arg-type]
                self._seq += 1
            batch = Batch(1, self.code, self.boot_id, "live", dt.datetime.now(dt.UTC),
                          readings[0].seq, readings[-1].seq, readings)  # fmt: skip
            payload = encode(batch)
            self.outbox[batch.seq_first] = (payload, time.monotonic())
            self.sent.extend(readings)
        self._client.publish(readings_topic(self.code), payload, qos=1)

    def resend_due(self, after_s: float | None = None) -> int:
        """Resend batches unacknowledged for `after_s` (default `resend_after_s`)."""
        now = time.monotonic()
        wait = self.resend_after_s if after_s is None else after_s
        with self._lock:
            due = [(f, p) for f, (p, t) in self.outbox.items() if now - t >= wait]
            for first, payload in due:
                self.outbox[first] = (payload, now)
        for _, payload in due:
            self._client.publish(readings_topic(self.code), payload, qos=1)
        return len(due)

    def drain(self, timeout: float = 120.0, resend_after_s: float | None = None) -> None:
        """Resend until everything is acknowledged."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self.outbox:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.outbox)} batches never acknowledged")
            self.resend_due(resend_after_s)
            time.sleep(0.1)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
