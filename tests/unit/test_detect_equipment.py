"""Equipment-failure warnings (analytics.detectors.equipment).

Synthetic pumps (a motor cycling on a pressure switch, minute by minute) pin each figure: a
healthy pump with a weekly rhythm raises nothing, each kind of wear raises its own rule with a
lead time, an idle pump and coarse polling do what the module promises. The simulator's
`degradation` fault is the ground truth for the rest: `evaluate_degradation` replays a scenario
day by day as the daily job would and reports when each degrading pump was first warned about
and which healthy unit was warned about at all. Run it over many seeds with

    .venv/bin/python -m tests.unit.test_detect_equipment --seeds 1-20 --interval 60
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from analytics import frames
from analytics.detectors.equipment import (
    EquipmentParams,
    daily_figures,
    detect_equipment,
)
from simulators.history import History
from simulators.scenario import load_scenario, plan

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)  # a Monday
MINUTES = 1440
EQUIPMENT = ("pump", "lift", "hvac")
SCENARIOS = ("residential-small.toml", "office-tower.toml", "mixed-fleet.toml")


def pump(
    meter_id: str,
    days: int,
    *,
    rate: float = 4.3,  # starts an hour (not a divisor of 60: runs fall across minutes)
    duty: float = 0.3,  # share of each cycle running
    power_w: float = 3000.0,
    standby_w: float = 20.0,
    duty_growth: float = 0.0,  # relative duty added over the run (longer runs)
    rate_growth: float = 0.0,  # relative start rate added over the run (short-cycling)
    standby_growth: float = 0.0,
    idle_days: int = 0,  # days at standby before the pump is first needed
    every: int = 1,  # polling interval in minutes
    seed: int = 0,
) -> pl.DataFrame:
    """Readings (power_w, energy_import_kwh) of a pump cycling on a pressure switch; weekends
    draw 25 % more water, each day +-3 %; wear ramps linearly from the first day to the last."""
    rng = np.random.default_rng(seed)
    n = days * MINUTES
    t = np.arange(n, dtype=np.float64)
    progress = t / n
    day = (t // MINUTES).astype(int)
    weekend = (day % 7) >= 5
    demand = np.where(weekend, 1.25, 1.0) * (1.0 + 0.03 * rng.standard_normal(days))[day]
    # Cycle phase: the integral of the (growing) start rate, in cycles.
    rate_now = rate * (1.0 + rate_growth * progress) / 60.0
    phase = np.cumsum(rate_now) + rng.random()
    on = (phase % 1.0) < np.clip(duty * demand * (1.0 + duty_growth * progress), 0.0, 0.95)
    on &= day >= idle_days
    standby = standby_w * (1.0 + standby_growth * progress)
    watts = standby + on * power_w * (1.0 + 0.01 * rng.standard_normal(n))
    kwh = 1000.0 + np.cumsum(watts) / 60.0 / 1000.0  # register at the end of each minute
    ts = [T0 + dt.timedelta(minutes=int(m)) for m in t[::every]]
    return pl.concat(
        [
            pl.DataFrame(
                {
                    "meter_id": meter_id,
                    "channel": ch,
                    "ts": ts,
                    "value": v[::every],
                    "quality": "good",
                }
            )
            for ch, v in (("power_w", watts), ("energy_import_kwh", kwh))
        ]
    ).with_columns(pl.col("ts").cast(frames.TS))


def meters_of(*ids: str, load: str = "pump") -> pl.DataFrame:
    return pl.DataFrame({"meter_id": list(ids), "load": load, "time_zone": "UTC"})


def rules_of(found: pl.DataFrame, subject: str) -> set[str]:
    return set(found.filter(pl.col("subject") == subject)["rule"].to_list())


def test_healthy_pumps_with_a_weekly_rhythm_raise_nothing() -> None:
    readings = pl.concat([pump(f"p{i}", 21, rate=3.1 + 1.3 * i, seed=i) for i in range(4)])
    found = detect_equipment(readings, None, meters_of(*(f"p{i}" for i in range(4))))
    assert found.schema == frames.FINDINGS_SCHEMA
    assert found.is_empty()


def test_longer_runs_warn_on_energy_and_run_time_with_a_lead_time() -> None:
    readings = pump("worn", 21, duty_growth=0.45, seed=3)
    found = detect_equipment(readings, None, meters_of("worn"))
    assert {
        "degradation.energy_per_cycle",
        "degradation.run_time_per_cycle",
        "degradation.run_hours",
    } <= rules_of(found, "worn")
    assert "degradation.short_cycling" not in rules_of(found, "worn")
    row = found.filter(pl.col("rule") == "degradation.energy_per_cycle").row(0, named=True)
    assert row["kind"] == "degradation"
    ev = json.loads(row["evidence"])
    # Fitted +45 % over 20 days against +50 % at failure: a few days left, so critical.
    assert ev["rise"] == pytest.approx(0.45, abs=0.08)
    assert 0.0 < row["lead_time_days"] < 7.0
    assert row["severity"] == "critical"
    assert ev["failure_level"] == pytest.approx(1.5 * ev["baseline"]["level_then"], rel=1e-5)
    assert len(ev["values"]) == 21
    assert ev["parameters"]["failure_rise"] == EquipmentParams().failure["energy_per_cycle"]
    assert row["start"] > T0  # the first day at the warning level, not the first day
    assert row["end"] >= T0 + dt.timedelta(days=20)


def test_an_early_trend_is_a_warning_with_a_longer_lead_time() -> None:
    readings = pump("wearing", 12, duty_growth=0.3, seed=4)
    found = detect_equipment(readings, None, meters_of("wearing"))
    row = found.filter(pl.col("rule") == "degradation.run_hours").row(0, named=True)
    assert row["severity"] == "warning"
    # +2.5 % a day: +27 % on the last day, +50 % about nine days later.
    assert 6.0 < row["lead_time_days"] < 14.0


def test_short_cycling_warns_on_starts() -> None:
    readings = pump("switch", 14, rate_growth=1.5, duty=0.4, seed=5)
    found = detect_equipment(readings, None, meters_of("switch"))
    assert "degradation.short_cycling" in rules_of(found, "switch")
    ev = json.loads(found.filter(pl.col("rule") == "degradation.short_cycling")["evidence"][0])
    assert ev["figure"] == "cycles"
    starts = [v["value"] for v in ev["values"]]
    assert starts[-1] > 1.8 * starts[0]


def test_standby_creep_warns() -> None:
    readings = pump("drive", 21, standby_growth=1.0, seed=6)
    found = detect_equipment(readings, None, meters_of("drive"))
    assert rules_of(found, "drive") == {"degradation.standby_creep"}


def test_an_idle_pump_or_one_first_needed_late_raises_nothing() -> None:
    idle = pump("spare", 21, duty=0.0, seed=7)
    late = pump("late", 21, idle_days=9, seed=8)
    found = detect_equipment(pl.concat([idle, late]), None, meters_of("spare", "late"))
    assert found.is_empty()
    figures = daily_figures(idle, None, meters_of("spare"))
    assert figures["run_hours"].null_count() == figures.height  # idle days are not trend points


def test_coarse_polling_judges_only_what_it_can_see() -> None:
    # Every 15 minutes a 4-minute run is one reading or none: starts cannot be counted, but the
    # energy register still integrates the longer runs.
    cycling = pump("switch", 21, rate_growth=1.5, every=15, seed=9)
    worn = pump("worn", 21, duty_growth=0.45, every=15, seed=10)
    found = detect_equipment(pl.concat([cycling, worn]), None, meters_of("switch", "worn"))
    assert rules_of(found, "switch") == set()
    assert rules_of(found, "worn") == {"degradation.run_hours"}
    figures = daily_figures(worn, None, meters_of("worn"))
    assert figures["cycles"].null_count() == figures.height


def test_hvac_is_not_judged_by_default_but_can_be() -> None:
    readings = pump("chiller", 21, duty_growth=0.6, standby_growth=1.0, seed=11)
    meters = meters_of("chiller", load="hvac")
    assert detect_equipment(readings, None, meters).is_empty()
    standby = EquipmentParams(figures_by_load={"hvac": ("standby",)})
    found = detect_equipment(readings, None, meters, params=standby)
    assert rules_of(found, "chiller") == {"degradation.standby_creep"}


def test_a_busier_lift_is_not_short_cycling_but_longer_trips_are_wear() -> None:
    # A lift's starts are its trips: more traffic is not wear. Longer trips for the same
    # traffic are.
    busier = pump("lift-a", 21, rate_growth=1.5, seed=15)
    slower = pump("lift-b", 21, duty_growth=0.6, seed=16)
    found = detect_equipment(
        pl.concat([busier, slower]), None, meters_of("lift-a", "lift-b", load="lift")
    )
    assert rules_of(found, "lift-a") == set()
    assert rules_of(found, "lift-b") == {
        "degradation.energy_per_cycle",
        "degradation.run_time_per_cycle",
    }


def test_consumption_frame_stands_in_for_the_register() -> None:
    readings = pump("worn", 21, duty_growth=0.45, seed=3)
    reg = readings.filter(pl.col("channel") == "energy_import_kwh").sort("ts")
    consumption = pl.DataFrame(
        {
            "meter_id": "worn",
            "channel": "energy_import_kwh",
            "start": reg["ts"][:-1],
            "end": reg["ts"][1:],
            "consumption": reg["value"].diff()[1:],
            "quality": "measured",
        },
        schema=frames.CONSUMPTION_SCHEMA,
    )
    power_only = readings.filter(pl.col("channel") == "power_w")
    a = detect_equipment(readings, None, meters_of("worn"))
    b = detect_equipment(power_only, consumption, meters_of("worn"))
    assert a.select("subject", "rule").equals(b.select("subject", "rule"))


def test_output_does_not_depend_on_row_order() -> None:
    readings = pl.concat(
        [
            pump("a", 14, duty_growth=0.5, seed=12),
            pump("b", 14, rate_growth=1.5, seed=13),
            pump("c", 14, seed=14),
        ]
    )
    meters = meters_of("a", "b", "c")
    first = detect_equipment(readings, None, meters)
    again = detect_equipment(readings.sample(fraction=1.0, shuffle=True, seed=2), None, meters)
    assert first.height >= 2
    assert first.equals(again)


# -- against the simulator's degradation faults ------------------------------------------------


def equipment_history(
    scenario: str, seed: int, days: float, interval_s: int, loads: tuple[str, ...] = EQUIPMENT
) -> tuple[int, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(run start, power/energy readings, meters, faults) of a scenario's pumps, lifts and HVAC
    units only (each meter's physics is keyed by its own id, so dropping the others changes
    nothing about these)."""
    p = plan(load_scenario(ROOT / "scenarios" / scenario), seed=seed)
    kept = tuple(m for m in p.meters if m.load in loads)
    ids = {m.meter_id for m in kept}
    p = dataclasses.replace(
        p,
        meters=kept,
        faults=tuple(f for f in p.faults if f.meter_id in ids),
        by_id={k: v for k, v in p.by_id.items() if k in ids},
    )
    run = History(p, days, interval_s)
    channels = ["power_w", "energy_import_kwh"]
    parts = [
        f.filter(pl.col("channel").cast(pl.String).is_in(channels)).select(
            "meter_id", "channel", "ts", "value", "quality"
        )
        for f in run.frames()
    ]
    return p.start, pl.concat(parts), run.meters_frame(), run.faults_frame()


