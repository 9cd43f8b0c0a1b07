"""Rollups: consumption per 15 minutes, hour, local day and local month, per meter, building and
project, in each project's local time, refreshed incrementally and reproducibly.

Why it is built this way

- **Local time.** Hour, day and month buckets follow the project's IANA time zone (the meters
  frame's `time_zone`; every meter of a project must agree). A day is local midnight to local
  midnight, so a spring-forward day in Europe/Berlin has 23 hours and a fall-back day 25; the
  repeated local hour of a fall-back night is two hourly buckets (one per UTC offset). Every
  modern zone's offset is a multiple of 15 minutes, so every local bucket is a whole number of
  UTC 15-minute *slots*; the 15-minute bucket *is* the slot. A zone and date where that does not
  hold (historical local mean time) is refused with `ValueError`.
- **Proportional split.** An interval that crosses slot boundaries (hourly data under the
  15-minute rollup, an interval not aligned to the quarter hour, a manual monthly reading) is
  split over the slots it overlaps in proportion to time overlap (piece = consumption x
  overlap / duration; the pieces add up to the interval up to float rounding); an aligned
  interval lands wholly, unchanged, in its slot.
- **Deterministic sums.** Every bucket is the left-to-right float sum of its members in one
  fixed order, whatever order the input came in: a slot of its intervals by start time, an
  hour of its slots, a day of its hours, a month of its days (in time order), a building of its
  meters (by meter id) and a project of its buildings (by building id). An incremental refresh
  sums the same values in the same order, so it equals a full recompute bit for bit, and a
  re-run gives the same bytes. A building equals the sum of its meters to float rounding
  (about 1e-16 relative), not to the bit when summed in another order. (Exact fixed-point sums,
  order-free, were tried first: 3x the time and four more columns.)
- **Quality.** A bucket's `quality` is the worst of its intervals' qualities by the precedence
  measured < backfilled < manual < estimated (a backfill is a real reading loaded late, a manual
  entry is a real reading taken by hand, an estimate is a profile spread over a gap).
  `estimated_share` is the share of the bucket's consumption that came from `estimated`
  intervals (null when the bucket's consumption is 0). `coverage` is the share of the bucket's
  duration covered by intervals, per contributing meter (`covered_us / (meters * bucket length)`),
  so a partial bucket (the current day, an outage without an estimate) is visible.
- **Incremental.** `dirty_buckets(changed, meters)` lists every bucket (all levels and periods)
  that new, late or changed intervals touch; `recompute(previous, consumption, meters, dirty)`
  recomputes exactly those (meter 15-minute slots from `consumption`, a meter's hours from its
  slots, days from its hours, months from its days, buildings and projects from their meters'
  rows of the same bucket) and returns their rows, which a store upserts;
  `refresh(previous, ...)` merges them into `previous` in memory. Nothing else is touched.
  `consumption_window(dirty)` says which intervals a store must load for that. The state is the
  rollups themselves plus `watermarks` (per stream, the end of the last interval seen).
  `watermarks` gives the per-stream watermark (the end of the last interval seen).

Output (`ROLLUP_SCHEMA`), one row per (level, period, key, project, channel, bucket), sorted by
`ROLLUP_KEY`: `level` (meter/building/project), `key` (meter id, building id, project id),
`project`, `channel`, `period` (15min/hour/day/month), `bucket_start`/`bucket_end` (UTC instants
of the local bucket's bounds), `consumption`, `estimated` (the part from estimated intervals),
`estimated_share`, `quality`, `meters` (contributing meters), `coverage` and `covered_us`.

Building ids are unique within a project (not across projects), so a building row is identified
by (key, project).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl

from analytics.frames import CONSUMPTION_QUALITY, CONSUMPTION_QUALITY_ENUM, CONSUMPTION_SCHEMA, TS

LEVELS: Final = ("meter", "building", "project")
PERIODS: Final = ("15min", "hour", "day", "month")
LEVEL_ENUM: Final = pl.Enum(list(LEVELS))
PERIOD_ENUM: Final = pl.Enum(list(PERIODS))

_ROLLUP_FIELDS: dict[str, pl.DataType | type[pl.DataType]] = {
    "level": LEVEL_ENUM,
    "key": pl.String,
    "project": pl.String,
    "channel": pl.String,
    "period": PERIOD_ENUM,
    "bucket_start": TS,
    "bucket_end": TS,
    "consumption": pl.Float64,
    "estimated": pl.Float64,
    "estimated_share": pl.Float64,
    "quality": CONSUMPTION_QUALITY_ENUM,
    "meters": pl.UInt32,
    "coverage": pl.Float64,
    "covered_us": pl.Int64,
}
ROLLUP_SCHEMA: Final = pl.Schema(_ROLLUP_FIELDS)
# The canonical row order; (level, period) first so the output is built block by block.
ROLLUP_KEY: Final = ("level", "period", "key", "project", "channel", "bucket_start")

DIRTY_SCHEMA: Final = pl.Schema(
    {name: _ROLLUP_FIELDS[name] for name in (*ROLLUP_KEY, "bucket_end")}
)

_WATERMARK_FIELDS: dict[str, pl.DataType | type[pl.DataType]] = {
    "meter_id": pl.String,
    "channel": pl.String,
    "watermark": TS,
}
WATERMARK_SCHEMA: Final = pl.Schema(_WATERMARK_FIELDS)

SLOT_US: Final = 900_000_000  # the 15-minute slot every local bucket is made of
_SLOT_DAY: Final = 96
_MARGIN_SLOTS: Final = 33 * _SLOT_DAY  # calendar margin: covers the month around any slot

# Quality precedence (worst wins): measured < backfilled < manual < estimated.
_PRECEDENCE: Final = ("measured", "backfilled", "manual", "estimated")
_RANK_OF_PHYSICAL: Final = np.array([_PRECEDENCE.index(q) for q in CONSUMPTION_QUALITY], np.int8)
_ESTIMATED_RANK: Final = _PRECEDENCE.index("estimated")
_QUALITY_BY_RANK: Final = pl.Series(_PRECEDENCE, dtype=CONSUMPTION_QUALITY_ENUM)
_RANK_WEIGHT: Final = np.array([2.0 ** (17 * r) for r in range(len(_PRECEDENCE))])

I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
F64 = npt.NDArray[np.float64]


# -- blocks: rows of one (level, period) in integer codes ----------------------------------------


@dataclass
class _Block:
    """Bucket rows of one level and period: entity code, bucket start slot, sums, quality."""

    ent: I64
    slot: I64
    value: F64
    est: F64
    cov: I64
    q: I8
    n: I64

    def take(self, idx: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> _Block:
        return _Block(*(getattr(self, f)[idx] for f in _FIELDS))

    def __len__(self) -> int:
        return int(self.ent.size)


_FIELDS: Final = ("ent", "slot", "value", "est", "cov", "q", "n")
_SUMS: Final = ("value", "est", "cov", "n")


def _ones(size: int) -> I64:
    """A read-only column of ones without the memory (meter-level buckets have one meter)."""
    return np.broadcast_to(np.int64(1), (size,))


def _concat(blocks: list[_Block]) -> _Block:
    return _Block(*(np.concatenate([getattr(b, f) for b in blocks]) for f in _FIELDS))


def _key(ent: I64, slot: I64) -> I64:
    return (ent << 32) | slot


def _stable_argsort(key: I64) -> npt.NDArray[np.intp]:
    order = pl.DataFrame({"k": key}).select(pl.arg_sort_by("k", maintain_order=True)).to_series()
    return order.to_numpy().astype(np.intp)


def _sums(
    b: _Block, seg: I64, ent: I64, slot: I64, starts: npt.NDArray[np.intp] | None = None
) -> _Block:
    """Per segment: sums of value, estimate, coverage and meters, and the worst quality.

    `np.bincount` adds the rows of a segment one after the other in row order, so a bucket is
    the left-to-right sum of its members in the order the caller put them in: one summation
    order, the same in a full run and an incremental one. Integer columns and the quality,
    where order does not matter, use `reduceat` when the segments are runs (`starts`)."""
    nseg = ent.size
    value = np.bincount(seg, b.value, nseg).astype(np.float64, copy=False)
    est = (
        np.bincount(seg, b.est, nseg).astype(np.float64, copy=False)
        if b.est.any()
        else np.zeros(nseg)
    )
    if starts is not None:
        q = np.maximum.reduceat(b.q, starts)
        cov = np.add.reduceat(b.cov, starts)
        n = np.add.reduceat(b.n, starts)
    else:
        # The worst rank from one weighted count: rank r weighs 2**(17*r), and fewer than 2**16
        # members keep each rank's total below the next rank's weight (`_group` checks).
        weight = np.bincount(seg, _RANK_WEIGHT[b.q], nseg)
        q = np.searchsorted(_RANK_WEIGHT[1:], weight, side="right").astype(np.int8)
        cov = _int_sums(seg, b.cov, nseg)
        n = (
            np.bincount(seg, minlength=nseg).astype(np.int64)
            if np.all(b.n == 1)
            else _int_sums(seg, b.n, nseg)
        )
    return _Block(ent=ent, slot=slot, value=value, est=est, cov=cov, q=q, n=n)


def _int_sums(seg: I64, v: I64, nseg: int) -> I64:
    """Exact integer sums through bincount's float64: two 24-bit-split halves, each exact."""
    hi = np.bincount(seg, (v >> 24).astype(np.float64), nseg).astype(np.int64)
    lo = np.bincount(seg, (v & 0xFFFFFF).astype(np.float64), nseg).astype(np.int64)
    out: I64 = (hi << 24) + lo
    return out


