"""Electrical faults from a meter's instantaneous channels: CT reversal, phase loss, imbalance.

Three rules, each over one meter's instants (all channels read at one poll share a `ts`):

- `ct_reversal.negative_power` (kind `ct_reversal`): a current transformer fitted backwards
  makes its phase's active power negative, and when the reversed phases carry most of the load
  the export register grows. On a meter with no generation behind it (see `GENERATION_LOADS`
  and the optional `generation` column of `meters`) either sign is a wiring fault: an instant
  counts when any of `power_w`, `power_l1_w`..`power_l3_w` is below `-negative_w`, or the
  export register grew by more than `export_kwh` since the meter's previous reading.
- `phase_loss.voltage` (kind `phase_loss`): on a three-phase meter, one or two phase voltages
  below `loss_fraction` x the meter's nominal (its median phase voltage over the input) while
  another phase stays above `normal_fraction` x nominal (a blown fuse, a broken conductor; a
  dead meter or a zero read has every phase at zero and does not count).
- `voltage_imbalance.nema` (kind `voltage_imbalance`): the NEMA MG-1 / IEEE 1159 "line voltage
  unbalance rate", max |V_i - mean(V)| / mean(V) over the three phase-to-neutral magnitudes,
  above `imbalance_pct`. GB/T 15543 defines unbalance as the negative- to positive-sequence
  ratio, which needs phase angles meters do not report; for the few-percent unbalance of a
  supply the two agree closely, so its limits are used: 2 % (normal, warning) and 4 %
  (short-time, critical). Instants with a lost phase are left to the phase-loss rule.

An instant that holds the condition starts or extends a run; an instant that does not ends it,
and so does a silence longer than `max_gap` (instants with the channels missing are skipped,
not counted against the run). A run becomes a finding once it lasts `min_duration` (from its
first to its last instant, plus one cadence step) over at least `min_readings` instants.

A fourth, defensive rule, `negative_consumption.interval`, reports any consumption interval
below zero (the consumption step promises none; if one appears it is a bug worth an alarm).
Raw counter drops are the consumption step's own `unexplained_drop` events, not repeated here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import polars as pl

from analytics import frames
from analytics.detectors import common

GENERATION_LOADS: Final = frozenset({"pv", "solar", "generation", "generator", "chp", "battery"})

_POWER: Final = ("power_w", "power_l1_w", "power_l2_w", "power_l3_w")
_VOLTS: Final = ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v")
_COUNTERS: Final = ("energy_export_kwh", "energy_import_kwh")
_CHANNELS: Final = (*_POWER, *_VOLTS, *_COUNTERS)
_SHIFT: Final = 1 << 34  # key = meter code * _SHIFT + unix seconds (good to year 2514)


@dataclass(frozen=True, slots=True)
class ElectricalParams:
    """Thresholds of the electrical rules (see the module docstring)."""

    negative_w: float = 2.0  # W below zero a power reading must go to count as reversed
    export_kwh: float = 0.0  # export register growth (kWh) between readings that counts
    loss_fraction: float = 0.2  # a phase below this x nominal voltage is lost
    normal_fraction: float = 0.8  # ... while another stays above this x nominal
    imbalance_pct: float = 2.0  # GB/T 15543 normal limit (warning)
    imbalance_critical_pct: float = 4.0  # GB/T 15543 short-time limit (critical)
    min_duration: dt.timedelta = dt.timedelta(minutes=30)
    imbalance_min_duration: dt.timedelta = dt.timedelta(hours=1)
    min_readings: int = 2
    max_gap: dt.timedelta = dt.timedelta(hours=1)

    def as_evidence(self) -> dict[str, Any]:
        return {
            k: (v.total_seconds() if isinstance(v, dt.timedelta) else v)
            for k, v in asdict(self).items()
        }


def meter_codes(lf: pl.LazyFrame, column: str = "meter_id") -> pl.Expr:
    """An integer code per meter id, cheap for the simulator's Enum ids (their physical
    codes) and a Categorical cast for plain strings; only used inside a step, never output."""
    dtype = lf.collect_schema()[column]
    if isinstance(dtype, pl.Enum | pl.Categorical):
        return pl.col(column).to_physical().cast(pl.UInt64)
    return pl.col(column).cast(pl.String).cast(pl.Categorical).to_physical().cast(pl.UInt64)


def wide_instants(readings: pl.DataFrame | pl.LazyFrame, channels: Sequence[str]) -> pl.DataFrame:
    """One row per (meter, instant) with a column per wanted channel, sorted by meter then
    time on one integer key (meter code x 2**34 + unix seconds), so rules can
    walk each meter's instants with shifts instead of a multi-key sort.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    >>> r = pl.DataFrame({"meter_id": ["m", "m", "m"], "channel": ["power_w", "voltage_l1_v",
    ...     "power_w"], "ts": [t, t, t + dt.timedelta(minutes=15)], "value": [5.0, 230.0, 6.0],
    ...     "quality": ["good"] * 3})
    >>> wide_instants(r, ["power_w", "voltage_l1_v"]).select("meter_id", "power_w",
    ...     "voltage_l1_v").rows()
    [('m', 5.0, 230.0), ('m', 6.0, None)]
    """
    lf = readings.lazy()
    schema = lf.collect_schema()
    code = meter_codes(lf)
    wanted = list(channels)
    chan_type = schema["channel"]
    if isinstance(chan_type, pl.Enum):  # compare in the enum itself: no string cast per row
        wanted = [c for c in wanted if c in set(chan_type.categories.to_list())]
    secs = pl.col("ts").cast(frames.TS).dt.epoch("s").cast(pl.UInt64)
    long = lf.filter(pl.col("channel").is_in(wanted)).with_columns(
        key=code * _SHIFT + secs, _code=code
    )
    # One pivot on the integer key, the cheapest way found to go wide (a group-by with one
    # filtered aggregation per channel cost 2.8x the CPU on 12 M readings).
    wide = (
        long.select(
            "key",
            pl.col("channel").cast(pl.String),
            pl.col("value").cast(pl.Float64).fill_nan(None),
        )
        .collect()
        .pivot(on="channel", index="key", values="value", aggregate_function="first")
    )
    meter_type = schema["meter_id"]
    if isinstance(meter_type, pl.Enum):
        names = meter_type.categories
        ids = pl.DataFrame(
            {"_code": pl.int_range(names.len(), eager=True).cast(pl.UInt64), "meter_id": names}
        )
    else:
        ids = long.group_by("_code").agg(pl.col("meter_id").first().cast(pl.String)).collect()
    missing = [c for c in channels if c not in wide.columns]
    return (
        wide.with_columns(
            *(pl.lit(None, pl.Float64).alias(c) for c in missing),
            _code=pl.col("key") // _SHIFT,
            ts=pl.from_epoch((pl.col("key") % _SHIFT).cast(pl.Int64), "s").dt.replace_time_zone(
                "UTC"
            ),
        )
        .join(ids, on="_code", how="left")
        .select("key", "meter_id", pl.col("ts").cast(frames.TS), *channels)
        .sort("key")
    )


def _generation_meters(meters: pl.DataFrame | None) -> pl.Series:
    if meters is None or meters.is_empty():
        return pl.Series("meter_id", [], pl.String)
    gen = pl.lit(value=False)
    if "load" in meters.columns:
        gen = gen | pl.col("load").cast(pl.String).str.to_lowercase().is_in(GENERATION_LOADS)
    if "generation" in meters.columns:
        gen = gen | pl.col("generation").fill_null(value=False)
    return meters.filter(gen)["meter_id"].cast(pl.String)


def condition_runs(
    wide: pl.DataFrame,
    condition: pl.Expr,
    *,
    max_gap: dt.timedelta,
    aggs: Sequence[pl.Expr] = (),
) -> pl.DataFrame:
    """Runs of instants where `condition` holds, per meter, on a frame sorted by `key`.

    Instants where the condition is null (channels missing) are dropped first, so they neither
    extend nor break a run; a false instant, another meter or a silence longer than `max_gap`
    does break it. Returns `meter_id, start, end, readings, step` (the meter's median cadence)
    and the extra `aggs` evaluated over each run's instants.
    """
    df = wide.with_columns(_cond=condition).filter(pl.col("_cond").is_not_null())
    step = df.group_by("meter_id").agg(step=pl.col("ts").diff().median())
    code = pl.col("key") // _SHIFT
    boundary = pl.col("_cond") & (
        ~pl.col("_cond").shift(1).fill_null(value=False)
        | (code != code.shift(1)).fill_null(value=True)
        | (pl.col("ts").diff() > max_gap).fill_null(value=True)
    )
    return (
        df.with_columns(_run=boundary.cum_sum())
        .filter(pl.col("_cond"))
        .group_by("_run")
        .agg(
            pl.col("meter_id").first(),
            pl.col("ts").min().alias("start"),
            pl.col("ts").max().alias("end"),
            pl.len().alias("readings"),
            *aggs,
        )
        .drop("_run")
        .join(step, on="meter_id", how="left")
        .with_columns(pl.col("step").fill_null(dt.timedelta(0)))
    )


def _sustained(runs: pl.DataFrame, min_duration: dt.timedelta, min_readings: int) -> pl.DataFrame:
    lasting = (pl.col("end") - pl.col("start") + pl.col("step")) >= min_duration
    return runs.filter(lasting & (pl.col("readings") >= min_readings))


def _findings(runs: pl.DataFrame, rule: str, kind: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Findings from runs (meter_id, start, end) and, per run, its severity and evidence."""
    if runs.is_empty():
        return frames.empty(frames.FINDINGS_SCHEMA)
    df = runs.select(
        pl.col("meter_id").alias("subject"),
        "start",
        "end",
        pl.Series("severity", [r["severity"] for r in rows], pl.String),
        pl.int_range(pl.len()).alias("_i"),
    )
    return common.to_findings(
        df, rule=rule, kind=kind, evidence_of=lambda r: rows[r["_i"]]["evidence"]
    )


def _ct_reversal(wide: pl.DataFrame, generation: pl.Series, p: ElectricalParams) -> pl.DataFrame:
    thr = -p.negative_w
    consumer = wide.filter(~pl.col("meter_id").is_in(generation.implode()))
    # Export growth since the meter's previous instant with an export reading; a counter that
    # went down (reset, replacement) is the consumption step's business, not growth.
    exp = consumer.filter(pl.col("energy_export_kwh").is_not_null())
    exp = exp.with_columns(
        _exp_d=pl.when((pl.col("key") // _SHIFT) == (pl.col("key") // _SHIFT).shift(1))
        .then(pl.col("energy_export_kwh").diff())
        .otherwise(None)
    ).select("key", "_exp_d")
    df = consumer.join(exp, on="key", how="left", maintain_order="left")
    negatives = [pl.col(c) < thr for c in _POWER]
    any_neg = pl.any_horizontal(negatives)  # null only when every power channel is missing
    grew = pl.col("_exp_d") > p.export_kwh
    cond = pl.when(any_neg | grew.fill_null(value=False)).then(True).otherwise(any_neg)
    cond = pl.when(any_neg.is_null() & pl.col("_exp_d").is_null()).then(None).otherwise(cond)
    runs = condition_runs(
        df,
        cond,
        max_gap=p.max_gap,
        aggs=[
            *(pl.col(c).min().alias(f"min_{c}") for c in _POWER),
            *((pl.col(c) < thr).sum().alias(f"neg_{c}") for c in _POWER),
            # whole micro-kWh: an integer sum is the same in any order the group-by adds it
            (
                (pl.col("_exp_d").clip(lower_bound=0.0) * 1e6).round().cast(pl.Int64).sum() / 1e6
            ).alias("export_kwh"),
        ],
    )
    runs = _sustained(runs, p.min_duration, p.min_readings).sort("meter_id", "start")
    rows = []
    for r in runs.iter_rows(named=True):
        phases = [i for i in (1, 2, 3) if (r[f"neg_power_l{i}_w"] or 0) > 0]
        net_negative = (r["neg_power_w"] or 0) > 0 or r["export_kwh"] > p.export_kwh
        rows.append(
            {
                "severity": "critical" if net_negative else "warning",
                "evidence": {
                    "rule": "a consumer meter's active power below zero, or its export "
                    "register growing: a current transformer fitted backwards",
                    "reversed_phases": phases,
                    "min_power_w": {c: r[f"min_{c}"] for c in _POWER if r[f"min_{c}"] is not None},
                    "negative_readings": {c: r[f"neg_{c}"] for c in _POWER if r[f"neg_{c}"]},
                    "export_growth_kwh": r["export_kwh"],
                    "readings": r["readings"],
                    "baseline": "no generation on this meter: power >= 0, export flat",
                    "parameters": {
                        "negative_w": p.negative_w,
                        "export_kwh": p.export_kwh,
                        "min_duration_s": p.min_duration.total_seconds(),
                        "min_readings": p.min_readings,
                    },
                },
            }
        )
    return _findings(runs, "ct_reversal.negative_power", "ct_reversal", rows)


def _voltage_rules(wide: pl.DataFrame, p: ElectricalParams) -> tuple[pl.DataFrame, pl.DataFrame]:
    three = wide.filter(pl.any_horizontal(pl.col(c).is_not_null() for c in _VOLTS[1:]))
    if three.is_empty():
        empty = frames.empty(frames.FINDINGS_SCHEMA)
        return empty, empty
    vmax = pl.max_horizontal(*_VOLTS)
    nominal = three.group_by("meter_id").agg(nominal_v=pl.concat_list(*_VOLTS).explode().median())
    df = three.join(nominal, on="meter_id", how="left", maintain_order="left")
    low = [pl.col(c) < p.loss_fraction * pl.col("nominal_v") for c in _VOLTS]
    complete = pl.all_horizontal(pl.col(c).is_not_null() for c in _VOLTS)
    lost = pl.any_horizontal(low) & (vmax > p.normal_fraction * pl.col("nominal_v"))
    loss_cond = pl.when(complete).then(lost).otherwise(None)
    loss_runs = condition_runs(
        df,
        loss_cond,
        max_gap=p.max_gap,
        aggs=[
            *(pl.col(c).max().alias(f"max_{c}") for c in _VOLTS),
            *(pl.col(c).min().alias(f"min_{c}") for c in _VOLTS),
            *(lo.sum().alias(f"low_{c}") for lo, c in zip(low, _VOLTS, strict=True)),
            pl.col("nominal_v").first(),
        ],
    )
    loss_runs = _sustained(loss_runs, p.min_duration, p.min_readings).sort("meter_id", "start")
    rows = []
    for r in loss_runs.iter_rows(named=True):
        lost_phases = [i + 1 for i, c in enumerate(_VOLTS) if r[f"low_{c}"]]
        rows.append(
            {
                "severity": "critical",
                "evidence": {
                    "rule": "a phase voltage near zero while another phase is normal",
                    "lost_phases": lost_phases,
                    "min_voltage_v": {c: r[f"min_{c}"] for c in _VOLTS},
                    "max_voltage_v": {c: r[f"max_{c}"] for c in _VOLTS},
                    "baseline": {"nominal_v": r["nominal_v"]},
                    "readings": r["readings"],
                    "parameters": {
                        "loss_fraction": p.loss_fraction,
                        "normal_fraction": p.normal_fraction,
                        "min_duration_s": p.min_duration.total_seconds(),
                        "min_readings": p.min_readings,
                    },
                },
            }
        )
    loss = _findings(loss_runs, "phase_loss.voltage", "phase_loss", rows)

    mean = pl.mean_horizontal(*_VOLTS)
    dev = pl.max_horizontal(*((pl.col(c) - mean).abs() for c in _VOLTS))
    unbalance = 100.0 * dev / mean
    healthy = ~pl.any_horizontal(low)
    imb_cond = pl.when(complete & healthy).then(unbalance > p.imbalance_pct).otherwise(None)
    imb_runs = condition_runs(
        df.with_columns(_unb=pl.when(complete & healthy).then(unbalance)),
        imb_cond,
        max_gap=p.max_gap,
        aggs=[
            pl.col("_unb").max().alias("max_pct"),
            pl.col("_unb").median().alias("median_pct"),
            *(pl.col(c).median().alias(f"med_{c}") for c in _VOLTS),
        ],
    )
    imb_runs = _sustained(imb_runs, p.imbalance_min_duration, p.min_readings)
    imb_runs = imb_runs.sort("meter_id", "start")
    rows = []
    for r in imb_runs.iter_rows(named=True):
        critical = r["median_pct"] >= p.imbalance_critical_pct
        rows.append(
            {
                "severity": "critical" if critical else "warning",
                "evidence": {
                    "rule": "NEMA MG-1 voltage unbalance max|V-mean|/mean above the GB/T 15543 "
                    "limit",
                    "unbalance_pct": {"max": r["max_pct"], "median": r["median_pct"]},
                    "median_voltage_v": {c: r[f"med_{c}"] for c in _VOLTS},
                    "readings": r["readings"],
                    "baseline": {"limit_pct": p.imbalance_pct},
                    "parameters": {
                        "imbalance_pct": p.imbalance_pct,
                        "imbalance_critical_pct": p.imbalance_critical_pct,
                        "min_duration_s": p.imbalance_min_duration.total_seconds(),
                        "min_readings": p.min_readings,
                    },
                },
            }
        )
    return loss, _findings(imb_runs, "voltage_imbalance.nema", "voltage_imbalance", rows)


def _negative_consumption(consumption: pl.DataFrame | pl.LazyFrame | None) -> pl.DataFrame:
    if consumption is None:
        return frames.empty(frames.FINDINGS_SCHEMA)
    neg = consumption.lazy().filter(pl.col("consumption") < 0).collect()
    if neg.is_empty():
        return frames.empty(frames.FINDINGS_SCHEMA)
    neg = neg.sort("meter_id", "channel", "start")
    rows = [
        {
            "severity": "critical",
            "evidence": {
                "rule": "an interval's consumption below zero (the consumption step promises none)",
                "channel": r["channel"],
                "consumption": r["consumption"],
                "baseline": "consumption >= 0",
                "parameters": {},
            },
        }
        for r in neg.iter_rows(named=True)
    ]
    runs = neg.select("meter_id", "start", pl.col("end"))
    return _findings(runs, "negative_consumption.interval", "negative_consumption", rows)


def detect_electrical(
    readings: pl.DataFrame | pl.LazyFrame,
    consumption: pl.DataFrame | pl.LazyFrame | None = None,
    meters: pl.DataFrame | None = None,
    *,
    params: ElectricalParams = ElectricalParams(),
    weather: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """CT reversal, phase loss, voltage imbalance (and any negative consumption interval), as
    `FINDINGS_SCHEMA` sorted by (subject, start, rule). See the module docstring for the rules.

    `readings` in `READINGS_SCHEMA` (the simulator's Enum columns are fine); `consumption` in
    `CONSUMPTION_SCHEMA` or None; `meters` with `meter_id` and optionally `load` /
    `generation` to exempt meters with generation behind them from the reversal rule.

    >>> import datetime as dt
    >>> t0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    >>> ts = [t0 + dt.timedelta(minutes=15 * i) for i in range(4)]
    >>> r = pl.DataFrame({"meter_id": "m1", "channel": "power_w", "ts": ts,
    ...     "value": [120.0, -130.0, -125.0, -128.0], "quality": "good"})
    >>> f = detect_electrical(r)
    >>> f.select("subject", "rule", "start", "severity").rows()  # doctest: +NORMALIZE_WHITESPACE
    [('m1', 'ct_reversal.negative_power',
      datetime.datetime(2026, 1, 5, 0, 15, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 'critical')]
    """
    del weather  # the detectors' common signature; the electrical rules need no weather
    wide = wide_instants(readings, _CHANNELS)
    generation = _generation_meters(meters)
    ct = _ct_reversal(wide, generation, params)
    loss, imbalance = _voltage_rules(wide, params)
    neg = _negative_consumption(consumption)
    return common.concat_findings([ct, loss, imbalance, neg])


__all__ = [
    "GENERATION_LOADS",
    "ElectricalParams",
    "condition_runs",
    "detect_electrical",
    "meter_codes",
    "wide_instants",
]
