"""`meterward demo`: the whole system on one machine with zero setup.

Starts (or attaches to) the database and the broker, migrates, starts an ingest worker and
serves a simulated property (scenario `demo.scenario`) over Modbus TCP and MQTT, reports what
runs where, then runs until Ctrl-C/SIGTERM and shuts everything down in reverse
order. `--smoke` checks that each part answers (a real batch goes through ingest and is acked;
the analytics worker has written consumption over the fleet's history) and exits. Later
components (the API) register themselves here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiomqtt
import psycopg
from psycopg_pool import ConnectionPool

from contracts.topics import ack_topic, readings_topic
from contracts.wire import SCHEMA_VERSION, Batch, Reading, decode_ack, encode
from gateway_agent.agent import GatewayAgent
from gateway_agent.profiles import builtin_profile
from gateway_agent.registers import decode
from ingest.consumer import Consumer
from ingest.service import IngestWorker
from meterward.embedded import EmbeddedPostgres, LocalBroker
from meterward.settings import Settings, redact_url
from simulators.serve import GATEWAY_PROFILE, ServedFleet, scenario_file, serve_fleet
from store.migrations import migrate, status
from store.pool import open_pool

if TYPE_CHECKING:
    from analytics.jobs import AnalyticsWorker
    from simulators.fleet import Fleet


@dataclass(frozen=True, slots=True)
class Part:
    """One running part of the demo, as shown to the person who started it."""

    name: str
    where: str
    detail: str


def _say(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the demo talks to a person on a terminal


async def check_database(url: str) -> str:
    """Ask the database one question and confirm the schema is fully migrated."""

    def _check() -> str:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
        state = status(url)
        if state.pending:
            raise RuntimeError(f"migrations pending: {', '.join(state.pending)}")
        return f"answers; {len(state.migrations)} migrations applied"

    return await asyncio.to_thread(_check)


def _smoke_client(url: str, name: str) -> aiomqtt.Client:
    """A throwaway MQTT 3.1.1 client (the embedded amqtt broker speaks nothing newer)."""
    parts = urlsplit(url)
    return aiomqtt.Client(
        hostname=parts.hostname or "127.0.0.1",
        port=parts.port or 1883,
        username=parts.username,
        password=parts.password,
        protocol=aiomqtt.ProtocolVersion.V311,
        identifier=f"{name}-{uuid.uuid4().hex[:8]}",
    )


async def check_broker(url: str, timeout: float = 10.0) -> str:
    """Publish a QoS 1 message to a private topic and receive it back (MQTT 3.1.1)."""
    topic = f"meterward/smoke/{uuid.uuid4().hex}"
    payload = b"ping"
    async with asyncio.timeout(timeout), _smoke_client(url, "meterward-smoke") as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, payload, qos=1)
        async for message in client.messages:
            if message.payload == payload:
                return "round trip ok"
    raise RuntimeError("broker closed the session before the message came back")


SMOKE_GATEWAY = "demo-smoke"
SMOKE_METER = "DEMO-SMOKE-E-0001"


def _register_smoke_meter(url: str) -> None:
    """A gateway and meter of the demo's own, so the smoke check can publish a real batch."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            WITH org AS (
                INSERT INTO organisations (code, name) VALUES ('demo', 'meterward demo')
                ON CONFLICT (code) DO UPDATE SET name = excluded.name RETURNING id
            ), project AS (
                INSERT INTO projects (organisation_id, code, name)
                SELECT id, 'DEMO-SMOKE', 'Smoke checks' FROM org
                ON CONFLICT (code) DO UPDATE SET name = excluded.name RETURNING id
            ), gateway AS (
                INSERT INTO gateways (project_id, code, name)
                SELECT id, %(gateway)s, 'smoke check' FROM project
                ON CONFLICT (code) DO UPDATE SET name = excluded.name RETURNING project_id
            )
            INSERT INTO meters (project_id, code, kind, profile)
            SELECT project_id, %(meter)s, 'electricity', 'smoke' FROM gateway
            ON CONFLICT (code) DO NOTHING
            """,
            {"gateway": SMOKE_GATEWAY, "meter": SMOKE_METER},
        )


async def check_ingest(db_url: str, mqtt_url: str, timeout: float = 20.0) -> str:
    """Publish one batch as a gateway would and wait for ingest's application ack."""
    await asyncio.to_thread(_register_smoke_meter, db_url)
    now = dt.datetime.now(dt.UTC)
    boot = uuid.uuid4()
    reading = Reading(SMOKE_METER, "power_w", now, 42.0, "W", 0)
    payload = encode(Batch(SCHEMA_VERSION, SMOKE_GATEWAY, boot, "live", now, 0, 0, [reading]))
    async with asyncio.timeout(timeout), _smoke_client(mqtt_url, "meterward-smoke-gw") as client:
        await client.subscribe(ack_topic(SMOKE_GATEWAY), qos=1)
        await client.publish(readings_topic(SMOKE_GATEWAY), payload, qos=1)
        async for message in client.messages:
            ack = decode_ack(bytes(message.payload))
            if ack.boot_id == boot:
                return f"batch stored and acknowledged ({ack.status}, {ack.accepted} reading)"
    raise RuntimeError("no application ack")


