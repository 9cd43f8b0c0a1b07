"""The gateway's poller reads a simulated fleet over Modbus TCP, RTU on pseudo-terminals and
RTU-over-TCP: every decoded value equals the ledger's at the sample's timestamp, every shipped
profile is covered, and the planner's reads never draw exception 0x02."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from gateway_agent.clock import ManualClock
from gateway_agent.poller import Poller
from gateway_agent.profiles import builtin_profiles
from gateway_agent.sample import Sample
from gateway_agent.site import Site
from simulators.fleet import Fleet
from simulators.modbus import SerialLine
from tests.support.modbus_fleet import (
    check_against_ledger,
    devices_of,
    load_fleet,
    served_pty,
    served_tcp,
)

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0
# Instants after the scenario start: a quiet afternoon, and one inside the window where
# b2-flat-10 answers "busy" half the time and b1-water-01/02 are slow (1.5 s: a timeout).
OFFSETS = (3 * 3600, 120_000, 172_800 + 600)

Serve = Callable[[Fleet, ManualClock], AbstractAsyncContextManager[Site]]


def tcp(fleet: Fleet, clock: ManualClock) -> AbstractAsyncContextManager[Site]:
    return served_tcp(fleet, clock, timeout_s=TIMEOUT_S)


def rtu_over_tcp(fleet: Fleet, clock: ManualClock) -> AbstractAsyncContextManager[Site]:
    return served_tcp(fleet, clock, framing="rtu", timeout_s=TIMEOUT_S)


def rtu_pty(fleet: Fleet, clock: ManualClock) -> AbstractAsyncContextManager[Site]:
    return served_pty(fleet, clock, SerialLine(38400, "N", 1), timeout_s=TIMEOUT_S)


async def poll_at(site: Site, clock: ManualClock, fleet: Fleet) -> tuple[list[Sample], Poller]:
    delivered: list[list[Sample]] = []

    async def sink(samples: list[Sample]) -> None:
        delivered.append(samples)

    poller = Poller(site, sink, clock)
    try:
        for offset in OFFSETS:
            clock.set(fleet.start + offset)
            await poller.cycle()  # every group due: all channels
    finally:
        await poller.close()
    assert len(delivered) == len(OFFSETS)  # one sink call per cycle
    return [s for batch in delivered for s in batch], poller


@pytest.mark.parametrize(
    "serve", [tcp, rtu_over_tcp, rtu_pty], ids=["tcp", "rtu-over-tcp", "rtu-pty"]
)
def test_every_meter_reads_the_ledger(serve: Serve) -> None:
    fleet = load_fleet()
    clock = ManualClock(fleet.start)

    async def scenario() -> tuple[list[Sample], Poller]:
        async with serve(fleet, clock) as site:
            return await poll_at(site, clock, fleet)

    samples, poller = asyncio.run(scenario())
    counts = check_against_ledger(fleet, samples, TIMEOUT_S)
    devices = devices_of(fleet)
    expected = len(OFFSETS) * sum(len(d.channels) for d in devices)
    assert len(samples) == expected
    assert counts["good"] > 0.9 * expected
    # every shipped profile was read and decoded
    good_profiles = {
        d.profile.id
        for d in devices
        if any(s.meter_id == d.meter_id and s.quality == "good" for s in samples)
    }
    assert good_profiles == set(builtin_profiles())
    # no read of the planner drew "illegal data address"; the only exceptions are the busy
    # device's 0x06, and the only timeouts the slow water meters'
    errors: dict[str, int] = {}
    for h in poller.health.values():
        for label, n in h.errors.items():
            errors[label] = errors.get(label, 0) + n
    assert "exception_0x02" not in errors
    assert set(errors) <= {"exception_0x06", "timeout"}
    assert poller.health["b1-water-01"].errors.get("timeout") == 1
    assert "timeout" not in poller.health["b1-water-02"].errors  # 0.3 s: answered in time
    assert poller.stats.reads == poller.stats.reads_ok + poller.stats.reads_failed
    assert poller.stats.internal_errors == 0


def test_scheduled_run_polls_groups_on_their_ticks() -> None:
    """Run on the clock: fast groups every 5 s (water 10 s), energy and volume every 60 s."""
    fleet = load_fleet()
    start = fleet.start + 3 * 3600
    clock = ManualClock(start - 0.5)
    cycles: list[list[Sample]] = []
    stop = asyncio.Event()

    async def sink(samples: list[Sample]) -> None:
        cycles.append(samples)
        if clock.now() >= start + 60:
            stop.set()

    async def scenario() -> Poller:
        async with served_tcp(fleet, clock, timeout_s=TIMEOUT_S) as site:
            poller = Poller(site, sink, clock)
            await asyncio.wait_for(poller.run(stop), 60)
            return poller

    poller = asyncio.run(scenario())
    ticks = [c[0].ts.timestamp() for c in cycles]
    assert ticks == [start + 5 * k for k in range(13)]
    energy_ticks = {s.ts.timestamp() for c in cycles for s in c if s.channel == "energy_import_kwh"}
    assert energy_ticks == {start, start + 60}
    flow_ticks = {s.ts.timestamp() for c in cycles for s in c if s.channel == "water_flow_m3h"}
    assert flow_ticks == {start + 10 * k for k in range(7)}
    check_against_ledger(fleet, [s for c in cycles for s in c], TIMEOUT_S)
    assert poller.stats.cycles == 13
    assert poller.stats.overruns == 0
