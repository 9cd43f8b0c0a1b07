"""Communication loss: a stream that stops answering, or keeps failing, against its own cadence.

Each stream (meter, channel) has an expected cadence, inferred from its readings (the median
step between consecutive ones), so a 10-second MQTT plug and a 15-minute Modbus meter are held
to their own rhythm. A poll is *lost* when the gateway recorded `comm_error` (or a null value)
for it, or when no row exists where the cadence says one should be. Three rules:

- `comm_loss.silence`: at least `silence_polls` consecutive lost polls (also at the end of the
  data, measured to the last instant any stream reported: a meter that went quiet);
- `comm_loss.intermittent`: at least `intermittent_polls` lost polls within any
  `intermittent_window` consecutive expected polls (a busy or flaky device that answers some of
  the time). A single lost poll in a window is not a finding: networks drop the odd request,
  and a counter carries the energy across it;
- `comm_loss.no_value`: at least `nan_polls` consecutive NaN-sentinel answers (the device talks
  but gives no value) - a longer run than for silence, because a short NaN spell is a read
  glitch (consumption treats it as a bad read), not a lost link.

Silence that ends at a meter replacement listed in `meters.replacements` (within
`replacement_slack_s`) is planned work, not a fault, and is not reported. Next to readings
stamped by a drifting meter clock (`clock_suspect`) a gap in time is not counted as lost polls
(a resynchronised clock jumps); only the lost polls on record count there.

Most streams lose nothing, so one group-by over all readings picks the streams that lost any
poll, and the rules run on those alone.

What the simulators' faults look like to these rules (decided, and measured by the evaluation):
`no_response`, and `slow` with `times_out` true, are silence; `slow` within the timeout is not
a loss at all; `busy` with probability p loses each poll with probability p, so it is found
when it costs at least two polls in a window of eight - a one-hour `busy` at p = 0.5 on a
15-minute cadence (four polls) does that 11 times in 16, and is physically undetectable
otherwise.

Findings are per meter: the episodes of a meter's channels that overlap are merged into one,
whose evidence lists the channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from analytics.detectors.common import (
    concat_findings,
    iso,
    merge_overlaps,
    severity,
    sort_streams,
    to_findings,
)
from analytics.frames import FINDINGS_SCHEMA, TS, empty


@dataclass(frozen=True, slots=True)
class CommLossParams:
    """Thresholds of the communication-loss rules (polls are expected readings of a stream)."""

    silence_polls: int = 2
    intermittent_polls: int = 2
    intermittent_window: int = 8
    nan_polls: int = 8
    critical_hours: float = 24.0  # silence this long is critical
    replacement_slack_s: float = 3600.0


def detect_comm_loss(
    readings: pl.DataFrame,
    consumption: pl.DataFrame | None,
    meters: pl.DataFrame,
    *,
    params: CommLossParams = CommLossParams(),
    weather: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Communication-loss findings (`FINDINGS_SCHEMA`) of `readings` against each stream's own
    cadence. `consumption` and `weather` are not used (the signature is every detector's).

    >>> import datetime as dt
    >>> t = [dt.datetime(2026, 1, 5, tzinfo=dt.UTC) + dt.timedelta(minutes=15 * i)
    ...     for i in range(12)]
    >>> q = ["good"] * 4 + ["comm_error"] * 3 + ["good"] * 5
    >>> readings = pl.DataFrame({"meter_id": ["m1"] * 12, "channel": ["power_w"] * 12,
    ...     "ts": t, "value": [1.0] * 12, "quality": q})
    >>> out = detect_comm_loss(readings, None, pl.DataFrame({"meter_id": ["m1"]}))
    >>> out.select("subject", "rule", pl.col("start").dt.strftime("%H:%M"),
    ...     pl.col("end").dt.strftime("%H:%M"), "severity").rows()
    [('m1', 'comm_loss.silence', '01:00', '01:30', 'warning')]
    """
    del consumption, weather
    if readings.height == 0:
        return empty(FINDINGS_SCHEMA)
    df, t_end = _polls(readings)
    if df.height == 0:
        return empty(FINDINGS_SCHEMA)
    silence = _silence(df, t_end, params)
    intermittent = _outside(_intermittent(df, params), silence)
    # the swap's own silence (and what it costs a rolling window) is planned work
    silence = _drop_replacements(silence, meters, params)
    intermittent = _drop_replacements(intermittent, meters, params)
    no_value = _no_value(df, params)
    return concat_findings(
        [
            _merged(silence, "comm_loss.silence", params),
            _merged(intermittent, "comm_loss.intermittent", params),
            _merged(no_value, "comm_loss.no_value", params),
        ]
    )


