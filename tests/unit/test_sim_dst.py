"""23- and 25-hour local days: load shapes keep following the local clock, the sun keeps
following the sun, and the UTC reading grid stays regular."""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
import pytest

from simulators.history import History
from simulators.scenario import parse_scenario, plan

CASES = [
    # (zone, lat, lon, run start (a Thursday), the DST day, its length in hours)
    ("Europe/Berlin", 52.52, 13.40, "2026-03-26", date(2026, 3, 29), 23),
    ("Europe/Berlin", 52.52, 13.40, "2026-10-22", date(2026, 10, 25), 25),
    ("America/New_York", 40.71, -74.01, "2026-03-05", date(2026, 3, 8), 23),
    ("America/New_York", 40.71, -74.01, "2026-10-29", date(2026, 11, 1), 25),
]


def run(zone: str, lat: float, lon: float, start: str) -> pl.DataFrame:
    data: dict[str, Any] = {
        "scenario": {"name": "dst", "seed": 11, "start": start, "time_zone": zone},
        "projects": [
            {
                "id": "p",
                "time_zone": zone,
                "latitude": lat,
                "longitude": lon,
                "meters": [
                    {
                        "id": "flat-{n:02d}",
                        "count": 60,
                        "kind": "electricity",
                        "profile": "eastron-sdm120",
                        "load": "household",
                    },
                    {
                        "id": "floor-{n}",
                        "count": 4,
                        "kind": "electricity",
                        "profile": "schneider-iem3155",
                        "load": "office",
                        "occupancy": "office",
                    },
                    {
                        "id": "lights",
                        "kind": "electricity",
                        "profile": "acrel-adl400",
                        "load": "lighting",
                    },
                ],
            }
        ],
    }
    df = History(plan(parse_scenario(data)), days=6, interval_s=900).collect()
    local = pl.col("ts").dt.convert_time_zone(zone)
    return df.with_columns(
        pl.col("meter_id", "channel").cast(pl.String),
        local.dt.date().alias("day"),
        (local.dt.hour() + local.dt.minute() / 60.0).alias("hour"),
    )


@pytest.fixture(scope="module", params=CASES, ids=[f"{c[0]}-{c[4]}" for c in CASES])
def case(request: pytest.FixtureRequest) -> tuple[pl.DataFrame, date, int]:
    zone, lat, lon, start, dst_day, hours = request.param
    return run(zone, lat, lon, start), dst_day, hours


def test_utc_grid_is_regular_and_local_days_have_their_length(
    case: tuple[pl.DataFrame, date, int],
) -> None:
    df, dst_day, hours = case
    one = df.filter((pl.col("meter_id") == "flat-01") & (pl.col("channel") == "power_w"))
    assert one.height == 6 * 96
    assert one["ts"].diff().drop_nulls().dt.total_seconds().unique().to_list() == [900]
    per_day = one.group_by("day").len()
    assert per_day.filter(pl.col("day") == dst_day)["len"][0] == hours * 4


def test_evening_peak_stays_at_local_evening(case: tuple[pl.DataFrame, date, int]) -> None:
    df, dst_day, _ = case
    homes = (
        df.filter(pl.col("meter_id").str.starts_with("flat") & (pl.col("channel") == "power_w"))
        .with_columns(pl.col("hour").floor())
        .group_by("day", "hour")
        .agg(pl.col("true_value").mean())
    )
    days = sorted(set(homes["day"]))[1:-1]  # whole local days only
    assert dst_day in days
    for day in days:
        rows = homes.filter(pl.col("day") == day).sort("true_value")
        assert 17 <= rows["hour"][-1] <= 21, (day, rows["hour"][-1])
        night = rows.filter(pl.col("hour").is_between(1, 4))["true_value"].mean()
        assert isinstance(night, float)
        assert rows["true_value"][-1] > 2 * night


def test_office_ramp_stays_at_local_morning(case: tuple[pl.DataFrame, date, int]) -> None:
    df, dst_day, _ = case
    office = (
        df.filter(pl.col("meter_id").str.starts_with("floor") & (pl.col("channel") == "power_w"))
        .group_by("day", "hour")
        .agg(pl.col("true_value").sum())
    )
    weekdays = [d for d in sorted(set(office["day"]))[1:-1] if d.weekday() < 5]
    assert len(weekdays) >= 2
    assert any(d < dst_day for d in weekdays)
    assert any(d > dst_day for d in weekdays)
    for day in weekdays:
        rows = office.filter(pl.col("day") == day).sort("hour")
        peak = rows["true_value"].max()
        assert isinstance(peak, float)
        first = rows.filter(pl.col("true_value") > 0.6 * peak)["hour"][0]
        assert 7.5 <= first <= 9.0, (day, first)


def test_lights_follow_the_sun_not_the_clock(case: tuple[pl.DataFrame, date, int]) -> None:
    df, dst_day, hours = case
    lights = df.filter((pl.col("meter_id") == "lights") & (pl.col("channel") == "power_w"))
    switch_on = (
        lights.filter((pl.col("hour") > 12) & (pl.col("true_value") > 100))
        .group_by("day")
        .agg(pl.col("hour").min())
        .sort("day")
    )
    before = switch_on.filter(pl.col("day") < dst_day)["hour"][-1]
    after = switch_on.filter(pl.col("day") > dst_day)["hour"][0]
    shift = after - before
    expected = 1.0 if hours == 23 else -1.0  # clocks jump; the sunset does not
    assert abs(shift - expected) <= 0.3, (before, after)


def test_counters_run_through_the_transition(case: tuple[pl.DataFrame, date, int]) -> None:
    df, dst_day, _ = case
    energy = df.filter(pl.col("channel") == "energy_import_kwh").sort("meter_id", "ts")
    steps = energy.group_by("meter_id").agg(pl.col("value").diff().min())
    assert (steps["value"] >= 0).all()
    daily = (
        energy.filter(pl.col("meter_id").str.starts_with("flat"))
        .group_by("meter_id", "day")
        .agg((pl.col("true_value").max() - pl.col("true_value").min()).alias("kwh"))
    )
    assert (daily.filter(pl.col("day") == dst_day)["kwh"] > 0.5).all()
