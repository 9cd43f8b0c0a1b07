"""The forwarder against a private Mosquitto that is killed, frozen or cut off.

R4 in small: a `kill -9` of the broker mid-stream loses nothing, because outbox rows stay
until ingest's application ack, whatever the broker had PUBACKed from memory. A frozen broker
(SIGSTOP: PUBACKs never come) behind a cut link is noticed at once, not after the publish
timeout. R1 in small: an outage with 50 meters polling, then live data stays fresh while the
backlog drains, and every reading arrives in order per meter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_agent.forwarder import Forwarder
from gateway_agent.outbox import Outbox
from gateway_agent.sample import Sample
from gateway_agent.site import ForwardConfig, OutboxConfig
from tests.support.acker import FakeIngest
from tests.support.broker import PrivateBroker
from tests.support.forwarding import cycle, forward_config, running, until
from tests.support.proxy import TcpProxy

pytestmark = [pytest.mark.fault, pytest.mark.slow]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(OutboxConfig(path=str(tmp_path / "outbox.db")), boot_id=uuid.uuid4())
    yield box
    box.close()


def config(url: str, gateway_id: str, **overrides: object) -> ForwardConfig:
    """Fault-test defaults: a longer session, a short ack timeout and keepalive."""
    faults: dict[str, object] = {"session_expiry_s": 300, "ack_timeout_s": 3.0, "keepalive_s": 5}
    return forward_config(url, gateway_id, **(faults | overrides))


def test_broker_kill_mid_stream_loses_nothing(broker: PrivateBroker, outbox: Outbox) -> None:
    gateway_id = f"gw-fault-{uuid.uuid4().hex[:8]}"
    ingest = FakeIngest(broker.url, gateway_id)
    fwd = Forwarder(config(broker.url, gateway_id), outbox, gateway_id=gateway_id)

    async def body() -> None:
        await until(lambda: fwd.stats().connected)
        for i in range(120):
            await asyncio.to_thread(outbox.append, cycle(i))
            fwd.notify()
            await asyncio.sleep(0.02)
            if i == 40:
                await asyncio.to_thread(broker.kill)  # SIGKILL: PUBACKed state is gone
            if i == 80:
                await asyncio.to_thread(broker.start)
        await until(lambda: outbox.rows() == 0, timeout=60)

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
    assert ingest.acked == set(range(1, 1201))
    assert fwd.stats().reconnects >= 1


def test_frozen_broker_behind_a_cut_link_is_noticed_at_once(
    broker: PrivateBroker, outbox: Outbox
) -> None:
    gateway_id = f"gw-fault-{uuid.uuid4().hex[:8]}"
    proxy = TcpProxy("127.0.0.1", broker.port).start()
    ingest = FakeIngest(broker.url, gateway_id)
    fwd = Forwarder(
        config(f"mqtt://127.0.0.1:{proxy.port}", gateway_id, keepalive_s=60),
        outbox,
        gateway_id=gateway_id,
    )
    assert broker.proc is not None
    pid = broker.proc.pid

    async def body() -> None:
        await until(lambda: fwd.stats().connected)
        os.kill(pid, signal.SIGSTOP)  # no PUBACK will come
        await asyncio.to_thread(outbox.append, cycle(0))
        fwd.notify()
        await asyncio.sleep(0.5)  # the publish is now waiting for its PUBACK
        proxy.stop()
        cut = time.monotonic()
        await until(lambda: not fwd.stats().connected, timeout=10)
        assert time.monotonic() - cut < 2.0  # not the 60 s keepalive nor the publish timeout
        os.kill(pid, signal.SIGCONT)
        proxy.start()
        await until(lambda: outbox.rows() == 0, timeout=30)

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
        proxy.stop()
    assert ingest.acked == set(range(1, 11))


def test_outage_with_50_meters_then_live_stays_fresh_during_catch_up(
    broker: PrivateBroker, outbox: Outbox
) -> None:
    """R1 scaled: 50 meters x 4 channels every 0.1 s (simulated 1 Hz at 10x), a 3 s outage."""
    gateway_id = f"gw-fault-{uuid.uuid4().hex[:8]}"
    proxy = TcpProxy("127.0.0.1", broker.port).start()
    ingest = FakeIngest(broker.url, gateway_id)
    rate = 4000.0  # the backlog (~6,000 readings) takes ~1.5 s to drain at this rate
    fwd = Forwarder(
        config(
            f"mqtt://127.0.0.1:{proxy.port}",
            gateway_id,
            backfill_rate=rate,
            batch_max_readings=1000,
            batch_max_age_s=0.2,
        ),
        outbox,
        gateway_id=gateway_id,
    )
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    appended_at: dict[int, float] = {}

    def poll(i: int) -> list[Sample]:
        ts = t0 + dt.timedelta(seconds=i)
        return [
            Sample(f"M{m:03d}", channel, ts, float(i) if unit == "kWh" else 1.0 * m, unit)
            for m in range(50)
            for channel, unit in (
                ("energy_import_kwh", "kWh"),
                ("power_w", "W"),
                ("voltage_l1_v", "V"),
                ("current_l1_a", "A"),
            )
        ]

    cycles, outage = 130, (20, 50)  # the link is down for cycles 20..49 (3 s)

    async def body() -> None:
        await until(lambda: fwd.stats().connected)
        for i in range(cycles):
            if i == outage[0]:
                proxy.stop()
            if i == outage[1]:
                proxy.start()
            outcome = await asyncio.to_thread(outbox.append, poll(i))
            assert outcome.last_seq is not None
            appended_at[outcome.last_seq] = time.monotonic()
            fwd.notify()
            await asyncio.sleep(0.1)
        await until(lambda: outbox.rows() == 0, timeout=60)

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
        proxy.stop()
    total = cycles * 200
    assert ingest.acked == set(range(1, total + 1))
    assert fwd.stats().reconnects >= 1
    # In order per meter within each stream (first deliveries; resends are duplicates).
    for kind in ("readings", "backfill"):
        delivered: set[int] = set()
        last: dict[str, dt.datetime] = {}
        for rec in ingest.received:
            if rec.topic_kind != kind:
                continue
            for r in rec.batch.readings:
                if r.seq in delivered or r.channel != "energy_import_kwh":
                    continue
                delivered.add(r.seq)
                assert r.ts > last.get(r.meter_id, t0 - dt.timedelta(days=1))
                last[r.meter_id] = r.ts
    # Live data after the reconnect stayed fresh while the backlog drained.
    live = [
        (rec.batch.seq_first, rec.batch.seq_last, rec.at)
        for rec in ingest.received
        if rec.topic_kind == "readings"
    ]
    backfill_done = max(rec.at for rec in ingest.received if rec.topic_kind == "backfill")
    arrival = {
        seq: min(at for first, last, at in live if first <= seq <= last)
        for seq in appended_at
        if seq > outage[1] * 200 and any(first <= seq <= last for first, last, _ in live)
    }
    assert len(arrival) >= 40  # most cycles after the outage went live
    latencies = [arrival[seq] - appended_at[seq] for seq in arrival]
    assert statistics.quantiles(latencies, n=20)[18] < 1.0  # p95, real seconds
    # Some of those live batches went out before the backlog was done: not starved.
    assert min(arrival.values()) < backfill_done
