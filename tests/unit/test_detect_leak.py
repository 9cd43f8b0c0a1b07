"""Water leaks: night minimum over consecutive nights, continuous flow; households using water
at night, a night of filling a bath, offices whose water never stops, and the local clock."""

from __future__ import annotations

import datetime as dt
import json
import random

import polars as pl
from polars.testing import assert_frame_equal

from analytics.detectors.common import local_time, with_local_clock
from analytics.detectors.leak import LeakParams, detect_leak
from analytics.frames import CONSUMPTION_QUALITY_ENUM, FINDINGS_SCHEMA
from tests.support.detector_data import grid, meters, overlaps, readings, shuffled, simulated

DRY = ["dry-1", "dry-2", "dry-3"]
# Midnight in Shanghai; four days at 15-minute polls.
START = dt.datetime(2026, 1, 4, 16, tzinfo=dt.UTC)
TS = grid(96 * 4, start=START)


def local_hour(t: dt.datetime) -> float:
    return ((t.hour + 8) % 24) + t.minute / 60


def household(t: dt.datetime) -> float:
    """Morning and evening use, nothing from midnight to six."""
    h = local_hour(t)
    return 0.0 if h < 6 else (0.05 if 7 <= h < 9 or 18 <= h < 22 else 0.004)


def flows(meter: str, values: list[float]) -> pl.DataFrame:
    return readings(meter, "water_flow_m3h", TS, values)


