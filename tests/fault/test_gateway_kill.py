"""R2/R3: the gateway agent is killed with SIGKILL at random points (while polling, while
committing, while publishing, while acks are in flight) and restarted each time. Every reading
its outbox ever committed ("accepted") is in the store at the end, once.

After each kill the outbox file is read as the next start will find it; the union of those
snapshots and of the final one is the set of accepted readings that were not yet acknowledged
at some point, and each must reach the store. Rows acknowledged (and deleted) between snapshots
are in the store by construction: ingest acks only after COMMIT. The meters are simulated
behind a Modbus TCP converter in this process; the agent runs as its own process; broker and
ingest are real (a private Mosquitto, the ingest worker on a fresh database).
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gateway_agent.outbox import Outbox, iter_rows
from gateway_agent.profiles import builtin_profile
from gateway_agent.site import OutboxConfig
from tests.fault.conftest import SeededStore
from tests.support.broker import PrivateBroker
from tests.support.ingest_thread import ThreadWorker
from tests.support.seed import stored_rows
from tests.support.served_meters import ServedMeters

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "gw-r2-kill"
METERS = [f"R2-E-{i:03d}" for i in range(10)]
KILLS = 200  # R2: 200 random points
PROFILE = builtin_profile("eastron_sdm120")

Key = tuple[str, str, dt.datetime]


def site_file(folder: Path, broker_url: str, modbus_port: int, *, devices: bool) -> Path:
    lines = [
        "[gateway]",
        f'id = "{GATEWAY}"',
        'env = "dev"',
        "[forward]",
        f'mqtt_url = "{broker_url}"',
        f'client_id = "{GATEWAY}"',
        "batch_max_readings = 200",
        "batch_max_age_s = 0.2",
        "ack_timeout_s = 3",
        "[outbox]",
        f'path = "{folder / "outbox.sqlite"}"',
    ]
    if devices:
        lines += [
            "[[buses]]",
            'name = "conv-1"',
            'transport = "tcp"',
            'host = "127.0.0.1"',
            f"port = {modbus_port}",
            "timeout = 0.5",
        ]
        for i, meter in enumerate(METERS):
            lines += [
                "[[devices]]",
                f'meter_id = "{meter}"',
                'bus = "conv-1"',
                f"unit_id = {i + 1}",
                'profile = "eastron_sdm120"',
                "poll = { fast = 1, energy = 1 }",
            ]
    path = folder / ("site.toml" if devices else "drain.toml")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def spawn(site: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.gateway_proc", str(site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"agent did not start: {line!r} (exit {proc.poll()})"
    return proc


def snapshot(outbox_path: Path) -> set[Key]:
    """The accepted, unacknowledged readings a restart will find."""
    with Outbox(OutboxConfig(path=str(outbox_path)), boot_id=uuid.uuid4()) as outbox:
        return {(r.reading.meter_id, r.reading.channel, r.reading.ts) for r in iter_rows(outbox)}


@pytest.fixture
def store_url(seeded_store: SeededStore) -> str:
    return seeded_store(GATEWAY, METERS)


@pytest.mark.timeout(1800)
def test_r2_r3_kill_at_random_points_loses_nothing(
    store_url: str, broker: PrivateBroker, tmp_path: Path
) -> None:
    rng = random.Random(20261204)
    meters = ServedMeters(PROFILE, METERS)
    ingest = ThreadWorker(store_url, broker.url)
    outbox_path = tmp_path / "outbox.sqlite"
    site = site_file(tmp_path, broker.url, meters.port, devices=True)
    accepted: set[Key] = set()
    try:
        for _ in range(KILLS):
            proc = spawn(site)
            time.sleep(rng.uniform(0.0, 1.5))  # polling, committing, publishing, awaiting acks
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            accepted |= snapshot(outbox_path)

        # A clean run: SIGTERM finishes the cycle under way and exits 0.
        proc = spawn(site)
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        accepted |= snapshot(outbox_path)

        # A start without meters delivers what is left.
        drain = spawn(site_file(tmp_path, broker.url, meters.port, devices=False))
        deadline = time.monotonic() + 120
        while snapshot(outbox_path):
            assert time.monotonic() < deadline, "outbox never drained"
            time.sleep(0.5)
        drain.send_signal(signal.SIGTERM)
        assert drain.wait(30) == 0
    finally:
        ingest.close()
        meters.close()

    stored = stored_rows(store_url)
    assert len(stored) == len(set(stored))  # 0 duplicate rows
    lost = accepted - set(stored)
    assert not lost, f"{len(lost)} accepted readings lost, e.g. {sorted(lost)[:3]}"
    assert len(accepted) > KILLS  # the kills hit a running agent with readings in hand
    print(  # the figures belong in the test log
        f"R2/R3: {KILLS} kills; {len(stored)} readings stored; {len(accepted)} seen in the"
        f" outbox after a kill, all stored; duplicates on the wire:"
        f" {ingest.worker.metrics.registry.get_sample_value('ingest_duplicates_total')}"
    )
