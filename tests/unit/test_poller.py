"""The poller's scheduling, failure handling and shutdown, against a scripted in-memory line;
and the pure health/backoff rules, with hypothesis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_agent.clock import Clock, ManualClock, SystemClock
from gateway_agent.health import DeviceHealth, backoff_delay
from gateway_agent.modbus import ModbusError
from gateway_agent.poller import Poller
from gateway_agent.profiles import builtin_profile
from gateway_agent.registers import encode
from gateway_agent.sample import Sample
from gateway_agent.site import Bus, Device, Site
from tests.support.modbus_fleet import make_site

SDM120 = builtin_profile("eastron_sdm120")
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a multiple of every interval


def device(meter: str, unit: int, bus: str = "b1", **groups: float) -> Device:
    return Device.of(meter, bus, unit, SDM120, groups)


class ScriptedLine:
    """A line answering from the profile's encoding of fixed values, or failing per unit."""

    def __init__(
        self,
        bus: Bus,
        failures: dict[int, ModbusError] | None = None,
        *,
        delay: float = 0.0,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        self._bus = bus
        self.failures = failures or {}
        self.delay = delay
        self.on_read = on_read
        self.calls: list[tuple[int, int, int, int, int | None]] = []
        self.closed = False

    @property
    def bus(self) -> Bus:
        return self._bus

    async def read(
        self, unit_id: int, function: int, address: int, count: int, *, retries: int | None = None
    ) -> tuple[int, ...]:
        self.calls.append((unit_id, function, address, count, retries))
        if self.on_read:
            self.on_read()
        if self.delay:
            await asyncio.sleep(self.delay)
        failure = self.failures.get(unit_id)
        if failure is not None:
            raise failure
        words = [0] * count
        for spec in SDM120.channels.values():
            if spec.function == function and address <= spec.address < address + count:
                lo = spec.address - address
                words[lo : lo + spec.count] = encode(VALUES[spec.channel], spec.fmt)
        return tuple(words)

    async def close(self) -> None:
        self.closed = True


VALUES = dict.fromkeys(SDM120.channels, 1.5) | {
    "voltage_l1_v": 230.0,
    "frequency_hz": 50.0,
    "power_factor": 0.75,
}


def site(*devices: Device, retries: int = 0, backoff_max_s: float = 300.0) -> Site:
    buses = {d.bus: Bus(d.bus, "tcp", host="127.0.0.1", port=502, retries=retries,
                        backoff_max_s=backoff_max_s) for d in devices}  # fmt: skip
    return make_site(buses, list(devices))


class Collect:
    def __init__(self, stop: asyncio.Event | None = None, cycles: int = 0) -> None:
        self.cycles: list[list[Sample]] = []
        self.stop, self.limit = stop, cycles

    async def __call__(self, samples: list[Sample]) -> None:
        self.cycles.append(samples)
        if self.stop is not None and len(self.cycles) >= self.limit:
            self.stop.set()


def run_cycles(
    poller_site: Site, clock: Clock, n: int, **line_kw: Any
) -> tuple[Poller, Collect, dict[str, ScriptedLine]]:
    lines: dict[str, ScriptedLine] = {}

    def factory(bus: Bus) -> ScriptedLine:
        lines[bus.name] = ScriptedLine(bus, **line_kw)
        return lines[bus.name]

    async def main() -> tuple[Poller, Collect]:
        stop = asyncio.Event()
        sink = Collect(stop, n)
        poller = Poller(poller_site, sink, clock, line_factory=factory)
        await asyncio.wait_for(poller.run(stop), 30)
        return poller, sink

    poller, sink = asyncio.run(main())
    assert all(line.closed for line in lines.values())
    return poller, sink, lines


def test_ticks_align_to_the_clock_and_groups_merge() -> None:
    clock = ManualClock(T0 + 0.25)
    poller, sink, lines = run_cycles(site(device("m1", 1)), clock, 13)
    ticks = [c[0].ts.timestamp() for c in sink.cycles]
    assert ticks == [T0 + 5 * k for k in range(1, 14)]
    per_cycle = [{s.channel for s in c} for c in sink.cycles]
    energy = [i for i, chans in enumerate(per_cycle) if "energy_import_kwh" in chans]
    assert energy == [11]  # T0 + 60
    assert all("voltage_l1_v" in chans for chans in per_cycle)
    assert all(s.quality == "good" and s.value == VALUES[s.channel] for c in sink.cycles for s in c)
    # at the minute, fast and energy channels are planned together: no more reads than alone
    assert poller.stats.reads == len(lines["b1"].calls)
    assert poller.stats.overruns == 0
    assert all(s.ts.tzinfo is not None for c in sink.cycles for s in c)


def test_each_device_keeps_its_own_intervals() -> None:
    clock = ManualClock(T0)
    fast = device("m1", 1, fast=2.0)
    slow = device("m2", 2, fast=10.0)
    _, sink, _ = run_cycles(site(fast, slow), clock, 6)
    m2 = [c for c in sink.cycles if any(s.meter_id == "m2" for s in c)]
    assert [c[0].ts.timestamp() - T0 for c in sink.cycles] == [0, 2, 4, 6, 8, 10]
    assert len(m2) == 2  # T0 and T0 + 10


def test_overrun_skips_missed_ticks_and_counts_them() -> None:
    clock = ManualClock(T0)
    # every read takes 1 s of clock time; the SDM120's map needs 7 reads (its gaps are not
    # answered), so each cycle runs past the next 5 s tick
    poller, sink, _ = run_cycles(site(device("m1", 1)), clock, 4,
                                 on_read=lambda: clock.advance(1.0))  # fmt: skip
    starts = [min(s.ts.timestamp() for s in c) - T0 for c in sink.cycles]
    assert starts == [0, 10, 20, 30]  # ticks 5, 15, 25 were missed: skipped, not run late
    assert poller.stats.overruns == 4
    assert poller.stats.ticks_skipped == 4  # 5, 15, 25 and 35


def test_exceptions_become_comm_errors_and_do_not_back_off() -> None:
    clock = ManualClock(T0)
    busy = ModbusError("exception", "busy", 0x06)
    poller, sink, lines = run_cycles(site(device("m1", 1), device("m2", 2)), clock, 3,
                                     failures={2: busy})  # fmt: skip
    for c in sink.cycles:
        assert all(s.quality == "comm_error" and s.value is None for s in c if s.meter_id == "m2")
        assert all(s.quality == "good" for s in c if s.meter_id == "m1")
    h = poller.health["m2"]
    assert h.errors == {"exception_0x06": poller.stats.exceptions}
    assert h.backoff_until is None  # it answered: no backoff
    m2_calls = [c for c in lines["b1"].calls if c[0] == 2]
    assert len(m2_calls) == poller.stats.exceptions  # every read was tried: answers are quick
    assert poller.health["m1"].to_json()["errors"] == {}


def test_a_dead_device_costs_one_read_per_cycle_and_is_backed_off() -> None:
    clock = ManualClock(T0)
    dead = ModbusError("timeout", "no answer")
    poller, sink, lines = run_cycles(
        site(device("m1", 1), device("m2", 2), retries=2, backoff_max_s=40.0), clock, 30,
        failures={2: dead},
    )  # fmt: skip
    calls = lines["b1"].calls
    tried_at: list[float] = []
    for c in sink.cycles:
        t = c[0].ts.timestamp() - T0
        m2 = [s for s in c if s.meter_id == "m2"]
        assert m2
        assert all(s.quality == "comm_error" for s in m2)
        assert all(s.quality == "good" for s in c if s.meter_id == "m1")
        tried_at.append(t)
    attempts = [c for c in calls if c[0] == 2]
    # first failure with the bus's retries, then alone; at most one read per cycle
    assert attempts[0][4] == 2
    assert all(a[4] == 0 for a in attempts[1:])
    h = poller.health["m2"]
    assert h.errors == {"timeout": len(attempts)}
    # backoff base 5 s (its interval), doubling, cap 40: tried at 0, 5, 15, 35, 75, 115, ...
    assert len(attempts) == 6  # cycles 0..145 s
    assert h.reads_skipped == poller.stats.reads_skipped > 0


def test_bus_failures_are_isolated() -> None:
    """A device on another bus is polled in parallel; its failures are not the others'."""
    clock = ManualClock(T0)
    devices = (device("a1", 1, bus="a"), device("b1", 1, bus="b"))
    _, sink, lines = run_cycles(site(*devices), clock, 2, delay=0.01)
    assert set(lines) == {"a", "b"}
    assert all({s.meter_id for s in c} == {"a1", "b1"} for c in sink.cycles)


def test_stop_finishes_the_current_cycle() -> None:
    clock = SystemClock()
    devices = tuple(device(f"m{i}", i, fast=1.0) for i in range(1, 6))

    async def main() -> tuple[Poller, Collect, float]:
        stop = asyncio.Event()
        sink = Collect()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        started = 0.0

        def on_read() -> None:
            nonlocal started
            if not started:  # SIGTERM as soon as the first read of a cycle goes out
                started = loop.time()
                os.kill(os.getpid(), signal.SIGTERM)

        def factory(bus: Bus) -> ScriptedLine:
            return ScriptedLine(bus, delay=0.02, on_read=on_read)

        poller = Poller(site(*devices), sink, clock, line_factory=factory)
        try:
            await asyncio.wait_for(poller.run(stop), 20)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
        return poller, sink, loop.time() - started

    poller, sink, elapsed = asyncio.run(main())
    assert len(sink.cycles) == 1  # the cycle under way was delivered, no other began
    assert {s.meter_id for s in sink.cycles[0]} == {f"m{i}" for i in range(1, 6)}
    assert all(s.quality == "good" for s in sink.cycles[0])
    assert poller.stats.cycles == 1
    assert elapsed < 3  # returned after the cycle, not at the next tick


def test_stop_between_cycles_returns_without_polling() -> None:
    async def main() -> Collect:
        stop = asyncio.Event()
        sink = Collect()
        poller = Poller(site(device("m1", 1, fast=3600.0, energy=3600.0)), sink, SystemClock(),
                        line_factory=ScriptedLine)  # fmt: skip
        task = asyncio.create_task(poller.run(stop))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 2)
        return sink

    sink = asyncio.run(main())
    assert len(sink.cycles) <= 1


