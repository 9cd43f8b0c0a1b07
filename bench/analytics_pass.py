"""Full analytics pass over 10 M readings: the Polars pipeline against a vectorised pandas
reference of the same logic, run on the same data in the same run, each in its own process.

Data: `scenarios/mixed-fleet.toml` scaled to 1,000 meters (7 projects, 5 time zones, the same
kind and profile mix) with random faults of every kind (`simulators.random_scenario`, seed 6,
3-5 faults per kind: rollovers, resets, replacements, bad zeros, NaN reads, outages, clock
drift, stuck registers, leaks, spikes ...), simulated for 10,000 intervals of 15 minutes
(104.2 days). A reading is one (meter, channel, ts) row; the issue's "1,000 meters x 10,000
intervals" is kept literally by keeping **each meter's primary counter channel only**
(energy_import_kwh, or water_volume_m3 for water meters): 1,000 x 10,000 = 10,000,000
readings, every one of them a counter read that consumption must interpret. Weather stations
are left out of the meters (their temperatures go in as the weather frame). Generated once
into `--data` (Parquet, beside it the meters and weather frames) and reused.

Measured, each implementation in its own subprocess (so peak RSS is its own):
  polars       `analytics.pipeline.run_pass`: consumption, every detector (leak, usage, stuck,
               comm loss, electrical, balance, equipment), counter-event findings and rollups
               (15 min, hour, local day, local month per meter, building and project)
  polars-same  run_pass's steps with the leak detector only: the stages pandas implements
  pandas       `bench.analytics_pandas.run_pass`: the same consumption rules, the same rollups,
               the counter-event findings and the leak detector, in pandas/numpy (groupby, no
               loop over meters)
The throughput and memory ratios against pandas are taken on the same stages (polars-same);
the absolute goals (readings/s, memory against the input) on the full pass.
Timed: from the readings frame in memory to every output frame (Parquet loading excluded).
Memory: peak RSS of the worker (sampled, and `ru_maxrss`) minus its RSS after imports;
the input's in-memory size is the readings frame's `estimated_size()`.

The outputs are then compared (consumption total, interval count and estimated count per
stream; every rollup bucket's consumption; counter events by (meter, channel, ts, event);
counter-event and leak findings by subject, rule, start, end and severity) within a relative
tolerance of 1e-9; any disagreement exits non-zero. The other detectors (usage, stuck, comm
loss, electrical, balance, equipment) run in the Polars pass and are timed, but have no pandas
counterpart, so the comparison does not cover them. Meters without a building count under a
building "(none)" of their project in both (see `rollup_meters`).

    .venv/bin/python -m bench.analytics_pass [--meters 1000] [--intervals 10000] [--repeat 2]
    .venv/bin/python -m bench.analytics_pass --profile    # Polars per-stage time and memory
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the venv
import polars as pl
import psutil

import analytics.pipeline as pipeline
from analytics.consumption import consumption
from analytics.detectors import (
    detect_balance,
    detect_comm_loss,
    detect_electrical,
    detect_equipment,
    detect_leak,
    detect_stuck,
    detect_usage,
)
from analytics.detectors.common import concat_findings
from analytics.frames import readings_frame
from analytics.rollups import rollup
from bench import analytics_pandas as ap
from bench.simulate_history import scaled_fleet
from simulators.catalogue import PROFILES
from simulators.history import History
from simulators.random_scenario import random_scenario
from simulators.scenario import parse_scenario, plan

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
SEED = 6
TOLERANCE = 1e-9
# Findings the pandas reference implements, by rule prefix.
COMPARED_RULES = ("counter.", "leak.")


# -- data --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dataset:
    folder: Path

    @property
    def readings(self) -> Path:
        return self.folder / "readings.parquet"

    @property
    def meters(self) -> Path:
        return self.folder / "meters.parquet"

    @property
    def weather(self) -> Path:
        return self.folder / "weather.parquet"


def dataset(meters: int, intervals: int, root: Path = Path("/tmp/meterward-bench")) -> Dataset:
    """The bench's data set (generated on first use): `meters` non-weather meters of the scaled
    mixed fleet with random faults, their primary counter only, `intervals` x 15 minutes."""
    ds = Dataset(root / f"analytics-{meters}x{intervals}-s{SEED}")
    if ds.readings.exists() and ds.meters.exists() and ds.weather.exists():
        return ds
    days = intervals * 900 / 86400
    # Scale a little above the target so that exactly `meters` non-weather meters remain.
    doc = random_scenario(scaled_fleet(meters), seed=SEED, days=days, per_kind=(3, 5))
    the_plan = plan(parse_scenario(doc))
    faulty = {f.meter_id for f in the_plan.faults}
    candidates = sorted(m.meter_id for m in the_plan.meters if m.kind != "weather")
    surplus = len(candidates) - meters
    if surplus < 0:
        raise SystemExit(f"the scaled fleet has only {len(candidates)} meters")
    spare = [m for m in reversed(candidates) if m not in faulty][:surplus]
    keep = sorted(set(candidates) - set(spare))
    primary = {
        m.meter_id: PROFILES[m.profile].primary_counter
        for m in the_plan.meters
        if m.meter_id in set(keep)
    }
    history = History(the_plan, days=days, interval_s=900)
    if history.times.size != intervals:
        raise SystemExit(f"{history.times.size} instants, wanted {intervals}")
    schema = history.schema
    wanted = pl.DataFrame(
        {"meter_id": list(primary), "channel": list(primary.values())},
        schema={"meter_id": schema["meter_id"], "channel": schema["channel"]},
    )
    parts = []
    t0 = time.perf_counter()
    for frame in history.frames(workers=2):
        parts.append(
            frame.join(wanted, on=["meter_id", "channel"], how="semi").select(
                "meter_id", "channel", "ts", "value", "quality"
            )
        )
    readings = pl.concat(parts)
    ds.folder.mkdir(parents=True, exist_ok=True)
    readings.write_parquet(ds.readings)
    history.meters_frame().filter(pl.col("meter_id").is_in(keep)).write_parquet(ds.meters)
    history.weather_frame().write_parquet(ds.weather)
    print(
        f"generated {readings.height:,} readings in {time.perf_counter() - t0:.0f} s"
        f" -> {ds.folder}",
        flush=True,
    )
    return ds


def load(ds: Dataset) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Readings (as written: Enum meter/channel/quality), meters and weather."""
    return pl.read_parquet(ds.readings), pl.read_parquet(ds.meters), pl.read_parquet(ds.weather)


