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
