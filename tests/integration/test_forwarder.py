"""The forwarder against the test Mosquitto, with a fake ingest that publishes app acks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import pytest

from contracts.topics import ack_topic, status_topic
from gateway_agent.clock import ManualClock
from gateway_agent.forwarder import Forwarder
from gateway_agent.outbox import Outbox
from gateway_agent.site import OutboxConfig, TlsConfig
from tests.support.acker import FakeIngest
from tests.support.broker import PrivateBroker
from tests.support.forwarding import T0, cycle, forward_config, running, until
from tests.support.mqtt import Collector, client
from tests.support.proxy import TcpProxy
from tests.support.tls import TlsBroker, make_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Mosquitto for this module: on the shared test broker, a running ingest
    subscribed to `v1/gw/+/readings` answers every gateway (dead-lettering unknown ones),
    and those foreign acks would delete rows that these tests expect to stay."""
    broker = PrivateBroker(tmp_path_factory.mktemp("forwarder-broker")).start()
    yield broker.url
    broker.kill()


@pytest.fixture
def gateway_id() -> str:
    return f"gw-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(OutboxConfig(path=str(tmp_path / "outbox.db")), boot_id=uuid.uuid4())
    yield box
    box.close()


@pytest.fixture
def clear_status(broker_url: str, gateway_id: str) -> Iterator[None]:
    yield
    c = client(broker_url, "clear-retained")
    c.publish(status_topic(gateway_id), b"", qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


@pytest.mark.usefixtures("clear_status")
@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5", "mqtt311"])
def test_everything_delivered_and_deleted(
    broker_url: str, gateway_id: str, outbox: Outbox, mqtt5: bool
) -> None:
    for i in range(30):
        outbox.append(cycle(i))  # 300 readings of backlog before the first connect
    backlog = outbox.max_seq()
    ingest = FakeIngest(broker_url, gateway_id)
    fwd = Forwarder(
        forward_config(broker_url, gateway_id, mqtt5=mqtt5), outbox, gateway_id=gateway_id
    )

    async def body() -> None:
        await until(lambda: fwd.stats().connected)
        for i in range(30, 60):
            await asyncio.to_thread(outbox.append, cycle(i))
            fwd.notify()
            await asyncio.sleep(0.01)
        await until(lambda: outbox.rows() == 0)

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
    everything = set(range(1, outbox.max_seq() + 1))
    assert ingest.acked == everything
    assert ingest.seqs("backfill") >= set(range(1, backlog + 1))
    assert ingest.seqs("readings") >= set(range(backlog + 1, outbox.max_seq() + 1))
    stats = fwd.stats()
    assert stats.acked_readings == len(everything)
    assert stats.readings_live + stats.readings_backfill == len(everything)
    assert outbox.stats().acked_total == len(everything)


@pytest.mark.usefixtures("clear_status")
def test_no_deletion_without_the_app_ack(broker_url: str, gateway_id: str, outbox: Outbox) -> None:
    for i in range(20):
        outbox.append(cycle(i))
    ingest = FakeIngest(broker_url, gateway_id, ack=False)
    fwd = Forwarder(forward_config(broker_url, gateway_id), outbox, gateway_id=gateway_id)

    async def body() -> None:
        await until(lambda: len(ingest.seqs()) == 200)
        await asyncio.sleep(0.5)  # time for any (wrong) deletion to happen

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
    # Every batch was published at QoS 1 and PUBACKed (publish returned), yet nothing went.
    assert fwd.stats().readings_backfill == 200
    assert outbox.rows() == 200
    assert outbox.stats().acked_total == 0


@pytest.mark.usefixtures("clear_status")
def test_unacked_batches_are_resent_on_backfill(
    broker_url: str, gateway_id: str, outbox: Outbox
) -> None:
    ingest = FakeIngest(broker_url, gateway_id, ack_from_delivery=2)  # ignores first deliveries
    fwd = Forwarder(
        forward_config(broker_url, gateway_id, ack_timeout_s=0.5), outbox, gateway_id=gateway_id
    )

    async def body() -> None:
        await until(lambda: fwd.stats().connected)
        for i in range(5):
            await asyncio.to_thread(outbox.append, cycle(i))
            fwd.notify()
        await until(lambda: outbox.rows() == 0)

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
    assert fwd.stats().resends >= 1
    live_first = {r.batch.seq_first for r in ingest.received if r.topic_kind == "readings"}
    resent = {r.batch.seq_first for r in ingest.received if r.topic_kind == "backfill"}
    assert live_first <= resent  # every live batch came again on backfill
    assert ingest.acked == set(range(1, 51))


@pytest.mark.usefixtures("clear_status")
def test_live_is_not_starved_by_a_rate_limited_backlog(
    broker_url: str, gateway_id: str, outbox: Outbox
) -> None:
    for i in range(300):
        outbox.append(cycle(i))  # 3000 readings of backlog
    ingest = FakeIngest(broker_url, gateway_id)
    rate = 1000.0
    fwd = Forwarder(
        forward_config(
            broker_url, gateway_id, backfill_rate=rate, batch_max_readings=250, batch_max_age_s=0.2
        ),
        outbox,
        gateway_id=gateway_id,
    )
    appended_at: dict[int, float] = {}

    async def body() -> None:
        await until(lambda: fwd.stats().connected)
        started = time.monotonic()
        for i in range(300, 310):
            outcome = await asyncio.to_thread(outbox.append, cycle(i))
            assert outcome.last_seq is not None
            appended_at[outcome.last_seq] = time.monotonic()
            fwd.notify()
            await asyncio.sleep(0.1)
        await until(lambda: outbox.rows() == 0, timeout=30)
        # 3000 readings at 1000/s with a one-second burst: at least ~2 s.
        assert time.monotonic() - started >= (3000 - 250) / rate * 0.9

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
    arrival = {r.batch.seq_last: r.at for r in ingest.received if r.topic_kind == "readings"}
    last_backfill = max(r.at for r in ingest.received if r.topic_kind == "backfill")
    for seq, at in appended_at.items():
        # Each live cycle arrived within about one batch age, long before the backlog finished.
        batch_end = min(s for s in arrival if s >= seq)
        assert arrival[batch_end] - at < 1.0
    assert max(arrival.values()) < last_backfill
    backfill = [r.batch for r in ingest.received if r.topic_kind == "backfill"]
    firsts = [b.seq_first for b in backfill]
    assert firsts == sorted(firsts)  # oldest first


@pytest.mark.usefixtures("clear_status")
def test_in_flight_window_is_bounded(broker_url: str, gateway_id: str, outbox: Outbox) -> None:
    for i in range(50):
        outbox.append(cycle(i))  # 500 readings
    ingest = FakeIngest(broker_url, gateway_id)
    ingest.hold = True
    fwd = Forwarder(
        forward_config(broker_url, gateway_id, batch_max_readings=10, max_inflight_batches=3),
        outbox,
        gateway_id=gateway_id,
    )

    async def body() -> None:
        await until(lambda: fwd.stats().connected)
        for i in range(50, 60):
            await asyncio.to_thread(outbox.append, cycle(i))
            fwd.notify()
        await until(lambda: len(ingest.received) >= 3)
        await asyncio.sleep(0.5)
        # Acks held: no more than three batches went out.
        assert len(ingest.received) == 3
        assert fwd.stats().inflight == 3
        ingest.release()
        deadline = time.monotonic() + 20
        while outbox.rows() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            ingest.release()
            assert fwd.stats().inflight <= 3

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
    assert outbox.rows() == 0
    assert fwd.stats().inflight_peak == 3
    assert ingest.acked == set(range(1, 601))


@pytest.mark.usefixtures("clear_status")
def test_link_cut_mid_stream_loses_nothing(
    broker_url: str, gateway_id: str, outbox: Outbox
) -> None:
    parts = urlsplit(broker_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 1883).start()
    ingest = FakeIngest(broker_url, gateway_id)
    fwd = Forwarder(
        forward_config(f"mqtt://127.0.0.1:{proxy.port}", gateway_id, ack_timeout_s=2.0),
        outbox,
        gateway_id=gateway_id,
    )

    async def body() -> None:
        await until(lambda: fwd.stats().connected)
        for i in range(100):
            await asyncio.to_thread(outbox.append, cycle(i))
            fwd.notify()
            await asyncio.sleep(0.02)
            if i == 30:
                proxy.stop()  # the uplink dies mid-stream
            if i == 70:
                proxy.start()
        await until(lambda: outbox.rows() == 0, timeout=30)

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
        proxy.stop()
    assert ingest.acked == set(range(1, 1001))
    assert outbox.rows() == 0
    assert fwd.stats().reconnects >= 1
    assert ingest.seqs("backfill")  # what piled up during the outage came as backfill


@pytest.mark.usefixtures("clear_status")
def test_last_will_on_unclean_drop_and_goodbye_on_stop(
    broker_url: str, gateway_id: str, outbox: Outbox
) -> None:
    parts = urlsplit(broker_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 1883).start()
    statuses = Collector(broker_url, status_topic(gateway_id))
    fwd = Forwarder(
        forward_config(f"mqtt://127.0.0.1:{proxy.port}", gateway_id),
        outbox,
        gateway_id=gateway_id,
        status=lambda: {"outbox_rows": outbox.rows()},
    )

    def states() -> list[dict[str, object]]:
        return [msgspec.json.decode(p) for _, p in statuses.payloads if p]

    async def body() -> None:
        await until(lambda: any(s["state"] == "online" for s in states()))
        assert states()[-1]["outbox_rows"] == 0
        proxy.stop()  # no DISCONNECT: the broker publishes the will
        await until(lambda: states()[-1]["state"] == "offline")
        assert states()[-1].get("clean") is False
        proxy.start()
        await until(lambda: fwd.stats().connected and states()[-1]["state"] == "online")

    try:
        asyncio.run(running(fwd, body))
        # A clean stop says goodbye itself (published before `run` returned).
        time.sleep(0.3)
        assert states()[-1]["state"] == "offline"
        assert "clean" not in states()[-1]
    finally:
        statuses.close()
        proxy.stop()


def test_tls_with_client_certificate(tmp_path: Path, gateway_id: str, outbox: Outbox) -> None:
    state = tmp_path / "broker"
    state.mkdir()
    pki = make_pki(state / "pki")
    broker = TlsBroker(state, pki)
    broker.start()
    try:
        ingest = FakeIngest(broker.url, gateway_id)
        tls = TlsConfig(
            ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
        )
        fwd = Forwarder(
            forward_config(broker.tls_url, gateway_id, tls=tls), outbox, gateway_id=gateway_id
        )
        # Without a client certificate the broker refuses the handshake; the forwarder keeps
        # trying and never crashes.
        anonymous = Forwarder(
            forward_config(
                broker.tls_url,
                f"{gateway_id}-anon",
                tls=TlsConfig(ca_file=str(pki.ca)),
            ),
            outbox,
            gateway_id=f"{gateway_id}-anon",
        )

        async def body() -> None:
            stop = asyncio.Event()
            other = asyncio.create_task(anonymous.run(stop))
            await asyncio.to_thread(outbox.append, cycle(0))
            fwd.notify()
            await until(lambda: outbox.rows() == 0)
            assert not anonymous.stats().connected
            assert anonymous.stats().connects == 0
            stop.set()
            await asyncio.wait_for(other, 5)

        try:
            asyncio.run(running(fwd, body))
        finally:
            ingest.close()
        assert ingest.acked == set(range(1, 11))
    finally:
        broker.kill()


@pytest.mark.usefixtures("clear_status")
def test_batches_close_by_size_and_by_clock_age(
    broker_url: str, gateway_id: str, outbox: Outbox
) -> None:
    clock = ManualClock(start=T0.timestamp())
    ingest = FakeIngest(broker_url, gateway_id)
    fwd = Forwarder(
        forward_config(broker_url, gateway_id, batch_max_readings=40, batch_max_age_s=60.0),
        outbox,
        gateway_id=gateway_id,
        clock=clock,
    )

    async def body() -> None:
        await until(lambda: fwd.stats().connected)
        await asyncio.to_thread(outbox.append, cycle(0, meters=50))  # 100 readings
        fwd.notify()
        await until(lambda: len(ingest.seqs()) >= 80)
        await asyncio.sleep(0.5)
        # Two full batches went at once; the 20 left wait for their age on the clock.
        assert sorted(len(r.batch.readings) for r in ingest.received) == [40, 40]
        clock.advance(59.0)
        await asyncio.sleep(0.5)
        assert len(ingest.received) == 2
        clock.advance(1.0)
        await until(lambda: outbox.rows() == 0)

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
    assert [len(r.batch.readings) for r in ingest.received] == [40, 40, 20]
    assert {r.topic_kind for r in ingest.received} == {"readings"}


@pytest.mark.usefixtures("clear_status")
def test_malformed_acks_are_ignored_and_heartbeats_repeat(
    broker_url: str, gateway_id: str, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    statuses = Collector(broker_url, status_topic(gateway_id))
    ingest = FakeIngest(broker_url, gateway_id)
    noise = client(broker_url, "noise")
    fwd = Forwarder(
        forward_config(broker_url, gateway_id, status_interval_s=0.2),
        outbox,
        gateway_id=gateway_id,
        status=lambda: {"outbox_rows": outbox.rows()},
    )

    async def body() -> None:
        await until(lambda: fwd.stats().connected)
        for payload in (b"not json", b'{"v": 1}', b'{"v": 9, "boot_id": 1}'):
            noise.publish(ack_topic(gateway_id), payload, qos=1).wait_for_publish(5)
        await asyncio.to_thread(outbox.append, cycle(0))
        fwd.notify()
        await until(lambda: outbox.rows() == 0 and fwd.stats().acks_malformed == 3)
        await asyncio.sleep(1.0)

    try:
        asyncio.run(running(fwd, body))
    finally:
        ingest.close()
        noise.disconnect()
        noise.loop_stop()
        statuses.close()
    assert fwd.stats().acks == 1
    assert sum("malformed ack" in r.getMessage() for r in caplog.records) == 3
    online = [p for _, p in statuses.payloads if p and b'"online"' in p]
    assert len(online) >= 4  # on connect, then every 0.2 s
