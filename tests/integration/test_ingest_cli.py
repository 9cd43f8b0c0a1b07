"""`meterward ingest run` as a process, and dead-letter replay."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from contracts.fixtures import golden_payloads
from ingest.replay import list_dead_letters, replay
from store.migrations import migrate
from store.pool import open_pool
from tests.conftest import DatabaseFactory
from tests.support.mqtt import client
from tests.support.seed import seed_golden_registry

pytestmark = pytest.mark.integration
GOLDEN = {c.name: c for c in golden_payloads()}
ENTRY = [sys.executable, "-c", "from meterward.cli import main; main()"]


def count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_ingest_run_stores_then_stops_on_sigterm(
    make_database: DatabaseFactory, mqtt_url: str
) -> None:
    url = make_database()
    migrate(url, "require")
    seed_golden_registry(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    env |= {
        "MW_DATABASE_URL": url,
        "MW_MQTT_URL": mqtt_url,
        "MW_INGEST__CLIENT_ID": f"ingest-cli-{uuid.uuid4().hex[:8]}",
        # A private share group, and no session left behind on the shared test broker.
        "MW_INGEST__SHARE_GROUP": f"t{uuid.uuid4().hex[:8]}",
        "MW_INGEST__END_SESSION_ON_EXIT": "true",
        # The golden payloads are dated 2026-03-01: accept that as "recent" for this test.
        "MW_INGEST__SKEW_LIMIT_S": str(10 * 365 * 86400),
    }
    proc = subprocess.Popen(
        [*ENTRY, "ingest", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        pub = client(mqtt_url, "gw-cli-test")
        case = GOLDEN["live_three_phase"]
        deadline = time.monotonic() + 60
        # Publish until the worker's subscription is in place and the rows land.
        while count(url, "SELECT count(*) FROM readings") < 3:
            assert time.monotonic() < deadline, "ingest did not store the batch"
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            pub.publish(case.topic, case.payload, qos=1).wait_for_publish(10)
            time.sleep(0.5)
        pub.disconnect()
        pub.loop_stop()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "ingest stopped" in out
    assert count(url, "SELECT count(*) FROM readings") == 3


def test_replay_stores_readings_once_their_meter_is_registered(
    make_database: DatabaseFactory,
) -> None:
    from ingest.parse import parse  # noqa: PLC0415
    from ingest.sink import Sink, load_registry  # noqa: PLC0415

    url = make_database()
    migrate(url, "require")
    seed_golden_registry(url)
    pool = open_pool(url, min_size=1, max_size=2, name="mw-test-replay")
    try:
        now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
        with pool.connection() as conn:
            registry = load_registry(conn)
        case = GOLDEN["unknown_meter"]
        Sink(pool).write([parse(case.topic, case.payload, registry=registry, now=now)])
        pending = list_dead_letters(pool)
        assert [(d.reason, d.scope) for d in pending] == [("unknown_meter", "reading")]

        first = replay(pool, reason="unknown_meter", now=now)
        assert (first.stored_letters, dict(first.still_refused)) == (0, {"unknown_meter": 1})
        with pool.connection() as conn:
            conn.execute(
                "INSERT INTO meters (project_id, code, kind, profile)"
                " SELECT project_id, 'NOT-REGISTERED-0001', 'electricity', 'test'"
                " FROM meters WHERE code = 'P001-E-0001'"
            )
        second = replay(pool, ids=[pending[0].id], now=now)
        assert (second.stored_letters, second.stored_readings) == (1, 1)
        assert list_dead_letters(pool) == []
        assert count(url, "SELECT count(*) FROM readings") == 2
        # Replaying again finds nothing pending.
        assert replay(pool, reason="unknown_meter", now=now).stored_letters == 0
    finally:
        pool.close()
