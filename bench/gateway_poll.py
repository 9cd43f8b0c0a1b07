"""Register blocks read per second by the gateway's poller over Modbus TCP, against a bare
pymodbus client loop reading the same blocks over the same connections, same run.

Fairness: the simulators run in a separate process pinned to one core and this process (the
client side: bare loop or poller) is pinned to the other, so "blocks/s on one core" is the
agent's own core; on a one-core machine both share it and the figures say so. The fleet is
B converters (TCP endpoints) x D SDM630 meters; every poll group gets the same interval so
each cycle reads every device's 5 planned blocks (18, 2, 2, 4 and 10 registers). Both sides
keep one request in flight per connection, all connections in parallel.

- bare: `AsyncModbusTcpClient.read_input_registers` in a loop per connection, no decode.
- poller, list sink: `Poller` on a manual clock (cycles back to back, no idle wait) over the
  agent's Modbus TCP line (`gateway_agent.modbus.MbapLine`: asyncio, not pymodbus, which
  costs ~40 us of CPU per read; see its docstring), decode to `Sample`s, one sink call per
  cycle into a list that holds the cycle (keeping every sample of the run would measure the
  garbage collector walking a heap the agent never has: it hands cycles to the outbox).
- poller, outbox sink: the same, the sink appends each cycle to the SQLite outbox
  (`gateway_agent.outbox.Outbox`, WAL, synchronous=FULL: one fsync'd transaction per cycle),
  in a worker thread so the event loop keeps polling meanwhile.

Rounds alternate the candidates; medians are reported. Besides blocks/s (which the simulator
process and other load on the machine bound as much as the client), the client's CPU time per
block over the same window is printed: blocks per core-second is what "on one core" means.

    .venv/bin/python bench/gateway_poll.py [--buses 10] [--devices 20] [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway_agent.clock import ManualClock  # noqa: E402
from gateway_agent.planning import plan_reads  # noqa: E402
from gateway_agent.poller import Poller  # noqa: E402
from gateway_agent.profiles import builtin_profile  # noqa: E402
from gateway_agent.sample import Sample  # noqa: E402
from gateway_agent.site import Bus, Device, ForwardConfig, OutboxConfig, Site  # noqa: E402

PROFILE = "eastron_sdm630"
VALUES = {
    "voltage_l1_v": 230.1, "voltage_l2_v": 229.8, "voltage_l3_v": 231.0,
    "current_l1_a": 5.2, "current_l2_a": 4.9, "current_l3_a": 6.1,
    "power_l1_w": 1150.0, "power_l2_w": 1080.0, "power_l3_w": 1350.0, "power_w": 3580.0,
    "energy_import_kwh": 12345.6, "energy_export_kwh": 12.5, "power_factor": 0.93,
    "reactive_import_kvarh": 321.0, "reactive_export_kvarh": 4.0, "frequency_hz": 50.01,
}  # fmt: skip
T0 = 1_767_225_600.0


def pin(core: int) -> str:
    """Pin this process to one core when the machine has two or more; say what was done.
    (The simulator child inherits the client's affinity, so it picks from all cores.)"""
    me = psutil.Process()
    me.cpu_affinity([])  # [] = every core the machine has
    cores = sorted(me.cpu_affinity())
    if len(cores) < 2:
        return f"not pinned ({len(cores)} core)"
    chosen = cores[core % len(cores)]
    os.sched_setaffinity(0, {chosen})
    return f"core {chosen}"


# --- simulators (child process) ------------------------------------------------------------


async def serve(buses: int, devices: int) -> None:
    from simulators.modbus import ModbusTcpEndpoint, SimulatedDevice, StaticValues  # noqa: PLC0415

    where = pin(1)
    profile = builtin_profile(PROFILE)
    endpoints = [
        ModbusTcpEndpoint({u: SimulatedDevice(profile, f"b{b}-m{u}", StaticValues(VALUES))
                           for u in range(1, devices + 1)})
        for b in range(buses)
    ]  # fmt: skip
    ports = [(await e.start())[1] for e in endpoints]
    print(*ports, flush=True)
    print(where, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for e in endpoints:
        await e.stop()


# --- the client side -----------------------------------------------------------------------


def blocks() -> list[tuple[int, int, int]]:
    profile = builtin_profile(PROFILE)
    return [(r.function, r.address, r.count)
            for r in plan_reads(profile, list(profile.channels.values()))]  # fmt: skip


def site_for(ports: list[int], devices: int, outbox_path: str) -> Site:
    profile = builtin_profile(PROFILE)
    groups = dict.fromkeys(profile.poll_groups, 5.0)
    return Site(
        gateway_id="bench",
        env="dev",
        buses={f"b{i}": Bus(f"b{i}", "tcp", host="127.0.0.1", port=p, timeout_s=2.0)
               for i, p in enumerate(ports)},
        devices=tuple(
            Device(f"b{i}-m{u}", f"b{i}", u, profile, tuple(profile.channels.values()), groups,
                   profile.max_registers_per_read)
            for i in range(len(ports)) for u in range(1, devices + 1)
        ),
        mqtt_meters=(),
        outbox=OutboxConfig(path=outbox_path),
        forward=ForwardConfig(mqtt_url="mqtt://127.0.0.1:1", client_id="bench"),
    )  # fmt: skip


async def bare(ports: list[int], devices: int, seconds: float) -> tuple[float, float]:
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=2, retries=0,
                                    reconnect_delay=0) for p in ports]  # fmt: skip
    for c in clients:
        assert await c.connect()
    todo = blocks()
    count = [0]
    running = [True]

    async def loop(client: AsyncModbusTcpClient) -> None:
        while running[0]:
            for unit in range(1, devices + 1):
                for _, address, n in todo:
                    reply = await client.read_input_registers(address, count=n, device_id=unit)
                    if reply.isError():
                        raise RuntimeError(reply)
                    count[0] += 1

    tasks = [asyncio.create_task(loop(c)) for c in clients]
    await asyncio.sleep(1.0)  # warm-up
    n0, t0, cpu0 = count[0], time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    rate = (count[0] - n0) / (time.perf_counter() - t0)
    cpu_per_block = (time.process_time() - cpu0) / (count[0] - n0)
    running[0] = False
    await asyncio.gather(*tasks)
    for c in clients:
        c.close()
    return rate, cpu_per_block