def test_unknown_bus_and_group_are_rejected() -> None:
    orphan = make_site({}, [device("m1", 1)])
    with pytest.raises(ValueError, match="no bus"):
        Poller(orphan, Collect(), ManualClock(T0))
    broken = Device("m1", "b1", 1, SDM120, tuple(SDM120.channels.values()), {"fast": 5.0}, 40)
    with pytest.raises(ValueError, match="no interval"):
        Poller(site(broken), Collect(), ManualClock(T0))


# --- pure health ---------------------------------------------------------------------------


@given(
    st.integers(1, 200),
    st.floats(0.01, 1000, allow_nan=False),
    st.floats(0.01, 10_000, allow_nan=False),
)
def test_backoff_doubles_up_to_the_cap(n: int, base: float, cap: float) -> None:
    d = backoff_delay(n, base, cap)
    assert 0 < d <= max(cap, base) or d == cap
    assert d <= cap
    assert backoff_delay(n + 1, base, cap) >= d
    if base * 2 ** (n - 1) <= cap:
        assert d == pytest.approx(base * 2 ** (n - 1))
    assert backoff_delay(0, base, cap) == 0.0


EVENTS = st.lists(
    st.one_of(
        st.just("ok"),
        st.sampled_from(["timeout", "io", "exception_0x06", "exception_0x02"]),
    ),
    max_size=60,
)


