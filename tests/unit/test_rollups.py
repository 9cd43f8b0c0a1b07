"""Rollups: local-time buckets (DST days), levels, proportional split, quality, and the
incremental refresh (late data touches only its buckets; incremental == full, bit for bit)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from analytics.frames import CONSUMPTION_QUALITY_ENUM, CONSUMPTION_SCHEMA
from analytics.rollups import (
    DIRTY_SCHEMA,
    ROLLUP_KEY,
    ROLLUP_SCHEMA,
    consumption_window,
    dirty_buckets,
    frame_hash,
    refresh,
    rollup,
    watermarks,
)

UTC = dt.UTC
MIN = 60_000_000  # microseconds


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def series(
    meter: str,
    start: dt.datetime,
    n: int,
    *,
    minutes: int = 15,
    values: Sequence[float] | np.ndarray | float = 1.0,
    quality: Sequence[str] | str = "measured",
    channel: str = "energy_wh",
) -> pl.DataFrame:
    """`n` contiguous intervals of `minutes` from `start` for one stream."""
    t0 = int(start.timestamp() * 1_000_000)
    starts = t0 + np.arange(n, dtype=np.int64) * minutes * MIN
    vals = np.broadcast_to(np.asarray(values, dtype=np.float64), (n,))
    quals = [quality] * n if isinstance(quality, str) else list(quality)
    return pl.DataFrame(
        {
            "meter_id": [meter] * n,
            "channel": [channel] * n,
            "start": pl.Series(starts).cast(pl.Datetime("us", "UTC")),
            "end": pl.Series(starts + minutes * MIN).cast(pl.Datetime("us", "UTC")),
            "consumption": vals,
            "quality": pl.Series(quals, dtype=CONSUMPTION_QUALITY_ENUM),
        },
        schema=CONSUMPTION_SCHEMA,
    )


def meters_frame(rows: Sequence[tuple[str, str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "meter_id": [r[0] for r in rows],
            "project": [r[1] for r in rows],
            "building": [r[2] for r in rows],
            "time_zone": [r[3] for r in rows],
            "kind": ["electricity"] * len(rows),  # extra columns are ignored
        }
    )


def pick(r: pl.DataFrame, level: str, period: str, key: str | None = None) -> pl.DataFrame:
    out = r.filter(pl.col("level") == level, pl.col("period") == period)
    return out.filter(pl.col("key") == key) if key is not None else out


def hours(row: dict[str, dt.datetime]) -> float:
    return (row["bucket_end"] - row["bucket_start"]).total_seconds() / 3600


# -- local time -----------------------------------------------------------------------------------


def test_spring_forward_day_in_berlin_has_23_hours_and_an_exact_total() -> None:
    m = meters_frame([("m1", "p", "B1", "Europe/Berlin")])
    # 2026-03-29: clocks go 02:00 CET -> 03:00 CEST. Four days of 15-minute intervals of 0.25.
    c = series("m1", utc(2026, 3, 27, 23), 4 * 96, values=0.25)
    r = rollup(c, m)
    for level in ("meter", "building", "project"):
        days = pick(r, level, "day").sort("bucket_start")
        dst = days.filter(pl.col("bucket_start") == utc(2026, 3, 28, 23)).row(0, named=True)
        assert hours(dst) == 23
        assert dst["bucket_end"] == utc(2026, 3, 29, 22)
        assert dst["consumption"] == 23 * 4 * 0.25
        assert dst["coverage"] == 1.0
        normal = days.filter(pl.col("bucket_start") == utc(2026, 3, 27, 23)).row(0, named=True)
        assert hours(normal) == 24
        assert normal["consumption"] == 24.0
    hourly = pick(r, "meter", "hour").filter(
        pl.col("bucket_start") >= utc(2026, 3, 28, 23), pl.col("bucket_end") <= utc(2026, 3, 29, 22)
    )
    assert hourly.height == 23
    assert hourly["consumption"].to_list() == [1.0] * 23


def test_fall_back_day_in_new_york_has_25_hours_and_two_one_oclock_hours() -> None:
    m = meters_frame([("m1", "p", "B1", "America/New_York")])
    # 2026-11-01: 02:00 EDT -> 01:00 EST. Local midnight is 04:00 UTC, the next one 05:00 UTC.
    c = series("m1", utc(2026, 10, 31, 4), 3 * 96, values=np.arange(3 * 96) % 7 * 0.125)
    r = rollup(c, m)
    day = pick(r, "project", "day").filter(pl.col("bucket_start") == utc(2026, 11, 1, 4))
    row = day.row(0, named=True)
    assert row["bucket_end"] == utc(2026, 11, 2, 5)
    assert hours(row) == 25
    inside = c.filter(pl.col("start") >= utc(2026, 11, 1, 4), pl.col("end") <= utc(2026, 11, 2, 5))
    assert inside.height == 100
    assert row["consumption"] == math.fsum(inside["consumption"])  # dyadic values: exact
    hourly = pick(r, "meter", "hour").filter(
        pl.col("bucket_start") >= utc(2026, 11, 1, 4), pl.col("bucket_end") <= utc(2026, 11, 2, 5)
    )
    assert hourly.height == 25
    local = hourly["bucket_start"].dt.convert_time_zone("America/New_York").dt.hour().to_list()
    assert local.count(1) == 2  # 01:00 EDT and 01:00 EST are separate buckets
    assert all(hours(h) == 1 for h in hourly.iter_rows(named=True))


def test_shanghai_days_are_24_hours_from_local_midnight_and_exact() -> None:
    m = meters_frame([("m1", "p", "B1", "Asia/Shanghai"), ("m2", "p", "B2", "Asia/Shanghai")])
    rng = np.random.default_rng(7)
    c = pl.concat(
        [
            series("m1", utc(2026, 1, 4, 16), 5 * 96, values=rng.integers(0, 400, 480) / 16),
            series("m2", utc(2026, 1, 4, 16), 5 * 96, values=rng.integers(0, 400, 480) / 16),
        ]
    )
    r = rollup(c, m)
    days = pick(r, "project", "day").sort("bucket_start")
    assert days.height == 5
    for row in days.iter_rows(named=True):
        assert hours(row) == 24
        assert row["bucket_start"].astimezone(dt.timezone(dt.timedelta(hours=8))).hour == 0
        inside = c.filter(
            pl.col("start") >= row["bucket_start"], pl.col("end") <= row["bucket_end"]
        )
        assert row["consumption"] == math.fsum(inside["consumption"])


def test_month_totals_follow_local_month_boundaries() -> None:
    m = meters_frame([("m1", "p", "B1", "Europe/Berlin")])
    # Hourly intervals of 1.0 from 2026-02-27 to 2026-04-02 UTC (split into 15-minute slots).
    start = utc(2026, 2, 27)
    n = int((utc(2026, 4, 2) - start).total_seconds() // 3600)
    r = rollup(series("m1", start, n, minutes=60, values=1.0), m)
    march = pick(r, "meter", "month").filter(pl.col("bucket_start") == utc(2026, 2, 28, 23))
    row = march.row(0, named=True)
    assert row["bucket_end"] == utc(2026, 3, 31, 22)
    assert hours(row) == 31 * 24 - 1
    assert row["consumption"] == 31 * 24 - 1  # the 23-hour day included, the UTC month not
    months = pick(r, "project", "month").sort("bucket_start")
    assert months["consumption"].sum() == n


@pytest.mark.parametrize(("zone", "minute"), [("Asia/Kolkata", 30), ("Asia/Kathmandu", 15)])
def test_hours_in_zones_with_odd_offsets_start_at_the_local_hour(zone: str, minute: int) -> None:
    m = meters_frame([("m1", "p", "B1", zone)])
    r = rollup(series("m1", utc(2026, 5, 1), 4 * 96, values=1.0), m)
    inner = pick(r, "meter", "hour").filter(pl.col("coverage") == 1.0)
    assert set(inner["bucket_start"].dt.minute().to_list()) == {minute}
    assert (inner["consumption"] == 4.0).all()
    local_days = pick(r, "meter", "day")["bucket_start"].dt.convert_time_zone(zone)
    assert set(local_days.dt.hour().to_list()) == {0}


# -- splitting, quality --------------------------------------------------------------------------


def test_aligned_intervals_land_wholly_and_unchanged_in_their_slot() -> None:
    m = meters_frame([("m1", "p", "B1", "Asia/Shanghai")])
    values = [0.1, 1e-9, 12345.678901234567, 0.0]
    c = series("m1", utc(2026, 1, 5), 4, values=values)
    q15 = pick(rollup(c, m), "meter", "15min").sort("bucket_start")
    assert q15["consumption"].to_list() == values
    assert q15["bucket_start"].to_list() == c["start"].to_list()
    assert (q15["coverage"] == 1.0).all()


def test_an_interval_crossing_slot_boundaries_is_split_by_time_overlap() -> None:
    m = meters_frame([("m1", "p", "B1", "Asia/Shanghai")])
    c = pl.DataFrame(
        {
            "meter_id": ["m1"],
            "channel": ["energy_wh"],
            "start": [utc(2026, 1, 5, 0, 10)],
            "end": [utc(2026, 1, 5, 0, 40)],
            "consumption": [30.0],
            "quality": ["measured"],
        }
    ).cast(CONSUMPTION_SCHEMA)
    q15 = pick(rollup(c, m), "meter", "15min").sort("bucket_start")
    assert q15["bucket_start"].to_list() == [utc(2026, 1, 5, 0, m_) for m_ in (0, 15, 30)]
    assert q15["consumption"].to_list() == [5.0, 15.0, 10.0]
    assert q15["coverage"].to_list() == [5 / 15, 1.0, 10 / 15]


def test_long_intervals_spread_over_every_bucket_they_overlap() -> None:
    m = meters_frame([("m1", "p", "B1", "Europe/Berlin")])
    # One manual reading for a whole local day (96 slots) and hourly estimates after it.
    day = series("m1", utc(2026, 6, 1, 22), 1, minutes=24 * 60, values=96.0, quality="manual")
    hourly = series("m1", utc(2026, 6, 2, 22), 24, minutes=60, values=4.0, quality="estimated")
    r = rollup(pl.concat([day, hourly]), m)
    q15 = pick(r, "meter", "15min")
    assert q15.height == 2 * 96
    assert (q15["consumption"] == 1.0).all()
    days = pick(r, "meter", "day").sort("bucket_start")
    assert days["consumption"].to_list() == [96.0, 96.0]
    assert days["quality"].to_list() == ["manual", "estimated"]
    assert days["estimated_share"].to_list() == [0.0, 1.0]


def test_bucket_quality_is_the_worst_by_precedence_and_share_is_by_consumption() -> None:
    m = meters_frame([("m1", "p", "B1", "Asia/Shanghai")])
    cases = {
        0: (["measured"] * 4, [1.0] * 4, "measured", 0.0),
        1: (["measured", "backfilled", "measured", "measured"], [1.0] * 4, "backfilled", 0.0),
        2: (["backfilled", "manual", "measured", "backfilled"], [1.0] * 4, "manual", 0.0),
        3: (
            ["manual", "estimated", "measured", "measured"],
            [3.0, 1.0, 2.0, 2.0],
            "estimated",
            0.125,
        ),
        4: (["estimated"] * 4, [0.0] * 4, "estimated", None),
    }
    c = pl.concat(
        [
            series("m1", utc(2026, 1, 5, h), 4, values=v, quality=q)
            for h, (q, v, _, _) in cases.items()
        ]
    )
    hourly = pick(rollup(c, m), "meter", "hour").sort("bucket_start")
    assert hourly["quality"].to_list() == [case[2] for case in cases.values()]
    assert hourly["estimated_share"].to_list() == [case[3] for case in cases.values()]
    assert hourly["estimated"].to_list() == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_one_minute_data_adds_up_per_slot_whatever_the_input_order() -> None:
    m = meters_frame([("m1", "p", "B1", "Asia/Shanghai")])
    rng = np.random.default_rng(3)
    c = series("m1", utc(2026, 1, 5), 600, minutes=1, values=rng.random(600))
    r = rollup(c, m)
    q15 = pick(r, "meter", "15min").sort("bucket_start")
    assert q15.height == 40
    for row in q15.iter_rows(named=True):
        inside = c.filter(
            pl.col("start") >= row["bucket_start"], pl.col("end") <= row["bucket_end"]
        )
        assert inside.height == 15
        assert math.isclose(row["consumption"], math.fsum(inside["consumption"]), rel_tol=1e-15)
    shuffled = c.sample(fraction=1.0, shuffle=True, seed=11)
    assert frame_hash(rollup(shuffled, m)) == frame_hash(r)
    assert_frame_equal(rollup(shuffled, m), r, check_exact=True)


# -- levels ----------------------------------------------------------------------------------------


def fleet(seed: int = 1, days: int = 40) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Three projects in three zones; B1 exists in two projects; two channels on some meters."""
    rows = []
    zones = {"north": "Europe/Berlin", "east": "Asia/Shanghai", "west": "America/New_York"}
    for p, zone in zones.items():
        for b in ("B1", "B2"):
            for i in range(3):
                rows.append((f"{p}-{b}-{i}", p, b, zone))
    m = meters_frame(rows)
    rng = np.random.default_rng(seed)
    n = days * 96
    parts = []
    for meter_id, *_ in rows:
        q = rng.choice(
            ["measured", "estimated", "backfilled", "manual"], n, p=[0.85, 0.1, 0.03, 0.02]
        )
        parts.append(
            series(meter_id, utc(2026, 10, 1), n, values=rng.gamma(2.0, 40.0, n), quality=list(q))
        )
        if meter_id.endswith("-0"):
            parts.append(
                series(
                    meter_id,
                    utc(2026, 10, 1),
                    n // 4,
                    minutes=60,
                    values=rng.random(n // 4),
                    channel="water_l",
                )
            )
    return pl.concat(parts), m


def fsum(lists: pl.Expr) -> pl.Expr:
    """Correctly rounded sum of each list (the reference the rollup's own sums must meet)."""
    return lists.map_elements(math.fsum, return_dtype=pl.Float64)


def test_buildings_and_projects_are_the_sums_of_their_meters() -> None:
    c, m = fleet(days=35)
    r = rollup(c, m)
    assert r.schema == ROLLUP_SCHEMA
    meter = r.filter(pl.col("level") == "meter").join(
        m.select(pl.col("meter_id").alias("key"), "building"), on="key"
    )
    by = ["project", "channel", "period", "bucket_start"]
    expect_b = meter.group_by("building", *by).agg(
        pl.col("consumption").alias("sum"),
        pl.len().alias("n"),
        pl.col("estimated").sum().alias("est"),
    )
    expect_b = expect_b.with_columns(fsum(pl.col("sum")))
    got_b = r.filter(pl.col("level") == "building").rename({"key": "building"})
    joined = got_b.join(expect_b, on=["building", *by], how="full", validate="1:1")
    assert joined.height == got_b.height == expect_b.height
    assert (joined["meters"].cast(pl.Int64) == joined["n"]).all()
    assert np.allclose(joined["consumption"], joined["sum"], rtol=1e-13, atol=0)
    assert np.allclose(joined["estimated"], joined["est"], rtol=1e-12, atol=1e-9)
    expect_p = got_b.group_by(by).agg(
        pl.col("consumption").alias("sum"),
        pl.col("meters").sum().alias("n"),
    )
    expect_p = expect_p.with_columns(fsum(pl.col("sum")))
    got_p = r.filter(pl.col("level") == "project")
    joined = got_p.join(expect_p, on=by, how="full", validate="1:1")
    assert joined.height == got_p.height == expect_p.height
    assert (joined["meters"] == joined["n"]).all()
    assert np.allclose(joined["consumption"], joined["sum"], rtol=1e-13, atol=0)
    # The same building id in two projects stays two buildings.
    b1 = pick(r, "building", "month", "B1")
    assert set(b1["project"].to_list()) == {"north", "east", "west"}
    # Every level's grand total per channel is the input's.
    for level in ("meter", "building", "project"):
        for period in ("15min", "hour", "day", "month"):
            tot = (
                pick(r, level, period)
                .group_by("channel")
                .agg(pl.col("consumption").sum())
                .sort("channel")
            )
            exp = c.group_by("channel").agg(pl.col("consumption").sum()).sort("channel")
            assert np.allclose(tot["consumption"], exp["consumption"], rtol=1e-12)


def test_output_is_sorted_by_its_key_and_unique() -> None:
    c, m = fleet(days=10)
    r = rollup(c, m)
    assert_frame_equal(r, r.sort(list(ROLLUP_KEY), maintain_order=True))
    assert r.select(ROLLUP_KEY).is_unique().all()


# -- incremental -----------------------------------------------------------------------------------


def refresh_with(
    previous: pl.DataFrame, everything: pl.DataFrame, changed: pl.DataFrame, m: pl.DataFrame
) -> pl.DataFrame:
    """What a job does: dirty buckets from the changed rows, load their window, refresh."""
    dirty = dirty_buckets(changed, m)
    window = consumption_window(dirty)
    needed = (
        everything.join(window, on=["meter_id", "channel"], suffix="_w")
        .filter(pl.col("end") > pl.col("start_w"), pl.col("start") < pl.col("end_w"))
        .select(CONSUMPTION_SCHEMA.names())
        .unique(maintain_order=True)  # an interval overlapping two spans is loaded once
    )
    return refresh(previous, needed, m, dirty)


def test_a_late_interval_seven_days_back_changes_only_its_buckets() -> None:
    c, m = fleet(days=40)
    late_at = utc(2026, 11, 2, 9, 30)  # a week before the end; day 2026-11-02 in all zones
    is_late = (pl.col("meter_id") == "east-B2-1") & (pl.col("start") == late_at)
    before = rollup(c.filter(~is_late), m)
    late = c.filter(is_late)
    assert late.height == 1
    after = refresh_with(before, c, late, m)
    full = rollup(c, m)
    assert frame_hash(after) == frame_hash(full)
    assert_frame_equal(after, full, check_exact=True)
    # Exactly one 15-minute, hour, day and month bucket at each level changed or appeared.
    on = list(ROLLUP_KEY)
    changed = after.join(before, on=after.columns, how="anti", nulls_equal=True)
    same = after.join(changed.select(on), on=on, how="anti")
    untouched = before.join(changed.select(on), on=on, how="anti")
    assert_frame_equal(same, untouched, check_exact=True)  # everything else byte-identical
    assert frame_hash(same) == frame_hash(untouched)
    assert same.height == after.height - 12
    assert changed.group_by("level", "period").len()["len"].to_list() == [1] * 12
    keys = {(r["level"], r["key"]) for r in changed.iter_rows(named=True)}
    assert keys == {("meter", "east-B2-1"), ("building", "B2"), ("project", "east")}
    local = late_at.astimezone(dt.timezone(dt.timedelta(hours=8)))
    starts = dict(
        changed.filter(pl.col("level") == "project").select("period", "bucket_start").iter_rows()
    )
    assert starts["15min"] == late_at
    assert starts["hour"] == late_at.replace(minute=0)
    assert starts["day"] == local.replace(hour=0, minute=0).astimezone(UTC)
    assert starts["month"] == local.replace(day=1, hour=0, minute=0).astimezone(UTC)
    slot = pick(after, "project", "15min", "east").filter(
        pl.col("bucket_start") == late_at, pl.col("channel") == "energy_wh"
    )
    assert slot["meters"].item() == 6


def test_incremental_ticks_equal_a_full_recompute_bit_for_bit() -> None:
    c, m = fleet(days=36, seed=5)
    ends = c["end"].max()
    assert isinstance(ends, dt.datetime)
    # Tick 0: all but the last day and a scattering of late rows; then two ticks add them.
    rng = np.random.default_rng(9)
    late_mask = rng.random(c.height) < 0.002
    tail = (c["start"] >= ends - dt.timedelta(days=1)).to_numpy()
    tick0 = c.filter(pl.Series(~late_mask & ~tail))
    state = rollup(tick0, m)
    wm = watermarks(tick0)
    for changed in (c.filter(pl.Series(tail & ~late_mask)), c.filter(pl.Series(late_mask))):
        seen = pl.concat([tick0, changed])
        state = refresh_with(state, seen, changed, m)
        wm = watermarks(changed, wm)
        tick0 = seen
    full = rollup(c, m)
    assert frame_hash(state) == frame_hash(full)
    assert_frame_equal(state, full, check_exact=True)
    assert_frame_equal(wm, watermarks(c))


def test_a_changed_interval_replaces_its_old_value() -> None:
    c, m = fleet(days=5)
    target = (pl.col("meter_id") == "west-B1-2") & (pl.col("start") == utc(2026, 10, 3, 12))
    old = c.filter(target)
    new = old.with_columns(
        pl.col("consumption") * 2,
        pl.lit("backfilled").cast(CONSUMPTION_QUALITY_ENUM).alias("quality"),
    )
    corrected = pl.concat([c.filter(~target), new])
    before = rollup(c, m)
    after = refresh_with(before, corrected, pl.concat([old, new]), m)
    assert_frame_equal(after, rollup(corrected, m), check_exact=True)


def test_removed_data_removes_its_buckets() -> None:
    c, m = fleet(days=3)
    gone = (pl.col("meter_id") == "north-B1-0") & (pl.col("channel") == "water_l")
    before = rollup(c, m)
    after = refresh_with(before, c.filter(~gone), c.filter(gone), m)
    assert_frame_equal(after, rollup(c.filter(~gone), m), check_exact=True)
    water = after.filter(pl.col("channel") == "water_l", pl.col("project") == "north")
    assert set(water["key"].to_list()) == {"north-B2-0", "B2", "north"}


def test_reruns_are_idempotent() -> None:
    c, m = fleet(days=8)
    first = rollup(c, m)
    assert frame_hash(rollup(c, m)) == frame_hash(first)
    assert frame_hash(rollup(c.reverse(), m)) == frame_hash(first)
    late = c.filter(pl.col("start") == utc(2026, 10, 4, 1))
    once = refresh_with(first, c, late, m)
    twice = refresh_with(once, c, late, m)
    assert frame_hash(twice) == frame_hash(once) == frame_hash(first)


def test_dirty_buckets_name_every_level_and_period_a_change_touches() -> None:
    m = meters_frame([("m1", "p", "B1", "Europe/Berlin"), ("m2", "p", "B2", "Europe/Berlin")])
    # One interval across local midnight (22:45-23:15 UTC in winter is 23:45-00:15 local).
    c = series("m1", utc(2026, 1, 31, 22, 45), 1, minutes=30, values=2.0)
    d = dirty_buckets(c, m)
    assert d.schema == DIRTY_SCHEMA
    counts = dict(d.group_by("period").len().iter_rows())
    assert counts == {"15min": 6, "hour": 6, "day": 6, "month": 6}  # 2 buckets x 3 levels each
    assert set(d["key"].to_list()) == {"m1", "B1", "p"}


def test_frame_hash_is_order_free_and_value_sensitive() -> None:
    c, m = fleet(days=2)
    r = rollup(c, m)
    assert frame_hash(r) == frame_hash(r.sample(fraction=1.0, shuffle=True, seed=1))
    nudged = r.with_columns(
        pl.when(pl.int_range(pl.len()) == 17)
        .then(pl.col("consumption") + 1e-12)
        .otherwise(pl.col("consumption"))
    )
    assert frame_hash(nudged) != frame_hash(r)


# -- validation ------------------------------------------------------------------------------------


def test_bad_input_is_refused() -> None:
    m = meters_frame([("m1", "p", "B1", "Asia/Shanghai")])
    ok = series("m1", utc(2026, 1, 5), 4)
    with pytest.raises(ValueError, match="finite value >= 0"):
        rollup(ok.with_columns(pl.lit(-1.0).alias("consumption")), m)
    with pytest.raises(ValueError, match="missing from the meters frame"):
        rollup(ok.with_columns(pl.lit("ghost").alias("meter_id")), m)
    with pytest.raises(ValueError, match="more than one time zone"):
        rollup(
            ok,
            meters_frame([("m1", "p", "B1", "Asia/Shanghai"), ("m2", "p", "B1", "Europe/Berlin")]),
        )
    with pytest.raises(ValueError, match="overlapping"):
        rollup(pl.concat([ok, ok.head(1)]), m)
    with pytest.raises(ValueError, match="end <= start"):
        rollup(ok.with_columns(pl.col("start").alias("end")), m)


def test_a_meter_without_building_rolls_up_under_building_empty_and_its_project() -> None:
    m = meters_frame([("m1", "p", "B1", "Asia/Shanghai"), ("wx", "p", "", "Asia/Shanghai")])
    m = m.with_columns(
        pl.when(pl.col("meter_id") == "wx")
        .then(None)
        .otherwise(pl.col("building"))
        .alias("building")
    )
    c = pl.concat(
        [series("m1", utc(2026, 1, 5), 4, values=1.0), series("wx", utc(2026, 1, 5), 4, values=2.0)]
    )
    r = rollup(c, m)
    assert pick(r, "building", "hour")["key"].to_list() == ["", "B1"]
    assert pick(r, "project", "hour")["consumption"].to_list() == [12.0]
