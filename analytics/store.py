"""The analytics store adapter: loads one project's frames from PostgreSQL and writes results back.

The only analytics module that talks to the database (psycopg 3); everything it hands out or
takes in is a frame of `analytics.frames` (or `analytics.episodes`, `analytics.rollups`), so the
pure steps cannot tell a database job from the file mode.

Loading. Readings, meters and results come out with `COPY (query) TO STDOUT (FORMAT csv)` and
are parsed by Polars in one go (instants as integer microseconds since the Unix epoch, so
nothing depends on the session's time zone or date style). Meter codes (`meters.code`, the id
on the wire) are the frames' `meter_id`; database ids never leave this module.

Writing. Every write is an idempotent replace: rows are staged with one binary COPY into a
temporary table; rows of the same scope (stream and window, or bucket keys) that the new result
no longer has are deleted, rows whose content changed are updated, new rows inserted. A row
whose content did not change is not touched (its `computed_at` stays), so re-running a window
leaves the tables byte for byte as they were. The
staging COPY is built with numpy, not a Python call per row: text columns are sent as integer
codes into a dictionary that travels as one array parameter and is joined back in SQL
(`unnest ... WITH ORDINALITY`), so every staged row is fixed-width and the whole COPY is one
`tobytes()` of a structured array.

Episodes. `write_episode_step` writes a tick's episodes, its `alarm_events` outbox rows and the
job's watermark in one transaction: the events' content-derived ids make a re-run insert
nothing twice, and the watermark moves only with the effects it accounts for.

Every function takes a connection and works inside the caller's transaction when there is one
(its own `conn.transaction()` is then a savepoint), so a job can commit a whole tick at once.

A tick, as a job would run it (`now` the tick's instant, `lo` its window start)::

    meters = load_meters(conn, pid)
    mark = load_watermark(conn, pid, "consumption")
    horizon = received_horizon(conn)
    late = late_readings(conn, pid, received_after=mark.received_upto,
                         received_upto=horizon, before=mark.watermark)
    # ... recompute consumption over the window plus the late spans (analytics.consumption),
    # then rollups.refresh over rollups.dirty_buckets of what changed ...
    write_consumption(conn, pid, intervals, computed_at=now, window=(lo, now))
    write_rollups(conn, pid, changed_rows, computed_at=now, dirty=dirty)
    write_findings(conn, pid, findings, computed_at=now, window=(lo, now), rules=ran)
    state = load_episodes(conn, pid, closed_since=now - longest_cooldown)
    step = episodes.advance(state, findings, now, policy)
    write_episode_step(conn, pid, step, now=now,
                       watermark=Watermark("consumption", now, horizon))
"""

# The SQL text here is assembled only from this module's own constants (table and column names,
# casts, generated placeholders); every value travels as a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import polars as pl
import psycopg
from psycopg import sql

from analytics.episodes import EPISODES_SCHEMA, EVENTS_SCHEMA, EpisodeStep
from analytics.frames import (
    CONSUMPTION_SCHEMA,
    COUNTER_EVENTS_SCHEMA,
    FINDINGS_SCHEMA,
    READINGS_SCHEMA,
    TS,
    DType,
    evidence,
)
from analytics.rollups import ROLLUP_KEY, ROLLUP_SCHEMA
from contracts.channels import CHANNELS

Conn = psycopg.Connection[Any]
Window = tuple[dt.datetime, dt.datetime]

_UNIX_TO_PG_US: Final = 946_684_800_000_000  # 2000-01-01 (PostgreSQL's epoch) in Unix µs
_EPOCH_US_SQL: Final = "(extract(epoch FROM {}) * 1000000)::bigint"
COUNTER_CHANNELS: Final = frozenset(name for name, c in CHANNELS.items() if c.cumulative)


class StoreError(ValueError):
    """The frames and the store disagree (an unknown meter code, a project mismatch)."""


# --- loading -----------------------------------------------------------------------------------


def _epoch(column: str) -> str:
    return _EPOCH_US_SQL.format(column)


def _copy_out(conn: Conn, query: sql.Composable | str, params: Sequence[Any]) -> bytes:
    stmt = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(
        query if isinstance(query, sql.Composable) else sql.SQL(query)
    )
    out = bytearray()
    with conn.cursor() as cur, cur.copy(stmt, params) as copy:
        for block in copy:
            out += block
    return bytes(out)


def _read(conn: Conn, query: str, params: Sequence[Any], schema: Mapping[str, Any]) -> pl.DataFrame:
    """A query's rows as a frame; columns named `*__us` (epoch microseconds) come back as UTC
    instants without the suffix."""
    raw = {name: (pl.Int64 if name.endswith("__us") else dtype) for name, dtype in schema.items()}
    data = _copy_out(conn, query, params)
    df = (
        pl.read_csv(io.BytesIO(data), has_header=False, schema=raw)
        if data
        else pl.DataFrame(schema=raw)
    )
    return df.with_columns([pl.col(n).cast(TS) for n in raw if n.endswith("__us")]).rename(
        {n: n.removesuffix("__us") for n in raw if n.endswith("__us")}
    )


def project_id(conn: Conn, code: str) -> int:
    """The database id of the project with `code`."""
    row = conn.execute("SELECT id FROM projects WHERE code = %s", (code,)).fetchone()
    if row is None:
        raise StoreError(f"no project {code!r}")
    return int(row[0])


def _meter_ids(conn: Conn, project: int) -> pl.DataFrame:
    rows = conn.execute(
        "SELECT code, id FROM meters WHERE project_id = %s ORDER BY id", (project,)
    ).fetchall()
    return pl.DataFrame(rows, schema={"meter_id": pl.String, "id": pl.Int64}, orient="row")


