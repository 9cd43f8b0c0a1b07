"""`meterward demo`: the whole system on one machine with zero setup.

Starts (or attaches to) the database and the broker, migrates, reports what runs where, then
runs until Ctrl-C/SIGTERM and shuts everything down in reverse order. `--smoke` checks that each
part answers and exits. Later components (simulated fleet, gateway agents, ingest, analytics,
API) register themselves here as they land.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import psycopg

from meterward.embedded import EmbeddedPostgres, LocalBroker
from meterward.settings import Settings, redact_url
from store.migrations import migrate, status


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


async def check_broker(url: str, timeout: float = 10.0) -> str:
    """Publish a QoS 1 message to a private topic and receive it back (MQTT 3.1.1)."""
    parts = urlsplit(url)
    topic = f"meterward/smoke/{uuid.uuid4().hex}"
    payload = b"ping"
    async with (
        asyncio.timeout(timeout),
        aiomqtt.Client(
            hostname=parts.hostname or "127.0.0.1",
            port=parts.port or 1883,
            username=parts.username,
            password=parts.password,
            protocol=aiomqtt.ProtocolVersion.V311,
            identifier=f"meterward-smoke-{uuid.uuid4().hex[:8]}",
        ) as client,
    ):
        await client.subscribe(topic, qos=1)
        await client.publish(topic, payload, qos=1)
        async for message in client.messages:
            if message.payload == payload:
                return "round trip ok"
    raise RuntimeError("broker closed the session before the message came back")


def _install_stop_handlers(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return remove


async def _smoke(db_url: str, mqtt_url: str) -> int:
    checks = {"database": check_database(db_url), "broker": check_broker(mqtt_url)}
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

    def report(self, elapsed: float) -> None:
        _say(f"meterward demo is up in {elapsed:.1f} s:")
        width = max(len(p.name) for p in self.parts)
        for part in self.parts:
            _say(f"  {part.name:<{width}}  {part.where}  ({part.detail})")

    async def stop(self) -> None:
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
        stack.report(time.monotonic() - started)
        if smoke:
            return await _smoke(db_url, mqtt_url)
        _say("press Ctrl-C to stop")
        await stop.wait()
        _say("stopping ...")
        return 0
    finally:
        remove_handlers()
        await stack.stop()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
