"""The ingest worker end to end: Mosquitto → worker → PostgreSQL + TimescaleDB → acks."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from contracts.fixtures import golden_now, golden_payloads
from contracts.wire import decode_ack
from ingest.consumer import Consumer
from ingest.parse import parse
from ingest.service import IngestWorker
from ingest.sink import load_registry
from store.migrations import migrate
from store.pool import open_pool
from tests.conftest import DatabaseFactory
from tests.support.mqtt import Collector, client
from tests.support.seed import seed_golden_registry

pytestmark = pytest.mark.integration
GOLDEN = golden_payloads()


@pytest.fixture
def worker(make_database: DatabaseFactory, mqtt_url: str) -> Iterator[tuple[str, IngestWorker]]:
    url = make_database()
    migrate(url, "require")
    seed_golden_registry(url)
    pool = open_pool(url, min_size=1, max_size=2, name="mw-test-ingest")
    consumer = Consumer(
        mqtt_url,
        client_id=f"ingest-test-{uuid.uuid4().hex[:8]}",
        share_group=f"t{uuid.uuid4().hex[:8]}",
    )
    w = IngestWorker(pool, consumer, clock=golden_now)
    w.end_session_on_stop = True
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    assert consumer.connected.wait(10)
    time.sleep(0.2)  # subscriptions settle
    try:
        yield url, w
    finally:
        w.stop()
        thread.join(30)
        pool.close()
        assert not thread.is_alive()


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def wait_until(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_golden_payloads_end_to_end(worker: tuple[str, IngestWorker], mqtt_url: str) -> None:
    url, _ = worker
    # What ingest subscribes to; a payload on another topic never reaches it.
    delivered = [c for c in GOLDEN if c.name != "unknown_topic"]
    with psycopg.connect(url) as conn:
        registry = load_registry(conn)
    expected = [parse(c.topic, c.payload, registry=registry, now=golden_now()) for c in delivered]
    acks = Collector(mqtt_url, "v1/gw/+/ack")
    pub = client(mqtt_url, "gw-test")
    try:
        for case in delivered:
            pub.publish(case.topic, case.payload, qos=1).wait_for_publish(10)
        dead = sum(len(p.dead) for p in expected)
        wait_until(lambda: rows(url, "SELECT count(*) FROM dead_letters")[0][0] == dead)
        stored = {(r[0], r[1], r[2]) for p in expected for r in p.rows}
        wait_until(lambda: rows(url, "SELECT count(*) FROM readings")[0][0] == len(stored))
        # Every identifiable batch is acked after its commit (unreadable ones cannot be).
        want = sorted(p.ack.status for p in expected if p.ack is not None)
        received = acks.wait_for(len(want))
        assert sorted(decode_ack(payload).status for _, payload in received) == want
        reasons = {r[0] for r in rows(url, "SELECT reason_code FROM dead_letters")}
        assert reasons == {c.expect for c in delivered if c.expect != "ok"}
    finally:
        acks.close()
        pub.disconnect()
        pub.loop_stop()


def test_r9_the_same_10000_reading_batch_ten_times_is_stored_once(
    worker: tuple[str, IngestWorker], mqtt_url: str
) -> None:
    import datetime as dt  # noqa: PLC0415

    from contracts.wire import Batch, Reading, encode  # noqa: PLC0415

    url, w = worker
    start = golden_now() - dt.timedelta(days=2)
    meters = ["P001-E-0001", "P001-E-0002", "P001-E-0003", "P001-W-0001"]
    readings = [
        Reading(meters[i % 4], "power_w", start + dt.timedelta(seconds=i // 4), float(i), "W", i)
        for i in range(10_000)
    ]
    payload = encode(Batch(1, "gw-0001", uuid.uuid4(), "live", golden_now(), 0, 9_999, readings))
    pub = client(mqtt_url, "gw-test")
    try:
        for _ in range(10):
            pub.publish("v1/gw/gw-0001/readings", payload, qos=1).wait_for_publish(10)
        metric = w.metrics.registry.get_sample_value
        wait_until(lambda: metric("ingest_readings_received_total") == 100_000, timeout=60)
        assert rows(url, "SELECT count(*) FROM readings")[0][0] == 10_000
        assert metric("ingest_duplicates_total") == 90_000
        assert metric("ingest_readings_stored_total") == 10_000
    finally:
        pub.disconnect()
        pub.loop_stop()


def test_self_publishing_meters_are_stored(make_database: DatabaseFactory, mqtt_url: str) -> None:
    """A simulated Tasmota plug publishes its own JSON; a mapping turns it into readings."""
    import asyncio  # noqa: PLC0415
    import datetime as dt  # noqa: PLC0415
    from collections.abc import Mapping  # noqa: PLC0415
    from urllib.parse import urlsplit  # noqa: PLC0415

    import aiomqtt  # noqa: PLC0415

    from ingest.mappings import MeterMapping  # noqa: PLC0415
    from ingest.service import IngestConfig  # noqa: PLC0415
    from simulators.mqtt_meters import MqttMeter, publish_forever, reported  # noqa: PLC0415
    from tests.support.seed import seed_fleet  # noqa: PLC0415

    run = uuid.uuid4().hex[:8]
    url = make_database()
    migrate(url, "require")
    seed_fleet(url, "gw-plugs", ["P001-PLUG-01"])
    plug = MqttMeter("P001-PLUG-01", f"plug-{run}", "tasmota", "Asia/Shanghai", period_s=60)
    mapping = MeterMapping(
        name="plugs", topic=f"tele/plug-{run}/SENSOR", format="tasmota", device_level=1,
        devices={f"plug-{run}": "P001-PLUG-01"}, time_zone="Asia/Shanghai",
    )  # fmt: skip
    pool = open_pool(url, min_size=1, max_size=2, name="mw-test-mapped")
    consumer = Consumer(
        mqtt_url, client_id=f"ingest-m-{run}", share_group=f"t{run}", extra_topics=(mapping.topic,)
    )
    worker = IngestWorker(pool, consumer, config=IngestConfig(mappings=(mapping,)))
    worker.end_session_on_stop = True
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert consumer.connected.wait(10)
    time.sleep(0.3)

    start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(hours=2)
    ticks = 0
    stop = asyncio.Event()

    class Source:
        def values(self, meter_id: str, t: dt.datetime) -> Mapping[str, float]:
            minutes = (t - start).total_seconds() / 60
            return {
                "energy_import_kwh": 10 + minutes * 0.02, "power_w": 1200.0,
                "apparent_power_va": 1250.0, "reactive_power_var": 350.0, "power_factor": 0.96,
                "voltage_l1_v": 229.6, "current_l1_a": 5.4567,
            }  # fmt: skip

    async def tick(_: float) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 30:
            stop.set()
        await asyncio.sleep(0)

    async def publish() -> int:
        parts = urlsplit(mqtt_url)
        async with aiomqtt.Client(parts.hostname or "127.0.0.1", parts.port or 1883) as pub:
            return await publish_forever(
                pub, [plug], Source(), lambda: start + dt.timedelta(minutes=ticks),
                sleep=tick, stop=stop,
            )  # fmt: skip

    try:
        sent = asyncio.run(publish())
        assert sent == 30
        wait_until(lambda: rows(url, "SELECT count(*) FROM readings")[0][0] == 30 * 7)
        stored = rows(
            url,
            "SELECT value FROM readings WHERE channel = 'energy_import_kwh' ORDER BY ts",
        )
        want = [
            reported(plug, Source().values("", start + dt.timedelta(minutes=i)))[
                "energy_import_kwh"
            ]
            for i in range(30)
        ]
        assert [r[0] for r in stored] == want
    finally:
        worker.stop()
        thread.join(30)
        pool.close()
