"""Water leaks: flow that does not stop at night, or does not stop at all.

Two rules over each water meter's flow (the `water_flow_m3h` readings, or - for a meter without
them - the rate of its `water_volume_m3` consumption intervals):

- `leak.night_minimum`: the lowest flow seen in the local night window (default 02:00-05:00,
  in the project's zone) is at or above the threshold on at least `nights` consecutive nights.
  A household's night minimum is zero even when someone gets up for a glass of water or runs
  the dishwasher at 3 am: one use does not hold the flow up for three hours. A running toilet
  or a dripping pipe does;
- `leak.continuous_flow`: the flow never drops below the threshold for `continuous_hours`
  hours - a leak found within a day, before the second night.

The threshold is `min_flow_m3h` (default 10 L/h, above a household's quantised night flow of
zero and below a running toilet's ~30 L/h), raised to `peer_ratio` x the night minimum typical
of the meter's peers (the median over water meters of the same project and load that night):
an office building's water never stops at night, so its meters are held to their own level
rather than to zero.

Evidence carries the nightly minima, the threshold and how it was set, and the excess volume
the leak costs a day.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from analytics.detectors.common import (
    concat_findings,
    iso,
    meter_zones,
    severity,
    sort_streams,
    to_findings,
    with_local_clock,
    zones_of,
)
from analytics.frames import FINDINGS_SCHEMA, empty

FLOW = "water_flow_m3h"
VOLUME = "water_volume_m3"


@dataclass(frozen=True, slots=True)
class LeakParams:
    """Thresholds of the leak rules (flows in m3/h, local hours of the night window)."""

    night_start_hour: int = 2
    night_end_hour: int = 5
    nights: int = 2
    min_flow_m3h: float = 0.01
    peer_ratio: float = 2.0
    min_peers: int = 3
    min_night_samples: int = 3
    continuous_hours: float = 24.0
    critical_flow_m3h: float = 0.1  # a burst rather than a drip
    critical_nights: int = 7


def detect_leak(
    readings: pl.DataFrame,
    consumption: pl.DataFrame | None,
    meters: pl.DataFrame,
    *,
    params: LeakParams = LeakParams(),
    weather: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Leak findings (`FINDINGS_SCHEMA`) of the water meters in `meters`, from their flow
    readings (or their consumption's rate). `weather` is not used.

    >>> import datetime as dt
    >>> t = [dt.datetime(2026, 1, 5, 16, tzinfo=dt.UTC) + dt.timedelta(hours=h)
    ...     for h in range(72)]  # three days from local midnight (Asia/Shanghai)
    >>> ids = ["leaky", "dry-1", "dry-2", "dry-3"]
    >>> readings = pl.DataFrame({"meter_id": [m for m in ids for _ in t],
    ...     "channel": "water_flow_m3h", "ts": t * 4,
    ...     "value": [0.03] * 72 + [0.0] * 216, "quality": "good"})
    >>> meters = pl.DataFrame({"meter_id": ids, "project": "p", "kind": "water",
    ...     "load": "household", "time_zone": "Asia/Shanghai"})
    >>> detect_leak(readings, None, meters).select("subject", "rule", "severity").rows()
    [('leaky', 'leak.continuous_flow', 'warning'), ('leaky', 'leak.night_minimum', 'warning')]
    """
    del weather
    flows = _flows(readings, consumption, meters)
    if flows.height == 0:
        return empty(FINDINGS_SCHEMA)
    flows = with_local_clock(flows, zones_of(meters), lambda local: [local.alias("local")])
    nights = _night_minima(flows, params)
    if nights.height == 0:
        return empty(FINDINGS_SCHEMA)
    nights = _thresholds(nights, params)
    return concat_findings(
        [_night_findings(nights, params), _continuous_findings(flows, nights, params)]
    )