async def check_fleet(served: ServedFleet) -> str:
    """Read one served meter's first channel over Modbus TCP, as a gateway would."""
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    modbus = [loc for loc in served.locations if loc.transport == "modbus-tcp"]
    loc = modbus[0]
    profile = builtin_profile(GATEWAY_PROFILE[loc.profile])
    spec = next(iter(profile.channels.values()))
    host, port = loc.address.rsplit(":", 1)
    client = AsyncModbusTcpClient(host, port=int(port), timeout=5)
    await client.connect()
    try:
        read = client.read_input_registers if spec.function == 4 else client.read_holding_registers
        reply = await read(spec.address, count=spec.count, device_id=loc.unit_id or 1)
    finally:
        client.close()
    if reply.isError():
        raise RuntimeError(f"{loc.meter_id}: {reply}")
    value = decode(reply.registers, spec.fmt).value
    mqtt = sum(1 for x in served.locations if x.transport == "mqtt")
    return (
        f"{len(modbus)} Modbus meters, {mqtt} MQTT meters; {loc.meter_id}"
        f" {spec.channel} = {value:g} {spec.unit}"
    )


def _install_stop_handlers(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return remove


async def check_gateways(db_url: str, gateways: list[GatewayAgent], timeout: float = 60.0) -> str:
    """Wait until every demo gateway has readings of its meters stored (polled, forwarded,
    committed by ingest, acknowledged)."""
    codes = [g.site.gateway_id for g in gateways]

    def stored() -> dict[str, int]:
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT g.code, count(DISTINCT r.meter_id) FROM readings r"
                " JOIN meters m ON m.id = r.meter_id JOIN gateways g ON g.id = m.gateway_id"
                " WHERE g.code = ANY(%s) GROUP BY g.code",
                (codes,),
            ).fetchall()
        return {str(code): int(n) for code, n in rows}

    deadline = time.monotonic() + timeout
    while True:
        counts = await asyncio.to_thread(stored)
        if len(counts) == len(codes):
            acked = sum(g.forwarder.stats().acks for g in gateways)
            return (
                f"{sum(counts.values())} meters' readings stored through {len(codes)}"
                f" gateway(s); {acked} acks received"
            )
        if time.monotonic() > deadline:
            missing = sorted(set(codes) - set(counts))
            raise RuntimeError(f"no readings stored yet from {', '.join(missing)}")
        await asyncio.sleep(1.0)


async def check_analytics(db_url: str, projects: list[str], timeout: float = 90.0) -> str:
    """Wait until the analytics worker has done a tick of every demo project and written
    consumption for it."""
    from meterward.demo_analytics import wait_for_analytics  # noqa: PLC0415

    return await asyncio.to_thread(wait_for_analytics, db_url, projects, timeout)


async def _smoke(
    db_url: str,
    mqtt_url: str,
    fleet: ServedFleet | None,
    gateways: list[GatewayAgent],
    analytics_projects: list[str],
) -> int:
    checks = {
        "database": check_database(db_url),
        "broker": check_broker(mqtt_url),
        "ingest": check_ingest(db_url, mqtt_url),
    }
    if fleet is not None:
        checks["fleet"] = check_fleet(fleet)
    if gateways:
        checks["gateways"] = check_gateways(db_url, gateways)
    if analytics_projects:
        checks["analytics"] = check_analytics(db_url, analytics_projects)
    failed = False
    for name, check in checks.items():
        try:
            result = await check
        except Exception as exc:  # noqa: BLE001 - each failure is reported, not raised
            failed = True
            _say(f"smoke: {name}: FAILED: {type(exc).__name__}: {exc}")
        else:
            _say(f"smoke: {name}: {result}")
    _say("smoke: " + ("FAILED" if failed else "all parts answer"))
    return 1 if failed else 0


