"""Stuck meters: a counter that stops moving while the load it measures does not.

A flat counter alone proves nothing - a vacant flat, a water meter at night, a lighting circuit
in daylight all leave their register still. A flat counter is a finding only with evidence that
it should have moved:

- `stuck.related_channel`: the meter's own instantaneous channel shows use over the flat
  period - active power for an energy register, flow for a water register, or current (times
  the nominal voltage) when there is no power channel. The energy (or volume) that channel
  integrates to over the flat period must be at least `min_steps` register steps (the smallest
  move the register has made, so float32 registers far from zero are not held to a resolution
  they do not have) and at least `min_expected`;
- `stuck.history`: for a meter without such a channel, its own history says it should move:
  its register stood still in fewer than `history_quantile` of its other hours, and its low
  hourly rate (that quantile of its moving hours) over the flat period is again at least
  `min_steps` register steps. A meter that is often idle (a vacant flat, a plant that runs
  on demand) is never reported this way.

A flat spell shorter than `min_hours` is not looked at. Import registers only (energy, water,
heat and gas imported): an export or reactive register stands still on most meters by design.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

import polars as pl

from analytics.detectors.common import (
    codes,
    concat_findings,
    grouped_in_time,
    iso,
    severity,
    sort_by_key,
    to_findings,
)
from analytics.frames import FINDINGS_SCHEMA, empty

COUNTERS: Final = ("energy_import_kwh", "water_volume_m3", "heat_energy_kwh", "gas_volume_m3")
# Related channels, in order of preference, as (channel, factor to the counter's unit per hour).
# Current is turned into power at a nominal 230 V and unity power factor: an upper bound of the
# energy, good enough to say "the load was on", and said so in the evidence.
RELATED: Final = {
    "energy_import_kwh": (("power_w", 1e-3), ("current_l1_a", 0.23)),
    "heat_energy_kwh": (("power_w", 1e-3),),
    "water_volume_m3": (("water_flow_m3h", 1.0),),
    "gas_volume_m3": (),
}
_GOOD: Final = ("good", "clock_suspect")


@dataclass(frozen=True, slots=True)
class StuckParams:
    """Thresholds of the stuck-meter rules (`min_expected` in the counter's unit)."""

    min_hours: float = 2.0
    min_polls: int = 4
    min_steps: float = 10.0
    min_expected: float = 0.05
    history_quantile: float = 0.1
    critical_hours: float = 24.0


def detect_stuck(
    readings: pl.DataFrame,
    consumption: pl.DataFrame | None,
    meters: pl.DataFrame,
    *,
    params: StuckParams = StuckParams(),
    weather: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Stuck-meter findings (`FINDINGS_SCHEMA`) from `readings`: flat import registers whose
    meter shows (or, by its history, must have) use. `consumption`, `meters` and `weather`
    are not needed: the register's own steps are the evidence.

    >>> import datetime as dt
    >>> t = [dt.datetime(2026, 1, 5, tzinfo=dt.UTC) + dt.timedelta(minutes=15 * i)
    ...     for i in range(24)]
    >>> energy = [100.0 + 0.1 * min(i, 8) for i in range(24)]  # frozen from 02:00
    >>> readings = pl.DataFrame({"meter_id": "m1",
    ...     "channel": ["energy_import_kwh"] * 24 + ["power_w"] * 24, "ts": t * 2,
    ...     "value": energy + [400.0] * 24, "quality": "good"})
    >>> out = detect_stuck(readings, None, pl.DataFrame({"meter_id": ["m1"]}))
    >>> out.select("rule", pl.col("start").dt.strftime("%H:%M"), "severity").rows()
    [('stuck.related_channel', '02:00', 'warning')]
    """
    del consumption, meters, weather
    narrow = _narrow(readings)
    if narrow.height == 0:
        return empty(FINDINGS_SCHEMA)
    channel = narrow.get_column("_k") // (1 << 32) % _WIDTH
    is_counter = channel.is_in(_COUNTER_CODES)
    del channel
    # Split by channel family without copying when there is one family only (the common
    # export of registers alone), and let go of the whole before the spells are sorted.
    if bool(is_counter.all()):
        counters, others = narrow, narrow.clear()
    else:
        counters, others = narrow.filter(is_counter), narrow.filter(~is_counter)
    del narrow, is_counter
    flats, counters = _flat_spells(readings, counters, params)
    if flats.height == 0:
        return empty(FINDINGS_SCHEMA)
    # only meters with a flat spell need their related channel integrated (each meter's
    # integral is its own: leaving the others out changes no bit of it)
    related = _related_rates(others, flats.get_column("_m").unique())
    del others
    with_rel = _expected_from_related(flats, related)
    del related
    found_rel = with_rel.filter(pl.col("rate_channel").is_not_null())
    no_rel = with_rel.filter(pl.col("rate_channel").is_null()).drop(
        "rate_channel", "expected", "mean_rate", "rate_samples"
    )
    hist = _expected_from_history(no_rel, counters, params)
    return concat_findings([_related_findings(found_rel, params), _history_findings(hist, params)])


# Every channel the rules read, coded by its index here: the readings are brought down to
# integers once (`_narrow`), and names come back only for the few findings.
_CHANNELS: Final = tuple(sorted(set(COUNTERS) | {r for v in RELATED.values() for r, _ in v}))
_WIDTH: Final = len(_CHANNELS)
_COUNTER_CODES: Final = tuple(_CHANNELS.index(c) for c in COUNTERS)
_LOW: Final = (1 << 32) - 1


def _key(m: pl.Expr, s: pl.Expr) -> pl.Expr:
    return m.cast(pl.Int64) * (1 << 32) + s


def _channel_code(dtype: pl.DataType) -> pl.Expr:
    """Each row's channel as its index in `_CHANNELS` (Int8; null for a channel the rules do not
    read): for an enum a gather by category index (no text, no hashing per row), else one
    lookup per row (of the rows `_wanted` kept: a lookup costs three times an `is_in`)."""
    col = pl.col("channel")
    if isinstance(dtype, pl.Enum):
        cats = dtype.categories.to_list()
        lut = pl.Series(
            [_CHANNELS.index(c) if c in _CHANNELS else None for c in cats], dtype=pl.Int8
        )
        return pl.lit(lut).gather(col.to_physical())
    names = {c: i for i, c in enumerate(_CHANNELS)}
    return col.cast(pl.String).replace_strict(names, default=None, return_dtype=pl.Int8)


def _wanted(dtype: pl.DataType) -> pl.Expr:
    """Whether a row's channel is one the rules read."""
    if isinstance(dtype, pl.Enum):
        return _channel_code(dtype).is_not_null()
    return pl.col("channel").cast(pl.String).is_in(_CHANNELS)


def _narrow(readings: pl.DataFrame) -> pl.DataFrame:
    """The readings the rules use (their channels, a value, good quality) as three columns:
    `_row` (the row in `readings`, to fetch names and instants for the few findings), `_k`
    (stream code - meter code x `_WIDTH` + channel code - in the high 32 bits, seconds since the
    first such reading in the low 32) and `value`. No text is carried: a wide frame of string
    keys, copied per step, was most of the detector's memory."""
    schema = readings.schema
    # Enum and string columns alike, without casting millions of values to text
    good = pl.col("quality").is_in(_GOOD) | pl.col("quality").is_null()
    us = pl.col("ts").dt.epoch("us")
    return (
        readings.lazy()
        .with_row_index("_row")
        .filter(
            _wanted(schema["channel"])
            & pl.col("value").is_not_null()
            & pl.col("value").is_not_nan()
            & good
        )
        .select(
            "_row",
            _key(
                codes("meter_id", schema["meter_id"]) * _WIDTH
                + _channel_code(schema["channel"]).cast(pl.Int64),
                (us - us.min()) // 1_000_000,
            ).alias("_k"),
            "value",
        )
        .collect()
    )


def _flat_spells(
    readings: pl.DataFrame, counters: pl.DataFrame, params: StuckParams
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Spells where an import register repeats its value: `_m, _st, meter_id, channel, a, b`
    (the reading where the value was first seen and the last one that still showed it, in
    seconds since the frame's start), `end`, `start`, `value`, `polls`, `resolution` (smallest
    positive step); and `counters` in stream and time order."""
    stream = counters.get_column("_k") // (1 << 32)
    if not grouped_in_time(stream, counters.get_column("_k") & _LOW):
        counters = counters.sort("_k", maintain_order=True)
    del stream
    st = pl.col("_k") // (1 << 32)
    same = (st == st.shift(1)).fill_null(False)
    step = pl.when(same).then(pl.col("value") - pl.col("value").shift(1))
    lf = counters.lazy()
    resolution = (
        lf.select(st.alias("_st"), step.alias("step"))
        .filter(pl.col("step") > 0)
        .group_by("_st")
        .agg(pl.col("step").min().alias("resolution"))
    )
    # A spell is a run of contiguous flat rows of one stream: only the positions of its first
    # and last rows are taken (two masks, in the same order), and the few columns a spell needs
    # are gathered there - no frame of every flat reading, no group-by over it.
    flat = (step == 0).fill_null(False)
    first = flat & ~(flat.shift(1, fill_value=False) & same)
    ends_here = flat & ~(flat.shift(-1, fill_value=False) & same.shift(-1, fill_value=False))
    i0, i1, res = pl.collect_all(
        [
            lf.select(pl.arg_where(first).alias("i")),
            lf.select(pl.arg_where(ends_here).alias("i")),
            resolution,
        ]
    )
    at0, at1 = i0.get_column("i"), i1.get_column("i")
    k = counters.get_column("_k")
    found = pl.DataFrame(
        {
            "_st": k.gather(at0) // (1 << 32),
            # the reading before the spell's first flat one: where the value was first seen
            "a": k.gather(at0 - 1) & _LOW,
            "b": k.gather(at1) & _LOW,
            "_last": counters.get_column("_row").gather(at1),
            "value": counters.get_column("value").gather(at0),
            "polls": (at1 - at0 + 2).cast(pl.UInt32),
        }
    ).filter(
        ((pl.col("b") - pl.col("a")) >= params.min_hours * 3600)
        & (pl.col("polls") >= params.min_polls)
    )
    last = found.get_column("_last")
    found = found.with_columns(
        (pl.col("_st") // _WIDTH).alias("_m"),
        readings.get_column("meter_id").gather(last).alias("meter_id"),
        pl.col("_st")
        .mod(_WIDTH)
        .replace_strict(dict(enumerate(_CHANNELS)), return_dtype=pl.String)
        .alias("channel"),
        readings.get_column("ts").gather(last).alias("end"),
    ).drop("_last")
    out = found.join(res, on="_st", how="left").with_columns(
        (pl.col("end") - pl.duration(seconds=pl.col("b") - pl.col("a"))).alias("start")
    )
    return out, counters


def _related_rates(rel: pl.DataFrame, meters: pl.Series) -> pl.DataFrame:
    """Per meter (of the meter codes `meters`), the preferred related channel's rate (counter
    unit per hour, negatives as 0) and its running integrals at each reading: `_m,
    rate_channel` (a `_CHANNELS` index), `_k`, `rate, integral, integral_left`, from the
    narrow readings of the related channels."""
    names = [r for v in RELATED.values() for r, _ in v]
    factor = {_CHANNELS.index(r): f for v in RELATED.values() for r, f in v}
    rank = [_CHANNELS.index(r) for r in dict.fromkeys(names)]
    rel = rel.filter((pl.col("_k") // (1 << 32) // _WIDTH).is_in(meters.implode()))
    if rel.height == 0:
        return pl.DataFrame(
            schema={
                "_m": pl.Int64,
                "rate_channel": pl.Int64,
                "_k": pl.Int64,
                "rate": pl.Float64,
                "integral": pl.Float64,
                "integral_left": pl.Float64,
            }
        )
    stream = pl.col("_k") // (1 << 32)
    rel = rel.select(
        (stream // _WIDTH).alias("_m"),
        (stream % _WIDTH).alias("rate_channel"),
        (pl.col("_k") & _LOW).alias("_s"),
        "value",
    )
    # Each meter's most preferred related channel: per channel, the meters that have it (a
    # unique over integer codes), each channel kept for meters without a preferred one.
    keep = pl.lit(False)
    taken: pl.Series | None = None
    for code in rank:
        has = rel.filter(pl.col("rate_channel") == code).get_column("_m").unique()
        if has.len() == 0:
            continue
        mine = pl.col("rate_channel") == code
        if taken is not None:
            mine = mine & ~pl.col("_m").is_in(taken.implode())
        keep = keep | mine
        taken = has if taken is None else pl.concat([taken, has]).unique()
    rate = pl.col("value").clip(0.0, None) * pl.col("rate_channel").replace_strict(
        factor, return_dtype=pl.Float64
    )
    rel = rel.filter(keep).select(
        "_m",
        "rate_channel",
        _key(pl.col("_m"), pl.col("_s")).alias("_k"),
        rate.alias("rate"),
    )
    rel = sort_by_key(rel, "_k")  # globally: the as-of joins below search it by key
    m = pl.col("_k") // (1 << 32)
    same = m == m.shift(1)
    dt_h = pl.when(same).then(pl.col("_k").diff() / 3600.0).otherwise(0.0)
    # Two running integrals: each reading's rate held over the step before it (right) and over
    # the step after it (left). Over a spell the smaller of the two is taken: a load that
    # switches on at the spell's last reading (dusk, for lighting) or off just after its first
    # must not count as use during it.
    # Each meter's integrals start from zero at its first reading (a sum per meter, not one
    # across meters): a running sum across meters would carry the other meters' use into the
    # rounding of this one's differences, and the order of meters follows their codes - for
    # text ids Polars' process-wide string cache, so the last bits of `expected` would differ
    # between processes and between enum and text ids.
    right = (pl.col("rate") * dt_h).cum_sum().over(m)
    left = (pl.when(same).then(pl.col("rate").shift(1)).otherwise(0.0) * dt_h).cum_sum().over(m)
    return rel.with_columns(right.alias("integral"), left.alias("integral_left"))


def _expected_from_related(flats: pl.DataFrame, related: pl.DataFrame) -> pl.DataFrame:
    """Each flat spell with what its related channel integrates to over it: `expected`,
    `mean_rate`, `rate_samples` and `rate_channel` (null when the meter has none)."""
    spells = flats.with_columns(
        _key(pl.col("_m"), pl.col("a")).alias("_ka"), _key(pl.col("_m"), pl.col("b")).alias("_kb")
    )
    rel = related.select(
        "_k",
        "integral",
        "integral_left",
        "rate_channel",
        (pl.col("_k") // (1 << 32)).alias("_rm"),
    )
    # a row counter on the related readings tells how many fell inside the spell
    rel = rel.with_row_index("_i")
    at_a = spells.sort("_ka").join_asof(
        rel.rename(
            {"_k": "_ka", "integral": "ia", "integral_left": "la", "_i": "ia_i", "_rm": "rm_a"}
        ).drop("rate_channel"),
        on="_ka",
        strategy="backward",
    )
    both = at_a.sort("_kb").join_asof(
        rel.rename(
            {"_k": "_kb", "integral": "ib", "integral_left": "lb", "_i": "ib_i", "_rm": "rm_b"}
        ),
        on="_kb",
        strategy="backward",
    )
    ok = (pl.col("rm_a") == pl.col("_m")) & (pl.col("rm_b") == pl.col("_m"))
    hours = (pl.col("b") - pl.col("a")) / 3600.0
    expected = pl.when(ok).then(
        pl.min_horizontal(pl.col("ib") - pl.col("ia"), pl.col("lb") - pl.col("la"))
    )
    return both.with_columns(
        pl.when(ok).then(pl.col("rate_channel")).alias("rate_channel"),
        expected.alias("expected"),
        (expected / hours).alias("mean_rate"),
        pl.when(ok).then(pl.col("ib_i") - pl.col("ia_i")).alias("rate_samples"),
    ).drop("ia", "ib", "la", "lb", "ia_i", "ib_i", "rm_a", "rm_b", "_ka", "_kb")


def _expected_from_history(
    spells: pl.DataFrame, counters: pl.DataFrame, params: StuckParams
) -> pl.DataFrame:
    """Flat spells of meters without a related channel, with what the meter's own history
    says: `idle_share`, the share of its other hours in which the register did not move, and
    `low_rate`, the `history_quantile` of its moving hours' rates; `expected` = low rate x the
    spell's hours when the meter is rarely idle (idle share below the quantile), else 0.
    `counters` are the narrow counter readings in stream and time order."""
    if spells.height == 0:
        return spells
    streams = spells.get_column("_st").unique()
    st = pl.col("_k") // (1 << 32)
    # one integer per (stream, hour): a single-key group-by and sort, no string keys
    hk = pl.col("_hk")
    same_next = (hk // (1 << 32)) == (hk // (1 << 32)).shift(-1)
    hourly = (
        counters.lazy()
        .filter(st.is_in(streams.implode()))
        .group_by(_key(st, (pl.col("_k") & _LOW) // 3600).alias("_hk"))
        .agg(pl.col("value").min().alias("lo"))
        .sort("_hk")
        .select(
            (hk // (1 << 32)).alias("_st"),
            pl.when(same_next).then(pl.col("lo").shift(-1) - pl.col("lo")).alias("rate"),
            pl.when(same_next).then(hk.shift(-1) - hk).alias("gap"),
        )
        .filter((pl.col("gap") == 1) & (pl.col("rate") >= 0))
    )
    history = (
        hourly.group_by("_st")
        .agg(
            pl.len().alias("history_hours"),
            (pl.col("rate") == 0).sum().alias("idle_hours"),
            pl.col("rate")
            .filter(pl.col("rate") > 0)
            .quantile(params.history_quantile)
            .alias("low_rate"),
        )
        .collect()
    )
    hours = (pl.col("b") - pl.col("a")) / 3600.0
    # the spell's own whole hours are idle hours of the register: not history
    own = ((pl.col("b") // 3600) - ((pl.col("a") + 3599) // 3600)).clip(0, None)
    others = (pl.col("history_hours") - own).clip(1, None)
    idle_share = ((pl.col("idle_hours") - own).clip(0, None) / others).alias("idle_share")
    out = spells.join(history, on="_st", how="left").with_columns(idle_share)
    return out.with_columns(
        pl.when(pl.col("idle_share") < params.history_quantile)
        .then(pl.col("low_rate") * hours)
        .otherwise(0.0)
        .alias("expected")
    )


def _enough(params: StuckParams) -> pl.Expr:
    floor = pl.max_horizontal(
        pl.col("resolution").fill_null(0.0) * params.min_steps, pl.lit(params.min_expected)
    )
    return pl.col("expected").fill_null(0.0) >= floor


def _related_findings(spells: pl.DataFrame, params: StuckParams) -> pl.DataFrame:
    found = spells.filter(_enough(params))
    if found.height == 0:
        return empty(FINDINGS_SCHEMA)
    hours = (pl.col("b") - pl.col("a")) / 3600.0
    found = found.with_columns(
        hours.alias("hours"),
        severity(hours, 0.0, params.critical_hours).alias("severity"),
        (pl.col("start") + pl.duration(seconds=int(params.min_hours * 3600))).alias("detected_at"),
    )
    settings = asdict(params)

    def evidence(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "rule": "stuck.related_channel",
            "channel": row["channel"],
            "value": row["value"],
            "flat_hours": row["hours"],
            "polls": row["polls"],
            "resolution": row["resolution"],
            "related_channel": _CHANNELS[row["rate_channel"]],
            "related_samples": row["rate_samples"],
            "mean_rate_per_h": row["mean_rate"],
            "expected": row["expected"],
            "detected_at": iso(row["detected_at"]),
            "params": settings,
        }

    return to_findings(
        found, rule="stuck.related_channel", kind="stuck", evidence_of=evidence, subject="meter_id"
    )


def _history_findings(spells: pl.DataFrame, params: StuckParams) -> pl.DataFrame:
    if spells.height == 0:
        return empty(FINDINGS_SCHEMA)
    found = spells.filter(_enough(params) & (pl.col("low_rate") > 0))
    if found.height == 0:
        return empty(FINDINGS_SCHEMA)
    hours = (pl.col("b") - pl.col("a")) / 3600.0
    found = found.with_columns(
        hours.alias("hours"), severity(hours, 0.0, params.critical_hours).alias("severity")
    )
    settings = asdict(params)

    def evidence(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "rule": "stuck.history",
            "channel": row["channel"],
            "value": row["value"],
            "flat_hours": row["hours"],
            "polls": row["polls"],
            "resolution": row["resolution"],
            "low_rate_per_h": row["low_rate"],
            "idle_share": row["idle_share"],
            "history_hours": row["history_hours"],
            "expected": row["expected"],
            "params": settings,
        }

    return to_findings(
        found, rule="stuck.history", kind="stuck", evidence_of=evidence, subject="meter_id"
    )
