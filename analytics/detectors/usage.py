"""Consumption spikes and drops against a robust same-hour baseline, weather-adjusted.

Each meter's consumption is summed per hour (UTC hours; their local hour of the week places
them) and compared with what that meter uses in the same local hour:

1. **baseline**: the median and MAD of the meter's consumption in the same hour of the week
   over the weeks in the input (at least `min_weeks` of them); with less history, the same
   hour of the day on days of the same kind (weekday / weekend; at least `min_days`), then on
   any day. The input window is the history: a job passes the preceding weeks with the new
   data, a file-mode run its whole export. The hour being judged is part of its own baseline
   (a median of five or more does not notice one outlier);
2. **weather**: when `weather` (project, ts, temperature_c) covers the meter's project, the
   baseline moves with the temperature: cooling and heating degree-hours (above
   `cooling_base_c`, below `heating_base_c`) against their median in the baseline's hours,
   times the meter's own sensitivity - a least-squares slope per meter over all its hours,
   fitted again without the hours it cannot explain (so anomalies do not teach it), and
   never negative. A heat wave raises
   an air conditioner's expected use instead of raising an alarm;
3. **rule**: an hour is part of a spike when it is at least `spike_ratio` times the expected
   use and `z_hour` robust sigmas above it (MAD x 1.4826, floored at `rel_floor` of the median
   and `abs_floor_share` of the meter's mean hour); the run of such hours is a spike when its
   excess is `z_spike` times the hours' combined sigma (evidence adds up over hours). An hour
   is a drop when it is `z_drop` sigmas below and at most `drop_ratio` of the expected use.
   At least `min_hours` consecutive such hours make a finding (a kettle or a shower is not a
   spike), and a spike must add up to `excess_mean_hours` of the meter's mean hourly use over
   them: a household's busy evening adds up to about four mean hours, a heater and a dryer
   left on add eight and more. Water is held to forty (two hours at twenty times the usual
   rate): its use is bursty by nature. A rise lasting more than `max_hours` is a change of
   level (a leak - the leak detector's -, a new tenant), not a spike;
4. **common mode**: an hour in which more than `common_share` of the meter's peers (same
   project and load) also rose `spike_ratio` above their baselines is not a spike of this
   meter - a hot afternoon starting every chiller in the building, a holiday. The evidence
   gives the share. Loads that follow the weather more than the clock (`weather_driven_loads`:
   HVAC) are judged for spikes only once there are weeks of history for a same-hour-of-week
   baseline (the same hour of other days cannot tell a hot afternoon from a fault), and not in
   an hour when another unit of the same project rose too.

Rules `spike.same_hour_of_week` / `spike.same_hour_of_day` and `drop.*` name the baseline used.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from analytics.detectors.common import (
    MAD_TO_SIGMA,
    US_PER_H,
    concat_findings,
    hour_of_week,
    is_weekend,
    iso,
    local_time,
    meter_zones,
    severity,
    sort_by_key,
    to_findings,
    zones_of,
)
from analytics.frames import FINDINGS_SCHEMA, TS, empty

_HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class UsageParams:
    """Thresholds of the spike/drop rules."""

    channels: tuple[str, ...] = field(default=("energy_import_kwh", "water_volume_m3"))
    min_weeks: int = 3
    min_days: int = 4
    z_hour: float = 2.0  # each hour of a spike
    z_spike: float = 5.0  # the spike as a whole: its excess against its hours' combined sigma
    spike_ratio: float = 2.0
    z_drop: float = 6.0
    drop_ratio: float = 0.25
    min_hours: int = 2
    max_hours: int = 12
    rel_floor: float = 0.1
    abs_floor_share: float = 0.1
    min_share_of_mean: float = 0.5  # a drop must lose at least this share of a mean hour
    # What a spike must add over its hours, in the meter's mean hours of use, per channel (a
    # household's kettle-and-oven evening adds up to ~4; water use is burstier still).
    excess_mean_hours: tuple[tuple[str, float], ...] = (
        ("energy_import_kwh", 6.0),
        ("water_volume_m3", 40.0),
    )
    default_excess_mean_hours: float = 6.0
    # ... and its highest hour must add this many mean hours by itself: a spike is a burst, not
    # a day of somewhat more (a weekend at home against a weekday baseline)
    peak_excess_mean_hours: float = 2.5
    cooling_base_c: float = 22.0
    heating_base_c: float = 15.0
    residual_clip: float = 3.0  # sigmas: what the weather slope may learn from one hour
    critical_excess_factor: float = 3.0  # critical: this many times the excess required
    # Common mode: when at least this share of a meter's peers (same project and load, at
    # least `min_peers` of them, the meter included) rise above `spike_ratio` in the same hour
    # (more than half: both of two HVAC units, not one of them), the weather or the
    # calendar did it, not the meter.
    common_share: float = 0.5
    min_peers: int = 2
    # Loads that follow the weather more than the clock (an HVAC plant's compressor stages
    # switch in on hot afternoons): judged for spikes only against a same-hour-of-week
    # baseline (weeks of history), never against the same hour of other days.
    weather_driven_loads: tuple[str, ...] = ("hvac",)
    dormant_hours: int = 24  # a spell without any use this long is left out of baselines


def detect_usage(
    readings: pl.DataFrame | None,
    consumption: pl.DataFrame,
    meters: pl.DataFrame,
    *,
    params: UsageParams = UsageParams(),
    weather: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Spike and drop findings (`FINDINGS_SCHEMA`) of `consumption` against each meter's
    robust same-hour baseline (weather-adjusted when `weather` is given). `readings` is not
    used: consumption is the measured quantity.

    >>> import datetime as dt
    >>> hours = [dt.datetime(2026, 1, 5, tzinfo=dt.UTC) + dt.timedelta(hours=h)
    ...     for h in range(24 * 14)]
    >>> use = [1.0 + 0.1 * (h % 3) + (5.0 if 200 <= h < 203 else 0.0) for h in range(len(hours))]
    >>> consumption = pl.DataFrame({"meter_id": "m1", "channel": "energy_import_kwh",
    ...     "start": hours, "end": [t + dt.timedelta(hours=1) for t in hours],
    ...     "consumption": use, "quality": "measured"})
    >>> meters = pl.DataFrame({"meter_id": ["m1"], "time_zone": ["UTC"]})
    >>> out = detect_usage(None, consumption, meters)
    >>> out.select("kind", "rule", pl.col("start").dt.strftime("%d %H:%M"), "severity").rows()
    [('spike', 'spike.same_hour_of_day', '13 08:00', 'warning')]
    """
    del readings
    hourly = _hourly(consumption, meters, params)
    if hourly.height == 0:
        return empty(FINDINGS_SCHEMA)
    hourly = _baselines(hourly, params)
    hourly = _weather_adjusted(hourly, weather, params)
    scored = _scored(hourly, params)
    return concat_findings([_findings(scored, "spike", params), _findings(scored, "drop", params)])


