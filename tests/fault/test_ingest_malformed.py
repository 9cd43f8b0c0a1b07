"""R14: 10,000 malformed payloads interleaved 1:1 with valid ones. Every bad one is
dead-lettered with the right reason, every valid one stored, and the consumer never restarts."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import threading
import time
import uuid
from collections import Counter

import psycopg
import pytest

from contracts.wire import Batch, Reading, encode
from ingest.consumer import Consumer
from ingest.service import IngestWorker
from store.migrations import migrate
from store.pool import open_pool
from tests.conftest import DatabaseFactory
from tests.support.mqtt import client
from tests.support.seed import seed_fleet

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

GATEWAY = "gw-r14"
METER = "R14-E-0001"
COUNT = int(os.environ.get("MW_TEST_R14_COUNT", "10000"))
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
BOOT = uuid.UUID(int=14)


def one_reading(seq: int, *, value: float = 1.0, meter: str = METER, ts_offset_s: int = 0) -> Batch:
    ts = NOW - dt.timedelta(hours=1) + dt.timedelta(seconds=seq + ts_offset_s)
    reading = Reading(meter, "power_w", ts, value, "W", seq)
    return Batch(1, GATEWAY, BOOT, "live", NOW, seq, seq, [reading])


def malformed(seq: int, rng: random.Random) -> tuple[str, bytes, str]:
    """(topic, payload, expected reason); each yields exactly one dead letter."""
    topic = f"v1/gw/{GATEWAY}/readings"
    good = encode(one_reading(seq))
    kind = seq % 7
    if kind == 0:
        return topic, good[: rng.randrange(1, len(good) - 1)], "invalid_json"
    if kind == 1:
        # 0xff never starts a JSON document, so this stays undecodable whatever follows.
        noise = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        return topic, b"\xff" + noise, "invalid_json"
    if kind == 2:
        doc = json.loads(good)
        doc["v"] = rng.choice([0, 2, 99])
        return topic, json.dumps(doc).encode(), "schema_version"
    if kind == 3:
        return topic, good.replace(b'"value":1.0', b'"value":1e999'), "non_finite"
    if kind == 4:
        future = encode(one_reading(seq, ts_offset_s=5 * 86400))
        return topic, future, "ts_future"
    if kind == 5:
        return topic, encode(one_reading(seq, meter="NO-SUCH-METER")), "unknown_meter"
    return "v1/gw/gw-impostor/readings", good, "gateway_mismatch"


def test_r14_malformed_interleaved_with_valid(
    make_database: DatabaseFactory, mqtt_url: str
) -> None:
    url = make_database()
    migrate(url, "require")
    seed_fleet(url, GATEWAY, [METER])
    pool = open_pool(url, min_size=1, max_size=2, name="mw-r14")
    consumer = Consumer(
        mqtt_url,
        client_id=f"ingest-r14-{uuid.uuid4().hex[:8]}",
        share_group=f"t{uuid.uuid4().hex[:8]}",
    )
    worker = IngestWorker(pool, consumer)
    worker.end_session_on_stop = True
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert consumer.connected.wait(15)
    time.sleep(0.3)
    rng = random.Random(14)
    expected: Counter[str] = Counter()
    pub = client(mqtt_url, "r14", max_inflight=500)
    try:
        for i in range(COUNT):
            # Valid readings use even seconds, malformed ones odd: no key is shared.
            good = one_reading(2 * i)
            pub.publish(f"v1/gw/{GATEWAY}/readings", encode(good), qos=1)
            topic, payload, reason = malformed(2 * i + 1, rng)
            expected[reason] += 1
            info = pub.publish(topic, payload, qos=1)
            if i % 500 == 499:
                info.wait_for_publish(30)
        deadline = time.monotonic() + 30 + COUNT / 100
        while True:
            with psycopg.connect(url) as conn:
                dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
                stored = conn.execute("SELECT count(*) FROM readings").fetchone()
            if dead == (COUNT,) and stored == (COUNT,):
                break
            assert time.monotonic() < deadline, f"dead {dead}, stored {stored}"
            time.sleep(0.5)
        with psycopg.connect(url) as conn:
            reasons = Counter(
                {str(r): int(n) for r, n in conn.execute(
                    "SELECT reason_code, count(*) FROM dead_letters GROUP BY 1"
                ).fetchall()}
            )  # fmt: skip
        assert reasons == expected
        assert thread.is_alive()
        assert consumer.generation == 1  # never reconnected, never restarted
    finally:
        pub.disconnect()
        pub.loop_stop()
        worker.stop()
        thread.join(30)
        pool.close()
