"""Ingest through faults (targets R4-R7 of reliability-targets.md): broker killed or restarted,
ingest killed around its commit, database away. Each test ends with a ledger check: every
reading the gateway sent is stored, once."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg
import pytest

from tests.fault.conftest import SeededStore
from tests.support.broker import PrivateBroker
from tests.support.gateway import GatewayDouble
from tests.support.ingest_thread import ThreadWorker
from tests.support.proxy import TcpProxy
from tests.support.seed import stored_rows

pytestmark = [pytest.mark.integration, pytest.mark.fault]

GATEWAY = "gw-fault"
METERS = [f"PF-E-{i:04d}" for i in range(10)]
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)


@pytest.fixture
def store_url(seeded_store: SeededStore) -> str:
    return seeded_store(GATEWAY, METERS, timescale="require")


def set_of_stored(url: str) -> set[tuple[str, str, dt.datetime]]:
    return set(stored_rows(url))


def assert_ledger(url: str, gateway: GatewayDouble) -> None:
    sent = {(r.meter_id, r.channel, r.ts) for r in gateway.sent}
    stored = set_of_stored(url)
    assert stored == sent, f"lost {len(sent - stored)}, unexpected {len(stored - sent)}"
    with psycopg.connect(url) as conn:
        total = conn.execute("SELECT count(*) FROM readings").fetchone()
    assert total == (len(sent),)  # 0 duplicate rows


def send_stream(gateway: GatewayDouble, start: int, count: int) -> None:
    for i in range(start, start + count):
        gateway.send(T0 + dt.timedelta(seconds=i), float(i))
        time.sleep(0.005)


def test_r4_broker_killed_mid_stream(store_url: str, broker: PrivateBroker) -> None:
    worker = ThreadWorker(store_url, broker.url)
    gateway = GatewayDouble(broker.url, GATEWAY, METERS)
    try:
        send_stream(gateway, 0, 100)
        broker.kill()  # kill -9: whatever the broker held in memory is gone
        send_stream(gateway, 100, 50)  # the gateway keeps producing while it is down
        broker.start()
        send_stream(gateway, 150, 100)
        gateway.drain()
        assert_ledger(store_url, gateway)
        assert worker.thread.is_alive()  # the consumer never restarted
        assert worker.consumer.generation >= 2  # it reconnected on its own
    finally:
        gateway.close()
        worker.close()


def test_r5_broker_graceful_restart_keeps_the_session(
    store_url: str, broker: PrivateBroker
) -> None:
    worker = ThreadWorker(store_url, broker.url)
    gateway = GatewayDouble(broker.url, GATEWAY, METERS)
    try:
        send_stream(gateway, 0, 100)
        broker.terminate()
        broker.start()
        deadline = time.monotonic() + 30
        while worker.consumer.generation < 2:
            assert time.monotonic() < deadline, "ingest did not reconnect"
            time.sleep(0.05)
        assert worker.consumer.session_present is True  # the broker kept our session
        send_stream(gateway, 100, 100)
        gateway.drain()
        assert_ledger(store_url, gateway)
    finally:
        gateway.close()
        worker.close()


def spawn_ingest(db_url: str, mqtt_url: str, client_id: str, *fault: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.ingest_proc", db_url, mqtt_url, client_id, *fault],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_r6_ingest_killed_around_its_commit(
    store_url: str, broker: PrivateBroker, point: str
) -> None:
    client_id = f"ingest-r6-{uuid.uuid4().hex[:8]}"
    # Dies (SIGKILL) the 3rd time it reaches the point: once between COPY and COMMIT, or once
    # between COMMIT and the PUBACKs.
    first = spawn_ingest(store_url, broker.url, client_id, point, "3")
    gateway = GatewayDouble(broker.url, GATEWAY, METERS)
    try:
        # Keep producing until the worker has died at its fault point.
        sent = 0
        deadline = time.monotonic() + 60
        while first.poll() is None:
            assert time.monotonic() < deadline, "ingest never reached its fault point"
            send_stream(gateway, sent, 5)
            sent += 5
            time.sleep(0.05)
        assert first.returncode == -9, first.stdout.read() if first.stdout else ""
        send_stream(gateway, sent, 40)
        # A new process under the same client id resumes the session: the broker redelivers
        # what the dead one never acked.
        second = spawn_ingest(store_url, broker.url, client_id)
        try:
            gateway.drain()
            assert_ledger(store_url, gateway)
        finally:
            second.terminate()
            second.wait(30)
        assert second.returncode == 0
    finally:
        gateway.close()
        if first.poll() is None:
            first.kill()


@pytest.mark.slow
def test_r7_database_away_for_two_minutes(store_url: str, broker: PrivateBroker) -> None:
    outage_s = float(os.environ.get("MW_TEST_DB_OUTAGE_S", "120"))
    parts = urlsplit(store_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        proxied = parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}")
        client_id = f"ingest-r7-{uuid.uuid4().hex[:8]}"
        proc = spawn_ingest(proxied.geturl(), broker.url, client_id)
        # The broker connection stays up throughout: the gateway trusts its session and only
        # resends after a long silence, as the agent does.
        gateway = GatewayDouble(broker.url, GATEWAY, METERS, resend_after_s=outage_s + 60)
        try:
            send_stream(gateway, 0, 200)
            gateway.drain(timeout=60, resend_after_s=2)  # the worker may still be starting
            rss = psutil.Process(proc.pid)
            baseline = rss.memory_info().rss
            proxy.stop()
            start = time.monotonic()
            peak = baseline
            i = 200
            while time.monotonic() - start < outage_s:
                send_stream(gateway, i, 20)  # readings keep arriving at the broker
                i += 20
                peak = max(peak, rss.memory_info().rss)
                assert proc.poll() is None, "ingest exited during the outage"
            stored_before = len(set_of_stored(store_url))
            proxy.start()
            recovered = time.monotonic()
            while len(set_of_stored(store_url)) == stored_before:
                assert time.monotonic() - recovered < 30, "ingest did not resume within 30 s"
                time.sleep(0.2)
            resumed_s = time.monotonic() - recovered
            gateway.drain(timeout=180)
            assert_ledger(store_url, gateway)
            mib = 2**20
            print(  # the figures bench/RESULTS.md quotes (pytest -s)
                f"R7: worker RSS {baseline / mib:.1f} MiB before, peak {peak / mib:.1f} MiB"
                f" during a {outage_s:.0f} s outage; first commit {resumed_s:.1f} s after recovery"
            )
            assert peak <= 1.5 * baseline, f"RSS grew from {baseline} to {peak} bytes"
        finally:
            gateway.close()
            proc.terminate()
            proc.wait(30)


def test_two_workers_one_killed_mid_stream(store_url: str, broker: PrivateBroker) -> None:
    """Two workers split a shared subscription; one is killed -9 and restarted by its
    supervisor under the same client id (its session holds its share meanwhile)."""
    ids = [f"ingest-pair-{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    a = spawn_ingest(store_url, broker.url, ids[0])
    b = spawn_ingest(store_url, broker.url, ids[1])
    gateway = GatewayDouble(broker.url, GATEWAY, METERS)
    restarted = None
    try:
        send_stream(gateway, 0, 150)
        a.kill()
        a.wait(10)
        send_stream(gateway, 150, 100)
        restarted = spawn_ingest(store_url, broker.url, ids[0])
        send_stream(gateway, 250, 100)
        gateway.drain()
        assert_ledger(store_url, gateway)
        assert b.poll() is None  # the other worker never stopped
    finally:
        gateway.close()
        for proc in (b, restarted):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