def evaluate_degradation(
    scenario: str,
    seed: int,
    *,
    days: float = 30,
    interval_s: int = 60,
    params: EquipmentParams | None = None,
    loads: tuple[str, ...] = EQUIPMENT,
) -> tuple[list[dict[str, Any]], dict[str, tuple[float, str]], int]:
    """Replay a scenario's equipment day by day (the daily job's view: only data up to each
    midnight of the run). Returns, per degradation fault, when it was first warned about against
    its failure date (fault start + ramp_days); the healthy units warned about at any cutoff
    (meter -> (days into the run, rule)); and how many healthy units there were."""
    start, readings, meters, faults = equipment_history(scenario, seed, days, interval_s, loads)
    t0 = dt.datetime.fromtimestamp(start, dt.UTC)
    deg = {
        r["meter_id"]: (r["start"], json.loads(r["params"]))
        for r in faults.filter(pl.col("kind") == "degradation").iter_rows(named=True)
    }
    first: dict[str, tuple[float, str, float | None]] = {}
    false: dict[str, tuple[float, str]] = {}
    for cut in range(3, int(days) + 1):
        upto = readings.filter(pl.col("ts") < t0 + dt.timedelta(days=cut))
        found = detect_equipment(upto, None, meters, params=params or EquipmentParams())
        for r in found.iter_rows(named=True):
            if r["subject"] in deg:
                first.setdefault(r["subject"], (cut, r["rule"], r["lead_time_days"]))
            else:
                false.setdefault(r["subject"], (cut, r["rule"]))
    cases = []
    for meter_id, (begin, prm) in sorted(deg.items()):
        failure = begin + dt.timedelta(days=float(prm["ramp_days"]))
        hit = first.get(meter_id)
        at = None if hit is None else t0 + dt.timedelta(days=hit[0])
        cases.append(
            {
                "scenario": scenario,
                "seed": seed,
                "meter_id": meter_id,
                "failure": failure,
                "warned": at,
                "in_time": at is not None and at < failure,
                "days_before_failure": None if at is None else (failure - at) / dt.timedelta(1),
                "rule": None if hit is None else hit[1],
                "lead_time_days": None if hit is None else hit[2],
            }
        )
    healthy = meters.filter(pl.col("load").is_in(EQUIPMENT)).height - len(deg)
    return cases, false, healthy


