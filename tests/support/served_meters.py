"""Simulated meters behind one Modbus TCP converter, served from an event loop on a thread of
the test process, so that an agent in another process (or this one) can poll them."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Mapping, Sequence

from gateway_agent.profiles import Profile
from simulators.modbus import ModbusTcpEndpoint, SimulatedDevice


class PlausibleValues:
    """A value inside each channel's plausible range; the energy register grows with time."""

    def __init__(self, profile: Profile) -> None:
        self.table = {
            name: sum(spec.plausible) / 2 if spec.plausible else 1.0
            for name, spec in profile.channels.items()
        }

    def values(self, meter_id: str, t: dt.datetime) -> Mapping[str, float]:
        return {**self.table, "energy_import_kwh": 1000.0 + t.timestamp() / 3600 % 1000}


class ServedMeters:
    """`meters[i]` answers as unit id i + 1 on 127.0.0.1:`port`."""

    def __init__(self, profile: Profile, meters: Sequence[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        source = PlausibleValues(profile)
        devices = {
            i + 1: SimulatedDevice(profile, meter, source, clock=lambda: dt.datetime.now(dt.UTC))
            for i, meter in enumerate(meters)
        }
        self.endpoint = ModbusTcpEndpoint(devices)
        started = asyncio.run_coroutine_threadsafe(self.endpoint.start(), self.loop)
        self.port = started.result(10)[1]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.endpoint.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
