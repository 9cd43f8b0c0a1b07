"""The gateway's Modbus line over real sockets and a pseudo-terminal: golden words on every
transport, one declared error type, retries only where they can help, a refused converter
costing one connect attempt per wait, and the RTU inter-frame silence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from gateway_agent.modbus import (
    Line,
    MbapLine,
    ModbusError,
    PymodbusLine,
    inter_frame_silence,
    open_line,
)
from gateway_agent.profiles import builtin_profile, builtin_profiles
from gateway_agent.site import Bus, SerialPort, Transport
from simulators.modbus import (
    Fault,
    ModbusTcpEndpoint,
    PtyRtuBus,
    SerialLine,
    SimulatedDevice,
    StaticValues,
)
from simulators.modbus.transports import Framing
from tests.support.modbus_fleet import Faults

pytestmark = pytest.mark.integration

T = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
UNITS = {pid: i for i, pid in enumerate(sorted(builtin_profiles()), start=1)}


def fleet(faults: Mapping[str, Fault] | None = None) -> dict[int, SimulatedDevice]:
    hook = Faults(faults or {})
    out = {}
    for pid, unit in UNITS.items():
        p = builtin_profile(pid)
        golden = {g.channel: g.value for g in p.golden if g.value is not None}
        out[unit] = SimulatedDevice(p, pid, StaticValues(golden), clock=lambda: T, faults=hook)
    return out


async def read_goldens(line: Line) -> int:
    checked = 0
    for pid, unit in UNITS.items():
        p = builtin_profile(pid)
        for g in p.golden:
            if g.value is None:
                continue
            spec = p.channels[g.channel]
            words = await line.read(unit, spec.function, spec.address, spec.count)
            assert words == g.registers, (pid, g.channel)
            checked += 1
    return checked


def test_golden_words_over_tcp_rtu_over_tcp_and_rtu_pty() -> None:
    async def scenario() -> list[int]:
        counts = []
        cases: list[tuple[Framing, Transport, type[Line]]] = [
            ("mbap", "tcp", MbapLine),
            ("mbap", "tcp", PymodbusLine),
            ("rtu", "rtu-over-tcp", PymodbusLine),
        ]
        for framing, transport, kind in cases:
            async with ModbusTcpEndpoint(fleet(), framing=framing) as endpoint:
                bus = Bus("b", transport, host="127.0.0.1", port=endpoint.port)
                line = kind(bus)  # type: ignore[call-arg]
                assert type(open_line(bus)) is (MbapLine if transport == "tcp" else PymodbusLine)
                try:
                    counts.append(await read_goldens(line))
                finally:
                    await line.close()
        async with PtyRtuBus(fleet(), SerialLine(38400, "N", 1)) as pty:
            line = PymodbusLine(Bus("b", "rtu", serial=SerialPort(pty.path, 38400, "N", 1)))
            try:
                counts.append(await read_goldens(line))
            finally:
                await line.close()
        return counts

    counts = asyncio.run(scenario())
    assert counts[0] > 10
    assert counts == [counts[0]] * 4


@pytest.mark.parametrize("kind", [MbapLine, PymodbusLine])
def test_one_error_type_and_retries_only_for_silence(kind: type[Line]) -> None:
    timeout = 0.15

    async def scenario() -> None:
        async with ModbusTcpEndpoint(fleet({"eastron_sdm120": "busy"})) as endpoint:
            bus = Bus("b", "tcp", host="127.0.0.1", port=endpoint.port, timeout_s=timeout,
                      retries=2)  # fmt: skip
            line = kind(bus)  # type: ignore[call-arg]
            try:
                started = time.perf_counter()
                with pytest.raises(ModbusError) as silent:
                    await line.read(200, 4, 0, 2)  # nobody: three attempts
                assert silent.value.kind == "timeout"
                assert time.perf_counter() - started >= 3 * timeout * 0.9
                started = time.perf_counter()
                with pytest.raises(ModbusError) as once:
                    await line.read(200, 4, 0, 2, retries=0)
                assert once.value.kind == "timeout"
                assert time.perf_counter() - started < 2 * timeout
                started = time.perf_counter()
                with pytest.raises(ModbusError) as busy:
                    await line.read(UNITS["eastron_sdm120"], 4, 0, 2)
                assert (busy.value.kind, busy.value.code, busy.value.label) == (
                    "exception", 0x06, "exception_0x06")  # fmt: skip
                assert time.perf_counter() - started < timeout  # an answer is not retried
                with pytest.raises(ModbusError) as unmapped:
                    await line.read(UNITS["eastron_sdm630"], 4, 0x002C, 2)
                assert unmapped.value.label == "exception_0x02"
                with pytest.raises(ValueError, match="function"):
                    await line.read(1, 6, 0, 1)
                # still usable after all that
                assert len(await line.read(UNITS["eastron_sdm630"], 4, 0, 2)) == 2
            finally:
                await line.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", [MbapLine, PymodbusLine])
def test_a_refused_converter_costs_one_connect_attempt_per_wait(kind: type[Line]) -> None:
    async def scenario() -> None:
        endpoint = ModbusTcpEndpoint(fleet())
        _, port = await endpoint.start()
        await endpoint.stop()  # the port is now closed
        line = kind(Bus("b", "tcp", host="127.0.0.1", port=port, timeout_s=0.3))  # type: ignore[call-arg]
        assert isinstance(line, MbapLine | PymodbusLine)
        try:
            for _ in range(5):
                with pytest.raises(ModbusError) as refused:
                    await line.read(1, 4, 0, 2)
                assert refused.value.kind == "io"
            assert line.connect_failures == 1  # the other four did not try
            endpoint.port = port
            await endpoint.start()
            await asyncio.sleep(0.55)  # first wait: 0.5 s
            assert len(await line.read(UNITS["eastron_sdm630"], 4, 0, 2)) == 2
            assert line.connects == 1
        finally:
            await line.close()
            await endpoint.stop()

    asyncio.run(scenario())


def test_inter_frame_silence() -> None:
    def rtu(baud: int, parity: str, stop: int) -> Bus:
        return Bus("b", "rtu", serial=SerialPort("/dev/null", baud, parity, stop))  # type: ignore[arg-type]

    assert inter_frame_silence(rtu(9600, "E", 1)) == pytest.approx(3.5 * 11 / 9600)
    assert inter_frame_silence(rtu(9600, "N", 1)) == pytest.approx(3.5 * 10 / 9600)
    assert inter_frame_silence(rtu(115200, "N", 2)) == pytest.approx(0.00175)
    assert inter_frame_silence(Bus("b", "rtu-over-tcp", host="h", port=1)) == 0.0
    assert inter_frame_silence(Bus("b", "tcp", host="h", port=1)) == 0.0


def test_mbap_line_drops_late_answers_and_reconnects_a_silent_socket() -> None:
    """A slow device's answer arrives after its timeout, during the next request: it is
    dropped by transaction id, and the next answer is the right one. Requests that nobody
    answers, MAX_SILENT in a row, make the line open a new connection."""

    async def scenario() -> None:
        devices = fleet({"tuf2000m": ("slow", 0.3)})
        async with ModbusTcpEndpoint(devices) as endpoint:
            line = MbapLine(Bus("b", "tcp", host="127.0.0.1", port=endpoint.port, timeout_s=0.15))
            try:
                with pytest.raises(ModbusError) as slow:
                    await line.read(UNITS["tuf2000m"], 3, 0, 2)
                assert slow.value.kind == "timeout"
                sdm = builtin_profile("eastron_sdm630")
                golden = next(g for g in sdm.golden if g.channel == "voltage_l1_v")
                await asyncio.sleep(0.1)  # the late answer is on its way
                for _ in range(3):
                    words = await line.read(UNITS["eastron_sdm630"], 4, 0, 2)
                    assert words == golden.registers
                    await asyncio.sleep(0.05)
                assert line.stale_answers == 1
                assert line.connects == 1
                for _ in range(MbapLine.MAX_SILENT):
                    with pytest.raises(ModbusError):
                        await line.read(201, 4, 0, 2)  # nobody answers unit 201
                assert await line.read(UNITS["eastron_sdm630"], 4, 0, 2) == golden.registers
                assert line.connects == 2  # a fresh connection after the silent streak
            finally:
                await line.close()

    asyncio.run(scenario())
