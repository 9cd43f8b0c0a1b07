"""`meterward simulate`: simulated meters from a scenario file.

    meterward simulate history --scenario scenarios/residential-small.toml --days 7 \\
        --interval 15m --out readings.parquet [--seed S] [--start 2026-01-01]

The simulator packages (numpy, polars) are imported inside the commands, so an edge gateway
install without them can still run the rest of the CLI.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

simulate_app = typer.Typer(
    help="Simulated meter fleets: readings histories with a ground-truth ledger.",
    no_args_is_help=True,
)


def _error(lines: str, code: int = 2) -> typer.Exit:
    for line in lines.splitlines():
        print(f"meterward: error: {line}", file=sys.stderr)  # noqa: T201
    return typer.Exit(code)


class _Progress:
    """Progress on stderr: a bar on a terminal, a line per 10 % otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()
        self.next_pct = 10

    def __call__(self, done: int, total: int) -> None:
        if self.quiet or total <= 0:
            return
        pct = 100.0 * done / total
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        if self.tty:
            filled = int(pct / 2.5)
            bar = "#" * filled + "." * (40 - filled)
            print(  # noqa: T201
                f"\r  [{bar}] {pct:5.1f}%  {done:,} readings  {rate / 1e6:.1f} M/s",
                end="",
                file=sys.stderr,
                flush=True,
            )
            if done >= total:
                print(file=sys.stderr)  # noqa: T201
        elif pct >= self.next_pct or done >= total:
            print(f"  {pct:5.1f}%  {done:,} readings", file=sys.stderr)  # noqa: T201
            while self.next_pct <= pct:
                self.next_pct += 10


