"""The sink against real PostgreSQL + TimescaleDB: exactly once, dead letters, accounting."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from contracts.fixtures import golden_now, golden_payloads
from contracts.wire import Batch, Reading, encode
from ingest.parse import Parsed, parse
from ingest.sink import DurabilityError, Sink, check_durability, load_registry
from store.migrations import migrate
from store.pool import open_pool
from tests.conftest import DatabaseFactory
from tests.support.seed import seed_golden_registry

pytestmark = pytest.mark.integration
GOLDEN = {c.name: c for c in golden_payloads()}


@pytest.fixture
def store(make_database: DatabaseFactory) -> Iterator[tuple[str, ConnectionPool]]:
    url = make_database()
    migrate(url, "require")
    seed_golden_registry(url)
    pool = open_pool(url, min_size=1, max_size=4, name="mw-test-sink")
    try:
        yield url, pool
    finally:
        pool.close()


def parse_all(url: str, names: list[str], now: dt.datetime | None = None) -> list[Parsed]:
    with psycopg.connect(url) as conn:
        registry = load_registry(conn)
    return [
        parse(GOLDEN[n].topic, GOLDEN[n].payload, registry=registry, now=now or golden_now())
        for n in names
    ]


def count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_exactly_once_across_redelivery(store: tuple[str, ConnectionPool]) -> None:
    url, pool = store
    sink = Sink(pool)
    first = sink.write(parse_all(url, ["live_three_phase", "backfill_with_gaps"]))
    assert (first.staged, first.stored, first.duplicates) == (6, 6, 0)
    # The same two batches again, and once more twice within one flush (a redelivery that
    # arrives before the first copy's ack).
    again = sink.write(parse_all(url, ["live_three_phase", "backfill_with_gaps"] * 2))
    assert (again.staged, again.stored, again.duplicates) == (12, 0, 12)
    assert count(url, "SELECT count(*) FROM readings") == 6
    assert count(url, "SELECT count(*) FROM readings WHERE value IS NULL") == 2


def test_bad_readings_go_to_dead_letters_and_good_ones_are_stored(
    store: tuple[str, ConnectionPool],
) -> None:
    url, pool = store
    names = ["unit_mismatch", "unknown_meter", "meter_other_project", "invalid_json"]
    result = Sink(pool).write(parse_all(url, names))
    assert result.dead_letters == 4
    # Good readings: 2 + 1 + 1, of which the last two share one key (P001-E-0002 power_w).
    assert (result.staged, result.stored) == (4, 3)
    assert count(url, "SELECT count(*) FROM readings") == 3
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT reason_code, scope, length(payload_sha256) FROM dead_letters ORDER BY id"
        ).fetchall()
    assert sorted(rows) == sorted(
        [("unit_mismatch", "reading", 64), ("unknown_meter", "reading", 64),
         ("meter_other_project", "reading", 64), ("invalid_json", "batch", 64)]
    )  # fmt: skip


def test_progress_and_sequence_ranges(store: tuple[str, ConnectionPool]) -> None:
    url, pool = store
    now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    boot = uuid.uuid4()

    def batch(first: int, last: int, kind: str) -> bytes:
        readings = [
            Reading("P001-E-0001", "power_w", now - dt.timedelta(seconds=s), 1.0, "W", s)
            for s in range(first, last + 1)
        ]
        return encode(Batch(1, "gw-0001", boot, kind, now, first, last, readings))  # type: ignore[arg-type]

    with psycopg.connect(url) as conn:
        registry = load_registry(conn)
    sink = Sink(pool)
    # Live runs ahead after an outage; the backfill closes the hole later.
    for first, last, kind, topic in [(0, 9, "live", "readings"), (20, 29, "live", "readings"),
                                     (10, 19, "backfill", "backfill")]:  # fmt: skip
        sink.write(
            [parse(f"v1/gw/gw-0001/{topic}", batch(first, last, kind), registry=registry, now=now)]
        )
        if first == 20:
            with psycopg.connect(url) as conn:
                ranges = conn.execute(
                    "SELECT seq_lo, seq_hi FROM gateway_seq_ranges ORDER BY seq_lo"
                ).fetchall()
            assert ranges == [(0, 9), (20, 29)]  # the open gap is visible
    with psycopg.connect(url) as conn:
        ranges = conn.execute("SELECT seq_lo, seq_hi FROM gateway_seq_ranges").fetchall()
        progress = conn.execute("SELECT upto_seq, readings FROM gateway_progress").fetchall()
    assert ranges == [(0, 29)]
    assert progress == [(29, 30)]


def test_trusted_value_replaces_a_clock_suspect_one(store: tuple[str, ConnectionPool]) -> None:
    url, pool = store
    now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    ts = now - dt.timedelta(minutes=1)

    def payload(sent_at: dt.datetime, value: float, seq: int) -> bytes:
        reading = Reading("P001-E-0001", "power_w", ts, value, "W", seq)
        return encode(Batch(1, "gw-0001", uuid.uuid4(), "live", sent_at, seq, seq, [reading]))

    with psycopg.connect(url) as conn:
        registry = load_registry(conn)
    sink = Sink(pool)
    skewed = parse("v1/gw/gw-0001/readings", payload(now - dt.timedelta(hours=2), 99.0, 1),
                   registry=registry, now=now)  # fmt: skip
    assert sink.write([skewed]).stored == 1
    trusted = parse("v1/gw/gw-0001/readings", payload(now, 5.0, 2), registry=registry, now=now)
    assert sink.write([trusted]).stored == 1
    # And a suspect copy arriving after the trusted one changes nothing.
    assert sink.write([skewed]).stored == 0
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT value, quality::text FROM readings").fetchall()
    assert row == [(5.0, "good")]


def test_durability_settings_are_checked(store: tuple[str, ConnectionPool]) -> None:
    url, _ = store
    with psycopg.connect(url) as conn:
        check_durability(conn)  # the test server is durable
        conn.execute("SET synchronous_commit = off")
        with pytest.raises(DurabilityError, match="synchronous_commit=off"):
            check_durability(conn)


def test_concurrent_writers_keep_sequence_ranges_consistent(
    store: tuple[str, ConnectionPool],
) -> None:
    """Two workers commit batches of one gateway boot at the same time, some twice."""
    import threading  # noqa: PLC0415

    url, pool = store
    now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    boot = uuid.uuid4()
    with psycopg.connect(url) as conn:
        registry = load_registry(conn)

    def message(first: int) -> Parsed:
        readings = [
            Reading("P001-E-0001", "power_w", now - dt.timedelta(seconds=s), 1.0, "W", s)
            for s in range(first, first + 10)
        ]
        batch = Batch(1, "gw-0001", boot, "live", now, first, first + 9, readings)
        return parse("v1/gw/gw-0001/readings", encode(batch), registry=registry, now=now)

    errors: list[BaseException] = []

    def writer(firsts: list[int]) -> None:
        sink = Sink(pool)
        try:
            for first in firsts:
                sink.write([message(first)])
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    evens = [i * 10 for i in range(0, 60, 2)]
    odds = [i * 10 for i in range(1, 60, 2)]
    threads = [
        threading.Thread(target=writer, args=(evens + odds[:10],)),
        threading.Thread(target=writer, args=(odds + evens[:10],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with psycopg.connect(url) as conn:
        ranges = conn.execute("SELECT seq_lo, seq_hi FROM gateway_seq_ranges").fetchall()
        stored = conn.execute("SELECT count(*) FROM readings").fetchone()
    assert ranges == [(0, 599)]
    assert stored == (600,)
