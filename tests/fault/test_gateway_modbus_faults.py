"""Faults on the Modbus side of the gateway: a dead device on a paced RS-485 bus (pseudo-
terminal) delays the others by at most one timeout per cycle and is backed off; exceptions,
short, mismatched and garbled answers become comm_error samples and counters, never crashes."""

from __future__ import annotations

import asyncio
import os
import statistics
from datetime import UTC, datetime

import pytest

from gateway_agent.clock import ManualClock
from gateway_agent.framing import take_frames
from gateway_agent.modbus import Line, open_line
from gateway_agent.poller import Poller
from gateway_agent.profiles import builtin_profile
from gateway_agent.sample import Sample
from gateway_agent.site import Bus, Device, SerialPort
from simulators.modbus import (
    ModbusTcpEndpoint,
    PtyRtuBus,
    SerialLine,
    SimulatedDevice,
    StaticValues,
)
from simulators.modbus.frames import mbap_frame, read_response
from simulators.modbus.transports import answer
from tests.support.modbus_fleet import Faults, make_site, register_value

pytestmark = pytest.mark.fault

T0 = 1_767_225_600.0  # a multiple of every interval
TUF = builtin_profile("tuf2000m")
SDM630 = builtin_profile("eastron_sdm630")
SDM120 = builtin_profile("eastron_sdm120")
VALUES = {"water_flow_m3h": 1.25, "water_volume_m3": 4321.5, "temperature_c": 12.5,
          "voltage_l1_v": 231.5, "power_w": 1234.0, "energy_import_kwh": 5678.9,
          "frequency_hz": 50.0, "current_l1_a": 5.0, "power_factor": 0.9}  # fmt: skip


def sim(profile_id: str, meter: str, faults: Faults) -> SimulatedDevice:
    profile = builtin_profile(profile_id)
    at = datetime.fromtimestamp(T0, UTC)
    return SimulatedDevice(profile, meter, StaticValues(VALUES), clock=lambda: at, faults=faults)


def device(meter: str, unit: int, profile_id: str, bus: str = "bus") -> Device:
    return Device.of(meter, bus, unit, builtin_profile(profile_id))


def assert_values(samples: list[Sample], meters: set[str]) -> None:
    for s in samples:
        if s.meter_id not in meters:
            continue
        assert s.quality == "good", s
        spec = builtin_profile({"m": "tuf2000m", "s": "eastron_sdm630"}[s.meter_id[0]]).channels[
            s.channel
        ]
        assert s.value == register_value(spec, VALUES.get(s.channel, 0.0)), s


@pytest.mark.slow
def test_dead_device_on_a_serial_bus_costs_one_timeout_per_cycle_and_backs_off() -> None:
    timeout_s = 0.25
    line = SerialLine(19200, "N", 1)
    faults = Faults({"m3": "no_response"})
    clock = ManualClock(T0)
    records: list[tuple[float, list[Sample]]] = []
    stop = asyncio.Event()

    async def scenario() -> Poller:
        sims = {u: sim("tuf2000m", f"m{u}", faults) for u in (1, 2, 3, 4)}
        async with PtyRtuBus(sims, line) as pty:
            bus = Bus("bus", "rtu", serial=SerialPort(pty.path, line.baud, "N", 1),
                      timeout_s=timeout_s, backoff_max_s=40.0)  # fmt: skip
            site = make_site({"bus": bus}, [device(f"m{u}", u, "tuf2000m") for u in (1, 2, 3, 4)])

            async def sink(samples: list[Sample]) -> None:
                records.append((poller.last_cycle_s, samples))
                if clock.now() >= T0 + 150:
                    stop.set()

            poller = Poller(site, sink, clock, line_factory=record)
            await asyncio.wait_for(poller.run(stop), 60)
            return poller

    lines: list[Recording] = []

    def record(bus: Bus) -> Line:
        lines.append(Recording(open_line(bus), clock))
        return lines[-1]

    poller = asyncio.run(scenario())
    asked = sorted({t for unit, t in lines[0].calls if unit == 3})
    assert len(records) == 16  # 0, 10, ..., 150
    tried: list[tuple[float, float]] = []
    quiet: list[tuple[float, float]] = []
    for duration, samples in records:
        t = samples[0].ts.timestamp() - T0
        dead = [s for s in samples if s.meter_id == "m3"]
        assert dead
        assert all(s.quality == "comm_error" and s.value is None for s in dead)
        assert_values(samples, {"m1", "m2", "m4"})
        (tried if t in asked else quiet).append((t, duration))
    # base = its interval (10 s), doubling, cap 40 s: asked at 0, 10, 30, 70, 110, 150
    assert [t for t, _ in tried] == [0, 10, 30, 70, 110, 150]
    assert poller.health["m3"].errors == {"timeout": 6}
    assert poller.health["m3"].reads_skipped == 10
    healthy = statistics.median(d for _, d in quiet)
    for t, d in tried:  # one timeout on top of the healthy cycle, never more
        assert timeout_s * 0.9 <= d - healthy <= timeout_s + 0.12, (t, d, healthy)
    for t, d in quiet:  # backed off: it costs nothing
        assert d <= healthy + 0.1, (t, d, healthy)
    assert poller.stats.timeouts == 6
    assert all(poller.health[m].errors == {} for m in ("m1", "m2", "m4"))


class Recording:
    """A real line that remembers which unit it asked at which clock instant."""

    def __init__(self, line: Line, clock: ManualClock) -> None:
        self.line, self.clock = line, clock
        self.calls: list[tuple[int, float]] = []

    @property
    def bus(self) -> Bus:
        return self.line.bus

    async def read(
        self, unit_id: int, function: int, address: int, count: int, *, retries: int | None = None
    ) -> tuple[int, ...]:
        self.calls.append((unit_id, self.clock.now() - T0))
        return await self.line.read(unit_id, function, address, count, retries=retries)

    async def close(self) -> None:
        await self.line.close()


