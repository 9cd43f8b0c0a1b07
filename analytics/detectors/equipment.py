"""Equipment-failure warnings for pumps, lifts and HVAC units, from their own meter's power.

A unit wearing out shows in its electrical signature weeks before it stops: a worn impeller or
a fouled coil runs longer for the same work (energy and run time per cycle up), a waterlogged
pressure tank or a failing pressure switch starts the motor ever more often (short-cycling), a
sticking contactor or a failing drive draws more while idle (standby creeping up). Each is a
slow trend against the unit's own past, so each rule here is a robust trend test on one daily
figure of one unit, with a lead time: the days until the fitted trend reaches a failure level.

Per unit (meters with `load` in `EquipmentParams.loads`):

1. **States.** `power_w` above `off + on_fraction x (on - off)` is running, where `off` and
   `on` are the unit's `low_quantile` and `high_quantile` of power over the input. A unit whose
   spread `on - off` is under `min_swing_w` never cycles (a legitimately idle pump) and gets
   no cycle figures. A *start* is a running reading after a stopped one (no silence longer
   than `max_gap` between them).
2. **Daily figures** (local days of the meter's zone, days with at least `min_coverage` of
   their readings): `run_hours` (hours at full power a day: energy from the import counter, or
   `consumption` when given, above standby over `on - off`; the counter integrates, so it is
   exact however coarse the polling), `cycles` (starts a day), `energy_per_cycle` (kWh above
   standby per start), `run_time_per_cycle` (minutes per start) and `standby` (median stopped
   power). Days running less than `min_run_hours` are idle and are not trend points, so a
   pump that is simply not needed raises nothing.
3. **Which starts count.** A start can only be counted where the polling resolves runs:
   polling at most `max_cycle_step` apart (one minute resolves a pump running minutes at a
   time; fifteen minutes aliases a 14-minute cycle into a slow false one), and only in the
   local hours of day whose starts, over the first half of the days, were single-reading runs
   at most `max_single_share` of the time (night-time runs shorter than the polling are missed
   or caught by chance, which would pass for a change in cycling). The cycle figures use those
   hours only, the same hours every day. With coarse polling only `run_hours` and `standby`
   are judged.
4. **Weekly rhythm.** Demand differs on weekends (offices empty, homes full), so each figure is
   divided by its median over the unit's days of the same kind (weekday or weekend) before the
   trend is fitted: a weekend is compared with weekends, a weekday with weekdays.
5. **Trend or step.** Over the last `window_days` days with at least `min_days` points, one of:
   - a *trend*: the Theil-Sen slope (median of pairwise slopes, robust to odd days) with
     Kendall's tau = (rising pairs - falling pairs) / pairs >= `min_tau`, a t = slope x
     sqrt(sum (x - mean x)^2) / noise >= `min_t`, and a fitted rise (last day's fitted value
     over the first's) of at least the figure's `warn` level;
   - a *step* already taken: every day of the last quarter (at least 3 days) above every day
     of the first quarter, the medians `warn` apart and z >= `min_t` standard errors apart.
   `noise` is the day-to-day scatter (MAD of successive differences of the detrended values,
   / sqrt 2), at least `noise_floor` and at least the median of the units of the same load for
   that figure: a few quiet days do not make an ordinary wobble look significant. With fewer
   than `small_sample_days` + 2 days, `min_t` grows as sqrt(small_sample_days / (days - 2)).
6. **Lead time.** Days from the last day until the fitted line reaches the figure's `failure`
   level (documented defaults, in `FIGURES`: +50 % energy or run time per cycle, +50 % daily
   run hours, twice the starts, +50 % standby), 0 when it already has; severity `critical`
   when the lead time is under `critical_lead_days`, else `warning`. The warning levels (+20 %
   for the energy and time figures, +30 % starts, +20 % standby) sit well above the day-to-day
   scatter of healthy units (3-7 %) and well below the failure levels.

Which figures speak of wear depends on the unit (`figures_by_load`): a pump's starts, run time
and energy all do; a lift's starts are its trips and its run hours its traffic, so only the
energy and time per trip and standby are judged; an HVAC unit is not an on/off cycler (its
compressor stages follow the weather, and its lowest stage is no standby: a chiller's "off"
quantile is kilowatts), so no HVAC figure is judged by default until a staged-load model with
a degree-day adjustment exists (`figures_by_load` can switch figures on).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import polars as pl

from analytics import frames
from analytics.detectors import common
from analytics.detectors.common import MAD_TO_SIGMA, with_local_clock

# figure -> (rule, what it means, default warn rise, default failure rise)
FIGURES: Final[Mapping[str, tuple[str, str, float, float]]] = {
    "energy_per_cycle": (
        "degradation.energy_per_cycle",
        "energy per start above standby trending up (longer, harder runs for the same work)",
        0.2,
        0.5,
    ),
    "run_time_per_cycle": (
        "degradation.run_time_per_cycle",
        "run time per start trending up",
        0.2,
        0.5,
    ),
    "run_hours": (
        "degradation.run_hours",
        "daily run time (hours at full power, from the energy register) trending up",
        0.2,
        0.5,
    ),
    "cycles": (
        "degradation.short_cycling",
        "starts per day rising against the unit's own baseline (short-cycling)",
        0.3,
        1.0,
    ),
    "standby": (
        "degradation.standby_creep",
        "power while stopped creeping up",
        0.2,
        0.5,
    ),
}
_FIGURE_CODE: Final = {name: i for i, name in enumerate(FIGURES)}


@dataclass(frozen=True, slots=True)
class EquipmentParams:
    """Thresholds of the equipment rules (see the module docstring)."""

    loads: tuple[str, ...] = ("pump", "lift", "hvac")
    figures_by_load: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "pump": tuple(FIGURES),
            "lift": ("energy_per_cycle", "run_time_per_cycle", "standby"),
            "hvac": (),
        }
    )
    low_quantile: float = 0.05
    high_quantile: float = 0.95
    on_fraction: float = 0.5
    min_swing_w: float = 50.0
    min_coverage: float = 0.9
    min_run_hours: float = 0.25
    max_single_share: float = 0.25
    max_cycle_step: dt.timedelta = dt.timedelta(minutes=2)
    min_starts: int = 5  # a day with fewer counted starts has no cycle figures
    min_hour_starts: int = 3  # an hour of day is judged on at least this many starts
    window_days: int = 28
    min_days: int = 4
    min_tau: float = 0.4
    min_t: float = 4.0
    noise_floor: float = 0.01
    critical_lead_days: float = 7.0
    max_gap: dt.timedelta = dt.timedelta(hours=1)
    small_sample_days: int = 10
    warn: Mapping[str, float] = field(default_factory=lambda: {k: v[2] for k, v in FIGURES.items()})
    failure: Mapping[str, float] = field(
        default_factory=lambda: {k: v[3] for k, v in FIGURES.items()}
    )

    def as_evidence(self, figure: str) -> dict[str, Any]:
        out = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("warn", "failure", "max_gap", "max_cycle_step", "loads", "figures_by_load")
        }
        out["max_cycle_step_s"] = self.max_cycle_step.total_seconds()
        out["warn_rise"] = self.warn[figure]
        out["failure_rise"] = self.failure[figure]
        out["max_gap_s"] = self.max_gap.total_seconds()
        return out


_DAILY_FIELDS: dict[str, frames.DType] = {
    "meter_id": pl.String,
    "day": pl.Date,
    "weekend": pl.Boolean,
    "first_ts": frames.TS,
    "last_ts": frames.TS,
    **dict.fromkeys(FIGURES, pl.Float64),
}
_DAILY_SCHEMA: Final = pl.Schema(_DAILY_FIELDS)


def _exact_sum(x: pl.Expr, per_unit: float) -> pl.Expr:
    """Sum of `x` in whole 1/`per_unit` steps: integer sums do not depend on the order a parallel
    group-by adds them in, so the same readings give the same bits in any row order."""
    return (x * per_unit).round().cast(pl.Int64).sum() / per_unit


def _loads_judging(p: EquipmentParams, figure: str) -> list[str]:
    """The loads whose units are judged on `figure` (a load not in `figures_by_load`: all)."""
    return [load for load in p.loads if figure in p.figures_by_load.get(load, tuple(FIGURES))]


def _units(meters: pl.DataFrame | None, p: EquipmentParams) -> pl.DataFrame:
    """meter_id, subject (asset_id when the meters frame has one), time_zone, load."""
    if meters is None or "load" not in meters.columns:
        return pl.DataFrame(
            schema={
                "meter_id": pl.String,
                "subject": pl.String,
                "time_zone": pl.String,
                "load": pl.String,
            }
        )
    base = common.meter_zones(meters)
    asset = (
        meters.get_column("asset_id").cast(pl.String)
        if "asset_id" in meters.columns
        else meters.get_column("meter_id").cast(pl.String)
    )
    return (
        base.with_columns(subject=asset.fill_null(pl.col("meter_id")))
        .filter(pl.col("load").is_in(list(p.loads)))
        .select(
            "meter_id",
            "subject",
            "time_zone",
            "load",
        )
    )


def _stream(
    readings: pl.LazyFrame, channel: str, units: pl.DataFrame, zones: list[str]
) -> pl.DataFrame:
    """One channel of the units' readings, in (meter, time) order, with local day and weekend."""
    lf = (
        readings.filter(pl.col("channel") == channel)  # an enum compares without a string cast
        .filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
        .select(
            pl.col("meter_id").cast(pl.String),
            pl.col("ts").cast(frames.TS),
            pl.col("value").cast(pl.Float64),
        )
    )
    df = lf.join(units.lazy().select("meter_id", "time_zone"), on="meter_id").collect()
    df = common.sort_streams(df, ["meter_id"])
    return with_local_clock(
        df,
        zones,
        lambda local: [
            local.dt.date().alias("day"),
            common.is_weekend(local).alias("weekend"),
            local.dt.hour().alias("hod"),
        ],
    )