_METERS_SQL: Final = """
SELECT m.id, m.code, p.code, b.code, m.kind::text, m.profile, m.load, p.time_zone,
       array_to_string(m.channels, ' '), m.register_modulus::float8,
       (m.multiplier * m.ct_ratio * m.pt_ratio)::float8, parent.code
FROM meters m
JOIN projects p ON p.id = m.project_id
LEFT JOIN buildings b ON b.id = m.building_id
LEFT JOIN meters parent ON parent.id = m.parent_meter_id
WHERE m.project_id = %s
ORDER BY m.code
"""
_INSTALLATIONS_SQL: Final = """
SELECT i.meter_id, i.serial, {installed}, i.opening_reading, i.closing_reading,
       i.opening_readings::text, i.closing_readings::text, i.register_modulus::float8
FROM meter_installations i JOIN meters m ON m.id = i.meter_id
WHERE m.project_id = %s
ORDER BY i.meter_id, i.installed_at, i.id
"""
_COUNTER: Final = pl.Struct({"channel": pl.String, "opening": pl.Float64, "modulus": pl.Float64})
_REPLACEMENT: Final = pl.Struct(
    {
        "at": TS,
        "old_serial": pl.String,
        "new_serial": pl.String,
        "channel": pl.String,
        "closing": pl.Float64,
        "opening": pl.Float64,
    }
)
_METER_FIELDS: dict[str, DType] = {
    "meter_id": pl.String,
    "project": pl.String,
    "building": pl.String,
    "kind": pl.String,
    "profile": pl.String,
    "load": pl.String,
    "time_zone": pl.String,
    "channels": pl.List(pl.String),
    "counters": pl.List(_COUNTER),
    "replacements": pl.List(_REPLACEMENT),
    "multiplier": pl.Float64,
    "parent_meter_id": pl.String,
}
METERS_SCHEMA: Final = pl.Schema(_METER_FIELDS)


def load_meters(conn: Conn, project: int) -> pl.DataFrame:
    """The project's meters as the analytics meters frame (`METERS_SCHEMA`), by meter code.

    From `meters` (+ its project's time zone, building code and parent meter code) and the
    installation ledger: every installation after a meter's first is a replacement at its
    `installed_at`, joining the previous device's closing reading to the new one's opening
    reading per counter channel (`closing_readings`/`opening_readings`; the scalar columns serve
    a meter with a single counter channel). A counter's `opening` is the first installation's
    opening reading, its `modulus` the current installation's register modulus (else the
    meter's). `multiplier` is the meter's multiplier x CT ratio x PT ratio as configured now.
    """
    rows = conn.execute(_METERS_SQL, (project,)).fetchall()
    installs: dict[int, list[tuple[Any, ...]]] = {}
    query = _INSTALLATIONS_SQL.format(installed=_epoch("i.installed_at"))
    for row in conn.execute(query, (project,)).fetchall():
        installs.setdefault(int(row[0]), []).append(row[1:])
    records = []
    for mid, code, proj, building, kind, profile, load, zone, chans, modulus, mult, parent in rows:
        channels = [c for c in str(chans).split(" ") if c]
        counters = [c for c in channels if c in COUNTER_CHANNELS]
        history = installs.get(int(mid), [])
        current_modulus = next((h[6] for h in reversed(history) if h[6] is not None), modulus)

        single = len(counters) == 1

        def reading(
            inst: tuple[Any, ...], which: str, channel: str, single: bool = single
        ) -> float | None:
            scalar, per_channel = (inst[2], inst[4]) if which == "opening" else (inst[3], inst[5])
            value = json.loads(per_channel).get(channel)
            if value is None and single:
                value = scalar
            return None if value is None else float(value)

        records.append(
            {
                "meter_id": code,
                "project": proj,
                "building": building,
                "kind": kind,
                "profile": profile,
                "load": load,
                "time_zone": zone,
                "channels": channels,
                "counters": [
                    {
                        "channel": c,
                        "opening": reading(history[0], "opening", c) if history else None,
                        "modulus": current_modulus,
                    }
                    for c in counters
                ],
                "replacements": [
                    {
                        "at": new[1],
                        "old_serial": old[0],
                        "new_serial": new[0],
                        "channel": c,
                        "closing": reading(old, "closing", c),
                        "opening": reading(new, "opening", c),
                    }
                    for old, new in itertools.pairwise(history)
                    for c in counters
                ],
                "multiplier": mult,
                "parent_meter_id": parent,
            }
        )
    raw = dict(METERS_SCHEMA)
    raw["replacements"] = pl.List(pl.Struct({**dict(_REPLACEMENT.to_schema()), "at": pl.Int64}))
    df = pl.DataFrame(records, schema=raw)
    return df.with_columns(pl.col("replacements").cast(METERS_SCHEMA["replacements"]))


def load_readings(
    conn: Conn, project: int, window: Window, *, channels: Sequence[str] | None = None
) -> pl.DataFrame:
    """The project's readings with `window[0] <= ts < window[1]` as `READINGS_SCHEMA`, in
    (meter, channel, ts) order of the store's key. A reading stored without a value because
    the meter answered with its NaN sentinel comes back as NaN, as in the file mode."""
    ids = _meter_ids(conn, project)
    if ids.is_empty():
        return pl.DataFrame(schema=READINGS_SCHEMA)
    query = (
        f"SELECT r.meter_id, r.channel, {_epoch('r.ts')}, r.value, r.quality::text"
        " FROM readings r WHERE r.meter_id = ANY(%s) AND r.ts >= %s AND r.ts < %s"
        + (" AND r.channel = ANY(%s)" if channels is not None else "")
        + " ORDER BY r.meter_id, r.channel, r.ts"
    )
    params: list[Any] = [ids["id"].to_list(), *window]
    if channels is not None:
        params.append(list(channels))
    schema = {"id": pl.Int64, "channel": pl.String, "ts__us": pl.Int64, "value": pl.Float64,
              "quality": pl.String}  # fmt: skip
    df = _read(conn, query, params, schema)
    return (
        df.join(ids, on="id", how="left", maintain_order="left")
        .with_columns(
            value=pl.when(pl.col("value").is_null() & (pl.col("quality") == "nan_sentinel"))
            .then(float("nan"))
            .otherwise(pl.col("value"))
        )
        .select(list(READINGS_SCHEMA))
        .cast(READINGS_SCHEMA)
    )


