"""The ingest worker: take messages, store them, then acknowledge — in that order, always.

One loop, one thread of control over the database: gather a flush (by count, readings or
age), parse it, write it in one transaction, and only after COMMIT send the PUBACKs and the
application acks. If the database is away the loop keeps the flush in hand and retries; it
sends no PUBACK, so the broker stops delivering at `receive_maximum` and memory stays bounded.
"""

from __future__ import annotations

import datetime as dt
import gc
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from psycopg_pool import ConnectionPool, PoolTimeout

from contracts.wire import DEFAULT_BOUNDS, Bounds, Reason
from ingest.consumer import Consumer, Incoming
from ingest.mappings import MeterMapping, topic_matches
from ingest.parse import DEFAULT_SKEW_LIMIT, Parsed, Registry, parse, parse_mapped
from ingest.sink import PreparedFlush, Sink, WriteResult, check_durability, load_registry

log = structlog.get_logger("meterward.ingest")
T = TypeVar("T")

REGISTRY_MISS_REASONS = frozenset({Reason.UNKNOWN_GATEWAY, Reason.UNKNOWN_METER,
                                   Reason.METER_OTHER_PROJECT})  # fmt: skip


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while a flush is parsed and encoded.

    A flush allocates one tracked tuple per reading (tens of thousands), all alive until the
    flush is written. With the collector on, they trigger a young collection every 700
    allocations and, as they pile up, full collections of the whole heap: measured, that
    doubled parse time (2.0 against 0.7 µs a reading with the worker's imports loaded). The
    pause is bounded by one flush, which creates no reference cycles of its own; the next
    allocation after it runs one young collection over what the flush made. Left alone when
    something else has disabled the collector.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True, slots=True)
class IngestConfig:
    max_messages: int = 200  # per flush
    max_readings: int = 50_000  # per flush
    max_age_s: float = 0.05  # a flush waits at most this long for more messages
    registry_refresh_s: float = 60.0
    registry_miss_refresh_s: float = 2.0  # at most this often when a code is unknown
    retry_max_s: float = 5.0  # back-off ceiling while the database is away
    bounds: Bounds = DEFAULT_BOUNDS
    skew_limit: dt.timedelta = DEFAULT_SKEW_LIMIT
    mappings: tuple[MeterMapping, ...] = ()  # self-publishing meters (ingest.mappings)


