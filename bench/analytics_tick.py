"""Incremental 15-minute analytics tick for 10,000 meters, as a fraction of a full pass.

What a tick is here: the scheduled intraday job (`analytics.jobs`: every 15 minutes per
project, `TickContext.load_from` = the window's start minus `JobConfig.lookback`, 28 days by
default) runs the pure pass over the new 15 minutes plus that lookback: consumption and every
detector (`analytics.pipeline.run_pass` with `PassParams(rollups=False)`: the rollups belong to
the daily job), so neither side of the ratio includes the rollups. Timed: from the tick's
readings in memory to its outputs (loading from the store is not timed).

Data: the analytics_pass data set (mixed fleet scaled to 1,000 meters in 7 projects, random
faults, each meter's primary counter, 10,000 intervals of 15 minutes = 104.2 days), tiled 10x
with suffixed meter and project ids (`jade-flat-001~3` in `jade-court~3`) to make 10,000
meters in 70 projects. The tick is the last 15-minute interval, run per project as the jobs
run it (one pass per project, summed; peak memory is the largest project's).

Measured, each in its own process:
  full       the same pass over the whole history of 1,000 meters (10 M readings); a full pass
             over 10,000 meters' history (100 M readings) does not fit this machine's memory, so
             the 10,000-meter figure is 10 x this one (the pass is linear in meters: every step
             is per stream)
  tick       the pass over the tick's readings for 1,000 and for 10,000 meters, with the jobs'
             default lookback and with the shorter ones given by --lookbacks

    .venv/bin/python -m bench.analytics_tick [--meters 10000] [--lookbacks 28d,7d,1d]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

from analytics.jobs import JobConfig
from analytics.pipeline import PassParams, run_pass
from bench.analytics_pass import (
    ROOT,
    Dataset,
    Sampler,
    code_version,
    dataset,
    rollup_meters,
    rss_mb,
)
from simulators.scenario import parse_duration

BASE_METERS = 1000
INTERVALS = 10_000
TICK = dt.timedelta(minutes=15)


def tiled(
    ds: Dataset, copies: int, since_us: int | None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Readings at or after `since_us` (all when None), meters and weather, tiled `copies`
    times: copy k's meters and projects get the suffix `~k` (7 projects become 7 x copies)."""
    lf = pl.scan_parquet(ds.readings)
    if since_us is not None:
        lf = lf.filter(pl.col("ts").dt.epoch("us") >= since_us)
    base = lf.collect()
    meters = rollup_meters(pl.read_parquet(ds.meters))  # as in analytics_pass
    weather = pl.read_parquet(ds.weather)
    if copies == 1:
        return base, meters, weather
    suffix = [f"~{k}" for k in range(copies)]
    ids = pl.Enum(sorted(f"{m}{s}" for m in meters["meter_id"] for s in suffix))
    readings = pl.concat(
        [base.with_columns((pl.col("meter_id").cast(pl.String) + s).cast(ids)) for s in suffix],
        rechunk=True,
    )
    return (
        readings,
        pl.concat([meters.with_columns(pl.col("meter_id", "project") + s) for s in suffix]),
        pl.concat([weather.with_columns(pl.col("project").cast(pl.String) + s) for s in suffix]),
    )


def the_pass(readings: pl.DataFrame, meters: pl.DataFrame, weather: pl.DataFrame) -> int:
    """run_pass without the rollups (the daily job's); the number of findings."""
    result = run_pass(readings, meters, weather=weather, params=PassParams(rollups=False))
    return result.findings.height