def _reduce(b: _Block, ent: I64, slot: I64) -> _Block:
    """Sum rows sharing (ent, slot) in the rows' order (a stable sort keeps it), take the worst
    quality and add up the meters. Callers pass rows in their canonical summation order."""
    if len(b) == 0:
        return _Block(*(np.zeros(0, getattr(b, f).dtype) for f in _FIELDS))
    key = _key(ent, slot)
    if not pl.Series(key).is_sorted():
        order = _stable_argsort(key)
        b, key, ent, slot = b.take(order), key[order], ent[order], slot[order]
    change = np.empty(key.size, np.bool_)
    change[0] = True
    np.not_equal(key[1:], key[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    if starts.size == key.size:  # nothing to add up
        return _Block(ent, slot, *(getattr(b, f) for f in _FIELDS[2:]))
    seg = np.cumsum(change, dtype=np.int64)
    seg -= 1
    return _sums(b, seg, ent[starts], slot[starts], starts)


# -- calendar: local buckets as runs of UTC slots ------------------------------------------------


@dataclass
class _Calendar:
    """For each zone z and slot s in [lo, hi): the start slot of the local hour, day and month
    containing s (`start[p][z, s - lo]`), and the end slot of that bucket (`end[p]`)."""

    zones: list[str]
    lo: int
    hi: int
    start: dict[str, I64]
    end: dict[str, I64]

    def bucket(self, period: str, zone: I64, slot: I64) -> I64:
        if period == "15min":
            return slot
        return self.start[period][zone, slot - self.lo]

    def bucket_end(self, period: str, zone: I64, start: I64) -> I64:
        if period == "15min":
            return start + 1
        return self.end[period][zone, start - self.lo]


def _calendar(zones: list[str], lo: int, hi: int) -> _Calendar:
    lo, hi = lo - _MARGIN_SLOTS, hi + _MARGIN_SLOTS
    slots = np.arange(lo, hi, dtype=np.int64)
    utc = pl.Series("t", slots * SLOT_US).cast(TS)
    start = {p: np.empty((len(zones), slots.size), np.int64) for p in PERIODS[1:]}
    end = {p: np.empty((len(zones), slots.size), np.int64) for p in PERIODS[1:]}
    # One pass per time zone (a handful), never per meter.
    for z, zone in enumerate(zones):
        local = utc.dt.convert_time_zone(zone).dt.replace_time_zone(None)
        local_us = local.cast(pl.Int64).to_numpy()
        offset = local_us - slots * SLOT_US
        if np.any(offset % SLOT_US):
            raise ValueError(f"time zone {zone}: UTC offset not a multiple of 15 minutes")
        month = (local.dt.year().cast(pl.Int64) * 12 + local.dt.month()).to_numpy()
        labels = {
            # the repeated hour of a fall-back night is two buckets: the offset is in the label
            "hour": (local_us // 3_600_000_000) * 100_000 + offset // SLOT_US,
            "day": local_us // 86_400_000_000,
            "month": month,
        }
        for p, label in labels.items():
            change = np.concatenate(([True], label[1:] != label[:-1]))
            run = np.cumsum(change) - 1
            first = np.flatnonzero(change)
            last = np.concatenate((first[1:], [slots.size]))
            start[p][z] = slots[first][run]
            end[p][z] = lo + last[run]
    return _Calendar(zones, lo, hi, start, end)


# -- entities ------------------------------------------------------------------------------------


@dataclass
class _Entities:
    """Integer codes for streams, building-channels and project-channels, in canonical order."""

    streams: pl.DataFrame  # sid, meter_id, channel, project, building, zone, bcode
    buildings: pl.DataFrame  # bcode, building, project, channel, zone, pcode
    projects: pl.DataFrame  # pcode, project, channel, zone
    zones: list[str]


def _entities(streams: pl.DataFrame, meters: pl.DataFrame) -> _Entities:
    """`streams`: distinct (meter_id, channel). Raises for a meter missing from `meters`."""
    m = _meters(meters)
    s = streams.unique().join(m, on="meter_id", how="left")
    missing = s.filter(pl.col("project").is_null())["meter_id"].unique().sort()
    if missing.len():
        raise ValueError(f"meters missing from the meters frame: {missing.head(5).to_list()}")
    zones = sorted(m["time_zone"].unique().to_list())
    s = s.sort("meter_id", "channel").with_columns(
        sid=pl.int_range(pl.len(), dtype=pl.Int64),
        zone=pl.col("time_zone").cast(pl.Enum(zones)).to_physical().cast(pl.Int64),
    )
    b = (
        s.select("building", "project", "channel", "zone")
        .unique()
        .sort("building", "project", "channel")
        .with_columns(bcode=pl.int_range(pl.len(), dtype=pl.Int64))
    )
    p = (
        b.select("project", "channel", "zone")
        .unique()
        .sort("project", "channel")
        .with_columns(pcode=pl.int_range(pl.len(), dtype=pl.Int64))
    )
    b = b.join(p.select("project", "channel", "pcode"), on=["project", "channel"]).sort("bcode")
    s = s.join(
        b.select("building", "project", "channel", "bcode"), on=["building", "project", "channel"]
    )
    return _Entities(s.sort("sid"), b, p, zones)


def _meters(meters: pl.DataFrame) -> pl.DataFrame:
    m = meters.select(
        pl.col("meter_id").cast(pl.String),
        pl.col("project").cast(pl.String),
        # a meter outside any building (a site weather station) rolls up under building ""
        pl.col("building").cast(pl.String).fill_null(""),
        pl.col("time_zone").cast(pl.String),
    )
    if m["time_zone"].null_count() or m["project"].null_count():
        raise ValueError("meters frame: every meter needs a project and a time_zone")
    if m["meter_id"].n_unique() != m.height:
        raise ValueError("meters frame: duplicate meter_id")
    zones = (
        m.group_by("project").agg(pl.col("time_zone").n_unique().alias("n")).filter(pl.col("n") > 1)
    )
    if zones.height:
        raise ValueError(f"projects with more than one time zone: {sorted(zones['project'])}")
    return m


# -- consumption -> meter 15-minute slots --------------------------------------------------------


def _consumption(consumption: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """A consumption frame as `CONSUMPTION_SCHEMA` (ids may come as Enum), validated."""
    df = (
        consumption.lazy()
        .select(pl.col(n).cast(t) for n, t in CONSUMPTION_SCHEMA.items())
        .collect()
    )
    bad = df.select(
        (pl.col("end") <= pl.col("start")).sum().alias("empty interval (end <= start)"),
        (
            ~(pl.col("consumption") >= 0)
            | pl.col("consumption").is_null()
            | pl.col("consumption").is_infinite()
        )
        .sum()
        .alias("consumption not a finite value >= 0"),
        pl.col("quality").is_null().sum().alias("quality missing"),
        (pl.col("start") < pl.datetime(1970, 1, 1, time_zone="UTC"))
        .sum()
        .alias("start before 1970"),
    ).row(0, named=True)
    problems = {k: v for k, v in bad.items() if v}
    if problems:
        raise ValueError(f"consumption frame: {problems}")
    return df


def _runs(df: pl.DataFrame) -> tuple[I64, I64]:
    """Run ids of consecutive rows of one stream, and each run's first row."""
    run = df.select(pl.struct("meter_id", "channel").rle_id().cast(pl.Int64)).to_series().to_numpy()
    first = np.flatnonzero(np.concatenate(([True], run[1:] != run[:-1]))) if run.size else run
    return run, first


def _distinct_streams(df: pl.DataFrame) -> pl.DataFrame:
    return df[_runs(df)[1]].select("meter_id", "channel").unique()


def _stream_codes(df: pl.DataFrame, ents: _Entities) -> I64:
    """The stream code of every row; cheap when rows come grouped by stream."""
    run, first = _runs(df)
    runs = (
        df[first]
        .select("meter_id", "channel")
        .join(
            ents.streams.select("meter_id", "channel", "sid"),
            on=["meter_id", "channel"],
            how="left",
            maintain_order="left",
        )
    )
    if runs["sid"].null_count():  # cannot happen: the entities come from these rows
        raise ValueError("consumption frame: a stream without an entity code")
    codes: I64 = runs["sid"].to_numpy().astype(np.int64)
    out: I64 = codes[run]
    return out


def _slots(df: pl.DataFrame, ents: _Entities, *, disjoint: bool = True) -> _Block:
    """Meter-level 15-minute rows of a validated consumption frame (proportional split)."""
    sid = _stream_codes(df, ents)
    start = df["start"].cast(pl.Int64).to_numpy()
    end = df["end"].cast(pl.Int64).to_numpy()
    x = df["consumption"].to_numpy()
    rank = _RANK_OF_PHYSICAL[df["quality"].to_physical().to_numpy()]
    # The summation order of a slot: its intervals by start time. One pass tells whether rows
    # already come by stream and start, without overlaps (the usual case: no sort needed).
    if not _ordered_disjoint(sid, start, end):
        order = _order_by_start(sid, start)
        if order is not None:
            sid, start, end, x, rank = (v[order] for v in (sid, start, end, x, rank))
        # Overlapping intervals of a stream would be counted twice: refuse them.
        if disjoint and sid.size > 1 and np.any((sid[1:] == sid[:-1]) & (start[1:] < end[:-1])):
            raise ValueError("consumption frame: overlapping intervals in a stream")
    first = start // SLOT_US
    k = (end - 1) // SLOT_US - first + 1
    if np.all(k == 1):
        slot, cov, value = first, end - start, x
    else:
        rep = np.repeat(np.arange(x.size), k)
        base = np.cumsum(k) - k
        slot = first[rep] + (np.arange(rep.size) - base[rep])
        sid, rank = sid[rep], rank[rep]
        lo = np.maximum(start[rep], slot * SLOT_US)
        hi = np.minimum(end[rep], (slot + 1) * SLOT_US)
        cov = hi - lo
        dur = (end - start)[rep]
        value = np.where(cov == dur, x[rep], x[rep] * (cov / dur))
    est = np.where(rank == _ESTIMATED_RANK, value, 0.0)
    block = _Block(sid, slot, value, est, cov, rank, _ones(sid.size))
    out = _reduce(block, block.ent, block.slot)
    out.n = _ones(out.n.size)  # one meter per meter-level bucket, however many intervals
    return out


def _ordered_disjoint(sid: I64, start: I64, end: I64) -> bool:
    """Rows by stream, then start, and no interval overlapping the next one of its stream."""
    if sid.size < 2:
        return True
    same = sid[1:] == sid[:-1]
    return bool(np.all((sid[1:] > sid[:-1]) | (same & (start[1:] >= end[:-1]))))


def _order_by_start(sid: I64, start: I64) -> npt.NDArray[np.intp] | None:
    """The permutation putting rows in (stream, start) order, or None when they already are."""
    if sid.size == 0:
        return None
    t = start - start.min()
    bits = int(t.max()).bit_length()
    if int(sid.max()).bit_length() + bits <= 62:
        key = (sid << bits) | t
        if pl.Series(key).is_sorted():
            return None
        return _stable_argsort(key)
    frame = pl.DataFrame({"s": sid, "t": start})
    if (
        frame.select(
            (pl.col("s").diff() > 0) | ((pl.col("s").diff() == 0) & (pl.col("t").diff() > 0))
        )
        .to_series()
        .slice(1)
        .all()
    ):
        return None
    return (
        frame.select(pl.arg_sort_by("s", "t", maintain_order=True))
        .to_series()
        .to_numpy()
        .astype(np.intp)
    )


# -- rolling up ----------------------------------------------------------------------------------


def _meter_periods(m15: _Block, ents: _Entities, cal: _Calendar) -> dict[str, _Block]:
    zone = ents.streams["zone"].to_numpy()[m15.ent]
    out = {"15min": m15}
    prev = m15
    for p in PERIODS[1:]:
        # Hours from slots, days from hours, months from days: each step shrinks the rows.
        z = zone if prev is m15 else ents.streams["zone"].to_numpy()[prev.ent]
        prev = _reduce(prev, prev.ent, cal.bucket(p, z, prev.slot))
        prev.n = _ones(prev.n.size)  # one meter per meter-level bucket
        out[p] = prev
    return out


def _group(block: _Block, to: I64) -> _Block:
    """Sum rows into the entity `to[ent]`: members in code order (meters by id, buildings by
    id), whatever order the rows came in."""
    if len(block) == 0:
        return block
    key = _key(block.ent, block.slot)
    if not pl.Series(key).is_sorted():
        block = block.take(_stable_argsort(key))
    target = to[block.ent]
    lo, hi = int(block.slot.min()), int(block.slot.max()) + 1
    width = hi - lo
    bins = (int(target.max()) + 1) * width
    # (rows are unique per (entity, slot), so a cell has at most as many rows as members)
    if bins > 4 * len(block) + 1_000_000 or np.bincount(to).max() >= 2**16:
        return _reduce(block, target, block.slot)
    # Dense bins (entity x slot): no sort, and bincount keeps the members' row order.
    idx = target * width + (block.slot - lo)
    cells = np.arange(bins, dtype=np.int64)
    sums = _sums(block, idx, cells // width, cells % width + lo)
    return sums.take(np.flatnonzero(sums.n))


def _all_levels(m15: _Block, ents: _Entities, cal: _Calendar) -> dict[tuple[str, str], _Block]:
    meter = _meter_periods(m15, ents, cal)
    to_b = ents.streams["bcode"].to_numpy()
    to_p = ents.buildings["pcode"].to_numpy()
    out: dict[tuple[str, str], _Block] = {}
    for p in PERIODS:
        out["meter", p] = meter[p]
    for p in PERIODS:
        out["building", p] = _group(meter[p], to_b)
    for p in PERIODS:
        out["project", p] = _group(out["building", p], to_p)
    return out


def _frame(block: _Block, level: str, period: str, ents: _Entities, cal: _Calendar) -> pl.DataFrame:
    """A block as `ROLLUP_SCHEMA` rows, in canonical order (blocks are sorted by code, slot)."""
    names = {"meter": ents.streams, "building": ents.buildings, "project": ents.projects}[level]
    key_col = {"meter": "meter_id", "building": "building", "project": "project"}[level]
    if period == "15min":
        end = block.slot + 1
    else:
        end = cal.bucket_end(period, names["zone"].to_numpy()[block.ent], block.slot)
    n = len(block)
    idx = pl.Series(block.ent)
    raw = pl.DataFrame(
        {
            "slot": block.slot,
            "end": end,
            "consumption": block.value,
            "estimated": block.est,
            "q": pl.Series(block.q, dtype=pl.UInt32),
            "meters": block.n,
            "covered_us": block.cov,
        }
    )
    value, est = pl.col("consumption"), pl.col("estimated")
    return raw.select(
        level=pl.Series([level], dtype=LEVEL_ENUM).new_from_index(0, n),
        key=names[key_col].gather(idx),
        project=names["project"].gather(idx),
        channel=names["channel"].gather(idx),
        period=pl.Series([period], dtype=PERIOD_ENUM).new_from_index(0, n),
        bucket_start=(pl.col("slot") * SLOT_US).cast(TS),
        bucket_end=(pl.col("end") * SLOT_US).cast(TS),
        consumption=value,
        estimated=est,
        estimated_share=pl.when(value > 0).then(est / value),
        quality=_QUALITY_BY_RANK.gather(raw["q"]),
        meters=pl.col("meters").cast(pl.UInt32),
        coverage=pl.col("covered_us")
        / (pl.col("meters") * (pl.col("end") - pl.col("slot")) * SLOT_US),
        covered_us=pl.col("covered_us"),
    )


def _frames(blocks: dict[tuple[str, str], _Block], ents: _Entities, cal: _Calendar) -> pl.DataFrame:
    parts = [
        _frame(blocks[lv, p], lv, p, ents, cal)
        for lv in LEVELS
        for p in PERIODS
        if (lv, p) in blocks
    ]
    return pl.concat(parts, rechunk=False) if parts else pl.DataFrame(schema=ROLLUP_SCHEMA)


def _calendar_for(slots: list[I64], ents: _Entities) -> _Calendar:
    present = [s for s in slots if s.size]
    if not present:
        return _calendar(ents.zones, 0, 0)
    lo = min(int(s.min()) for s in present)
    hi = max(int(s.max()) for s in present) + 1
    return _calendar(ents.zones, lo, hi)


# -- public --------------------------------------------------------------------------------------


def rollup(consumption: pl.DataFrame | pl.LazyFrame, meters: pl.DataFrame) -> pl.DataFrame:
    """Every rollup of a consumption frame: 15-minute, hourly, local daily and local monthly
    consumption per meter, building and project (and channel), as `ROLLUP_SCHEMA` rows in
    `ROLLUP_KEY` order. Exact sums, so a building is the sum of its meters to the last bit.

    >>> import datetime as dt
    >>> utc = dt.timezone.utc
    >>> t = [dt.datetime(2026, 1, 5, 0, m, tzinfo=utc) for m in (0, 15, 30)]
    >>> c = pl.DataFrame({"meter_id": ["m1", "m1"], "channel": ["energy_wh"] * 2,
    ...     "start": t[:2], "end": t[1:], "consumption": [1.5, 2.0],
    ...     "quality": ["measured", "estimated"]})
    >>> meters = pl.DataFrame({"meter_id": ["m1"], "project": ["p"], "building": ["B1"],
    ...     "time_zone": ["Asia/Shanghai"]})
    >>> r = rollup(c, meters)
    >>> day = r.filter(level="project", period="day")  # local midnight is 16:00 UTC
    >>> day["bucket_start"].dt.to_string("%d %H:%M").item(), day["consumption"].item()
    ('04 16:00', 3.5)
    >>> day["estimated_share"].item(), day["quality"].item()
    (0.5714285714285714, 'estimated')
    """
    return _rollup(consumption, meters, disjoint=True)


def _rollup(
    consumption: pl.DataFrame | pl.LazyFrame, meters: pl.DataFrame, *, disjoint: bool
) -> pl.DataFrame:
    df = _consumption(consumption)
    ents = _entities(_distinct_streams(df), meters)
    m15 = _slots(df, ents, disjoint=disjoint)
    cal = _calendar_for([m15.slot], ents)
    return _frames(_all_levels(m15, ents, cal), ents, cal)


def dirty_buckets(changed: pl.DataFrame | pl.LazyFrame, meters: pl.DataFrame) -> pl.DataFrame:
    """The buckets (every level and period) that new, late or changed intervals touch: exactly
    the buckets `refresh` must recompute. Pass old and new versions of a changed interval.

    >>> import datetime as dt
    >>> utc = dt.timezone.utc
    >>> t = dt.datetime(2026, 1, 5, tzinfo=utc)
    >>> late = pl.DataFrame({"meter_id": ["m1"], "channel": ["energy_wh"], "start": [t],
    ...     "end": [t + dt.timedelta(minutes=15)], "consumption": [1.5], "quality": ["backfilled"]})
    >>> meters = pl.DataFrame({"meter_id": ["m1"], "project": ["p"], "building": ["B1"],
    ...     "time_zone": ["Europe/Berlin"]})
    >>> d = dirty_buckets(late, meters)
    >>> d.height  # 3 levels x 4 periods
    12
    >>> d.filter(level="project", period="month")["bucket_start"].dt.to_string("%F %R").item()
    '2025-12-31 23:00'
    """
    # old and new versions of a changed interval overlap: allowed here, only places matter
    return _rollup(changed, meters, disjoint=False).select(*DIRTY_SCHEMA.names())


def consumption_window(dirty: pl.DataFrame) -> pl.DataFrame:
    """Per stream, the spans of consumption `recompute` and `refresh` need: every interval
    overlapping a [start, end) span (a run of the stream's dirty 15-minute slots) must be
    passed, each once; more is harmless (intervals outside the dirty slots are ignored).

    >>> import datetime as dt
    >>> utc = dt.timezone.utc
    >>> d = pl.DataFrame({"level": ["meter"], "period": ["15min"], "key": ["m1"], "project": ["p"],
    ...     "channel": ["energy_wh"], "bucket_start": [dt.datetime(2026, 1, 5, tzinfo=utc)],
    ...     "bucket_end": [dt.datetime(2026, 1, 5, 0, 15, tzinfo=utc)]}).cast(DIRTY_SCHEMA)
    >>> consumption_window(d).row(0)[:2]
    ('m1', 'energy_wh')
    """
    stream = ["meter_id", "channel"]
    slots = (
        dirty.filter(pl.col("level") == "meter", pl.col("period") == "15min")
        .select(pl.col("key").alias("meter_id"), "channel", "bucket_start", "bucket_end")
        .sort(*stream, "bucket_start")
    )
    contiguous = pl.col("bucket_start") == pl.col("bucket_end").shift(1).over(stream)
    return (
        slots.with_columns(run=(~contiguous.fill_null(False)).cum_sum())
        .group_by(*stream, "run")
        .agg(pl.col("bucket_start").min().alias("start"), pl.col("bucket_end").max().alias("end"))
        .drop("run")
        .sort(*stream, "start")
    )


def watermarks(
    consumption: pl.DataFrame | pl.LazyFrame, previous: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Per stream, the end of the last interval seen (advanced, never moved back, from
    `previous`). Data ending at or before a stream's watermark is late.

    >>> import datetime as dt
    >>> utc = dt.timezone.utc
    >>> t = dt.datetime(2026, 1, 5, tzinfo=utc)
    >>> c = pl.DataFrame({"meter_id": ["m1"], "channel": ["energy_wh"], "start": [t],
    ...     "end": [t + dt.timedelta(minutes=15)], "consumption": [1.0], "quality": ["measured"]})
    >>> watermarks(c)["watermark"].dt.to_string("%F %R").to_list()
    ['2026-01-05 00:15']
    """
    wm = (
        consumption.lazy()
        .group_by(pl.col("meter_id").cast(pl.String), pl.col("channel").cast(pl.String))
        .agg(pl.col("end").cast(TS).max().alias("watermark"))
        .collect()
    )
    if previous is not None:
        wm = (
            pl.concat([previous.select(WATERMARK_SCHEMA.names()).cast(WATERMARK_SCHEMA), wm])
            .group_by("meter_id", "channel")
            .agg(pl.col("watermark").max())
        )
    return wm.sort("meter_id", "channel").cast(WATERMARK_SCHEMA)


def refresh(
    previous: pl.DataFrame,
    consumption: pl.DataFrame | pl.LazyFrame,
    meters: pl.DataFrame,
    dirty: pl.DataFrame,
) -> pl.DataFrame:
    """`previous` rollups with the `dirty` buckets recomputed, everything else untouched.

    `consumption` must hold every interval overlapping the dirty meter 15-minute slots of their
    streams (see `consumption_window`); intervals outside them are ignored. `previous` must be in
    `ROLLUP_KEY` order, as `rollup` and `refresh` return it. The result equals `rollup` over the
    whole consumption, bit for bit (see `recompute`).

    >>> import datetime as dt
    >>> utc = dt.timezone.utc
    >>> def iv(h, x, q="measured"):
    ...     t = dt.datetime(2026, 1, 5, h, tzinfo=utc)
    ...     return {"meter_id": "m1", "channel": "energy_wh", "start": t,
    ...         "end": t + dt.timedelta(minutes=15), "consumption": x, "quality": q}
    >>> meters = pl.DataFrame({"meter_id": ["m1"], "project": ["p"], "building": ["B1"],
    ...     "time_zone": ["Asia/Shanghai"]})
    >>> before = rollup(pl.DataFrame([iv(3, 1.0)]), meters)
    >>> late = pl.DataFrame([iv(1, 2.0, "backfilled")])
    >>> after = refresh(before, late, meters, dirty_buckets(late, meters))
    >>> after.filter(level="project", period="day")["consumption"].to_list()
    [3.0]
    """
    prev = previous.select(ROLLUP_SCHEMA.names()).cast(ROLLUP_SCHEMA)
    dirty = dirty.select(DIRTY_SCHEMA.names()).cast(DIRTY_SCHEMA)
    if dirty.height == 0:
        return prev
    fresh = recompute(prev, consumption, meters, dirty)
    return _merge(prev, dirty, fresh)


def _blocks_of(frame: pl.DataFrame) -> dict[tuple[str, str], pl.DataFrame]:
    """The (level, period) slices of a frame in `ROLLUP_KEY` order: zero-copy slices."""
    code = frame["level"].to_physical().cast(pl.Int64) * len(PERIODS) + frame[
        "period"
    ].to_physical().cast(pl.Int64)
    if not code.is_sorted():
        raise ValueError("previous rollups are not in ROLLUP_KEY order")
    out = {}
    for i, level in enumerate(LEVELS):
        for j, period in enumerate(PERIODS):
            c = i * len(PERIODS) + j
            lo = int(code.search_sorted(c, "left"))
            hi = int(code.search_sorted(c, "right"))
            out[level, period] = frame.slice(lo, hi - lo)
    return out


def _at(block: pl.DataFrame, starts: pl.Series) -> pl.DataFrame:
    """Rows of a slice whose bucket starts at one of `starts` (an integer pass, no strings)."""
    return block.filter(pl.col("bucket_start").is_in(starts.unique().implode()))


def _slot_instants(buckets: pl.DataFrame) -> pl.Series:
    """Every 15-minute instant inside the given [bucket_start, bucket_end) buckets."""
    spans = buckets.select("bucket_start", "bucket_end").unique()
    return (
        spans.select(
            pl.datetime_ranges(
                "bucket_start", pl.col("bucket_end") - pl.duration(minutes=15), "15m"
            ).alias("t")
        )
        .explode("t")["t"]
        .unique()
    )


def recompute(
    previous: pl.DataFrame,
    consumption: pl.DataFrame | pl.LazyFrame,
    meters: pl.DataFrame,
    dirty: pl.DataFrame,
) -> pl.DataFrame:
    """The new rows of the `dirty` buckets (a dirty bucket missing from the result has no data
    any more: delete it). What a store upserts; `refresh` merges it into `previous`.

    Meter 15-minute slots come from `consumption`; a meter's dirty hours from its 15-minute rows,
    days from its hour rows, months from its day rows (old rows from `previous`, dirty ones just
    recomputed), in time order; buildings and projects from all their meters' rows of the bucket.
    That is the order `rollup` sums in, so the values are identical. `previous` needs only the
    meter rows at the dirty buckets' starts and the dirty streams' rows inside dirty buckets.

    >>> import datetime as dt
    >>> utc = dt.timezone.utc
    >>> t = dt.datetime(2026, 1, 5, tzinfo=utc)
    >>> c = pl.DataFrame({"meter_id": ["m1"], "channel": ["energy_wh"], "start": [t],
    ...     "end": [t + dt.timedelta(minutes=15)], "consumption": [2.0], "quality": ["measured"]})
    >>> meters = pl.DataFrame({"meter_id": ["m1"], "project": ["p"], "building": ["B1"],
    ...     "time_zone": ["Asia/Shanghai"]})
    >>> recompute(rollup(c.head(0), meters), c, meters, dirty_buckets(c, meters)).height
    12
    """
    prev = previous.select(ROLLUP_SCHEMA.names()).cast(ROLLUP_SCHEMA)
    dirty = dirty.select(DIRTY_SCHEMA.names()).cast(DIRTY_SCHEMA)
    if dirty.height == 0:
        return pl.DataFrame(schema=ROLLUP_SCHEMA)
    m = _meters(meters)
    stream = ["key", "channel"]
    slices = _blocks_of(prev)
    d = {
        (lv, p): dirty.filter(pl.col("level") == lv, pl.col("period") == p)
        for lv in LEVELS
        for p in PERIODS
    }
    d_streams = d["meter", "15min"].select(stream).unique()
    # Meter rows sharing a dirty project bucket (a dirty building bucket is inside one).
    shared = {
        p: _at(slices["meter", p], d["project", p]["bucket_start"]).join(
            d["project", p].select("project", "channel", "bucket_start"),
            on=["project", "channel", "bucket_start"],
            how="semi",
        )
        for p in PERIODS
    }
    # The dirty streams' rows inside their dirty hours, days and months (children to re-add).
    children = {
        child: _at(slices["meter", child], _slot_instants(d["meter", parent]))
        .join(
            d["meter", parent].select(
                *stream,
                pl.col("bucket_start").alias("p_start"),
                pl.col("bucket_end").alias("p_end"),
            ),
            on=stream,
        )
        .filter(
            pl.col("bucket_start") >= pl.col("p_start"), pl.col("bucket_start") < pl.col("p_end")
        )
        .drop("p_start", "p_end")
        .unique(subset=["key", "channel", "bucket_start"], keep="first", maintain_order=True)
        for child, parent in itertools.pairwise(PERIODS)
    }
    streams = pl.concat([*(f.select(stream) for f in shared.values()), d_streams]).unique()
    ents = _entities(streams.rename({"key": "meter_id"}), m)
    sid_of = ents.streams.select(pl.col("meter_id").alias("key"), "channel", "sid")

    def block(rows: pl.DataFrame) -> _Block:
        rows = rows.join(sid_of, on=stream, how="left", maintain_order="left")
        return _Block(
            ent=rows["sid"].to_numpy().astype(np.int64),
            slot=rows["bucket_start"].cast(pl.Int64).to_numpy() // SLOT_US,
            value=rows["consumption"].to_numpy().astype(np.float64),
            est=rows["estimated"].to_numpy().astype(np.float64),
            cov=rows["covered_us"].to_numpy().astype(np.int64),
            q=_RANK_OF_PHYSICAL[rows["quality"].to_physical().to_numpy()],
            n=rows["meters"].cast(pl.Int64).to_numpy(),
        )

    def keys(level: str, period: str, codes: pl.DataFrame | None = None) -> I64:
        rows = d[level, period]
        if codes is None:
            b = block(rows.with_columns(_ZERO_STATE))
            return _key(b.ent, b.slot)
        rows = rows.join(codes, on=["key", "project", "channel"])
        return _key(
            rows["code"].to_numpy(), rows["bucket_start"].cast(pl.Int64).to_numpy() // SLOT_US
        )

    def without(b: _Block, k: I64) -> _Block:
        return b.take(~np.isin(_key(b.ent, b.slot), k))

    def only(b: _Block, k: I64) -> _Block:
        return b.take(np.isin(_key(b.ent, b.slot), k))

    # 1. Dirty meter slots, from consumption (pieces outside them are dropped).
    df = _consumption(consumption).join(
        d_streams.rename({"key": "meter_id"}), on=["meter_id", "channel"], how="semi"
    )
    spans = [d[lv, p]["bucket_start"] for lv in LEVELS for p in PERIODS] + [
        d[lv, p]["bucket_end"] for lv in LEVELS for p in PERIODS
    ]
    lo_hi = pl.concat(spans).cast(pl.Int64).to_numpy() // SLOT_US
    cal = _calendar(ents.zones, int(lo_hi.min()), int(lo_hi.max()) + 1)
    blocks: dict[tuple[str, str], _Block] = {}
    blocks["meter", "15min"] = only(_slots(df, ents), keys("meter", "15min"))
    # 2. Each dirty hour, day, month of a meter from its children, in time order.
    zone = ents.streams["zone"].to_numpy()
    for child, parent in itertools.pairwise(PERIODS):
        rows = _concat(
            [without(block(children[child]), keys("meter", child)), blocks["meter", child]]
        )
        rows = rows.take(_stable_argsort(_key(rows.ent, rows.slot)))
        up = _reduce(rows, rows.ent, cal.bucket(parent, zone[rows.ent], rows.slot))
        up.n = _ones(up.n.size)
        blocks["meter", parent] = only(up, keys("meter", parent))
    # 3. Buildings and projects from all their meters' rows of each dirty bucket.
    to_b = ents.streams["bcode"].to_numpy()
    to_p = ents.buildings["pcode"].to_numpy()
    bcodes = ents.buildings.select(
        pl.col("building").alias("key"), "project", "channel", pl.col("bcode").alias("code")
    )
    pcodes = ents.projects.select(
        pl.col("project").alias("key"), "project", "channel", pl.col("pcode").alias("code")
    )
    for p in PERIODS:
        rows = _concat([without(block(shared[p]), keys("meter", p)), blocks["meter", p]])
        build = _group(rows, to_b)
        blocks["project", p] = only(_group(build, to_p), keys("project", p, pcodes))
        blocks["building", p] = only(build, keys("building", p, bcodes))
    return _frames(blocks, ents, cal)


def _merge(prev: pl.DataFrame, dirty: pl.DataFrame, fresh: pl.DataFrame) -> pl.DataFrame:
    """`prev` without the dirty rows, with `fresh` rows in place, in `ROLLUP_KEY` order.

    Per (level, period) slice: the slice's groups (key, project, channel) are its runs; a row's
    position key is (run, slot), sorted already, so the dropped rows are found and the new rows
    placed by binary search, and the slice is copied once by one gather. No multi-key sort."""
    group = ["key", "project", "channel"]
    old = _blocks_of(prev)
    new = _blocks_of(fresh.sort(list(ROLLUP_KEY), maintain_order=True))
    parts = []
    for lp, part in old.items():
        add = new[lp]
        gone = dirty.filter(pl.col("level") == lp[0], pl.col("period") == lp[1])
        if gone.height == 0 and add.height == 0:
            parts.append(part)
            continue
        n = part.height
        if n:
            run = part.select(pl.struct(group).rle_id().cast(pl.Int64)).to_series().to_numpy()
        else:
            run = np.zeros(0, np.int64)
        first = np.flatnonzero(np.concatenate(([True], run[1:] != run[:-1]))) if n else run
        here = _slot_of(part)
        k = (run << 32) | here
        if n > 1 and not np.all(k[1:] > k[:-1]):
            raise ValueError("previous rollups are not in ROLLUP_KEY order (or have duplicates)")
        runs = part[first].select(group).with_columns(r=pl.int_range(pl.len(), dtype=pl.Int64))

        def position_keys(rows: pl.DataFrame, runs: pl.DataFrame = runs) -> I64:
            # existing group: (run, slot); new group: just before the next run in string order
            known = rows.select(group).join(runs, on=group, how="left", maintain_order="left")
            missing = known["r"].is_null().to_numpy()
            r = known["r"].fill_null(0).to_numpy()
            out = (r << 32) | _slot_of(rows)
            if missing.any():
                both = pl.concat(
                    [
                        runs.select(*group, new=pl.lit(False)),
                        rows.filter(pl.Series(missing)).select(*group, new=pl.lit(True)),
                    ]
                ).sort(*group, "new")
                # runs before each new group = its position among the existing runs
                before = (~both["new"]).cum_sum().filter(both["new"]).to_numpy().astype(np.int64)
                out[missing] = before << 32
            return out

        keep = np.ones(n, np.bool_)
        if gone.height:  # k is sorted and unique: binary search instead of a hash pass
            drop = position_keys(gone)
            at = np.searchsorted(k, drop)
            hit = at < n
            hit[hit] = k[at[hit]] == drop[hit]
            keep[at[hit]] = False
        kept_idx = np.flatnonzero(keep)
        if add.height:
            pos = np.searchsorted(k[kept_idx], position_keys(add), side="left")
            idx = np.insert(kept_idx, pos, n + np.arange(add.height))
        else:
            idx = kept_idx
        parts.append(pl.concat([part, add], rechunk=False)[idx])
    return pl.concat(parts, rechunk=False) if parts else pl.DataFrame(schema=ROLLUP_SCHEMA)


def _slot_of(frame: pl.DataFrame) -> I64:
    out: I64 = frame["bucket_start"].cast(pl.Int64).to_numpy() // SLOT_US
    return out


_STATE: Final = (
    "consumption",
    "estimated",
    "covered_us",
    "quality",
    "meters",
)
_ZERO_STATE: Final = (
    pl.lit(0.0, pl.Float64).alias("consumption"),
    pl.lit(0.0, pl.Float64).alias("estimated"),
    pl.lit(0, pl.Int64).alias("covered_us"),
    pl.lit("measured", CONSUMPTION_QUALITY_ENUM).alias("quality"),
    pl.lit(0, pl.UInt32).alias("meters"),
)


def frame_hash(df: pl.DataFrame, key: tuple[str, ...] = ROLLUP_KEY) -> str:
    """A SHA-256 of a frame's content, independent of row order (rows are sorted by `key`
    first) and stable across runs: column names and dtypes, then each column's values.

    >>> a = pl.DataFrame({"k": [2, 1], "v": [0.5, None]})
    >>> frame_hash(a, ("k",)) == frame_hash(a.reverse(), ("k",))
    True
    """
    h = hashlib.sha256()
    df = df.sort(list(key), maintain_order=True) if key else df
    for name, dtype in df.schema.items():
        h.update(f"{name}:{dtype}\n".encode())
        col = df[name]
        h.update(col.is_null().to_numpy().tobytes())
        if isinstance(dtype, pl.Enum | pl.Categorical) or dtype == pl.String:
            values = col.cast(pl.String).fill_null("")
            h.update(values.str.len_bytes().to_numpy().tobytes())
            h.update("".join(values.to_list()).encode())
        elif dtype.is_temporal():
            h.update(col.to_physical().fill_null(0).to_numpy().tobytes())
        else:
            h.update(col.fill_null(0).to_numpy().tobytes())
    return h.hexdigest()


__all__ = [
    "DIRTY_SCHEMA",
    "LEVELS",
    "PERIODS",
    "ROLLUP_KEY",
    "ROLLUP_SCHEMA",
    "SLOT_US",
    "WATERMARK_SCHEMA",
    "consumption_window",
    "dirty_buckets",
    "frame_hash",
    "recompute",
    "refresh",
    "rollup",
    "watermarks",
]
