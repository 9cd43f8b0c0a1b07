"""Clocks for the gateway agent and the simulators: real time, accelerated or manual time.

Every clock answers `now()` in unix seconds (UTC) and `sleep(seconds)` in *its own* seconds,
so a server loop written once runs in real time, a year in a minute, or step by step:

    clock = AcceleratedClock(start=fleet.start, speed=AcceleratedClock.speed_for(365 * 86400, 30))
    while True:
        await clock.sleep(1.0)            # one simulated second
        values = fleet.values(meter_id, clock.now())
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Current instant, unix seconds (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class AcceleratedClock:
    """Simulated time running `speed` times faster than real time from `start`."""

    def __init__(
        self,
        start: float,
        speed: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start = float(start)
        self.speed = float(speed)
        self._monotonic = monotonic
        self._origin = monotonic()

    @staticmethod
    def speed_for(simulated_s: float, real_s: float) -> float:
        """The speed at which `simulated_s` pass in `real_s` (a year in 30 s: ~1.05e6)."""
        return simulated_s / real_s

    def now(self) -> float:
        return self.start + (self._monotonic() - self._origin) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0) / self.speed)


class ManualClock:
    """Time that moves only when told to: `advance()`, or `sleep()` which advances at once."""

    def __init__(self, start: float) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self._now += seconds
        return self._now

    def set(self, instant: float) -> None:
        if instant < self._now:
            raise ValueError("time does not run backwards")
        self._now = float(instant)

    async def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)
