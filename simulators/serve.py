"""Serve a scenario's fleet: Modbus meters behind RS-485-to-TCP converters, MQTT meters
publishing to a broker, all on one simulated clock.

Each RS-485 bus of the scenario becomes one Modbus TCP endpoint hosting its meters' unit ids
(as a converter does), optionally paced at the bus's serial wire time; each MQTT meter
publishes its vendor JSON to the broker every `mqtt_period_s` of simulated time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt

from gateway_agent.profiles import Profile, builtin_profile
from simulators.clock import Clock
from simulators.fleet import Fleet
from simulators.modbus import ModbusTcpEndpoint, SerialLine, SimulatedDevice
from simulators.mqtt_meters import MqttFormat, MqttMeter, publish_forever

# Simulator catalogue names -> gateway device profiles (gateway_agent/profiles/*.toml).
GATEWAY_PROFILE: Mapping[str, str] = {
    "eastron-sdm630": "eastron_sdm630",
    "eastron-sdm120": "eastron_sdm120",
    "acrel-adl400": "acrel_adl400",
    "schneider-iem3155": "schneider_iem3155",
    "water-generic": "tuf2000m",
}
MQTT_FORMAT: Mapping[str, MqttFormat] = {
    "mqtt-wifi-plug": "tasmota",
    "mqtt-weather": "weather-json",
}


def scenario_file(name: str) -> Path:
    """A shipped scenario by name: beside the package when installed, else the repo's."""
    here = Path(__file__).resolve().parent
    for folder in (here / "scenarios", here.parent / "scenarios"):
        path = folder / f"{name}.toml"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no shipped scenario named {name!r}")


@dataclass(frozen=True, slots=True)
class Location:
    """Where one simulated meter can be reached."""

    meter_id: str
    transport: str  # "modbus-tcp", "rtu-over-tcp" or "mqtt"
    address: str  # host:port, or the MQTT topic
    unit_id: int | None = None
    bus: str | None = None
    profile: str = ""


@dataclass
class ServedFleet:
    """Handles to everything being served, for reporting and for stopping."""

    locations: list[Location] = field(default_factory=list)
    endpoints: list[ModbusTcpEndpoint] = field(default_factory=list)
    mqtt_task: asyncio.Task[int] | None = None
    stop_mqtt: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop(self) -> None:
        self.stop_mqtt.set()
        if self.mqtt_task is not None:
            await asyncio.wait_for(self.mqtt_task, 10)
        for endpoint in self.endpoints:
            await endpoint.stop()


def datetime_clock(clock: Clock) -> Callable[[], dt.datetime]:
    return lambda: dt.datetime.fromtimestamp(clock.now(), dt.UTC)


def _line(profile: Profile) -> SerialLine:
    serial = profile.serial
    return SerialLine(baud=serial.baud, parity=serial.parity, stop_bits=serial.stop_bits)


async def serve_fleet(
    fleet: Fleet,
    clock: Clock,
    *,
    host: str = "127.0.0.1",
    base_port: int = 0,
    framing: str = "mbap",
    line_timing: bool = True,
    mqtt_url: str | None = None,
    mqtt_period_s: float = 60.0,
) -> ServedFleet:
    """Start every endpoint and the MQTT publishers; returns once all are listening."""
    served = ServedFleet()
    now = datetime_clock(clock)
    buses: dict[str, list[str]] = defaultdict(list)
    mqtt_meters: list[MqttMeter] = []
    for meter in fleet.meters.values():
        if meter.transport == "modbus" and meter.bus is not None:
            buses[meter.bus].append(meter.meter_id)
        elif meter.profile in MQTT_FORMAT:
            zone = fleet.plan.projects[meter.project].time_zone
            mqtt_meters.append(
                MqttMeter(meter.meter_id, meter.meter_id, MQTT_FORMAT[meter.profile], zone,
                          mqtt_period_s)
            )  # fmt: skip
    for index, (bus, meter_ids) in enumerate(sorted(buses.items())):
        devices: dict[int, SimulatedDevice] = {}
        first_profile: Profile | None = None
        for meter_id in meter_ids:
            info = fleet.meters[meter_id]
            profile = builtin_profile(GATEWAY_PROFILE[info.profile])
            first_profile = first_profile or profile
            assert info.unit_id is not None
            devices[info.unit_id] = SimulatedDevice(
                profile, meter_id, fleet, clock=now, serial_number=fleet.serial(meter_id, now())
            )
        line = _line(first_profile) if line_timing and first_profile else None
        endpoint = ModbusTcpEndpoint(
            devices,
            host=host,
            port=base_port + index if base_port else 0,
            framing="rtu" if framing == "rtu" else "mbap",
            line=line,
        )
        bound_host, port = await endpoint.start()
        served.endpoints.append(endpoint)
        transport = "rtu-over-tcp" if framing == "rtu" else "modbus-tcp"
        for unit_id, device in sorted(devices.items()):
            served.locations.append(
                Location(device.meter_id, transport, f"{bound_host}:{port}", unit_id, bus,
                         fleet.meters[device.meter_id].profile)
            )  # fmt: skip
    if mqtt_meters and mqtt_url:
        parts = urlsplit(mqtt_url)
        client = aiomqtt.Client(
            parts.hostname or "127.0.0.1",
            parts.port or 1883,
            username=parts.username,
            password=parts.password,
            protocol=aiomqtt.ProtocolVersion.V311,  # the embedded broker speaks 3.1.1 only
            identifier="meterward-simulated-mqtt-meters",
        )

        async def publish() -> int:
            async with client:
                return await publish_forever(
                    client, mqtt_meters, _FiniteValues(fleet), now, stop=served.stop_mqtt
                )

        served.mqtt_task = asyncio.create_task(publish())
        for m in mqtt_meters:
            served.locations.append(
                Location(m.meter_id, "mqtt", m.topic(), profile=fleet.meters[m.meter_id].profile)
            )
    return served


class _FiniteValues:
    """The fleet's values for MQTT meters; a silent device publishes nothing for a channel."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def values(self, meter_id: str, t: dt.datetime) -> Mapping[str, float]:
        if self.fleet.device_fault(meter_id, t) is not None:
            return {}
        return {k: v for k, v in self.fleet.values(meter_id, t).items() if math.isfinite(v)}