def estate(
    target: list[float], zone: str = "Asia/Shanghai", load: str = "household"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    dry = [flows(m, [household(t) for t in TS]) for m in DRY]
    return (
        pl.concat([flows("flat", target), *dry]),
        meters(["flat", *DRY], kind="water", load=load, zone=zone),
    )


def test_a_running_toilet_is_found_by_both_rules_with_its_evidence() -> None:
    df, m = estate([household(t) + 0.03 for t in TS])
    out = detect_leak(df, None, m)
    assert out.schema == FINDINGS_SCHEMA
    assert out.get_column("subject").unique().to_list() == ["flat"]
    assert set(out.get_column("rule")) == {"leak.night_minimum", "leak.continuous_flow"}
    assert set(out.get_column("kind")) == {"leak"}
    night = json.loads(out.filter(pl.col("rule") == "leak.night_minimum").item(0, "evidence"))
    assert night["nights"][:2] == ["2026-01-05", "2026-01-06"]
    assert min(night["night_min_m3h"]) >= 0.03
    assert night["threshold_m3h"] == [0.01] * len(night["nights"])
    assert night["peer_median_m3h"] == 0.0
    assert night["window_local"] == [2, 5]
    assert night["excess_m3_per_day"] >= 0.7
    cont = json.loads(out.filter(pl.col("rule") == "leak.continuous_flow").item(0, "evidence"))
    assert cont["hours"] >= 24
    assert cont["min_flow_m3h"] >= 0.03


def test_night_use_that_stops_is_not_a_leak() -> None:
    """A glass of water, the dishwasher at 3 am every night, a night-shift shower."""

    def night_owl(t: dt.datetime) -> float:
        h = local_hour(t)
        return 0.3 if 3.0 <= h < 3.25 or 2.5 <= h < 2.75 else household(t)

    df, m = estate([night_owl(t) for t in TS])
    assert detect_leak(df, None, m).height == 0


def test_one_night_of_filling_is_not_a_leak() -> None:
    first_night = TS[0] + dt.timedelta(days=1)
    df, m = estate(
        [
            0.2 if first_night <= t < first_night + dt.timedelta(hours=8) else household(t)
            for t in TS
        ]
    )
    assert detect_leak(df, None, m).height == 0


def test_weekend_habits_are_not_a_leak() -> None:
    def weekend(t: dt.datetime) -> float:
        local = t + dt.timedelta(hours=8)
        late = local.weekday() >= 5 and local_hour(t) < 2
        return 0.08 if late else household(t)

    df, m = estate([weekend(t) for t in TS])
    assert detect_leak(df, None, m).height == 0


def test_an_office_whose_water_never_stops_is_held_to_its_peers() -> None:
    base = [0.04 + household(t) for t in TS]
    office = [readings(x, "water_flow_m3h", TS, base) for x in [*DRY, "floor"]]
    m = meters([*DRY, "floor"], kind="water", load="office")
    assert detect_leak(pl.concat(office), None, m).height == 0
    leaking = [readings("floor", "water_flow_m3h", TS, [v + 0.08 for v in base])]
    out = detect_leak(pl.concat([*office[:3], *leaking]), None, m)
    assert out.get_column("subject").unique().to_list() == ["floor"]
    ev = json.loads(out.filter(pl.col("rule") == "leak.night_minimum").item(0, "evidence"))
    assert ev["peer_median_m3h"] >= 0.04
    assert ev["threshold_m3h"][0] >= 2 * 0.04


def test_the_night_window_is_local_time() -> None:
    # flow from 02:00 to 05:00 in Shanghai is 19:00-22:00 the evening before in Berlin
    def shanghai_night(t: dt.datetime) -> float:
        return 0.05 if 2 <= local_hour(t) < 5 else 0.0

    flow = [shanghai_night(t) for t in TS]
    df, shanghai = estate(flow, zone="Asia/Shanghai")
    _, berlin = estate(flow, zone="Europe/Berlin")
    in_shanghai = detect_leak(df, None, shanghai)
    in_berlin = detect_leak(df, None, berlin)
    assert in_shanghai.filter(pl.col("rule") == "leak.night_minimum").height == 1
    assert in_berlin.height == 0


def test_without_flow_readings_the_volume_rate_is_used() -> None:
    starts = TS[:-1]
    cons = pl.DataFrame(
        {
            "meter_id": "flat",
            "channel": "water_volume_m3",
            "start": starts,
            "end": TS[1:],
            "consumption": [(household(t) + 0.03) / 4 for t in starts],
            "quality": "measured",
        },
        schema_overrides={"quality": CONSUMPTION_QUALITY_ENUM},
    )
    dry = pl.concat([flows(x, [household(t) for t in TS]) for x in DRY])
    m = meters(["flat", *DRY], kind="water")
    out = detect_leak(dry, cons, m)
    assert out.get_column("subject").unique().to_list() == ["flat"]


def test_thresholds_are_parameters() -> None:
    df, m = estate([household(t) + 0.03 for t in TS])
    assert detect_leak(df, None, m, params=LeakParams(min_flow_m3h=0.05)).height == 0
    assert detect_leak(df, None, m, params=LeakParams(nights=9, continuous_hours=200)).height == 0


def test_same_input_in_any_order_gives_the_same_bytes() -> None:
    df, m = estate([household(t) + 0.03 for t in TS])
    assert_frame_equal(detect_leak(df, None, m), detect_leak(shuffled(df), None, m))


def test_the_simulated_estate_s_leak_is_found_and_nothing_else() -> None:
    estate_ = simulated()
    out = detect_leak(estate_.readings, estate_.consumption, estate_.meters)
    leaks = estate_.faults.filter(pl.col("kind") == "leak")
    assert out.height > 0
    assert set(out.get_column("subject")) == set(leaks.get_column("meter_id"))
    assert overlaps(out, leaks).height == out.height


def test_local_clock_per_distinct_instant_equals_the_per_row_conversion() -> None:
    """The clock joined back from distinct (zone, instant) pairs is `local_time` of each row:
    half-hour and DST zones, instants inside the DST change, null and unknown zones, null
    instants, unsorted rows, and the rows' order kept."""
    rng = random.Random(3)
    zones = ["America/St_Johns", "Asia/Kolkata", "Australia/Lord_Howe", "Europe/Berlin"]
    t0 = dt.datetime(2026, 3, 28, 20, tzinfo=dt.UTC)  # Berlin springs forward on the 29th
    n = 3000
    ts = [t0 + dt.timedelta(seconds=rng.randrange(0, 3 * 86400, 450)) for _ in range(n)]
    ts[5] = None  # type: ignore[call-overload]
    zone = [rng.choice([*zones, "Mars/Olympus", None]) for _ in range(n)]
    df = pl.DataFrame({"ts": ts, "time_zone": zone, "row": range(n)}).with_columns(
        pl.col("ts").dt.cast_time_unit("us")
    )

    def derive(local: pl.Expr) -> list[pl.Expr]:
        return [local.alias("local"), local.dt.date().alias("day"), local.dt.hour().alias("h")]

    got = with_local_clock(df, zones, derive)
    want = df.with_columns(derive(local_time("ts", "time_zone", zones)))
    assert got.equals(want)
    assert got.get_column("local").null_count() == 1
