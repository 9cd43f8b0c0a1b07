"""Consumption spikes and drops: robust same-hour baselines, a kettle is not a spike, offices'
weekends are not drops, a heat wave is not an anomaly when the weather is known."""

from __future__ import annotations

import datetime as dt
import json
import math

import polars as pl
from polars.testing import assert_frame_equal

from analytics.detectors.usage import UsageParams, detect_usage
from analytics.frames import CONSUMPTION_QUALITY_ENUM, FINDINGS_SCHEMA
from tests.support.detector_data import T0, meters, overlaps, shuffled, simulated

M = meters(["m1"], zone="UTC")


def hours(n: int) -> list[dt.datetime]:
    return [T0 + dt.timedelta(hours=h) for h in range(n)]


def wiggle(h: int) -> float:
    """Deterministic noise of +-10 %."""
    return 0.1 * math.sin(h * 2.7) * math.cos(h * 0.37)


def profile(t: dt.datetime, h: int) -> float:
    """A household: low at night, evening peak."""
    base = 0.3 if t.hour < 6 else (1.2 if 17 <= t.hour < 22 else 0.6)
    return base * (1 + wiggle(h))


def office(t: dt.datetime, h: int) -> float:
    working = t.weekday() < 5 and 8 <= t.hour < 19
    return (10.0 if working else 2.5) * (1 + wiggle(h))


def consumption(use: list[float], start: list[dt.datetime], meter: str = "m1") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "meter_id": meter,
            "channel": "energy_import_kwh",
            "start": start,
            "end": [t + dt.timedelta(hours=1) for t in start],
            "consumption": use,
            "quality": "measured",
        },
        schema_overrides={"quality": CONSUMPTION_QUALITY_ENUM},
    )


def series(n: int, shape: object = profile, extra: dict[int, float] | None = None) -> pl.DataFrame:
    ts = hours(n)
    f = shape if callable(shape) else profile
    use = [f(t, h) + (extra or {}).get(h, 0.0) for h, t in enumerate(ts)]
    return consumption(use, ts)


def test_a_sustained_spike_against_the_same_hour_of_week() -> None:
    at = 24 * 15 + 18  # a Tuesday evening in the third week
    out = detect_usage(None, series(24 * 28, extra={at: 6.0, at + 1: 6.0}), M)
    assert out.schema == FINDINGS_SCHEMA
    assert out.height == 1
    row = out.row(0, named=True)
    assert (row["rule"], row["kind"]) == ("spike.same_hour_of_week", "spike")
    assert row["start"] == T0 + dt.timedelta(hours=at)
    assert row["end"] == T0 + dt.timedelta(hours=at + 2)
    ev = json.loads(row["evidence"])
    assert ev["channel"] == "energy_import_kwh"
    assert len(ev["use"]) == 2
    assert ev["baseline_samples"] == 4
    assert all(u > 4 * e for u, e in zip(ev["use"], ev["expected"], strict=True))
    assert min(ev["z"]) >= 6
    assert ev["excess"] >= ev["excess_needed"]
    assert "weather" not in ev


def test_with_a_week_of_history_the_same_hour_of_day_is_the_baseline() -> None:
    out = detect_usage(None, series(24 * 7, extra={60: 6.0, 61: 6.0}), M)
    assert out.get_column("rule").to_list() == ["spike.same_hour_of_day"]


def test_a_kettle_is_not_a_spike() -> None:
    assert detect_usage(None, series(24 * 21, extra={200: 3.0}), M).height == 0


def test_a_busy_evening_is_not_a_spike() -> None:
    # two hours at twice the evening's use: 1.2 kWh more, two mean hours - a dinner party
    out = detect_usage(None, series(24 * 21, extra={24 * 10 + 18: 1.2, 24 * 10 + 19: 1.2}), M)
    assert out.height == 0


