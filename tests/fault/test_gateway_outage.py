"""R1: the gateway's uplink is down for six simulated hours while 50 meters are polled at
1 Hz; then it comes back. Every reading the agent accepted reaches the store exactly once,
the backlog drains on the backfill topic oldest-first per meter while live readings keep
arriving promptly, and the outbox stays within its byte budget.

The outage runs in simulated time (`WarpClock`): the poller's sleeps advance the clock, so
21,600 poll cycles take as long as polling and committing them takes. Afterwards time runs at
wall-clock speed and the drain and the live latency are measured in real seconds. Meters are
`SimulatedDevice`s answered in-process (`DeviceLine`); the broker is a private Mosquitto behind
a killable TCP proxy; ingest is the real worker on a fresh database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest

from contracts.topics import backfill_topic, readings_topic
from contracts.wire import Batch
from gateway_agent.agent import GatewayAgent
from gateway_agent.profiles import builtin_profile
from gateway_agent.sample import Sample
from gateway_agent.site import Bus, Device, ForwardConfig, OutboxConfig, Site
from simulators.modbus import SimulatedDevice
from tests.fault.conftest import SeededStore
from tests.support.broker import PrivateBroker
from tests.support.clocks import WarpClock
from tests.support.device_line import DeviceLine
from tests.support.ingest_thread import ThreadWorker
from tests.support.mqtt import Collector
from tests.support.proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

GATEWAY = "gw-r1-outage"
METERS = [f"R1-E-{i:03d}" for i in range(50)]
OUTAGE_S = 6 * 3600
BUDGET = 512 * 1024 * 1024
PROFILE = builtin_profile("eastron_sdm120")
SPEC = PROFILE.channels["energy_import_kwh"]


class RampValues:
    """Each meter's energy register grows at its own steady rate (kWh)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def values(self, meter_id: str, t: dt.datetime) -> Mapping[str, float]:
        i = int(meter_id[-3:])
        hours = (t.timestamp() - self.t0) / 3600
        return {"energy_import_kwh": 100.0 + i + hours * (1.0 + i / 10)}


def make_site(outbox: Path, proxy_port: int) -> Site:
    devices = tuple(
        Device(
            meter_id=meter,
            bus="rs485-1",
            unit_id=i + 1,
            profile=PROFILE,
            channels=(SPEC,),
            poll_groups={SPEC.poll_group: 1.0},
            max_registers_per_read=PROFILE.max_registers_per_read,
        )
        for i, meter in enumerate(METERS)
    )
    return Site(
        gateway_id=GATEWAY,
        env="dev",
        buses={"rs485-1": Bus("rs485-1", "tcp", host="127.0.0.1", port=1)},
        devices=devices,
        mqtt_meters=(),
        outbox=OutboxConfig(path=str(outbox), budget_bytes=BUDGET),
        forward=ForwardConfig(
            mqtt_url=f"mqtt://127.0.0.1:{proxy_port}",
            client_id=GATEWAY,
            batch_max_readings=2000,
            batch_max_age_s=0.5,
            backfill_rate=20_000.0,
            ack_timeout_s=30.0,
            status_interval_s=5.0,
        ),
    )


class RecordingAgent(GatewayAgent):
    """The agent, keeping a copy of every sample the outbox accepted (committed)."""

    accepted: list[Sample]

    async def accept(self, samples: Sequence[Sample]) -> None:
        await super().accept(samples)
        self.accepted.extend(samples)


def stored(url: str) -> dict[tuple[str, dt.datetime], float]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT m.code, r.ts, r.value FROM readings r JOIN meters m ON m.id = r.meter_id"
            " WHERE r.channel = 'energy_import_kwh'"
        ).fetchall()
    return {(str(code), ts): float(value) for code, ts, value in rows}


def count_before(url: str, ts: dt.datetime) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM readings WHERE ts < %s", (ts,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def store_url(seeded_store: SeededStore) -> str:
    return seeded_store(GATEWAY, METERS)