def _polls(readings: pl.DataFrame) -> tuple[pl.DataFrame, float]:
    """The polls of the streams that lost any (in stream order, with the stream's cadence in
    seconds and each poll's state: responsive - the device answered - and valued - with a
    number), and the last instant of the data (unix seconds).

    Most streams lose nothing: one group-by over all readings finds the few that did (a lost
    or NaN poll, a step longer than their cadence, a silent tail), and the rules run on those."""
    df = sort_streams(
        readings.select("meter_id", "channel", "ts", "value", "quality"), ["meter_id", "channel"]
    )
    s = pl.col("_stream")
    lost = (pl.col("quality") == "comm_error").fill_null(False) | pl.col("value").is_null()
    df = df.with_columns((pl.col("ts").dt.epoch("us") / 1e6).alias("t")).with_columns(
        pl.when(s == s.shift(1)).then(pl.col("t").diff()).alias("step"),
        (~lost).alias("responsive"),
        (pl.col("quality") == "clock_suspect").fill_null(False).alias("clock"),
    )
    df = df.with_columns(
        (pl.col("responsive") & ~pl.col("value").is_nan().fill_null(False)).alias("valued")
    )
    t_end = float(df.get_column("t").max())  # type: ignore[arg-type]
    # Suspects by cheap aggregates: the shortest step stands in for the cadence (a jittery
    # stream is then looked at more closely, never less); the median comes on suspects only.
    stats = df.group_by("_stream").agg(
        pl.col("step").filter(pl.col("step") > 0).min().alias("shortest"),
        pl.col("step").max().alias("max_step"),
        pl.col("t").filter(pl.col("responsive")).max().alias("last_t"),
        (~pl.col("valued")).any().alias("unvalued"),
    )
    slack = 1.5 * pl.col("shortest")
    suspect = stats.filter(
        pl.col("unvalued")
        | (pl.col("max_step") > slack)
        | pl.col("last_t").is_null()
        | (pl.col("last_t") < t_end - slack)
        | pl.col("shortest").is_null()
    ).select("_stream")
    sub = df.filter(s.is_in(suspect.get_column("_stream").implode())).drop("quality", "value")
    cadence = sub.group_by("_stream").agg(
        pl.col("step").filter(pl.col("step") > 0).median().alias("cadence")
    )
    sub = sub.join(cadence, on="_stream", how="left", maintain_order="left")
    return sub.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64)), t_end


def _silence(df: pl.DataFrame, t_end: float, params: CommLossParams) -> pl.DataFrame:
    """Gaps between consecutive answered polls of a stream worth `silence_polls` or more lost
    polls, plus a silent tail up to the data's last instant and a silent head from the stream's
    first row."""
    s = pl.col("_stream")
    resp = df.filter(pl.col("responsive")).select(
        "_stream", "meter_id", "channel", "t", "cadence", "clock", "_row"
    )
    end_s = t_end
    first = df.group_by("_stream").agg(pl.col("t").min().alias("first_t"))
    # Gaps: previous answered poll -> this one. Lost polls = steps of the cadence between them.
    # Next to a stamp from a drifting meter clock (clock_suspect) a gap in time proves nothing:
    # a resynchronised clock jumps. There only the lost polls on record count.
    same = s == s.shift(1)
    untrusted = pl.col("clock") | pl.col("clock").shift(1)
    gaps = resp.with_columns(
        pl.when(same).then(pl.col("t").shift(1)).alias("prev_t"),
        pl.when(same & untrusted)
        .then(pl.col("_row") - pl.col("_row").shift(1) - 1)
        .cast(pl.Float64)
        .alias("explicit"),
    ).join(first, on="_stream", how="left")
    # A stream's first answered poll after silent rows: the head of the stream was silent.
    gaps = gaps.with_columns(
        pl.when(pl.col("prev_t").is_null() & (pl.col("first_t") < pl.col("t")))
        .then(pl.col("first_t") - pl.col("cadence"))
        .otherwise(pl.col("prev_t"))
        .alias("prev_t")
    ).drop("first_t")
    rows_end = df.group_by("_stream").agg(pl.col("_row").max().alias("last_row"))
    tails = (
        resp.group_by("_stream", maintain_order=True)
        .agg(pl.all().last())
        .join(rows_end, on="_stream", how="left")
        .with_columns(pl.col("t").alias("prev_t"), pl.lit(end_s).alias("t"))
        .with_columns(pl.col("t") + pl.col("cadence"))  # the tail ends after the last instant
        # a stream whose last answer carried a drifting clock's stamp: only lost rows count
        .with_columns(
            pl.when(pl.col("clock"))
            .then(pl.col("last_row") - pl.col("_row"))
            .cast(pl.Float64)
            .alias("explicit")
        )
    )
    # Streams that never answered: silent from their first row to the end.
    never = (
        df.group_by("_stream", maintain_order=True)
        .agg(
            pl.col("meter_id").first(),
            pl.col("channel").first(),
            pl.col("t").min().alias("first_t"),
            pl.col("cadence").first(),
            pl.col("responsive").any().alias("any"),
        )
        .filter(~pl.col("any"))
        .select(
            "_stream",
            "meter_id",
            "channel",
            pl.lit(end_s).alias("t"),
            "cadence",
            (pl.col("first_t") - pl.col("cadence")).alias("prev_t"),
        )
        .with_columns(pl.col("t") + pl.col("cadence"))
    )
    cols = ["meter_id", "channel", "prev_t", "t", "cadence", "explicit"]
    nothing = pl.lit(None, pl.Float64).alias("explicit")
    allg = pl.concat(
        [
            gaps.select(cols),
            tails.select(cols),
            never.with_columns(nothing).select(cols),
        ]
    )
    lost = pl.coalesce(
        pl.col("explicit"), ((pl.col("t") - pl.col("prev_t")) / pl.col("cadence")).round(0) - 1
    )
    out = allg.with_columns(lost.alias("lost")).filter(
        pl.col("cadence").is_not_null() & (pl.col("lost") >= params.silence_polls)
    )
    return out.select(
        pl.col("meter_id").cast(pl.String),
        pl.col("channel").cast(pl.String),
        _ts(pl.col("prev_t") + pl.col("cadence")).alias("start"),
        _ts(pl.col("t") - pl.col("cadence")).alias("end"),
        pl.col("lost").cast(pl.Int64),
        pl.lit(None, pl.Int64).alias("window"),
        "cadence",
    )


