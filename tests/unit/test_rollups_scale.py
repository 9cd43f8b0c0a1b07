"""Rollups at the issue's benchmark size: 1,000 meters x 10,000 fifteen-minute intervals.

Prints throughput and peak memory (run with -s to see them) and checks, at that size, that an
incremental tick (one new interval per meter, ten late ones 7 days back) refreshed into the
state equals a full recompute bit for bit and touches only the dirty buckets.

    .venv/bin/python -m pytest tests/unit/test_rollups_scale.py -m slow -s -q
"""

from __future__ import annotations

import datetime as dt
import resource
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import polars as pl
import pytest

from analytics.frames import CONSUMPTION_QUALITY_ENUM, CONSUMPTION_SCHEMA
from analytics.rollups import (
    ROLLUP_KEY,
    consumption_window,
    dirty_buckets,
    frame_hash,
    recompute,
    refresh,
    rollup,
)

SLOT = 900_000_000


def synthetic(n_meters: int, n_intervals: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    t0 = int(dt.datetime(2026, 2, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)
    start = t0 + np.tile(np.arange(n_intervals, dtype=np.int64) * SLOT, n_meters)
    ids = np.array([f"m{i:05d}" for i in range(n_meters)])
    quality = rng.choice(
        ["measured", "estimated", "backfilled", "manual"],
        n_meters * n_intervals,
        p=[0.9, 0.05, 0.03, 0.02],
    )
    consumption = pl.DataFrame(
        {
            "meter_id": np.repeat(ids, n_intervals),
            "channel": "energy_wh",
            "start": pl.Series(start).cast(pl.Datetime("us", "UTC")),
            "end": pl.Series(start + SLOT).cast(pl.Datetime("us", "UTC")),
            "consumption": rng.gamma(2.0, 50.0, n_meters * n_intervals),
            "quality": pl.Series(quality, dtype=CONSUMPTION_QUALITY_ENUM),
        },
        schema=CONSUMPTION_SCHEMA,
    )
    zones = ["Asia/Shanghai", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]
    meters = pl.DataFrame(
        {
            "meter_id": ids,
            "project": [f"p{i % 10}" for i in range(n_meters)],
            "building": [f"B{(i // 10) % 5}" for i in range(n_meters)],
            "time_zone": [zones[(i % 10) % 4] for i in range(n_meters)],
        }
    )
    return consumption, meters


T = TypeVar("T")


def timed(f: Callable[[], T]) -> tuple[T, float, float]:
    """`f()`, its wall time and the process's CPU time (all threads)."""
    t, p = time.perf_counter(), time.process_time()
    out = f()
    return out, time.perf_counter() - t, time.process_time() - p


@pytest.mark.slow
def test_ten_million_intervals_and_an_incremental_tick() -> None:
    c, meters = synthetic(1000, 10_001)
    last = c["start"].max()
    assert isinstance(last, dt.datetime)
    late_ids = [f"m{i:05d}" for i in range(10)]
    changed = pl.concat(
        [
            c.filter(pl.col("start") == last),
            c.filter(
                pl.col("start") == last - dt.timedelta(days=7), pl.col("meter_id").is_in(late_ids)
            ),
        ]
    )
    base = c.join(changed, on=["meter_id", "channel", "start"], how="anti")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    previous, wall, cpu = timed(lambda: rollup(base, meters))
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"\nrollup: {base.height:,} intervals -> {previous.height:,} rows; wall {wall:.2f} s "
        f"({base.height / wall / 1e6:.2f} M/s), cpu {cpu:.2f} s; "
        f"peak RSS +{(rss1 - rss0) // 1024} MB (input {base.estimated_size() / 2**20:.0f} MB, "
        f"output {previous.estimated_size() / 2**20:.0f} MB)"
    )
    dirty, dw, dc = timed(lambda: dirty_buckets(changed, meters))
    window = consumption_window(dirty)
    needed = (
        c.join(window, on=["meter_id", "channel"], suffix="_w")
        .filter(pl.col("end") > pl.col("start_w"), pl.col("start") < pl.col("end_w"))
        .select(CONSUMPTION_SCHEMA.names())
        .unique(maintain_order=True)
    )
    rows, rw, rc = timed(lambda: recompute(previous, needed, meters, dirty))
    after, mw, mc = timed(lambda: refresh(previous, needed, meters, dirty))
    print(
        f"tick: {dirty.height:,} dirty buckets; dirty_buckets + recompute wall {dw + rw:.2f} s "
        f"cpu {dc + rc:.2f} s ({100 * (dc + rc) / cpu:.1f}% of a full rollup's cpu); "
        f"refresh (merge into the state) wall {mw:.2f} s cpu {mc:.2f} s"
    )
    full = rollup(c, meters)
    assert frame_hash(after) == frame_hash(full)
    on = list(ROLLUP_KEY)
    assert rows.height == dirty.height  # every dirty bucket has data after the tick
    untouched = previous.join(dirty.select(on), on=on, how="anti")
    assert frame_hash(after.join(dirty.select(on), on=on, how="anti")) == frame_hash(untouched)
