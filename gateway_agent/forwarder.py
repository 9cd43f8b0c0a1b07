"""The forwarder: outbox rows to the broker as batches, deleted only on ingest's app ack.

One MQTT connection (aiomqtt; MQTT 5, or 3.1.1 for the embedded demo broker), QoS 1, a
persistent session under a stable client id, TLS with client certificates, and a retained
last will on the status topic. It reconnects forever with capped, jittered backoff.

On every (re)connect the outbox is split at its current `max_seq`:

- **backlog** = everything stored then, including batches that were in flight when the link
  dropped (nothing is deleted without an ack, so they are still there). It drains oldest
  first on the backfill topic at `backfill_rate` readings per second (token bucket), using
  at most three quarters of the in-flight window.
- **live** = rows appended after the connect. They go first, on the readings topic, in
  batches closed by size (`batch_max_readings`) or age (`batch_max_age_s`).

Rows are deleted only when an `Ack` on the ack topic covers them (`Outbox.ack`); a PUBACK
only means the broker has the message in memory. A batch unacked for `ack_timeout_s` is
re-read from the outbox and resent on the backfill topic; ingest deduplicates. At most
`max_inflight_batches` batches wait for an ack (QoS 1 packet ids wrap at 65,535).

Time (batch age, the drain rate, ack timeouts, heartbeats) comes from the injected clock;
the loop itself wakes on `notify()` or every `TICK_S` of real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import ssl
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contracts.topics import ack_topic, backfill_topic, readings_topic, status_topic
from contracts.wire import SCHEMA_VERSION, Batch, ContractError, Reason, decode_ack, encode
from gateway_agent.clock import Clock, SystemClock
from gateway_agent.outbox import Outbox, OutboxRow
from gateway_agent.site import ForwardConfig, TlsConfig

log = logging.getLogger(__name__)

TICK_S: Final = 0.05  # real seconds between looks at the outbox and the timers
BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 10.0
# A PUBACK may be slow while the broker writes a persistence snapshot (seconds for a large
# one); giving up early would only reconnect and resend. A dead link is found by keepalive.
PUBLISH_TIMEOUT_MIN_S: Final = 30.0
STOP_GRACE_S: Final = 2.0  # how long a stop waits for the goodbye status before cancelling

Kind = Literal["live", "backfill"]
_json: Final = msgspec.json.Encoder()


@dataclass
class _InFlight:
    boot_id: uuid.UUID
    seq_first: int
    seq_last: int
    readings: int
    sent_at: float  # forwarder clock


@dataclass(frozen=True, slots=True)
class ForwarderStats:
    """A snapshot for metrics and the heartbeat (plain numbers)."""

    connected: bool
    connects: int
    reconnects: int
    batches_live: int
    batches_backfill: int
    readings_live: int
    readings_backfill: int
    acks: int
    acked_readings: int
    acks_malformed: int
    resends: int
    inflight: int
    inflight_peak: int
    backlog_pending: bool
    last_ack_at: float | None
    errors: int


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client TLS context from the site's TLS settings: server verification against the CA,
    optional client certificate, minimum version (the forward and the MQTT-input broker)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure:  # dev only (the site loader refuses it in prod): certificate still checked
        ctx.check_hostname = False
    return ctx


def _one_boot(rows: list[OutboxRow]) -> list[OutboxRow]:
    """The leading rows of one boot: a batch never mixes boots."""
    boot = rows[0].boot_id
    for i, row in enumerate(rows):
        if row.boot_id != boot:
            return rows[:i]
    return rows


class Forwarder:
    """Publishes outbox rows and applies acks; `run(stop)` until stopped."""

    def __init__(
        self,
        config: ForwardConfig,
        outbox: Outbox,
        *,
        gateway_id: str,
        status: Callable[[], Mapping[str, object]] = dict,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.gateway_id = gateway_id
        self._status = status
        self._clock = clock or SystemClock()
        self._topics = {"live": readings_topic(gateway_id), "backfill": backfill_topic(gateway_id)}
        self._ack_topic = ack_topic(gateway_id)
        self._status_topic = status_topic(gateway_id)
        self._publish_timeout = max(PUBLISH_TIMEOUT_MIN_S, 2.0 * config.keepalive_s)
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None  # the ack listener of the connection
        self._inflight: dict[tuple[uuid.UUID, int], _InFlight] = {}
        n = config.max_inflight_batches
        # Live always has a share of the window; the backlog gets the rest.
        self._backfill_slots = max(1, n - max(1, n // 4)) if n > 1 else 1
        self._backfill_size = max(1, min(config.batch_max_readings, int(config.backfill_rate)))
        # Per connection: set in `_start_session`.
        self._live_cursor = 0
        self._live_since: float | None = None
        self._backlog_upto = 0
        self._backfill_cursor = 0
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._next_status = 0.0
        # Counters.
        self._connected = False
        self._connects = 0
        self._batches = {"live": 0, "backfill": 0}
        self._readings = {"live": 0, "backfill": 0}
        self._acks = 0
        self._acked_readings = 0
        self._acks_malformed = 0
        self._resends = 0
        self._inflight_peak = 0
        self._last_ack_at: float | None = None
        self._errors = 0

    # -- public -----------------------------------------------------------------------------

    def notify(self) -> None:
        """Tell the forwarder rows were appended (call from the event loop's thread)."""
        self._wake.set()

    def stats(self) -> ForwarderStats:
        return ForwarderStats(
            connected=self._connected,
            connects=self._connects,
            reconnects=max(self._connects - 1, 0),
            batches_live=self._batches["live"],
            batches_backfill=self._batches["backfill"],
            readings_live=self._readings["live"],
            readings_backfill=self._readings["backfill"],
            acks=self._acks,
            acked_readings=self._acked_readings,
            acks_malformed=self._acks_malformed,
            resends=self._resends,
            inflight=len(self._inflight),
            inflight_peak=self._inflight_peak,
            backlog_pending=self._backfill_cursor < self._backlog_upto,
            last_ack_at=self._last_ack_at,
            errors=self._errors,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, forward and reconnect until `stop` is set; never raises on broker errors."""
        failures = 0
        while not stop.is_set():
            attempt = asyncio.create_task(self._connect_and_serve(stop))
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({attempt, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not attempt.done():
                # Stopped while connecting or serving: let the session say goodbye.
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(attempt, STOP_GRACE_S)
                return
            served = attempt.result()
            if stop.is_set():
                return
            failures = 0 if served else failures + 1
            delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**failures)
            delay *= random.uniform(0.5, 1.0)  # noqa: S311  # jitter, not cryptography
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    # -- connection -------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        cfg = self.config
        parts = urlsplit(cfg.mqtt_url)
        secure = parts.scheme in {"mqtts", "ssl"} or cfg.tls is not None
        will = aiomqtt.Will(
            self._status_topic,
            _json.encode({"state": "offline", "gateway_id": self.gateway_id, "clean": False}),
            qos=1,
            retain=True,
        )
        common = {
            "hostname": parts.hostname or "127.0.0.1",
            "port": parts.port or (8883 if secure else 1883),
            "username": parts.username,
            "password": parts.password,
            "identifier": cfg.client_id,
            "will": will,
            "keepalive": cfg.keepalive_s,
            "timeout": CONNECT_TIMEOUT_S,
            "tls_context": tls_context(cfg.tls) if cfg.tls is not None else None,
            "max_inflight_messages": cfg.max_inflight_batches + 2,
        }
        if cfg.mqtt5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
            return aiomqtt.Client(
                **common,  # type: ignore[arg-type]
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=props,
            )
        return aiomqtt.Client(
            **common,  # type: ignore[arg-type]
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
        )

    async def _connect_and_serve(self, stop: asyncio.Event) -> bool:
        """One connection's life; True when it got connected (resets the backoff)."""
        connected = False
        try:
            async with self._client() as client:
                connected = True
                await self._serve(client, stop)
        except aiomqtt.MqttError as exc:
            log.warning("mqtt link to %s: %s", self._safe_url(), exc)
        except OSError as exc:  # refused, unreachable, TLS failures (ssl.SSLError)
            log.warning("mqtt connect to %s failed: %s", self._safe_url(), exc)
        except Exception:
            # A forwarder that dies loses no data but stops delivering: log, back off, retry.
            self._errors += 1
            log.exception("forwarder error; reconnecting")
        finally:
            self._connected = False
        return connected

    def _safe_url(self) -> str:
        parts = urlsplit(self.config.mqtt_url)
        return f"{parts.hostname}:{parts.port}"  # no credentials in logs

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        self._connected = True
        self._connects += 1
        await client.subscribe(self._ack_topic, qos=1)
        self._start_session()
        log.info(
            "forwarder connected (%s); backlog up to seq %d",
            "first" if self._connects == 1 else f"reconnect {self._connects - 1}",
            self._backlog_upto,
        )
        listener = self._listener = asyncio.create_task(self._listen(client))
        try:
            await self._publish_status(client, "online")
            while not stop.is_set():
                if listener.done():
                    listener.result()  # re-raise what ended it
                    raise aiomqtt.MqttError("ack subscription ended")
                self._wake.clear()
                await self._pump(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK_S)
            await self._publish_status(client, "offline")
        finally:
            self._listener = None
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listener

    def _start_session(self) -> None:
        # Everything stored now is backlog, in-flight batches of the old link included.
        now = self._clock.now()
        self._inflight.clear()
        self._backlog_upto = self.outbox.max_seq()
        self._backfill_cursor = 0
        self._live_cursor = self._backlog_upto
        self._live_since = None
        self._tokens = float(self._backfill_size)
        self._tokens_at = now
        self._next_status = now + self.config.status_interval_s

    # -- acks -------------------------------------------------------------------------------

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if not message.topic.matches(self._ack_topic):
                continue
            payload = message.payload
            data = payload.encode() if isinstance(payload, str) else payload
            try:
                if not isinstance(data, bytes | bytearray):
                    raise ContractError(Reason.INVALID_JSON, f"payload {type(data).__name__}")
                ack = decode_ack(bytes(data))
            except ContractError as exc:
                self._acks_malformed += 1
                log.warning("ignored a malformed ack (%s)", exc.reason)
                continue
            deleted = await asyncio.to_thread(
                self.outbox.ack, ack.boot_id, ack.from_seq, ack.upto_seq
            )
            self._acks += 1
            self._acked_readings += deleted
            self._last_ack_at = self._clock.now()
            for key, batch in list(self._inflight.items()):
                if (
                    batch.boot_id == ack.boot_id
                    and ack.from_seq <= batch.seq_first
                    and batch.seq_last <= ack.upto_seq
                ):
                    del self._inflight[key]
            if ack.status == "dead_letter":
                log.warning(
                    "ingest dead-lettered seq %d..%d (%s)", ack.from_seq, ack.upto_seq, ack.reason
                )
            self._wake.set()

    # -- sending ----------------------------------------------------------------------------

    async def _pump(self, client: aiomqtt.Client) -> None:
        now = self._clock.now()
        await self._resend_due(client, now)
        while await self._send_live(client, now):
            pass
        await self._send_backfill(client, now)
        if now >= self._next_status:
            self._next_status = now + self.config.status_interval_s
            await self._publish_status(client, "online")

    async def _send_live(self, client: aiomqtt.Client, now: float) -> bool:
        cfg = self.config
        top = self.outbox.max_seq()
        if top <= self._live_cursor:
            self._live_since = None
            return False
        if self._live_since is None:
            self._live_since = now
        full = top - self._live_cursor >= cfg.batch_max_readings  # an upper bound on rows
        if not full and now - self._live_since < cfg.batch_max_age_s:
            return False
        if len(self._inflight) >= cfg.max_inflight_batches:
            return False
        rows = await asyncio.to_thread(self.outbox.read, self._live_cursor, cfg.batch_max_readings)
        if not rows:  # thinned or acked meanwhile
            self._live_cursor = top
            self._live_since = None
            return False
        rows = _one_boot(rows)
        await self._publish(client, rows, "live", now)
        self._live_cursor = rows[-1].reading.seq
        if self._live_cursor >= self.outbox.max_seq():
            self._live_since = None
        return True

    async def _send_backfill(self, client: aiomqtt.Client, now: float) -> None:
        if self._backfill_cursor >= self._backlog_upto:
            return
        if len(self._inflight) >= min(self._backfill_slots, self.config.max_inflight_batches):
            return
        size = self._backfill_size
        self._tokens = min(
            self._tokens + (now - self._tokens_at) * self.config.backfill_rate, float(size)
        )
        self._tokens_at = now
        if self._tokens < size:
            return
        rows = await asyncio.to_thread(
            self.outbox.read, self._backfill_cursor, size, self._backlog_upto
        )
        if not rows:
            self._backfill_cursor = self._backlog_upto
            log.info("backlog drained up to seq %d", self._backlog_upto)
            return
        rows = _one_boot(rows)
        self._tokens -= len(rows)
        await self._publish(client, rows, "backfill", now)
        self._backfill_cursor = rows[-1].reading.seq

    async def _resend_due(self, client: aiomqtt.Client, now: float) -> None:
        timeout = self.config.ack_timeout_s
        for key, batch in list(self._inflight.items()):
            if now - batch.sent_at < timeout or key not in self._inflight:
                continue
            rows = await asyncio.to_thread(
                self.outbox.read,
                batch.seq_first - 1,
                batch.seq_last - batch.seq_first + 1,
                batch.seq_last,
            )
            rows = [r for r in rows if r.boot_id == batch.boot_id]
            self._inflight.pop(key, None)
            if not rows:  # acked through another batch, or thinned
                continue
            self._resends += 1
            log.info(
                "no ack for seq %d..%d after %.0f s: resending on backfill",
                batch.seq_first,
                batch.seq_last,
                timeout,
            )
            await self._publish(client, rows, "backfill", now, resend=True)

    async def _publish(
        self,
        client: aiomqtt.Client,
        rows: Sequence[OutboxRow],
        kind: Kind,
        now: float,
        *,
        resend: bool = False,
    ) -> None:
        readings = [r.reading for r in rows]
        boot_id = rows[0].boot_id
        first, last = readings[0].seq, readings[-1].seq
        batch = Batch(
            v=SCHEMA_VERSION,
            gateway_id=self.gateway_id,
            boot_id=boot_id,
            kind=kind,
            sent_at=dt.datetime.fromtimestamp(now, dt.UTC),
            seq_first=first,
            seq_last=last,
            readings=readings,
        )
        payload = encode(batch)
        # Registered before the publish: an ack may overtake the PUBACK.
        self._inflight[(boot_id, first)] = _InFlight(boot_id, first, last, len(readings), now)
        self._inflight_peak = max(self._inflight_peak, len(self._inflight))
        await self._guarded(
            client.publish(self._topics[kind], payload, qos=1, timeout=self._publish_timeout)
        )
        if not resend:
            self._batches[kind] += 1
            self._readings[kind] += len(readings)

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        body = {
            "state": state,
            "gateway_id": self.gateway_id,
            "ts": dt.datetime.fromtimestamp(self._clock.now(), dt.UTC),
            **self._status(),
        }
        await self._guarded(
            client.publish(
                self._status_topic,
                _json.encode(body),
                qos=1,
                retain=True,
                timeout=self._publish_timeout,
            )
        )

    async def _guarded(self, call: Coroutine[object, object, None]) -> None:
        """Await a publish, but give up as soon as the connection is lost: aiomqtt leaves a
        pending publish waiting for its timeout when the link drops."""
        listener = self._listener
        if listener is None:
            await call
            return
        task = asyncio.ensure_future(call)
        await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
            raise aiomqtt.MqttError("connection lost while publishing")
        task.result()