def _energy(
    readings: pl.LazyFrame,
    consumption: pl.DataFrame | pl.LazyFrame | None,
    units: pl.DataFrame,
    zones: list[str],
) -> pl.DataFrame:
    """Daily import energy (kWh) and the hours it covers, per meter and local day: from the
    consumption step when given, else from the import register's rises between readings."""
    if consumption is not None:
        c = (
            consumption.lazy()
            .filter(pl.col("channel") == "energy_import_kwh")
            .select(
                pl.col("meter_id").cast(pl.String),
                pl.col("start").cast(frames.TS).alias("ts"),
                pl.col("consumption").alias("kwh"),
                ((pl.col("end") - pl.col("start")).dt.total_seconds() / 3600.0).alias("hours"),
            )
            .join(units.lazy().select("meter_id", "time_zone"), on="meter_id")
            .collect()
        )
        c = with_local_clock(c, zones, lambda local: [local.dt.date().alias("day")])
    else:
        reg = _stream(readings, "energy_import_kwh", units, zones)
        same = pl.col("_stream") == pl.col("_stream").shift(1)
        # The interval ends at this reading; its energy belongs to the (local) day it started
        # in: the previous reading's.
        c = reg.with_columns(
            kwh=pl.when(same).then(pl.col("value").diff()),
            hours=pl.when(same).then(pl.col("ts").diff().dt.total_seconds() / 3600.0),
            day=pl.col("day").shift(1),
        ).filter((pl.col("kwh") >= 0) & (pl.col("hours") > 0))
    return c.group_by("meter_id", "day").agg(
        _exact_sum(pl.col("kwh"), 1e6).alias("energy_kwh"),
        _exact_sum(pl.col("hours"), 3.6e6).alias("energy_hours"),
    )


