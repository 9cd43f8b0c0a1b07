"""Meters that publish their own JSON straight to the broker, mapped to readings.

A mapping names a topic filter, how to find the meter (a topic level looked up in a device
table), where the timestamp is and which JSON paths hold which channels. Two decoders exist:

* `tasmota` — Tasmota firmware telemetry (`tele/<device>/SENSOR`): local time without an
  offset (the mapping names the zone), `ENERGY.Total` kWh, `ENERGY.Power` W, and so on;
* `json` — any flat or nested JSON: `ts_path` and one path per channel
  (`contracts.meter_json`: dotted keys, `[n]` list indices; ISO 8601 or epoch timestamps).

Pure: `map_message` turns one message into readings plus refusals, with the same reason codes
as gateway batches. Such readings have no gateway, boot or sequence: they are stored by their
idempotency key alone.

    >>> m = MeterMapping(name="kwh", topic="site/+/energy", format="json", device_level=1,
    ...             devices={"m7": "P001-E-0007"}, ts_path="ts",
    ...             channels={"energy_import_kwh": "kwh"})
    >>> out = map_message(m, "site/m7/energy", b'{"ts": "2026-03-01T08:00:00Z", "kwh": 12.5}')
    >>> [(r.meter_id, r.channel, r.value) for r in out.readings]
    [('P001-E-0007', 'energy_import_kwh', 12.5)]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contracts.channels import CHANNELS, UNITS
from contracts.meter_json import lookup, parse_path, timestamp
from contracts.wire import MAX_ABS_VALUE, Reading, Reason

TASMOTA_CHANNELS: dict[str, str] = {
    "energy_import_kwh": "ENERGY.Total",
    "power_w": "ENERGY.Power",
    "apparent_power_va": "ENERGY.ApparentPower",
    "reactive_power_var": "ENERGY.ReactivePower",
    "power_factor": "ENERGY.Factor",
    "voltage_l1_v": "ENERGY.Voltage",
    "current_l1_a": "ENERGY.Current",
}


@dataclass(frozen=True)
class MeterMapping:
    """How one family of self-publishing meters maps to readings (from the ingest config)."""

    name: str
    topic: str  # MQTT filter, e.g. "tele/+/SENSOR"
    format: Literal["tasmota", "json"]
    device_level: int  # which topic level names the device
    devices: Mapping[str, str]  # device name -> meter code
    ts_path: str = "Time"
    channels: Mapping[str, str] = field(default_factory=dict)
    time_zone: str = "UTC"  # for timestamps without an offset

    def __post_init__(self) -> None:
        unknown = set(self.channels) - set(CHANNELS)
        if unknown:
            raise ValueError(f"mapping {self.name!r}: unknown channels {sorted(unknown)}")
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"mapping {self.name!r}: unknown time zone {self.time_zone!r}"
            ) from None
        if self.device_level < 0 or self.device_level >= len(self.topic.split("/")):
            raise ValueError(f"mapping {self.name!r}: device_level outside the topic")
        for path in (self.ts_path, *self.channels.values()):
            try:
                parse_path(path)
            except ValueError as exc:
                raise ValueError(f"mapping {self.name!r}: {exc}") from None

    @property
    def channel_paths(self) -> Mapping[str, str]:
        if self.format == "tasmota" and not self.channels:
            return TASMOTA_CHANNELS
        return self.channels


@dataclass(frozen=True, slots=True)
class Mapped:
    readings: list[Reading]
    refused: list[tuple[Reason, str]]  # (reason, detail), one per refused value or message


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching with `+` and a trailing `#`."""
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts) or (part != "+" and part != t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)


def map_message(mapping: MeterMapping, topic: str, payload: bytes) -> Mapped:
    """Readings from one message of a self-publishing meter; refusals carry reason codes."""
    levels = topic.split("/")
    device = levels[mapping.device_level] if mapping.device_level < len(levels) else ""
    meter = mapping.devices.get(device)
    if meter is None:
        return Mapped([], [(Reason.UNKNOWN_METER, f"device {device!r} not in {mapping.name}")])
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        return Mapped([], [(Reason.INVALID_JSON, str(exc))])
    try:
        ts = timestamp(lookup(doc, mapping.ts_path), mapping.time_zone)
    except (KeyError, TypeError, ValueError) as exc:
        return Mapped([], [(Reason.SCHEMA, f"timestamp at {mapping.ts_path!r}: {exc}")])
    readings: list[Reading] = []
    refused: list[tuple[Reason, str]] = []
    for channel, path in mapping.channel_paths.items():
        try:
            value = lookup(doc, path)
        except KeyError:
            continue  # a device may leave out what it does not measure
        if isinstance(value, bool) or not isinstance(value, int | float):
            refused.append((Reason.SCHEMA, f"{path}: not a number"))
            continue
        if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
            refused.append((Reason.NON_FINITE, f"{path}: {value!r}"))
            continue
        readings.append(
            Reading(meter, channel, ts, float(value), UNITS[channel], 0)  # type: ignore[arg-type]
        )
    if not readings and not refused:
        refused.append((Reason.SCHEMA, "no mapped channel present"))
    return Mapped(readings, refused)
