"""Main meter against the sum of its sub-meters: losses, theft, an unmetered load, a bad CT.

A main (parent) meter measures everything its sub-meters measure, plus cable and transformer
losses (a few percent). When, window after window, the main reads clearly more than its subs
add up to, energy leaves the tree unmetered: a tapped cable, a load wired before the sub-
meters, a stuck or missing sub-meter. When the subs add up to *more* than the main, a meter is
wrong: a sub-meter's CT ratio, a load metered twice, a main that under-registers.

The hierarchy comes from the optional `parent_meter_id` column of `meters` (absent: no tree,
no finding). For each parent and each window (`window`, hourly by default, UTC-aligned: both
sides of a comparison share the same instants, so the zone does not matter):

- main = the parent's consumption of `channel` in the window, subs = the sum of its direct
  children's; a window is judged only when the main and *every* child cover at least
  `min_coverage` of it with measured intervals (an estimated spread across a gap would make its
  own imbalance; `measured_only`);
- the window is out of balance when |main - subs| > max(`tolerance_pct` % of main,
  `abs_tolerance_kwh`): the floor keeps a night with little load from tripping on rounding;
- consecutive out-of-balance windows of one sign (missing windows up to `max_gap` bridged)
  make a run; a run of at least `min_windows` windows is a finding: `balance.unmetered` when
  the main reads more, `balance.subs_exceed_main` when the subs do; `critical` when the run's
  total imbalance is `critical_pct` % of the main or more.

Consumption comes from the consumption step (`CONSUMPTION_SCHEMA`); without it, from the
rises of the `channel` register between readings (a fallback that trusts the register).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

import polars as pl

from analytics import frames
from analytics.detectors import common

_MAX_WINDOWS_IN_EVIDENCE: Final = 48


@dataclass(frozen=True, slots=True)
class BalanceParams:
    """Thresholds of the balance rule (see the module docstring)."""

    channel: str = "energy_import_kwh"
    window: dt.timedelta = dt.timedelta(hours=1)
    tolerance_pct: float = 5.0
    abs_tolerance_kwh: float = 0.1
    critical_pct: float = 20.0
    min_windows: int = 3
    max_gap: dt.timedelta = dt.timedelta(hours=2)
    min_coverage: float = 0.95
    measured_only: bool = True

    def as_evidence(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "window_s": self.window.total_seconds(),
            "tolerance_pct": self.tolerance_pct,
            "abs_tolerance_kwh": self.abs_tolerance_kwh,
            "critical_pct": self.critical_pct,
            "min_windows": self.min_windows,
            "max_gap_s": self.max_gap.total_seconds(),
            "min_coverage": self.min_coverage,
            "measured_only": self.measured_only,
        }


def _exact_sum(x: pl.Expr) -> pl.Expr:
    """Sum in whole micro-kWh: integer sums do not depend on the order a parallel group-by adds
    them in, so the same consumption gives the same bits in any row order."""
    return (x * 1e6).round().cast(pl.Int64).sum() / 1e6


def _tree(meters: pl.DataFrame | None) -> pl.DataFrame:
    if meters is None or "parent_meter_id" not in meters.columns:
        return pl.DataFrame(schema={"meter_id": pl.String, "parent": pl.String})
    return (
        meters.select(pl.col("meter_id").cast(pl.String), pl.col("parent_meter_id").cast(pl.String))
        .filter(pl.col("parent_meter_id").is_not_null())
        .rename({"parent_meter_id": "parent"})
        .unique(maintain_order=True)
    )


def _intervals(
    readings: pl.DataFrame | pl.LazyFrame | None,
    consumption: pl.DataFrame | pl.LazyFrame | None,
    wanted: list[str],
    p: BalanceParams,
) -> pl.LazyFrame:
    """meter_id, start, end, consumption, measured: the intervals of `channel` of the tree."""
    if consumption is not None:
        return (
            consumption.lazy()
            .filter(pl.col("channel") == p.channel)
            .select(
                pl.col("meter_id").cast(pl.String),
                pl.col("start").cast(frames.TS),
                pl.col("end").cast(frames.TS),
                pl.col("consumption").cast(pl.Float64),
                (pl.col("quality") == "measured").alias("measured"),
            )
            .filter(pl.col("meter_id").is_in(wanted))
        )
    assert readings is not None
    reg = (
        readings.lazy()
        .filter(pl.col("channel") == p.channel)
        .select(
            pl.col("meter_id").cast(pl.String),
            pl.col("ts").cast(frames.TS),
            pl.col("value").cast(pl.Float64),
        )
        .filter(pl.col("meter_id").is_in(wanted) & pl.col("value").is_not_nan())
        .drop_nulls("value")
        .collect()
    )
    reg = common.sort_streams(reg, ["meter_id"])
    same = pl.col("_stream") == pl.col("_stream").shift(1)
    return (
        reg.lazy()
        .with_columns(
            start=pl.when(same).then(pl.col("ts").shift(1)),
            consumption=pl.when(same).then(pl.col("value").diff()),
        )
        .filter(pl.col("consumption") >= 0)
        .select("meter_id", "start", pl.col("ts").alias("end"), "consumption", measured=True)
    )


def balance_windows(
    readings: pl.DataFrame | pl.LazyFrame | None,
    consumption: pl.DataFrame | pl.LazyFrame | None,
    meters: pl.DataFrame | None,
    *,
    params: BalanceParams | None = None,
) -> pl.DataFrame:
    """Per (parent, window) where the main and every child are complete: `parent, window,
    main_kwh, subs_kwh, subs (count), diff_kwh, sign` (+1 main above the tolerance band, -1
    subs above it, 0 in balance), sorted by parent and window.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    >>> h = dt.timedelta(hours=1)
    >>> c = pl.DataFrame({"meter_id": ["main", "a", "b"], "channel": "energy_import_kwh",
    ...     "start": t, "end": t + h, "consumption": [10.0, 4.0, 4.0], "quality": "measured"})
    >>> meters = pl.DataFrame({"meter_id": ["main", "a", "b"],
    ...     "parent_meter_id": [None, "main", "main"]})
    >>> balance_windows(None, c, meters).select("parent", "main_kwh", "subs_kwh", "sign").row(0)
    ('main', 10.0, 8.0, 1)
    """
    p = params or BalanceParams()
    tree = _tree(meters)
    fields: dict[str, frames.DType] = {
        "parent": pl.String,
        "window": frames.TS,
        "main_kwh": pl.Float64,
        "subs_kwh": pl.Float64,
        "subs": pl.UInt32,
        "diff_kwh": pl.Float64,
        "sign": pl.Int8,
    }
    out_schema = pl.Schema(fields)
    if tree.is_empty():
        return pl.DataFrame(schema=out_schema)
    wanted = sorted(set(tree["meter_id"].to_list()) | set(tree["parent"].to_list()))
    if consumption is None and readings is None:
        return pl.DataFrame(schema=out_schema)
    src = _intervals(readings, consumption, wanted, p)
    if p.measured_only:
        src = src.filter(pl.col("measured"))
    span = p.window.total_seconds()
    per = (
        src.with_columns(window=pl.col("start").dt.truncate(p.window))
        .group_by("meter_id", "window")
        .agg(
            _exact_sum(pl.col("consumption")).alias("kwh"),
            (pl.col("end") - pl.col("start")).dt.total_seconds().sum().alias("covered_s"),
        )
        .filter(pl.col("covered_s") >= p.min_coverage * span)
        .collect()
    )
    children = tree.group_by("parent").agg(pl.len().alias("children"))
    subs = (
        per.join(tree, on="meter_id")
        .group_by("parent", "window")
        .agg(_exact_sum(pl.col("kwh")).alias("subs_kwh"), pl.len().alias("subs"))
        .join(children, on="parent")
        .filter(pl.col("subs") == pl.col("children"))
    )
    main = per.rename({"meter_id": "parent", "kwh": "main_kwh"}).select(
        "parent", "window", "main_kwh"
    )
    band = pl.max_horizontal(
        p.tolerance_pct / 100.0 * pl.col("main_kwh").abs(), pl.lit(p.abs_tolerance_kwh)
    )
    diff = pl.col("main_kwh") - pl.col("subs_kwh")
    return (
        main.join(subs, on=["parent", "window"])
        .with_columns(diff_kwh=diff)
        .with_columns(
            sign=pl.when(pl.col("diff_kwh") > band)
            .then(1)
            .when(pl.col("diff_kwh") < -band)
            .then(-1)
            .otherwise(0)
            .cast(pl.Int8)
        )
        .select(list(out_schema))
        .cast(dict(out_schema))  # type: ignore[arg-type]
        .sort("parent", "window")
    )


def detect_balance(
    readings: pl.DataFrame | pl.LazyFrame | None,
    consumption: pl.DataFrame | pl.LazyFrame | None,
    meters: pl.DataFrame | None,
    *,
    params: BalanceParams = BalanceParams(),
    weather: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Main-vs-sub-meter imbalance findings (kind `balance`) per parent meter, as
    `FINDINGS_SCHEMA` sorted by (subject, start, rule); the subject is the main meter.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    >>> starts = [t + dt.timedelta(hours=i) for i in range(4)]
    >>> def rows(m, kwh):
    ...     return pl.DataFrame({"meter_id": m, "channel": "energy_import_kwh", "start": starts,
    ...         "end": [s + dt.timedelta(hours=1) for s in starts], "consumption": kwh,
    ...         "quality": "measured"})
    >>> c = pl.concat([rows("main", [10.0] * 4), rows("a", [5.0] * 4), rows("b", [3.0] * 4)])
    >>> meters = pl.DataFrame({"meter_id": ["main", "a", "b"],
    ...     "parent_meter_id": [None, "main", "main"]})
    >>> f = detect_balance(None, c, meters)
    >>> f.select("subject", "rule", "severity").row(0)
    ('main', 'balance.unmetered', 'critical')
    """
    del weather  # the detectors' common signature; balance needs no weather
    p = params
    win = balance_windows(readings, consumption, meters, params=p)
    if win.is_empty():
        return frames.empty(frames.FINDINGS_SCHEMA)
    same_parent = pl.col("parent") == pl.col("parent").shift(1)
    near = (pl.col("window") - pl.col("window").shift(1)) <= p.window + p.max_gap
    new = (pl.col("sign") != 0) & ~(
        (pl.col("sign") == pl.col("sign").shift(1)) & same_parent & near
    ).fill_null(value=False)
    runs = (
        win.with_columns(_run=new.cum_sum())
        .filter(pl.col("sign") != 0)
        .group_by("_run")
        .agg(
            pl.col("parent").first(),
            pl.col("sign").first(),
            pl.col("window").min().alias("start"),
            (pl.col("window").max() + p.window).alias("end"),
            pl.len().alias("windows"),
            _exact_sum(pl.col("main_kwh")).alias("main_total"),
            _exact_sum(pl.col("subs_kwh")).alias("subs_total"),
            pl.col("subs").first(),
            pl.struct("window", "main_kwh", "subs_kwh").sort_by("window").alias("series"),
        )
        .filter(pl.col("windows") >= p.min_windows)
    )
    if runs.is_empty():
        return frames.empty(frames.FINDINGS_SCHEMA)
    tree = _tree(meters)
    kids = tree.group_by("parent").agg(pl.col("meter_id").sort().alias("sub_meters"))
    share = 100.0 * (pl.col("main_total") - pl.col("subs_total")).abs() / pl.col("main_total")
    runs = (
        runs.join(kids, on="parent", how="left")
        .with_columns(
            subject=pl.col("parent"),
            share_pct=pl.when(pl.col("main_total") > 0).then(share),
        )
        .with_columns(
            severity=pl.when(
                pl.col("share_pct").is_null() | (pl.col("share_pct") >= p.critical_pct)
            )
            .then(pl.lit("critical"))
            .otherwise(pl.lit("warning"))
        )
        .sort("parent", "start")
    )
    parts = [
        common.to_findings(
            runs.filter(pl.col("sign") == 1),
            rule="balance.unmetered",
            kind="balance",
            evidence_of=lambda r: _evidence(
                r,
                p,
                "the main meter reads more than its sub-meters add up to, beyond the "
                "tolerance: losses, theft or an unmetered load",
            ),
        ),
        common.to_findings(
            runs.filter(pl.col("sign") == -1),
            rule="balance.subs_exceed_main",
            kind="balance",
            evidence_of=lambda r: _evidence(
                r,
                p,
                "the sub-meters add up to more than their main meter reads, beyond the "
                "tolerance: a wrong CT ratio, a load metered twice or a main under-reading",
            ),
        ),
    ]
    return common.concat_findings(parts)


def _evidence(r: dict[str, Any], p: BalanceParams, rule: str) -> dict[str, Any]:
    series = r["series"]
    return {
        "rule": rule,
        "main_kwh": r["main_total"],
        "subs_kwh": r["subs_total"],
        "difference_kwh": r["main_total"] - r["subs_total"],
        "difference_pct_of_main": r["share_pct"],
        "sub_meters": r["sub_meters"],
        "windows": r["windows"],
        "values": [
            {
                "window": common.iso(s["window"]),
                "main_kwh": s["main_kwh"],
                "subs_kwh": s["subs_kwh"],
            }
            for s in series[:_MAX_WINDOWS_IN_EVIDENCE]
        ],
        "values_truncated": len(series) > _MAX_WINDOWS_IN_EVIDENCE,
        "baseline": "main = sum of its sub-meters, within the tolerance band",
        "parameters": p.as_evidence(),
    }


__all__ = ["BalanceParams", "balance_windows", "detect_balance"]
