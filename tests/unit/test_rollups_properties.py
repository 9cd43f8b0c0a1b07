"""Hypothesis over rollups: random cadences, misaligned and long intervals, zones and splits of
the data into a first run and late arrivals. Every level and period conserves the input, and an
incremental refresh equals a full recompute bit for bit."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from analytics import rollups
from analytics.frames import CONSUMPTION_QUALITY, CONSUMPTION_QUALITY_ENUM, CONSUMPTION_SCHEMA
from analytics.rollups import consumption_window, dirty_buckets, frame_hash, refresh, rollup

ZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Asia/Shanghai",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
)
# Around DST changes in the northern and southern hemispheres, and a plain month end.
STARTS = (
    dt.datetime(2026, 3, 27, 21, tzinfo=dt.UTC),
    dt.datetime(2026, 10, 30, 20, tzinfo=dt.UTC),
    dt.datetime(2026, 4, 3, 10, tzinfo=dt.UTC),
    dt.datetime(2026, 1, 30, 13, tzinfo=dt.UTC),
)
MIN = 60_000_000


@st.composite
def fleets(draw: st.DrawFn) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    n_meters = draw(st.integers(1, 5))
    start = int(draw(st.sampled_from(STARTS)).timestamp() * 1_000_000)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    meters, parts = [], []
    for i in range(n_meters):
        project = f"p{draw(st.integers(0, 1))}"
        zone = ZONES[(int(project[1]) + seed) % len(ZONES)]
        meters.append((f"m{i}", project, f"B{draw(st.integers(0, 1))}", zone))
        # contiguous intervals of random lengths: 1 min .. 3 h, sometimes off the quarter hour
        lengths = rng.choice([1, 5, 15, 15, 15, 60, 180, 7], size=draw(st.integers(1, 60))) * MIN
        offset = int(rng.integers(0, 4)) * 5 * MIN
        t = start + offset + np.concatenate(([0], np.cumsum(lengths)))
        n = lengths.size
        values = np.where(rng.random(n) < 0.1, 0.0, rng.gamma(1.5, 10.0, n))
        parts.append(
            pl.DataFrame(
                {
                    "meter_id": [f"m{i}"] * n,
                    "channel": rng.choice(["energy_wh", "water_l"], 1).tolist() * n,
                    "start": pl.Series(t[:-1]).cast(pl.Datetime("us", "UTC")),
                    "end": pl.Series(t[1:]).cast(pl.Datetime("us", "UTC")),
                    "consumption": values,
                    "quality": pl.Series(
                        rng.choice(CONSUMPTION_QUALITY, n, p=[0.7, 0.15, 0.1, 0.05]).tolist(),
                        dtype=CONSUMPTION_QUALITY_ENUM,
                    ),
                },
                schema=CONSUMPTION_SCHEMA,
            )
        )
    consumption = pl.concat(parts)
    m = pl.DataFrame(meters, schema=["meter_id", "project", "building", "time_zone"], orient="row")
    # one zone per project: the first meter's
    m = m.with_columns(pl.col("time_zone").first().over("project"))
    late = rng.random(consumption.height) < draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    return consumption, m, late


@given(fleets())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_level_and_period_conserves_the_input(
    case: tuple[pl.DataFrame, pl.DataFrame, np.ndarray],
) -> None:
    consumption, m, _ = case
    r = rollup(consumption, m)
    totals = consumption.group_by("channel").agg(pl.col("consumption").sum(), pl.len())
    for (level, period), part in r.group_by("level", "period"):
        got = part.group_by("channel").agg(pl.col("consumption").sum()).join(totals, on="channel")
        assert got.height == totals.height, (level, period)
        assert np.allclose(got["consumption"], got["consumption_right"], rtol=1e-12, atol=1e-9)
    assert (r["consumption"] >= 0).all()
    assert r["coverage"].is_between(0.0, 1.0 + 1e-12).all()
    est = r.filter(pl.col("estimated_share").is_not_null())["estimated_share"]
    assert est.is_between(0.0, 1.0 + 1e-12).all()
    # buckets tile time: per (level, key, project, channel, period), no overlaps
    gaps = r.sort("bucket_start").select(
        (pl.col("bucket_start") >= pl.col("bucket_end").shift(1))
        .over("level", "key", "project", "channel", "period")
        .fill_null(True)
        .all()
    )
    assert gaps.item()


@given(fleets())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_late_arrivals_refreshed_equal_a_full_recompute(
    case: tuple[pl.DataFrame, pl.DataFrame, np.ndarray],
) -> None:
    consumption, m, late_mask = case
    late = pl.Series(late_mask)
    first = consumption.filter(~late)
    arrived = consumption.filter(late)
    previous = rollup(first, m)
    dirty = dirty_buckets(arrived, m)
    window = consumption_window(dirty)
    needed = (
        consumption.join(window, on=["meter_id", "channel"], suffix="_w")
        .filter(pl.col("end") > pl.col("start_w"), pl.col("start") < pl.col("end_w"))
        .select(CONSUMPTION_SCHEMA.names())
        .unique(maintain_order=True)
    )
    after = refresh(previous, needed, m, dirty)
    full = rollup(consumption, m)
    assert_frame_equal(after, full, check_exact=True)
    assert frame_hash(after) == frame_hash(full)
    # and nothing outside the dirty buckets moved
    on = list(rollups.ROLLUP_KEY)
    outside = previous.join(dirty.select(on), on=on, how="anti")
    assert_frame_equal(after.join(dirty.select(on), on=on, how="anti"), outside, check_exact=True)


@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 6))
@settings(max_examples=40, deadline=None)
def test_dense_and_sorted_grouping_agree_bit_for_bit(seed: int, n_ent: int, n_to: int) -> None:
    rng = np.random.default_rng(seed)
    pairs = np.unique(rng.integers(0, [n_ent, 50], size=(200, 2)), axis=0)
    ent, slot = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64) + 1000
    k = ent.size
    block = rollups._Block(
        ent=ent,
        slot=slot,
        value=rng.gamma(1.0, 1.0, k) * 10.0 ** rng.integers(-6, 6, k),
        est=np.where(rng.random(k) < 0.3, rng.random(k), 0.0),
        cov=rng.integers(0, 900_000_000, k),
        q=rng.integers(0, 4, k).astype(np.int8),
        n=rng.integers(1, 5, k),
    )
    to = rng.integers(0, n_to, n_ent).astype(np.int64)
    dense = rollups._group(block, to)
    # the sort path is what `_group` falls back to for sparse or wide grids
    order = rollups._stable_argsort(rollups._key(block.ent, block.slot))
    b = block.take(order)
    sparse = rollups._reduce(b, to[b.ent], b.slot)
    for field in rollups._FIELDS:
        assert np.array_equal(getattr(dense, field), getattr(sparse, field)), field
    # shuffled input gives the same sums: members are summed in code order
    shuffled = rollups._group(block.take(rng.permutation(k)), to)
    for field in rollups._FIELDS:
        assert np.array_equal(getattr(dense, field), getattr(shuffled, field)), field