@pytest.mark.slow
def test_simulated_degradation_is_warned_before_failure_and_healthy_units_are_not() -> None:
    cases, false, healthy = evaluate_degradation("residential-small.toml", 20260105, days=16)
    assert [c["meter_id"] for c in cases] == ["plant-pump-1", "plant-pump-2"]
    assert all(c["in_time"] for c in cases), cases
    assert healthy == 8
    assert false == {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", default="1-20", help="a-b or a,b,c")
    ap.add_argument("--interval", type=int, default=60, help="polling interval, seconds")
    ap.add_argument("--days", type=float, default=30)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--loads", default=",".join(EQUIPMENT), help="units to simulate")
    args = ap.parse_args(argv)
    if "-" in args.seeds:
        lo, hi = (int(x) for x in args.seeds.split("-"))
        seeds = list(range(lo, hi + 1))
    else:
        seeds = [int(x) for x in args.seeds.split(",")]
    cases: list[dict[str, Any]] = []
    false_total = healthy_total = 0
    for seed in seeds:
        for scenario in args.scenarios.split(","):
            found, false, healthy = evaluate_degradation(
                scenario,
                seed,
                days=args.days,
                interval_s=args.interval,
                loads=tuple(args.loads.split(",")),
            )
            cases += found
            false_total += len(false)
            healthy_total += healthy
            brief = [(c["meter_id"], c["in_time"], c["days_before_failure"]) for c in found]
            print(f"seed {seed} {scenario}: {brief} false warnings: {false}", flush=True)
    df = pl.DataFrame(cases)
    print(
        df.group_by("scenario", "meter_id", maintain_order=True).agg(
            pl.col("in_time").mean().alias("in_time_share"),
            pl.col("days_before_failure").median().alias("median_days_before_failure"),
            pl.col("lead_time_days").median().alias("median_lead_time_estimate"),
        )
    )
    in_time = int(df["in_time"].sum())
    print(
        f"warned before failure: {in_time}/{df.height} ({in_time / df.height:.1%}); "
        f"healthy units warned: {false_total}/{healthy_total}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
