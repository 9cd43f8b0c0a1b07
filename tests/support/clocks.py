"""A clock for outage tests: hours of simulated time pass as fast as the code under test can
run, then time flows at wall-clock speed again.

While warping, `sleep(s)` advances the simulated time by `s` at once (like ManualClock); once
the simulated time reaches the warp's end the clock runs in real time from there. Only the
poller should sleep on the warping clock; other parts of the agent (network backoffs, batch
ages) get `real_sleeps()`, the same `now()` with real waits, so their timers do not push
simulated time forward.
"""

from __future__ import annotations

import asyncio
import time


class WarpClock:
    def __init__(self, start: float) -> None:
        self._virtual = float(start)
        self._anchor = time.monotonic()
        self._warp_end: float | None = None

    def now(self) -> float:
        if self._warp_end is not None:
            return self._virtual
        return self._virtual + (time.monotonic() - self._anchor)

    def warp(self, seconds: float) -> None:
        """From now on, let `seconds` of simulated time pass as fast as sleeps ask for them."""
        self._virtual = self.now()
        self._warp_end = self._virtual + seconds

    @property
    def warping(self) -> bool:
        return self._warp_end is not None

    async def sleep(self, seconds: float) -> None:
        if self._warp_end is None:
            await asyncio.sleep(max(seconds, 0.0))
            return
        self._virtual += max(seconds, 0.0)
        if self._virtual >= self._warp_end:
            self._warp_end = None
            self._anchor = time.monotonic()
        await asyncio.sleep(0)

    def real_sleeps(self) -> _RealSleeps:
        return _RealSleeps(self)


class _RealSleeps:
    def __init__(self, clock: WarpClock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock.now()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))