def _flows(
    readings: pl.DataFrame, consumption: pl.DataFrame | None, meters: pl.DataFrame
) -> pl.DataFrame:
    """`meter_id, ts, flow` (m3/h) of water meters, with their project, load and zone."""
    info = meter_zones(meters).filter(pl.col("kind").fill_null("water") == "water")
    read = (
        readings.filter(pl.col("channel") == FLOW)  # enum or string, compared as it is
        .filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
        .filter(pl.col("quality").is_in(["good", "clock_suspect"]) | pl.col("quality").is_null())
        .select(pl.col("meter_id").cast(pl.String), "ts", pl.col("value").alias("flow"))
    )
    parts = [read]
    if consumption is not None and consumption.height:
        have = read.get_column("meter_id").unique().implode()
        hours = (pl.col("end") - pl.col("start")).dt.total_seconds() / 3600.0
        rate = (
            consumption.filter(
                (pl.col("channel") == VOLUME) & ~pl.col("meter_id").cast(pl.String).is_in(have)
            )
            .filter(hours > 0)
            .select(
                pl.col("meter_id").cast(pl.String),
                pl.col("start").alias("ts"),
                (pl.col("consumption") / hours).alias("flow"),
            )
        )
        parts.append(rate)
    flows = (
        pl.concat(parts)
        .filter(pl.col("flow").is_not_null() & pl.col("flow").is_not_nan())  # unknown: no flow
        .join(info, on="meter_id", how="inner")
    )
    return sort_streams(flows, ["meter_id"])


def _night_minima(flows: pl.DataFrame, params: LeakParams) -> pl.DataFrame:
    """One row per (meter, local night): the lowest flow in the window and when it was seen."""
    start, end = params.night_start_hour, params.night_end_hour
    hour = pl.col("local").dt.hour()
    inside = (hour >= start) & (hour < end) if start < end else (hour >= start) | (hour < end)
    # the night is named by the local date its window ends on
    night = (pl.col("local") + pl.duration(hours=24 - end)).dt.date()
    return (
        flows.filter(inside)
        .group_by("meter_id", night.alias("night"))
        .agg(
            pl.col("project").first(),
            pl.col("load").first(),
            pl.col("_stream").first(),
            pl.col("flow").min().alias("night_min"),
            pl.col("ts").min().alias("start"),
            pl.col("ts").max().alias("end"),
            pl.len().alias("samples"),
        )
        .filter(pl.col("samples") >= params.min_night_samples)
    )


def _thresholds(nights: pl.DataFrame, params: LeakParams) -> pl.DataFrame:
    """Each night's threshold: `min_flow_m3h`, or `peer_ratio` x the median night minimum of
    the meter's peers (project, load) that night when that is higher."""
    group = [pl.col("project").fill_null(""), pl.col("load").fill_null(""), pl.col("night")]
    peers = pl.len().over(group)
    peer_median = pl.col("night_min").median().over(group)
    nights = nights.with_columns(
        peers.alias("peers"),
        pl.when(peers >= params.min_peers).then(peer_median).alias("peer_median"),
    )
    threshold = pl.max_horizontal(
        pl.lit(params.min_flow_m3h), pl.col("peer_median").fill_null(0.0) * params.peer_ratio
    )
    return nights.with_columns(threshold.alias("threshold")).with_columns(
        (pl.col("night_min") >= pl.col("threshold")).alias("leaking")
    )