def test_an_office_s_weekends_are_its_normal() -> None:
    out = detect_usage(None, series(24 * 28, shape=office), M)
    assert out.height == 0


def test_a_meter_that_stops_using_is_a_drop() -> None:
    gone = {h: -profile(hours(24 * 21)[h], h) for h in range(24 * 14 + 8, 24 * 14 + 16)}
    out = detect_usage(None, series(24 * 21, extra=gone), M)
    assert out.get_column("kind").to_list() == ["drop"]
    assert out.get_column("rule").to_list() == ["drop.same_hour_of_week"]
    assert json.loads(out.item(0, "evidence"))["use"] == [0.0] * 8


def weather_case() -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """An air-conditioned flat: use follows cooling degree-hours; a hot afternoon on day 18."""
    ts = hours(24 * 28)
    hot = range(24 * 18 + 8, 24 * 18 + 16)
    temp = [
        40.0
        if h in hot
        else 25.0 + 3.0 * math.sin(h / 24 * 2 * math.pi) + 5.0 * math.sin(h // 24 * 1.7)
        for h in range(len(ts))
    ]
    use = [0.5 * (1 + wiggle(h)) + 0.3 * max(temp[h] - 22.0, 0.0) for h in range(len(ts))]
    weather = pl.DataFrame({"project": "p1", "ts": ts, "temperature_c": temp})
    return consumption(use, ts), weather, hot.start


def test_a_heat_wave_is_not_a_spike_when_the_weather_is_known() -> None:
    cons, weather, _ = weather_case()
    blind = detect_usage(None, cons, M)
    assert blind.filter(pl.col("kind") == "spike").height >= 1
    informed = detect_usage(None, cons, M, weather=weather)
    assert informed.filter(pl.col("kind") == "spike").height == 0


def test_a_spike_in_hot_weather_carries_the_weather_adjustment() -> None:
    cons, weather, hot = weather_case()
    cons = cons.with_columns(
        pl.when(pl.col("start").is_in([T0 + dt.timedelta(hours=hot + 2 + k) for k in range(3)]))
        .then(pl.col("consumption") + 20.0)
        .otherwise(pl.col("consumption"))
        .alias("consumption")
    )
    out = detect_usage(None, cons, M, weather=weather).filter(pl.col("kind") == "spike")
    assert out.height == 1
    ev = json.loads(out.item(0, "evidence"))
    assert ev["weather"]["beta_cooling_per_degree_hour"] > 0.2
    assert ev["weather"]["shift"][0] > 1.0
    assert ev["weather"]["temperature_c"][0] == 40.0


def test_thresholds_are_parameters() -> None:
    df = series(24 * 21, extra={200: 5.0})
    assert detect_usage(None, df, M).height == 0
    assert detect_usage(None, df, M, params=UsageParams(min_hours=1)).height == 1


def test_same_input_in_any_order_gives_the_same_bytes() -> None:
    df = pl.concat(
        [
            series(24 * 21, extra={300: 6.0, 301: 6.0}),
            series(24 * 21, extra={100: 6.0, 101: 6.0}).with_columns(meter_id=pl.lit("m2")),
        ]
    )
    m = meters(["m1", "m2"], zone="UTC")
    first = detect_usage(None, df, m)
    assert first.height == 2
    assert_frame_equal(first, detect_usage(None, shuffled(df), m))


def test_the_simulated_estate_s_spike_is_found_and_nothing_else() -> None:
    estate = simulated()
    out = detect_usage(estate.readings, estate.consumption, estate.meters, weather=estate.weather)
    spikes = out.filter(pl.col("kind") == "spike")
    truth = estate.faults.filter(pl.col("kind") == "spike")
    assert spikes.height == 1
    assert overlaps(spikes, truth).height == 1


def test_peers_rising_together_is_not_a_spike_of_one_of_them() -> None:
    """A hot afternoon starts every chiller of the building: common mode, not a fault."""
    ids = ["c1", "c2", "c3", "c4"]
    at = {24 * 15 + 13: 6.0, 24 * 15 + 14: 6.0}
    together = pl.concat([series(24 * 21, extra=at).with_columns(meter_id=pl.lit(i)) for i in ids])
    m = meters(ids, load="hvac", zone="UTC")
    assert detect_usage(None, together, m).height == 0
    alone = pl.concat(
        [
            series(24 * 21, extra=at if i == "c1" else {}).with_columns(meter_id=pl.lit(i))
            for i in ids
        ]
    )
    out = detect_usage(None, alone, m)
    assert out.get_column("subject").to_list() == ["c1"]
    assert json.loads(out.item(0, "evidence"))["peers_elevated_share"] == 0.25


def test_two_hvac_units_rising_together_is_the_weather() -> None:
    ids = ["c1", "c2", "c3", "c4"]
    at = {24 * 15 + 13: 6.0, 24 * 15 + 14: 6.0}
    two = pl.concat(
        [
            series(24 * 21, extra=at if i in ("c1", "c2") else {}).with_columns(meter_id=pl.lit(i))
            for i in ids
        ]
    )
    assert detect_usage(None, two, meters(ids, load="hvac", zone="UTC")).height == 0
    # households are many: two flats up at once are two findings
    assert detect_usage(None, two, meters(ids, load="household", zone="UTC")).height == 2


def test_days_before_a_dormant_spell_are_not_spikes() -> None:
    """The import register stands still from day 10 (a CT reversed, a flat left empty): the
    ordinary days before are not spikes against a baseline full of zeros."""
    n = 24 * 21
    gone = {h: -profile(hours(n)[h], h) for h in range(24 * 10, n)}
    out = detect_usage(None, series(n, extra=gone), M)
    assert out.filter(pl.col("kind") == "spike").height == 0


def test_a_meter_s_findings_do_not_depend_on_the_other_meters_in_the_frame() -> None:
    """Hourly sums, baselines and peers are keyed per meter and channel (packed integers): other
    meters in other zones, projects and channels, a meter missing from `meters` and Enum
    columns change nothing for m1."""
    at = 24 * 15 + 18
    m1 = series(24 * 21, extra={at: 6.0, at + 1: 6.0})
    alone = detect_usage(None, m1, meters(["m1"], zone="Europe/Berlin"))
    assert alone.height == 1
    others = pl.concat(
        [
            m1,
            series(24 * 21, extra={100: 6.0, 101: 6.0}).with_columns(meter_id=pl.lit("m2")),
            series(24 * 21).with_columns(meter_id=pl.lit("m3"), channel=pl.lit("water_volume_m3")),
            series(24 * 21, extra={200: 6.0, 201: 6.0}).with_columns(meter_id=pl.lit("m4")),
        ]
    )
    m = pl.concat(
        [
            meters(["m1"], zone="Europe/Berlin"),
            meters(["m2"], zone="Asia/Shanghai", project="p2"),
            meters(["m3"], zone="America/New_York", kind="water", load="water"),
        ]
    )  # m4 is not in `meters`: no zone, judged in UTC
    ids = pl.Enum(["m4", "m3", "m2", "m1"])
    for frame in (others, shuffled(others).with_columns(pl.col("meter_id").cast(ids))):
        out = detect_usage(None, frame, m)
        assert_frame_equal(out.filter(pl.col("subject") == "m1"), alone)
        assert sorted(out.get_column("subject").unique().to_list()) == ["m1", "m2", "m4"]


def test_a_meter_without_a_zone_is_judged_in_utc() -> None:
    df = series(24 * 21, shape=office, extra={24 * 16 + 2: 20.0, 24 * 16 + 3: 20.0})
    in_utc = detect_usage(None, df, M)
    assert in_utc.height == 1
    assert_frame_equal(detect_usage(None, df, meters(["other"], zone="Asia/Shanghai")), in_utc)
