"""The consumption-anomaly detectors against the simulators' ground truth: precision and recall
of at least 0.9 per kind on the shipped residential scenario over several seeds.

A finding matches a fault on the same meter whose window (widened by an hour) it overlaps.
Communication loss is expected of `no_response`, of `slow` faults that time out, and of `busy`
faults that cost at least two polls within eight (the intermittent rule's minimum: fewer is a
network's ordinary noise, see `analytics.detectors.comm_loss`).
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from analytics.detectors import detect_comm_loss, detect_leak, detect_stuck, detect_usage
from simulators.history import History
from simulators.scenario import load_scenario, plan
from tests.support.detector_data import ROOT, true_consumption

pytestmark = pytest.mark.slow

SLACK = pl.duration(hours=1)
FAULTS = {
    "leak": ("leak",),
    "spike": ("spike",),
    "stuck": ("stuck",),
    "comm_loss": ("no_response", "busy", "slow"),
}


def expected(faults: pl.DataFrame, readings: pl.DataFrame, kind: str) -> pl.DataFrame:
    truth = faults.filter(pl.col("kind").is_in(FAULTS[kind]))
    if kind != "comm_loss":
        return truth
    truth = truth.filter(~pl.col("params").str.contains('"times_out":false'))
    lost = (
        readings.filter(pl.col("channel").cast(pl.String).is_in(["power_w", "water_flow_m3h"]))
        .select(
            pl.col("meter_id").cast(pl.String),
            "ts",
            (pl.col("quality").cast(pl.String) == "comm_error").cast(pl.Int32).alias("lost"),
        )
        .sort("meter_id", "ts")
    )
    keep = []
    for row in truth.iter_rows(named=True):
        polls = lost.filter(
            (pl.col("meter_id") == row["meter_id"])
            & (pl.col("ts") >= row["start"])
            & (pl.col("ts") < row["end"])
        )
        best = polls.get_column("lost").rolling_sum(8, min_samples=1).max()
        keep.append(row["kind"] != "busy" or (best is not None and float(best) >= 2))  # type: ignore[arg-type]
    return truth.filter(pl.Series(keep))


def score(findings: pl.DataFrame, truth: pl.DataFrame, end: dt.datetime) -> tuple[int, int, int]:
    """(true findings, faults found, faults) of one kind."""
    truth = truth.with_columns(pl.col("end").fill_null(end)).with_row_index("fid")
    pairs = (
        findings.with_row_index("gid")
        .join(truth, left_on="subject", right_on="meter_id", suffix="_t")
        .filter(
            (pl.col("start") <= pl.col("end_t") + SLACK)
            & (pl.col("end") >= pl.col("start_t") - SLACK)
        )
    )
    return pairs.get_column("gid").n_unique(), pairs.get_column("fid").n_unique(), truth.height


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_precision_and_recall_per_kind_over_seeds(kind: str) -> None:
    true_findings = findings = found = faults = 0
    for seed in (None, 1, 2, 3):
        run = History(
            plan(load_scenario(ROOT / "scenarios" / "residential-small.toml"), seed=seed),
            days=14,
            interval_s=900,
        )
        readings = run.collect()
        meters, weather, ledger = run.meters_frame(), run.weather_frame(), run.faults_frame()
        cons = true_consumption(readings)
        if kind == "leak":
            out = detect_leak(readings, cons, meters, weather=weather)
        elif kind == "spike":
            out = detect_usage(readings, cons, meters, weather=weather)
        elif kind == "stuck":
            out = detect_stuck(readings, cons, meters, weather=weather)
        else:
            out = detect_comm_loss(readings, cons, meters, weather=weather)
        out = out.filter(pl.col("kind") == kind)
        end = dt.datetime.fromtimestamp(run.end, tz=dt.UTC)
        t, f, n = score(out, expected(ledger, readings, kind), end)
        true_findings, findings, found, faults = (
            true_findings + t,
            findings + out.height,
            found + f,
            faults + n,
        )
    assert faults > 0
    assert findings > 0
    assert true_findings / findings >= 0.9, (kind, true_findings, findings)
    assert found / faults >= 0.9, (kind, found, faults)
