"""The ingest worker: take messages, store them, then acknowledge — in that order, always.

One writer, one transaction at a time: gather a flush (by count, readings or age), parse and
encode it, write it in one transaction, and only after COMMIT send the PUBACKs and the
application acks. Gathering, parsing and encoding run on a helper thread one flush ahead of
the writer (see `IngestWorker.run`). If the database is away the writer keeps the flush in
hand and retries; it sends no PUBACK, so the broker stops delivering at `receive_maximum` and
memory stays bounded.
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
class _Flush:
    """Messages taken together, parsed and encoded, not yet written."""

    batch: list[Incoming]
    parsed: list[Parsed]
    prepared: PreparedFlush
    started: float  # time.monotonic() when preparation began


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
        """Prepare flushes on a helper thread; write, commit and ack them on this one.

        Two stages, one flush apart: while flush N is in the database (COPY, accounting,
        COMMIT: the store's CPU, not ours), flush N+1 is gathered, parsed and encoded. There
        is still one writer and one transaction at a time, in the order the flushes were
        gathered, and each flush is acked only after its own COMMIT, so the delivery guarantee
        and the accounting are exactly those of a single loop. At most one prepared flush
        waits, so memory stays bounded by `receive_maximum` as before.
        """
        self.check_start()
        self.consumer.start()
        log.info("ingest running", max_messages=self.config.max_messages)
        handoff: queue.Queue[_Flush] = queue.Queue(maxsize=1)
        writer_done = threading.Event()
        failure: list[BaseException] = []
        preparer = threading.Thread(
            target=self._prepare_loop,
            args=(handoff, writer_done, failure),
            name="ingest-prepare",
            daemon=True,
        )
        preparer.start()
        try:
            while (flush := self._next_flush(handoff, preparer)) is not None:
                if not self._commit_and_ack(flush):
                    break  # stopped while the database was away: nothing more is written
        finally:
            writer_done.set()
            self._stop.set()  # the preparer ends too, whichever side stopped first
            preparer.join()
            self.consumer.stop(end_session=self.end_session_on_stop)
            log.info("ingest stopped", flushes=self.flushes)
        if failure:
            raise failure[0]  # a bug in preparation: surface it as a single loop would have

    @staticmethod
    def _next_flush(handoff: queue.Queue[_Flush], preparer: threading.Thread) -> _Flush | None:
        """The next prepared flush; None once the preparer has ended and handed over all."""
        while True:
            try:
                return handoff.get(timeout=0.1)
            except queue.Empty:
                if not preparer.is_alive():
                    break
        try:  # it may have handed over one last flush just before it ended
            return handoff.get_nowait()
        except queue.Empty:
            return None

    def _prepare_loop(
        self,
        handoff: queue.Queue[_Flush],
        writer_done: threading.Event,
        failure: list[BaseException],
    ) -> None:
        """Gather, parse and encode flushes until stopped; hand each to the writer in order.

        A flush taken from the consumer but never handed over is simply not acked: the broker
        redelivers it (to this session after a restart, or to another worker)."""
        try:
            while not self._stop.is_set():
                batch = self._gather()
                if not batch:
                    continue
                flush = self._prepare(batch)
                while not writer_done.is_set():
                    try:
                        handoff.put(flush, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # noqa: BLE001 - re-raised by run() on the main thread
            failure.append(exc)
            self._stop.set()

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

    def _prepare(self, batch: list[Incoming]) -> _Flush:
        started = time.monotonic()
        with collector_paused():
            parsed = self._parse(batch)
            prepared = self.sink.prepare(parsed)
        return _Flush(batch, parsed, prepared, started)

    def _commit_and_ack(self, flush: _Flush) -> bool:
        """Write one flush, and only after its COMMIT ack its messages. False when stopped
        while the database was away (nothing acked: the broker redelivers)."""
        self.metrics.in_hand.set(len(flush.batch))
        result = self._write_until_done(flush.prepared)
        if result is None:
            return False
        committed = time.monotonic()
        self._fault("after_commit")
        for message in flush.batch:
            self.consumer.ack(message)
        for p in flush.parsed:
            if p.ack is not None and p.gateway_code is not None:
                self.consumer.publish_ack(p.gateway_code, p.ack)
        self.flushes += 1
        self._record(flush.batch, flush.parsed, result, flush.started, committed)
        return True

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
