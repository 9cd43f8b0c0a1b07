"""The analytics benchmark's pandas reference (bench/analytics_pandas.py) and the Polars pipeline
agree on small simulated fleets, so the benchmark compares two implementations of the same
logic: consumption per stream, every rollup bucket, counter events, counter-event findings and
leak findings.

The data: the small residential scenario with random faults of every kind (rollovers, resets,
replacements, bad zeros, NaN reads, outages, clock drift ...), all channels, 7 days at
15 minutes; and a hand-made register with a multiplier, an inferred modulus and a gap.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import polars as pl
import pytest

from analytics.consumption import consumption
from analytics.detectors import detect_leak
from analytics.detectors.common import concat_findings
from analytics.frames import readings_frame
from analytics.pipeline import event_findings
from analytics.rollups import rollup
from bench import analytics_pandas as ap
from bench.analytics_pass import Outputs, compare, rollup_meters
from simulators.history import History
from simulators.random_scenario import random_scenario
from simulators.scenario import parse_scenario, plan

ROOT = Path(__file__).resolve().parents[2]


def polars_outputs(readings: pl.DataFrame, raw_meters: pl.DataFrame) -> Outputs:
    meters = rollup_meters(raw_meters)
    frame = readings_frame(readings).collect()
    counted = consumption(frame, meters)
    rolled = rollup(counted.intervals.filter(pl.col("consumption").is_not_null()), meters)
    leaks = detect_leak(frame, counted.intervals, meters)
    return {
        "intervals": counted.intervals,
        "events": counted.events,
        "findings": concat_findings([leaks, event_findings(counted.events)]),
        "rollups": rolled,
    }


def pandas_outputs(readings: pl.DataFrame, meters: pl.DataFrame) -> Outputs:
    res = ap.run_pass(ap.from_polars(readings), ap.Ledger.from_polars(rollup_meters(meters)))
    return {
        "intervals": ap.to_polars(res.intervals),
        "events": ap.to_polars(res.events),
        "findings": ap.to_polars(res.findings),
        "rollups": ap.to_polars(res.rollups),
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_reference_agrees_on_a_faulty_simulated_fleet(seed: int) -> None:
    base = tomllib.loads((ROOT / "scenarios" / "residential-small.toml").read_text("utf-8"))
    doc = random_scenario(base, seed=seed, days=7)
    history = History(plan(parse_scenario(doc)), days=7, interval_s=900)
    readings, meters = history.collect(), history.meters_frame()
    a, b = polars_outputs(readings, meters), pandas_outputs(readings, meters)
    # The data exercises the rules the comparison is about.
    kinds = set(a["events"]["event"].cast(pl.String).unique())
    assert {"rollover", "reset", "replacement", "bad_read", "gap"} <= kinds
    assert a["findings"].filter(pl.col("rule").str.starts_with("leak.")).height > 0
    assert a["intervals"].height > 10_000
    assert compare(a, b, quiet=True) == []


def test_reference_agrees_on_multiplier_inferred_modulus_gap_and_month_edge() -> None:
    # Starts at 02:00 Berlin time on 30 March: the first local day and month begin before the
    # first reading; runs into April; wraps at an inferred modulus of 10 000 on the way.
    t0 = dt.datetime(2026, 3, 30, tzinfo=dt.UTC)
    n = 300
    values: list[float | None] = [9_900.0 + 0.5 * i for i in range(n)]
    values = [v - 10_000.0 if v is not None and v >= 10_000.0 else v for v in values]
    quality = ["good"] * n
    for i in (40, 41):  # an outage: spread over the gap
        values[i], quality[i] = None, "comm_error"
    values[90] = 0.0  # a bad zero
    readings = pl.DataFrame(
        {
            "meter_id": "m1",
            "channel": "energy_import_kwh",
            "ts": [t0 + dt.timedelta(minutes=15 * i) for i in range(n)],
            "value": values,
            "quality": quality,
        }
    )
    meters = pl.DataFrame(
        {
            "meter_id": ["m1"],
            "project": ["p"],
            "building": ["b"],
            "time_zone": ["Europe/Berlin"],
            "multiplier": [40.0],
        }
    )
    a, b = polars_outputs(readings, meters), pandas_outputs(readings, meters)
    events = set(a["events"]["event"].cast(pl.String))
    assert {"rollover", "gap", "bad_read"} <= events
    assert a["intervals"]["consumption"].sum() == pytest.approx(0.5 * (n - 1) * 40.0)
    months = a["rollups"].filter(level="meter", period="month")
    assert months.height == 2
    assert compare(a, b, quiet=True) == []
