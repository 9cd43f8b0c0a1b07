"""A vectorised pandas reference of the analytics pass, written for `bench/analytics_pass.py`
only: the issue's benchmark measures the Polars pipeline against "a vectorised pandas
implementation of the same logic (groupby/transform, no Python loops over meters)".

Covered, with the same rules and the same outputs as the Polars pipeline:

- **consumption** (`analytics.consumption`, see its module docstring): bad reads (not-a-value
  answers, dips and jumps that come back, bad zeros), rollover at the ledger's or an inferred
  modulus, reset (topped up to the profile), unexplained drops, replacements from the ledger,
  gaps spread by the stream's typical use (mean by hour of week, else hour of day), the
  multiplier; intervals with their quality, and counter events (without the `detail` text);
- **rollups** (`analytics.rollups`): 15-minute, hourly, local daily and local monthly
  consumption per meter, building and project, with the estimated part, the worst quality,
  the meter count and the covered time;
- **counter-event findings** (`analytics.pipeline.event_findings`): resets and unexplained
  drops, one per (meter, event, instant), without the evidence JSON.

Not covered: the other detectors (leak, stuck, comm loss, electrical, balance, usage,
equipment). The arithmetic follows the Polars code's design (one integer stream key, numpy
where the Polars code uses numpy, groupby where it groups), so the comparison measures the
library under the same design, not two designs.

Known difference: pandas has no null distinct from NaN in a float column, so a `good` reading
whose value is null (not a NaN) would count as a not-a-value answer here and as silence in the
Polars code. The simulators never write one (a null value always has quality `comm_error`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the venv
import polars as pl

from analytics.consumption import COUNTER_CHANNELS, USUAL_CADENCES_S, VALUE_QUALITIES
from analytics.consumption import ConsumptionParams as Params
from analytics.detectors.leak import LeakParams
from analytics.frames import CONSUMPTION_QUALITY, COUNTER_EVENTS

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
US: Final = 1_000_000
SLOT_US: Final = 900 * US
_MEASURED, _ESTIMATED = 0, 1
EVENT: Final = {name: i for i, name in enumerate(COUNTER_EVENTS)}
# Rollup quality precedence (worst wins): measured < backfilled < manual < estimated.
PRECEDENCE: Final = ("measured", "backfilled", "manual", "estimated")
LEVELS: Final = ["meter", "building", "project"]
PERIODS: Final = ["15min", "hour", "day", "month"]
RANK: Final = np.array([PRECEDENCE.index(q) for q in CONSUMPTION_QUALITY], dtype=np.int8)


# -- frames in and out -------------------------------------------------------------------------


def _us(s: pd.Series) -> I64:
    """Microseconds since the epoch of a UTC datetime column."""
    out: I64 = s.dt.as_unit("us").astype("int64").to_numpy()
    return out


def _categorical(s: pl.Series) -> pd.Categorical:
    if isinstance(s.dtype, pl.Enum):
        return pd.Categorical.from_codes(
            s.to_physical().fill_null(-1).cast(pl.Int64).to_numpy(),
            categories=list(s.dtype.categories),
        )
    return pd.Categorical(s.cast(pl.String).to_numpy())


def from_polars(df: pl.DataFrame) -> pd.DataFrame:
    """A readings frame as pandas: categorical meter/channel/quality, UTC microsecond times,
    float values (null -> NaN). No pyarrow here, so built column by column."""
    return pd.DataFrame(
        {
            "meter_id": _categorical(df["meter_id"]),
            "channel": _categorical(df["channel"]),
            "ts": pd.to_datetime(
                df["ts"].dt.epoch("us").to_numpy().astype("datetime64[us]"), utc=True
            ),
            "value": df["value"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
            "quality": _categorical(df["quality"]),
        }
    )


def to_polars(df: pd.DataFrame) -> pl.DataFrame:
    """Back to Polars for the comparison (strings, UTC times)."""
    cols: dict[str, pl.Series] = {}
    for name in df.columns:
        s = df[name]
        if isinstance(s.dtype, pd.CategoricalDtype):
            cats = pl.Series([str(c) for c in s.cat.categories], dtype=pl.String)
            codes = pl.Series(s.cat.codes.to_numpy().astype(np.int64))
            cols[name] = cats.gather(codes.set(codes < 0, None)).alias(name)
        elif isinstance(s.dtype, pd.DatetimeTZDtype):
            us = _us(s)
            cols[name] = pl.Series(name, us).cast(pl.Datetime("us", "UTC"))
        elif s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
            cols[name] = pl.Series(name, s.astype(object).to_list(), dtype=pl.String)
        else:
            cols[name] = pl.Series(name, s.to_numpy())
    return pl.DataFrame(cols)


@dataclass(frozen=True, slots=True)
class Ledger:
    """The meters frame as pandas tables: meters (meter_id, project, building, time_zone,
    multiplier), counters (meter_id, channel, modulus), replacements (meter_id, channel, at
    [us], closing, opening)."""

    meters: pd.DataFrame
    counters: pd.DataFrame
    replacements: pd.DataFrame

    @staticmethod
    def from_polars(meters: pl.DataFrame) -> Ledger:
        def pdf(df: pl.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({c: df[c].to_list() for c in df.columns}, columns=df.columns)

        m = meters.select(
            pl.col("meter_id", "project", "building", "time_zone").cast(pl.String),
            *[
                (pl.col(c) if c in meters.columns else pl.lit(None)).cast(pl.String).alias(c)
                for c in ("kind", "load")
            ],
            (pl.col("multiplier") if "multiplier" in meters.columns else pl.lit(1.0))
            .cast(pl.Float64)
            .fill_null(1.0)
            .alias("multiplier"),
        )
        c = pl.DataFrame(
            schema={"meter_id": pl.String, "channel": pl.String, "modulus": pl.Float64}
        )
        if "counters" in meters.columns:
            c = (
                meters.select(pl.col("meter_id").cast(pl.String), "counters")
                .explode("counters")
                .drop_nulls("counters")
                .unnest("counters")
                .select(
                    "meter_id",
                    pl.col("channel").cast(pl.String),
                    pl.col("modulus").cast(pl.Float64),
                )
            )
        r = pl.DataFrame(
            schema={
                "meter_id": pl.String,
                "channel": pl.String,
                "at": pl.Int64,
                "closing": pl.Float64,
                "opening": pl.Float64,
            }
        )
        if "replacements" in meters.columns:
            r = (
                meters.select(pl.col("meter_id").cast(pl.String), "replacements")
                .explode("replacements")
                .drop_nulls("replacements")
                .unnest("replacements")
                .select(
                    "meter_id",
                    pl.col("channel").cast(pl.String),
                    pl.col("at").cast(pl.Datetime("us", "UTC")).dt.epoch("us").alias("at"),
                    pl.col("closing").cast(pl.Float64),
                    pl.col("opening").cast(pl.Float64),
                )
            )
        return Ledger(pdf(m), pdf(c), pdf(r))


# -- consumption -------------------------------------------------------------------------------


@dataclass(slots=True)
class Streams:
    stream: I64
    ts: I64
    value: F64
    valid: B
    answered_bad: B
    meters: npt.NDArray[np.object_]
    channels: npt.NDArray[np.object_]

    @property
    def n(self) -> int:
        return int(self.meters.size)


def _sorted_codes(cat: pd.Series) -> tuple[I64, npt.NDArray[np.object_]]:
    """Codes of a categorical column in sorted-name order, and the names by code."""
    names = np.asarray(cat.cat.categories.astype(str), dtype=object)
    rank = np.argsort(names, kind="stable")
    lookup = np.empty(names.size, dtype=np.int64)
    lookup[rank] = np.arange(names.size)
    return lookup[cat.cat.codes.to_numpy()], names[rank]


def prepare(readings: pd.DataFrame) -> Streams:
    r = readings[readings["channel"].isin(COUNTER_CHANNELS)]
    q = r["quality"]
    value = r["value"].to_numpy(dtype=np.float64)
    as_value = q.isin(VALUE_QUALITIES).to_numpy()
    has_value = np.isfinite(value) & (value >= 0)
    answered_bad = (as_value & ~np.isnan(value) & ~has_value) | q.isin(
        ("nan_sentinel", "out_of_range")
    ).to_numpy()
    meter, meter_names = _sorted_codes(r["meter_id"])
    chan, chan_names = _sorted_codes(r["channel"])
    n_chan = max(chan_names.size, 1)
    stream, uniq = pd.factorize(meter * n_chan + chan, sort=True)
    stream = stream.astype(np.int64)
    small = stream.astype(np.uint16) if uniq.size <= 65_536 else stream
    order = np.argsort(small, kind="stable")
    stream = stream[order]
    ts = _us(r["ts"])[order]
    if ((stream[1:] == stream[:-1]) & (ts[1:] < ts[:-1])).any():
        again = np.lexsort((ts, stream))
        stream, ts, order = stream[again], ts[again], order[again]
    return Streams(
        stream=stream,
        ts=ts,
        value=value[order],
        valid=(as_value & has_value)[order],
        answered_bad=answered_bad[order],
        meters=meter_names[uniq // n_chan],
        channels=chan_names[uniq % n_chan],
    )


def cadence(stream: I64, ts: I64, n: int) -> I64:
    """Median time between a stream's rows, over up to ~64 evenly spaced ones (every
    `rows // 64`-th gap), snapped to a usual interval within 2%."""
    counts = np.bincount(stream, minlength=n)
    first = np.cumsum(counts) - counts
    stride = np.maximum(counts // 64, 1)
    pos = np.arange(1, stream.size)
    s1 = stream[1:]
    pick = (s1 == stream[:-1]) & ((pos - first[s1]) % stride[s1] == 0)
    d = ts[pos[pick]] - ts[pos[pick] - 1]
    use = d > 0
    med = pd.Series(d[use]).groupby(s1[pick][use]).median()
    out = np.full(n, 900 * US, dtype=np.int64)
    out[med.index.to_numpy()] = np.maximum(np.rint(med.to_numpy()), 1).astype(np.int64)
    usual = np.asarray(USUAL_CADENCES_S, dtype=np.int64) * US
    nearest = usual[np.abs(np.log(out[:, None] / usual[None, :])).argmin(axis=1)]
    close = np.abs(out / nearest - 1.0) <= 0.02
    snapped: I64 = np.where(close, nearest, np.maximum(np.rint(out / US), 1).astype(np.int64) * US)
    return snapped


def _stream_index(st: Streams) -> pd.DataFrame:
    return pd.DataFrame({"meter_id": st.meters, "channel": st.channels, "stream": np.arange(st.n)})


def ledger_arrays(led: Ledger, st: Streams) -> tuple[F64, F64, pd.DataFrame]:
    """(modulus by stream, multiplier by stream, seams: stream, at, closing, opening)."""
    streams = _stream_index(st)
    modulus = np.full(st.n, np.nan)
    mod = (
        led.counters[led.counters["modulus"].notna() & (led.counters["modulus"] > 0)]
        .drop_duplicates(["meter_id", "channel"], keep="first")
        .merge(streams, on=["meter_id", "channel"])
    )
    modulus[mod["stream"].to_numpy()] = mod["modulus"].to_numpy()
    mult = streams.merge(led.meters[["meter_id", "multiplier"]], on="meter_id")
    multiplier = np.ones(st.n)
    multiplier[mult["stream"].to_numpy()] = mult["multiplier"].to_numpy()
    seams = (
        led.replacements.assign(opening=led.replacements["opening"].fillna(0.0))
        .merge(streams, on=["meter_id", "channel"])[["stream", "at", "closing", "opening"]]
        .sort_values(["stream", "at"], kind="stable")
        .reset_index(drop=True)
    )
    return modulus, multiplier, seams


def seam_offsets(stream: I64, ts: I64, raw: F64, seams: pd.DataFrame) -> tuple[F64, pd.DataFrame]:
    offset = np.zeros(stream.size)
    if seams.empty:
        return offset, seams
    idx = np.flatnonzero(np.isin(stream, seams["stream"].unique()))
    sub = pd.DataFrame({"stream": stream[idx], "ts": ts[idx], "raw": raw[idx], "i": idx})
    reads = sub.rename(columns={"ts": "at", "raw": "last_read"})[["stream", "at", "last_read"]]
    before = pd.merge_asof(
        seams.reset_index().sort_values("at", kind="stable"),
        reads.sort_values("at", kind="stable"),
        on="at",
        by="stream",
        direction="backward",
        allow_exact_matches=False,
    ).sort_values("index", kind="stable")
    before["closing"] = before["closing"].fillna(before["last_read"]).fillna(before["opening"])
    before["offset"] = (before["closing"] - before["opening"]).groupby(before["stream"]).cumsum()
    hit = pd.merge_asof(
        sub.sort_values("ts", kind="stable"),
        before[["stream", "at", "offset"]].rename(columns={"at": "ts"}).sort_values("ts"),
        on="ts",
        by="stream",
        direction="backward",
    )
    offset[hit["i"].to_numpy()] = hit["offset"].fillna(0.0).to_numpy()
    return offset, before


def _shifted(v: F64, stream: I64, rows: I64, k: int) -> F64:
    other = rows + k
    inside = (other >= 0) & (other < stream.size)
    other = np.where(inside, other, 0)
    ok = inside & (stream[other] == stream[rows])
    return np.where(ok, v[other], np.nan)


def bad_reads(
    stream: I64, ts: I64, v: F64, raw: F64, n: int, p: Params
) -> tuple[npt.NDArray[np.int8], F64]:
    """Bad-read kind per value row (0 value, 1 zero, 2 dip, 3 jump) and each stream's rate."""
    w = p.max_bad_run
    kind = np.zeros(stream.size, dtype=np.int8)
    dec = np.flatnonzero((stream[1:] == stream[:-1]) & (v[1:] < v[:-1])) + 1
    if dec.size:
        rows = np.unique((dec[:, None] + np.arange(-w, w)[None, :]).ravel())
        rows = rows[(rows >= 0) & (rows < stream.size)]
        before = np.vstack([_shifted(v, stream, rows, k) for k in range(-w, 0)])
        after = np.vstack([_shifted(v, stream, rows, k) for k in range(1, w + 1)])
        x = v[rows]
        with np.errstate(invalid="ignore"):
            # A dip: the lowest earlier read above it is reached again by a later read.
            above = np.fmin.reduce(np.where(before > x, before, np.nan), axis=0)
            dip = above <= np.fmax.reduce(after, axis=0)
            # A jump: the highest later read below it is back at or above an earlier read.
            below = np.fmax.reduce(np.where(after < x, after, np.nan), axis=0)
            jump = np.fmin.reduce(before, axis=0) <= below
        kind[rows[jump]] = 3
        kind[rows[dip]] = 2
    zero = raw == 0.0
    frame = pd.DataFrame({"s": stream, "nz": ~zero})
    moving = frame.groupby("s")["nz"].any().reindex(range(n), fill_value=False).to_numpy()
    z = np.flatnonzero(zero & moving[stream])
    lead = np.zeros(0, dtype=np.int64)
    lead_after = np.zeros(0, dtype=np.int64)
    if z.size:
        nz = np.flatnonzero(~zero)
        k = np.searchsorted(nz, z)
        prev = np.where(k > 0, nz[np.maximum(k - 1, 0)], -1)
        nxt = np.where(k < nz.size, nz[np.minimum(k, nz.size - 1)], -1)
        prev = np.where((prev >= 0) & (stream[np.maximum(prev, 0)] == stream[z]), prev, -1)
        nxt = np.where((nxt >= 0) & (stream[np.maximum(nxt, 0)] == stream[z]), nxt, -1)
        last_row = frame.groupby("s").size().cumsum().reindex(range(n)).to_numpy()
        to_end = last_row[stream[z]] - z
        hb, ha = prev >= 0, nxt >= 0
        with np.errstate(invalid="ignore"):
            mid = hb & ha & (v[np.maximum(prev, 0)] <= v[np.maximum(nxt, 0)])
        kind[z[mid | (hb & ~ha & (to_end <= w))]] = 1
        lead, lead_after = z[~hb & ha], nxt[~hb & ha]
    need = np.zeros(n, dtype=np.bool_)
    need[stream[dec]] = True
    need[stream[lead]] = True
    rate = np.zeros(n)
    if need.any():
        rate = mean_rate(stream, ts, v, raw, need[stream] & (kind == 0), n)
    if lead.size:
        bound = p.headroom * rate[stream[lead]] * (ts[lead_after] - ts[lead]) / US
        kind[lead[raw[lead_after] > bound + p.near_zero]] = 1
    return kind, rate


