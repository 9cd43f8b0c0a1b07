"""The demo's analytics: the history its gateways would have delivered, and the worker.

A person who starts the demo wants consumption and findings at once, not after the first
15-minute tick. The demo's simulated fleet therefore started a while ago (its plan start is
kept in the data dir, so the meters keep counting across demo runs, as real ones do); on start,
the readings of the last day that the gateways were not running for are written into the store
as the gateways would have delivered them, and the analytics worker catches up over them.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import psycopg

if TYPE_CHECKING:
    from simulators.scenario import Plan

HISTORY = dt.timedelta(days=1)  # at most this much history is written on start
HISTORY_INTERVAL_S = 900  # one reading per channel per analytics tick in the written history
# Simulating history costs time in proportion to the fleet's age: an older fleet is restarted.
MAX_FLEET_AGE = dt.timedelta(days=7)
_NULL_VALUE_QUALITIES = ("comm_error", "nan_sentinel")  # store rule: no value for these


def fleet_start(data_dir: Path, now: dt.datetime) -> dt.datetime:
    """When the demo's simulated fleet started: read from the data dir, or `HISTORY` before
    `now` on the first run or when the kept start is older than `MAX_FLEET_AGE` (on a whole
    quarter hour, so the history's readings fall on tick boundaries)."""
    path = data_dir / "fleet-start"
    if path.is_file():
        try:
            kept = dt.datetime.fromisoformat(path.read_text(encoding="utf-8").strip())
        except ValueError:
            kept = None  # a damaged file: start afresh
        if kept is not None and kept.tzinfo is not None and now - MAX_FLEET_AGE < kept <= now:
            return kept
    start = now - HISTORY
    start = start.replace(minute=start.minute - start.minute % 15, second=0, microsecond=0)
    path.write_text(start.isoformat() + "\n", encoding="utf-8")
    return start


def write_history(db_url: str, plan: Plan, *, until: dt.datetime) -> int:
    """Readings of `plan`'s meters from the later of its start and `until - HISTORY` up to
    `until`, inserted as delivered readings (duplicates of stored ones are skipped). Returns
    the number of new rows."""
    from simulators.history import History  # noqa: PLC0415 - numpy/polars on demand

    plan_start = dt.datetime.fromtimestamp(plan.start, dt.UTC)
    begin = max(plan_start, until - HISTORY)
    if until <= begin:
        return 0
    # History runs from the plan's start; asking for less than all of it means asking for its
    # start to be later, which would change nothing else (same meters, same seed).
    days = (until - plan_start).total_seconds() / 86400
    frame = History(plan, days=days, interval_s=HISTORY_INTERVAL_S).collect()
    frame = frame.filter(pl.col("ts") >= begin, pl.col("ts") < until)
    with psycopg.connect(db_url) as conn:
        codes: dict[str, int] = dict(
            conn.execute(
                "SELECT code, id FROM meters WHERE code = ANY(%s)",
                ([m.meter_id for m in plan.meters],),
            ).fetchall()
        )
        rows = (
            frame.with_columns(
                pl.col("meter_id").cast(pl.String), pl.col("quality").cast(pl.String)
            )
            .with_columns(
                meter=pl.col("meter_id").replace_strict(codes, default=None, return_dtype=pl.Int64),
                value=pl.when(
                    pl.col("quality").is_in(_NULL_VALUE_QUALITIES) | pl.col("value").is_nan()
                )
                .then(None)
                .otherwise(pl.col("value")),
            )
            .filter(pl.col("meter").is_not_null())
            .select(
                "meter",
                pl.col("channel").cast(pl.String),
                pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
                "value",
                "quality",
            )
        )
        buf = io.BytesIO()
        rows.write_csv(buf, include_header=False, null_value="\\N", separator="\t")
        with conn.transaction():
            conn.execute(
                "CREATE TEMPORARY TABLE demo_history (meter_id bigint, channel text,"
                " ts timestamptz, value double precision, quality reading_quality) ON COMMIT DROP"
            )
            with conn.cursor().copy(
                "COPY demo_history FROM STDIN WITH (FORMAT text, NULL '\\N')"
            ) as copy:
                copy.write(buf.getvalue())
            cur = conn.execute(
                "INSERT INTO readings (meter_id, channel, ts, value, quality, source)"
                " SELECT meter_id, channel, ts, value, quality, 'live' FROM demo_history"
                " ON CONFLICT (meter_id, channel, ts) DO NOTHING"
            )
            return cur.rowcount


def wait_for_analytics(db_url: str, project_codes: list[str], timeout: float = 60.0) -> str:
    """Wait until the intraday job of every demo project has done a window; describe what
    the worker wrote."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT p.code, count(*), sum(r.units),"
                " sum(coalesce((r.detail->'rows'->>'consumption')::bigint, 0))"
                " FROM analytics_runs r JOIN projects p ON p.id = r.project_id"
                " WHERE r.status = 'done' AND r.kind = 'intraday' AND p.code = ANY(%s)"
                " GROUP BY p.code",
                (project_codes,),
            ).fetchall()
        done = {str(code): (int(n), int(units), int(cons)) for code, n, units, cons in rows}
        if len(done) == len(project_codes) and all(c > 0 for _, _, c in done.values()):
            steps = sum(n for n, _, _ in done.values())
            ticks = sum(u for _, u, _ in done.values())
            rows_written = sum(c for _, _, c in done.values())
            return (
                f"{ticks} ticks in {steps} steps for {len(done)} project(s);"
                f" {rows_written} consumption rows written"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"no consumption written yet (done so far: {done or 'nothing'})")
        time.sleep(1.0)
