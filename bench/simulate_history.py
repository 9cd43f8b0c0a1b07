"""Readings generated per second by `simulate history`: 1,000 meters x 1 year at 15 minutes.

A reading is one (meter, channel, ts) value. The fleet is the mixed-fleet scenario scaled to
`--meters` (same projects, time zones, kinds and profiles in the same proportions; no faults),
so the channel mix is realistic: single-phase flats (11 channels), water meters (2), three-
phase plant and floors (15-18), weather stations (2).

Measured in the same run:
  simulate    History.write(): physics, faults, registers, frames, streamed to Parquet with
              the ledger beside it (what `meterward simulate history` does; two generator
              threads beside the writer's)
  generate    one generator thread, no Parquet: frames built and dropped (single-core cost)
  baseline    the I/O floor: the same number of rows with the same schema and the same frame
              size, values from a plain numpy fill (rng.standard_normal: `value` rounded to
              float32 as a register holds it, `true_value` full float64, the entropy of real
              readings), streamed through the same writer with the same options.
              simulate/baseline says how close the simulator gets to the cost of merely
              writing that many numbers.

    .venv/bin/python bench/simulate_history.py [--meters 1000] [--days 365] [--interval 15m]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from simulators.history import History
from simulators.ledger import readings_schema, write_readings
from simulators.scenario import parse_duration, parse_scenario, plan

ROOT = Path(__file__).resolve().parents[1]
FRAME_ROWS = 1_000_000


def scaled_fleet(meters: int) -> dict[str, Any]:
    """mixed-fleet.toml with every group scaled to `meters` in total, faults removed."""
    data = tomllib.loads((ROOT / "scenarios" / "mixed-fleet.toml").read_text(encoding="utf-8"))
    total = sum(g.get("count", 1) for p in data["projects"] for g in p["meters"])
    for project in data["projects"]:
        for group in project["meters"]:
            group["count"] = max(1, round(group.get("count", 1) * meters / total))
    data["faults"] = []
    return data


def baseline_frames(meter_ids: list[str], rows: int) -> Iterator[pl.DataFrame]:
    schema = readings_schema(meter_ids)
    rng = np.random.default_rng(0)
    done = 0
    t0 = 1_767_225_600_000_000
    while done < rows:
        n = min(FRAME_ROWS, rows - done)
        truth = rng.standard_normal(n) * 1000.0
        values = truth.astype(np.float32).astype(np.float64)
        meter = (np.arange(done, done + n, dtype=np.int64) // 35_040) % len(meter_ids)
        yield pl.DataFrame(
            {
                "meter_id": pl.Series(meter.astype(np.uint16)).cat.to(schema["meter_id"]),
                "channel": pl.Series(np.zeros(n, dtype=np.uint8)).cat.to(schema["channel"]),
                "ts": pl.Series(t0 + (np.arange(n) % 35_040) * 900_000_000).cast(schema["ts"]),
                "value": values,
                "unit": pl.Series(np.zeros(n, dtype=np.uint8)).cat.to(schema["unit"]),
                "quality": pl.Series(np.zeros(n, dtype=np.uint8)).cat.to(schema["quality"]),
                "true_value": truth,
            }
        )
        done += n


class Timer:
    """Best wall time and CPU time of repeated runs of one workload."""

    def __init__(self, label: str, rows: int, fn: Any) -> None:
        self.label, self.rows, self.fn = label, rows, fn
        self.wall = self.cpu = float("inf")

    def run(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.fn()
        self.wall = min(self.wall, time.perf_counter() - wall)
        self.cpu = min(self.cpu, time.process_time() - cpu)

    @property
    def rate(self) -> float:
        return self.rows / self.wall

    def report(self) -> None:
        print(
            f"{self.label:10} {self.rows:>13,} readings  {self.wall:7.1f} s wall"
            f"  {self.cpu:7.1f} s cpu  {self.rate:13,.0f}/s  {self.rows / self.cpu:13,.0f}/cpu-s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--days", type=float, default=365.0)
    parser.add_argument("--interval", default="15m")
    parser.add_argument("--repeat", type=int, default=1, help="best of N interleaved runs")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    the_plan = plan(parse_scenario(scaled_fleet(args.meters)))
    interval = parse_duration(args.interval)
    total = History(the_plan, days=args.days, interval_s=interval).total_readings
    instants = History(the_plan, days=args.days, interval_s=interval).times.size
    profiles: dict[str, int] = {}
    for m in the_plan.meters:
        profiles[m.profile] = profiles.get(m.profile, 0) + 1
    print(f"fleet: {len(the_plan.meters):,} meters, {len(the_plan.projects)} projects: {profiles}")
    print(
        f"work:  {instants:,} instants x {total // instants:,} channels = {total:,} readings;"
        f" {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(dir=args.out_dir) as folder:
        out = Path(folder) / "readings.parquet"
        base_out = Path(folder) / "baseline.parquet"
        History(the_plan, days=1, interval_s=interval).write(out)  # warm caches and imports
        schema = readings_schema([m.meter_id for m in the_plan.meters])
        ids = [m.meter_id for m in the_plan.meters]

        def baseline_run() -> None:
            write_readings(lambda: baseline_frames(ids, total), schema, base_out)

        def simulate_run() -> None:
            History(the_plan, days=args.days, interval_s=interval).write(out)

        def generate_run() -> None:
            for _ in History(the_plan, days=args.days, interval_s=interval).frames():
                pass

        timers = [
            Timer("baseline", total, baseline_run),
            Timer("simulate", total, simulate_run),
            Timer("generate", total, generate_run),
        ]
        for _ in range(args.repeat):  # interleaved, so a busy spell hits every workload
            for timer in timers:
                timer.run()
        for timer in timers:
            timer.report()
        baseline, simulate, generate = (t.rate for t in timers)
        size, base_size = out.stat().st_size, base_out.stat().st_size

    print(
        f"readings file {size / 1e6:,.0f} MB ({size / total:.2f} B/reading);"
        f" baseline file {base_size / 1e6:,.0f} MB"
    )
    print(
        f"simulate / baseline = {simulate / baseline:.2f}; generate only {generate:,.0f}/s;"
        f" goal simulate >= 5,000,000/s: {'met' if simulate >= 5e6 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