def worker(ds: Dataset, copies: int, lookback_us: int | None) -> dict[str, Any]:
    """A full pass (no lookback: every meter at once), or the tick: one pass per project, as
    the scheduled jobs run it, each over its project's readings (split before the clock
    starts: the store loads per project)."""
    end_us = pl.scan_parquet(ds.readings).select(pl.col("ts").max().dt.epoch("us")).collect().item()
    end_us += 900_000_000  # the tick's window is the last interval: [end - 15 min, end)
    since = None if lookback_us is None else end_us - int(TICK.total_seconds() * 1e6) - lookback_us
    readings, meters, weather = tiled(ds, copies, since)
    rows = readings.height
    if lookback_us is None:
        work = [(readings, meters, weather)]
    else:
        project = meters.select(pl.col("meter_id").cast(readings.schema["meter_id"]), "project")
        parts = readings.join(project, on="meter_id").partition_by("project", as_dict=True)
        work = [
            (
                part.drop("project"),
                meters.filter(pl.col("project") == key[0]),
                weather.filter(pl.col("project") == key[0]),
            )
            for key, part in sorted(parts.items())
        ]
        del parts
    del readings
    base = rss_mb()  # imports and the tick's input (the largest load was before this)
    sampler = Sampler()
    sampler.mark()
    t0, c0 = time.perf_counter(), time.process_time()
    findings = sum(the_pass(*w) for w in work)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = sampler.mark()
    sampler.stop()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "rows": rows,
        "meters": meters.height,
        "projects": len(work),
        "findings": findings,
        "peak_mb": peak - base,
    }


def run(ds: Dataset, copies: int, lookback: str | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.analytics_tick", "--worker", "--data-dir", str(ds.folder)]
    cmd += ["--copies", str(copies)] + (["--lookback", lookback] if lookback else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {cmd[3:]} failed ({proc.returncode})")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = f"{JobConfig().lookback.days}d"
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--base-meters", type=int, default=BASE_METERS, help="the data set's")
    parser.add_argument("--intervals", type=int, default=INTERVALS, help="the data set's")
    parser.add_argument("--lookbacks", default=f"{default},7d,1d")
    parser.add_argument("--repeat", type=int, default=1, help="best of N rounds")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--lookback", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        lb = None if args.lookback is None else parse_duration(args.lookback) * 1_000_000
        print(json.dumps(worker(Dataset(args.data_dir), args.copies, lb)))
        return

    ds = dataset(args.base_meters, args.intervals)
    base_meters = args.base_meters
    copies = max(1, args.meters // base_meters)
    lookbacks = args.lookbacks.split(",")
    print(
        f"data: {ds.folder}: {base_meters:,} meters x {args.intervals:,} intervals (primary"
        f" counter), tiled {copies}x = {base_meters * copies:,} meters; jobs' lookback {default};"
        f" {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}; {code_version()}",
        flush=True,
    )

    def best(copies_: int, lookback: str | None) -> dict[str, Any]:
        reps = [run(ds, copies_, lookback) for _ in range(args.repeat)]
        r = min(reps, key=lambda x: x["seconds"])
        what = "full pass" if lookback is None else f"tick, lookback {lookback}"
        print(
            f"{what:20} {r['meters']:>6,} meters ({r['projects']} passes) {r['rows']:>11,} readings"
            f"  {r['seconds']:7.2f} s  {r['cpu_s']:7.2f} s cpu  peak +{r['peak_mb']:6,.0f} MB"
            " (sampled RSS above the loaded input)"
            f"  {r['findings']:,} findings  (load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )
        return r

    full = best(1, None)
    print(
        f"full pass over {copies * base_meters:,} meters: {copies} x the above (see the docstring)"
    )
    for lb in lookbacks:
        small = best(1, lb)
        big = best(copies, lb) if copies > 1 else small
        frac_small = small["seconds"] / full["seconds"]
        cpu_small = small["cpu_s"] / full["cpu_s"]
        frac_big = big["seconds"] / (copies * full["seconds"])
        cpu_big = big["cpu_s"] / (copies * full["cpu_s"])
        # Judged on CPU time: the wall clock swings with the shared machine's load.
        goal = "met" if cpu_big <= 0.05 else "NOT met"
        print(
            f"  lookback {lb}: tick / full pass = {frac_small:.3f} wall, {cpu_small:.3f} cpu"
            f" ({base_meters:,} meters, measured); {frac_big:.3f} wall, {cpu_big:.3f} cpu"
            f" ({copies * base_meters:,} meters); goal <= 0.05 (cpu): {goal}",
            flush=True,
        )


if __name__ == "__main__":
    main()
