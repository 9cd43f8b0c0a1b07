"""Resident memory of one gateway agent process polling 1,000 simulated Modbus devices.

The simulators run in a separate process (their memory is not the agent's): 1,000 devices of
the five shipped profiles in turn, behind 5 converters (TCP endpoints) of 200 unit ids. This
process is the agent: the site model, the poller with its per-device health and read plans,
pymodbus clients, and every cycle appended to the SQLite outbox (WAL, synchronous=FULL) when
`gateway_agent.outbox` is present, else to a list cleared each cycle. Cycles run back to back
on a manual clock, all poll groups due each time (the heaviest cycle).

Baseline, same run: this process's RSS after importing everything the agent needs and before
building anything (the interpreter + libraries floor). Reported: RSS after building the site
and poller, peak RSS while polling, growth over the last half of the cycles (a leak shows
here), and peak / goal (150 MB).

    .venv/bin/python bench/gateway_memory.py [--devices 1000] [--cycles 12]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway_agent.clock import ManualClock  # noqa: E402
from gateway_agent.poller import Poller  # noqa: E402
from gateway_agent.profiles import builtin_profile  # noqa: E402
from gateway_agent.sample import Sample  # noqa: E402
from gateway_agent.site import Bus, Device, ForwardConfig, OutboxConfig, Site  # noqa: E402

PROFILES = ("eastron_sdm630", "eastron_sdm120", "acrel_adl400", "schneider_iem3155", "tuf2000m")
PER_ENDPOINT = 200
VALUES = {"voltage_l1_v": 230.1, "voltage_l2_v": 229.8, "voltage_l3_v": 231.0,
          "current_l1_a": 5.2, "power_w": 3580.0, "energy_import_kwh": 12345.6,
          "frequency_hz": 50.01, "power_factor": 0.93, "water_volume_m3": 321.5,
          "water_flow_m3h": 1.2, "temperature_c": 11.0}  # fmt: skip
MB = 1024 * 1024


def layout(devices: int) -> list[list[tuple[int, str]]]:
    """Per endpoint: (unit id, profile id) of each device."""
    out: list[list[tuple[int, str]]] = []
    for i in range(devices):
        if i % PER_ENDPOINT == 0:
            out.append([])
        out[-1].append((i % PER_ENDPOINT + 1, PROFILES[i % len(PROFILES)]))
    return out


async def serve(devices: int) -> None:
    from simulators.modbus import ModbusTcpEndpoint, SimulatedDevice, StaticValues  # noqa: PLC0415

    endpoints = [
        ModbusTcpEndpoint({u: SimulatedDevice(builtin_profile(p), f"e{e}-{u}", StaticValues(VALUES))
                           for u, p in units})
        for e, units in enumerate(layout(devices))
    ]  # fmt: skip
    print(*[(await e.start())[1] for e in endpoints], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for e in endpoints:
        await e.stop()


def site_for(ports: list[int], devices: int, outbox_path: str) -> Site:
    devs = []
    for e, units in enumerate(layout(devices)):
        for u, pid in units:
            p = builtin_profile(pid)
            groups = dict.fromkeys(p.poll_groups, 5.0)
            channels = tuple(p.channels.values())
            devs.append(Device(f"e{e}-{u}", f"conv{e}", u, p, channels, groups,
                               p.max_registers_per_read))  # fmt: skip
    return Site(
        gateway_id="bench",
        env="dev",
        buses={
            f"conv{e}": Bus(f"conv{e}", "tcp", host="127.0.0.1", port=port, timeout_s=2.0)
            for e, port in enumerate(ports)
        },
        devices=tuple(devs),
        mqtt_meters=(),
        outbox=OutboxConfig(path=outbox_path),
        forward=ForwardConfig(mqtt_url="mqtt://127.0.0.1:1", client_id="bench"),
    )


def rss() -> float:
    return psutil.Process().memory_info().rss / MB


async def agent(ports: list[int], args: argparse.Namespace, tmp: str) -> dict[str, float]:
    site = site_for(ports, args.devices, str(Path(tmp) / "outbox.db"))
    store = None
    try:
        from gateway_agent.outbox import Outbox  # noqa: PLC0415

        store = Outbox(site.outbox, boot_id=uuid.uuid4())
    except ImportError:
        pass
    kept: list[Sample] = []
    samples_per_cycle: list[int] = []
    after_cycle: list[float] = []
    stop = asyncio.Event()

    async def sink(samples: list[Sample]) -> None:
        samples_per_cycle.append(len(samples))
        if store is not None:
            await asyncio.to_thread(store.append, samples)
        else:
            kept[:] = samples
        after_cycle.append(rss())
        if len(after_cycle) >= args.cycles:
            stop.set()

    poller = Poller(site, sink, ManualClock(1_767_225_600.0))
    built = rss()
    await poller.run(stop)
    if store is not None:
        store.close()
    failed = poller.stats.reads_failed
    if failed:
        raise RuntimeError(f"{failed} failed reads: {poller.stats}")
    half = len(after_cycle) // 2
    return {
        "built": built,
        "peak": max(after_cycle),
        "growth": after_cycle[-1] - after_cycle[half],
        "samples": sum(samples_per_cycle) / len(samples_per_cycle),
        "reads": poller.stats.reads_ok / len(after_cycle),
        "outbox": 1.0 if store is not None else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=12)
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.devices))
        return
    import pymodbus.client  # noqa: F401, PLC0415  - part of the floor: the agent needs it

    baseline = rss()
    cmd = [sys.executable, __file__, "--serve", "--devices", str(args.devices)]
    with (
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc,
        tempfile.TemporaryDirectory() as tmp,
    ):
        assert proc.stdout is not None
        assert proc.stdin is not None
        ports = [int(p) for p in proc.stdout.readline().split()]
        result = asyncio.run(agent(ports, args, tmp))
        proc.stdin.close()
        proc.wait(timeout=30)
    peak_os = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    sink = "SQLite outbox" if result["outbox"] else "list (no outbox module yet)"
    print(f"{args.devices} devices ({', '.join(PROFILES)} in turn) on {len(ports)} converters; "
          f"{args.cycles} cycles of {result['reads']:.0f} reads, {result['samples']:.0f} samples; "
          f"sink: {sink}")  # fmt: skip
    print(f"baseline RSS (interpreter + agent imports): {baseline:7.1f} MB")
    print(f"RSS with site + poller built:              {result['built']:7.1f} MB")
    print(f"peak RSS while polling (after each cycle): {result['peak']:7.1f} MB "
          f"(ru_maxrss {peak_os:.1f} MB)")  # fmt: skip
    print(f"growth over the last {args.cycles - args.cycles // 2} cycles:       "
          f"{result['growth']:+7.1f} MB")  # fmt: skip
    print(f"agent above baseline: {max(result['peak'], peak_os) - baseline:.1f} MB; "
          f"peak / goal: {max(result['peak'], peak_os) / 150:.2f} (goal <= 150 MB)")  # fmt: skip


if __name__ == "__main__":
    main()