def rollup_meters(meters: pl.DataFrame) -> pl.DataFrame:
    """Meters for both pipelines: a meter without a building (557 of the 1,000 here, e.g.
    office floors) counts under a building named "(none)" of its project, so the pandas
    reference (whose group-bys drop null keys) and the Polars rollups group the same way.
    (`analytics.rollups` before 6b1b6cb dropped such meters and failed; it now uses "".)"""
    return meters.with_columns(pl.col("building").fill_null("(none)"))


# -- memory ------------------------------------------------------------------------------------


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss / MB)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Sampler:
    """Peak RSS between `mark`s, sampled every 10 ms on a thread (ru_maxrss only ever grows)."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def mark(self) -> float:
        out, self.peak = max(self.peak, rss_mb()), rss_mb()
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- workers -----------------------------------------------------------------------------------


def polars_stages() -> list[tuple[str, Callable[..., pl.DataFrame]]]:
    """The detectors `run_pass` runs, in its order."""
    return [
        ("leak", lambda f, i, m, w: detect_leak(f, i, m, weather=w)),
        ("usage", lambda f, i, m, w: detect_usage(f, i, m, weather=w)),
        ("stuck", lambda f, i, m, w: detect_stuck(f, i, m, weather=w)),
        ("comm_loss", lambda f, i, m, w: detect_comm_loss(f, i, m, weather=w)),
        ("electrical", lambda f, i, m, w: detect_electrical(f, i, m)),
        ("balance", lambda f, i, m, w: detect_balance(f, i, m)),
        ("equipment", lambda f, i, m, w: detect_equipment(f, i, m)),
    ]


def polars_worker(ds: Dataset, out: Path, profile: bool, detectors: bool = True) -> dict[str, Any]:
    """`run_pass` (consumption, every detector, counter-event findings, rollups); with
    `profile` its steps one by one, timed; without `detectors` only the stages the pandas
    reference implements (consumption, leak, counter-event findings, rollups), step by step."""
    profile = profile or not detectors
    base = rss_mb()  # the interpreter with the libraries imported
    readings, raw_meters, weather = load(ds)
    meters = rollup_meters(raw_meters)
    report: dict[str, Any] = {
        "input_mb": readings.estimated_size() / MB,
        "loaded_mb": rss_mb() - base,
    }
    stages: dict[str, tuple[float, float, float]] = {}
    sampler = Sampler()
    sampler.mark()
    t0, c0 = time.perf_counter(), time.process_time()
    if profile:
        # run_pass's steps one by one, to see what each costs.
        last, last_cpu = time.perf_counter(), time.process_time()

        def lap(name: str) -> None:
            nonlocal last, last_cpu
            now, cpu = time.perf_counter(), time.process_time()
            stages[name] = (now - last, cpu - last_cpu, sampler.mark() - base)
            last, last_cpu = time.perf_counter(), time.process_time()

        frame = readings_frame(readings).collect()
        lap("readings_frame")
        counted = consumption(frame, meters)
        lap("consumption")
        parts = []
        for name, fn in polars_stages():
            if not detectors and name != "leak":
                continue
            parts.append(fn(frame, counted.intervals, meters, weather))
            lap(f"detect {name}")
        parts.append(pipeline.event_findings(counted.events))
        findings = concat_findings(parts)
        lap("event findings + concat")
        intervals, events = counted.intervals, counted.events
        del frame
        rolled = rollup(intervals.filter(pl.col("consumption").is_not_null()), meters)
        lap("rollups")
    else:
        result = pipeline.run_pass(readings, meters, weather=weather)
        intervals, events = result.intervals, result.events
        findings, rolled = result.findings, result.rollups
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    report.update(
        seconds=elapsed,
        cpu_s=cpu,
        peak_mb=max(sampler.mark(), peak_mb()) if not profile else peak_mb(),
        base_mb=base,
        stages=stages,
        rows=readings.height,
        frame_mb=readings_frame(readings.head(100_000)).collect().estimated_size()
        / MB
        * readings.height
        / max(1, min(readings.height, 100_000)),
    )
    sampler.stop()
    _write(out, intervals, events, findings, rolled)
    return report


def pandas_input(ds: Dataset) -> Path:
    """The readings as a pandas frame, pickled once, so the pandas worker loads them without
    a Polars frame in its memory (there is no pyarrow here for `pd.read_parquet`)."""
    return ds.folder / "readings.pandas.pkl"


def pandas_prepare(ds: Dataset) -> None:
    path = pandas_input(ds)
    if not path.exists():
        ap.from_polars(pl.read_parquet(ds.readings)).to_pickle(path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)


def pandas_worker(ds: Dataset, out: Path) -> dict[str, Any]:
    meters = pl.read_parquet(ds.meters)
    led = ap.Ledger.from_polars(rollup_meters(meters))
    base = rss_mb()  # the interpreter with the libraries imported
    readings = pd.read_pickle(pandas_input(ds))
    report: dict[str, Any] = {
        "input_mb": float(readings.memory_usage(deep=True).sum()) / MB,
        "loaded_mb": rss_mb() - base,
    }
    sampler = Sampler()
    sampler.mark()
    t0, c0 = time.perf_counter(), time.process_time()
    res = ap.run_pass(readings, led)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    report.update(
        seconds=elapsed,
        cpu_s=cpu,
        peak_mb=max(sampler.mark(), peak_mb()),
        base_mb=base,
        rows=len(readings),
    )
    sampler.stop()
    _write(
        out,
        ap.to_polars(res.intervals),
        ap.to_polars(res.events),
        ap.to_polars(res.findings),
        ap.to_polars(res.rollups),
    )
    return report


def _write(out: Path, *frames: pl.DataFrame) -> None:
    """Outputs to Parquet for the comparison (after the timed part and the memory reading)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, df in zip(("intervals", "events", "findings", "rollups"), frames, strict=True):
        df.write_parquet(out / f"{name}.parquet", compression="lz4")