def _night_findings(nights: pl.DataFrame, params: LeakParams) -> pl.DataFrame:
    """Runs of at least `nights` consecutive leaking nights of a meter."""
    flagged = nights.filter(pl.col("leaking")).sort("_stream", "night")
    if flagged.height == 0:
        return empty(FINDINGS_SCHEMA)
    s = pl.col("_stream")
    gap = (pl.col("night") - pl.col("night").shift(1)).dt.total_days()
    new = (s != s.shift(1)).fill_null(True) | (gap != 1).fill_null(True)
    episodes = (
        flagged.with_columns(new.cast(pl.UInt32).cum_sum().alias("_run"))
        .group_by("_run", maintain_order=True)
        .agg(
            pl.col("meter_id").first(),
            pl.col("start").first(),
            pl.col("end").last(),
            pl.col("night").cast(pl.String),
            pl.col("night_min"),
            pl.col("threshold"),
            pl.col("peer_median").first(),
            pl.col("peers").first(),
            pl.col("end").get(params.nights - 1, null_on_oob=True).alias("detected_at"),
        )
        .filter(pl.col("night").list.len() >= params.nights)
    )
    excess = pl.col("night_min").list.min() - pl.col("peer_median").fill_null(0.0)
    critical = (pl.col("night").list.len() >= params.critical_nights) | (
        excess >= params.critical_flow_m3h
    )
    episodes = episodes.with_columns(
        severity(critical.cast(pl.Float64), 0.0, 1.0).alias("severity"), excess.alias("excess")
    )
    settings = _settings(params)

    def evidence(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "rule": "leak.night_minimum",
            "window_local": [params.night_start_hour, params.night_end_hour],
            "nights": row["night"],
            "night_min_m3h": row["night_min"],
            "threshold_m3h": row["threshold"],
            "peer_median_m3h": row["peer_median"],
            "peers": row["peers"],
            "excess_m3_per_day": max(float(row["excess"] or 0.0), 0.0) * 24.0,
            "detected_at": iso(row["detected_at"]),
            "params": settings,
        }

    return to_findings(
        episodes, rule="leak.night_minimum", kind="leak", evidence_of=evidence, subject="meter_id"
    )


def _continuous_findings(
    flows: pl.DataFrame, nights: pl.DataFrame, params: LeakParams
) -> pl.DataFrame:
    """Runs of flow at or above the meter's threshold lasting `continuous_hours` or more. The
    threshold is the highest one the meter's nights carried (its peers' level at the most)."""
    limit = nights.group_by("meter_id").agg(pl.col("threshold").max(), pl.col("peer_median").max())
    df = flows.join(limit, on="meter_id", how="left").with_columns(
        pl.col("threshold").fill_null(params.min_flow_m3h)
    )
    s = pl.col("_stream")
    flag = (pl.col("flow") >= pl.col("threshold")).fill_null(False)
    new = flag & ~(flag.shift(1, fill_value=False) & (s == s.shift(1)).fill_null(False))
    hours = params.continuous_hours
    episodes = (
        df.with_columns(flag.alias("_flag"), new.cast(pl.UInt32).cum_sum().alias("_run"))
        .filter(pl.col("_flag"))
        .group_by("_run", maintain_order=True)
        .agg(
            pl.col("meter_id").first(),
            pl.col("ts").first().alias("start"),
            pl.col("ts").last().alias("end"),
            pl.col("flow").min().alias("min_flow"),
            pl.col("flow").mean().alias("mean_flow"),
            pl.col("threshold").first(),
            pl.col("peer_median").first(),
            pl.len().alias("samples"),
        )
        .with_columns(((pl.col("end") - pl.col("start")).dt.total_seconds() / 3600).alias("hours"))
        .filter(pl.col("hours") >= hours)
        .with_columns(
            (pl.col("start") + pl.duration(seconds=int(hours * 3600))).alias("detected_at"),
            severity(
                pl.col("min_flow") - pl.col("peer_median").fill_null(0.0),
                0.0,
                params.critical_flow_m3h,
            ).alias("severity"),
        )
    )
    settings = _settings(params)

    def evidence(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "rule": "leak.continuous_flow",
            "hours": row["hours"],
            "min_flow_m3h": row["min_flow"],
            "mean_flow_m3h": row["mean_flow"],
            "threshold_m3h": row["threshold"],
            "peer_median_m3h": row["peer_median"],
            "samples": row["samples"],
            "detected_at": iso(row["detected_at"]),
            "params": settings,
        }

    return to_findings(
        episodes,
        rule="leak.continuous_flow",
        kind="leak",
        evidence_of=evidence,
        subject="meter_id",
    )


def _settings(params: LeakParams) -> dict[str, Any]:
    return asdict(params)
