"""Modbus requests answered per second: one simulator process serving 2,000 devices over
Modbus TCP, against pymodbus' bare server with a static datastore, same client load, same run.

A Modbus unit id is one byte (1..247 usable), so 2,000 devices cannot share one unit-id space:
the process hosts them behind E endpoints of 200 unit ids each (RS-485-to-Ethernet
converters), and the bare pymodbus process gets the same layout. Each server runs in its own
process; the client is this process: C raw-socket connections on loopback spread over the
endpoints, one request in flight each (pymodbus' server keeps one decoded frame per read, so
pipelining would lose requests), cycling over the unit ids and three SDM630 read blocks
(phase V/I, total power, energies). Rounds alternate bare/simulator; medians are reported.

    .venv/bin/python bench/modbus_server.py [--devices 2000] [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import struct
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import cast

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (function, address, count): SDM630 input registers.
BLOCKS = [(4, 0x0000, 12), (4, 0x0034, 2), (4, 0x0048, 8)]
VALUES = {
    "voltage_l1_v": 230.1, "voltage_l2_v": 229.8, "voltage_l3_v": 231.0,
    "current_l1_a": 5.2, "current_l2_a": 4.9, "current_l3_a": 6.1,
    "power_l1_w": 1150.0, "power_l2_w": 1080.0, "power_l3_w": 1350.0, "power_w": 3580.0,
    "energy_import_kwh": 12345.6, "energy_export_kwh": 12.5,
    "reactive_import_kvarh": 321.0, "reactive_export_kvarh": 4.0, "frequency_hz": 50.01,
}  # fmt: skip


# --- servers (run in a child process) ------------------------------------------------------


PER_ENDPOINT = 200


def layout(devices: int) -> list[int]:
    """Unit ids per endpoint: [200, 200, ...] summing to `devices`."""
    return [min(PER_ENDPOINT, devices - i) for i in range(0, devices, PER_ENDPOINT)]


async def serve_simulator(devices: int) -> None:
    from gateway_agent.profiles import builtin_profile  # noqa: PLC0415
    from simulators.modbus import ModbusTcpEndpoint, SimulatedDevice, StaticValues  # noqa: PLC0415

    profile = builtin_profile("eastron_sdm630")
    source = StaticValues(VALUES)
    endpoints = []
    for e, units in enumerate(layout(devices)):
        fleet = {
            unit: SimulatedDevice(profile, f"m{e}-{unit}", source, serial_number=unit)
            for unit in range(1, units + 1)
        }
        endpoints.append(ModbusTcpEndpoint(fleet))
    ports = [(await endpoint.start())[1] for endpoint in endpoints]
    print(*ports, flush=True)
    await wait_for_stdin_close()
    for endpoint in endpoints:
        await endpoint.stop()


async def serve_bare(devices: int) -> None:
    from pymodbus.server import ModbusTcpServer  # noqa: PLC0415
    from pymodbus.simulator import DataType, SimData, SimDevice  # noqa: PLC0415

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # shutdown noise
    words = [(i * 7919) & 0xFFFF for i in range(0x50)]
    servers = []
    for units in layout(devices):
        fleet = [
            SimDevice(id=unit, simdata=[SimData(0, values=words, datatype=DataType.REGISTERS)])
            for unit in range(1, units + 1)
        ]
        server = ModbusTcpServer(fleet, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        servers.append(server)
    listeners = [cast(asyncio.Server, s.transport) for s in servers]
    ports = [listener.sockets[0].getsockname()[1] for listener in listeners]
    print(*ports, flush=True)
    await wait_for_stdin_close()
    for server in servers:
        await server.shutdown()  # type: ignore[no-untyped-call]


async def wait_for_stdin_close() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


# --- client load ---------------------------------------------------------------------------


class Load(asyncio.Protocol):
    """One connection: send, wait for the whole response, send the next."""

    def __init__(self, requests: list[bytes], lengths: list[int], stats: dict[str, int]) -> None:
        self.requests, self.lengths, self.stats = requests, lengths, stats
        self.i = 0
        self.got = 0
        self.transport: asyncio.Transport | None = None
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.requests[0])

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        want = self.lengths[self.i]
        if self.got < want:
            return
        if data[7] & 0x80:
            self.stats["errors"] += 1
        self.stats["answered"] += 1
        self.got = 0
        self.i = (self.i + 1) % len(self.requests)
        if self.running and self.transport is not None:
            self.transport.write(self.requests[self.i])


def requests_for(units: int, offset: int) -> tuple[list[bytes], list[int]]:
    reqs, lengths = [], []
    for k in range(3 * units):  # every unit id with every block
        unit = (k + offset) % units + 1
        fc, address, count = BLOCKS[(k // units + offset) % len(BLOCKS)]
        tid = k & 0xFFFF
        reqs.append(struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, address, count))
        lengths.append(9 + 2 * count)
    return reqs, lengths


async def drive(
    ports: list[int], devices: int, connections: int, seconds: float
) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    stats = {"answered": 0, "errors": 0}
    protocols = []
    units = layout(devices)
    for c in range(connections):
        e = c % len(ports)
        reqs, lengths = requests_for(units[e], c * 37)
        _, proto = await loop.create_connection(
            partial(Load, reqs, lengths, stats), "127.0.0.1", ports[e]
        )
        protocols.append(proto)
    await asyncio.sleep(1.0)  # warm-up
    start_count, start = stats["answered"], time.perf_counter()
    await asyncio.sleep(seconds)
    answered, elapsed = stats["answered"] - start_count, time.perf_counter() - start
    for proto in protocols:
        proto.running = False
        if proto.transport is not None:
            proto.transport.close()
    return answered / elapsed, stats["errors"]


def measure(kind: str, args: argparse.Namespace) -> tuple[float, float]:
    """Requests/s answered by a fresh server of `kind`, and that server's CPU use (0..1)."""
    cmd = [sys.executable, __file__, "--serve", kind, "--devices", str(args.devices)]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        ports = [int(p) for p in proc.stdout.readline().split()]
        server = psutil.Process(proc.pid)
        cpu_before = sum(server.cpu_times()[:2])
        wall = time.perf_counter()
        rate, errors = asyncio.run(drive(ports, args.devices, args.connections, args.seconds))
        cpu = (sum(server.cpu_times()[:2]) - cpu_before) / (time.perf_counter() - wall)
        proc.stdin.close()
        proc.wait(timeout=30)
    if errors:
        raise SystemExit(f"{kind}: {errors} exception responses; the load is wrong")
    return rate, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--serve", choices=["sim", "bare"])
    args = parser.parse_args()
    if args.serve:
        asyncio.run(
            serve_simulator(args.devices) if args.serve == "sim" else serve_bare(args.devices)
        )
        return
    results: dict[str, list[float]] = {"bare": [], "sim": []}
    for n in range(args.rounds):
        for kind in ("bare", "sim"):
            rate, cpu = measure(kind, args)
            results[kind].append(rate)
            print(f"round {n + 1} {kind:4}: {rate:9.0f} req/s  (server CPU {cpu:.0%})")
    bare, sim = statistics.median(results["bare"]), statistics.median(results["sim"])
    print(
        f"\ndevices={args.devices} endpoints={len(layout(args.devices))} "
        f"connections={args.connections} seconds={args.seconds} rounds={args.rounds}"
    )
    print(f"pymodbus bare server (static datastore): {bare:9.0f} req/s")
    print(f"meterward simulator (encode per read):   {sim:9.0f} req/s")
    print(f"ratio simulator / bare: {sim / bare:.2f} (goal >= 0.80)")


if __name__ == "__main__":
    main()
