"""Meters that speak MQTT themselves, in their vendors' own JSON, as Wi-Fi meters do.

Two formats, chosen for what they teach the rest of the system:

* `tasmota` — a Wi-Fi smart plug running Tasmota firmware. Telemetry goes to
  `tele/<device>/SENSOR` every TelePeriod. Its `Time` is the device's LOCAL time without an
  offset, energy totals are kWh with three decimals and power is a whole number of watts:
  whoever maps it to readings must know the device's time zone and its resolution.
* `weather-json` — a weather station publishing `{"ts": ..., "temperature": ..., "humidity":
  ...}` with a UTC timestamp to `weather/<station>/state`.

`render` is pure (values in, topic and payload out); `publish_forever` is the thin adapter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

MqttFormat = Literal["tasmota", "weather-json"]

# What each format carries, as contract channels (contracts/channels.py).
FORMAT_CHANNELS: dict[str, tuple[str, ...]] = {
    "tasmota": (
        "energy_import_kwh", "power_w", "apparent_power_va", "reactive_power_var",
        "power_factor", "voltage_l1_v", "current_l1_a",
    ),
    "weather-json": ("temperature_c", "relative_humidity_pct"),
}  # fmt: skip


class ValueSource(Protocol):
    """Engineering values per channel that a meter would report at time t."""

    def values(self, meter_id: str, t: dt.datetime) -> Mapping[str, float]: ...


@dataclass(frozen=True, slots=True)
class MqttMeter:
    meter_id: str
    device: str  # the device's own name, as it appears in its topic
    format: MqttFormat
    time_zone: str = "Asia/Shanghai"
    period_s: float = 60.0  # Tasmota's TelePeriod; default there is 300 s

    def topic(self) -> str:
        if self.format == "tasmota":
            return f"tele/{self.device}/SENSOR"
        return f"weather/{self.device}/state"


def render(meter: MqttMeter, values: Mapping[str, float], t: dt.datetime) -> tuple[str, bytes]:
    """The message the device would publish at `t` (aware) with these values.

    >>> plug = MqttMeter("P001-PLUG-01", "plug-01", "tasmota", "Asia/Shanghai")
    >>> t = dt.datetime(2026, 3, 1, 4, 0, tzinfo=dt.UTC)
    >>> v = {"energy_import_kwh": 12.34567, "power_w": 1200.4, "apparent_power_va": 1250.0,
    ...      "reactive_power_var": 349.6, "power_factor": 0.9603, "voltage_l1_v": 229.4,
    ...      "current_l1_a": 5.4567}
    >>> render(plug, v, t)[1].decode()[:60]
    '{"Time":"2026-03-01T12:00:00","ENERGY":{"Total":12.346,"Powe'
    """
    if meter.format == "tasmota":
        local = t.astimezone(ZoneInfo(meter.time_zone)).replace(tzinfo=None, microsecond=0)
        energy = {
            "Total": round(values["energy_import_kwh"], 3),
            "Power": round(values["power_w"]),
            "ApparentPower": round(values["apparent_power_va"]),
            "ReactivePower": round(values["reactive_power_var"]),
            "Factor": round(values["power_factor"], 2),
            "Voltage": round(values["voltage_l1_v"]),
            "Current": round(values["current_l1_a"], 3),
        }
        doc: dict[str, object] = {"Time": local.isoformat(), "ENERGY": energy}
    else:
        doc = {
            "ts": t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "temperature": round(values["temperature_c"], 1),
            "humidity": round(values["relative_humidity_pct"]),
        }
    return meter.topic(), json.dumps(doc, separators=(",", ":")).encode()


def reported(meter: MqttMeter, values: Mapping[str, float]) -> dict[str, float]:
    """The values as a correct reader recovers them from `render`'s payload (its resolution).

    The ground truth for MQTT meters is what they publish, not the physics behind it.
    """
    if meter.format == "tasmota":
        return {
            "energy_import_kwh": round(values["energy_import_kwh"], 3),
            "power_w": float(round(values["power_w"])),
            "apparent_power_va": float(round(values["apparent_power_va"])),
            "reactive_power_var": float(round(values["reactive_power_var"])),
            "power_factor": round(values["power_factor"], 2),
            "voltage_l1_v": float(round(values["voltage_l1_v"])),
            "current_l1_a": round(values["current_l1_a"], 3),
        }
    return {
        "temperature_c": round(values["temperature_c"], 1),
        "relative_humidity_pct": float(round(values["relative_humidity_pct"])),
    }


class Publisher(Protocol):
    """The one thing the loop needs from an MQTT client (aiomqtt.Client fits)."""

    async def publish(self, topic: str, payload: bytes, qos: int) -> object: ...


async def publish_forever(
    client: Publisher,
    meters: Sequence[MqttMeter],
    source: ValueSource,
    clock: Callable[[], dt.datetime],
    *,
    sleep: Callable[[float], object] = asyncio.sleep,
    stop: asyncio.Event | None = None,
) -> int:
    """Publish each meter every `period_s` of `clock` time until `stop` is set.

    `clock` returns the simulated time (aware); `sleep` waits in wall time, so an accelerated
    clock makes a day pass in seconds. Returns the number of messages published.
    """
    stop = stop or asyncio.Event()
    due = {m.meter_id: clock() for m in meters}
    sent = 0
    while not stop.is_set():
        now = clock()
        for meter in meters:
            if now >= due[meter.meter_id]:
                topic, payload = render(meter, source.values(meter.meter_id, now), now)
                await client.publish(topic, payload, qos=1)
                sent += 1
                due[meter.meter_id] = now + dt.timedelta(seconds=meter.period_s)
        waited = sleep(0.05)
        if asyncio.iscoroutine(waited):
            await waited
    return sent
