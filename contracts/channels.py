"""The closed vocabulary of channels a reading may carry, each with its one unit.

A channel name says what is measured and in which unit, so a value never travels without its
meaning. Counters (`cumulative=True`) only grow in normal operation; consumption is derived
from them downstream. Instantaneous channels are point samples.

    >>> CHANNELS["energy_import_kwh"].unit
    'kWh'
    >>> CHANNELS["power_w"].cumulative
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    unit: str
    cumulative: bool
    description: str


_DEFINITIONS: Final = (
    # Electricity: counters.
    Channel("energy_import_kwh", "kWh", True, "active energy imported (consumed), total"),
    Channel("energy_export_kwh", "kWh", True, "active energy exported (fed back), total"),
    Channel("reactive_import_kvarh", "kvarh", True, "reactive energy imported, total"),
    Channel("reactive_export_kvarh", "kvarh", True, "reactive energy exported, total"),
    # Electricity: instantaneous, system totals.
    Channel("power_w", "W", False, "active power, all phases (negative = export)"),
    Channel("reactive_power_var", "var", False, "reactive power, all phases"),
    Channel("apparent_power_va", "VA", False, "apparent power, all phases"),
    Channel("power_factor", "1", False, "total power factor, -1..1 (sign = direction)"),
    Channel("frequency_hz", "Hz", False, "line frequency"),
    # Electricity: instantaneous, per phase (single-phase meters use l1).
    Channel("voltage_l1_v", "V", False, "phase 1 line-to-neutral voltage"),
    Channel("voltage_l2_v", "V", False, "phase 2 line-to-neutral voltage"),
    Channel("voltage_l3_v", "V", False, "phase 3 line-to-neutral voltage"),
    Channel("current_l1_a", "A", False, "phase 1 current"),
    Channel("current_l2_a", "A", False, "phase 2 current"),
    Channel("current_l3_a", "A", False, "phase 3 current"),
    Channel("power_l1_w", "W", False, "phase 1 active power"),
    Channel("power_l2_w", "W", False, "phase 2 active power"),
    Channel("power_l3_w", "W", False, "phase 3 active power"),
    # Water.
    Channel("water_volume_m3", "m3", True, "water volume passed, total"),
    Channel("water_flow_m3h", "m3/h", False, "water flow rate"),
    # Heat and gas (CJ/T 188 meter families).
    Channel("heat_energy_kwh", "kWh", True, "heat energy delivered, total"),
    Channel("gas_volume_m3", "m3", True, "gas volume passed, total"),
    # Environment.
    Channel("temperature_c", "degC", False, "temperature (outdoor for weather stations)"),
    Channel("relative_humidity_pct", "%", False, "relative humidity"),
)

CHANNELS: Final[dict[str, Channel]] = {c.name: c for c in _DEFINITIONS}

ChannelName = Literal[
    "energy_import_kwh", "energy_export_kwh", "reactive_import_kvarh", "reactive_export_kvarh",
    "power_w", "reactive_power_var", "apparent_power_va", "power_factor", "frequency_hz",
    "voltage_l1_v", "voltage_l2_v", "voltage_l3_v", "current_l1_a", "current_l2_a",
    "current_l3_a", "power_l1_w", "power_l2_w", "power_l3_w", "water_volume_m3",
    "water_flow_m3h", "heat_energy_kwh", "gas_volume_m3", "temperature_c",
    "relative_humidity_pct",
]  # fmt: skip

UNITS: Final[dict[str, str]] = {c.name: c.unit for c in _DEFINITIONS}
COUNTERS: Final[frozenset[str]] = frozenset(c.name for c in _DEFINITIONS if c.cumulative)