async def agent(
    ports: list[int], devices: int, seconds: float, outbox: bool
) -> tuple[float, float]:
    kept: list[Sample] = []
    marks: list[tuple[float, int, float]] = []
    stop = asyncio.Event()
    with tempfile.TemporaryDirectory() as tmp:
        site = site_for(ports, devices, str(Path(tmp) / "outbox.db"))
        store = None
        if outbox:
            from gateway_agent.outbox import Outbox  # noqa: PLC0415

            store = Outbox(site.outbox, boot_id=uuid.uuid4())
        poller: Poller

        async def sink(samples: list[Sample]) -> None:
            if store is not None:
                await asyncio.to_thread(store.append, samples)
            else:  # hold the cycle, as the outbox does until its transaction commits
                kept[:] = samples
            now = time.perf_counter()
            marks.append((now, poller.stats.reads_ok, time.process_time()))
            if now - marks[0][0] >= seconds + 1.0:
                stop.set()

        poller = Poller(site, sink, ManualClock(T0))
        await poller.run(stop)
        if store is not None:
            store.close()
    if poller.stats.reads_failed:
        raise RuntimeError(f"failed reads: {poller.stats}")
    # drop the first second of cycles as warm-up
    start, end = next(m for m in marks if m[0] - marks[0][0] >= 1.0), marks[-1]
    return (end[1] - start[1]) / (end[0] - start[0]), (end[2] - start[2]) / (end[1] - start[1])


def measure(kind: str, args: argparse.Namespace) -> tuple[float, float]:
    """Blocks/s of `kind` against a fresh simulator process, and this process's CPU seconds
    per block (the outbox's writer thread included) over the same window."""
    cmd = [sys.executable, __file__, "--serve", "--buses", str(args.buses),
           "--devices", str(args.devices)]  # fmt: skip
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        ports = [int(p) for p in proc.stdout.readline().split()]
        args.simulator_core = proc.stdout.readline().strip()
        if kind == "bare":
            rate, cpu = asyncio.run(bare(ports, args.devices, args.seconds))
        else:
            rate, cpu = asyncio.run(agent(ports, args.devices, args.seconds, kind == "outbox"))
        proc.stdin.close()
        proc.wait(timeout=30)
    return rate, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buses", type=int, default=10)
    parser.add_argument("--devices", type=int, default=20, help="per bus")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.buses, args.devices))
        return
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    where = pin(0)
    kinds = ("bare", "list", "outbox")
    results: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    for n in range(args.rounds):
        for kind in kinds:
            rate, cpu = measure(kind, args)
            results[kind].append(rate)
            cpus[kind].append(cpu)
            print(f"round {n + 1} {kind:6}: {rate:8.0f} blocks/s  "
                  f"(client CPU {cpu * 1e6:5.1f} us per block)")  # fmt: skip
    bare_rate = statistics.median(results["bare"])
    bare_cpu = statistics.median(cpus["bare"])
    print(
        f"\nclient {where}; simulators {args.simulator_core}; {args.buses} connections x "
        f"{args.devices} SDM630, 5 blocks each; {args.seconds} s x {args.rounds} rounds"
    )
    us, per_core = bare_cpu * 1e6, 1 / bare_cpu
    print(f"{'bare pymodbus loop:':31} {bare_rate:8.0f} blocks/s  "
          f"{us:5.1f} us CPU per block = {per_core:7.0f} blocks per core-second")  # fmt: skip
    for kind, label in (("list", "poller, list sink:"), ("outbox", "poller, SQLite outbox sink:")):
        rate = statistics.median(results[kind])
        cpu = statistics.median(cpus[kind])
        print(f"{label:31} {rate:8.0f} blocks/s  {cpu * 1e6:5.1f} us CPU per block = "
              f"{1 / cpu:7.0f} blocks per core-second")  # fmt: skip
        goals = "goals: >= 0.70 of bare, >= 2,000 blocks/s on one core"
        print(f"{'':31} ratio to bare: throughput {rate / bare_rate:.2f}, per core-second "
              f"{bare_cpu / cpu:.2f} ({goals})")  # fmt: skip


if __name__ == "__main__":
    main()
