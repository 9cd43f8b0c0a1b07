"""What the detectors share: local clock time, robust baselines, condition runs, findings.

Every detector is a pure function from frames to a `FINDINGS_SCHEMA` frame. The pieces here
keep them small and alike:

- **local time** (`local_time`, `hour_of_week`): load follows the wall clock of the project's
  zone, so night windows and same-hour-of-week baselines are taken in local time, per row,
  from the meter's `time_zone`;
- **stream order** (`codes`, `sort_streams`): one integer per (stream, instant), so a frame is
  put in time order per stream with one single-key sort instead of a multi-key one (5x faster
  on big frames), or none when it already is;
- **robust baselines** (`robust_baseline`): median and MAD of a value per group, the MAD
  floored so a flat history does not make every wiggle infinitely significant;
- **runs** (`runs`): consecutive rows where a condition holds, per key, collapsed to one row
  with its start, end and aggregates - the shape of a finding;
- **findings** (`to_findings`, `concat_findings`): rows in `FINDINGS_SCHEMA` with canonical
  evidence JSON, sorted so the same input gives the same bytes.

The API is shared by both detector modules' authors; keep it stable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import polars as pl

from analytics.frames import FINDINGS_SCHEMA, SEVERITIES, SEVERITY_ENUM, TS, empty, evidence

# MAD x 1.4826 estimates the standard deviation of normally distributed data.
MAD_TO_SIGMA: Final = 1.4826
US_PER_S: Final = 1_000_000
US_PER_H: Final = 3_600 * US_PER_S

# Stream key layout: stream code in the high bits, seconds since the frame's first instant in
# the low 32 (136 years); 31 bits of stream code.
_TS_BITS: Final = 32
_MAX_STREAMS: Final = 1 << 31

Evidence = Callable[[dict[str, Any]], Mapping[str, Any]]


# -- local time -------------------------------------------------------------------------------


def zones_of(meters: pl.DataFrame) -> list[str]:
    """The distinct IANA zones of a meters frame, sorted (the `zones` argument of `local_time`).

    >>> zones_of(pl.DataFrame({"time_zone": ["Europe/Berlin", "Asia/Shanghai", None,
    ...     "Asia/Shanghai"]}))
    ['Asia/Shanghai', 'Europe/Berlin']
    """
    if "time_zone" not in meters.columns:
        return []
    return sorted(z for z in meters.get_column("time_zone").unique().to_list() if z)


def local_time(ts: str | pl.Expr, zone: str | pl.Expr, zones: Sequence[str]) -> pl.Expr:
    """The naive local wall-clock time of UTC instants `ts` in each row's zone (`zone`, a column
    of IANA names drawn from `zones`); rows in an unknown or null zone stay in UTC.

    Jobs run per project, so there is usually one zone and this is one conversion; with several
    zones it is one conversion per zone, never per row.

    >>> import datetime as dt
    >>> df = pl.DataFrame({"ts": [dt.datetime(2026, 1, 5, 18, 30, tzinfo=dt.UTC)] * 2,
    ...     "time_zone": ["Asia/Shanghai", "Europe/Berlin"]})
    >>> df.select(local_time("ts", "time_zone", ["Asia/Shanghai", "Europe/Berlin"]).dt.hour())
    ... # doctest: +NORMALIZE_WHITESPACE
    shape: (2, 1)
    ┌─────┐
    │ ts  │
    │ --- │
    │ i8  │
    ╞═════╡
    │ 2   │
    │ 19  │
    └─────┘
    """
    t = pl.col(ts) if isinstance(ts, str) else ts
    z = pl.col(zone) if isinstance(zone, str) else zone
    utc = t.dt.replace_time_zone(None)
    if not zones:
        return utc
    chain: Any = pl
    for name in zones:
        chain = chain.when(z == name).then(t.dt.convert_time_zone(name).dt.replace_time_zone(None))
    out: pl.Expr = chain.otherwise(utc)
    return out


def with_local_clock(
    df: pl.DataFrame,
    zones: Sequence[str],
    derive: Callable[[pl.Expr], list[pl.Expr]],
    ts: str = "ts",
    zone: str = "time_zone",
) -> pl.DataFrame:
    """`df` with the columns `derive` makes of each row's local wall-clock time (`local_time` of
    `ts` in `zone`), computed once per distinct (zone, instant) and joined back by one Int64.

    Converting every row costs one time-zone conversion per zone per row (the `local_time`
    chain); readings share their instants across meters (a fleet polled on the same grid), so
    the distinct pairs are a few thousand where the rows are millions. Distinct instants, not
    hours: the result is exactly `local_time`'s, also in zones whose offset is not whole hours
    (Asia/Kolkata) and at instants inside a DST change. Row order is kept.

    >>> import datetime as dt
    >>> df = pl.DataFrame({"ts": [dt.datetime(2026, 1, 5, 18, 30, tzinfo=dt.UTC)] * 3,
    ...     "time_zone": ["Asia/Kolkata", None, "Asia/Kolkata"]})
    >>> with_local_clock(df, ["Asia/Kolkata"], lambda t: [t.dt.hour().alias("h")])["h"].to_list()
    [0, 18, 0]
    """
    dtype = df.schema[ts]
    if df.height == 0 or not isinstance(dtype, pl.Datetime):
        return df.with_columns(derive(local_time(ts, zone, zones)))
    raw = pl.col(ts).cast(pl.Int64)  # in the column's own time unit: no rounding
    lo, hi = df.select(raw.min().alias("lo"), raw.max().alias("hi")).row(0)
    if lo is None or hi is None:
        return df.with_columns(derive(local_time(ts, zone, zones)))
    span = int(hi) - int(lo) + 1
    if span * (len(zones) + 1) >= 2**62:  # no room for one packed key: per row
        return df.with_columns(derive(local_time(ts, zone, zones)))
    code = (
        pl.col(zone)
        .cast(pl.String)
        .replace_strict(list(zones), list(range(len(zones))), default=-1, return_dtype=pl.Int64)
        .fill_null(-1)
    )
    # zone code + 1 (0: unknown or null zone, left in UTC) in the high part, instant in the low
    key = (code + 1) * span + (raw - int(lo))
    keyed = df.with_columns(key.alias("_zt"))
    clock = keyed.select(pl.col("_zt").unique()).with_columns(
        (pl.col("_zt") % span + int(lo)).cast(dtype).alias(ts),
        (pl.col("_zt") // span - 1)
        .replace_strict(list(range(len(zones))), list(zones), default=None, return_dtype=pl.String)
        .alias(zone),
    )
    clock = clock.select("_zt", *derive(local_time(ts, zone, zones)))
    return keyed.join(clock, on="_zt", how="left", maintain_order="left").drop("_zt")


def hour_of_week(local: pl.Expr) -> pl.Expr:
    """0..167: Monday 00:00-01:00 is 0, Sunday 23:00-24:00 is 167 (of a local time).

    >>> import datetime as dt
    >>> pl.select(hour_of_week(pl.lit(dt.datetime(2026, 1, 6, 19, 15)))).item()  # a Tuesday
    43
    """
    return ((local.dt.weekday().cast(pl.Int16) - 1) * 24 + local.dt.hour().cast(pl.Int16)).alias(
        "hour_of_week"
    )


def is_weekend(local: pl.Expr) -> pl.Expr:
    """Saturday or Sunday (of a local time)."""
    return local.dt.weekday() >= 6


def meter_zones(meters: pl.DataFrame) -> pl.DataFrame:
    """`meter_id, project, kind, load, time_zone` of a meters frame, with the optional columns
    filled (null), for joins onto readings.

    >>> meter_zones(pl.DataFrame({"meter_id": ["m1"], "time_zone": ["UTC"]})).columns
    ['meter_id', 'project', 'kind', 'load', 'time_zone']
    """
    cols = ("meter_id", "project", "kind", "load", "time_zone")
    return meters.select(
        [
            pl.col(c).cast(pl.String) if c in meters.columns else pl.lit(None, pl.String).alias(c)
            for c in cols
        ]
    )


# -- streams ----------------------------------------------------------------------------------


def codes(name: str, dtype: pl.DataType) -> pl.Expr:
    """A dense Int64 code per distinct value of column `name` (order of first appearance for
    strings, the category index for enums), for grouping and sorting by integers.

    >>> pl.DataFrame({"m": ["b", "a", "b"]}).select(codes("m", pl.String())).to_series().to_list()
    [0, 1, 0]
    """
    col = pl.col(name)
    if isinstance(dtype, pl.Enum | pl.Categorical):
        return col.to_physical().cast(pl.Int64)
    return col.cast(pl.String).cast(pl.Categorical).to_physical().cast(pl.Int64)


def sort_streams(df: pl.DataFrame, keys: Sequence[str], ts: str = "ts") -> pl.DataFrame:
    """`df` ordered by stream (`keys`), then `ts`, with an Int64 column `_stream` (one code per
    stream). Sorting is one single-key sort on an Int64 (stream code in the high bits, seconds
    since the first instant in the low 32) - five times cheaper than a multi-key sort - and is
    skipped when each stream's rows already are contiguous and in time order (as the store,
    the simulators and most exports give them; streams may then come in any order). Ties keep
    their input order, so the result depends only on the input.

    >>> import datetime as dt
    >>> t = [dt.datetime(2026, 1, 5, h, tzinfo=dt.UTC) for h in (2, 1, 3)]
    >>> df = pl.DataFrame({"meter_id": ["b", "a", "b"], "ts": t, "value": [2.0, 9.0, 3.0]})
    >>> sort_streams(df, ["meter_id"])["value"].to_list()
    [2.0, 3.0, 9.0]
    """
    schema = df.schema
    parts = df.select(
        *[codes(k, schema[k]).alias(f"_c{i}") for i, k in enumerate(keys)],
        # whole seconds from the microseconds as stored (epoch("s") costs 5x as much)
        ((pl.col(ts).dt.epoch("us") - pl.col(ts).dt.epoch("us").min()) // 1_000_000).alias("_s"),
    )
    stream = pl.lit(0, pl.Int64)
    for i in range(len(keys)):
        width = int(parts.get_column(f"_c{i}").max() or 0) + 1  # type: ignore[arg-type]
        stream = stream * width + pl.col(f"_c{i}")
    parts = parts.select(stream.alias("_stream"), "_s")
    top = int(parts.get_column("_stream").max() or 0)  # type: ignore[arg-type]
    span = int(parts.get_column("_s").max() or 0)  # type: ignore[arg-type]
    out = df.with_columns(parts.get_column("_stream"))
    if top >= _MAX_STREAMS or span >= 1 << _TS_BITS:  # beyond the packed key: sort plainly
        return out.sort("_stream", ts, maintain_order=True)
    if grouped_in_time(parts.get_column("_stream"), parts.get_column("_s")):
        return out
    key = parts.get_column("_stream") * (1 << _TS_BITS) + parts.get_column("_s")
    return out.with_columns(key.alias("_key")).sort("_key", maintain_order=True).drop("_key")


def grouped_in_time(stream: pl.Series, t: pl.Series) -> bool:
    """Whether each stream's rows are contiguous and in time order - all a per-stream pass
    needs, whatever order the streams come in (a simulator's batches, a store's pages). Two
    linear passes, against a sort of the whole frame.

    >>> grouped_in_time(pl.Series([7, 7, 3, 3]), pl.Series([1, 2, 1, 2]))
    True
    >>> grouped_in_time(pl.Series([7, 3, 7]), pl.Series([1, 1, 2]))
    False
    """
    if stream.len() < 2:
        return True
    same = stream == stream.shift(1)
    if bool((same & (t < t.shift(1))).any()):
        return False
    # contiguous: no stream starts twice (the first row of each run of a stream, unique)
    starts = stream.filter(~same.fill_null(False))
    return starts.len() == starts.n_unique()


def sort_by_key(df: pl.DataFrame, key: str) -> pl.DataFrame:
    """`df` sorted by the integer column `key` (stably), skipping the sort when it already is:
    a check is one pass, a sort of millions of rows is many.

    >>> sort_by_key(pl.DataFrame({"k": [2, 1, 3]}), "k")["k"].to_list()
    [1, 2, 3]
    """
    col = df.get_column(key)
    if col.len() < 2 or bool((col.diff().drop_nulls() >= 0).all()):
        return df
    return df.sort(key, maintain_order=True)


# -- baselines --------------------------------------------------------------------------------


def robust_baseline(
    value: str,
    by: Sequence[str],
    *,
    rel_floor: float = 0.0,
    abs_floor: float = 0.0,
) -> list[pl.Expr]:
    """Window expressions: `median`, `mad` (raw) and `scale` (robust sigma: MAD x 1.4826, at
    least `rel_floor` x |median| and `abs_floor`), and `n` (values behind them) of `value`
    over the groups `by`.

    The current row is part of its own baseline: with five or more values a single outlier
    moves the median and MAD by at most one rank, and it saves a leave-one-out pass.

    >>> df = pl.DataFrame({"k": ["a"] * 5, "v": [1.0, 1.1, 0.9, 1.0, 9.0]})
    >>> out = df.with_columns(robust_baseline("v", ["k"], rel_floor=0.05))
    >>> out.with_columns(pl.col(pl.Float64).round(4)).row(4, named=True)
    {'k': 'a', 'v': 9.0, 'median': 1.0, 'mad': 0.1, 'scale': 0.1483, 'n': 5}
    """
    v = pl.col(value)
    med = v.median().over(by)
    mad = (v - med).abs().median().over(by)
    scale = pl.max_horizontal(mad * MAD_TO_SIGMA, med.abs() * rel_floor, pl.lit(abs_floor))
    return [
        med.alias("median"),
        mad.alias("mad"),
        scale.alias("scale"),
        v.count().over(by).cast(pl.Int64).alias("n"),
    ]


# -- runs -------------------------------------------------------------------------------------


def runs(
    df: pl.DataFrame | pl.LazyFrame,
    *,
    key: str,
    flag: str | pl.Expr,
    aggs: Iterable[pl.Expr] = (),
    start: str = "ts",
    end: str | None = None,
) -> pl.LazyFrame:
    """Collapse each run of consecutive rows (per `key`) where `flag` holds into one row: `key`,
    `start` (first row's `start`), `end` (last row's `end`, or its `start` when `end` is None),
    `rows` (its length) and `aggs` over the run. `df` must be ordered by `key`, then time.

    >>> import datetime as dt
    >>> t = [dt.datetime(2026, 1, 5, h, tzinfo=dt.UTC) for h in range(5)]
    >>> df = pl.DataFrame({"m": ["a"] * 5, "ts": t, "v": [0.0, 3.0, 4.0, 0.0, 5.0]})
    >>> out = runs(df, key="m", flag=pl.col("v") > 1, aggs=[pl.col("v").max().alias("peak")])
    >>> out.collect().select("m", pl.col("start").dt.hour(), "rows", "peak").rows()
    [('a', 1, 2, 4.0), ('a', 4, 1, 5.0)]
    """
    f = (pl.col(flag) if isinstance(flag, str) else flag).fill_null(False)
    k = pl.col(key)
    same = k == k.shift(1)
    new = f & ~(f.shift(1, fill_value=False) & same.fill_null(False))
    last = pl.col(end if end is not None else start)
    return (
        df.lazy()
        .with_columns(f.fill_null(False).alias("_flag"), new.fill_null(False).alias("_new"))
        .with_columns(pl.col("_new").cast(pl.UInt32).cum_sum().alias("_run"))
        .filter(pl.col("_flag"))
        .group_by("_run", maintain_order=True)
        .agg(
            k.first(),
            pl.col(start).first().alias("start"),
            last.last().alias("end"),
            pl.len().cast(pl.Int64).alias("rows"),
            *aggs,
        )
        .drop("_run")
    )


def merge_overlaps(
    lf: pl.LazyFrame,
    *,
    key: str,
    gap: pl.Expr | None = None,
    aggs: Iterable[pl.Expr] | None = None,
) -> pl.LazyFrame:
    """Merge intervals (`key`, `start`, `end`) of one key that overlap or lie within `gap` (a
    duration expression; none by default) of each other into one, spanning them all; the other
    columns are `aggs` over the merged intervals (default: the first interval's values), and
    `merged` counts the intervals behind each.

    >>> import datetime as dt
    >>> h = lambda n: dt.datetime(2026, 1, 5, n, tzinfo=dt.UTC)
    >>> df = pl.DataFrame({"m": ["a", "a", "a"], "start": [h(1), h(2), h(6)],
    ...     "end": [h(3), h(4), h(7)]})
    >>> out = merge_overlaps(df.lazy(), key="m").collect()
    >>> out.select(pl.col("start").dt.hour(), pl.col("end").dt.hour(), "merged").rows()
    [(1, 4, 2), (6, 7, 1)]
    """
    slack = gap if gap is not None else pl.duration(microseconds=0)
    ordered = lf.sort(key, "start", "end", maintain_order=True)  # findings: small frames
    reach = pl.col("end").cum_max().over(key)
    new = (pl.col(key) != pl.col(key).shift(1)).fill_null(True) | (
        pl.col("start") > reach.shift(1) + slack
    ).fill_null(True)
    if aggs is None:
        others = [c for c in lf.collect_schema().names() if c not in (key, "start", "end")]
        aggs = [pl.col(c).first() for c in others]
    return (
        ordered.with_columns(new.cast(pl.UInt32).cum_sum().alias("_grp"))
        .group_by("_grp", maintain_order=True)
        .agg(
            pl.col(key).first(),
            pl.col("start").min(),
            pl.col("end").max(),
            *aggs,
            pl.len().cast(pl.Int64).alias("merged"),
        )
        .drop("_grp")
    )


# -- findings ---------------------------------------------------------------------------------


def severity(score: pl.Expr, warning: float, critical: float) -> pl.Expr:
    """ "info" below `warning`, "warning" from it, "critical" from `critical` (of a score).

    >>> pl.select(severity(pl.Series([1.0, 2.0, 5.0]), 2.0, 4.0)).to_series().to_list()
    ['info', 'warning', 'critical']
    """
    return (
        pl.when(score >= critical)
        .then(pl.lit("critical"))
        .when(score >= warning)
        .then(pl.lit("warning"))
        .otherwise(pl.lit("info"))
        .cast(SEVERITY_ENUM)
    )


def to_findings(
    df: pl.DataFrame, *, rule: str, kind: str, evidence_of: Evidence, subject: str = "subject"
) -> pl.DataFrame:
    """Findings (`FINDINGS_SCHEMA`) from one row per detected condition: `subject`, `start`,
    `end`, `severity` and optionally `lead_time_days`; `evidence_of(row)` gives each finding's
    evidence (the values, the baseline, the rule's parameters), written as canonical JSON.

    Evidence is built in Python, one finding at a time: findings are few (thousands against
    millions of readings), and `frames.evidence` is the one place that fixes its bytes.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    >>> rows = pl.DataFrame({"subject": ["m1"], "start": [t], "end": [t],
    ...     "severity": ["warning"], "peak": [4.0]})
    >>> out = to_findings(rows, rule="x.y", kind="spike", evidence_of=lambda r: {"peak": r["peak"]})
    >>> out.select("subject", "rule", "kind", "severity", "evidence").row(0)
    ('m1', 'x.y', 'spike', 'warning', '{"peak":4.0}')
    """
    if df.height == 0:
        return empty(FINDINGS_SCHEMA)
    texts = [evidence(evidence_of(row)) for row in df.iter_rows(named=True)]
    lead = (
        df.get_column("lead_time_days").cast(pl.Float64)
        if "lead_time_days" in df.columns
        else pl.Series("lead_time_days", [None] * df.height, dtype=pl.Float64)
    )
    out = pl.DataFrame(
        {
            "subject": df.get_column(subject).cast(pl.String),
            "rule": [rule] * df.height,
            "kind": [kind] * df.height,
            "start": df.get_column("start").cast(TS),
            "end": df.get_column("end").cast(TS),
            "severity": df.get_column("severity").cast(pl.String),
            "evidence": texts,
            "lead_time_days": lead,
        }
    )
    return out.cast(dict(FINDINGS_SCHEMA))  # type: ignore[arg-type]


def concat_findings(parts: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """Findings of several rules as one frame in a fixed order (subject, start, rule, end,
    evidence), so the same input always gives the same bytes.

    >>> concat_findings([]).columns == list(FINDINGS_SCHEMA)
    True
    """
    frames = [p.select(list(FINDINGS_SCHEMA)) for p in parts if p.height]
    if not frames:
        return empty(FINDINGS_SCHEMA)
    return pl.concat(frames).sort(
        "subject", "start", "rule", "end", "evidence", maintain_order=True
    )


def iso(ts: Any) -> str | None:
    """An instant as ISO 8601 text for evidence (None stays None).

    >>> import datetime as dt
    >>> iso(dt.datetime(2026, 1, 5, 2, tzinfo=dt.UTC))
    '2026-01-05T02:00:00+00:00'
    """
    return None if ts is None else str(ts.isoformat())


__all__ = [
    "MAD_TO_SIGMA",
    "SEVERITIES",
    "US_PER_H",
    "US_PER_S",
    "Evidence",
    "codes",
    "concat_findings",
    "grouped_in_time",
    "hour_of_week",
    "is_weekend",
    "iso",
    "local_time",
    "merge_overlaps",
    "meter_zones",
    "robust_baseline",
    "runs",
    "severity",
    "sort_by_key",
    "sort_streams",
    "to_findings",
    "zones_of",
]