def mean_rate(stream: I64, ts: I64, v: F64, raw: F64, ok: B, n: int) -> F64:
    idx = np.flatnonzero(ok)
    f = pd.DataFrame({"s": stream[idx], "t": ts[idx], "x": v[idx], "r": raw[idx]})
    g = f.groupby("s", sort=False)
    step = g["x"].diff()
    use = (step >= 0) & (g["r"].shift() != 0.0) & step.notna()
    sums = (
        pd.DataFrame({"s": f["s"], "step": step, "dt": g["t"].diff() / US})[use]
        .groupby("s")[["step", "dt"]]
        .sum()
        .reindex(range(n), fill_value=0.0)
    )
    amount, span = sums["step"].to_numpy(), sums["dt"].to_numpy()
    out: F64 = np.where(span > 0, amount / np.where(span > 0, span, 1.0), 0.0)
    return out


def hour_of_week(us: I64) -> I64:
    out: I64 = (us // (3600 * US) + 72) % 168
    return out


def consumption(
    readings: pd.DataFrame, led: Ledger, p: Params | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(intervals, events) as `analytics.consumption.consumption` gives them (events without
    their detail text)."""
    p = Params() if p is None else p
    st = prepare(readings)
    cad = cadence(st.stream, st.ts, st.n)
    counts = np.bincount(st.stream, minlength=st.n)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    anchor = st.ts[first]
    c_row = cad[st.stream]
    slot_all = (st.ts - anchor[st.stream] + c_row // 2) // c_row
    ev: list[tuple[I64, I64, int]] = []
    ab = np.flatnonzero(st.answered_bad)
    ev.append((st.stream[ab], st.ts[ab], EVENT["bad_read"]))

    vi = np.flatnonzero(st.valid)
    keep_last = ~pd.DataFrame({"s": st.stream[vi], "sl": slot_all[vi]}).duplicated(keep="last")
    vi = vi[keep_last.to_numpy()]
    stream, ts, raw, slot = st.stream[vi], st.ts[vi], st.value[vi], slot_all[vi]

    modulus, multiplier, seams = ledger_arrays(led, st)
    offset, seams = seam_offsets(stream, ts, raw, seams)
    v = raw + offset
    kind, rate = bad_reads(stream, ts, v, raw, st.n, p)
    bad = kind != 0
    ev.append((stream[bad], ts[bad], EVENT["bad_read"]))
    keep = ~bad
    stream, ts, raw, v, slot = stream[keep], ts[keep], raw[keep], v[keep], slot[keep]

    # Pairs of consecutive kept reads.
    j = np.flatnonzero(stream[1:] == stream[:-1]) + 1
    ps = stream[j]
    delta = v[j] - v[j - 1]
    n_slots = slot[j] - slot[j - 1]
    drop = np.flatnonzero(delta < 0)
    jd, sd = j[drop], ps[drop]
    rp, rj = raw[jd - 1], raw[jd]
    slack = p.headroom * rate[sd] * (ts[jd] - ts[jd - 1]) / US + p.near_zero
    known = modulus[sd]
    with np.errstate(divide="ignore", invalid="ignore"):
        power = 10.0 ** (np.floor(np.log10(np.where(rp > 0, rp, 1.0))) + 1.0)
    inferred = np.isnan(known) & (rp >= p.min_inferred_modulus)
    mod = np.where(np.isnan(known), np.where(inferred, power, np.nan), known)
    # Near zero after the drop, and near the modulus before it: within the plausible step or
    # a small share of the register.
    near_zero = rj <= slack + p.near_zero_share * rp
    with np.errstate(invalid="ignore"):
        to_top = mod - rp
        roll = near_zero & (to_top >= 0) & (to_top <= slack + p.near_zero_share * mod)
    wrap = mod - rp + rj
    reset = ~roll & near_zero
    lost = ~roll & ~reset
    delta[drop] = np.where(roll, wrap, np.where(reset, rj, np.nan))
    ev += [
        (sd[roll], ts[jd][roll], EVENT["rollover"]),
        (sd[reset], ts[jd][reset], EVENT["reset"]),
        (sd[lost], ts[jd][lost], EVENT["unexplained_drop"]),
    ]
    lost_pair = np.zeros(j.size, dtype=np.bool_)
    lost_pair[drop[lost]] = True
    reset_pair = np.zeros(j.size, dtype=np.bool_)
    reset_pair[drop[reset]] = True
    gap = (n_slots > 1) & ~lost_pair
    ev.append((ps[gap], ts[j[gap] - 1], EVENT["gap"]))

    # One output row per slot between the reads of each pair.
    start_slot = slot[j - 1]
    rep = np.repeat(np.arange(j.size), n_slots)
    out_start = np.cumsum(n_slots) - n_slots
    k = np.arange(rep.size) - out_start[rep]
    o_stream, o_slot, cons = ps[rep], start_slot[rep] + k, delta[rep]
    quality = np.full(rep.size, _MEASURED, dtype=np.int8)
    needs = ((n_slots > 1) & ~lost_pair) | (reset_pair & (p.reset_fill == "profile"))
    if needs.any():
        nd = np.flatnonzero(needs)
        rows = np.flatnonzero(needs[rep])  # output rows of those pairs, in pair order
        dropped = np.zeros(j.size, dtype=np.bool_)
        dropped[drop] = True
        weight = profile_weights(
            ps,
            (n_slots == 1) & ~dropped,
            start_slot,
            delta,
            anchor,
            cad,
            o_stream[rows],
            o_slot[rows],
            p.profile_samples,
        )
        local = rep[rows]
        wsum = pd.Series(weight).groupby(local).sum().reindex(nd).to_numpy()
        amount = delta[nd]
        top = np.zeros(nd.size, dtype=np.bool_)
        if p.reset_fill == "profile":
            top = reset_pair[nd] & (wsum > amount)
            amount = np.where(top, wsum, amount)
        flat = ~(wsum > 0)
        pos = np.searchsorted(nd, local)
        share = np.where(flat[pos], 1.0 / n_slots[local], weight / np.where(flat, 1.0, wsum)[pos])
        cons[rows] = amount[pos] * share
        est = (n_slots[nd] > 1) | top
        quality[rows] = np.where(est[pos], _ESTIMATED, _MEASURED)
    quality[lost_pair[rep]] = -1
    with np.errstate(invalid="ignore"):
        cons = np.maximum(cons * multiplier[o_stream], 0.0)
    start = anchor[o_stream] + o_slot * cad[o_stream]
    m_names, m_code = np.unique(st.meters, return_inverse=True)
    c_names, c_code = np.unique(st.channels, return_inverse=True)
    intervals = pd.DataFrame(
        {
            "meter_id": pd.Categorical.from_codes(m_code[o_stream], categories=m_names),
            "channel": pd.Categorical.from_codes(c_code[o_stream], categories=c_names),
            "start": pd.to_datetime(start.astype("datetime64[us]"), utc=True),
            "end": pd.to_datetime((start + cad[o_stream]).astype("datetime64[us]"), utc=True),
            "consumption": cons,
            "quality": pd.Categorical.from_codes(quality, categories=list(CONSUMPTION_QUALITY)),
        }
    )
    if not seams.empty:
        last_ts = st.ts[first + counts - 1]
        ss, at = seams["stream"].to_numpy(), seams["at"].to_numpy()
        inside = (at >= anchor[ss]) & (at <= last_ts[ss])
        ev.append((ss[inside], at[inside], EVENT["replacement"]))
    events = pd.DataFrame(
        {
            "stream": np.concatenate([e[0] for e in ev]),
            "ts": np.concatenate([e[1] for e in ev]),
            "event": np.concatenate([np.full(e[0].size, e[2]) for e in ev]),
        }
    ).sort_values(["stream", "ts", "event"], kind="stable")
    s = events["stream"].to_numpy()
    events = pd.DataFrame(
        {
            "meter_id": st.meters[s],
            "channel": st.channels[s],
            "ts": pd.to_datetime(events["ts"].to_numpy().astype("datetime64[us]"), utc=True),
            "event": pd.Categorical.from_codes(events["event"].to_numpy(), list(COUNTER_EVENTS)),
        }
    )
    return intervals, events


def profile_weights(
    s: I64,
    measured: B,
    start_slot: I64,
    delta: F64,
    anchor: I64,
    cad: I64,
    want_stream: I64,
    want_slot: I64,
    min_samples: int,
) -> F64:
    """The stream's typical use in the wanted slot: the mean measured interval at that UTC
    hour of week when it has `min_samples` of them, else at that hour of day, else over all
    its measured intervals, else 0."""
    m = np.flatnonzero(measured & np.isin(s, np.unique(want_stream)))
    sm = s[m]
    how = hour_of_week(anchor[sm] + start_slot[m] * cad[sm])
    seen = pd.DataFrame({"w": sm * 168 + how, "d": sm * 24 + how % 24, "s": sm, "x": delta[m]})
    by_week = seen.groupby("w")["x"].agg(["mean", "size"])
    by_day = seen.groupby("d")["x"].agg(["mean", "size"])
    overall = seen.groupby("s")["x"].mean()
    want_how = hour_of_week(anchor[want_stream] + want_slot * cad[want_stream])
    wk = by_week.reindex(want_stream * 168 + want_how)
    dy = by_day.reindex(want_stream * 24 + want_how % 24)
    w = np.where(
        wk["size"].to_numpy() >= min_samples,
        wk["mean"].to_numpy(),
        np.where(
            dy["size"].to_numpy() >= min_samples,
            dy["mean"].to_numpy(),
            np.nan_to_num(overall.reindex(want_stream).to_numpy(), nan=0.0),
        ),
    )
    out: F64 = np.clip(w, 0.0, None)
    return out


# -- rollups -----------------------------------------------------------------------------------


def _local_buckets(zone: str, slots: I64) -> dict[str, I64]:
    """Start slot of the local hour, day and month of each UTC 15-minute slot in `zone`."""
    utc = pd.DatetimeIndex(pd.to_datetime((slots * SLOT_US).astype("datetime64[us]"), utc=True))
    local = utc.tz_convert(zone)
    naive = local.tz_localize(None)
    # An hour starts at the UTC instant minus the local minutes past the hour (the offset is a
    # multiple of 15 minutes), which keeps the repeated hour of a fall-back night apart.
    past_hour = (naive - naive.floor("h")).to_numpy().astype("timedelta64[us]").astype(np.int64)
    hour = slots - past_hour // SLOT_US

    def utc_slot(local_midnights: pd.DatetimeIndex) -> I64:
        at = local_midnights.tz_localize(zone, ambiguous="raise", nonexistent="raise")
        out: I64 = np.asarray(at.tz_convert("UTC").as_unit("us").asi8, dtype=np.int64) // SLOT_US
        return out

    day = utc_slot(naive.normalize())
    month = utc_slot(naive.normalize() - pd.to_timedelta(naive.day - 1, unit="D"))
    return {"hour": hour, "day": day, "month": month}


def rollups(intervals: pd.DataFrame, led: Ledger) -> pd.DataFrame:
    """Rollups of consumption intervals (`analytics.rollups.rollup` semantics): 15 min, hour,
    local day, local month per meter, building and project and channel."""
    iv = intervals[intervals["consumption"].notna()]
    meters = led.meters.set_index("meter_id")
    mcode = iv["meter_id"].cat.codes.to_numpy().astype(np.int64)
    ccode = iv["channel"].cat.codes.to_numpy().astype(np.int64)
    mcats, ccats = iv["meter_id"].cat.categories, iv["channel"].cat.categories
    sid, uniq = pd.factorize(mcode * len(ccats) + ccode, sort=True)
    sid = sid.astype(np.int64)
    streams = pd.DataFrame(
        {
            "meter_id": mcats[uniq // len(ccats)].astype(str),
            "channel": ccats[uniq % len(ccats)].astype(str),
        }
    )
    streams = streams.join(meters[["project", "building", "time_zone"]], on="meter_id")
    start, end = _us(iv["start"]), _us(iv["end"])
    x = iv["consumption"].to_numpy()
    rank = RANK[iv["quality"].cat.codes.to_numpy()]
    first = start // SLOT_US
    k = (end - 1) // SLOT_US - first + 1
    if np.all(k == 1):
        slot, cov, value, s_sid, s_rank = first, end - start, x, sid, rank
    else:
        rep = np.repeat(np.arange(x.size), k)
        slot = first[rep] + (np.arange(rep.size) - (np.cumsum(k) - k)[rep])
        lo = np.maximum(start[rep], slot * SLOT_US)
        hi = np.minimum(end[rep], (slot + 1) * SLOT_US)
        cov = hi - lo
        dur = (end - start)[rep]
        value = np.where(cov == dur, x[rep], x[rep] * (cov / dur))
        s_sid, s_rank = sid[rep], rank[rep]
    est = np.where(s_rank == PRECEDENCE.index("estimated"), value, 0.0)
    rows = pd.DataFrame(
        {
            "sid": s_sid,
            "slot": slot,
            "consumption": value,
            "estimated": est,
            "covered_us": cov,
            "q": s_rank,
        }
    )
    agg = {"consumption": "sum", "estimated": "sum", "covered_us": "sum", "q": "max"}
    m15 = rows.groupby(["sid", "slot"], sort=True).agg(agg).reset_index()
    m15["meters"] = 1
    # Calendar: each zone's local buckets over the slots in use (a handful of zones).
    # A day or month can start before the first slot in use (an hour at most a day before):
    # the table spans a month either side, so every bucket start has an entry.
    margin = 33 * 96
    lo, hi = int(m15["slot"].min()) - margin, int(m15["slot"].max()) + 1 + margin
    span = np.arange(lo, hi, dtype=np.int64)
    zones = sorted(streams["time_zone"].unique())
    cal = {z: _local_buckets(z, span) for z in zones}
    zone_code = pd.Categorical(streams["time_zone"], categories=zones).codes.astype(np.int64)
    table = {p: np.vstack([cal[z][p] for z in zones]) for p in ("hour", "day", "month")}
    out = {("meter", "15min"): m15}
    prev = m15
    for period in ("hour", "day", "month"):
        z = zone_code[prev["sid"].to_numpy()]
        bucket = table[period][z, prev["slot"].to_numpy() - lo]
        prev = (
            prev.assign(slot=bucket)
            .groupby(["sid", "slot"], sort=True)
            .agg(agg)
            .reset_index()
            .assign(meters=1)
        )
        out["meter", period] = prev
    # Building-channels and project-channels.
    bkey = streams["building"] + "|" + streams["project"] + "|" + streams["channel"]
    bcode, bnames = pd.factorize(bkey, sort=True)
    bsplit = pd.Series(bnames).str.split("|", expand=True)
    pcode_b, pnames = pd.factorize(bsplit[1] + "|" + bsplit[2], sort=True)
    agg_n = {**agg, "meters": "sum"}
    for period in ("15min", "hour", "day", "month"):
        mb = out["meter", period]
        b = (
            mb.assign(sid=bcode[mb["sid"].to_numpy()])
            .groupby(["sid", "slot"], sort=True)
            .agg(agg_n)
            .reset_index()
        )
        out["building", period] = b
        out["project", period] = (
            b.assign(sid=pcode_b[b["sid"].to_numpy()])
            .groupby(["sid", "slot"], sort=True)
            .agg(agg_n)
            .reset_index()
        )
    psplit = pd.Series(pnames).str.split("|", expand=True)
    names = {
        "meter": (streams["meter_id"], streams["project"], streams["channel"]),
        "building": (bsplit[0], bsplit[1], bsplit[2]),
        "project": (psplit[0], psplit[0], psplit[1]),
    }
    # One category list per column across every part, so the parts concatenate as categoricals.
    cats = [
        np.unique(np.concatenate([np.asarray(names[lv][i], dtype=object) for lv in names]))
        for i in range(3)
    ]
    frames = []
    for (level, period), f in out.items():
        e = f["sid"].to_numpy()
        coded = [
            pd.Categorical.from_codes(
                np.searchsorted(cats[i], np.asarray(names[level][i], dtype=object))[e], cats[i]
            )
            for i in range(3)
        ]
        n = e.size
        frames.append(
            pd.DataFrame(
                {
                    "level": pd.Categorical.from_codes(
                        np.full(n, LEVELS.index(level), np.int8), LEVELS
                    ),
                    "key": coded[0],
                    "project": coded[1],
                    "channel": coded[2],
                    "period": pd.Categorical.from_codes(
                        np.full(n, PERIODS.index(period), np.int8), PERIODS
                    ),
                    "bucket_start": pd.to_datetime(
                        (f["slot"].to_numpy() * SLOT_US).astype("datetime64[us]"), utc=True
                    ),
                    "consumption": f["consumption"].to_numpy(),
                    "estimated": f["estimated"].to_numpy(),
                    "quality": pd.Categorical.from_codes(f["q"].to_numpy(), list(PRECEDENCE)),
                    "meters": f["meters"].to_numpy(),
                    "covered_us": f["covered_us"].to_numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# -- findings ----------------------------------------------------------------------------------


def event_findings(events: pd.DataFrame) -> pd.DataFrame:
    """Resets (info) and unexplained drops (warning), one per (meter, event, instant)."""
    severity = {"reset": "info", "unexplained_drop": "warning"}
    picked = events[events["event"].isin(list(severity))]
    g = (
        picked.assign(event=picked["event"].astype(str))
        .groupby(["meter_id", "event", "ts"], sort=True, observed=True)
        .size()
        .reset_index()
    )
    return pd.DataFrame(
        {
            "subject": g["meter_id"].astype(str),
            "rule": "counter." + g["event"],
            "kind": g["event"],
            "start": g["ts"],
            "end": g["ts"],
            "severity": g["event"].map(severity),
        }
    )


# -- leak detector -----------------------------------------------------------------------------


def _local_naive(ts: pd.Series, zone: pd.Series) -> pd.Series:
    """Local wall-clock time of UTC instants in each row's zone (one conversion per zone)."""
    out = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    for name in zone.dropna().unique():
        rows = (zone == name).to_numpy()
        out[rows] = ts[rows].dt.tz_convert(name).dt.tz_localize(None)
    return out


def detect_leak(
    readings: pd.DataFrame, intervals: pd.DataFrame, led: Ledger, p: LeakParams | None = None
) -> pd.DataFrame:
    """`analytics.detectors.leak` (night minimum over consecutive nights, continuous flow;
    peer-scaled threshold) from water-flow readings or, for a water meter without them, the
    rate of its volume intervals: subject, rule, kind, start, end, severity."""
    p = LeakParams() if p is None else p
    info = led.meters.assign(kind=led.meters["kind"].fillna("water"))
    info = info[info["kind"] == "water"][["meter_id", "project", "load", "time_zone"]]
    r = readings[
        (readings["channel"] == "water_flow_m3h")
        & readings["value"].notna()
        & readings["quality"].isin(("good", "clock_suspect"))
    ]
    read = pd.DataFrame(
        {"meter_id": r["meter_id"].astype(str), "ts": r["ts"], "flow": r["value"].to_numpy()}
    )
    have = set(read["meter_id"].unique())
    hours = (intervals["end"] - intervals["start"]).dt.total_seconds() / 3600.0
    v = intervals[
        (intervals["channel"] == "water_volume_m3")
        & ~intervals["meter_id"].astype(str).isin(have)
        & (hours > 0)
    ]
    rate = pd.DataFrame(
        {
            "meter_id": v["meter_id"].astype(str),
            "ts": v["start"],
            "flow": v["consumption"] / hours[v.index],
        }
    )
    flows = pd.concat([read, rate], ignore_index=True)
    flows = flows[flows["flow"].notna()].merge(info, on="meter_id", how="inner")
    flows = flows.sort_values(["meter_id", "ts"], kind="stable").reset_index(drop=True)
    if flows.empty:
        return _no_findings()
    local = _local_naive(flows["ts"], flows["time_zone"])
    hour = local.dt.hour
    a, b = p.night_start_hour, p.night_end_hour
    inside = ((hour >= a) & (hour < b)) if a < b else ((hour >= a) | (hour < b))
    f = flows[inside.to_numpy()].assign(
        night=(local[inside] + pd.Timedelta(hours=24 - b)).dt.normalize()
    )
    nights = (
        f.groupby(["meter_id", "night"], sort=True)
        .agg(
            project=("project", "first"),
            load=("load", "first"),
            night_min=("flow", "min"),
            start=("ts", "min"),
            end=("ts", "max"),
            samples=("flow", "size"),
        )
        .reset_index()
    )
    nights = nights[nights["samples"] >= p.min_night_samples]
    if nights.empty:
        return _no_findings()
    group = [nights["project"].fillna(""), nights["load"].fillna(""), nights["night"]]
    peers = nights.groupby(group)["night_min"].transform("size")
    med = nights.groupby(group)["night_min"].transform("median")
    nights = nights.assign(peers=peers, peer_median=med.where(peers >= p.min_peers))
    nights["threshold"] = np.maximum(
        p.min_flow_m3h, nights["peer_median"].fillna(0.0) * p.peer_ratio
    )
    nights["leaking"] = nights["night_min"] >= nights["threshold"]

    # Runs of consecutive leaking nights.
    fl = nights[nights["leaking"]].sort_values(["meter_id", "night"], kind="stable")
    new = (fl["meter_id"] != fl["meter_id"].shift()) | (
        (fl["night"] - fl["night"].shift()).dt.days != 1
    )
    fl = fl.assign(run=new.cumsum())
    ep = fl.groupby("run", sort=True).agg(
        subject=("meter_id", "first"),
        start=("start", "first"),
        end=("end", "last"),
        n=("night", "size"),
        low=("night_min", "min"),
        peer_median=("peer_median", "first"),
    )
    ep = ep[ep["n"] >= p.nights]
    excess = ep["low"] - ep["peer_median"].fillna(0.0)
    critical = (ep["n"] >= p.critical_nights) | (excess >= p.critical_flow_m3h)
    night_f = ep.assign(
        rule="leak.night_minimum", severity=np.where(critical, "critical", "warning")
    )

    # Runs of flow at or above the meter's highest night threshold.
    limit = nights.groupby("meter_id").agg(
        threshold=("threshold", "max"), peer_median=("peer_median", "max")
    )
    df = flows.join(limit, on="meter_id")
    df["threshold"] = df["threshold"].fillna(p.min_flow_m3h)
    flag = (df["flow"] >= df["threshold"]).to_numpy()
    same = (df["meter_id"] == df["meter_id"].shift()).to_numpy()
    prev = np.concatenate(([False], flag[:-1]))
    df = df.assign(run=np.cumsum(flag & ~(prev & same)))[flag]
    cont = df.groupby("run", sort=True).agg(
        subject=("meter_id", "first"),
        start=("ts", "first"),
        end=("ts", "last"),
        low=("flow", "min"),
        peer_median=("peer_median", "first"),
    )
    cont = cont[(cont["end"] - cont["start"]).dt.total_seconds() / 3600 >= p.continuous_hours]
    score = cont["low"] - cont["peer_median"].fillna(0.0)
    cont = cont.assign(
        rule="leak.continuous_flow",
        severity=np.where(
            score >= p.critical_flow_m3h, "critical", np.where(score >= 0.0, "warning", "info")
        ),
    )
    cols = ["subject", "rule", "start", "end", "severity"]
    out = pd.concat([night_f[cols], cont[cols]], ignore_index=True).assign(kind="leak")
    return out.sort_values(["subject", "start", "rule"], kind="stable").reset_index(drop=True)


def _no_findings() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject": pd.Series(dtype=object),
            "rule": pd.Series(dtype=object),
            "start": pd.Series(dtype="datetime64[us, UTC]"),
            "end": pd.Series(dtype="datetime64[us, UTC]"),
            "severity": pd.Series(dtype=object),
            "kind": pd.Series(dtype=object),
        }
    )


@dataclass(frozen=True, slots=True)
class Result:
    intervals: pd.DataFrame
    events: pd.DataFrame
    findings: pd.DataFrame
    rollups: pd.DataFrame


def run_pass(readings: pd.DataFrame, led: Ledger) -> Result:
    """Consumption, counter-event and leak findings, rollups."""
    intervals, events = consumption(readings, led)
    findings = pd.concat(
        [event_findings(events), detect_leak(readings, intervals, led)], ignore_index=True
    )
    return Result(intervals, events, findings, rollups(intervals, led))
