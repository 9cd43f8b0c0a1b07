"""Simulated Modbus meters (device.py) and the transports that serve them (transports.py)."""

from simulators.modbus.device import (
    Fault,
    FaultRecord,
    FaultSource,
    Reply,
    SerialSource,
    SimulatedDevice,
    StaticValues,
    ValueSource,
)
from simulators.modbus.frames import ExceptionCode, SerialLine
from simulators.modbus.transports import ModbusTcpEndpoint, PtyRtuBus

__all__ = [
    "ExceptionCode",
    "Fault",
    "FaultRecord",
    "FaultSource",
    "ModbusTcpEndpoint",
    "PtyRtuBus",
    "Reply",
    "SerialLine",
    "SerialSource",
    "SimulatedDevice",
    "StaticValues",
    "ValueSource",
]