def run_worker(impl: str, ds: Dataset, out: Path, profile: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.analytics_pass", "--worker", impl, "--data-dir"]
    cmd += [str(ds.folder), "--out", str(out)] + (["--profile"] if profile else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{impl} worker failed ({proc.returncode})")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    # The child's own ru_maxrss, cross-checked against the parent's view of its children.
    report["children_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return report


# -- comparison --------------------------------------------------------------------------------


def _close(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    return ((a - b).abs() <= TOLERANCE * pl.max_horizontal(a.abs(), b.abs(), pl.lit(1.0))) | (
        a.is_null() & b.is_null()
    )


Outputs = dict[str, pl.DataFrame]  # intervals, events, findings, rollups


def read_outputs(folder: Path) -> Outputs:
    names = ("intervals", "events", "findings", "rollups")
    return {n: pl.read_parquet(folder / f"{n}.parquet") for n in names}


def compare(polars_out: Outputs, pandas_out: Outputs, quiet: bool = False) -> list[str]:
    """Disagreements between the two outputs (empty: they agree), printing a summary."""
    problems: list[str] = []
    say = (lambda *a, **k: None) if quiet else print

    def read(d: Outputs, name: str) -> pl.DataFrame:
        return d[name]

    polars_dir, pandas_dir = polars_out, pandas_out

    def per_stream(df: pl.DataFrame) -> pl.DataFrame:
        return df.group_by("meter_id", "channel").agg(
            pl.col("consumption").sum().alias("total"),
            pl.len().alias("n"),
            pl.col("consumption").is_null().sum().alias("no_value"),
            (pl.col("quality").cast(pl.String) == "estimated").sum().alias("estimated"),
        )

    a = per_stream(read(polars_dir, "intervals"))
    b = per_stream(read(pandas_dir, "intervals"))
    j = a.join(b, on=["meter_id", "channel"], how="full", coalesce=True, suffix="_pd")
    bad = j.filter(
        ~_close(pl.col("total"), pl.col("total_pd")).fill_null(False)
        | (pl.col("n") != pl.col("n_pd")).fill_null(True)
        | (pl.col("no_value") != pl.col("no_value_pd")).fill_null(True)
        | (pl.col("estimated") != pl.col("estimated_pd")).fill_null(True)
    )
    if bad.height:
        problems.append(f"consumption per stream: {bad.height} streams differ:\n{bad.head(8)}")
    say(
        f"  consumption: {j.height:,} streams, total {a['total'].sum():,.3f} (polars)"
        f" vs {b['total'].sum():,.3f} (pandas); {bad.height} differ",
        flush=True,
    )
    key = ["level", "period", "key", "project", "channel", "bucket_start"]
    ra = read(polars_dir, "rollups").select(
        *[pl.col(k).cast(pl.String) if k in ("level", "period") else pl.col(k) for k in key],
        "consumption",
        "estimated",
    )
    rb = read(pandas_dir, "rollups").select(*ra.columns).cast(ra.schema)
    rj = ra.join(rb, on=key, how="full", coalesce=True, suffix="_pd")
    rbad = rj.filter(
        ~(
            _close(pl.col("consumption"), pl.col("consumption_pd"))
            & _close(pl.col("estimated"), pl.col("estimated_pd"))
        ).fill_null(False)
    )
    if rbad.height:
        problems.append(f"rollups: {rbad.height} buckets differ:\n{rbad.head(8)}")
    counts = rj.group_by("level", "period").len().sort("level", "period")
    say(
        f"  rollups: {rj.height:,} buckets"
        f" ({', '.join(f'{r[0]}/{r[1]} {r[2]:,}' for r in counts.rows())});"
        f" {rbad.height} differ",
        flush=True,
    )
    ek = ["meter_id", "channel", "ts", "event"]
    ea = read(polars_dir, "events").select(*ek).with_columns(pl.col("event").cast(pl.String))
    eb = read(pandas_dir, "events").select(*ek).cast(ea.schema)
    only_a, only_b = ea.join(eb, on=ek, how="anti"), eb.join(ea, on=ek, how="anti")
    if only_a.height or only_b.height:
        problems.append(
            f"counter events: {only_a.height} only in polars, {only_b.height} only in pandas:\n"
            f"{only_a.head(5)}\n{only_b.head(5)}"
        )
    by_kind = ea.group_by("event").len().sort("event").rows()
    say(
        f"  counter events: {ea.height:,} ({', '.join(f'{k} {n:,}' for k, n in by_kind)});"
        f" {only_a.height + only_b.height} differ",
        flush=True,
    )
    fk = ["subject", "rule", "kind", "start", "end", "severity"]
    fa = (
        read(polars_dir, "findings")
        .filter(
            pl.col("rule")
            .str.starts_with(pl.lit(COMPARED_RULES[0]))
            .or_(*[pl.col("rule").str.starts_with(pl.lit(r)) for r in COMPARED_RULES[1:]])
        )
        .select(*fk)
        .with_columns(pl.col("kind", "severity").cast(pl.String))
    )
    fb = read(pandas_dir, "findings").select(*fk).cast(fa.schema)
    fa_only, fb_only = fa.join(fb, on=fk, how="anti"), fb.join(fa, on=fk, how="anti")
    if fa_only.height or fb_only.height:
        problems.append(
            f"findings: {fa_only.height} only in polars, {fb_only.height} only in pandas:\n"
            f"{fa_only.head(5)}\n{fb_only.head(5)}"
        )
    all_findings = read(polars_dir, "findings")
    rules = all_findings.group_by("rule").len().sort("rule").rows()
    say(
        f"  counter-event and leak findings: {fa.height:,}; {fa_only.height + fb_only.height}"
        f" differ (all polars findings: {', '.join(f'{r} {n}' for r, n in rules)})",
        flush=True,
    )
    return problems


# -- main --------------------------------------------------------------------------------------


def code_version() -> str:
    """HEAD and whether analytics/ has uncommitted changes (engineers commit as they go)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "analytics"],
        capture_output=True,
        text=True,
        check=False,
    )
    changed = len(dirty.stdout.splitlines())
    return f"code {head.stdout.strip()}" + (
        f" + {changed} uncommitted analytics/ files" if changed else ""
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--intervals", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds, best taken")
    parser.add_argument("--profile", action="store_true", help="Polars per-stage breakdown")
    parser.add_argument("--no-pandas", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/tmp/meterward-bench/analytics-out"))
    parser.add_argument(
        "--worker",
        choices=("polars", "polars-same", "pandas", "pandas-prepare"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        ds = Dataset(args.data_dir)
        if args.worker == "pandas-prepare":
            pandas_prepare(ds)
            report = {}
        elif args.worker.startswith("polars"):
            report = polars_worker(ds, args.out, args.profile, args.worker == "polars")
        else:
            report = pandas_worker(ds, args.out)
        print(json.dumps(report))
        return

    ds = dataset(args.meters, args.intervals)
    n = pl.scan_parquet(ds.readings).select(pl.len()).collect().item()
    print(
        f"data: {ds.readings} ({n:,} readings = {args.meters:,} meters x {args.intervals:,}"
        f" intervals, primary counter only); {os.cpu_count()} cpus,"
        f" load average {os.getloadavg()[0]:.1f}; {code_version()}",
        flush=True,
    )
    if not args.no_pandas:
        run_worker("pandas-prepare", ds, args.work / "pandas")
    impls = ["polars"] if args.no_pandas else ["polars", "polars-same", "pandas"]
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for r in range(args.repeat):
        for impl in impls:
            rep = run_worker(impl, ds, args.work / impl, profile=args.profile)
            runs[impl].append(rep)
            print(
                f"round {r + 1} {impl:11}: {rep['seconds']:6.1f} s"
                f" {rep['rows'] / rep['seconds']:11,.0f} readings/s"
                f"  {rep['cpu_s']:6.1f} s cpu {rep['rows'] / rep['cpu_s']:11,.0f}/cpu-s"
                f"  peak RSS {rep['peak_mb']:7,.0f} MB (after imports {rep['base_mb']:,.0f} MB,"
                f" input loaded +{rep['loaded_mb']:,.0f} MB)"
                f"  load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            for stage, (sec, cpu, mb) in rep.get("stages", {}).items():
                print(
                    f"         {stage:34} {sec:7.2f} s {cpu:7.2f} s cpu"
                    f"   peak RSS above baseline {mb:7,.0f} MB"
                )
    best = {k: min(v, key=lambda x: x["seconds"]) for k, v in runs.items() if v}

    def rate(impl: str) -> float:
        return float(best[impl]["rows"] / best[impl]["seconds"])

    def mem(impl: str) -> float:
        return float(best[impl]["peak_mb"] - best[impl]["base_mb"])

    pol = best["polars"]
    print(
        f"input: readings frame as loaded {pol['input_mb']:,.0f} MB (Enum meter/channel/quality;"
        f" after readings_frame, run_pass's first step, ~{pol['frame_mb']:,.0f} MB)"
    )
    print(
        f"full pass (run_pass + all detectors + rollups): {rate('polars'):,.0f} readings/s,"
        f" peak {mem('polars'):,.0f} MB above the imports baseline"
    )
    print(f"goal >= 5,000,000 readings/s: {_verdict(rate('polars') >= 5e6)}")
    print(
        f"goal peak <= 2x input: {mem('polars') / pol['input_mb']:.2f}x"
        f" {_verdict(mem('polars') <= 2 * pol['input_mb'])}"
    )
    if "pandas" in best:
        print(
            f"same stages (consumption + leak + counter-event findings + rollups):"
            f" polars {rate('polars-same'):,.0f} readings/s, {mem('polars-same'):,.0f} MB;"
            f" pandas {rate('pandas'):,.0f} readings/s, {mem('pandas'):,.0f} MB"
            f" (its input {best['pandas']['input_mb']:,.0f} MB)"
        )
        speed = rate("polars-same") / rate("pandas")
        ratio = mem("polars-same") / mem("pandas")
        print(f"goal >= 2x pandas throughput (same stages): {speed:.2f}x {_verdict(speed >= 2)}")
        print(
            f"goal <= 0.6x pandas peak memory (same stages): {ratio:.2f}x {_verdict(ratio <= 0.6)}"
        )
        print(
            f"(the full Polars pass, with the detectors pandas lacks:"
            f" {rate('polars') / rate('pandas'):.2f}x the pandas throughput,"
            f" {mem('polars') / mem('pandas'):.2f}x its memory)"
        )
        print("agreement (consumption, rollups, counter events, counter-event and leak findings):")
        problems = compare(read_outputs(args.work / "polars"), read_outputs(args.work / "pandas"))
        if problems:
            for p in problems:
                print("DISAGREE:", p)
            raise SystemExit(1)
        print("  agree within a relative 1e-9")


if __name__ == "__main__":
    main()
