"""Electrical detectors (analytics.detectors.electrical): CT reversal, phase loss, imbalance.

Synthetic three-phase meters pin each rule's edges; a simulated week of the residential scenario
checks the rules against the simulator's fault ledger (its ct_reversal and phase_loss faults).
Precision and recall over many seeds and the shipped scenarios:

    .venv/bin/python -m tests.unit.test_detect_electrical --seeds 1-10 --days 7
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from analytics import frames
from analytics.detectors.electrical import ElectricalParams, detect_electrical
from simulators.history import History
from simulators.scenario import load_scenario, plan

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
STEP = dt.timedelta(minutes=15)
N = 96  # one day of 15-minute polls


def meter(
    meter_id: str,
    *,
    volts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    phase_w: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    export_kwh: np.ndarray | None = None,
) -> pl.DataFrame:
    """Long readings of one three-phase meter over N instants (healthy unless overridden)."""
    rng = np.random.default_rng(sum(meter_id.encode()))
    if volts is None:
        volts = tuple(230.0 + 0.5 * rng.standard_normal(N) for _ in range(3))  # type: ignore[assignment]
    if phase_w is None:
        phase_w = tuple(400.0 + 50.0 * rng.random(N) for _ in range(3))  # type: ignore[assignment]
    assert volts is not None
    assert phase_w is not None
    channels = {
        **{f"voltage_l{i + 1}_v": volts[i] for i in range(3)},
        **{f"power_l{i + 1}_w": phase_w[i] for i in range(3)},
        "power_w": phase_w[0] + phase_w[1] + phase_w[2],
        "energy_export_kwh": np.zeros(N) if export_kwh is None else export_kwh,
    }
    ts = [T0 + i * STEP for i in range(N)]
    parts = [
        pl.DataFrame(
            {"meter_id": meter_id, "channel": name, "ts": ts, "value": values, "quality": "good"}
        )
        for name, values in channels.items()
    ]
    return pl.concat(parts).with_columns(pl.col("ts").cast(frames.TS))


def window(values: np.ndarray, lo: int, hi: int, inside: float) -> np.ndarray:
    out = values.copy()
    out[lo:hi] = inside
    return out


def healthy_volts() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.full(N, 230.0), np.full(N, 229.0), np.full(N, 231.0))


def test_a_healthy_fleet_gives_no_finding() -> None:
    readings = pl.concat([meter(f"m{i}") for i in range(5)])
    found = detect_electrical(readings, None, None)
    assert found.schema == frames.FINDINGS_SCHEMA
    assert found.is_empty()


def test_one_reversed_phase_is_a_warning_naming_the_phase() -> None:
    w = np.full(N, 500.0)
    readings = meter("floor", phase_w=(w, window(w, 20, 60, -480.0), w))
    found = detect_electrical(readings, None, None)
    assert found.height == 1
    row = found.row(0, named=True)
    assert (row["subject"], row["rule"], row["kind"]) == (
        "floor",
        "ct_reversal.negative_power",
        "ct_reversal",
    )
    assert row["start"] == T0 + 20 * STEP
    assert row["end"] == T0 + 59 * STEP
    assert row["severity"] == "warning"  # the net still imports: billing under-reads
    ev = json.loads(row["evidence"])
    assert ev["reversed_phases"] == [2]
    assert ev["min_power_w"]["power_l2_w"] == -480.0
    assert ev["negative_readings"] == {"power_l2_w": 40}
    assert ev["parameters"]["negative_w"] == ElectricalParams().negative_w
    assert "rule" in ev
    assert "baseline" in ev


def test_a_fully_reversed_meter_with_export_growing_is_critical() -> None:
    w = np.full(N, 300.0)
    neg = window(w, 10, N, -300.0)
    export = np.concatenate([np.zeros(10), np.cumsum(np.full(N - 10, 0.225))])
    readings = meter("villa", phase_w=(neg, neg, neg), export_kwh=export)
    found = detect_electrical(readings, None, None)
    assert found.height == 1
    row = found.row(0, named=True)
    assert row["severity"] == "critical"
    ev = json.loads(row["evidence"])
    assert ev["reversed_phases"] == [1, 2, 3]
    assert ev["export_growth_kwh"] == pytest.approx(0.225 * (N - 10), rel=1e-6)


def test_export_growth_alone_counts_on_a_consumer_meter() -> None:
    # Light load at night: the reversed power sits inside the noise band, the export register
    # still creeps up; that keeps one run going instead of day/night fragments.
    w = np.full(N, 0.5)
    export = np.concatenate([np.zeros(40), 0.01 * np.arange(1, N - 39)])
    found = detect_electrical(meter("stair-lights", phase_w=(w, w, w), export_kwh=export))
    assert found["rule"].to_list() == ["ct_reversal.negative_power"]
    assert found["start"].to_list() == [T0 + 40 * STEP]


def test_a_single_negative_read_or_a_generation_meter_is_not_a_reversal() -> None:
    w = np.full(N, 500.0)
    blip = meter("blip", phase_w=(window(w, 30, 31, -20.0), w, w))
    pv = meter("roof-pv", phase_w=(-w, -w, -w), export_kwh=np.cumsum(np.full(N, 0.4)))
    meters = pl.DataFrame({"meter_id": ["blip", "roof-pv"], "load": ["lighting", "pv"]})
    found = detect_electrical(pl.concat([blip, pv]), None, meters)
    assert found.is_empty()


def test_a_lost_phase_is_critical_and_a_dead_meter_is_not_a_phase_loss() -> None:
    v1, v2, v3 = healthy_volts()
    lost = meter("lift", volts=(v1, v2, window(v3, 40, 56, 0.0)))
    zero = meter("zero-read", volts=tuple(window(v, 40, 56, 0.0) for v in (v1, v2, v3)))  # type: ignore[arg-type]
    found = detect_electrical(pl.concat([lost, zero]))
    assert found.height == 1
    row = found.row(0, named=True)
    assert (row["subject"], row["kind"], row["severity"]) == ("lift", "phase_loss", "critical")
    assert (row["start"], row["end"]) == (T0 + 40 * STEP, T0 + 55 * STEP)
    ev = json.loads(row["evidence"])
    assert ev["lost_phases"] == [3]
    assert ev["baseline"]["nominal_v"] == pytest.approx(230.0, abs=1.0)
    assert ev["min_voltage_v"]["voltage_l3_v"] == 0.0


def test_a_phase_loss_shorter_than_the_minimum_is_ignored() -> None:
    v1, v2, v3 = healthy_volts()
    found = detect_electrical(meter("lift", volts=(v1, v2, window(v3, 40, 41, 0.0))))
    assert found.is_empty()


def test_voltage_imbalance_thresholds() -> None:
    base = np.full(N, 230.0)
    # 3 % unbalance for 3 hours: warning; 5 %: critical; 1 % noise and a 30-minute 3 % dip: no.
    warn = meter("warn", volts=(base, base, window(base, 10, 22, 230.0 * (1 - 0.045))))
    crit = meter("crit", volts=(base, base, window(base, 10, 22, 230.0 * (1 - 0.075))))
    rng = np.random.default_rng(7)
    noisy = meter("noisy", volts=tuple(base + 1.5 * rng.standard_normal(N) for _ in range(3)))  # type: ignore[arg-type]
    short = meter("short", volts=(base, base, window(base, 10, 12, 230.0 * (1 - 0.045))))
    found = detect_electrical(pl.concat([warn, crit, noisy, short]))
    assert found["subject"].to_list() == ["crit", "warn"]
    assert set(found["kind"].to_list()) == {"voltage_imbalance"}
    sev = dict(zip(found["subject"], found["severity"], strict=True))
    assert sev == {"crit": "critical", "warn": "warning"}
    ev = json.loads(found.filter(pl.col("subject") == "warn")["evidence"][0])
    # NEMA: max deviation from the mean / mean. V = (230, 230, 219.65): mean 226.55.
    assert ev["unbalance_pct"]["max"] == pytest.approx(100 * (226.55 - 219.65) / 226.55, rel=1e-4)
    assert ev["parameters"]["imbalance_pct"] == 2.0


def test_negative_consumption_intervals_are_flagged() -> None:
    consumption = pl.DataFrame(
        {
            "meter_id": ["m1", "m1"],
            "channel": ["energy_import_kwh"] * 2,
            "start": [T0, T0 + STEP],
            "end": [T0 + STEP, T0 + 2 * STEP],
            "consumption": [0.4, -0.2],
            "quality": ["measured", "measured"],
        },
        schema=frames.CONSUMPTION_SCHEMA,
    )
    found = detect_electrical(meter("m1"), consumption, None)
    assert found["kind"].to_list() == ["negative_consumption"]
    assert json.loads(found["evidence"][0])["consumption"] == -0.2


def test_output_does_not_depend_on_row_order() -> None:
    w = np.full(N, 500.0)
    v1, v2, v3 = healthy_volts()
    readings = pl.concat(
        [
            meter("a", phase_w=(w, window(w, 5, 30, -400.0), w)),
            meter("b", volts=(v1, window(v2, 50, 70, 3.0), v3)),
            meter("c"),
        ]
    )
    first = detect_electrical(readings)
    again = detect_electrical(readings.sample(fraction=1.0, shuffle=True, seed=3))
    assert first.height == 2
    assert first.equals(again)


def test_the_residential_week_matches_the_fault_ledger() -> None:
    run = History(plan(load_scenario(ROOT / "scenarios/residential-small.toml")), 7, 900)
    readings = run.collect()
    faults = run.faults_frame().filter(pl.col("kind").is_in(["ct_reversal", "phase_loss"]))
    found = detect_electrical(readings, None, run.meters_frame())
    assert found.height == faults.height == 2
    fault_end = pl.col("end_right").fill_null(pl.col("end"))
    matched = (
        found.with_columns(pl.col("kind").cast(pl.String))
        .join(faults, left_on=["subject", "kind"], right_on=["meter_id", "kind"])
        .filter((pl.col("start") <= fault_end) & (pl.col("end") >= pl.col("start_right")))
    )
    assert matched.height == 2


def test_a_nan_sentinel_inside_a_phase_loss_neither_breaks_nor_ends_it() -> None:
    v1, v2, v3 = healthy_volts()
    readings = meter("lift", volts=(window(v1, 47, 48, float("nan")), v2, window(v3, 40, 56, 0.0)))
    found = detect_electrical(readings)
    assert found.select("kind", "start", "end").rows() == [
        ("phase_loss", T0 + 40 * STEP, T0 + 55 * STEP)
    ]


LEDGER_KINDS = ("ct_reversal", "phase_loss")


def score(scenario: str, seed: int | None, days: float) -> dict[str, Any]:
    """Findings against the ledger's ct_reversal / phase_loss faults of one simulated run: a
    finding matches a fault of its kind on the same meter whose window it overlaps."""
    run = History(plan(load_scenario(ROOT / "scenarios" / scenario), seed=seed), days, 900)
    faults = run.faults_frame().filter(pl.col("kind").is_in(LEDGER_KINDS))
    found = detect_electrical(run.collect(), None, run.meters_frame()).with_columns(
        pl.col("kind").cast(pl.String)
    )
    fault_end = pl.col("end_right").fill_null(pl.col("end"))
    pairs = (
        found.with_row_index("f")
        .join(
            faults.with_row_index("g"), left_on=["subject", "kind"], right_on=["meter_id", "kind"]
        )
        .filter((pl.col("start") <= fault_end) & (pl.col("end") >= pl.col("start_right")))
    )
    return {
        "scenario": scenario,
        "seed": seed,
        "faults": faults.height,
        "faults_found": pairs["g"].n_unique(),
        "findings": found.filter(pl.col("kind").is_in(LEDGER_KINDS)).height,
        "findings_matched": pairs["f"].n_unique(),
        "other_findings": found.filter(~pl.col("kind").is_in(LEDGER_KINDS)).height,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", default="default", help="a-b, a,b,c or 'default' (the scenario's)")
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument(
        "--scenarios", default="residential-small.toml,office-tower.toml,mixed-fleet.toml"
    )
    args = ap.parse_args(argv)
    seeds: list[int | None]
    if args.seeds == "default":
        seeds = [None]
    elif "-" in args.seeds:
        lo, hi = (int(x) for x in args.seeds.split("-"))
        seeds = list(range(lo, hi + 1))
    else:
        seeds = [int(x) for x in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        for scenario in args.scenarios.split(","):
            rows.append(score(scenario, seed, args.days))
            print(rows[-1], flush=True)
    df = pl.DataFrame(rows)
    t = df.select(pl.exclude("scenario", "seed")).sum().row(0, named=True)
    print(
        f"recall {t['faults_found']}/{t['faults']}, precision {t['findings_matched']}/"
        f"{t['findings']}, other electrical findings (imbalance, ...): {t['other_findings']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