# --- exceptions and garbage over Modbus TCP ------------------------------------------------


class Misbehaving(asyncio.Protocol):
    """A Modbus TCP converter whose unit ids misbehave in different ways."""

    def __init__(self, devices: dict[int, SimulatedDevice]) -> None:
        self.devices = devices
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        for tid, unit, pdu in take_frames(self.buf):
            function, count = pdu[0], int.from_bytes(pdu[3:5], "big")
            if unit == 2:  # short: a well-formed answer with one register too few
                short = read_response(function, [0] * (count - 1))
                self.transport.write(mbap_frame(tid, unit, short))
            elif unit == 3:  # garbage: not Modbus at all
                self.transport.write(os.urandom(11))
            elif unit == 4:  # the other function's answer
                other = read_response(7 - function, [0] * count)
                self.transport.write(mbap_frame(tid, unit, other))
            else:
                result = answer(self.devices, unit, pdu)
                if result is not None:
                    self.transport.write(mbap_frame(tid, unit, result[0]))


def test_exceptions_and_garbage_become_comm_errors() -> None:
    clock = ManualClock(T0)
    faults = Faults({"s5": "busy"})
    cycles: list[list[Sample]] = []
    stop = asyncio.Event()

    async def scenario() -> Poller:
        devices = {1: sim("eastron_sdm630", "s1", faults), 5: sim("eastron_sdm630", "s5", faults),
                   7: sim("eastron_sdm120", "s7", faults)}  # fmt: skip
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Misbehaving(devices), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            bus = Bus("bus", "tcp", host="127.0.0.1", port=port, timeout_s=0.2)
            site = make_site(
                {"bus": bus},
                [
                    device("s1", 1, "eastron_sdm630"),
                    device("s2", 2, "eastron_sdm630"),
                    device("s3", 3, "eastron_sdm630"),
                    device("s4", 4, "eastron_sdm630"),
                    device("s5", 5, "eastron_sdm630"),
                    device("s6", 6, "eastron_sdm630"),  # nobody answers
                    device("s7", 7, "eastron_sdm630"),  # an SDM120 configured as an SDM630
                ],
            )

            async def sink(samples: list[Sample]) -> None:
                cycles.append(samples)
                if len(cycles) >= 4:
                    stop.set()

            poller = Poller(site, sink, clock)
            await asyncio.wait_for(poller.run(stop), 60)
            return poller
        finally:
            server.close()
            await server.wait_closed()

    poller = asyncio.run(scenario())
    assert len(cycles) == 4
    for samples in cycles:
        assert_values(samples, {"s1"})
        assert sum(s.meter_id == "s1" for s in samples) > 0
        for meter in ("s2", "s3", "s4", "s5", "s6"):
            mine = [s for s in samples if s.meter_id == meter]
            assert mine
            assert all(s.quality == "comm_error" and s.value is None for s in mine), meter
    h = poller.health
    assert set(h["s2"].errors) == {"io"}  # short answer
    assert set(h["s4"].errors) == {"io"}  # wrong function
    assert set(h["s5"].errors) == {"exception_0x06"}
    assert set(h["s6"].errors) == {"timeout"}
    assert set(h["s3"].errors) <= {"timeout", "io"}
    assert "exception_0x02" in h["s7"].errors  # the SDM630's map is not the SDM120's
    assert h["s7"].reads_ok > 0  # where the maps agree it still reads
    stats = poller.stats
    assert stats.exceptions > 0
    assert stats.io_errors > 0
    assert stats.timeouts > 0
    assert stats.internal_errors == 0
    assert stats.reads == stats.reads_ok + stats.reads_failed
    assert h["s1"].errors == {}


def test_a_converter_that_goes_away_and_comes_back() -> None:
    """Connection refused: io errors for its devices at the cost of one connect attempt, and
    polling resumes by itself when the converter is back."""
    clock = ManualClock(T0)
    cycles: list[list[Sample]] = []

    async def scenario() -> Poller:
        faults = Faults({})
        endpoint = ModbusTcpEndpoint({1: sim("tuf2000m", "m1", faults),
                                      2: sim("tuf2000m", "m2", faults)})  # fmt: skip
        _, port = await endpoint.start()
        site = make_site(
            {"bus": Bus("bus", "tcp", host="127.0.0.1", port=port, timeout_s=0.3)},
            [device("m1", 1, "tuf2000m"), device("m2", 2, "tuf2000m")],
        )

        async def sink(samples: list[Sample]) -> None:
            cycles.append(samples)

        poller = Poller(site, sink, clock, backoff_base_s=0.001)
        try:
            await poller.cycle()
            await endpoint.stop()
            await asyncio.sleep(0.05)  # the client sees the connection close
            clock.advance(10)
            await poller.cycle()  # refused: io for both
            endpoint.port = port
            await endpoint.start()
            await asyncio.sleep(0.6)  # the line waits 0.5 s before connecting again
            clock.advance(10)
            await poller.cycle()
        finally:
            await poller.close()
            await endpoint.stop()
        return poller

    poller = asyncio.run(scenario())
    qualities = [{s.quality for s in c} for c in cycles]
    assert qualities == [{"good"}, {"comm_error"}, {"good"}]
    assert poller.health["m1"].errors == {"io": 1}
    assert poller.health["m2"].errors == {"io": 1}
    assert_values(cycles[2], {"m1", "m2"})