def _intermittent(df: pl.DataFrame, params: CommLossParams) -> pl.DataFrame:
    """Runs of polls where the last `intermittent_window` expected polls include at least
    `intermittent_polls` lost ones (lost rows plus polls missing between rows)."""
    w = params.intermittent_window
    s = pl.col("_stream")
    untrusted = pl.col("clock") | (pl.col("clock").shift(1) & (s == s.shift(1)))
    missing = pl.when(~untrusted).then((pl.col("step") / pl.col("cadence")).round(0) - 1)
    lost_here = (~pl.col("responsive")).cast(pl.Int64) + missing.clip(0, w).fill_null(0).cast(
        pl.Int64
    )
    work = df.select("_stream", "meter_id", "channel", "ts", "cadence", lost_here.alias("lost"))
    if int(work.get_column("lost").sum()) == 0:
        return _no_rows()
    # Rolling count of lost polls over the last w rows of the same stream: a cumulative sum,
    # differenced w rows back, and clipped at the stream's start.
    # (the cumulative sum is a column first: inside `over` it would restart per stream)
    work = work.with_columns(pl.col("lost").cum_sum().alias("_cs"))
    cs = pl.col("_cs")
    start_cs = (cs - pl.col("lost")).first().over("_stream")
    back = pl.when(s.shift(w) == s).then(cs.shift(w)).otherwise(start_cs)
    work = work.with_columns((cs - back).alias("in_window"))
    flag = pl.col("in_window") >= params.intermittent_polls
    # the spell's count is the most lost polls its window held (a run of flagged polls begins at
    # the poll that completed the count: the earlier losses are in its window, not in the run)
    out = (
        _runs(work, flag, pl.col("in_window").max())
        .filter(pl.col("lost_total") >= params.intermittent_polls)
        .collect()
    )
    return _spells(out, w)


def _spells(runs: pl.DataFrame, window: int | None) -> pl.DataFrame:
    """`_runs` rows as spells: string ids, the lost-poll count and the window it was counted in
    (None for a plain run)."""
    return runs.select(
        pl.col("meter_id").cast(pl.String),
        pl.col("channel").cast(pl.String),
        "start",
        "end",
        pl.col("lost_total").alias("lost"),
        pl.lit(window, pl.Int64).alias("window"),
        "cadence",
    )


def _runs(work: pl.DataFrame, flag: pl.Expr, count: pl.Expr | None = None) -> pl.LazyFrame:
    """Runs of `flag` per stream: first instant, last lost poll, `lost_total` (`count`, by
    default the lost polls in the run) and the cadence."""
    s = pl.col("_stream")
    total = count if count is not None else pl.col("lost").sum()
    new = flag & ~(flag.shift(1, fill_value=False) & (s == s.shift(1)).fill_null(False))
    return (
        work.lazy()
        .with_columns(flag.alias("_flag"), new.cast(pl.UInt32).cum_sum().alias("_run"))
        .filter(pl.col("_flag"))
        .group_by("_run", maintain_order=True)
        .agg(
            pl.col("meter_id").first(),
            pl.col("channel").first(),
            pl.col("ts").first().alias("start"),
            pl.col("ts").filter(pl.col("lost") > 0).max().alias("end"),
            total.alias("lost_total"),
            pl.col("cadence").first(),
        )
        .drop("_run")
    )