_LATE_FIELDS: dict[str, DType] = {
    "meter_id": pl.String,
    "channel": pl.String,
    "ts_min": TS,
    "ts_max": TS,
    "readings": pl.Int64,
}
LATE_SCHEMA: Final = pl.Schema(_LATE_FIELDS)


def late_readings(
    conn: Conn,
    project: int,
    *,
    received_after: dt.datetime,
    received_upto: dt.datetime,
    before: dt.datetime,
    not_before: dt.datetime | None = None,
) -> pl.DataFrame:
    """Per stream, the span of readings that arrived late: stored with
    `received_after < received_at <= received_upto` for an instant before `before` (a job's
    data watermark), optionally not before `not_before`. These are the streams and times whose
    consumption and rollup buckets must be recomputed (`LATE_SCHEMA`, by meter and channel)."""
    query = (
        f"SELECT m.code, r.channel, {_epoch('min(r.ts)')}, {_epoch('max(r.ts)')}, count(*)"
        " FROM readings r JOIN meters m ON m.id = r.meter_id"
        " WHERE m.project_id = %s AND r.received_at > %s AND r.received_at <= %s AND r.ts < %s"
        + (" AND r.ts >= %s" if not_before is not None else "")
        + " GROUP BY m.code, r.channel ORDER BY m.code, r.channel"
    )
    params: list[Any] = [project, received_after, received_upto, before]
    if not_before is not None:
        params.append(not_before)
    schema = {"meter_id": pl.String, "channel": pl.String, "ts_min__us": pl.Int64,
              "ts_max__us": pl.Int64, "readings": pl.Int64}  # fmt: skip
    return _read(conn, query, params, schema).cast(LATE_SCHEMA)


