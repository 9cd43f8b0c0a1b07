"""A Modbus line that answers from simulated devices in the same process, without sockets:
for tests and benchmarks that need hours of polling to run in seconds."""

from __future__ import annotations

from collections.abc import Mapping

from gateway_agent.modbus import ModbusError
from gateway_agent.site import Bus
from simulators.modbus import SimulatedDevice


class DeviceLine:
    """Implements `gateway_agent.modbus.Line` over `SimulatedDevice.read` (latency ignored)."""

    def __init__(self, bus: Bus, devices: Mapping[int, SimulatedDevice]) -> None:
        self._bus = bus
        self.devices = dict(devices)
        self.reads = 0

    @property
    def bus(self) -> Bus:
        return self._bus

    async def read(
        self, unit_id: int, function: int, address: int, count: int, *, retries: int | None = None
    ) -> tuple[int, ...]:
        self.reads += 1
        device = self.devices.get(unit_id)
        if device is None:
            raise ModbusError("timeout", f"unit {unit_id} does not answer")
        reply = device.read(function, address, count)
        if reply.exception is not None:
            raise ModbusError("exception", f"exception {reply.exception:#04x}", reply.exception)
        if reply.words is None:
            raise ModbusError("timeout", f"unit {unit_id} stayed silent")
        return reply.words

    async def close(self) -> None:
        return None