def _no_value(df: pl.DataFrame, params: CommLossParams) -> pl.DataFrame:
    """Runs of at least `nan_polls` consecutive NaN answers in a stream."""
    nan = pl.col("responsive") & ~pl.col("valued")
    if not bool(df.select(nan.any()).item()):
        return _no_rows()
    work = df.select(
        "_stream", "meter_id", "channel", "ts", "cadence", nan.cast(pl.Int64).alias("lost")
    )
    out = _runs(work, pl.col("lost") > 0).filter(pl.col("lost_total") >= params.nan_polls)
    return _spells(out.collect(), None)


def _outside(episodes: pl.DataFrame, cover: pl.DataFrame) -> pl.DataFrame:
    """`episodes` not contained in an episode of `cover` on the same stream (an intermittent
    spell that is all one silence is that silence). An intermittent spell is dated by the
    answered polls that reveal the lost ones, so it may end one cadence after the silence."""
    if episodes.height == 0 or cover.height == 0:
        return episodes
    indexed = episodes.with_row_index("_i")
    slack = pl.duration(microseconds=(pl.col("c") * 1e6).cast(pl.Int64))
    inside = (
        indexed.join(
            cover.select(
                "meter_id",
                "channel",
                pl.col("start").alias("s"),
                pl.col("end").alias("e"),
                pl.col("cadence").alias("c"),
            ),
            on=["meter_id", "channel"],
        )
        .filter((pl.col("start") >= pl.col("s")) & (pl.col("end") <= pl.col("e") + slack))
        .get_column("_i")
        .unique()
    )
    return indexed.filter(~pl.col("_i").is_in(inside.implode())).drop("_i")


def _drop_replacements(
    silence: pl.DataFrame, meters: pl.DataFrame, params: CommLossParams
) -> pl.DataFrame:
    """Silence ending at a listed meter replacement (the swap's downtime) is not a fault."""
    if silence.height == 0 or "replacements" not in meters.columns:
        return silence
    swaps = (
        meters.select(pl.col("meter_id").cast(pl.String), "replacements")
        .explode("replacements")
        .filter(pl.col("replacements").is_not_null())
        .select("meter_id", pl.col("replacements").struct.field("at").cast(TS).alias("at"))
        .unique()
    )
    if swaps.height == 0:
        return silence
    slack = pl.duration(microseconds=int(params.replacement_slack_s * 1e6))
    indexed = silence.with_row_index("_i")
    explained = (
        indexed.join(swaps, on="meter_id", how="inner")
        .filter((pl.col("at") >= pl.col("start") - slack) & (pl.col("at") <= pl.col("end") + slack))
        .get_column("_i")
        .unique()
    )
    return indexed.filter(~pl.col("_i").is_in(explained.implode())).drop("_i")


def _merged(episodes: pl.DataFrame, rule: str, params: CommLossParams) -> pl.DataFrame:
    """One finding per meter and overlapping episodes of its channels."""
    if episodes.height == 0:
        return empty(FINDINGS_SCHEMA)
    grouped = (
        merge_overlaps(
            episodes.lazy(),
            key="meter_id",
            aggs=[
                pl.col("channel").unique().sort().alias("channels"),
                pl.col("lost").max().alias("lost"),
                pl.col("cadence").min().alias("cadence"),
                pl.col("window").first().alias("window"),
            ],
        )
        .collect()
        .with_columns(
            _severity(rule, params).alias("severity"),
        )
    )
    settings = asdict(params)

    def evidence(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": rule,
            "channels": row["channels"],
            "lost_polls": row["lost"],
            "cadence_s": row["cadence"],
            "first_lost": iso(row["start"]),
            "last_lost": iso(row["end"]),
            "params": settings,
        }
        if row["window"] is not None:
            out["window_polls"] = row["window"]
        return out

    return to_findings(
        grouped, rule=rule, kind="comm_loss", evidence_of=evidence, subject="meter_id"
    )


def _severity(rule: str, params: CommLossParams) -> pl.Expr:
    hours = (pl.col("end") - pl.col("start")).dt.total_seconds() / 3600.0 + pl.col("cadence") / 3600
    if rule == "comm_loss.silence":
        return severity(hours, 0.0, params.critical_hours)
    if rule == "comm_loss.intermittent":
        # warning when at least half the polls in the window were lost
        share = pl.col("lost") / pl.col("window")
        return severity(share, 0.5, 2.0)
    return severity(hours, 0.0, params.critical_hours)


def _ts(seconds: pl.Expr) -> pl.Expr:
    return (seconds * 1e6).round(0).cast(pl.Int64).cast(TS)


def _no_rows() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "meter_id": pl.String,
            "channel": pl.String,
            "start": TS,
            "end": TS,
            "lost": pl.Int64,
            "window": pl.Int64,
            "cadence": pl.Float64,
        }
    )
