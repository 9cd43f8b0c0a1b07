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
import math
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
        doc: dict[str, object] = {"Time": local.isoformat(), "ENERGY": _tasmota_energy(values)}
    else:
        doc = {"ts": t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")}
        for key, channel, digits in (("temperature", "temperature_c", 1),
                                     ("humidity", "relative_humidity_pct", 0)):  # fmt: skip
            value = values.get(channel)
            if value is not None and math.isfinite(value):
                doc[key] = round(value, digits) if digits else round(value)
    return meter.topic(), json.dumps(doc, separators=(",", ":")).encode()


_TASMOTA_KEYS = (
    ("Total", "energy_import_kwh", 3), ("Power", "power_w", 0),
    ("ApparentPower", "apparent_power_va", 0), ("ReactivePower", "reactive_power_var", 0),
    ("Factor", "power_factor", 2), ("Voltage", "voltage_l1_v", 0), ("Current", "current_l1_a", 3),
)  # fmt: skip


def _tasmota_energy(values: Mapping[str, float]) -> dict[str, float]:
    """Tasmota's ENERGY object. Like the firmware, it derives apparent power as V x I and
    reactive power from apparent and active power when the meter chip gives only those, and
    leaves out what it could not read."""
    full = dict(values)
    v, i, p = full.get("voltage_l1_v"), full.get("current_l1_a"), full.get("power_w")
    if "apparent_power_va" not in full and v is not None and i is not None:
        full["apparent_power_va"] = v * i
    s = full.get("apparent_power_va")
    if "reactive_power_var" not in full and s is not None and p is not None:
        full["reactive_power_var"] = math.sqrt(max(s * s - p * p, 0.0))
    energy: dict[str, float] = {}
    for key, channel, digits in _TASMOTA_KEYS:
        value = full.get(channel)
        if value is not None and math.isfinite(value):
            energy[key] = round(value, digits) if digits else round(value)
    return energy


def reported(meter: MqttMeter, values: Mapping[str, float]) -> dict[str, float]:
    """The values as a correct reader recovers them from `render`'s payload (its resolution).

    The ground truth for MQTT meters is what they publish, not the physics behind it.
    """
    if meter.format == "tasmota":
        energy = _tasmota_energy(values)
        return {channel: float(energy[key]) for key, channel, _ in _TASMOTA_KEYS if key in energy}
    _, payload = render(meter, values, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    doc = json.loads(payload)
    return {
        channel: float(doc[key])
        for key, channel in (
            ("temperature", "temperature_c"),
            ("humidity", "relative_humidity_pct"),
        )
        if key in doc
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
