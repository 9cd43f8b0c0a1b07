"""What the forwarder tests share: cycles of samples, a ForwardConfig with test defaults, and
running a forwarder around a test body until a condition holds."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable

from gateway_agent.forwarder import Forwarder
from gateway_agent.sample import Sample
from gateway_agent.site import ForwardConfig

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def cycle(i: int, meters: int = 5) -> list[Sample]:
    ts = T0 + dt.timedelta(seconds=i)
    return [
        Sample(f"M{m:03d}", "energy_import_kwh", ts, 100.0 * m + 0.01 * i, "kWh")
        for m in range(meters)
    ] + [Sample(f"M{m:03d}", "power_w", ts, 50.0 + i, "W") for m in range(meters)]


def forward_config(url: str, gateway_id: str, **overrides: object) -> ForwardConfig:
    base: dict[str, object] = {
        "mqtt_url": url,
        "client_id": f"{gateway_id}-fwd",
        "session_expiry_s": 120,
        "batch_max_readings": 100,
        "batch_max_age_s": 0.1,
        "ack_timeout_s": 30.0,
        "backfill_rate": 100_000.0,
        "status_interval_s": 3600.0,
    }
    base.update(overrides)
    return ForwardConfig(**base)  # type: ignore[arg-type]


async def running(
    forwarder: Forwarder, body: Callable[[], Awaitable[None]], *, stop_timeout: float = 5.0
) -> None:
    """Run the forwarder around `body`; the forwarder must stop promptly afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    try:
        await body()
    finally:
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, stop_timeout)
        assert time.monotonic() - started < stop_timeout


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
