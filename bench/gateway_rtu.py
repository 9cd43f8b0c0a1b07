"""Modbus RTU polls per second achieved by the gateway's poller on a paced serial line, as a
fraction of the line's theoretical maximum, at 9600 and 19200 baud.

The line is a pseudo-terminal RS-485 bus (`simulators.modbus.PtyRtuBus`) served by a separate
process, which paces every byte at the baud rate: a request counts as received when its last
character would have arrived, the device answers after the 3.5-character silence, and the
answer leaves one character time per byte. Characters are 11 bits (8N2; Modbus RTU requires 11
and the pseudo-terminals here refuse parity, so 8N2 rather than 8E1). The theoretical maximum
is the brief's: per read, wire time of request + response + two 3.5-character gaps
(`SerialLine.transaction_time`), summed over the reads the poller's plan makes. Devices answer
with zero latency (real meters add 5-50 ms, which would only lower both figures). Every poll
group of the devices gets the same interval, so each cycle reads exactly the blocks counted.

The baseline, measured in the same run: a bare pymodbus serial client reading the same blocks
back to back (no gap kept, no decode), as a fraction of the same maximum.

    .venv/bin/python bench/gateway_rtu.py [--devices 4] [--seconds 8] [--bauds 9600 19200]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway_agent.clock import ManualClock  # noqa: E402
from gateway_agent.planning import Read, plan_reads  # noqa: E402
from gateway_agent.poller import Poller  # noqa: E402
from gateway_agent.profiles import builtin_profile  # noqa: E402
from gateway_agent.sample import Sample  # noqa: E402
from gateway_agent.site import (  # noqa: E402
    Bus,
    Device,
    ForwardConfig,
    OutboxConfig,
    SerialPort,
    Site,
)
from simulators.modbus import SerialLine  # noqa: E402

PROFILE = "eastron_sdm630"
VALUES = {"voltage_l1_v": 230.1, "voltage_l2_v": 229.8, "voltage_l3_v": 231.0,
          "current_l1_a": 5.2, "power_w": 3580.0, "energy_import_kwh": 12345.6,
          "frequency_hz": 50.01}  # fmt: skip


def line_for(baud: int) -> SerialLine:
    return SerialLine(baud, "N", 2)


async def serve(devices: int, baud: int) -> None:
    """Child process: one paced pty bus with `devices` SDM630s; prints the pty path."""
    from simulators.modbus import PtyRtuBus, SimulatedDevice, StaticValues  # noqa: PLC0415

    profile = builtin_profile(PROFILE)
    sims = {u: SimulatedDevice(profile, f"m{u}", StaticValues(VALUES)) for u in
            range(1, devices + 1)}  # fmt: skip
    async with PtyRtuBus(sims, line_for(baud)) as bus:
        print(bus.path, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


def reads() -> tuple[Read, ...]:
    profile = builtin_profile(PROFILE)
    return plan_reads(profile, list(profile.channels.values()))


def theoretical_per_cycle(baud: int, devices: int) -> float:
    line = line_for(baud)
    per_device = sum(line.transaction_time(8, 5 + 2 * r.count) for r in reads())
    return devices * per_device


def site_for(path: str, baud: int, devices: int) -> Site:
    profile = builtin_profile(PROFILE)
    bus = Bus("rs485", "rtu", serial=SerialPort(path, baud, "N", 2), timeout_s=1.0)
    return Site(
        gateway_id="bench",
        env="dev",
        buses={"rs485": bus},
        devices=tuple(
            Device.of(f"m{u}", "rs485", u, profile, dict.fromkeys(profile.poll_groups, 5.0))
            for u in range(1, devices + 1)
        ),
        mqtt_meters=(),
        outbox=OutboxConfig(path=":memory:"),
        forward=ForwardConfig(mqtt_url="mqtt://127.0.0.1:1", client_id="bench"),
    )


async def agent(path: str, baud: int, devices: int, seconds: float) -> tuple[float, int]:
    """Polls/s of the poller running cycles back to back (a manual clock: no idle time)."""
    kept: list[Sample] = []
    marks: list[tuple[float, int]] = []
    stop = asyncio.Event()
    poller: Poller

    async def sink(samples: list[Sample]) -> None:
        kept.extend(samples)
        marks.append((time.perf_counter(), poller.stats.reads_ok))
        if marks[-1][0] - marks[0][0] >= seconds:
            stop.set()

    poller = Poller(site_for(path, baud, devices), sink, ManualClock(1_767_225_600.0))
    await poller.run(stop)
    (t0, n0), (t1, n1) = marks[0], marks[-1]  # whole cycles only, the first one as warm-up
    assert poller.stats.reads_failed == 0, poller.stats
    return (n1 - n0) / (t1 - t0), len(kept)


async def bare(path: str, baud: int, devices: int, seconds: float) -> float:
    """Polls/s of a bare pymodbus serial client reading the same blocks back to back."""
    from pymodbus.client import AsyncModbusSerialClient  # noqa: PLC0415

    client = AsyncModbusSerialClient(path, baudrate=baud, parity="N", stopbits=2, timeout=1,
                                     retries=0, reconnect_delay=0)  # fmt: skip
    assert await client.connect()
    blocks = [(r.address, r.count) for r in reads()]
    try:
        n = 0
        started = 0.0
        while True:
            for unit in range(1, devices + 1):
                for address, count in blocks:
                    reply = await client.read_input_registers(address, count=count,
                                                              device_id=unit)  # fmt: skip
                    assert not reply.isError()
            if not started:
                started = time.perf_counter()  # after one warm-up cycle
                continue
            n += devices * len(blocks)
            if time.perf_counter() - started >= seconds:
                return n / (time.perf_counter() - started)
    finally:
        client.close()


def measure(kind: str, baud: int, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--serve", str(baud), "--devices", str(args.devices)]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        path = proc.stdout.readline().strip()
        if kind == "agent":
            rate, _ = asyncio.run(agent(path, baud, args.devices, args.seconds))
        else:
            rate = asyncio.run(bare(path, baud, args.devices, args.seconds))
        proc.stdin.close()
        proc.wait(timeout=30)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--bauds", type=int, nargs="+", default=[9600, 19200])
    parser.add_argument("--serve", type=int)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.devices, args.serve))
        return
    blocks = reads()
    sizes = ", ".join(str(r.count) for r in blocks)
    print(f"{args.devices} x {PROFILE} on one bus, {len(blocks)} reads per device "
          f"({sizes} registers), 8N2 (11-bit characters)")  # fmt: skip
    for baud in args.bauds:
        per_cycle = theoretical_per_cycle(baud, args.devices)
        maximum = args.devices * len(blocks) / per_cycle
        bare_rate = measure("bare", baud, args)
        agent_rate = measure("agent", baud, args)
        print(f"\n{baud} baud: theoretical maximum {maximum:6.1f} polls/s "
              f"(request + response + 2 x 3.5-character gaps)")  # fmt: skip
        print(f"  bare pymodbus, back to back (no gap kept): {bare_rate:6.1f} polls/s "
              f"= {bare_rate / maximum:.3f} of maximum")  # fmt: skip
        print(f"  gateway poller (decode, gap kept):         {agent_rate:6.1f} polls/s "
              f"= {agent_rate / maximum:.3f} of maximum (goal >= 0.85)")  # fmt: skip
        print(f"  poller / bare: {agent_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