class DemoStack:
    """The demo's infrastructure, started in order and stopped in reverse."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.parts: list[Part] = []
        self._embedded_pg: EmbeddedPostgres | None = None
        self._broker: LocalBroker | None = None
        self._ingest: tuple[IngestWorker, threading.Thread, ConnectionPool] | None = None
        self.fleet: ServedFleet | None = None
        self._fleet_model: Fleet | None = None
        self.gateways: list[GatewayAgent] = []
        self._gateway_stop = asyncio.Event()
        self._gateway_tasks: list[asyncio.Task[None]] = []
        self.mqtt5 = True
        self._analytics: tuple[AnalyticsWorker, ConnectionPool] | None = None

    async def start_database(self) -> str:
        if self.settings.database_url:
            url = self.settings.database_url
            self.parts.append(Part("database", redact_url(url), "external (MW_DATABASE_URL)"))
        else:
            _say(f"starting embedded PostgreSQL in {self.data_dir / 'postgres'} ...")
            self._embedded_pg = EmbeddedPostgres(self.data_dir / "postgres")
            url = await asyncio.to_thread(self._embedded_pg.start)
            self.parts.append(Part("database", url, "embedded PostgreSQL (Unix socket)"))
        applied, caps = await asyncio.to_thread(migrate, url, self.settings.timescaledb)
        _say(
            f"store: {caps.backend} on PostgreSQL {caps.server_version};"
            f" migrations applied now: {', '.join(applied) or 'none (up to date)'}"
        )
        return url

    async def start_broker(self) -> str:
        if self.settings.mqtt_url:
            url = self.settings.mqtt_url
            self.parts.append(Part("broker", redact_url(url), "external (MW_MQTT_URL)"))
        else:
            self._broker = LocalBroker(self.data_dir)
            url = await self._broker.start()
            self.parts.append(Part("broker", url, f"local {self._broker.kind}"))
        return url

    def start_ingest(self, db_url: str, mqtt_url: str) -> None:
        """An ingest worker in a thread of this process (its own process in production)."""
        mqtt5 = self._broker is None or self._broker.kind == "mosquitto"
        self.mqtt5 = mqtt5
        pool = open_pool(db_url, min_size=1, max_size=2, name="meterward-demo-ingest")
        consumer = Consumer(
            mqtt_url,
            client_id="meterward-demo-ingest",
            mqtt5=mqtt5,
            shared=False,
        )
        worker = IngestWorker(pool, consumer)
        # The demo is transient: against a real broker (MW_MQTT_URL) a session left behind
        # would queue every gateway's readings for a week for a worker that never returns.
        worker.end_session_on_stop = True
        thread = threading.Thread(target=worker.run, name="ingest", daemon=True)
        thread.start()
        if not consumer.connected.wait(15):
            raise RuntimeError("ingest could not connect to the broker")
        self._ingest = (worker, thread, pool)
        protocol = "MQTT 5" if mqtt5 else "MQTT 3.1.1"
        self.parts.append(Part("ingest", "thread in this process", f"{protocol}, exactly once"))

    async def start_fleet(self, mqtt_url: str) -> None:
        """The simulated properties of the demo scenario, in real time."""
        from meterward.demo_analytics import fleet_start  # noqa: PLC0415
        from simulators.clock import SystemClock  # noqa: PLC0415 - numpy/polars on demand
        from simulators.fleet import Fleet  # noqa: PLC0415
        from simulators.scenario import load_scenario, plan  # noqa: PLC0415

        name = self.settings.demo.scenario
        now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        # The fleet started a while ago (kept in the data dir): the analytics part writes the
        # history its gateways would have delivered, so there are results from the first tick.
        start = fleet_start(self.data_dir, now)
        scenario = await asyncio.to_thread(load_scenario, scenario_file(name))
        fleet = await asyncio.to_thread(Fleet, plan(scenario, start=start.isoformat()))
        base = self.settings.demo.fleet_base_port
        try:
            served = await serve_fleet(fleet, SystemClock(), base_port=base, mqtt_url=mqtt_url)
        except OSError:  # a port of the range is taken: any free ports then
            served = await serve_fleet(fleet, SystemClock(), base_port=0, mqtt_url=mqtt_url)
        self.fleet = served
        self._fleet_model = fleet
        modbus = [loc for loc in served.locations if loc.transport != "mqtt"]
        endpoints = sorted({loc.address for loc in modbus}, key=lambda a: int(a.rsplit(":")[1]))
        mqtt = len(served.locations) - len(modbus)
        self.parts.append(
            Part(
                "fleet",
                f"{endpoints[0]} .. {endpoints[-1]}" if endpoints else "-",
                f"scenario {name}: {len(modbus)} Modbus meters behind {len(endpoints)}"
                f" RS-485/TCP converters, {mqtt} MQTT meters",
            )
        )

    async def start_gateways(self, db_url: str, mqtt_url: str) -> None:
        """One gateway agent per simulated project, polling the served fleet."""
        from meterward.demo_gateways import register_fleet, sites_for_fleet  # noqa: PLC0415

        assert self.fleet is not None
        assert self._fleet_model is not None
        await asyncio.to_thread(register_fleet, db_url, self._fleet_model)
        sites = sites_for_fleet(
            self.fleet.locations,
            self._fleet_model,
            data_dir=self.data_dir,
            mqtt_url=mqtt_url,
            mqtt5=self.mqtt5,
        )
        for site in sites:
            Path(site.outbox.path).parent.mkdir(parents=True, exist_ok=True)
            agent = GatewayAgent(site)
            self.gateways.append(agent)
            self._gateway_tasks.append(
                asyncio.create_task(agent.run(self._gateway_stop), name=site.gateway_id)
            )
        devices = sum(len(s.devices) + len(s.mqtt_meters) for s in sites)
        self.parts.append(
            Part(
                "gateways",
                ", ".join(s.gateway_id for s in sites),
                f"{devices} meters polled; outboxes in {self.data_dir / 'gateways'}",
            )
        )

    async def start_analytics(self, db_url: str) -> None:
        """The last day's history of the simulated projects into the store, then the analytics
        worker (its own process in production), which catches up over it at once."""
        from analytics.jobs import AnalyticsWorker, config_from_settings, pipeline_work  # noqa: PLC0415
        from meterward.demo_analytics import write_history  # noqa: PLC0415

        assert self._fleet_model is not None
        now = dt.datetime.now(dt.UTC)
        written = await asyncio.to_thread(write_history, db_url, self._fleet_model.plan, until=now)
        config = config_from_settings(self.settings.analytics)
        pool = open_pool(
            db_url, min_size=1, max_size=config.threads + 1, name="meterward-demo-analytics"
        )
        worker = AnalyticsWorker(
            pool, pipeline_work(), config=config, worker_id="meterward-demo-analytics"
        )
        await asyncio.to_thread(worker.start)
        self._analytics = (worker, pool)
        minutes = int(config.tick.total_seconds() // 60)
        self.parts.append(
            Part(
                "analytics",
                "threads in this process",
                f"{written} history readings written; every {minutes} min per project,"
                f" daily at {config.daily_hour:02d}:05 local",
            )
        )

    def simulated_projects(self) -> list[str]:
        """Codes of the simulated fleet's projects (what the analytics smoke check waits for)."""
        return sorted(self._fleet_model.plan.projects) if self._fleet_model else []

    def report(self, elapsed: float) -> None:
        _say(f"meterward demo is up in {elapsed:.1f} s:")
        width = max(len(p.name) for p in self.parts)
        for part in self.parts:
            _say(f"  {part.name:<{width}}  {part.where}  ({part.detail})")

    async def stop(self) -> None:
        if self._analytics is not None:
            analytics, analytics_pool = self._analytics
            await asyncio.to_thread(analytics.stop)  # the steps in hand commit
            analytics_pool.close()
            self._analytics = None
        self._gateway_stop.set()  # each agent finishes its cycle and keeps its outbox
        if self._gateway_tasks:
            await asyncio.gather(*self._gateway_tasks, return_exceptions=True)
            self._gateway_tasks = []
        if self.fleet is not None:
            await self.fleet.stop()
            self.fleet = None
        if self._ingest is not None:
            worker, thread, pool = self._ingest
            worker.stop()
            await asyncio.to_thread(thread.join, 30)
            pool.close()
            self._ingest = None
        if self._broker is not None:
            await self._broker.stop()
            self._broker = None
        if self._embedded_pg is not None:
            await asyncio.to_thread(self._embedded_pg.stop)
            self._embedded_pg = None


async def run_demo(settings: Settings, *, smoke: bool) -> int:
    """Run the demo stack; return the process exit code."""
    data_dir: Path = settings.demo.data_dir or settings.data_dir / "demo"
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    remove_handlers = _install_stop_handlers(stop)
    stack = DemoStack(settings, data_dir)
    started = time.monotonic()
    try:
        db_url = await stack.start_database()
        mqtt_url = await stack.start_broker()
        await asyncio.to_thread(stack.start_ingest, db_url, mqtt_url)
        await stack.start_fleet(mqtt_url)
        await stack.start_gateways(db_url, mqtt_url)
        await stack.start_analytics(db_url)
        stack.report(time.monotonic() - started)
        if smoke:
            return await _smoke(
                db_url, mqtt_url, stack.fleet, stack.gateways, stack.simulated_projects()
            )
        _say("press Ctrl-C to stop")
        await stop.wait()
        _say("stopping ...")
        return 0
    finally:
        remove_handlers()
        await stack.stop()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
