"""Clients that are not ours (mbpoll, pymodbus) read the simulated meters over Modbus TCP,
RTU on a pseudo-terminal and RTU-over-TCP; the raw words must equal the public maps' golden
vectors, and exceptions 0x02/0x06 and silence for a wrong unit id must reach the client."""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psutil
import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ModbusPDU

from gateway_agent.profiles import Golden, Profile, builtin_profile, builtin_profiles
from gateway_agent.registers import decode
from simulators.modbus import (
    Fault,
    ModbusTcpEndpoint,
    PtyRtuBus,
    SerialLine,
    SimulatedDevice,
    StaticValues,
)
from simulators.modbus.frames import crc16, crc_ok, with_crc
from tests.support.modbus_fleet import Faults

pytestmark = pytest.mark.integration

UNITS = {"eastron_sdm630": 1, "eastron_sdm120": 2, "acrel_adl400": 3, "schneider_iem3155": 4,
         "tuf2000m": 5}  # fmt: skip
SERIALS = {"eastron_sdm630": 123456, "schneider_iem3155": 3155000}
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
# RTU lines in these tests: fast enough to keep the suite quick, paced all the same.
LINE = SerialLine(19200, "N", 2)
# pseudo-terminals here refuse PARENB (tcsetattr EINVAL), so clients open them 8N1; the bus
# still paces 11-bit characters.


def golden_values(profile: Profile) -> dict[str, float]:
    return {g.channel: math.nan if g.value is None else g.value for g in profile.golden}


def fleet(faults: Mapping[str, Fault] | None = None) -> dict[int, SimulatedDevice]:
    """One device per shipped profile, its value source set to the golden values."""
    hook = Faults(faults or {})
    return {
        UNITS[pid]: SimulatedDevice(
            profile,
            pid,
            StaticValues(golden_values(profile)),
            clock=lambda: T0,
            serial_number=SERIALS.get(pid, 0),
            faults=hook,
        )
        for pid, profile in builtin_profiles().items()
    }


def cases() -> list[tuple[str, Golden]]:
    return [(pid, g) for pid, p in builtin_profiles().items() for g in p.golden]