@dataclass
class IngestMetrics:
    """Prometheus metrics, on a registry of their own (several workers may share a process)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.messages = Counter("ingest_messages", "MQTT messages taken", registry=r)
        self.received = Counter("ingest_readings_received", "readings offered", registry=r)
        self.stored = Counter("ingest_readings_stored", "new rows in readings", registry=r)
        self.duplicates = Counter(
            "ingest_duplicates", "readings already stored (redeliveries)", registry=r
        )
        self.dead = Counter(
            "ingest_dead_letters", "refused batches/readings", ["reason"], registry=r
        )
        self.flush_seconds = Histogram(
            "ingest_flush_seconds", "parse + write + commit per flush", registry=r
        )
        self.commit_latency = Histogram(
            "ingest_receive_to_commit_seconds",
            "from MQTT delivery to COMMIT",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.in_hand = Gauge("ingest_in_hand_messages", "taken, not yet acked", registry=r)
        self.db_errors = Counter("ingest_db_errors", "failed flush attempts", registry=r)
        self.skew = Gauge(
            "ingest_gateway_clock_skew_seconds", "receiver minus gateway clock", ["gateway"],
            registry=r,
        )  # fmt: skip
        self.lag = Gauge(
            "ingest_gateway_lag_seconds", "receiver clock minus newest reading", ["gateway"],
            registry=r,
        )  # fmt: skip


class IngestWorker:
    """Runs until `stop()`; `run()` blocks (call it from the main thread or a worker thread)."""

    def __init__(
        self,
        pool: ConnectionPool,
        consumer: Consumer,
        *,
        config: IngestConfig | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.pool = pool
        self.consumer = consumer
        self.config = config or IngestConfig()
        self.clock = clock
        self.metrics = metrics or IngestMetrics()
        self.sink = Sink(pool)
        self._stop = threading.Event()
        self.end_session_on_stop = False  # tests: leave no persistent session behind
        # Fault tests kill the process at named points ("before_commit", "after_commit").
        self.fault_hook: Callable[[str], None] | None = None
        self._registry: Registry | None = None
        self._registry_loaded_at = 0.0
        self.flushes = 0

    def stop(self) -> None:
        """Finish the flush in hand (store, ack), then return from `run()`."""
        self._stop.set()

    def check_start(self) -> None:
        """Refuse to start on a server that could lose acknowledged data (R8)."""
        with self.pool.connection() as conn:
            check_durability(conn)

    def run(self) -> None:
        self.check_start()
        self.consumer.start()
        log.info("ingest running", max_messages=self.config.max_messages)
        try:
            while not self._stop.is_set():
                batch = self._gather()
                if batch:
                    self._process(batch)
        finally:
            self.consumer.stop(end_session=self.end_session_on_stop)
            log.info("ingest stopped", flushes=self.flushes)

    # ------------------------------------------------------------------ steps
    def _gather(self) -> list[Incoming]:
        cfg = self.config
        try:
            first = self.consumer.messages.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        readings_guess = len(first.payload) // 100
        deadline = time.monotonic() + cfg.max_age_s
        while len(batch) < cfg.max_messages and readings_guess < cfg.max_readings:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                message = self.consumer.messages.get(timeout=remaining)
            except queue.Empty:
                break
            batch.append(message)
            readings_guess += len(message.payload) // 100
        return batch

    def _process(self, batch: list[Incoming]) -> None:
        started = time.monotonic()
        self.metrics.in_hand.set(len(batch))
        with collector_paused():
            parsed = self._parse(batch)
            prepared = self.sink.prepare(parsed)
        result = self._write_until_done(prepared)
        if result is None:
            return  # stopped while the database was away: nothing acked, the broker redelivers
        committed = time.monotonic()
        self._fault("after_commit")
        for message in batch:
            self.consumer.ack(message)
        for p in parsed:
            if p.ack is not None and p.gateway_code is not None:
                self.consumer.publish_ack(p.gateway_code, p.ack)
        self.flushes += 1
        self._record(batch, parsed, result, started, committed)

    def _parse(self, batch: list[Incoming]) -> list[Parsed]:
        now = self.clock()
        registry = self._current_registry()
        parsed = [self._parse_one(m, registry, now) for m in batch]
        # A code we do not know may just be new: look again (rate-limited) before refusing.
        if any(d.reason in REGISTRY_MISS_REASONS for p in parsed for d in p.dead):
            fresh = self._current_registry(miss=True)
            if fresh is not registry:
                parsed = [self._parse_one(m, fresh, now) for m in batch]
        return parsed

    def _parse_one(self, message: Incoming, registry: Registry, now: dt.datetime) -> Parsed:
        cfg = self.config
        for mapping in cfg.mappings:
            if topic_matches(mapping.topic, message.topic):
                return parse_mapped(
                    mapping, message.topic, message.payload, registry=registry, now=now,
                    bounds=cfg.bounds,
                )  # fmt: skip
        return parse(
            message.topic, message.payload, registry=registry, now=now, bounds=cfg.bounds,
            skew_limit=cfg.skew_limit,
        )  # fmt: skip

    def _current_registry(self, *, miss: bool = False) -> Registry:
        age = time.monotonic() - self._registry_loaded_at
        limit = self.config.registry_miss_refresh_s if miss else self.config.registry_refresh_s
        if self._registry is None or age >= limit:
            registry = self._retry(self._load_registry)
            if registry is not None:
                self._registry = registry
                self._registry_loaded_at = time.monotonic()
        if self._registry is None:  # stopped before the database ever answered
            return Registry(gateways={}, meters={})
        return self._registry

    def _load_registry(self) -> Registry:
        with self.pool.connection() as conn:
            return load_registry(conn)

    def _write_until_done(self, prepared: PreparedFlush) -> WriteResult | None:
        return self._retry(
            lambda: self.sink.write_prepared(
                prepared, before_commit=lambda: self._fault("before_commit")
            )
        )

    def _fault(self, point: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point)

    def _retry(self, action: Callable[[], T]) -> T | None:
        """Run `action` until it succeeds; back off while the database is unavailable.

        Returns None only if asked to stop while still failing. Errors other than a lost or
        unreachable server are bugs and propagate.
        """
        delay = 0.1
        while True:
            try:
                return action()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                self.metrics.db_errors.inc()
                log.warning("database unavailable; holding acks", error=str(exc).splitlines()[0])
            if self._stop.wait(delay):
                # Asked to stop: one last try is in the loop above; give up now.
                return None
            delay = min(delay * 2, self.config.retry_max_s)

    def _record(
        self,
        batch: list[Incoming],
        parsed: list[Parsed],
        result: WriteResult,
        started: float,
        committed: float,
    ) -> None:
        m = self.metrics
        m.messages.inc(len(batch))
        m.received.inc(result.staged)
        m.stored.inc(result.stored)
        m.duplicates.inc(result.duplicates)
        m.in_hand.set(0)
        m.flush_seconds.observe(committed - started)
        for message in batch:
            m.commit_latency.observe(committed - message.received_at)
        now = self.clock()
        for p in parsed:
            for dead in p.dead:
                m.dead.labels(reason=str(dead.reason)).inc()
            if p.gateway_code and p.skew is not None:
                m.skew.labels(gateway=p.gateway_code).set(p.skew.total_seconds())
            if p.gateway_code and p.rows:
                newest = max(row[2] for row in p.rows)
                m.lag.labels(gateway=p.gateway_code).set((now - newest).total_seconds())
