"""Interval consumption from cumulative counter registers, told apart from everything else.

A counter register (energy, reactive energy, water volume) only grows while the meter is
healthy. Consumption per interval is the difference of two reads - except where the register
wrapped at its modulus (rollover), restarted from zero (device reset), was swapped for a new
device (replacement, from the installation ledger), or a read was not a value (NaN sentinel,
no answer, a bad zero, an implausible jump that comes back). `consumption` tells these apart,
vectorised over every (meter, counter channel) stream at once:

- **Bad reads.** Rows whose quality is not `good`/`clock_suspect`, or whose value is null, NaN,
  infinite or negative, are not values (NaN sentinels and out-of-range reads become `bad_read`
  events; comm errors are just missing). Among the values, a read is a bad read when it does
  not fit a monotone register *and the register comes back*: a dip below the reads before it
  with a later read at or above them (a zero read), or a jump above the reads after it with an
  earlier read at or below them (a spike), for runs of up to `max_bad_run` reads; runs of exact
  zeros of any length between consistent neighbours. Consumption bridges them.
- **Drops** (a read below the previous kept one) are, in order: a *rollover* when the register
  can have passed its modulus in the time between the reads (the ledger's modulus, or else the
  next power of ten above the previous read, e.g. 99 995 -> 3 wraps at 100 000, said so in the
  event); a *reset* when the new read is near zero (what the register counted since restarting
  from 0); otherwise an *unexplained drop*: no consumption for that interval (null value and
  quality) and an event. "Can have" and "near zero" mean within `headroom` times the stream's
  own mean rate over the elapsed time, plus `near_zero` register units, or within
  `near_zero_share` of the register's size.
- **Replacements** (meters.replacements: at, closing, opening): reads at or after `at` are put
  on the old register's scale by adding `closing - opening`, so the step across the seam is
  `(closing - last old read) + (first new read - opening)`. A missing closing reading counts
  the old register as closed at its last read. A reset whose closing reading is known (a
  technician's note) is a seam too: give it as a replacement with opening 0 and the same
  serial, and it is exact instead of estimated.
- **Resets lose what the old register counted between the last read and the reset.** By
  default (`reset_fill="profile"`) the interval gets the larger of the count since the reset
  and the meter's typical consumption for that interval (flagged `estimated` when the profile
  won); `reset_fill="counted"` keeps just the count since the reset.
- **Gaps.** Each stream's cadence is its median time between rows (snapped to a usual
  interval such as 15 min when within 2%), its grid anchored at its first row; reads are
  snapped to the nearest grid slot (so a drifting meter clock shifts reads, never splits an
  interval). When kept reads are more than one slot apart, their delta is spread over the slots
  in between by the stream's typical use there - its mean measured interval at that UTC hour
  of week, or hour of day while the history is short - (evenly where that is all zero or
  unknown) and flagged `estimated`; the delta is never lost and never zero-filled.
- The meter's `multiplier` (CT x PT x pulse factor, default 1) scales every value.

Intervals of a stream run contiguously from its first to its last kept read; consumption is
never negative; quality is `measured` (two kept reads one slot apart, a rollover, a ledger
seam) or `estimated` (spread over a gap, or a reset topped up). `backfilled` and `manual` are
the store's to set (they say where a reading came from, which readings alone do not tell).
A stream has one cadence: reads closer than it fall into one slot (the last one stays).
Everything is computed in UTC: a DST change does not touch a stream's grid.
Internally each stream is an integer code in (meter_id, channel) order, so one stable integer
sort (rows of one stream keep their order) puts the input in stream order; a second sort by
time happens only when some stream's rows are out of time order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from analytics.frames import (
    CONSUMPTION_QUALITY,
    CONSUMPTION_SCHEMA,
    COUNTER_EVENTS,
    COUNTER_EVENTS_SCHEMA,
    TS,
)
from contracts.channels import COUNTERS

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

# The cumulative channels, from the channel vocabulary (`Channel.cumulative`).
COUNTER_CHANNELS: Final[tuple[str, ...]] = tuple(sorted(COUNTERS))
# Qualities whose value is the register as read (a suspect clock moves the time, not the value).
VALUE_QUALITIES: Final = ("good", "clock_suspect")
# Usual polling intervals, in seconds: an inferred cadence within 2% of one is taken as it.
USUAL_CADENCES_S: Final = (
    1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600,
    43200, 86400,
)  # fmt: skip
US: Final = 1_000_000
HOUR_US: Final = 3600 * US
_Q_MEASURED, _Q_ESTIMATED = (CONSUMPTION_QUALITY.index(q) for q in ("measured", "estimated"))
_EVENT = {name: i for i, name in enumerate(COUNTER_EVENTS)}


@dataclass(frozen=True, slots=True)
class ConsumptionParams:
    """Tuning of `consumption`; the defaults suit 1-minute to 1-hour polling.

    max_bad_run: longest run of consecutive implausible reads (dips or jumps) recognised as bad
        reads when the register comes back (runs of exact zeros may be of any length).
    headroom: a step is plausible up to `headroom` x the stream's mean rate x elapsed time ...
    near_zero: ... plus this many register units (also what "near zero" means after a reset).
    near_zero_share: ... or this share of the register before a drop: after a drop a register
        is near zero, and before it near its modulus, within the plausible step or this share.
    reset_fill: "profile" (default) tops a reset interval up to the meter's typical consumption
        for it (the old register's last counts are lost); "counted" keeps the count since the
        reset only.
    min_inferred_modulus: the smallest power of ten taken as an undeclared register modulus.
    chunk_rows: streams are processed whole, about this many counter rows at a time (memory).
    profile_samples: measured intervals an hour of week (else hour of day) needs before its
        mean is the stream's typical use there.
    """

    max_bad_run: int = 3
    headroom: float = 20.0
    near_zero: float = 1.0
    reset_fill: Literal["profile", "counted"] = "profile"
    min_inferred_modulus: float = 100.0
    near_zero_share: float = 0.001
    chunk_rows: int = 1 << 18
    profile_samples: int = 4


@dataclass(frozen=True, slots=True)
class ConsumptionResult:
    """`intervals`: CONSUMPTION_SCHEMA rows sorted by (meter_id, channel, start); an
    unexplained drop's interval has null consumption and quality.

    `events`: COUNTER_EVENTS_SCHEMA rows sorted by (meter_id, channel, ts, event). `ts` is the
    read that showed it (rollover, reset, unexplained_drop, bad_read), the last kept read
    before the missing slots (gap), or the ledger's `at` (replacement); `detail` gives the
    values (register units, before the multiplier; a gap's spread delta after it)."""

    intervals: pl.DataFrame
    events: pl.DataFrame


# ---------------------------------------------------------------------------------------------
# Input: counter rows, one integer stream code, stream order
# ---------------------------------------------------------------------------------------------


def _codes(s: pl.Series) -> tuple[I64, list[str]]:
    """Integer codes of a string-like column in sorted-name order, and the names by code."""
    if isinstance(s.dtype, pl.Enum):
        names = list(s.dtype.categories)
        rank = np.argsort(np.asarray(names, dtype=object), kind="stable")
        lookup = np.empty(len(names), dtype=np.int64)
        lookup[rank] = np.arange(len(names))
        return lookup[s.to_physical().to_numpy()], [names[i] for i in rank]
    strings = s.cast(pl.String)
    uniq = strings.unique().drop_nulls().sort()
    return strings.cast(pl.Enum(uniq)).to_physical().to_numpy().astype(np.int64), uniq.to_list()


def _is_in(schema: pl.Schema, column: str, names: tuple[str, ...]) -> pl.Expr:
    """`column` is one of `names`, without turning an Enum column into strings."""
    dtype = schema[column]
    if isinstance(dtype, pl.Enum):
        known = set(dtype.categories)
        names = tuple(n for n in names if n in known)
    elif dtype != pl.String:
        return pl.col(column).cast(pl.String).is_in(names)
    return pl.col(column).is_in(names)


@dataclass(slots=True)
class _Streams:
    """The input's counter rows as arrays in input order, with the stream order."""

    stream: npt.NDArray[np.int32]  # stream code per row
    ts: I64  # microseconds since the epoch
    value: F64  # NaN where null
    valid: B  # a register value
    answered_bad: B  # an answer that is not a value (NaN sentinel, out of range, negative)
    order: npt.NDArray[np.int32] | I64  # rows by stream (stable: a stream's rows keep their order)
    counts: I64  # rows per stream
    meters: list[str]  # meter_id by stream
    channels: list[str]  # channel by stream

    @property
    def n(self) -> int:
        return len(self.meters)


def _prepare(readings: pl.DataFrame | pl.LazyFrame) -> _Streams:
    lf = readings.lazy()
    schema = lf.collect_schema()
    value = pl.col("value").cast(pl.Float64)
    as_value = _is_in(schema, "quality", VALUE_QUALITIES)
    has_value = value.is_not_null() & value.is_finite() & (value >= 0)
    df = (
        lf.filter(_is_in(schema, "channel", COUNTER_CHANNELS))
        .select(
            "meter_id",
            "channel",
            pl.col("ts").cast(TS).dt.epoch("us").alias("ts"),
            value.fill_null(np.nan).alias("value"),  # no validity mask: numpy shares it
            (as_value & has_value).fill_null(False).alias("valid"),
            (
                (as_value & value.is_not_null() & ~has_value)
                | _is_in(schema, "quality", ("nan_sentinel", "out_of_range"))
            )
            .fill_null(False)
            .alias("answered_bad"),
        )
        .collect()
    )
    meter_code, meter_names = _codes(df["meter_id"])
    chan_code, chan_names = _codes(df["channel"])
    n_chan = max(len(chan_names), 1)
    combined = meter_code * n_chan + chan_code
    del meter_code, chan_code
    present = np.zeros(max(len(meter_names), 1) * n_chan, dtype=np.bool_)
    present[combined] = True
    codes = np.flatnonzero(present)
    # Stream codes in (meter_id, channel) order: sorting by stream sorts the output by its keys.
    stream = (np.cumsum(present) - 1).astype(np.int32)[combined]  # half the memory of int64
    del combined
    # One stable integer sort keeps each stream's rows in input order (time order for the
    # simulator's and the store's output; chunks sort by time as well only when that is not
    # so). numpy's stable sort merges the sorted runs that block-ordered input already has.
    order: npt.NDArray[np.int32] | I64 = np.argsort(stream, kind="stable")
    if stream.size < 2**31:
        order = order.astype(np.int32)
    return _Streams(
        stream=stream,
        ts=df["ts"].to_numpy(),
        value=df["value"].to_numpy(),
        valid=df["valid"].to_numpy(),
        answered_bad=df["answered_bad"].to_numpy(),
        order=order,
        counts=np.bincount(stream, minlength=codes.size).astype(np.int64),
        meters=[meter_names[c // n_chan] for c in codes.tolist()],
        channels=[chan_names[c % n_chan] for c in codes.tolist()],
    )


def _starts(stream: I64, n_streams: int) -> tuple[I64, I64]:
    """(first row, row count) of each stream in an array sorted by stream."""
    counts = np.bincount(stream, minlength=n_streams).astype(np.int64)
    first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    return first, counts


def _cadence(stream: I64, ts: I64, n_streams: int) -> I64:
    """Median time between a stream's rows (over up to ~64 evenly spaced ones), snapped to a
    usual interval within 2% (in us)."""
    first, counts = _starts(stream, n_streams)
    stride = np.maximum(counts // 64, 1)
    pos = np.arange(1, stream.size)
    pick = (stream[1:] == stream[:-1]) & ((pos - first[stream[1:]]) % stride[stream[1:]] == 0)
    at = pos[pick]
    d = ts[at] - ts[at - 1]
    at = at[d > 0]
    d = d[d > 0]
    ds = stream[at]
    by = np.lexsort((d, ds))  # a few dozen per stream: small
    d, ds = d[by], ds[by]
    lo, n = _starts(ds, n_streams)
    has = n > 0
    mid_lo = d[np.minimum(lo + (n - 1) // 2, max(d.size - 1, 0))] if d.size else lo
    mid_hi = d[np.minimum(lo + n // 2, max(d.size - 1, 0))] if d.size else lo
    cadence = np.full(n_streams, 900 * US, dtype=np.int64)  # one row only: the usual 15 min
    median = np.rint((mid_lo + mid_hi) / 2.0).astype(np.int64)
    cadence[has] = np.maximum(median[has], 1)
    usual = np.asarray(USUAL_CADENCES_S, dtype=np.int64) * US
    nearest = usual[np.abs(np.log(cadence[:, None] / usual[None, :])).argmin(axis=1)]
    close = np.abs(cadence / nearest - 1.0) <= 0.02
    out: I64 = np.where(close, nearest, np.maximum(np.rint(cadence / US), 1).astype(np.int64) * US)
    return out


# ---------------------------------------------------------------------------------------------
# Ledger: moduli, multipliers, replacement seams
# ---------------------------------------------------------------------------------------------


def _stream_table(st: _Streams) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "meter_id": st.meters,
            "channel": st.channels,
            "stream": np.arange(len(st.meters), dtype=np.int64),
        },
        schema={"meter_id": pl.String, "channel": pl.String, "stream": pl.Int64},
    )


def _ledger(meters: pl.DataFrame | None, st: _Streams) -> tuple[F64, F64, pl.DataFrame]:
    """(modulus by stream (NaN: unknown), multiplier by stream, seams: stream, at, closing,
    opening sorted by stream and time)."""
    n = len(st.meters)
    modulus = np.full(n, np.nan)
    multiplier = np.ones(n)
    seams = pl.DataFrame(
        schema={"stream": pl.Int64, "at": pl.Int64, "closing": pl.Float64, "opening": pl.Float64}
    )
    if meters is None or meters.height == 0 or n == 0:
        return modulus, multiplier, seams
    streams = _stream_table(st)
    cols = meters.columns
    ids = meters.select(pl.col("meter_id").cast(pl.String), *[c for c in cols if c != "meter_id"])
    if "counters" in cols:
        mod = (
            ids.select("meter_id", "counters")
            .explode("counters")
            .unnest("counters")
            .select(
                "meter_id",
                pl.col("channel").cast(pl.String),
                pl.col("modulus").cast(pl.Float64),
            )
            .filter(pl.col("modulus").is_not_null() & (pl.col("modulus") > 0))
            .unique(["meter_id", "channel"], keep="first", maintain_order=True)
            .join(streams, on=["meter_id", "channel"])
        )
        modulus[mod["stream"].to_numpy()] = mod["modulus"].to_numpy()
    if "multiplier" in cols:
        mult = (
            streams.join(
                ids.select("meter_id", pl.col("multiplier").cast(pl.Float64)), on="meter_id"
            )
            .filter(pl.col("multiplier").is_not_null())
            .sort("stream")
        )
        multiplier[mult["stream"].to_numpy()] = mult["multiplier"].to_numpy()
    if "replacements" in cols:
        seams = (
            ids.select("meter_id", "replacements")
            .explode("replacements")
            .drop_nulls("replacements")
            .unnest("replacements")
            .select(
                "meter_id",
                pl.col("channel").cast(pl.String),
                pl.col("at").cast(TS).dt.epoch("us").alias("at"),
                pl.col("closing").cast(pl.Float64),
                pl.col("opening").cast(pl.Float64).fill_null(0.0),
            )
            .join(streams, on=["meter_id", "channel"])
            .select("stream", "at", "closing", "opening")
            .sort("stream", "at")
        )
    return modulus, multiplier, seams


def _seam_offsets(stream: I64, ts: I64, raw: F64, seams: pl.DataFrame) -> tuple[F64, pl.DataFrame]:
    """Offset per kept read putting it on the first register's scale (cumulative
    closing - opening of the seams at or before it), and the seams with their closing filled
    in (the last read before the seam where the ledger has none)."""
    offset = np.zeros(stream.size)
    if seams.height == 0:
        return offset, seams.with_columns(pl.lit(None, pl.Float64).alias("last_read"))
    affected = np.zeros(int(stream.max(initial=0)) + 1, dtype=np.bool_)
    ss = seams["stream"].to_numpy()
    affected[ss[ss < affected.size]] = True
    idx = np.flatnonzero(affected[stream])
    sub = pl.DataFrame({"stream": stream[idx], "ts": ts[idx], "raw": raw[idx], "i": idx})
    before = seams.join_asof(
        sub.select("stream", pl.col("ts").alias("at"), pl.col("raw").alias("last_read")),
        on="at",
        by="stream",
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    )
    # Seams are sorted by (stream, at); the offsets of a stream's later reads add up.
    filled = before.with_columns(
        pl.col("closing").fill_null(pl.col("last_read")).fill_null(pl.col("opening"))
    ).with_columns((pl.col("closing") - pl.col("opening")).cum_sum().over("stream").alias("offset"))
    hit = sub.sort("ts").join_asof(
        filled.select("stream", pl.col("at").alias("ts"), "offset").sort("ts"),
        on="ts",
        by="stream",
        strategy="backward",
        check_sortedness=False,
    )
    offset[hit["i"].to_numpy()] = hit["offset"].fill_null(0.0).to_numpy()
    return offset, filled


# ---------------------------------------------------------------------------------------------
# Bad reads
# ---------------------------------------------------------------------------------------------

_BAD_ZERO, _BAD_DIP, _BAD_JUMP = 1, 2, 3
_BAD_TEXT: Final = {
    _BAD_ZERO: "zero read",
    _BAD_DIP: "read below the reads around it",
    _BAD_JUMP: "implausible jump that came back",
}


def _neighbour(stream: I64, rows: I64, k: int) -> I64:
    """Row k after (k > 0) or before (k < 0) each of `rows` in the same stream, or -1."""
    other = rows + k
    inside = (other >= 0) & (other < stream.size)
    other = np.where(inside, other, 0)
    out: I64 = np.where(inside & (stream[other] == stream[rows]), other, -1)
    return out


def _window(v: F64, stream: I64, rows: I64, ks: range) -> F64:
    """Values at rows + k for k in ks within each row's stream, (len(ks), rows); NaN: none."""
    got = []
    for k in ks:  # a few offsets (max_bad_run), each vectorised over the rows
        nb = _neighbour(stream, rows, k)
        got.append(np.where(nb >= 0, v[np.maximum(nb, 0)], np.nan))
    return np.vstack(got)


def _mean_rate(stream: I64, ts: I64, v: F64, raw: F64, *, ok: B, n_streams: int) -> F64:
    """Mean rate (units/s) of each stream over steps between kept reads (`ok`), leaving out
    steps from an exact zero (a bad zero or a fresh register says nothing of the rate)."""
    idx = np.flatnonzero(ok)
    s, t, x, r = stream[idx], ts[idx], v[idx], raw[idx]
    use = np.zeros(idx.size, dtype=np.bool_)
    use[1:] = (s[1:] == s[:-1]) & (x[1:] >= x[:-1]) & (r[:-1] != 0.0)
    step = np.zeros(idx.size)
    dt = np.zeros(idx.size)
    step[1:] = x[1:] - x[:-1]
    dt[1:] = (t[1:] - t[:-1]) / US
    amount = np.bincount(s[use], weights=step[use], minlength=n_streams)
    span = np.bincount(s[use], weights=dt[use], minlength=n_streams)
    out: F64 = np.where(span > 0, amount / np.where(span > 0, span, 1.0), 0.0)
    return out


def _bad_reads(
    stream: I64, ts: I64, v: F64, raw: F64, *, n_streams: int, params: ConsumptionParams
) -> tuple[npt.NDArray[np.int8], F64]:
    """Kind of bad read of every value row (0: a value) and each stream's mean rate (0 for
    streams that never go down, where no rule needs it).

    A monotone stretch has no bad reads, so the window rules look only at rows within
    `max_bad_run` of a decrease, and the zero rules only at exact zeros of streams that are not
    all zero (an unused export register)."""
    w = params.max_bad_run
    n = stream.size
    kind = np.zeros(n, dtype=np.int8)
    dec = np.flatnonzero((stream[1:] == stream[:-1]) & (v[1:] < v[:-1])) + 1
    if dec.size:
        rows = np.unique((dec[:, None] + np.arange(-w, w)[None, :]).ravel())
        rows = rows[(rows >= 0) & (rows < n)]
        before = _window(v, stream, rows, range(-w, 0))
        after = _window(v, stream, rows, range(1, w + 1))
        x = v[rows]
        with np.errstate(invalid="ignore"):
            # A dip: the lowest earlier read above it is reached again by a later read.
            above = np.fmin.reduce(np.where(before > x, before, np.nan), axis=0)
            dip = above <= np.fmax.reduce(after, axis=0)
            # A jump: the highest later read below it is back at or above an earlier read
            # (a wrap or reset further on, far below every earlier read, does not count).
            below = np.fmax.reduce(np.where(after < x, after, np.nan), axis=0)
            jump = np.fmin.reduce(before, axis=0) <= below
        kind[rows[jump]] = _BAD_JUMP
        kind[rows[dip]] = _BAD_DIP
    zero = raw == 0.0
    moving = np.bincount(stream, weights=~zero, minlength=n_streams) > 0
    z = np.flatnonzero(zero & moving[stream])
    lead = np.zeros(0, dtype=np.int64)
    after = np.zeros(0, dtype=np.int64)
    if z.size:
        nz = np.flatnonzero(~zero)
        k = np.searchsorted(nz, z)
        before = np.where(k > 0, nz[np.maximum(k - 1, 0)], -1)
        after = np.where(k < nz.size, nz[np.minimum(k, nz.size - 1)], -1)
        before = np.where((before >= 0) & (stream[np.maximum(before, 0)] == stream[z]), before, -1)
        after = np.where((after >= 0) & (stream[np.maximum(after, 0)] == stream[z]), after, -1)
        first, counts = _starts(stream, n_streams)
        to_end = (first + counts)[stream[z]] - z
        hb, ha = before >= 0, after >= 0
        with np.errstate(invalid="ignore"):
            mid = hb & ha & (v[np.maximum(before, 0)] <= v[np.maximum(after, 0)])
        tail = hb & ~ha & (to_end <= w)
        kind[z[mid | tail]] = _BAD_ZERO
        lead_at = ~hb & ha
        lead, after = z[lead_at], after[lead_at]
    need = np.zeros(n_streams, dtype=np.bool_)
    need[stream[dec]] = True
    need[stream[lead]] = True
    rate = np.zeros(n_streams)
    if need.any():
        rate = _mean_rate(stream, ts, v, raw, ok=need[stream] & (kind == 0), n_streams=n_streams)
    if lead.size:
        # Leading zeros before a register far from zero: the first reads were bad zeros.
        bound = params.headroom * rate[stream[lead]] * (ts[after] - ts[lead]) / US
        kind[lead[raw[after] > bound + params.near_zero]] = _BAD_ZERO
    return kind, rate


# ---------------------------------------------------------------------------------------------
# Pairs of kept reads: the delta between them and what it was
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pairs:
    """Consecutive kept reads (p, j) of a stream; the drop arrays are over `drop` only."""

    stream: I64
    j: I64  # row of the later read (the earlier one is j - 1)
    delta: F64  # consumption between them in register units (NaN: none)
    n_slots: I64  # grid slots between them
    drop: I64  # pair indices whose step is negative
    roll: B
    reset: B
    lost: B
    modulus: F64
    inferred: B


def _pairs(
    s: I64, t: I64, r: F64, v: F64, sl: I64, *, rate: F64, modulus: F64, params: ConsumptionParams
) -> _Pairs:
    j = np.flatnonzero(s[1:] == s[:-1]) + 1
    ps = s[j]
    delta = v[j] - v[j - 1]
    drop = np.flatnonzero(delta < 0)
    jd = j[drop]
    sd = ps[drop]
    rp, rj = r[jd - 1], r[jd]
    slack = params.headroom * rate[sd] * (t[jd] - t[jd - 1]) / US + params.near_zero
    known = modulus[sd]
    with np.errstate(divide="ignore", invalid="ignore"):
        power = 10.0 ** (np.floor(np.log10(np.where(rp > 0, rp, 1.0))) + 1.0)
    inferred = np.isnan(known) & (rp >= params.min_inferred_modulus)
    mod = np.where(np.isnan(known), np.where(inferred, power, np.nan), known)
    # Near zero after the drop (what a fresh register can have counted), and near enough to
    # the modulus before it to have reached it: both within the stream's plausible use, or a
    # small share of the register's size (a wrap right after an idle spell is still a wrap).
    near_zero = rj <= slack + params.near_zero_share * rp
    with np.errstate(invalid="ignore"):
        to_top = mod - rp
        roll = near_zero & (to_top >= 0) & (to_top <= slack + params.near_zero_share * mod)
    wrap = mod - rp + rj
    reset = ~roll & near_zero
    lost = ~roll & ~reset
    delta[drop] = np.where(roll, wrap, np.where(reset, rj, np.nan))
    return _Pairs(
        stream=ps,
        j=j,
        delta=delta,
        n_slots=sl[j] - sl[j - 1],
        drop=drop,
        roll=roll,
        reset=reset,
        lost=lost,
        modulus=mod,
        inferred=inferred & roll,
    )


# ---------------------------------------------------------------------------------------------
# Intervals: one per slot, gaps spread by the stream's profile
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Out:
    stream: I64
    slot: I64
    consumption: F64
    quality: npt.NDArray[np.int8]  # index in CONSUMPTION_QUALITY, -1: no value
    topped: B  # per drop: a reset topped up by the profile
    even: B  # per pair: spread evenly (no profile)


def _spread(pr: _Pairs, sl: I64, *, anchor: I64, cadence: I64, params: ConsumptionParams) -> _Out:
    counts = pr.n_slots
    npairs = counts.size
    start_slot = sl[pr.j - 1]
    topped = np.zeros(pr.drop.size, dtype=np.bool_)
    even = np.zeros(npairs, dtype=np.bool_)
    if not npairs or (
        counts.max() == 1 and not (pr.reset.any() and params.reset_fill == "profile")
    ):
        quality = np.zeros(npairs, dtype=np.int8)  # measured
        quality[pr.drop[pr.lost]] = -1
        return _Out(pr.stream, start_slot, pr.delta.copy(), quality, topped, even)
    out_start = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    total = int(out_start[-1] + counts[-1])
    stream = np.repeat(pr.stream, counts)
    slot = np.repeat(start_slot - out_start, counts) + np.arange(total, dtype=np.int64)
    cons = np.repeat(pr.delta, counts)
    quality = np.full(total, _Q_MEASURED, dtype=np.int8)
    lost = np.zeros(npairs, dtype=np.bool_)
    lost[pr.drop[pr.lost]] = True
    reset = np.zeros(npairs, dtype=np.bool_)
    reset[pr.drop[pr.reset]] = True
    needs = ((counts > 1) & ~lost) | (reset & (params.reset_fill == "profile"))
    nd = np.flatnonzero(needs)
    if nd.size:
        where = _positions(out_start[nd], counts[nd])
        drops = np.zeros(npairs, dtype=np.bool_)
        drops[pr.drop] = True
        weight = _profile_weights(
            s=pr.stream,
            measured=(counts == 1) & ~drops,
            start_slot=start_slot,
            delta=pr.delta,
            anchor=anchor,
            cadence=cadence,
            want_stream=stream[where],
            want_slot=slot[where],
            min_samples=params.profile_samples,
        )
        local = np.repeat(np.arange(nd.size), counts[nd])
        wsum = np.bincount(local, weights=weight, minlength=nd.size)
        amount = pr.delta[nd]
        top = np.zeros(nd.size, dtype=np.bool_)
        if params.reset_fill == "profile":
            top = reset[nd] & (wsum > amount)
            amount = np.where(top, wsum, amount)
            is_top = np.zeros(npairs, dtype=np.bool_)
            is_top[nd[top]] = True
            topped = is_top[pr.drop]
        flat = ~(wsum > 0)
        even[nd] = flat
        share = np.where(
            flat[local], 1.0 / counts[nd][local], weight / np.where(flat, 1.0, wsum)[local]
        )
        cons[where] = amount[local] * share
        est = (counts[nd] > 1) | top
        quality[where] = np.where(est[local], _Q_ESTIMATED, _Q_MEASURED)
    quality[_positions(out_start[lost], counts[lost])] = -1
    return _Out(stream, slot, cons, quality, topped, even)


# ---------------------------------------------------------------------------------------------
# The pass
# ---------------------------------------------------------------------------------------------


def _empty() -> ConsumptionResult:
    return ConsumptionResult(
        pl.DataFrame(schema=CONSUMPTION_SCHEMA), pl.DataFrame(schema=COUNTER_EVENTS_SCHEMA)
    )


def consumption(
    readings: pl.DataFrame | pl.LazyFrame,
    meters: pl.DataFrame | None = None,
    *,
    params: ConsumptionParams | None = None,
) -> ConsumptionResult:
    """Interval consumption of every counter channel, with the counter events that shaped it.

    `readings` as in `analytics.frames` (meter_id and channel as String or Enum; non-counter
    channels are ignored); `meters` optionally gives each meter's counter moduli, replacements
    and multiplier. See the module docstring for the rules. A register wrapping at its
    declared modulus of 100 000:

    >>> import datetime as dt
    >>> t = [dt.datetime(2026, 1, 5, 0, m, tzinfo=dt.UTC) for m in (0, 15, 30, 45)]
    >>> readings = pl.DataFrame({"meter_id": "m1", "channel": "energy_import_kwh", "ts": t,
    ...     "value": [99_998.0, 99_999.5, 1.0, 2.0], "quality": "good"})
    >>> meters = pl.DataFrame({"meter_id": ["m1"], "counters": [[{"channel":
    ...     "energy_import_kwh", "opening": 99_990.0, "modulus": 100_000.0}]]})
    >>> out = consumption(readings, meters)
    >>> out.intervals["consumption"].to_list(), out.intervals["quality"].to_list()
    ([1.5, 1.5, 1.0], ['measured', 'measured', 'measured'])
    >>> out.events.select("event", "detail").row(0)
    ('rollover', 'at modulus 100000.0 (ledger): 99999.5 -> 1.0')
    """
    params = ConsumptionParams() if params is None else params
    st = _prepare(readings)
    if st.n == 0:
        return _empty()
    ledger = _ledger(meters, st)
    # Whole streams at a time, about `chunk_rows` rows each: streams are independent, and the
    # working arrays stay chunk-sized while the output grows.
    ends = np.cumsum(st.counts)
    cuts = np.unique(np.searchsorted(ends, np.arange(1, ends[-1] // params.chunk_rows + 1)
                                     * params.chunk_rows))  # fmt: skip
    bounds = [0, *[int(ends[c]) for c in cuts if ends[c] < ends[-1]], int(ends[-1])]
    intervals, events = [], []
    for lo, hi in itertools.pairwise(bounds):
        iv, ev = _chunk(st, st.order[lo:hi], ledger, params)
        intervals.append(iv)
        events.append(ev)
    return ConsumptionResult(pl.concat(intervals), pl.concat(events))


def _chunk(
    st: _Streams,
    rows: npt.NDArray[np.int32] | I64,
    ledger: tuple[F64, F64, pl.DataFrame],
    params: ConsumptionParams,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Intervals and events of the streams whose rows (in stream order) are `rows`."""
    modulus, multiplier, seams = ledger
    rows = rows.astype(np.int64)
    stream, ts = st.stream[rows].astype(np.int64), st.ts[rows]
    if ((stream[1:] == stream[:-1]) & (ts[1:] < ts[:-1])).any():
        again = np.lexsort((ts, stream))
        rows, stream, ts = rows[again], stream[again], ts[again]
    cadence = _cadence(stream, ts, st.n)
    first_row, row_count = _starts(stream, st.n)
    here = row_count > 0
    anchor = np.where(here, ts[np.minimum(first_row, ts.size - 1)], 0)
    last_ts = np.where(here, ts[np.minimum(first_row + row_count - 1, ts.size - 1)], 0)
    c_row = cadence[stream]
    slot_all = (ts - anchor[stream] + c_row // 2) // c_row
    del c_row
    events: list[pl.DataFrame] = []
    ab = np.flatnonzero(st.answered_bad[rows])
    if ab.size:
        text = "not a value (NaN sentinel, out of range or negative)"
        events.append(_events(stream[ab], ts[ab], "bad_read", pl.lit(text)))

    # Value rows; of reads snapped to one slot (a drifting clock), the last one stays.
    vi = np.flatnonzero(st.valid[rows])
    s_v, sl_v = stream[vi], slot_all[vi]
    vi = vi[np.append((s_v[:-1] != s_v[1:]) | (sl_v[:-1] != sl_v[1:]), True)] if vi.size else vi
    del s_v, sl_v
    stream, ts, raw, slot = stream[vi], ts[vi], st.value[rows[vi]], slot_all[vi]
    del slot_all, vi

    seams = seams.filter(pl.col("stream").is_in(np.flatnonzero(here)))
    offset, seams = _seam_offsets(stream, ts, raw, seams)
    v = raw + offset if seams.height else raw
    kind, rate = _bad_reads(stream, ts, v, raw, n_streams=st.n, params=params)
    bad = np.flatnonzero(kind)
    if bad.size:
        what = pl.Series(kind[bad]).replace_strict(_BAD_TEXT, return_dtype=pl.String)
        events.append(
            _events(stream[bad], ts[bad], "bad_read", _fmt(raw[bad]) + pl.lit(": ") + what)
        )
        keep = kind == 0
        stream, ts, raw, v, slot = stream[keep], ts[keep], raw[keep], v[keep], slot[keep]

    pr = _pairs(stream, ts, raw, v, slot, rate=rate, modulus=modulus, params=params)
    out = _spread(pr, slot, anchor=anchor, cadence=cadence, params=params)
    events += _pair_events(pr, ts, raw, out, multiplier)
    del stream, raw, v, slot, pr
    cons = np.maximum(out.consumption * multiplier[out.stream], 0.0)  # NaN (no value) stays
    start = anchor[out.stream] + out.slot * cadence[out.stream]
    end = start + cadence[out.stream]
    intervals = _interval_frame(
        st, out.stream, start=start, end=end, cons=cons, quality=out.quality
    )
    if seams.height:
        ss, at = seams["stream"].to_numpy(), seams["at"].to_numpy()
        sm = seams.filter(pl.Series((at >= anchor[ss]) & (at <= last_ts[ss])))
        if sm.height:
            detail = (
                pl.lit("closing ") + _fmt(sm["closing"].to_numpy()) + pl.lit(", opening ")
                + _fmt(sm["opening"].to_numpy()) + pl.lit(" (ledger)")
            )  # fmt: skip
            events.append(
                _events(sm["stream"].to_numpy(), sm["at"].to_numpy(), "replacement", detail)
            )
    return intervals, _event_frame(st, events)


def _pair_events(pr: _Pairs, ts: I64, raw: F64, out: _Out, multiplier: F64) -> list[pl.DataFrame]:
    events = []
    jd = pr.j[pr.drop]
    rp, rj = raw[jd - 1], raw[jd]
    before_after = [_fmt(rp), pl.lit(" -> "), _fmt(rj)]

    def add(mask: B, event: str, detail: list[pl.Expr]) -> None:
        if mask.any():
            picked = pl.select(pl.concat_str(detail)).to_series().filter(pl.Series(mask))
            events.append(_events(pr.stream[pr.drop][mask], ts[jd][mask], event, pl.lit(picked)))

    source = _text(np.where(pr.inferred, " (inferred)", " (ledger)"))
    add(pr.roll, "rollover", [pl.lit("at modulus "), _fmt(pr.modulus), source, pl.lit(": "),
                              *before_after])  # fmt: skip
    how = np.where(out.topped, "; topped up to the typical use of the interval", "")
    add(pr.reset, "reset", [*before_after, pl.lit(": counted from 0"), _text(how)])
    text = ": not a rollover, reset or replacement; no consumption"
    add(pr.lost, "unexplained_drop", [*before_after, pl.lit(text)])
    lost = np.zeros(pr.j.size, dtype=np.bool_)
    lost[pr.drop[pr.lost]] = True
    gap = np.flatnonzero((pr.n_slots > 1) & ~lost)
    if gap.size:
        spread = np.where(out.even[gap], " spread evenly", " spread by the hour-of-week profile")
        detail = (
            pl.lit(pl.Series(pr.n_slots[gap] - 1).cast(pl.String))
            + pl.lit(" slots without a kept read; ")
            + _fmt(pr.delta[gap] * multiplier[pr.stream[gap]])
            + _text(spread)
        )
        events.append(_events(pr.stream[gap], ts[pr.j[gap] - 1], "gap", detail))
    return events


def _positions(starts: I64, counts: I64) -> I64:
    """The output rows [starts[i], starts[i] + counts[i]) of every i, concatenated."""
    offs = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    out: I64 = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - offs, counts)
    return out


def hour_of_week(start_us: I64) -> I64:
    """UTC hour of the week (0 = Monday 00:00) of instants in microseconds since the epoch.

    >>> hour_of_week(np.asarray([0, 4 * 86_400 * 1_000_000])).tolist()  # Thu, then Mon 00:00
    [72, 0]
    """
    out: I64 = (start_us // HOUR_US + 72) % 168
    return out


def _profile_weights(
    *,
    s: I64,
    measured: B,
    start_slot: I64,
    delta: F64,
    anchor: I64,
    cadence: I64,
    want_stream: I64,
    want_slot: I64,
    min_samples: int,
) -> F64:
    """A stream's typical consumption in each wanted slot: the mean of its measured intervals
    at that UTC hour of week when it has `min_samples` of them, else at that hour of day, else
    over all its measured intervals, else 0.

    Means, not medians: a reset is topped up by the expected use it lost, and the median of
    bursty use (water, most 15-minute intervals of a flat) is zero."""
    needed = np.zeros(int(max(s.max(initial=0), want_stream.max(initial=0))) + 1, np.bool_)
    needed[want_stream] = True
    m = np.flatnonzero(measured & needed[s])
    how = hour_of_week(anchor[s[m]] + start_slot[m] * cadence[s[m]])
    seen = pl.DataFrame(
        {"stream": s[m], "how": how, "hod": how % 24, "d": delta[m]},
        schema={"stream": pl.Int64, "how": pl.Int64, "hod": pl.Int64, "d": pl.Float64},
    )
    typical = [
        seen.group_by("stream", *keys).agg(
            pl.col("d").mean().alias(f"mean_{i}"), pl.len().alias(f"n_{i}")
        )
        for i, keys in enumerate((["how"], ["hod"], []))
    ]
    want_how = hour_of_week(anchor[want_stream] + want_slot * cadence[want_stream])
    want = pl.DataFrame(
        {"stream": want_stream, "how": want_how, "hod": want_how % 24},
        schema={"stream": pl.Int64, "how": pl.Int64, "hod": pl.Int64},
    )
    joined = want
    for frame, keys in zip(
        typical, (["stream", "how"], ["stream", "hod"], ["stream"]), strict=True
    ):
        joined = joined.join(frame, on=keys, how="left", maintain_order="left")
    enough = [pl.col(f"n_{i}") >= min_samples for i in range(2)]
    w = joined.select(
        pl.when(enough[0])
        .then("mean_0")
        .when(enough[1])
        .then("mean_1")
        .otherwise(pl.col("mean_2").fill_null(0.0))
        .clip(lower_bound=0.0)
    ).to_series()
    return np.asarray(w.to_numpy(), dtype=np.float64)


def _fmt(x: F64) -> pl.Expr:
    """Numbers in event details: 7 significant digits, as Polars prints them."""
    return pl.lit(pl.Series(x, dtype=pl.Float64).round_sig_figs(7).cast(pl.String))


def _text(x: npt.NDArray[np.str_]) -> pl.Expr:
    return pl.lit(pl.Series(x, dtype=pl.String))


def _events(stream: I64, ts: I64, event: str, detail: pl.Expr) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "stream": np.asarray(stream, dtype=np.int64),
            "ts": np.asarray(ts, dtype=np.int64),
            "event": np.full(len(stream), _EVENT[event], dtype=np.int64),
        }
    ).with_columns(detail.cast(pl.String).alias("detail"))


def _names(st: _Streams, stream: I64) -> tuple[pl.Series, pl.Series]:
    idx = pl.Series(stream, dtype=pl.Int64)
    meter = pl.Series("meter_id", st.meters, dtype=pl.String).gather(idx)
    channel = pl.Series("channel", st.channels, dtype=pl.String).gather(idx)
    return meter, channel


def _interval_frame(
    st: _Streams, stream: I64, *, start: I64, end: I64, cons: F64, quality: npt.NDArray[np.int8]
) -> pl.DataFrame:
    meter, channel = _names(st, stream)
    q = pl.Series("quality", quality, dtype=pl.Int8)
    q = pl.select(pl.when(q >= 0).then(q)).to_series()
    return pl.DataFrame(
        [
            meter,
            channel,
            pl.Series("start", start, dtype=pl.Int64).cast(TS),
            pl.Series("end", end, dtype=pl.Int64).cast(TS),
            pl.Series("consumption", cons, dtype=pl.Float64).fill_nan(None),
            q.cast(pl.UInt8).cat.to(CONSUMPTION_SCHEMA["quality"]).alias("quality"),
        ]
    )


def _event_frame(st: _Streams, parts: list[pl.DataFrame]) -> pl.DataFrame:
    if not parts:
        return pl.DataFrame(schema=COUNTER_EVENTS_SCHEMA)
    ev = pl.concat(parts).sort("stream", "ts", "event", "detail")
    meter, channel = _names(st, ev["stream"].to_numpy())
    return pl.DataFrame(
        [
            meter,
            channel,
            ev["ts"].cast(TS),
            ev["event"].cast(pl.UInt8).cat.to(COUNTER_EVENTS_SCHEMA["event"]),
            ev["detail"],
        ]
    )