@simulate_app.command("history")
def history(  # noqa: PLR0917 - typer options
    scenario: Annotated[
        Path, typer.Option("--scenario", "-s", help="Scenario TOML file (see scenarios/).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Readings Parquet file; the ledger (.faults/.meters/.weather) goes beside it.",
        ),
    ],
    days: Annotated[float, typer.Option(help="Length of the history in days.")] = 7.0,
    interval: Annotated[
        str, typer.Option(help="Time between readings of a channel: 30s, 1m, 15m, 1h ...")
    ] = "15m",
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the scenario's).")] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="First instant: ISO date or time; naive values are in the scenario's time"
            " zone (default: the scenario's start)."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Write a readings history of every meter in a scenario, with its ledger.

    Readings: meter_id, channel, ts (UTC), value (after faults), unit,
    quality and true_value. Beside them: .faults.parquet (every fault and
    rollover), .meters.parquet (kind, profile, time zone, moduli,
    replacements) and .weather.parquet. The same seed gives the same bytes.
    """
    from simulators.history import History  # noqa: PLC0415 - server-side packages
    from simulators.scenario import (  # noqa: PLC0415
        ScenarioError,
        load_scenario,
        parse_duration,
        plan,
    )

    try:
        interval_s = parse_duration(interval)
    except ValueError as exc:
        raise _error(f"--interval: {exc}") from None
    if interval_s <= 0:
        raise _error("--interval must be positive")
    if days <= 0:
        raise _error("--days must be positive")
    try:
        run = History(plan(load_scenario(scenario), start=start, seed=seed), days, interval_s)
    except ScenarioError as exc:
        raise _error(str(exc)) from None
    except ValueError as exc:
        raise _error(f"--start: {exc}") from None
    total = run.total_readings
    meters = len(run.meter_ids)
    print(  # noqa: T201
        f"simulating {meters:,} meters x {run.times.size:,} instants ({total:,} readings)"
        f" from {run.plan.name} -> {out}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    summary = run.write(out, progress=_Progress(quiet))
    elapsed = time.perf_counter() - started
    print(  # noqa: T201
        f"wrote {summary.readings:,} readings of {summary.meters:,} meters and"
        f" {summary.faults:,} ledger faults in {elapsed:.1f} s"
        f" ({summary.readings / max(elapsed, 1e-9) / 1e6:.1f} M readings/s)"
    )
    for path in summary.paths.all():
        print(f"  {path}")  # noqa: T201


@simulate_app.command("run")
def run(  # noqa: PLR0917 - typer options
    ctx: typer.Context,
    scenario: Annotated[
        Path, typer.Option("--scenario", "-s", help="Scenario TOML file (see scenarios/).")
    ],
    speed: Annotated[
        float, typer.Option(min=0.001, help="Simulated seconds per real second (1 = real time).")
    ] = 1.0,
    start: Annotated[
        str | None,
        typer.Option(help="Simulated start: ISO date or time (default: now, real time)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the scenario's).")] = None,
    host: Annotated[
        str, typer.Option(help="Address the Modbus endpoints listen on.")
    ] = "127.0.0.1",
    base_port: Annotated[
        int, typer.Option(min=0, max=65000, help="First TCP port, one per bus (0: any free).")
    ] = 15020,
    rtu_over_tcp: Annotated[
        bool, typer.Option("--rtu-over-tcp", help="RTU framing over TCP instead of Modbus TCP.")
    ] = False,
    line_timing: Annotated[
        bool, typer.Option(help="Pace each bus at its serial line's wire time.")
    ] = True,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many real seconds.")
    ] = None,
    map_file: Annotated[
        Path | None, typer.Option("--map", help="Also write where each meter lives as JSON.")
    ] = None,
) -> None:
    """Serve a scenario's fleet: one Modbus TCP endpoint per RS-485 bus, MQTT meters
    publishing to MW_MQTT_URL; prints where each meter lives. Runs until Ctrl-C/SIGTERM."""
    import asyncio  # noqa: PLC0415
    import contextlib  # noqa: PLC0415
    import datetime as dt  # noqa: PLC0415
    import json  # noqa: PLC0415
    import signal  # noqa: PLC0415
    from dataclasses import asdict  # noqa: PLC0415

    from simulators.clock import AcceleratedClock  # noqa: PLC0415
    from simulators.fleet import Fleet  # noqa: PLC0415
    from simulators.scenario import ScenarioError, load_scenario, plan  # noqa: PLC0415
    from simulators.serve import serve_fleet  # noqa: PLC0415

    mqtt_url = getattr(ctx.find_root().obj, "mqtt_url", None)
    begin = start or dt.datetime.now(dt.UTC).replace(second=0, microsecond=0).isoformat()
    try:
        fleet = Fleet(plan(load_scenario(scenario), start=begin, seed=seed))
    except ScenarioError as exc:
        raise _error(str(exc)) from None
    except ValueError as exc:
        raise _error(f"--start: {exc}") from None

    async def main() -> None:
        clock = AcceleratedClock(fleet.start, speed)
        served = await serve_fleet(
            fleet, clock, host=host, base_port=base_port,
            framing="rtu" if rtu_over_tcp else "mbap", line_timing=line_timing,
            mqtt_url=mqtt_url,
        )  # fmt: skip
        for loc in served.locations:
            unit = f" unit {loc.unit_id:>3}" if loc.unit_id is not None else ""
            bus = f" bus {loc.bus}" if loc.bus else ""
            print(f"{loc.meter_id:24} {loc.transport:13} {loc.address}{unit}{bus} ({loc.profile})")  # noqa: T201
        if map_file is not None:
            map_file.write_text(json.dumps([asdict(x) for x in served.locations], indent=1))
        if any(m.transport == "mqtt" for m in fleet.meters.values()) and not mqtt_url:
            print("note: MW_MQTT_URL is not set; MQTT meters are not served", file=sys.stderr)  # noqa: T201
        print(  # noqa: T201
            f"serving {len(served.locations):,} meters of {fleet.plan.name} at {speed:g}x;"
            " Ctrl-C to stop",
            file=sys.stderr,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        await served.stop()

    asyncio.run(main())
