"""Reads the site's MQTT-native meters: subscribes to their topics and hands their samples on.

The thin adapter around `site_payloads.extract`. One subscription (QoS 1) per meter topic on
the input broker; each message becomes samples, awaited into `sink` (the outbox), and only
then acknowledged: the PUBACK waits for the sink (paho's manual ack, under aiomqtt), and the
session persists under a stable client id, so a message the gateway had not yet stored is
redelivered after a crash or a lost connection instead of being lost. A sink that fails
drops the connection for the same reason.

A bad payload is logged by topic, length and hash (never its contents: payloads may carry
personal data), counted, acknowledged (redelivering it would not help) and skipped.
The connection is retried forever with capped, jittered exponential backoff.

    inputs = MqttInput(site.input_broker().url, site.mqtt_meters, outbox.append,
                       mqtt5=True, client_id="gw-p001-01-in", clock=SystemClock())
    await inputs.run(stop)   # until stop is set
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway_agent.clock import Clock
from gateway_agent.forwarder import tls_context
from gateway_agent.sample import Sample
from gateway_agent.site import MqttMeter, TlsConfig
from gateway_agent.site_payloads import PayloadError, extract

log = logging.getLogger(__name__)

Sink = Callable[[list[Sample]], Awaitable[None]]


@dataclass
class InputStats:
    """Counters since start, as plain ints (the service exports them as metrics)."""

    connects: int = 0
    connection_losses: int = 0  # includes failed connection attempts
    messages: int = 0
    samples: int = 0
    payload_errors: int = 0  # messages that yielded nothing (see the log for the reason)
    skipped_values: int = 0  # values left out of otherwise good messages
    sink_errors: int = 0
    unknown_topics: int = 0  # messages on a topic no meter of this site has


def reconnect_delay(attempt: int, rng: random.Random, base: float, cap: float) -> float:
    """Seconds before reconnect `attempt` (0, 1, ...): doubling from `base` up to `cap`, the
    upper half jittered so a site's gateways do not reconnect in step after a broker restart.

    >>> rng = random.Random(7)
    >>> 0.5 <= reconnect_delay(0, rng, 1.0, 30.0) <= 1, 4 <= reconnect_delay(3, rng, 1.0, 30.0) <= 8
    (True, True)
    >>> 15 <= reconnect_delay(40, rng, 1.0, 30.0) <= 30
    True
    """
    ceiling = min(cap, base * 2.0 ** min(attempt, 32))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class MqttInput:
    """Subscribes to every meter's topic on the input broker and feeds `sink` with samples."""

    def __init__(
        self,
        url: str,
        meters: Sequence[MqttMeter],
        sink: Sink,
        *,
        mqtt5: bool,
        client_id: str,
        clock: Clock,
        tls: TlsConfig | None = None,
        session_expiry_s: int = 86400,
        keepalive_s: int = 30,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"expected mqtt:// or mqtts:// URL, got {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._tls = tls if tls is not None or parts.scheme == "mqtt" else TlsConfig()
        self._by_topic: dict[str, list[MqttMeter]] = defaultdict(list)
        for meter in meters:
            self._by_topic[meter.topic].append(meter)
        self._sink = sink
        self._mqtt5 = mqtt5
        self._client_id = client_id
        self._clock = clock
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._backoff = (backoff_base_s, backoff_max_s)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.stats = InputStats()
        self.subscribed = asyncio.Event()  # set while subscribed to every topic

    async def run(self, stop: asyncio.Event) -> None:
        """Read messages until `stop` is set, reconnecting whenever the connection is lost."""
        if not self._by_topic:
            await stop.wait()
            return
        attempt = 0
        while not stop.is_set():
            try:
                async with self._client() as client:
                    self.stats.connects += 1
                    attempt = 0
                    await self._session(client, stop)
            except (aiomqtt.MqttError, OSError) as exc:  # OSError: TLS files, sockets
                self.stats.connection_losses += 1
                log.warning("mqtt input %s:%s: %s", self._host, self._port, exc)
            except _SinkError:
                self.stats.connection_losses += 1  # reconnect: the broker redelivers
            finally:
                self.subscribed.clear()
            if stop.is_set():
                break
            delay = reconnect_delay(attempt, self._rng, *self._backoff)
            attempt += 1
            await _until(stop, self._clock.sleep(delay))

    def _client(self) -> aiomqtt.Client:
        if self._mqtt5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self._session_expiry_s
            session: dict[str, object] = {"clean_start": False, "properties": properties}
        else:
            session = {"clean_session": False}
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._username,
            password=self._password,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if self._mqtt5 else aiomqtt.ProtocolVersion.V311,
            keepalive=self._keepalive_s,
            tls_context=tls_context(self._tls) if self._tls is not None else None,
            **session,  # type: ignore[arg-type]  # one of the two session flags per protocol
        )
        # aiomqtt 2.x exposes no manual ack; its paho client does. Holding the PUBACK until
        # the sink has stored the samples is what makes a crash lose nothing.
        client._client.manual_ack_set(True)
        return client

    async def _session(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        for topic in self._by_topic:
            await client.subscribe(topic, qos=1)
        self.subscribed.set()
        log.info("mqtt input subscribed to %d topics", len(self._by_topic))
        await _until(stop, self._consume(client))

    async def _consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._handle(message)
            if message.qos > 0:
                client._client.ack(message.mid, message.qos)

    async def _handle(self, message: aiomqtt.Message) -> None:
        self.stats.messages += 1
        payload = message.payload
        if isinstance(payload, bytes | bytearray):
            data = bytes(payload)
        else:  # aiomqtt hands over str, int, float or None for some payloads
            data = b"" if payload is None else str(payload).encode()
        topic = message.topic.value
        received = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC)
        batch: list[Sample] = []
        meters = self._by_topic.get(topic, ())
        if not meters:  # a subscription left in the persistent session by an older site file
            self.stats.unknown_topics += 1
        for meter in meters:
            out = extract(data, meter, received)
            if isinstance(out, PayloadError):
                self.stats.payload_errors += 1
                log.warning(
                    "mqtt input: meter %s topic %s: %s (%s); payload %d bytes sha256 %s",
                    meter.meter_id, topic, out.reason.value, out.detail, len(data),
                    hashlib.sha256(data).hexdigest()[:16],
                )  # fmt: skip
                continue
            for skipped in out.skipped:
                log.info("mqtt input: meter %s %s skipped: %s (%s)", meter.meter_id,
                         skipped.channel, skipped.reason.value, skipped.detail)  # fmt: skip
            self.stats.skipped_values += len(out.skipped)
            batch.extend(out.samples)
        if not batch:
            return
        try:
            await self._sink(batch)
        except Exception as exc:
            self.stats.sink_errors += 1
            log.exception("mqtt input: sink refused %d samples; reconnecting", len(batch))
            raise _SinkError from exc
        self.stats.samples += len(batch)


class _SinkError(Exception):
    """The sink raised: leave the message unacknowledged and reconnect for redelivery."""


async def _until(stop: asyncio.Event, work: Awaitable[None]) -> None:
    """Run `work` until it ends or `stop` is set (then cancel it); its errors propagate."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled():
        task.result()
