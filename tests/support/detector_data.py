"""Frames for the consumption-anomaly detector tests: hand-built readings and a simulated estate.

`simulated()` runs the residential scenario once per process (a week at 15-minute polls, about
half a million readings) and gives readings, interval consumption (from the simulator's
`true_value`: the truth, so a detector test does not depend on the consumption step), meters,
weather and the faults ledger.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from analytics.frames import CONSUMPTION_QUALITY_ENUM, READINGS_SCHEMA, TS
from simulators.history import History
from simulators.scenario import load_scenario, plan

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)  # a Monday, 08:00 in Shanghai
COUNTERS = ("energy_import_kwh", "water_volume_m3")


@dataclass(frozen=True)
class Estate:
    readings: pl.DataFrame
    consumption: pl.DataFrame
    meters: pl.DataFrame
    weather: pl.DataFrame
    faults: pl.DataFrame


@functools.cache
def simulated(scenario: str = "residential-small.toml", days: float = 7.0) -> Estate:
    run = History(plan(load_scenario(ROOT / "scenarios" / scenario)), days=days, interval_s=900)
    readings = run.collect()
    return Estate(
        readings=readings,
        consumption=true_consumption(readings),
        meters=run.meters_frame(),
        weather=run.weather_frame(),
        faults=run.faults_frame(),
    )


def true_consumption(readings: pl.DataFrame) -> pl.DataFrame:
    """Interval consumption of the counters from the ledger's true register (never negative)."""
    df = (
        readings.filter(pl.col("channel").cast(pl.String).is_in(COUNTERS))
        .select(
            pl.col("meter_id").cast(pl.String),
            pl.col("channel").cast(pl.String),
            "ts",
            "true_value",
        )
        .sort("meter_id", "channel", "ts")
    )
    key = ["meter_id", "channel"]
    return (
        df.with_columns(
            pl.col("ts").shift(1).over(key).alias("start"),
            pl.col("true_value").diff().over(key).alias("consumption"),
        )
        .drop_nulls("start")
        .select(
            "meter_id",
            "channel",
            pl.col("start").cast(TS),
            pl.col("ts").cast(TS).alias("end"),
            pl.col("consumption").clip(0.0, None),
            pl.lit("measured").cast(CONSUMPTION_QUALITY_ENUM).alias("quality"),
        )
    )


def grid(n: int, step_s: int = 900, start: dt.datetime = T0) -> list[dt.datetime]:
    return [start + dt.timedelta(seconds=step_s * i) for i in range(n)]


def readings(
    meter: str,
    channel: str,
    ts: Sequence[dt.datetime],
    values: Sequence[float | None],
    quality: Sequence[str] | None = None,
) -> pl.DataFrame:
    q = list(quality) if quality is not None else ["good"] * len(ts)
    return pl.DataFrame(
        {
            "meter_id": [meter] * len(ts),
            "channel": [channel] * len(ts),
            "ts": list(ts),
            "value": list(values),
            "quality": q,
        },
        schema=READINGS_SCHEMA,
    )


def meters(
    ids: Sequence[str],
    *,
    kind: str = "electricity",
    load: str = "household",
    zone: str = "Asia/Shanghai",
    project: str = "p1",
) -> pl.DataFrame:
    n = len(ids)
    return pl.DataFrame(
        {
            "meter_id": list(ids),
            "project": [project] * n,
            "building": ["B1"] * n,
            "kind": [kind] * n,
            "load": [load] * n,
            "time_zone": [zone] * n,
        }
    )


def shuffled(df: pl.DataFrame, seed: int = 7) -> pl.DataFrame:
    return df.sample(fraction=1.0, shuffle=True, seed=seed)


def overlaps(findings: pl.DataFrame, faults: pl.DataFrame, slack_h: float = 1.0) -> pl.DataFrame:
    """Pairs (finding, fault) on the same meter whose windows overlap within `slack_h`."""
    slack = pl.duration(seconds=int(slack_h * 3600))
    end = pl.coalesce(pl.col("end_f"), pl.lit(dt.datetime(2100, 1, 1, tzinfo=dt.UTC)))
    return (
        findings.join(
            faults.rename({"start": "start_f", "end": "end_f", "kind": "fault"}),
            left_on="subject",
            right_on="meter_id",
        )
        .filter((pl.col("start") <= end + slack) & (pl.col("end") >= pl.col("start_f") - slack))
        .select("subject", "rule", "fault", "start", "start_f")
    )