class TimedCollector(Collector):
    """Collector that notes the gateway clock's time at which each message arrived."""

    def __init__(self, url: str, topic_filter: str, clock: WarpClock) -> None:
        self.clock = clock
        self.arrivals: list[tuple[str, float, bytes]] = []
        self._lock = threading.Lock()
        super().__init__(url, topic_filter)

    def _on_message(self, c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.arrivals.append((message.topic, self.clock.now(), bytes(message.payload)))


@pytest.mark.timeout(1500)
def test_r1_six_hour_outage_loses_nothing(
    store_url: str, broker: PrivateBroker, tmp_path: Path
) -> None:
    import msgspec  # noqa: PLC0415

    # The outage replays the six hours before now, so that after it the gateway's clock agrees
    # with ingest's again (a gateway clock hours ahead would be flagged `clock_suspect`).
    start = math.floor(time.time()) - OUTAGE_S - 60.0
    clock = WarpClock(start)
    source = RampValues(start)

    def now() -> dt.datetime:
        return dt.datetime.fromtimestamp(clock.now(), dt.UTC)

    devices = {
        i + 1: SimulatedDevice(PROFILE, meter, source, clock=now) for i, meter in enumerate(METERS)
    }
    proxy = TcpProxy("127.0.0.1", broker.port).start()
    ingest = ThreadWorker(store_url, broker.url)
    collector = TimedCollector(broker.url, f"v1/gw/{GATEWAY}/+", clock)
    site = make_site(tmp_path / "outbox.sqlite", proxy.port)
    report: dict[str, float] = {}

    def phase(what: str) -> None:
        print(f"R1 {time.strftime('%H:%M:%S')}: {what}", flush=True)

    async def scenario() -> RecordingAgent:
        agent = RecordingAgent(
            site,
            clock=clock,
            forward_clock=clock.real_sleeps(),
            line_factory=lambda bus: DeviceLine(bus, devices),
        )
        agent.accepted = []
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        peak_disk = 0

        async def watch_disk() -> None:
            nonlocal peak_disk
            while not stop.is_set():
                peak_disk = max(peak_disk, agent.outbox.stats().disk_bytes)
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch_disk())
        await asyncio.sleep(5)  # live, connected
        assert agent.forwarder.stats().acks > 0, "nothing acknowledged before the outage"

        phase("connected and acknowledged; cutting the uplink")
        proxy.stop()  # reset every connection, then refuse new ones
        outage_began = clock.now()
        clock.warp(OUTAGE_S)
        real_outage = time.monotonic()
        while clock.warping:
            assert not running.done(), running
            await asyncio.sleep(0.5)
        report["outage_cycles_real_s"] = time.monotonic() - real_outage
        assert clock.now() - outage_began >= OUTAGE_S

        phase(f"outage over ({len(agent.accepted)} readings accepted); uplink back")
        proxy.start()
        back = now()
        reconnected = time.monotonic()
        backlog = sum(1 for s in agent.accepted if s.ts < back)
        while await asyncio.to_thread(count_before, store_url, back) < backlog:
            assert time.monotonic() - reconnected < 900, "backlog not drained within 15 min"
            assert not running.done(), running
            await asyncio.sleep(1)
        report["drain_s"] = time.monotonic() - reconnected
        report["backlog_readings"] = backlog
        phase(f"backlog of {backlog} stored after {report['drain_s']:.0f} s")
        await asyncio.sleep(10)  # live keeps flowing after the drain

        report["dropped_total"] = agent.outbox.stats().dropped_total
        stop.set()
        await running
        phase("agent stopped")
        watcher.cancel()
        report["peak_disk_bytes"] = peak_disk
        report["reconnect_at"] = back.timestamp()

        # The tail: what the last cycles accepted is delivered by the next start.
        drain_site = dataclasses.replace(site, devices=(), buses={})
        tail = GatewayAgent(drain_site, forward_clock=clock.real_sleeps())
        tail_stop = asyncio.Event()
        tail_run = asyncio.create_task(tail.run(tail_stop))
        deadline = time.monotonic() + 120
        while tail.outbox.rows() > 0:
            assert time.monotonic() < deadline, f"{tail.outbox.rows()} rows never acknowledged"
            await asyncio.sleep(0.5)
        tail_stop.set()
        await tail_run
        phase("tail delivered")
        return agent

    try:
        agent = asyncio.run(scenario())
    finally:
        collector.close()
        ingest.close()
        proxy.stop()

    # Ledger: every accepted reading is stored once, with the value the meter reported.
    accepted = {(s.meter_id, s.ts): s.value for s in agent.accepted}
    assert len(accepted) == len(agent.accepted)
    assert len(accepted) >= len(METERS) * OUTAGE_S  # six hours of 1 Hz polling were accepted
    rows = stored(store_url)
    missing = accepted.keys() - rows.keys()
    assert not missing, f"{len(missing)} accepted readings lost, e.g. {sorted(missing)[:3]}"
    assert rows.keys() == accepted.keys()
    for key, value in accepted.items():
        assert value is not None
        assert rows[key] == pytest.approx(value, rel=1e-6)
    with psycopg.connect(store_url) as conn:
        total = conn.execute("SELECT count(*) FROM readings").fetchone()
    assert total == (len(accepted),)  # 0 duplicate rows

    assert report["peak_disk_bytes"] <= BUDGET
    assert report["dropped_total"] == 0

    # Order and freshness, from what the broker delivered.
    first_seen: dict[tuple[str, dt.datetime], tuple[str, float]] = {}
    per_topic_order: dict[tuple[str, str], list[dt.datetime]] = defaultdict(list)
    decoder = msgspec.json.Decoder(Batch)
    for topic, arrived, payload in sorted(collector.arrivals, key=lambda a: a[1]):
        if not topic.endswith(("/readings", "/backfill")):
            continue
        for r in decoder.decode(payload).readings:
            key = (r.meter_id, r.ts)
            if key in first_seen:
                continue
            first_seen[key] = (topic, arrived)
            per_topic_order[(topic, r.meter_id)].append(r.ts)
    assert {t for t, _ in per_topic_order} <= {readings_topic(GATEWAY), backfill_topic(GATEWAY)}
    backfilled = [k for k, (t, _) in first_seen.items() if t == backfill_topic(GATEWAY)]
    assert len(backfilled) > len(METERS) * OUTAGE_S * 0.9  # the outage drained as backfill
    for (topic, meter), order in per_topic_order.items():
        if topic == backfill_topic(GATEWAY):
            assert order == sorted(order), f"{meter}: backfill out of order"
    reconnect_at = report["reconnect_at"]
    live_delays = [
        arrived - ts.timestamp()
        for (meter, ts), (topic, arrived) in first_seen.items()
        if topic == readings_topic(GATEWAY) and ts.timestamp() >= reconnect_at
    ]
    assert len(live_delays) > len(METERS) * 10, "live readings stopped during the drain"
    p95 = statistics.quantiles(live_delays, n=20)[-1]
    peak_mib = report["peak_disk_bytes"] / 2**20
    print(  # the figures belong in the test log
        f"R1: {len(accepted)} readings; outage cycles took {report['outage_cycles_real_s']:.0f} s;"
        f" backlog {report['backlog_readings']:.0f} drained in {report['drain_s']:.0f} s;"
        f" live p95 {p95:.2f} s during the drain; peak outbox {peak_mib:.0f} MiB"
    )
    assert p95 <= 10.0