def received_horizon(conn: Conn, margin: dt.timedelta = dt.timedelta(minutes=1)) -> dt.datetime:
    """The `received_at` up to which every reading is visible now, safely.

    A reading's `received_at` is its ingest transaction's start, so a transaction still open
    now may yet commit rows stamped earlier than this moment. The horizon stays strictly before
    the start of every open transaction on this database that this role can see (any of them,
    not only those that wrote already: a transaction gets its xid at its first write, stamped
    with its start), since `late_readings` takes rows received *after* it; and `margin` before
    now, for sessions it cannot see. So the next scan from it misses nothing. A session left
    idle in a transaction holds the horizon back: later scans then cover more, which costs
    time, never correctness (re-scanning rows already seen is harmless: recomputing is
    idempotent)."""
    row = conn.execute(
        "SELECT least(now() - %s, (SELECT min(xact_start) - interval '1 microsecond'"
        " FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()))",
        (margin,),
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def load_consumption(conn: Conn, project: int, window: Window) -> pl.DataFrame:
    """Stored intervals of the project starting in `window`, as `CONSUMPTION_SCHEMA`, sorted
    by (meter_id, channel, start)."""
    query = (
        f"SELECT m.code, c.channel, {_epoch('c.start_at')}, {_epoch('c.end_at')},"
        " c.consumption, c.quality::text"
        " FROM consumption_intervals c JOIN meters m ON m.id = c.meter_id"
        " WHERE m.project_id = %s AND c.start_at >= %s AND c.start_at < %s"
    )
    schema = {"meter_id": pl.String, "channel": pl.String, "start__us": pl.Int64,
              "end__us": pl.Int64, "consumption": pl.Float64, "quality": pl.String}  # fmt: skip
    df = _read(conn, query, [project, *window], schema)
    return df.cast(CONSUMPTION_SCHEMA).sort("meter_id", "channel", "start")


def load_counter_events(conn: Conn, project: int, window: Window) -> pl.DataFrame:
    """Stored counter events of the project in `window`, as `COUNTER_EVENTS_SCHEMA`."""
    query = (
        f"SELECT m.code, e.channel, {_epoch('e.ts')}, e.event::text, e.detail"
        " FROM counter_events e JOIN meters m ON m.id = e.meter_id"
        " WHERE m.project_id = %s AND e.ts >= %s AND e.ts < %s"
    )
    schema = {"meter_id": pl.String, "channel": pl.String, "ts__us": pl.Int64,
              "event": pl.String, "detail": pl.String}  # fmt: skip
    df = _read(conn, query, [project, *window], schema)
    return df.cast(COUNTER_EVENTS_SCHEMA).sort("meter_id", "channel", "ts", "event")


def load_rollups(
    conn: Conn, project: int, window: Window, *, periods: Sequence[str] | None = None
) -> pl.DataFrame:
    """Stored rollups of the project with `bucket_start` in `window` (of `periods`, default
    all), as `ROLLUP_SCHEMA` in its canonical order: what `rollups.refresh` continues from."""
    query = (
        "SELECT r.level::text, r.key, p.code, r.channel, r.period::text,"
        f" {_epoch('r.bucket_start')}, {_epoch('r.bucket_end')}, r.consumption, r.estimated,"
        " r.estimated_share, r.quality::text, r.meters, r.coverage, r.covered_us"
        " FROM rollups r JOIN projects p ON p.id = r.project_id"
        " WHERE r.project_id = %s AND r.bucket_start >= %s AND r.bucket_start < %s"
        + (" AND r.period::text = ANY(%s)" if periods is not None else "")
    )
    params: list[Any] = [project, *window]
    if periods is not None:
        params.append(list(periods))
    schema: dict[str, Any] = {
        (f"{c}__us" if dtype == TS else c): (
            pl.Int64 if dtype in (TS, pl.UInt32) else pl.String if c in _ENUMS else dtype
        )
        for c, dtype in ROLLUP_SCHEMA.items()
    }
    df = _read(conn, query, params, schema)
    return df.select(list(ROLLUP_SCHEMA)).cast(ROLLUP_SCHEMA).sort(list(ROLLUP_KEY))


_ENUMS: Final = ("level", "period", "quality")


def load_findings(conn: Conn, project: int, window: Window) -> pl.DataFrame:
    """Stored findings of the project that end at or after `window[0]` and start before
    `window[1]`, as `FINDINGS_SCHEMA` (evidence in its canonical JSON form again)."""
    query = (
        f"SELECT f.subject, f.rule, f.kind, {_epoch('f.start_at')}, {_epoch('f.end_at')},"
        " f.severity::text, f.evidence::text, f.lead_time_days FROM findings f"
        " WHERE f.project_id = %s AND f.end_at >= %s AND f.start_at < %s"
    )
    schema = {"subject": pl.String, "rule": pl.String, "kind": pl.String, "start__us": pl.Int64,
              "end__us": pl.Int64, "severity": pl.String, "evidence": pl.String,
              "lead_time_days": pl.Float64}  # fmt: skip
    df = _read(conn, query, [project, *window], schema).with_columns(_canonical("evidence"))
    return df.cast(FINDINGS_SCHEMA).sort("subject", "rule", "start")


def load_episodes(conn: Conn, project: int, *, closed_since: dt.datetime) -> pl.DataFrame:
    """The project's episode state for `episodes.advance`: every pending and open episode, and
    those closed at or after `closed_since` (pass `now` minus the longest cooldown, or earlier
    when findings about the past may come), as `EPISODES_SCHEMA`."""
    query = (
        "SELECT e.id::text, e.subject, e.rule, e.kind, e.state::text,"
        f" {_epoch('e.opened_at')}, {_epoch('e.last_seen_at')}, {_epoch('e.closed_at')},"
        " e.severity::text, e.peak_severity::text, e.occurrences, e.reopen_count, e.flaps,"
        f" {_epoch('e.flap_since')}, e.flapping::int, e.overdue::int, e.evidence::text,"
        " e.lead_time_days"
        " FROM alarm_episodes e"
        " WHERE e.project_id = %s AND (e.state <> 'closed' OR e.closed_at >= %s)"
    )
    schema: dict[str, Any] = {}
    for name, dtype in EPISODES_SCHEMA.items():
        timed = dtype == TS
        schema[f"{name}__us" if timed else name] = (
            pl.Int64
            if timed or dtype == pl.Boolean  # booleans as 0/1: PostgreSQL's CSV says t/f
            else pl.String
            if isinstance(dtype, pl.Enum)
            else dtype
        )
    df = _read(conn, query, [project, closed_since], schema).with_columns(_canonical("evidence"))
    return df.cast(EPISODES_SCHEMA).sort("subject", "rule", "opened_at")


def _canonical(column: str) -> pl.Expr:
    """jsonb prints its own way; back to the canonical form the frames carry."""
    return pl.col(column).map_elements(
        lambda s: evidence(json.loads(s)), return_dtype=pl.String, skip_nulls=True
    )


# --- staging: one binary COPY of fixed-width rows ----------------------------------------------

_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") * 2
_TRAILER: Final = (-1).to_bytes(2, "big", signed=True)
_PG_TYPES: Final = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "float8": ">f8", "bool": "u1",
                    "timestamptz": ">i8"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Column:
    """A staged column: its SQL type in the staging table, its values (numpy, converted), and
    the SQL that turns it back into the target value (`s` is the staging alias)."""

    name: str
    pg: str
    values: npt.NDArray[Any]
    expr: str
    join: str = ""
    dictionary: list[str] | None = None


def _stage_columns(df: pl.DataFrame, spec: Mapping[str, str]) -> list[_Column]:
    """`spec` maps a frame column to how it is staged: `int2`/`int4`/`int8`/`float8`/`bool`,
    `ts`, or `text` (dictionary codes; the column's SQL is the
    dictionary value). A trailing `?` allows nulls: a companion boolean says which rows are
    null, because a null has no fixed width in a binary COPY."""
    out: list[_Column] = []
    for i, (name, declared) in enumerate(spec.items()):
        nullable = declared.endswith("?")
        kind = declared.rstrip("?")
        s = df.get_column(name)
        col = f"c{i}"
        if not nullable and s.null_count():
            raise StoreError(f"{name}: {s.null_count()} null values where none may be")
        if kind == "text":
            strings = s.cast(pl.String)
            names = strings.drop_nulls().unique().sort()
            codes = strings.cast(pl.Enum(names.to_list())).to_physical().cast(pl.Int32) + 1
            values = codes.fill_null(0).to_numpy()
            join = f"LEFT JOIN unnest(%s::text[]) WITH ORDINALITY AS d{i}(v, n) ON d{i}.n = s.{col}"
            out.append(_Column(col, "int4", values, f"d{i}.v", join, names.to_list()))
            continue
        if kind == "ts":
            values = (s.cast(TS).dt.epoch("us").fill_null(0) - _UNIX_TO_PG_US).to_numpy()
            pg = "timestamptz"
        elif kind == "bool":
            values = s.cast(pl.Boolean).fill_null(False).to_numpy().astype(np.uint8)
            pg = "bool"
        else:
            values = s.cast(pl.Float64 if kind == "float8" else pl.Int64).fill_null(0).to_numpy()
            pg = kind
        expr = f"s.{col}"
        if nullable:
            flag = f"{col}_null"
            out.append(_Column(flag, "bool", s.is_null().to_numpy().astype(np.uint8), ""))
            expr = f"CASE WHEN NOT s.{flag} THEN s.{col} END"
        out.append(_Column(col, pg, values, expr))
    return out


def _copy_data(columns: Sequence[_Column], n: int) -> bytes:
    """Binary COPY data for fixed-width columns: one structured array, one `tobytes()`."""
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for c in columns:
        fields += [(f"{c.name}_len", ">i4"), (c.name, _PG_TYPES[c.pg])]
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["count"] = len(columns)
    for c in columns:
        big_endian = np.dtype(_PG_TYPES[c.pg])
        rows[f"{c.name}_len"] = big_endian.itemsize
        # Swapped into a contiguous array first: swapping while scattering into the packed
        # rows is ten times slower.
        rows[c.name] = np.ascontiguousarray(c.values, dtype=big_endian)
    return _SIGNATURE + rows.tobytes() + _TRAILER


@dataclass(frozen=True, slots=True)
class _Staged:
    """A frame in a temp table: per frame column the SQL of its value (from alias `s`), the
    joins that decode dictionary columns, and their parameters."""

    table: str
    exprs: dict[str, str]
    joins: str
    params: dict[str, Any]


def _stage(conn: Conn, table: str, df: pl.DataFrame, spec: Mapping[str, str]) -> _Staged:
    """Create temp table `table` (dropped at commit) and COPY `df`'s `spec` columns into it."""
    columns = _stage_columns(df, spec)
    ddl = ", ".join(f"{c.name} {c.pg}" for c in columns)
    conn.execute(f"DROP TABLE IF EXISTS pg_temp.{table}")
    conn.execute(f"CREATE TEMP TABLE {table} ({ddl}) ON COMMIT DROP")
    names = ", ".join(c.name for c in columns)
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(_copy_data(columns, df.height))
    value_cols = [c for c in columns if c.expr]
    exprs = {name: c.expr for name, c in zip(spec, value_cols, strict=True)}
    joins = " ".join(c.join.replace("%s", f"%({table}_{c.name})s") for c in columns if c.join)
    params = {f"{table}_{c.name}": c.dictionary for c in columns if c.join}
    return _Staged(table, exprs, joins, params)


@dataclass(frozen=True, slots=True)
class Written:
    """Rows inserted or changed, and rows deleted because the new result no longer has them."""

    upserted: int
    deleted: int


def _replace(
    conn: Conn,
    staged: _Staged,
    *,
    target: str,
    rows: Mapping[str, str],  # target column -> SQL of its value from the staged row `s`
    key: Sequence[str],
    scope: str | None,  # which target rows `t` the result replaces (None: upsert only)
    params: Mapping[str, Any],
    span: tuple[str, pl.Series],  # the target's time column, and the result's values of it
) -> Written:
    """Rows in `scope` missing from the result are deleted; rows whose content changed are
    updated; new rows are inserted; unchanged rows are not touched.

    Measured on TimescaleDB, 200k intervals: one `INSERT ... ON CONFLICT DO UPDATE ... WHERE
    IS DISTINCT FROM` over every row spent 2.3 s in conflict handling alone when nothing had
    changed; joins on the decoded rows (kept in a temp table with statistics) bounded by the
    result's time span take 1.4 s for delete, update and insert together. The insert has no
    `ON CONFLICT` (speculative insertion cost 40% of a first write): one writer per project
    holds the job's advisory lock, and a racing writer would fail on the unique key, never
    leave a wrong row."""
    cols = list(rows)
    changed = [c for c in cols if c not in key and c != "computed_at"]
    select = ", ".join(f"{expr} AS {col}" for col, expr in rows.items())
    match = " AND ".join(f"r.{k} = t.{k}" for k in key)
    column, values = span
    bounds = {"span_lo": values.min(), "span_hi": values.max()}
    within = f"t.{column} BETWEEN %(span_lo)s AND %(span_hi)s"
    both = {**staged.params, **params, **bounds}
    # Hash joins of a whole window stay in memory instead of spilling in batches.
    conn.execute("SET LOCAL work_mem = '256MB'")
    conn.execute("DROP TABLE IF EXISTS pg_temp.mw_rows")
    # (CREATE TABLE AS takes no bound parameters: an empty copy of the target's columns, then
    # an INSERT.)
    conn.execute(
        f"CREATE TEMP TABLE mw_rows ON COMMIT DROP AS SELECT {', '.join(cols)} FROM {target}"
        " WITH NO DATA"
    )
    conn.execute(
        f"INSERT INTO mw_rows ({', '.join(cols)}) SELECT {select} FROM {staged.table} s"
        f" {staged.joins}",
        both,
    )
    conn.execute("ANALYZE mw_rows")
    deleted = 0
    if scope:
        cur = conn.execute(
            f"DELETE FROM {target} t WHERE {scope}"
            f" AND NOT EXISTS (SELECT 1 FROM mw_rows r WHERE {match})",
            both,
        )
        deleted = max(cur.rowcount, 0)
    if values.is_empty():
        return Written(0, deleted)

    def differs(new: str) -> str:
        return (
            f"({', '.join(f't.{c}' for c in changed)})"
            f" IS DISTINCT FROM ({', '.join(f'{new}.{c}' for c in changed)})"
        )

    updated = conn.execute(
        f"UPDATE {target} t SET {', '.join(f'{c} = r.{c}' for c in cols if c not in key)}"
        f" FROM mw_rows r WHERE {match} AND {within} AND {differs('r')}",
        both,
    ).rowcount
    inserted = conn.execute(
        f"INSERT INTO {target} AS t ({', '.join(cols)}) SELECT {', '.join(cols)} FROM mw_rows r"
        f" WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {match} AND {within})",
        both,
    ).rowcount
    return Written(upserted=max(updated, 0) + max(inserted, 0), deleted=deleted)


def _with_meter_ids(conn: Conn, project: int, df: pl.DataFrame) -> pl.DataFrame:
    """`df` with the database id of each meter code (`id`); an unknown code is an error."""
    out = df.join(_meter_ids(conn, project), on="meter_id", how="left", maintain_order="left")
    unknown = out.filter(pl.col("id").is_null()).get_column("meter_id").unique().sort()
    if unknown.len():
        raise StoreError(f"meters not in project {project}: {unknown.head(5).to_list()}")
    return out


# --- writing results ---------------------------------------------------------------------------


def write_consumption(
    conn: Conn,
    project: int,
    intervals: pl.DataFrame,
    *,
    computed_at: dt.datetime,
    window: Window | None = None,
) -> Written:
    """Upsert interval consumption (`CONSUMPTION_SCHEMA`); with `window`, the given streams'
    stored intervals starting in it that the new result no longer has are deleted, so a
    recomputed window replaces the old one exactly."""
    df = _with_meter_ids(conn, project, intervals.cast(CONSUMPTION_SCHEMA))
    spec = {"id": "int8", "channel": "text", "start": "ts", "end": "ts", "consumption": "float8?",
            "quality": "text"}  # fmt: skip
    if df.get_column("quality").null_count():
        spec["quality"] = "text?"
    with conn.transaction():
        st = _stage(conn, "mw_consumption", df, spec)
        x = st.exprs
        rows = {
            "meter_id": x["id"],
            "channel": x["channel"],
            "start_at": x["start"],
            "end_at": x["end"],
            "consumption": x["consumption"],
            "quality": f"{x['quality']}::consumption_quality",
            "computed_at": "%(computed_at)s::timestamptz",
        }
        scope = None
        if window is not None:
            scope = (
                "(t.meter_id, t.channel) IN (SELECT DISTINCT meter_id, channel FROM mw_rows)"
                " AND t.start_at >= %(lo)s AND t.start_at < %(hi)s"
            )
        return _replace(
            conn, st, target="consumption_intervals", rows=rows,
            key=("meter_id", "channel", "start_at"), scope=scope,
            params={"computed_at": computed_at, **_window(window)},
            span=("start_at", df.get_column("start")),
        )  # fmt: skip


def write_counter_events(
    conn: Conn,
    project: int,
    events: pl.DataFrame,
    *,
    computed_at: dt.datetime,
    window: Window | None = None,
) -> Written:
    """Upsert counter events (`COUNTER_EVENTS_SCHEMA`); with `window`, the given streams'
    stored events in it that the new result no longer has are deleted."""
    df = _with_meter_ids(conn, project, events.cast(COUNTER_EVENTS_SCHEMA))
    spec = {"id": "int8", "channel": "text", "ts": "ts", "event": "text", "detail": "text?"}
    with conn.transaction():
        st = _stage(conn, "mw_counter_events", df, spec)
        x = st.exprs
        rows = {
            "meter_id": x["id"],
            "channel": x["channel"],
            "ts": x["ts"],
            "event": f"{x['event']}::counter_event",
            "detail": f"coalesce({x['detail']}, '')",
            "computed_at": "%(computed_at)s::timestamptz",
        }
        scope = None
        if window is not None:
            scope = (
                "(t.meter_id, t.channel) IN (SELECT DISTINCT meter_id, channel FROM mw_rows)"
                " AND t.ts >= %(lo)s AND t.ts < %(hi)s"
            )
        return _replace(
            conn, st, target="counter_events", rows=rows,
            key=("meter_id", "channel", "ts", "event"), scope=scope,
            params={"computed_at": computed_at, **_window(window)},
            span=("ts", df.get_column("ts")),
        )  # fmt: skip


_ROLLUP_SPEC: Final = {
    "level": "text", "key": "text", "channel": "text", "period": "text", "bucket_start": "ts",
    "bucket_end": "ts", "consumption": "float8", "estimated": "float8",
    "estimated_share": "float8?", "quality": "text", "meters": "int4", "coverage": "float8?",
    "covered_us": "int8",
}  # fmt: skip


def write_rollups(
    conn: Conn,
    project: int,
    rollups: pl.DataFrame,
    *,
    computed_at: dt.datetime,
    dirty: pl.DataFrame | None = None,
) -> Written:
    """Upsert rollup rows (`ROLLUP_SCHEMA`, all of one project); with `dirty` (the bucket keys
    `rollups.dirty_buckets` listed), stored buckets among them that the new result no longer
    has are deleted. Pass just the recomputed rows: the rows of `refresh(...)` in `dirty`."""
    df = rollups.select(list(ROLLUP_SCHEMA)).cast(ROLLUP_SCHEMA)
    codes = _project_code(conn, project)
    others = df.filter(pl.col("project") != codes).get_column("project").unique().to_list()
    if others:
        raise StoreError(f"rollups of other projects than {codes!r}: {sorted(others)[:5]}")
    with conn.transaction():
        st = _stage(conn, "mw_rollups", df, _ROLLUP_SPEC)
        x = st.exprs
        rows: dict[str, str] = {"project_id": "%(project)s::bigint"}
        for name in _ROLLUP_SPEC:
            cast = {"level": "::rollup_level", "period": "::rollup_period",
                    "quality": "::consumption_quality"}.get(name, "")  # fmt: skip
            rows[name] = f"{x[name]}{cast}"
        rows["computed_at"] = "%(computed_at)s::timestamptz"
        scope = None
        if dirty is not None:
            keys = dirty.select("level", "period", "key", "channel", "bucket_start").cast(
                {"level": pl.String, "period": pl.String}
            )
            ds = _stage(conn, "mw_rollups_dirty", keys, {"level": "text", "period": "text",
                        "key": "text", "channel": "text", "bucket_start": "ts"})  # fmt: skip
            d = ds.exprs
            # The dirty keys go into a typed, analysed table and the scope is a semi-join on
            # it: a row-valued IN over the staged (decoded) keys was planned as a loop over
            # the stored rows (140 s for one late meter-hour against 100k stored rollups).
            conn.execute("DROP TABLE IF EXISTS pg_temp.mw_dirty_keys")
            conn.execute(
                "CREATE TEMP TABLE mw_dirty_keys ON COMMIT DROP AS SELECT level, period, key,"
                " channel, bucket_start FROM rollups WITH NO DATA"
            )
            conn.execute(
                f"INSERT INTO mw_dirty_keys SELECT {d['level']}::rollup_level,"
                f" {d['period']}::rollup_period, {d['key']}, {d['channel']}, {d['bucket_start']}"
                f" FROM mw_rollups_dirty s {ds.joins}",
                ds.params,
            )
            conn.execute("ANALYZE mw_dirty_keys")
            scope = (
                "t.project_id = %(project)s AND EXISTS (SELECT 1 FROM mw_dirty_keys d"
                " WHERE d.level = t.level AND d.period = t.period AND d.key = t.key"
                " AND d.channel = t.channel AND d.bucket_start = t.bucket_start)"
            )
            st = _Staged(st.table, st.exprs, st.joins, {**st.params, **ds.params})
        return _replace(
            conn, st, target="rollups", rows=rows,
            key=("project_id", "level", "period", "key", "channel", "bucket_start"),
            scope=scope, params={"computed_at": computed_at, "project": project},
            span=("bucket_start", df.get_column("bucket_start")),
        )  # fmt: skip


def write_findings(
    conn: Conn,
    project: int,
    findings: pl.DataFrame,
    *,
    computed_at: dt.datetime,
    window: Window | None = None,
    rules: Sequence[str] | None = None,
) -> Written:
    """Upsert findings (`FINDINGS_SCHEMA`); with `window`, stored findings overlapping it (as
    `load_findings` selects them) that the new result no longer has are deleted - only of
    `rules` when given (a job replaces the findings of the detectors it ran, not the others').

    Overlapping, not starting in it: a condition older than a job's lookback is seen from the
    lookback's first reading, so its start moves forward tick by tick; the stale row with the
    older start must go when the new one comes."""
    df = findings.cast(FINDINGS_SCHEMA)
    spec = {"subject": "text", "rule": "text", "kind": "text", "start": "ts", "end": "ts",
            "severity": "text", "evidence": "text", "lead_time_days": "float8?"}  # fmt: skip
    with conn.transaction():
        st = _stage(conn, "mw_findings", df, spec)
        x = st.exprs
        rows = {
            "project_id": "%(project)s::bigint",
            "subject": x["subject"],
            "rule": x["rule"],
            "kind": x["kind"],
            "start_at": x["start"],
            "end_at": x["end"],
            "severity": f"{x['severity']}::alarm_severity",
            "evidence": f"{x['evidence']}::jsonb",
            "lead_time_days": x["lead_time_days"],
            "computed_at": "%(computed_at)s::timestamptz",
        }
        scope = None
        if window is not None:
            scope = "t.project_id = %(project)s AND t.end_at >= %(lo)s AND t.start_at < %(hi)s"
            if rules is not None:
                scope += " AND t.rule = ANY(%(rules)s)"
        return _replace(
            conn, st, target="findings", rows=rows,
            key=("project_id", "subject", "rule", "start_at"), scope=scope,
            params={"computed_at": computed_at, "project": project, "rules": list(rules or []),
                    **_window(window)},
            span=("start_at", df.get_column("start")),
        )  # fmt: skip


# --- episodes, the alarm-event outbox and watermarks: one transaction ---------------------------


@dataclass(frozen=True, slots=True)
class Watermark:
    """How far `job` has got for a project's `stream` ('' = the whole project): data time
    processed up to, and the `received_at` up to which readings were seen."""

    job: str
    watermark: dt.datetime
    received_upto: dt.datetime
    stream: str = ""


def load_watermark(conn: Conn, project: int, job: str, stream: str = "") -> Watermark | None:
    """The stored watermark of `job` (None before its first run)."""
    row = conn.execute(
        "SELECT watermark, received_upto FROM analytics_watermarks"
        " WHERE project_id = %s AND job = %s AND stream = %s",
        (project, job, stream),
    ).fetchone()
    return None if row is None else Watermark(job, row[0], row[1], stream)


def advance_watermark(conn: Conn, project: int, mark: Watermark, *, now: dt.datetime) -> None:
    """Move a watermark forward (never back: a late or repeated run cannot rewind it)."""
    conn.execute(
        "INSERT INTO analytics_watermarks"
        " (project_id, job, stream, watermark, received_upto, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (project_id, job, stream) DO UPDATE SET"
        " watermark = greatest(analytics_watermarks.watermark, excluded.watermark),"
        " received_upto = greatest(analytics_watermarks.received_upto, excluded.received_upto),"
        " updated_at = excluded.updated_at",
        (project, mark.job, mark.stream, mark.watermark, mark.received_upto, now),
    )


@dataclass(frozen=True, slots=True)
class EpisodesWritten:
    episodes: int  # inserted or changed
    dropped: int  # pending episodes that cleared before opening, deleted
    events: int  # new outbox rows (a re-run adds none)


_EPISODE_SPEC: Final = {
    "episode_id": "text", "subject": "text", "rule": "text", "kind": "text", "state": "text",
    "opened_at": "ts", "last_seen_at": "ts", "closed_at": "ts?", "severity": "text",
    "peak_severity": "text", "occurrences": "int8", "reopen_count": "int4", "flaps": "int4",
    "flap_since": "ts?", "flapping": "bool", "overdue": "bool", "evidence": "text",
    "lead_time_days": "float8?",
}  # fmt: skip
_EVENT_SPEC: Final = {
    "event_id": "text", "episode_id": "text", "event": "text", "occurred_at": "ts",
    "subject": "text", "rule": "text", "kind": "text", "severity": "text", "payload": "text",
}  # fmt: skip


def write_episode_step(
    conn: Conn,
    project: int,
    step: EpisodeStep,
    *,
    now: dt.datetime,
    watermark: Watermark | None = None,
) -> EpisodesWritten:
    """A tick's episode changes, its `alarm_events` outbox rows and the job's watermark, in one
    transaction: all of it or none. Events are inserted `ON CONFLICT DO NOTHING` (their ids are
    content-derived), so writing the same step twice leaves one copy of each."""
    episodes = step.episodes.cast(EPISODES_SCHEMA)
    dropped = episodes.filter(pl.col("state") == "dropped").get_column("episode_id").to_list()
    kept = episodes.filter(pl.col("state") != "dropped").with_columns(
        pl.col("state").cast(pl.String)
    )
    with conn.transaction():
        n_dropped = 0
        if dropped:
            cur = conn.execute(
                "DELETE FROM alarm_episodes WHERE project_id = %s AND id = ANY(%s::uuid[])"
                " AND state = 'pending'",
                (project, dropped),
            )
            n_dropped = max(cur.rowcount, 0)
        n_episodes = 0
        # Closings first: an episode that closes and a new one on the same (subject, rule)
        # must not be open at once, even for one row of the statement (the partial unique
        # index is checked row by row).
        for part in (kept.filter(pl.col("state") == "closed"),
                     kept.filter(pl.col("state") != "closed")):  # fmt: skip
            if part.height:
                n_episodes += _write_episodes(conn, project, part, now)
        n_events = _write_events(conn, project, step.events) if step.events.height else 0
        if watermark is not None:
            advance_watermark(conn, project, watermark, now=now)
    return EpisodesWritten(n_episodes, n_dropped, n_events)


_EPISODE_CASTS: Final = {
    "state": "::alarm_episode_state",
    "severity": "::alarm_severity",
    "peak_severity": "::alarm_severity",
    "evidence": "::jsonb",
}


def _write_episodes(conn: Conn, project: int, episodes: pl.DataFrame, now: dt.datetime) -> int:
    st = _stage(conn, "mw_episodes", episodes, _EPISODE_SPEC)
    x = st.exprs
    rows = {"id": f"{x['episode_id']}::uuid", "project_id": "%(project)s::bigint"}
    for name in _EPISODE_SPEC:
        if name == "episode_id":
            continue
        rows[name] = f"{x[name]}{_EPISODE_CASTS.get(name, '')}"
    rows["updated_at"] = "%(now)s::timestamptz"
    changed = [c for c in rows if c not in ("id", "project_id", "updated_at")]
    select = ", ".join(f"{expr} AS {col}" for col, expr in rows.items())
    query = (
        f"INSERT INTO alarm_episodes AS t ({', '.join(rows)})"
        f" SELECT {select} FROM {st.table} s {st.joins}"
        " ON CONFLICT (id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in [*changed, "updated_at"])
        + " WHERE t.project_id = excluded.project_id"
        f" AND ({', '.join(f't.{c}' for c in changed)})"
        f" IS DISTINCT FROM ({', '.join(f'excluded.{c}' for c in changed)})"
    )
    cur = conn.execute(query, {**st.params, "project": project, "now": now})
    return max(cur.rowcount, 0)


def _write_events(conn: Conn, project: int, events: pl.DataFrame) -> int:
    st = _stage(conn, "mw_alarm_events", events.cast(EVENTS_SCHEMA), _EVENT_SPEC)
    x = st.exprs
    query = (
        "INSERT INTO alarm_events (id, episode_id, event, occurred_at, project_id, subject,"
        " rule, kind, severity, payload)"
        f" SELECT {x['event_id']}::uuid, {x['episode_id']}::uuid, {x['event']}::alarm_event_kind,"
        f" {x['occurred_at']}, %(project)s, {x['subject']}, {x['rule']}, {x['kind']},"
        f" {x['severity']}::alarm_severity, {x['payload']}::jsonb"
        f" FROM {st.table} s {st.joins} ORDER BY {x['occurred_at']}, {x['event_id']}"
        " ON CONFLICT (id) DO NOTHING"
    )
    cur = conn.execute(query, {**st.params, "project": project})
    return max(cur.rowcount, 0)


def _project_code(conn: Conn, project: int) -> str:
    row = conn.execute("SELECT code FROM projects WHERE id = %s", (project,)).fetchone()
    if row is None:
        raise StoreError(f"no project with id {project}")
    return str(row[0])


def _window(window: Window | None) -> dict[str, Any]:
    return {} if window is None else {"lo": window[0], "hi": window[1]}
