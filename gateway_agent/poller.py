"""Polling: every Modbus device of a site, each poll group at its own interval, all buses in
parallel and one transaction at a time per bus, each cycle handed to the sink in one call.

Scheduling. Every distinct poll-group interval (e.g. 5 s power, 60 s energy) ticks on
multiples of itself on the injected clock (12:00:00, 12:00:05, ...), so readings of a site
line up in time and a restart does not shift them. A cycle is one tick: the reads of every
device whose groups are due at it. When groups coincide (every 60 s here), a device's due
channels are planned together, so the coalescing planner fetches them in the fewest reads.
A cycle that runs past the next tick of an interval skips the missed ticks (counted in
`stats.overruns` and `stats.ticks_skipped`) instead of queueing a burst of late polls.

Failures. A read that fails becomes `comm_error` samples, a counter and a health record;
nothing escapes the poller but the sink's own errors (the outbox must not fail silently). A
device that does not answer is backed off (`health.backoff_delay`, base one poll interval of
the device, cap `Bus.backoff_max_s`); within a cycle, its first unanswered read ends its turn,
and its retries (`Bus.retries`) apply only while it is healthy, so a dead device costs at most
one timeout per cycle and its bus neighbours keep their pace. Devices that are backed off still
yield `comm_error` samples for their due channels, so a gap is always explicit.

Delivery. The sink gets each cycle in one call, in order; it runs while the next cycle polls
(at most one delivery in flight), so a slow sink (an fsync'd outbox transaction) does not
delay the ticks. An error from the sink ends `run` with that error: the outbox refusing
readings must not go unnoticed.

Shutdown. When `stop` is set the current cycle is finished and delivered, then `run` returns.

Timestamps are the clock's time when each read is sent (aware UTC datetimes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields

from gateway_agent.clock import Clock
from gateway_agent.health import DeviceHealth
from gateway_agent.modbus import Line, ModbusError, open_line
from gateway_agent.planning import Read, decode_read, failed_read, plan_reads
from gateway_agent.profiles import ChannelSpec
from gateway_agent.sample import Sample
from gateway_agent.site import Bus, Device, Site

log = logging.getLogger(__name__)

Sink = Callable[[list[Sample]], Awaitable[None]]
LineFactory = Callable[[Bus], Line]
# Clock readings are ~1.7e9 s: a tolerance above their float resolution (2.4e-7 s) so that a
# tick reached by `sleep(tick - now)` counts as reached.
_EPS = 1e-6


@dataclass(slots=True)
class PollerStats:
    """Counters since start (plain ints; the service exports them as metrics)."""

    cycles: int = 0
    reads: int = 0  # reads attempted (a read with retries counts once)
    reads_ok: int = 0
    reads_failed: int = 0
    timeouts: int = 0
    exceptions: int = 0  # Modbus exception answers
    io_errors: int = 0  # no connection, short or garbled answers
    internal_errors: int = 0  # a line broke its contract (raised something else): a bug
    reads_skipped: int = 0  # not attempted: device backed off or already dead this cycle
    samples: int = 0
    comm_error_samples: int = 0
    overruns: int = 0  # cycles that ran past the next tick of some interval
    ticks_skipped: int = 0  # ticks dropped because of overruns

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _DeviceState:
    device: Device
    groups: dict[float, list[ChannelSpec]]  # interval -> channels polled at it
    backoff_base_s: float
    plans: dict[frozenset[float], tuple[Read, ...]] = field(default_factory=dict)

    def reads(self, due: frozenset[float]) -> tuple[Read, ...]:
        mine = due.intersection(self.groups)
        plan = self.plans.get(mine)
        if plan is None:
            channels = [c for interval in mine for c in self.groups[interval]]
            plan = plan_reads(
                self.device.profile, channels, max_registers=self.device.max_registers_per_read
            ) if channels else ()  # fmt: skip
            self.plans[mine] = plan
        return plan


def _device_groups(device: Device) -> dict[float, list[ChannelSpec]]:
    groups: dict[float, list[ChannelSpec]] = {}
    for spec in device.channels:
        interval = device.poll_groups.get(spec.poll_group)
        if interval is None:
            raise ValueError(
                f"device {device.meter_id}: channel {spec.channel} is in poll group"
                f" {spec.poll_group!r}, which has no interval"
            )
        if not interval > 0 or not math.isfinite(interval):
            raise ValueError(f"device {device.meter_id}: poll interval {interval!r} is not > 0")
        groups.setdefault(float(interval), []).append(spec)
    return groups


class Poller:
    """Polls a site's Modbus devices until told to stop.

    `health` maps meter id -> `DeviceHealth`; `stats` is a `PollerStats`. `line_factory` makes
    one `Line` per bus (default `modbus.open_line`: the agent's own asyncio client for Modbus
    TCP, pymodbus for RTU); lines are opened lazily and closed when `run` ends.
    `backoff_base_s` overrides the backoff base (default: the device's shortest interval).
    """

    def __init__(
        self,
        site: Site,
        sink: Sink,
        clock: Clock,
        *,
        line_factory: LineFactory | None = None,
        backoff_base_s: float | None = None,
    ) -> None:
        self.site = site
        self.clock = clock
        self._sink = sink
        self._line_factory = line_factory or open_line
        self._lines: dict[str, Line] = {}
        self.stats = PollerStats()
        self.health: dict[str, DeviceHealth] = {}
        self.last_cycle_s = 0.0  # wall seconds the last cycle's reads took
        self._delivery: asyncio.Future[None] | None = None
        self._by_bus: dict[str, list[_DeviceState]] = {}
        for device in site.devices:
            if device.bus not in site.buses:
                raise ValueError(f"device {device.meter_id}: no bus named {device.bus!r}")
            if device.meter_id in self.health:
                raise ValueError(f"device {device.meter_id} is configured twice")
            groups = _device_groups(device)
            base = backoff_base_s if backoff_base_s is not None else min(groups, default=1.0)
            state = _DeviceState(device, groups, base)
            state.reads(frozenset(groups))  # plan now: a map that cannot be read fails here
            self._by_bus.setdefault(device.bus, []).append(state)
            self.health[device.meter_id] = DeviceHealth(device.meter_id)
        self.intervals: tuple[float, ...] = tuple(
            sorted({i for states in self._by_bus.values() for s in states for i in s.groups})
        )

    # --- scheduling ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll on the intervals' ticks until `stop` is set; the cycle under way is finished
        and delivered. A sink error ends the run with that error."""
        finished = False
        try:
            if not self.intervals:
                await stop.wait()
                finished = True
                return
            now = self.clock.now()
            next_k = {iv: math.ceil((now - _EPS) / iv) for iv in self.intervals}
            while not stop.is_set():
                tick = min(k * iv for iv, k in next_k.items())
                wait = tick - self.clock.now()
                if wait > 0 and await self._sleep_or_stop(wait, stop):
                    break
                due = frozenset(iv for iv, k in next_k.items() if k * iv <= tick + _EPS)
                await self._deliver(await self._poll(due))
                self._advance(next_k, due, self.clock.now())
            finished = True
        finally:
            try:
                if finished:
                    await self.flush()
                elif self._delivery is not None:  # cancelled or failed: do not wait on it
                    self._delivery.cancel()
                    self._delivery = None
            finally:
                await self.close()

    def _advance(self, next_k: dict[float, int], due: frozenset[float], now: float) -> None:
        """Move each interval to its next tick; ticks already past are skipped and counted."""
        overran = False
        for iv, k in next_k.items():
            nxt = k + 1 if iv in due else k
            first_open = math.ceil((now - _EPS) / iv)  # the first tick not yet past
            if nxt < first_open:
                self.stats.ticks_skipped += first_open - nxt
                overran = True
                nxt = first_open
            next_k[iv] = nxt
        if overran:
            self.stats.overruns += 1

    async def _sleep_or_stop(self, seconds: float, stop: asyncio.Event) -> bool:
        """Sleep `seconds` of clock time; True when `stop` was set meanwhile."""
        if stop.is_set():
            return True
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        return stop.is_set()

    # --- one cycle -------------------------------------------------------------------------

    async def cycle(self, due: Iterable[float] | None = None) -> None:
        """Poll every read due at the intervals `due` (default: all) and deliver them in one
        sink call; returns once the sink has taken them."""
        await self._deliver(await self._poll(frozenset(self.intervals if due is None else due)))
        await self.flush()

    async def _poll(self, due: frozenset[float]) -> list[Sample]:
        started = time.perf_counter()
        work = [
            (name, [(s, reads) for s in states if (reads := s.reads(due))])
            for name, states in self._by_bus.items()
        ]
        results = await asyncio.gather(*(self._poll_bus(name, jobs) for name, jobs in work if jobs))
        samples = [s for batch in results for s in batch]
        self.stats.cycles += 1
        self.stats.samples += len(samples)
        self.last_cycle_s = time.perf_counter() - started
        return samples

    async def _deliver(self, samples: list[Sample]) -> None:
        """Hand a cycle to the sink without holding up the next one: the sink (the outbox's
        fsync'd transaction) runs while the next cycle polls. At most one delivery is in
        flight, so cycles reach the sink in order and memory stays bounded."""
        await self.flush()
        self._delivery = asyncio.ensure_future(self._sink(samples))

    async def flush(self) -> None:
        """Wait until the last cycle is delivered; raises the sink's error, if any."""
        delivery, self._delivery = self._delivery, None
        if delivery is not None:
            await delivery

    def _line(self, bus: str) -> Line:
        line = self._lines.get(bus)
        if line is None:
            line = self._lines[bus] = self._line_factory(self.site.buses[bus])
        return line

    async def _poll_bus(
        self, bus_name: str, jobs: list[tuple[_DeviceState, tuple[Read, ...]]]
    ) -> list[Sample]:
        bus = self.site.buses[bus_name]
        line = self._line(bus_name)
        stats = self.stats
        out: list[Sample] = []
        for state, reads in jobs:
            device = state.device
            meter = device.meter_id
            health = self.health[meter]
            t = self.clock.now()
            if health.backed_off(t):
                ts = _utc(t)
                for read in reads:
                    out.extend(self._failed(read, meter, ts))
                health.record_skipped(len(reads))
                stats.reads_skipped += len(reads)
                continue
            retries = 0 if health.failing else bus.retries
            for i, read in enumerate(reads):
                t = self.clock.now()
                ts = _utc(t)
                stats.reads += 1
                try:
                    words = await line.read(
                        device.unit_id, read.function, read.address, read.count, retries=retries
                    )
                except ModbusError as exc:
                    self._count(exc.kind)
                    health.record_failure(exc.label, t, state.backoff_base_s, bus.backoff_max_s)
                    out.extend(self._failed(read, meter, ts))
                    if exc.kind == "exception":
                        continue  # the device answered: its other reads may well work
                    rest = reads[i + 1 :]  # no answer: do not spend a timeout per read
                    for other in rest:
                        out.extend(self._failed(other, meter, ts))
                    health.record_skipped(len(rest))
                    stats.reads_skipped += len(rest)
                    break
                except Exception:  # a line that breaks its contract must not stop the others
                    log.exception("bus %s, device %s: unexpected error", bus_name, meter)
                    stats.internal_errors += 1
                    stats.reads_failed += 1
                    health.record_failure("io", t, state.backoff_base_s, bus.backoff_max_s)
                    out.extend(self._failed(read, meter, ts))
                    continue
                stats.reads_ok += 1
                health.record_success(t)
                samples = decode_read(read, words, meter, ts)
                out.extend(samples)
                for s in samples:
                    if s.quality == "comm_error":  # garbled words inside a well-formed answer
                        stats.comm_error_samples += 1
        return out

    def _failed(self, read: Read, meter: str, ts: dt.datetime) -> list[Sample]:
        samples = failed_read(read, meter, ts)
        self.stats.comm_error_samples += len(samples)
        return samples

    def _count(self, kind: str) -> None:
        stats = self.stats
        stats.reads_failed += 1
        if kind == "timeout":
            stats.timeouts += 1
        elif kind == "exception":
            stats.exceptions += 1
        else:
            stats.io_errors += 1

    async def close(self) -> None:
        """Close every line (also done when `run` returns)."""
        lines, self._lines = self._lines, {}
        for line in lines.values():
            await line.close()

    def health_json(self) -> Mapping[str, dict[str, object]]:
        """Every device's health as plain JSON types, by meter id."""
        return {meter: h.to_json() for meter, h in self.health.items()}


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)
