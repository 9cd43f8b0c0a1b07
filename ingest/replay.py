"""Dead letters after the fact: list them, and replay them once their cause is fixed.

A typical case: readings refused as `unknown_meter` because a meter was installed before it
was registered. Once registered, a replay stores them; a payload that is refused again stays
a dead letter, with the latest outcome recorded.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from psycopg_pool import ConnectionPool

from ingest.parse import parse
from ingest.sink import Sink, load_registry


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    id: int
    received_at: dt.datetime
    topic: str
    gateway_code: str | None
    reason: str
    scope: str
    detail: str
    size: int
    replay_result: str | None


@dataclass
class ReplaySummary:
    stored_letters: int = 0
    stored_readings: int = 0
    still_refused: Counter[str] = field(default_factory=Counter)


def list_dead_letters(
    pool: ConnectionPool, *, reason: str | None = None, limit: int = 50
) -> list[DeadLetterRow]:
    """Newest first; payloads are not shown (they may be large), only their size."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, received_at, topic, gateway_code, reason_code, scope, detail,"
            " length(payload), replay_result FROM dead_letters"
            " WHERE (%(reason)s::text IS NULL OR reason_code = %(reason)s) AND replayed_at IS NULL"
            " ORDER BY id DESC LIMIT %(limit)s",
            {"reason": reason, "limit": limit},
        ).fetchall()
    return [DeadLetterRow(*row) for row in rows]


def replay(
    pool: ConnectionPool,
    *,
    ids: Sequence[int] = (),
    reason: str | None = None,
    now: dt.datetime,
) -> ReplaySummary:
    """Re-run pending dead letters (by id, or all of one reason) through parse and the sink."""
    if not ids and reason is None:
        raise ValueError("name dead letters by id or by reason")
    with pool.connection() as conn:
        letters = conn.execute(
            "SELECT id, topic, payload FROM dead_letters WHERE replayed_at IS NULL"
            " AND (id = ANY(%(ids)s) OR reason_code = %(reason)s) ORDER BY id",
            {"ids": list(ids), "reason": reason},
        ).fetchall()
        registry = load_registry(conn)
    sink = Sink(pool)
    summary = ReplaySummary()
    for letter_id, topic, payload in letters:
        parsed = parse(str(topic), bytes(payload), registry=registry, now=now)
        if parsed.dead:
            outcome = ",".join(sorted({str(d.reason) for d in parsed.dead}))
            summary.still_refused[outcome] += 1
            _mark(pool, int(letter_id), f"refused again: {outcome}", replayed=False)
            continue
        result = sink.write([parsed])
        summary.stored_letters += 1
        summary.stored_readings += result.staged
        _mark(pool, int(letter_id), f"stored {result.staged} readings", replayed=True)
    return summary


def _mark(pool: ConnectionPool, letter_id: int, outcome: str, *, replayed: bool) -> None:
    with pool.connection() as conn:
        conn.execute(
            "UPDATE dead_letters SET replay_result = %s,"
            " replayed_at = CASE WHEN %s THEN now() ELSE replayed_at END WHERE id = %s",
            (outcome, replayed, letter_id),
        )
