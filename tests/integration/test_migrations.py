"""One set of migrations, two stores: a TimescaleDB hypertable and a plain PostgreSQL table."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import psycopg
import pytest
from yoyo import get_backend, read_migrations

from store.capabilities import detect
from store.migrations import (
    StoreError,
    TimescaleMode,
    migrate,
    migrations_dir,
    prepare_backend,
    status,
    yoyo_uri,
)
from tests.conftest import DatabaseFactory

pytestmark = pytest.mark.integration

ALL_MIGRATIONS = sorted(
    p.name.removesuffix(".sql")
    for p in migrations_dir().glob("*.sql")
    if not p.name.endswith(".rollback.sql")
)

EXPECTED_TABLES = {
    "organisations", "projects", "buildings", "units", "gateways", "meters",
    "meter_installations", "readings", "gateway_progress", "dead_letters", "users",
    "memberships", "audit_log",
    # 0004.analytics
    "consumption_intervals", "counter_events", "rollups", "analytics_watermarks", "findings",
    "alarm_episodes", "alarm_events",
}  # fmt: skip
RUNS_TABLES = {"analytics_job_cursors", "analytics_runs"}  # 0005, which depends on 0004
ANALYTICS_TABLES = {
    "consumption_intervals", "counter_events", "rollups", "analytics_watermarks", "findings",
    "alarm_episodes", "alarm_events",
}  # fmt: skip


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def is_hypertable(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'readings'"
        ).fetchone()
    return bool(row and row[0] == 1)


def insert_reading(conn: psycopg.Connection[tuple[object, ...]], value: float) -> int:
    cur = conn.execute(
        "INSERT INTO readings (meter_id, channel, ts, value) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (42, "energy_import_kwh", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), value),
    )
    return cur.rowcount


def assert_unique_key(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert insert_reading(conn, 1.0) == 1
        assert insert_reading(conn, 2.0) == 0  # idempotent re-delivery is a no-op
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO readings (meter_id, channel, ts, value) VALUES (%s, %s, %s, %s)",
                (42, "energy_import_kwh", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), 3.0),
            )
        row = conn.execute("SELECT count(*), min(value) FROM readings").fetchone()
        assert row == (1, 1.0)


def test_timescaledb_store(make_database: DatabaseFactory) -> None:
    url = make_database()
    applied, caps = migrate(url, "require")
    assert applied == ALL_MIGRATIONS
    assert caps.backend == "timescaledb"
    assert caps.timescaledb_license in {"apache", "timescale"}
    assert tables(url) >= EXPECTED_TABLES
    assert is_hypertable(url)
    # Re-applying is a no-op.
    again, _ = migrate(url, "require")
    assert again == []
    state = status(url)
    assert state.readings_is_hypertable
    assert state.pending == ()
    assert_unique_key(url)


def test_plain_postgresql_store(make_database: DatabaseFactory) -> None:
    url = make_database()
    applied, caps = migrate(url, "off")
    assert applied == ALL_MIGRATIONS
    assert caps.backend == "postgresql"
    assert caps.timescaledb_installed is None
    assert tables(url) >= EXPECTED_TABLES
    with psycopg.connect(url) as conn:
        kinds = conn.execute(
            "SELECT c.relkind, am.amname FROM pg_class c"
            " LEFT JOIN pg_index i ON i.indexrelid = c.oid"
            " LEFT JOIN pg_am am ON am.oid = c.relam"
            " WHERE c.relname IN ('readings', 'readings_ts_brin') ORDER BY c.relname"
        ).fetchall()
    assert kinds == [("r", "heap"), ("i", "brin")]
    assert migrate(url, "off")[0] == []
    assert not status(url).readings_is_hypertable
    assert_unique_key(url)


def test_existing_store_keeps_its_backend(make_database: DatabaseFactory) -> None:
    """A plain store migrated later in `auto` mode is not half-converted."""
    url = make_database()
    migrate(url, "off")
    _, caps = migrate(url, "auto")
    assert caps.timescaledb_installed is None
    assert not status(url).readings_is_hypertable


def test_concurrent_migrations_apply_once(make_database: DatabaseFactory) -> None:
    """Two processes migrating at once: yoyo's lock lets one apply, the other sees it done."""
    url = make_database()
    code = "import sys; from store.migrations import migrate; print(migrate(sys.argv[1], 'off')[0])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == sorted([str(ALL_MIGRATIONS), "[]"])