def daily_figures(
    readings: pl.DataFrame | pl.LazyFrame,
    consumption: pl.DataFrame | pl.LazyFrame | None,
    meters: pl.DataFrame | None,
    *,
    params: EquipmentParams | None = None,
) -> pl.DataFrame:
    """The daily figures each equipment rule trends, one row per (unit, complete local day):
    `meter_id, day, weekend, first_ts, last_ts` and `run_hours, cycles, energy_per_cycle,
    run_time_per_cycle, standby` (null where not observable; see the module docstring).

    >>> import datetime as dt
    >>> t0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    >>> ts = [t0 + dt.timedelta(minutes=m) for m in range(1440)]
    >>> on = [(m % 20) < 5 for m in range(1440)]  # 5 minutes on in every 20, 72 starts
    >>> r = pl.DataFrame({"meter_id": "p", "channel": "power_w", "ts": ts,
    ...     "value": [2020.0 if x else 20.0 for x in on], "quality": "good"})
    >>> meters = pl.DataFrame({"meter_id": ["p"], "load": ["pump"], "time_zone": ["UTC"]})
    >>> daily_figures(r, None, meters).select("cycles", "run_time_per_cycle", "standby").row(0)
    (72.0, 5.0, 20.0)
    """
    p = params or EquipmentParams()
    units = _units(meters, p)
    if units.is_empty():
        return pl.DataFrame(schema=_DAILY_SCHEMA)
    zones = common.zones_of(units)
    lf = readings.lazy()
    power = _stream(lf, "power_w", units, zones)
    if power.is_empty():
        return pl.DataFrame(schema=_DAILY_SCHEMA)
    v = pl.col("value")
    # Per-unit levels, cadence and the last day of the first half of its days: one group-by
    # joined back (cheaper than window expressions over millions of rows).
    days = pl.col("day").unique().sort()
    per_unit = power.group_by("_stream").agg(
        off=v.quantile(p.low_quantile),
        on=v.quantile(p.high_quantile),
        step=pl.col("ts").diff().median(),
        half_day=days.gather((days.len() + 1) // 2 - 1),
    )
    power = power.join(per_unit, on="_stream", how="left", maintain_order="left")
    swing = pl.col("on") - pl.col("off")
    running = (swing >= p.min_swing_w) & (v > pl.col("off") + p.on_fraction * swing)
    same = (pl.col("_stream") == pl.col("_stream").shift(1)).fill_null(value=False)
    close = (pl.col("ts").diff() <= p.max_gap).fill_null(value=False)
    power = power.with_columns(running=running).with_columns(
        start=pl.col("running")
        & ~(pl.col("running").shift(1) & same & close).fill_null(value=False)
    )
    # Starts are only countable where runs span several readings. Which local hours resolve
    # them is judged on the first half of the days, per unit: an hour whose runs are mostly a
    # single reading (or missed between readings) is left out of the cycle figures, so a night
    # of sub-minute runs aliasing against one-minute polling does not pass for short-cycling.
    # A run is a single reading when the next reading does not continue it.
    continued = (
        pl.col("running").shift(-1)
        & (pl.col("_stream").shift(-1) == pl.col("_stream"))
        & ((pl.col("ts").shift(-1) - pl.col("ts")) <= p.max_gap)
    ).fill_null(value=False)
    power = power.with_columns(
        single=pl.col("start") & ~continued,
        first_half=pl.col("day") <= pl.col("half_day").list.first(),
    )
    hours = (
        power.filter(pl.col("start") & pl.col("first_half"))
        .group_by("meter_id", "hod")
        .agg(
            resolved=(pl.col("single").mean() <= p.max_single_share)
            & (pl.len() >= p.min_hour_starts)
            & (pl.col("step").first() <= p.max_cycle_step)
        )
    )
    power = power.join(hours, on=["meter_id", "hod"], how="left").with_columns(
        pl.col("resolved").fill_null(value=False)
    )
    res = pl.col("resolved")
    step_h = pl.col("step").dt.total_seconds() / 3600.0
    daily = power.group_by("meter_id", "day").agg(
        pl.col("weekend").first(),
        pl.col("ts").min().alias("first_ts"),
        pl.col("ts").max().alias("last_ts"),
        pl.len().alias("n"),
        pl.col("step").first(),
        pl.col("running").sum().alias("on_n"),
        (pl.col("start") & res).sum().alias("starts"),
        (pl.col("running") & res).sum().alias("on_resolved"),
        _exact_sum(((v - pl.col("off")) * step_h).filter(pl.col("running") & res), 1e3).alias(
            "excess_wh"
        ),
        res.any().alias("resolved"),
        v.filter(pl.col("running")).median().alias("on_w"),
        v.filter(~pl.col("running")).median().alias("off_w"),
        (_exact_sum(v, 1e3) / pl.len()).alias("mean_w"),
        (swing.first() >= p.min_swing_w).alias("cycling"),
        pl.col("on").first().alias("on_all"),
        pl.col("off").first().alias("off_all"),
    )
    expected = 86_400.0 / pl.col("step").dt.total_seconds()
    daily = daily.filter(pl.col("n") >= p.min_coverage * expected)
    energy = _energy(lf, consumption, units, zones)
    daily = daily.join(energy, on=["meter_id", "day"], how="left")
    on_w = pl.coalesce("on_w", "on_all")
    off_w = pl.coalesce("off_w", "off_all")
    mean_w = (
        pl.when(pl.col("energy_hours") >= 0.9 * pl.col("n") * expected.pow(-1) * 24.0)
        .then(1000.0 * pl.col("energy_kwh") / pl.col("energy_hours"))
        .otherwise(pl.col("mean_w"))
    )
    duty = ((mean_w - off_w) / (on_w - off_w)).clip(0.0, 1.0)
    run_hours = pl.when(pl.col("cycling")).then(24.0 * duty)
    daily = daily.join(units.select("meter_id", "load"), on="meter_id").with_columns(
        run_hours=run_hours
    )
    active = pl.col("run_hours") >= p.min_run_hours
    counted = active & pl.col("resolved") & (pl.col("starts") >= p.min_starts)
    starts = pl.col("starts").cast(pl.Float64)
    step_min = pl.col("step").dt.total_seconds() / 60.0
    return (
        daily.with_columns(
            cycles=pl.when(counted).then(starts),
            energy_per_cycle=pl.when(counted).then(pl.col("excess_wh") / 1000.0 / starts),
            run_time_per_cycle=pl.when(counted).then(pl.col("on_resolved") * step_min / starts),
            standby=pl.when(pl.col("cycling") & (pl.col("on_n") < pl.col("n"))).then(off_w),
        )
        .with_columns(run_hours=pl.when(active).then(pl.col("run_hours")))
        .with_columns(
            pl.when(pl.col("load").is_in(_loads_judging(p, f))).then(pl.col(f)).alias(f)
            for f in FIGURES
        )
        .select(list(_DAILY_SCHEMA))
        .cast(_DAILY_FIELDS)  # type: ignore[arg-type]
        .sort("meter_id", "day")
    )


def _trends(daily: pl.DataFrame, p: EquipmentParams) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Theil-Sen slope, Kendall tau and fitted levels per (meter, figure), vectorised: the
    pairwise slopes come from one self-join on an integer (meter, figure) key."""
    long = (
        daily.unpivot(
            index=["meter_id", "day", "weekend", "first_ts", "last_ts"],
            on=list(FIGURES),
            variable_name="figure",
            value_name="raw",
        )
        .filter(pl.col("raw").is_not_null() & pl.col("raw").is_finite() & (pl.col("raw") > 0))
        .with_columns(x=pl.col("day").cast(pl.Int32))
    )
    last = pl.col("x").max().over("meter_id")
    long = long.filter(pl.col("x") > last - p.window_days)
    norm = pl.col("raw") / pl.col("raw").median().over("meter_id", "figure", "weekend")
    long = long.with_columns(
        y=norm,
        gid=common.codes("meter_id", pl.String()) * len(FIGURES)
        + pl.col("figure").replace_strict(_FIGURE_CODE, return_dtype=pl.Int64),
    )
    long = long.filter(pl.col("y").count().over("gid") >= p.min_days)
    if long.is_empty():
        return long, pl.DataFrame()
    pts = long.select("gid", "x", "y")
    pairs = (
        pts.join(pts, on="gid", suffix="_b")
        .filter(pl.col("x") < pl.col("x_b"))
        .with_columns(s=(pl.col("y_b") - pl.col("y")) / (pl.col("x_b") - pl.col("x")))
    )
    fit = pairs.group_by("gid").agg(
        slope=pl.col("s").median(),
        tau=(pl.col("s").sign().sum() / pl.len()),
    )
    rank = pl.col("x").rank("ordinal").over("gid")
    n = pl.len().over("gid")
    edge = pl.max_horizontal(pl.lit(3, pl.UInt32), n // 4)
    long = long.with_columns(early=rank <= edge, late=rank > n - edge).join(
        fit.select("gid", "slope"), on="gid"
    )
    y = pl.col("y")
    resid = y - pl.col("slope") * pl.col("x")
    groups = long.group_by("gid").agg(
        pl.col("meter_id").first(),
        pl.col("figure").first(),
        pl.col("x").min().alias("x0"),
        pl.col("x").max().alias("x1"),
        pl.len().alias("days"),
        y.filter("early").median().alias("early_median"),
        y.filter("early").max().alias("early_max"),
        y.filter("late").median().alias("late_median"),
        y.filter("late").min().alias("late_min"),
        pl.struct("day", "raw", "y").sort_by("x").alias("series"),
        # Day-to-day noise from successive differences of the detrended values: robust to the
        # trend itself and to one step.
        (MAD_TO_SIGMA * resid.sort_by("x").diff().abs().median() / math.sqrt(2.0)).alias("noise"),
        ((pl.col("x") - pl.col("x").mean()) ** 2).sum().alias("sxx"),
        edge.first().alias("edge"),
    )
    icpt = (
        pts.join(fit, on="gid")
        .group_by("gid")
        .agg(intercept=(pl.col("y") - pl.col("slope") * pl.col("x")).median())
    )
    out = groups.join(fit, on="gid").join(icpt, on="gid")
    long = long.drop("slope")
    return long.select("gid", "x", "y", "first_ts"), out.with_columns(
        first=pl.col("intercept") + pl.col("slope") * pl.col("x0"),
        now=pl.col("intercept") + pl.col("slope") * pl.col("x1"),
        noise=pl.col("noise").clip(lower_bound=p.noise_floor),
    )


def detect_equipment(
    readings: pl.DataFrame | pl.LazyFrame,
    consumption: pl.DataFrame | pl.LazyFrame | None,
    meters: pl.DataFrame | None,
    *,
    params: EquipmentParams = EquipmentParams(),
    weather: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Equipment-failure warnings (kind `degradation`, one rule per figure, `lead_time_days`
    set) for the pumps, lifts and HVAC units in `meters`, as `FINDINGS_SCHEMA` sorted by
    (subject, start, rule). See the module docstring for the figures and the trend test.

    >>> import datetime as dt
    >>> t0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    >>> ts = [t0 + dt.timedelta(minutes=m) for m in range(14 * 1440)]
    >>> period = [20 - (m // 1440) for m in range(14 * 1440)]  # starts come ever sooner
    >>> on = [m % per < 5 for m, per in enumerate(period)]
    >>> r = pl.DataFrame({"meter_id": "p", "channel": "power_w", "ts": ts,
    ...     "value": [2020.0 if x else 20.0 for x in on], "quality": "good"})
    >>> meters = pl.DataFrame({"meter_id": ["p"], "load": ["pump"], "time_zone": ["UTC"]})
    >>> f = detect_equipment(r, None, meters)
    >>> cycling = f.filter(pl.col("rule") == "degradation.short_cycling")
    >>> cycling.select("subject", "severity", "lead_time_days").rows()  # already 2.8x the starts
    [('p', 'critical', 0.0)]
    """
    del (
        weather
    )  # the detectors' common signature; no HVAC degree-day adjustment yet (HVAC: standby only)
    p = params
    daily = daily_figures(readings, consumption, meters, params=p)
    if daily.is_empty():
        return frames.empty(frames.FINDINGS_SCHEMA)
    points, trends = _trends(daily, p)
    if trends.is_empty():
        return frames.empty(frames.FINDINGS_SCHEMA)
    warn = pl.col("figure").replace_strict(dict(p.warn), return_dtype=pl.Float64)
    fail = pl.col("figure").replace_strict(dict(p.failure), return_dtype=pl.Float64)
    # Two ways to rise: a steady trend (Theil-Sen with a consistent tau), or a step that has
    # already happened (the last quarter of the days all above the first quarter); the first
    # catches a ramp early, the second a unit that got worse and stayed there.
    trend_rise = pl.col("now") / pl.col("first") - 1.0
    level_rise = pl.col("late_median") / pl.col("early_median") - 1.0
    # Significance against day-to-day noise: the slope's t (its standard error as in least
    # squares, with the robust noise) and the step's z (two medians of `edge` days). The noise
    # is the unit's own, but never below the median of its kind (same load, same figure): a
    # few quiet days must not make an ordinary wobble look significant. Fewer days than
    # `small_sample_days` + 2 ask for a proportionally larger t, as a t-distribution would.
    loads = _units(meters, p).select("meter_id", "load")
    trends = trends.join(loads, on="meter_id", how="left").with_columns(
        noise=pl.max_horizontal("noise", pl.col("noise").median().over("load", "figure"))
    )
    min_t = (
        p.min_t
        * (p.small_sample_days / (pl.col("days") - 2).clip(lower_bound=1))
        .clip(lower_bound=1.0)
        .sqrt()
    )
    t = pl.col("slope") * pl.col("sxx").sqrt() / pl.col("noise")
    z = (pl.col("late_median") - pl.col("early_median")) / (
        1.25 * pl.col("noise") * (2.0 / pl.col("edge")).sqrt()
    )
    trending = (
        (pl.col("first") > 0)
        & (pl.col("slope") > 0)
        & (pl.col("tau") >= p.min_tau)
        & (t >= min_t)
        & (trend_rise >= warn)
    )
    stepped = (pl.col("late_min") > pl.col("early_max")) & (level_rise >= warn) & (z >= min_t)
    hits = trends.with_columns(trending=trending, stepped=stepped, t=t, z=z).filter(
        pl.col("trending") | pl.col("stepped")
    )
    if hits.is_empty():
        return frames.empty(frames.FINDINGS_SCHEMA)
    base = pl.when("trending").then("first").otherwise("early_median")
    level = pl.when("trending").then("now").otherwise("late_median")
    hits = hits.with_columns(base=base, level=level).with_columns(
        rise=pl.col("level") / pl.col("base") - 1.0,
        warn_rise=warn,
        failure_rise=fail,
    )
    lead = (
        pl.when(pl.col("rise") >= pl.col("failure_rise"))
        .then(0.0)
        .when(pl.col("slope") > 0)
        .then((pl.col("base") * (1.0 + pl.col("failure_rise")) - pl.col("level")) / pl.col("slope"))
    )
    hits = hits.with_columns(lead_time_days=lead)
    units = _units(meters, p).select("meter_id", "subject")
    ends = daily.group_by("meter_id").agg(
        pl.col("first_ts").max().alias("last_day_ts"), pl.col("last_ts").max().alias("end")
    )
    hits = hits.join(units, on="meter_id").join(ends, on="meter_id")
    # The finding starts on the first day the figure stood at the warning level.
    starts = (
        points.join(hits.select("gid", "base", "warn_rise"), on="gid")
        .filter(pl.col("y") >= pl.col("base") * (1.0 + pl.col("warn_rise")))
        .group_by("gid")
        .agg(pl.col("first_ts").min().alias("start"))
    )
    hits = hits.join(starts, on="gid", how="left").with_columns(
        start=pl.coalesce("start", "last_day_ts"),
        severity=pl.when(pl.col("lead_time_days") < p.critical_lead_days)
        .then(pl.lit("critical"))
        .otherwise(pl.lit("warning")),
    )
    parts = [
        common.to_findings(
            hits.filter(pl.col("figure") == figure).sort("subject"),
            rule=rule,
            kind="degradation",
            evidence_of=functools.partial(_evidence, figure=figure, meaning=meaning, p=p),
        )
        for figure, (rule, meaning, _, _) in FIGURES.items()
    ]
    return common.concat_findings(parts)


def _evidence(
    r: Mapping[str, Any], figure: str, meaning: str, p: EquipmentParams
) -> dict[str, Any]:
    return {
        "rule": meaning,
        "figure": figure,
        "values": [
            {"day": s["day"].isoformat(), "value": s["raw"], "vs_same_daytype": s["y"]}
            for s in r["series"]
        ],
        "baseline": {
            "level_then": r["base"],
            "level_now": r["level"],
            "method": "Theil-Sen trend of the daily values over the median of the same day type"
            if r["trending"]
            else "median of the last quarter of the days against the first quarter, every "
            "day of the last above every day of the first",
            "fitted_first": r["first"],
            "fitted_now": r["now"],
        },
        "slope_per_day": r["slope"],
        "tau": r["tau"],
        "noise": r["noise"],
        "t": r["t"],
        "step_z": r["z"],
        "rise": r["rise"],
        "days": r["days"],
        "failure_level": r["base"] * (1.0 + r["failure_rise"]),
        "lead_time_days": r["lead_time_days"],
        "parameters": p.as_evidence(figure),
    }


__all__ = ["FIGURES", "EquipmentParams", "daily_figures", "detect_equipment"]