@given(EVENTS, st.floats(0.1, 60), st.floats(1, 600))
def test_health_state_machine(events: list[str], base: float, cap: float) -> None:
    h = DeviceHealth("m")
    now = 1000.0
    run = silent_run = 0
    for e in events:
        now += 1.0
        if e == "ok":
            h.record_success(now)
            run = silent_run = 0
            assert h.backoff_until is None
            assert not h.backed_off(now)
            assert h.last_success == now
        else:
            h.record_failure(e, now, base, cap)
            run += 1
            if e in ("timeout", "io"):
                silent_run += 1
                assert h.backoff_until == now + backoff_delay(silent_run, base, cap)
                assert h.backed_off(now)
        assert h.consecutive_failures == run
        assert h.consecutive_timeouts == silent_run
    assert sum(h.errors.values()) == h.reads_failed == sum(e != "ok" for e in events)
    assert h.reads_ok == events.count("ok")
    doc = h.to_json()
    assert json.loads(json.dumps(doc)) == doc


def test_a_failing_sink_stops_the_poller_and_closes_the_lines() -> None:
    """The outbox refusing a cycle is not a comm error to count and forget: run() raises."""
    lines: list[ScriptedLine] = []

    def factory(bus: Bus) -> ScriptedLine:
        lines.append(ScriptedLine(bus))
        return lines[-1]

    async def sink(samples: list[Sample]) -> None:
        raise OSError("disk full")

    async def main() -> None:
        poller = Poller(site(device("m1", 1)), sink, ManualClock(T0), line_factory=factory)
        await poller.run(asyncio.Event())

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(main())
    assert lines
    assert all(line.closed for line in lines)


@given(
    st.lists(st.sampled_from([1.0, 2.0, 2.5, 3.0, 5.0, 10.0, 60.0]), min_size=1, max_size=3),
    st.floats(0.0, 59.9),
)
def test_every_interval_ticks_on_its_own_multiples(intervals: list[float], offset: float) -> None:
    """Cycles happen exactly at the union of the intervals' multiples; each device's fast
    channels are read at exactly its own interval's multiples, none skipped or doubled."""
    devices = [device(f"m{i}", i + 1, fast=iv, energy=60.0) for i, iv in enumerate(intervals)]
    start = T0 + offset
    clock = ManualClock(start)
    end = T0 + 120.0

    async def main() -> Collect:
        stop = asyncio.Event()
        sink = Collect()

        async def collect(samples: list[Sample]) -> None:
            await sink(samples)
            if clock.now() >= end:
                stop.set()

        poller = Poller(site(*devices), collect, clock, line_factory=ScriptedLine)
        await asyncio.wait_for(poller.run(stop), 30)
        assert poller.stats.overruns == 0
        return sink

    sink = asyncio.run(main())
    ticks = [c[0].ts.timestamp() for c in sink.cycles]
    every = sorted(set(intervals) | {60.0})
    expected = sorted(
        {round(k * iv, 6) for iv in every for k in range(int(start // iv), int(end // iv) + 2)
         if start - 1e-6 <= k * iv <= end + 1e-6}
    )  # fmt: skip
    assert [round(t, 6) for t in ticks] == expected
    for d, iv in zip(devices, intervals, strict=True):
        seen = sorted({round(s.ts.timestamp(), 6) for c in sink.cycles for s in c
                       if s.meter_id == d.meter_id and s.channel == "voltage_l1_v"})  # fmt: skip
        assert seen == [t for t in expected if abs(t / iv - round(t / iv)) < 1e-9]