def test_time_zone_must_be_iana(make_database: DatabaseFactory) -> None:
    url = make_database()
    migrate(url, "off")
    with psycopg.connect(url, autocommit=True) as conn:
        org = conn.execute(
            "INSERT INTO organisations (code, name) VALUES ('hq', 'HQ') RETURNING id"
        ).fetchone()
        assert org is not None
        conn.execute(
            "INSERT INTO projects (organisation_id, code, name, time_zone)"
            " VALUES (%s, 'p1', 'Estate', 'Asia/Shanghai')",
            (org[0],),
        )
        for bad in ("Mars/Olympus", "UTC+8", ""):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(
                    "INSERT INTO projects (organisation_id, code, name, time_zone)"
                    " VALUES (%s, %s, 'x', %s)",
                    (org[0], f"bad-{bad}", bad),
                )


def test_membership_role_must_fit_tier(make_database: DatabaseFactory) -> None:
    url = make_database()
    migrate(url, "off")
    with psycopg.connect(url, autocommit=True) as conn:
        org = conn.execute("INSERT INTO organisations (code, name) VALUES ('hq','HQ') RETURNING id")
        org_id = org.fetchone()[0]  # type: ignore[index]
        user = conn.execute("INSERT INTO users (username) VALUES ('a') RETURNING id")
        user_id = user.fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO memberships (user_id, organisation_id, tier, role)"
            " VALUES (%s, %s, 'hq', 'hq_admin')",
            (user_id, org_id),
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(  # staff belong to a project, never to HQ
                "INSERT INTO memberships (user_id, organisation_id, tier, role)"
                " VALUES (%s, %s, 'hq', 'staff')",
                (user_id, org_id),
            )


def test_require_without_extension_fails_clearly(embedded_pg_url: str) -> None:
    """A server with no TimescaleDB files: `require` names the problem, `auto` goes plain."""
    with pytest.raises(StoreError, match="timescaledb required but the server has no"):
        prepare_backend(embedded_pg_url, "require")
    _, caps = migrate(embedded_pg_url, "auto")
    assert caps.backend == "postgresql"
    with psycopg.connect(embedded_pg_url) as conn:
        assert detect(conn).timescaledb_available is None


def test_null_value_only_when_the_meter_did_not_answer(make_database: DatabaseFactory) -> None:
    url = make_database()
    migrate(url, "require")
    ts = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        for quality in ("comm_error", "nan_sentinel"):
            conn.execute(
                "INSERT INTO readings (meter_id, channel, ts, value, quality)"
                " VALUES (1, %s, %s, NULL, %s)",
                (f"power_w_{quality}", ts, quality),
            )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO readings (meter_id, channel, ts, value, quality)"
                " VALUES (1, 'power_w', %s, NULL, 'good')",
                (ts,),
            )


def test_stored_qualities_match_the_contract(make_database: DatabaseFactory) -> None:
    from typing import get_args  # noqa: PLC0415

    from contracts.wire import Quality  # noqa: PLC0415

    url = make_database()
    migrate(url, "off")
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT unnest(enum_range(NULL::reading_quality))::text").fetchall()
    assert {r[0] for r in rows} == set(get_args(Quality))


def test_migration_files_are_found() -> None:
    assert ALL_MIGRATIONS[0] == "0001.initial"
    assert os.access(migrations_dir(), os.R_OK)


def hypertables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")
        return {str(r[0]) for r in rows}


def columns(url: str, table: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchall()
    return {str(r[0]) for r in rows}


@pytest.mark.parametrize("mode", ["require", "off"])
def test_analytics_migration_rolls_back_and_reapplies(
    make_database: DatabaseFactory, mode: TimescaleMode
) -> None:
    """0004 on both stores: per-interval tables are hypertables when TimescaleDB is there; its
    rollback (after 0005's, which depends on it) removes exactly what the two added."""
    url = make_database()
    migrate(url, mode)
    assert tables(url) >= ANALYTICS_TABLES
    if mode == "require":
        assert hypertables(url) == {"readings", "consumption_intervals", "counter_events"}
    assert {"parent_meter_id", "load"} <= columns(url, "meters")
    before = tables(url)

    migrations = read_migrations(str(migrations_dir()))
    with get_backend(yoyo_uri(url)) as backend, backend.lock():
        backend.rollback_migrations(
            [
                m
                for m in backend.to_rollback(migrations)
                if m.id in ("0005.analytics-runs", "0004.analytics")
            ]
        )
    assert tables(url) == before - ANALYTICS_TABLES - RUNS_TABLES
    assert not {"parent_meter_id", "load"} & columns(url, "meters")
    assert {"opening_readings", "closing_readings", "multiplier"}.isdisjoint(
        columns(url, "meter_installations")
    )
    with psycopg.connect(url) as conn:
        types = conn.execute(
            "SELECT typname FROM pg_type WHERE typname IN ('consumption_quality', 'alarm_severity')"
        ).fetchall()
    assert types == []
    assert status(url).pending == ("0004.analytics", "0005.analytics-runs")

    assert migrate(url, mode)[0] == ["0004.analytics", "0005.analytics-runs"]
    assert tables(url) == before