def case_id(case: tuple[str, Golden]) -> str:
    return f"{case[0]}-{case[1].channel}"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run a scenario; nothing it started may outlive it (tasks, threads, processes)."""
    threads = threading.active_count()

    async def main() -> None:
        await scenario()
        await asyncio.sleep(0.05)
        leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leaked, leaked

    asyncio.run(main())
    assert threading.active_count() == threads
    assert not psutil.Process().children(recursive=True)


async def read(client: AsyncModbusTcpClient | AsyncModbusSerialClient, function: int,
               address: int, count: int, unit: int) -> ModbusPDU:  # fmt: skip
    if function == 3:
        return await client.read_holding_registers(address, count=count, device_id=unit)
    return await client.read_input_registers(address, count=count, device_id=unit)


async def read_goldens(client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> None:
    for pid, golden in cases():
        spec = builtin_profile(pid).channels[golden.channel]
        reply = await read(client, spec.function, spec.address, spec.count, UNITS[pid])
        assert not reply.isError(), (pid, golden.channel, reply)
        words = list(reply.registers)
        decoded = decode(words, spec.fmt)
        if golden.value is None:  # sentinel: any NaN pattern, decoded as one
            assert decoded.sentinel, (pid, golden.channel, words)
        else:
            assert words == list(golden.registers), (pid, golden.channel, words)
            assert decoded.value == pytest.approx(golden.value, rel=1e-6)


async def expect_silence(client: AsyncModbusTcpClient | AsyncModbusSerialClient, unit: int) -> None:
    with pytest.raises(ModbusIOException):
        await client.read_input_registers(0, count=2, device_id=unit)


# --- mbpoll --------------------------------------------------------------------------------


def mbpoll_path() -> str:
    path = shutil.which("mbpoll")
    if path is None:
        pytest.fail("mbpoll is not installed (Debian package mbpoll): apt-get install -y mbpoll")
    return path


async def mbpoll(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        mbpoll_path(), "-1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def mbpoll_words(out: str) -> list[int]:
    return [int(h, 16) for _, h in re.findall(r"^\[(\d+)\]:\s+0x([0-9A-Fa-f]{4})", out, re.M)]


# Reference numbers straight from the public manuals (not from our profiles), read with
# mbpoll's 1-based references: this checks each profile's numbering conversion too.
MANUAL_REFERENCES = [
    ("eastron_sdm630", "3", 1, "voltage_l1_v"),  # Reg 30001
    ("eastron_sdm630", "3", 53, "power_w"),  # Reg 30053
    ("eastron_sdm630", "3", 73, "energy_import_kwh"),  # Reg 30073
    ("eastron_sdm120", "3", 0x0006 + 1, "current_l1_a"),  # Addr 0x0006
    ("eastron_sdm120", "3", 0x0048 + 1, "energy_import_kwh"),  # Addr 0x0048
    ("acrel_adl400", "4", 0x000A + 1, "energy_import_kwh"),  # Addr 0x000A
    ("acrel_adl400", "4", 0x0064 + 1, "current_l1_a"),  # Addr 0x0064
    ("acrel_adl400", "4", 0x016A + 1, "power_w"),  # Addr 0x016A
    ("schneider_iem3155", "4", 3028, "voltage_l1_v"),  # Reg 3028
    ("schneider_iem3155", "4", 3060, "power_w"),  # Reg 3060
    ("schneider_iem3155", "4", 45100, "energy_import_kwh"),  # Reg 45100
    ("tuf2000m", "4", 1, "water_flow_m3h"),  # REG0001
    ("tuf2000m", "4", 9, "water_volume_m3"),  # REG0009
    ("tuf2000m", "4", 33, "temperature_c"),  # REG0033
]


def golden_of(pid: str, channel: str) -> Golden:
    return next(g for g in builtin_profile(pid).golden if g.channel == channel)


# --- Modbus TCP ----------------------------------------------------------------------------


def test_pymodbus_reads_golden_words_over_tcp() -> None:
    async def scenario() -> None:
        async with ModbusTcpEndpoint(fleet()) as endpoint:
            client = AsyncModbusTcpClient("127.0.0.1", port=endpoint.port, timeout=1, retries=0)
            assert await client.connect()
            try:
                await read_goldens(client)
                serial = await client.read_holding_registers(0xFC00, count=2, device_id=1)
                assert serial.registers == [0x0001, 0xE240]  # 123456 as u32
                serial = await client.read_holding_registers(0x0081, count=2, device_id=4)
                assert serial.registers == [3155000 >> 16, 3155000 & 0xFFFF]
            finally:
                client.close()

    run(scenario)


@pytest.mark.parametrize(("pid", "table", "reference", "channel"), MANUAL_REFERENCES)
def test_mbpoll_reads_manual_references_over_tcp(
    pid: str, table: str, reference: int, channel: str
) -> None:
    golden = golden_of(pid, channel)

    async def scenario() -> None:
        async with ModbusTcpEndpoint(fleet()) as endpoint:
            code, out, err = await mbpoll(
                "-m", "tcp", "-p", str(endpoint.port), "-a", str(UNITS[pid]),
                "-t", f"{table}:hex", "-r", str(reference), "-c", str(len(golden.registers)),
                "127.0.0.1",
            )  # fmt: skip
            assert code == 0, err
            assert mbpoll_words(out) == list(golden.registers)

    run(scenario)


def test_mbpoll_zero_based_reference_and_identity() -> None:
    async def scenario() -> None:
        async with ModbusTcpEndpoint(fleet()) as endpoint:
            base = ("-m", "tcp", "-p", str(endpoint.port), "-t", "4:hex", "-c", "2")
            code, out, err = await mbpoll(*base, "-a", "4", "-0", "-r", str(0xB02B), "127.0.0.1")
            assert code == 0, err
            assert mbpoll_words(out) == list(golden_of("schneider_iem3155", "energy_import_kwh")
                                             .registers)  # fmt: skip
            code, out, err = await mbpoll(*base, "-a", "1", "-0", "-r", str(0xFC00), "127.0.0.1")
            assert code == 0, err
            assert mbpoll_words(out) == [0x0001, 0xE240]

    run(scenario)


def test_exceptions_and_silence_reach_pymodbus_over_tcp() -> None:
    async def scenario() -> None:
        devices = fleet({"eastron_sdm120": "busy"})
        async with ModbusTcpEndpoint(devices) as endpoint:
            client = AsyncModbusTcpClient("127.0.0.1", port=endpoint.port, timeout=0.3, retries=0)
            assert await client.connect()
            try:
                unmapped = await client.read_input_registers(0x002C, count=2, device_id=1)
                assert unmapped.isError()
                assert unmapped.exception_code == 0x02
                spanning = await client.read_input_registers(0x0040, count=8, device_id=1)
                assert spanning.exception_code == 0x02  # 0x0044 is not in the map
                wrong_table = await client.read_holding_registers(0x0048, count=2, device_id=1)
                assert wrong_table.exception_code == 0x02  # SDM energies are input registers
                busy = await client.read_input_registers(0x0000, count=2, device_id=2)
                assert busy.exception_code == 0x06
                await expect_silence(client, 99)
                again = await client.read_input_registers(0x0000, count=2, device_id=1)
                assert again.registers == [0x4366, 0x0000]  # the connection survives
            finally:
                client.close()

    run(scenario)


def test_exceptions_and_silence_reach_mbpoll() -> None:
    async def scenario() -> None:
        devices = fleet({"eastron_sdm120": "busy"})
        async with ModbusTcpEndpoint(devices) as endpoint:
            base = ("-m", "tcp", "-p", str(endpoint.port), "-o", "0.5", "-t", "3:hex", "-c", "2")
            code, _, err = await mbpoll(*base, "-a", "1", "-r", "45", "127.0.0.1")
            assert code != 0
            assert "Illegal data address" in err
            code, _, err = await mbpoll(*base, "-a", "2", "-r", "1", "127.0.0.1")
            assert code != 0
            assert "busy" in err.lower()
            code, _, err = await mbpoll(*base, "-a", "77", "-r", "1", "127.0.0.1")
            assert code != 0
            assert "timed out" in err.lower()

    run(scenario)


def test_one_device_per_endpoint() -> None:
    async def scenario() -> None:
        tuf = fleet()[UNITS["tuf2000m"]]
        async with ModbusTcpEndpoint({1: tuf}) as endpoint:
            client = AsyncModbusTcpClient("127.0.0.1", port=endpoint.port, timeout=0.3, retries=0)
            assert await client.connect()
            try:
                reply = await client.read_holding_registers(0, count=2, device_id=1)
                assert reply.registers == list(golden_of("tuf2000m", "water_flow_m3h").registers)
                await expect_silence(client, 5)
            finally:
                client.close()

    run(scenario)


def test_values_follow_the_injected_clock_and_counters_wrap() -> None:
    class Ramp:
        def values(self, meter_id: str, t: datetime) -> Mapping[str, float]:
            hours = (t - T0) / timedelta(hours=1)
            return {
                "energy_import_kwh": 21474836.48 - 1.0 + hours,  # ADL400 int32 x0.01 modulus
                "voltage_l1_v": math.nan,
                "power_w": 250.0 * hours,
            }

    now = [T0]

    async def scenario() -> None:
        adl = builtin_profile("acrel_adl400")
        sdm = builtin_profile("eastron_sdm630")
        devices = {
            1: SimulatedDevice(adl, "adl", Ramp(), clock=lambda: now[0]),
            2: SimulatedDevice(sdm, "sdm", Ramp(), clock=lambda: now[0]),
        }
        async with ModbusTcpEndpoint(devices) as endpoint:
            client = AsyncModbusTcpClient("127.0.0.1", port=endpoint.port, timeout=1, retries=0)
            assert await client.connect()
            try:
                energy = adl.channels["energy_import_kwh"]
                words = (
                    await client.read_holding_registers(0x000A, count=2, device_id=1)
                ).registers
                assert energy.decode(words).value == pytest.approx(21474835.48)
                now[0] = T0 + timedelta(hours=3)  # simulated time: three hours later
                words = (
                    await client.read_holding_registers(0x000A, count=2, device_id=1)
                ).registers
                assert energy.decode(words).value == pytest.approx(2.0)  # wrapped at modulus
                power = sdm.channels["power_w"]
                words = (await client.read_input_registers(0x0034, count=2, device_id=2)).registers
                assert power.decode(words).value == 750.0
                words = (await client.read_input_registers(0x0000, count=2, device_id=2)).registers
                assert sdm.channels["voltage_l1_v"].decode(words).sentinel
            finally:
                client.close()

    run(scenario)


def test_slow_device_answers_late() -> None:
    async def scenario() -> None:
        async with ModbusTcpEndpoint(fleet({"tuf2000m": ("slow", 0.25)})) as endpoint:
            client = AsyncModbusTcpClient("127.0.0.1", port=endpoint.port, timeout=2, retries=0)
            assert await client.connect()
            try:
                started = time.perf_counter()
                reply = await client.read_holding_registers(0, count=2, device_id=5)
                assert time.perf_counter() - started >= 0.25
                assert not reply.isError()
            finally:
                client.close()

    run(scenario)


def test_tcp_gateway_with_a_serial_line_serialises_transactions() -> None:
    line = SerialLine(9600, "N", 1)

    async def scenario() -> None:
        async with ModbusTcpEndpoint(fleet(), line=line) as endpoint:
            clients = [
                AsyncModbusTcpClient("127.0.0.1", port=endpoint.port, timeout=2, retries=0)
                for _ in range(2)
            ]
            for client in clients:
                assert await client.connect()
            try:
                started = time.perf_counter()
                replies = await asyncio.gather(
                    *(c.read_input_registers(0, count=2, device_id=1) for c in clients)
                )
                elapsed = time.perf_counter() - started
                assert all(r.registers == [0x4366, 0x0000] for r in replies)
                assert elapsed >= 2 * line.transaction_time(8, 9)
            finally:
                for client in clients:
                    client.close()

    run(scenario)


# --- Modbus RTU on a pseudo-terminal -------------------------------------------------------


def serial_client(path: str, timeout: float = 1.0) -> AsyncModbusSerialClient:
    return AsyncModbusSerialClient(
        path, baudrate=LINE.baud, parity="N", stopbits=1, timeout=timeout, retries=0
    )


def test_pymodbus_reads_golden_words_over_rtu_pty() -> None:
    async def scenario() -> None:
        async with PtyRtuBus(fleet({"eastron_sdm120": "busy"}), LINE) as bus:
            client = serial_client(bus.path, timeout=0.3)
            assert await client.connect()
            try:
                busy = await client.read_input_registers(0, count=2, device_id=2)
                assert busy.exception_code == 0x06
                for pid in ("eastron_sdm630", "acrel_adl400", "schneider_iem3155", "tuf2000m"):
                    for golden in builtin_profile(pid).golden:
                        spec = builtin_profile(pid).channels[golden.channel]
                        reply = await read(client, spec.function, spec.address, spec.count,
                                           UNITS[pid])  # fmt: skip
                        if golden.value is not None:
                            assert list(reply.registers) == list(golden.registers)
                unmapped = await client.read_holding_registers(0x0002, count=2, device_id=3)
                assert unmapped.exception_code == 0x02
                await expect_silence(client, 42)  # nobody answers: the master times out
                after = await client.read_input_registers(0x0048, count=2, device_id=1)
                assert after.registers == [0x449A, 0x5000]  # the bus is not stalled
            finally:
                client.close()

    run(scenario)


def test_rtu_pty_paces_frames_at_the_baud_rate() -> None:
    line = SerialLine(9600, "N", 1)  # the SDM630's default line, 10-bit characters

    async def scenario() -> None:
        sdm = fleet()[1]
        async with PtyRtuBus({1: sdm}, line) as bus:
            client = AsyncModbusSerialClient(bus.path, baudrate=9600, timeout=1, retries=0)
            assert await client.connect()
            try:
                started = time.perf_counter()
                for _ in range(10):
                    reply = await client.read_input_registers(0x0000, count=12, device_id=1)
                    assert len(reply.registers) == 12
                per_read = (time.perf_counter() - started) / 10
            finally:
                client.close()
        # request 8 bytes, silence, response 5 + 24 bytes: 37 characters of 1.04 ms + 3.6 ms
        floor = line.wire_time(8 + 29) + line.silence
        assert floor <= per_read < 4 * floor

    run(scenario)


def test_mbpoll_reads_rtu_pty() -> None:
    async def scenario() -> None:
        async with PtyRtuBus(fleet(), LINE) as bus:
            rtu = ("-m", "rtu", "-b", str(LINE.baud), "-P", "none", "-o", "0.5")
            for pid, table, reference, channel in MANUAL_REFERENCES[::3]:
                golden = golden_of(pid, channel)
                code, out, err = await mbpoll(
                    *rtu, "-a", str(UNITS[pid]), "-t", f"{table}:hex", "-r", str(reference),
                    "-c", str(len(golden.registers)), bus.path,
                )  # fmt: skip
                assert code == 0, err
                assert mbpoll_words(out) == list(golden.registers)
            code, _, err = await mbpoll(*rtu, "-a", "1", "-t", "3:hex", "-r", "45", bus.path)
            assert code != 0
            assert "Illegal data address" in err
            code, _, err = await mbpoll(*rtu, "-a", "9", "-t", "3:hex", "-r", "1", bus.path)
            assert code != 0
            assert "timed out" in err.lower()

    run(scenario)


def test_dead_device_on_a_bus_does_not_stall_the_others() -> None:
    async def scenario() -> None:
        async with PtyRtuBus(fleet({"acrel_adl400": "no_response"}), LINE) as bus:
            client = serial_client(bus.path, timeout=0.2)
            assert await client.connect()
            try:
                with pytest.raises(ModbusIOException):
                    await client.read_holding_registers(0x000A, count=2, device_id=3)
                started = time.perf_counter()
                reply = await client.read_holding_registers(0x0000, count=2, device_id=5)
                assert not reply.isError()
                assert time.perf_counter() - started < 0.15  # not a 0.2 s timeout
            finally:
                client.close()

    run(scenario)


# --- RTU over TCP --------------------------------------------------------------------------


def test_pymodbus_reads_golden_words_over_rtu_over_tcp() -> None:
    async def scenario() -> None:
        async with ModbusTcpEndpoint(fleet({"tuf2000m": "busy"}), framing="rtu") as endpoint:
            client = AsyncModbusTcpClient(
                "127.0.0.1", port=endpoint.port, framer=FramerType.RTU, timeout=0.3, retries=0
            )
            assert await client.connect()
            try:
                for pid, golden in cases():
                    if pid == "tuf2000m" or golden.value is None:
                        continue
                    spec = builtin_profile(pid).channels[golden.channel]
                    reply = await read(client, spec.function, spec.address, spec.count, UNITS[pid])
                    assert list(reply.registers) == list(golden.registers), (pid, golden.channel)
                busy = await client.read_holding_registers(0, count=2, device_id=5)
                assert busy.exception_code == 0x06
                unmapped = await client.read_input_registers(0x002C, count=2, device_id=1)
                assert unmapped.exception_code == 0x02
                await expect_silence(client, 200)
                after = await client.read_input_registers(0x0048, count=2, device_id=1)
                assert after.registers == [0x449A, 0x5000]
            finally:
                client.close()

    run(scenario)


# --- framing facts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        "01 04 00 00 00 02 71 CB",  # meter-register-maps.md verified vector
        "01 03 00 00 00 0A C5 CD",  # TUF-2000 manual 5.1: read REG0001..REG0010 of unit 1
        "01 10 00 1C 00 02 04 40 00 00 00 E7 36",  # SDM120 baud change request (SolarNetwork)
    ],
)
def test_crc_matches_published_frames(frame: str) -> None:
    data = bytes.fromhex(frame)
    assert crc_ok(data)
    assert with_crc(data[:-2]) == data
    # pymodbus keeps the CRC byte-swapped and packs it big-endian: the same two bytes
    ours = crc16(data[:-2]).to_bytes(2, "little")
    assert ours == FramerRTU.compute_CRC(data[:-2]).to_bytes(2, "big")


def test_serial_line_timing() -> None:
    assert SerialLine(9600, "E", 1).char_time == pytest.approx(11 / 9600)
    assert SerialLine(9600, "N", 1).char_time == pytest.approx(10 / 9600)
    assert SerialLine(9600, "E", 1).silence == pytest.approx(3.5 * 11 / 9600)
    assert SerialLine(38400, "E", 1).silence == pytest.approx(0.00175)


def test_meter_replacement_and_fault_records() -> None:
    """A source may report the serial in service and faults as objects (kind, delay, code)."""

    @dataclass(frozen=True)
    class Record:
        kind: str
        delay_s: float = 0.0
        exception_code: int | None = None

    class Replaced:
        def values(self, meter_id: str, t: datetime) -> Mapping[str, float]:
            return {"voltage_l1_v": 230.0}

        def serial(self, meter_id: str, t: datetime) -> int:
            return 1001 if t < T0 + timedelta(days=1) else 2002

        def device_fault(self, meter_id: str, t: datetime) -> Record | None:
            return Record("busy", exception_code=0x04) if t >= T0 + timedelta(days=2) else None

    now = [T0]

    async def scenario() -> None:
        device = SimulatedDevice(builtin_profile("eastron_sdm630"), "m", Replaced(),
                                 clock=lambda: now[0])  # fmt: skip
        async with ModbusTcpEndpoint({1: device}) as endpoint:
            client = AsyncModbusTcpClient("127.0.0.1", port=endpoint.port, timeout=1, retries=0)
            assert await client.connect()
            try:
                serial = await client.read_holding_registers(0xFC00, count=2, device_id=1)
                assert serial.registers == [0, 1001]
                now[0] = T0 + timedelta(days=1, hours=1)
                serial = await client.read_holding_registers(0xFC00, count=2, device_id=1)
                assert serial.registers == [0, 2002]
                now[0] = T0 + timedelta(days=2)
                failing = await client.read_input_registers(0, count=2, device_id=1)
                assert failing.exception_code == 0x04
            finally:
                client.close()

    run(scenario)
