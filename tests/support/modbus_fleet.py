"""A scenario's Modbus fleet as a gateway `Site`, served over TCP, RTU-over-TCP or RTU on
pseudo-terminals, and what each channel must read back as (the ledger through the register)."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from gateway_agent.clock import Clock
from gateway_agent.profiles import ChannelSpec, builtin_profile
from gateway_agent.registers import decode, encode_raw, raw_bounds, to_raw
from gateway_agent.sample import Sample
from gateway_agent.site import (
    Bus,
    Device,
    ForwardConfig,
    OutboxConfig,
    SerialPort,
    Site,
    Transport,
)
from simulators.fleet import Fleet
from simulators.modbus import Fault, PtyRtuBus, SerialLine, SimulatedDevice
from simulators.scenario import load_scenario, plan
from simulators.serve import GATEWAY_PROFILE, datetime_clock, serve_fleet

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "residential-small.toml"


class Faults:
    """Device faults by meter id, as a scenario would inject them (a `FaultSource`)."""

    def __init__(self, faults: Mapping[str, Fault]) -> None:
        self.faults = dict(faults)

    def device_fault(self, meter_id: str, t: dt.datetime) -> Fault:
        return self.faults.get(meter_id)


def load_fleet(name: str = "residential-small") -> Fleet:
    return Fleet(plan(load_scenario(ROOT / "scenarios" / f"{name}.toml"),
                      start="2026-01-05T12:00:00+08:00"))  # fmt: skip


def devices_of(fleet: Fleet) -> list[Device]:
    """Every Modbus meter of the fleet as a site device reading all its profile's channels."""
    out = []
    for meter in fleet.meters.values():
        if meter.transport != "modbus" or meter.bus is None or meter.unit_id is None:
            continue
        profile = builtin_profile(GATEWAY_PROFILE[meter.profile])
        out.append(Device.of(meter.meter_id, meter.bus, meter.unit_id, profile))
    return out


def make_site(buses: Mapping[str, Bus], devices: list[Device]) -> Site:
    return Site(
        gateway_id="gw-test",
        env="dev",
        buses=dict(buses),
        devices=tuple(devices),
        mqtt_meters=(),
        outbox=OutboxConfig(path=":memory:"),
        forward=ForwardConfig(mqtt_url="mqtt://127.0.0.1:1", client_id="gw-test"),
    )


@contextlib.asynccontextmanager
async def served_tcp(
    fleet: Fleet, clock: Clock, *, framing: str = "mbap", timeout_s: float = 1.0
) -> AsyncIterator[Site]:
    """The fleet behind one TCP endpoint per bus (converters), and the site that reads it."""
    served = await serve_fleet(fleet, clock, framing=framing, line_timing=False)
    try:
        buses: dict[str, Bus] = {}
        for loc in served.locations:
            if loc.bus is None or loc.bus in buses:
                continue
            host, port = loc.address.rsplit(":", 1)
            transport: Transport = "rtu-over-tcp" if framing == "rtu" else "tcp"
            buses[loc.bus] = Bus(loc.bus, transport, host=host, port=int(port),
                                 timeout_s=timeout_s)  # fmt: skip
        yield make_site(buses, devices_of(fleet))
    finally:
        await served.stop()


@contextlib.asynccontextmanager
async def served_pty(
    fleet: Fleet, clock: Clock, line: SerialLine | None, *, timeout_s: float = 1.0
) -> AsyncIterator[Site]:
    """The fleet on one pseudo-terminal RS-485 bus per scenario bus, paced at `line`."""
    now = datetime_clock(clock)
    by_bus: dict[str, dict[int, SimulatedDevice]] = defaultdict(dict)
    for device in devices_of(fleet):
        by_bus[device.bus][device.unit_id] = SimulatedDevice(
            device.profile, device.meter_id, fleet, clock=now,
            serial_number=fleet.serial(device.meter_id, now()),
        )  # fmt: skip
    ptys = {name: PtyRtuBus(devices, line) for name, devices in by_bus.items()}
    try:
        buses = {}
        for name, pty in ptys.items():
            path = await pty.start()
            baud = line.baud if line else 115200
            # ptys refuse parity E/O (tcsetattr EINVAL): clients open them 8N1
            buses[name] = Bus(name, "rtu", serial=SerialPort(path, baud, "N", 1),
                              timeout_s=timeout_s)  # fmt: skip
        yield make_site(buses, devices_of(fleet))
    finally:
        for pty in ptys.values():
            await pty.stop()


def register_value(spec: ChannelSpec, value: float) -> float:
    """What a register of `spec` holds for the engineering value: rounded to its resolution,
    wrapped at its modulus, float32 for f32 (the same rules a real meter's firmware applies)."""
    fmt = spec.fmt
    raw = to_raw(value, fmt)
    if spec.raw_modulus is not None and not fmt.dtype.is_float:
        raw = int(raw) % spec.raw_modulus
    low, high = raw_bounds(fmt.dtype)
    raw = min(max(raw, low), high)
    return decode(encode_raw(raw if fmt.dtype.is_float else int(raw), fmt), fmt).value


def check_against_ledger(fleet: Fleet, samples: list[Sample], timeout_s: float) -> dict[str, int]:
    """Assert every sample equals the ledger at its ts; returns counts by quality."""
    counts: dict[str, int] = defaultdict(int)
    profiles = {d.meter_id: d.profile for d in devices_of(fleet)}
    for s in samples:
        counts[s.quality] += 1
        fault = fleet.device_fault(s.meter_id, s.ts)
        silent = fault is not None and (
            fault.kind in ("no_response", "busy")
            or (fault.kind == "slow" and fault.delay_s >= timeout_s)
        )
        if silent:
            assert s.quality == "comm_error", (s, fault)
            continue
        spec = profiles[s.meter_id].channels[s.channel]
        truth = fleet.values(s.meter_id, s.ts).get(s.channel, 0.0)
        if math.isnan(truth):
            assert s.quality == "nan_sentinel", s
            continue
        assert s.quality in ("good", "out_of_range"), s
        assert s.quality == ("good" if spec.is_plausible(s.value or 0.0) else "out_of_range")
        assert s.value == register_value(spec, truth), (s, truth)
        if spec.raw_modulus is None:  # and within the register's resolution of the ledger
            resolution = abs(spec.fmt.scale) if not spec.fmt.dtype.is_float else 0.0
            assert s.value is not None
            assert abs(s.value - truth) <= resolution / 2 + 1e-6 * abs(truth) + 1e-9, (s, truth)
        assert s.ts.tzinfo is dt.UTC
    return dict(counts)