def _hourly(consumption: pl.DataFrame, meters: pl.DataFrame, params: UsageParams) -> pl.DataFrame:
    """Consumption per (meter, channel, UTC hour) with its local clock placement.

    The sums group by one Int64 (`_kh`: meter, channel and hour packed, in that order) instead
    of two strings and an instant, and the local clock is looked up per distinct (zone, hour) -
    a few hundred rows per zone - instead of converting every hour of every meter per zone.
    Empty (no columns) when there is nothing to sum."""
    channels = list(params.channels)
    # one lazy query: only the four columns needed are ever materialised, not a filtered copy
    # of the whole frame (its strings above all)
    parts = (
        consumption.lazy()
        .select("meter_id", "channel", "start", "consumption")
        .filter(
            pl.col("channel").is_in(channels)
            & pl.col("consumption").is_not_null()
            & pl.col("consumption").is_not_nan()
        )
        .select(
            pl.col("meter_id").cast(pl.String).cast(pl.Categorical).alias("_mid"),
            pl.col("channel")
            .cast(pl.String)
            .replace_strict(channels, list(range(len(channels))), return_dtype=pl.Int64)
            .alias("_c"),
            (pl.col("start").dt.epoch("us") // US_PER_H).alias("_h"),
            "consumption",
        )
        .collect()
    )
    if parts.height == 0:
        return pl.DataFrame()
    h0 = int(parts.get_column("_h").min())  # type: ignore[arg-type]
    span = int(parts.get_column("_h").max()) - h0 + 1  # type: ignore[arg-type]
    stream = pl.col("_mid").to_physical().cast(pl.Int64) * len(channels) + pl.col("_c")
    sums = (
        parts.group_by((stream * span + (pl.col("_h") - h0)).alias("_kh"))
        .agg(pl.col("_mid").first(), pl.col("consumption").sum().alias("use"))
        .sort("_kh")
    )
    # per meter (a few thousand rows): its project, kind, load and zone, and a zone code
    info = meter_zones(meters)
    zones = zones_of(meters)
    per_meter = (
        sums.select(pl.col("_mid").unique())
        .with_columns(pl.col("_mid").cast(pl.String).alias("meter_id"))
        .join(info, on="meter_id", how="left")
        .with_columns(
            pl.col("time_zone")
            .replace_strict(zones, list(range(len(zones))), default=-1, return_dtype=pl.Int64)
            .alias("_z"),
            # peers: same project and load (a missing one is a value of its own, "")
            (pl.col("project").fill_null("") + "\x00" + pl.col("load").fill_null(""))
            .rank("dense")
            .cast(pl.Int64)
            .alias("_pl"),
        )
    )
    df = sums.with_columns(
        (pl.col("_kh") // span).alias("_k"), (pl.col("_kh") % span + h0).alias("_h")
    ).join(per_meter, on="_mid", how="left")
    # the local clock of each distinct (zone, hour): a small table, joined back by one integer
    zh = ((pl.col("_z") + 1) * span + pl.col("_h") - h0).alias("_zh")
    df = df.with_columns(zh)
    clock = df.select(pl.col("_zh").unique()).with_columns(
        ((pl.col("_zh") % span + h0) * US_PER_H).cast(TS).alias("hour"),
        (pl.col("_zh") // span - 1)
        .replace_strict(list(range(len(zones))), zones, default=None, return_dtype=pl.String)
        .alias("_tz"),
    )
    local = local_time("hour", "_tz", zones)
    clock = clock.select(
        "_zh",
        hour_of_week(local).alias("how"),
        local.dt.hour().cast(pl.Int16).alias("hod"),
        is_weekend(local).alias("weekend"),
    )
    df = df.join(clock, on="_zh", how="left")
    # one Int64 per (peer group, channel, hour) for the common-mode test
    peer_hour = (pl.col("_pl") * len(channels) + pl.col("_k") % len(channels)) * span + (
        pl.col("_h") - h0
    )
    return df.select(
        "meter_id",
        pl.lit(pl.Series(channels, dtype=pl.String))
        .gather(pl.col("_k") % len(channels))
        .alias("channel"),
        (pl.col("_h") * US_PER_H).cast(TS).alias("hour"),
        "use",
        "project",
        "kind",
        "load",
        "time_zone",
        "how",
        "hod",
        "weekend",
        "_k",
        "_kh",
        (pl.col("_k") * 168 + pl.col("how")).alias("_kw"),
        (pl.col("_k") * 48 + pl.col("weekend").cast(pl.Int64) * 24 + pl.col("hod")).alias("_kk"),
        (pl.col("_k") * 24 + pl.col("hod")).alias("_kd"),
        peer_hour.alias("_ph"),
    )


def _hour_of(ts: pl.Expr) -> pl.Expr:
    """The UTC hour an instant falls in, by integer arithmetic on the stored microseconds
    (`dt.truncate` on zoned timestamps costs several times as much)."""
    hour_us = 3_600_000_000
    return ((ts.dt.epoch("us") // hour_us) * hour_us).cast(TS)


def _with_stats(df: pl.DataFrame, by: str, prefix: str) -> pl.DataFrame:
    """Median, MAD and count of `_base` (use outside dormant spells) per group of the Int64
    `by`, joined back. The groups are put in order first (one single-key sort of two
    columns): a group-by of many small groups runs several times faster on sorted keys, and
    the MAD then needs no second group-by of the whole frame."""
    ordered = df.select(by, "_base").sort(by).with_columns(pl.col(by).set_sorted())
    med = pl.col("_base").median().over(by)
    stats = (
        ordered.with_columns(med.alias("_med"))
        .group_by(by, maintain_order=True)
        .agg(
            pl.col("_med").first().alias(f"{prefix}_median"),
            pl.col("_base").count().alias(f"{prefix}_n"),
            (pl.col("_base") - pl.col("_med")).abs().median().alias(f"{prefix}_mad"),
        )
    )
    return df.join(stats, on=by, how="left", maintain_order="left")


def _baselines(hourly: pl.DataFrame, params: UsageParams) -> pl.DataFrame:
    """The baseline of each hour: same hour of week, else same hour of day and kind of day,
    else same hour of day; `baseline` names it, `median`, `mad`, `n` give it."""
    # Dormant spells - a day or more without any use (a vacant flat, a meter that stopped
    # counting, a CT reversed so the import register stands still) - are not the meter's
    # normal: in a baseline they would make every ordinary day before them look like a spike.
    df = sort_by_key(hourly, "_kh")  # one Int64: (meter, channel), then hour
    zero = pl.col("use") <= 0
    k = pl.col("_k")
    new = zero & ~(zero.shift(1, fill_value=False) & (k == k.shift(1)).fill_null(False))
    df = df.with_columns(new.cast(pl.UInt32).cum_sum().alias("_z"))
    spell = pl.when(zero).then(zero.cast(pl.Int64).sum().over("_z"))
    dormant = (spell >= params.dormant_hours).fill_null(False)
    df = df.with_columns(pl.when(dormant).then(None).otherwise(pl.col("use")).alias("_base")).drop(
        "_z"
    )
    df = _with_stats(df, "_kw", "w")
    df = _with_stats(df, "_kk", "k")
    df = _with_stats(df, "_kd", "d")
    df = df.join(
        df.group_by("_k").agg(pl.col("_base").mean().alias("mean_hour")), on="_k", how="left"
    )
    week = pl.col("w_n") >= params.min_weeks
    kind = pl.col("k_n") >= params.min_days
    day = pl.col("d_n") >= params.min_days

    def pick(name: str) -> pl.Expr:
        return (
            pl.when(week)
            .then(pl.col(f"w_{name}"))
            .when(kind)
            .then(pl.col(f"k_{name}"))
            .when(day)
            .then(pl.col(f"d_{name}"))
        )

    df = df.with_columns(
        pl.when(week)
        .then(pl.lit("same_hour_of_week"))
        .when(kind | day)
        .then(pl.lit("same_hour_of_day"))
        .alias("baseline"),
        pick("median").alias("median"),
        pick("mad").alias("mad"),
        pick("n").cast(pl.Int64).alias("n"),
        pl.when(week)
        .then(pl.lit("how"))
        .when(kind)
        .then(pl.lit("kind"))
        .when(day)
        .then(pl.lit("hod"))
        .alias("_level"),
    )
    scale = pl.max_horizontal(
        pl.col("mad") * MAD_TO_SIGMA,
        pl.col("median").abs() * params.rel_floor,
        pl.col("mean_hour").abs() * params.abs_floor_share,
    )
    return df.with_columns(scale.alias("scale")).drop(
        "w_median", "w_mad", "w_n", "k_median", "k_mad", "k_n", "d_median", "d_mad", "d_n", "_base"
    )


def _weather_adjusted(
    hourly: pl.DataFrame, weather: pl.DataFrame | None, params: UsageParams
) -> pl.DataFrame:
    """`expected` = baseline median, moved by the meter's degree-hour slopes when weather is
    known (`temperature_c`, `beta_cooling`, `beta_heating`, `weather_shift` explain it)."""
    plain = hourly.with_columns(
        pl.col("median").alias("expected"),
        pl.lit(None, pl.Float64).alias("temperature_c"),
        pl.lit(None, pl.Float64).alias("beta_cooling"),
        pl.lit(None, pl.Float64).alias("beta_heating"),
        pl.lit(0.0).alias("weather_shift"),
    )
    if weather is None or weather.height == 0:
        return plain
    temps = (
        weather.filter(pl.col("temperature_c").is_not_null())
        .group_by(pl.col("project").cast(pl.String), _hour_of(pl.col("ts").cast(TS)).alias("hour"))
        .agg(pl.col("temperature_c").mean())
    )
    # the fit works on a narrow frame (the wide hourly one, copied by every join, was this
    # detector's peak memory); its results are put beside the hourly rows, in their order
    narrow = hourly.select("_k", "project", "hour", "use", "median", "scale", "_level", "_kw",
                           "_kk", "_kd")  # fmt: skip
    df = narrow.join(temps, on=["project", "hour"], how="left", maintain_order="left")
    cdh = (pl.col("temperature_c") - params.cooling_base_c).clip(0.0, None)
    hdh = (params.heating_base_c - pl.col("temperature_c")).clip(0.0, None)
    key = ["_k"]
    # the baseline's own degree-hours: their median over the same hours the median came from
    slot = (
        pl.when(pl.col("_level") == "how")
        .then(pl.col("_kw") * 4)
        .when(pl.col("_level") == "kind")
        .then(pl.col("_kk") * 4 + 1)
        .otherwise(pl.col("_kd") * 4 + 2)
    )
    df = df.with_columns(cdh.alias("cdh"), hdh.alias("hdh"), slot.alias("_slot"))
    # many small groups: grouped on sorted keys (see `_with_stats`)
    own = (
        df.select("_slot", "cdh", "hdh")
        .sort("_slot")
        .with_columns(pl.col("_slot").set_sorted())
        .group_by("_slot", maintain_order=True)
        .agg(pl.col("cdh").median().alias("cdh_b"), pl.col("hdh").median().alias("hdh_b"))
    )
    df = df.join(own, on="_slot", how="left", maintain_order="left").with_columns(
        (pl.col("cdh") - pl.col("cdh_b")).alias("dc"),
        (pl.col("hdh") - pl.col("hdh_b")).alias("dh"),
    )
    dc, dh = pl.col("dc").fill_null(0.0), pl.col("dh").fill_null(0.0)
    resid = pl.col("use") - pl.col("median")
    usable = df.filter(pl.col("median").is_not_null())
    # Two passes: a least-squares fit, then the same fit without the hours it cannot explain
    # (beyond `residual_clip` sigmas: the anomalies themselves must not teach the slope).
    fit = _slopes(usable, key, resid, dc, dh)
    after = resid - pl.col("beta_cooling") * dc - pl.col("beta_heating") * dh
    inliers = usable.join(fit, on=key, how="left", maintain_order="left").filter(
        after.abs() <= params.residual_clip * pl.col("scale")
    )
    fit = _slopes(inliers.drop("beta_cooling", "beta_heating"), key, resid, dc, dh)
    df = df.join(fit, on=key, how="left", maintain_order="left")
    shift = pl.col("beta_cooling").fill_null(0.0) * dc + pl.col("beta_heating").fill_null(0.0) * dh
    adjusted = df.select(
        "temperature_c",
        "beta_cooling",
        "beta_heating",
        shift.alias("weather_shift"),
        (pl.col("median") + shift).clip(0.0, None).alias("expected"),
    )
    return hourly.hstack(adjusted.get_columns())


def _slopes(
    df: pl.DataFrame, key: list[str], resid: pl.Expr, dc: pl.Expr, dh: pl.Expr
) -> pl.DataFrame:
    """Per meter, the least-squares slopes of `resid` on cooling (`dc`) and heating (`dh`)
    degree-hour differences: the 2x2 normal equations from sums; a degenerate system (no
    spread in a term) falls back to a one-term fit, and slopes are never negative (more
    degree-hours never mean less use)."""
    sums = df.group_by(key).agg(
        (dc * dc).sum().alias("scc"),
        (dh * dh).sum().alias("shh"),
        (dc * dh).sum().alias("sch"),
        (resid * dc).sum().alias("src"),
        (resid * dh).sum().alias("srh"),
    )
    det = pl.col("scc") * pl.col("shh") - pl.col("sch") ** 2
    bc2 = pl.col("src") * pl.col("shh") - pl.col("srh") * pl.col("sch")
    bh2 = pl.col("srh") * pl.col("scc") - pl.col("src") * pl.col("sch")
    return sums.with_columns(
        pl.when(det > 1e-9)
        .then(bc2 / det)
        .when(pl.col("scc") > 1e-9)
        .then(pl.col("src") / pl.col("scc"))
        .otherwise(0.0)
        .clip(0.0, None)
        .alias("beta_cooling"),
        pl.when(det > 1e-9)
        .then(bh2 / det)
        .when(pl.col("shh") > 1e-9)
        .then(pl.col("srh") / pl.col("shh"))
        .otherwise(0.0)
        .clip(0.0, None)
        .alias("beta_heating"),
    ).select(*key, "beta_cooling", "beta_heating")


def _scored(hourly: pl.DataFrame, params: UsageParams) -> pl.DataFrame:
    z = (pl.col("use") - pl.col("expected")) / pl.col("scale")
    elevated = (pl.col("use") >= params.spike_ratio * pl.col("expected")).fill_null(False)
    # a peer counts as risen when its hour would pass a spike hour's tests and add a mean hour:
    # twice almost nothing (a lighting circuit's daytime standby) is not a rise
    risen = (
        elevated
        & (z >= params.z_hour)
        & (pl.col("use") - pl.col("expected") >= pl.col("mean_hour"))
    ).fill_null(False)
    peers = (
        hourly.filter(pl.col("median").is_not_null())
        .with_columns(risen.alias("_up"))
        .group_by("_ph")
        .agg(
            pl.len().alias("peers"),
            pl.col("_up").mean().alias("peers_up"),
            pl.col("_up").sum().alias("peers_risen"),
        )
    )
    weather_driven = pl.col("load").is_in(list(params.weather_driven_loads)).fill_null(False)
    # weather-driven units (one plant's chillers) rising with any other unit: the weather
    common = (
        (pl.col("peers") >= params.min_peers) & (pl.col("peers_up") > params.common_share)
    ) | (weather_driven & (pl.col("peers_risen") >= 2))
    short = (pl.col("baseline") != "same_hour_of_week") & pl.col("load").is_in(
        list(params.weather_driven_loads)
    ).fill_null(False)
    spike = (
        (z >= params.z_hour) & elevated & (pl.col("scale") > 0) & ~common.fill_null(False) & ~short
    )
    # A drop needs a baseline of its own kind of day: against all days' same hour, every
    # quiet weekend of an office would be one.
    drop = (
        (pl.col("_level") != "hod")
        & (z <= -params.z_drop)
        & (pl.col("use") <= params.drop_ratio * pl.col("expected"))
        & (pl.col("expected") - pl.col("use") >= params.min_share_of_mean * pl.col("mean_hour"))
        & (pl.col("scale") > 0)
    )
    return (
        hourly.filter(pl.col("median").is_not_null())
        .join(peers, on="_ph", how="left")
        .with_columns(
            z.alias("z"), spike.fill_null(False).alias("spike"), drop.fill_null(False).alias("drop")
        )
        .sort("_kh")  # hourly rows: a frame four times smaller than the intervals
    )


def _findings(scored: pl.DataFrame, kind: str, params: UsageParams) -> pl.DataFrame:
    flag = pl.col(kind)
    key = pl.col("_k")
    prev_hour = pl.col("hour").shift(1)
    contiguous = (key == key.shift(1)) & (pl.col("hour") - prev_hour == pl.duration(hours=1))
    new = flag & ~(flag.shift(1, fill_value=False) & contiguous.fill_null(False))
    episodes = (
        scored.with_columns(new.cast(pl.UInt32).cum_sum().alias("_run"))
        .filter(flag)
        .group_by("_run", maintain_order=True)
        .agg(
            pl.col("meter_id").first(),
            pl.col("channel").first(),
            pl.col("hour").first().alias("start"),
            (pl.col("hour").last() + pl.duration(hours=1)).alias("end"),
            pl.col("hour"),
            pl.col("use"),
            pl.col("expected"),
            pl.col("median"),
            pl.col("scale"),
            pl.col("z"),
            pl.col("n").min().alias("n"),
            pl.col("peers").max().alias("peers"),
            pl.col("peers_up").max().alias("peers_up"),
            pl.col("peers_risen").max().alias("peers_risen"),
            pl.col("mean_hour").first(),
            (pl.col("use") - pl.col("expected")).sum().alias("excess"),
            (pl.col("scale") ** 2).sum().sqrt().alias("sigma"),
            pl.col("baseline").first(),
            pl.col("temperature_c"),
            pl.col("weather_shift"),
            pl.col("beta_cooling").first(),
            pl.col("beta_heating").first(),
        )
        .filter(pl.col("use").list.len() >= params.min_hours)
    )
    need = pl.col("channel").replace_strict(
        dict(params.excess_mean_hours),
        default=params.default_excess_mean_hours,
        return_dtype=pl.Float64,
    ) * pl.col("mean_hour")
    if kind == "spike":
        peak = (pl.col("use") - pl.col("expected")).list.max()
        episodes = episodes.filter(
            (pl.col("excess") >= need)
            & (peak >= params.peak_excess_mean_hours * pl.col("mean_hour"))
            & (pl.col("excess") >= params.z_spike * pl.col("sigma"))
            & (pl.col("use").list.len() <= params.max_hours)
        )
    if episodes.height == 0:
        return empty(FINDINGS_SCHEMA)
    # how far beyond what the rule needs: the spike's excess, or a drop's lost share
    beyond = (
        pl.col("excess") / need
        if kind == "spike"
        else -pl.col("excess") / pl.col("expected").list.sum()
    )
    episodes = episodes.with_columns(
        need.alias("excess_needed"),
        severity(beyond, 0.0, params.critical_excess_factor if kind == "spike" else 0.9).alias(
            "severity"
        ),
        pl.col("hour").list.get(params.min_hours - 1).alias("detected_at"),
    )
    settings = asdict(params)
    settings["channels"] = list(params.channels)
    parts = []
    for baseline in ("same_hour_of_week", "same_hour_of_day"):
        subset = episodes.filter(pl.col("baseline") == baseline)
        if subset.height == 0:
            continue
        rule = f"{kind}.{baseline}"

        def evidence(row: dict[str, Any], rule: str = rule) -> dict[str, Any]:
            out: dict[str, Any] = {
                "rule": rule,
                "channel": row["channel"],
                "hours": [iso(h) for h in row["hour"]],
                "use": row["use"],
                "expected": row["expected"],
                "baseline_median": row["median"],
                "robust_sigma": row["scale"],
                "z": row["z"],
                "baseline_samples": row["n"],
                "excess": row["excess"],
                "excess_z": row["excess"] / row["sigma"] if row["sigma"] else None,
                "excess_needed": row["excess_needed"],
                "mean_hour": row["mean_hour"],
                "peers": row["peers"],
                "peers_elevated_share": row["peers_up"],
                "peers_risen": row["peers_risen"],
                "detected_at": iso(row["detected_at"] + _HOUR),
                "params": settings,
            }
            if row["beta_cooling"] is not None:
                out["weather"] = {
                    "temperature_c": row["temperature_c"],
                    "shift": row["weather_shift"],
                    "beta_cooling_per_degree_hour": row["beta_cooling"],
                    "beta_heating_per_degree_hour": row["beta_heating"],
                }
            return out

        parts.append(
            to_findings(subset, rule=rule, kind=kind, evidence_of=evidence, subject="meter_id")
        )
    return concat_findings(parts)
