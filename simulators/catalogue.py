"""What each simulated meter model measures and how finely it reports it.

A profile here is the simulator's view of a meter model: which channels (from the closed
vocabulary in `contracts.channels`) it has, the resolution its registers or JSON carry, and
the modulus at which its counter registers wrap. The register maps themselves (addresses, word
order, function codes) belong to the gateway's device profiles; only the facts that change the
*values* a meter reports live here, taken from `reference/meter-register-maps.md`:

- Eastron SDM630 / SDM120: FC04 float32 for every quantity, so values carry float32 precision.
  Energy registers are float32 kWh and do not wrap at a register width.
- Schneider iEM3155: float32, but power registers are kW (so W values carry float32-of-kW
  precision); energies float32 kWh. (Its IEC-encoded power factor is not read.)
- Acrel ADL400: scaled integers (V x0.1, A x0.01, Hz x0.01, W x1, kWh and kvarh int32 x0.01);
  a 31-bit counter of 0.01 kWh wraps at 21 474 836.48 kWh. (Its power factor and var/VA
  registers have unverified scales, so the gateway profile does not read them.)
- `water-generic`: a stand-in until the Modbus water meter profile is chosen: litre resolution
  and the 5-digit m³ dial (wraps at 100 000 m³) of a typical DN15-DN25 residential meter.
- `mqtt-wifi-plug`, `mqtt-weather`: JSON publishers with fixed decimals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from contracts.channels import CHANNELS, UNITS

MeterKind = Literal["electricity", "water", "weather"]
Transport = Literal["modbus", "mqtt"]

# Resolution of a reported value: "f32" = IEEE float32 register, "f32k" = float32 register in
# kilo-units (value/1000 stored), a float = fixed step (scaled integer or fixed decimals).
Resolution = Literal["f32", "f32k"] | float

_COUNTERS: Final = (
    "energy_import_kwh",
    "energy_export_kwh",
    "reactive_import_kvarh",
    "reactive_export_kvarh",
)
_PER_PHASE: Final = (
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "power_l1_w",
    "power_l2_w",
    "power_l3_w",
)
# Channel sets follow the gateway's device profiles (gateway_agent/profiles/*.toml): what a
# gateway reads from each model. tests/unit/test_sim_catalogue.py checks they stay in step.
THREE_PHASE_CHANNELS: Final = (
    *_COUNTERS,
    "power_w",
    "reactive_power_var",
    "apparent_power_va",
    "power_factor",
    "frequency_hz",
    *_PER_PHASE,
)
ADL400_CHANNELS: Final = (*_COUNTERS, "power_w", "frequency_hz", *_PER_PHASE)
IEM3155_CHANNELS: Final = tuple(c for c in THREE_PHASE_CHANNELS if c != "power_factor")
SINGLE_PHASE_CHANNELS: Final = (
    *_COUNTERS,
    "power_w",
    "reactive_power_var",
    "apparent_power_va",
    "power_factor",
    "frequency_hz",
    "voltage_l1_v",
    "current_l1_a",
)
PLUG_CHANNELS: Final = (
    "energy_import_kwh",
    "power_w",
    "power_factor",
    "voltage_l1_v",
    "current_l1_a",
)
WATER_CHANNELS: Final = ("water_volume_m3", "water_flow_m3h")
WEATHER_CHANNELS: Final = ("temperature_c", "relative_humidity_pct")

ACREL_ENERGY_MODULUS: Final = 2**31 * 0.01  # int32 counts of 0.01 kWh
WATER_DIAL_MODULUS: Final = 100_000.0  # 5 integer digits of m3


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    kind: MeterKind
    transport: Transport
    phases: int  # 0 for non-electric meters
    channels: tuple[str, ...]
    resolution: dict[str, Resolution] = field(default_factory=dict)
    default_modulus: dict[str, float] = field(default_factory=dict)

    @property
    def counters(self) -> tuple[str, ...]:
        return tuple(c for c in self.channels if CHANNELS[c].cumulative)

    @property
    def primary_counter(self) -> str:
        return self.counters[0]

    def units(self) -> tuple[str, ...]:
        return tuple(UNITS[c] for c in self.channels)


def _all(channels: tuple[str, ...], res: Resolution) -> dict[str, Resolution]:
    return dict.fromkeys(channels, res)


_ACREL: dict[str, Resolution] = {
    **dict.fromkeys(("voltage_l1_v", "voltage_l2_v", "voltage_l3_v"), 0.1),
    **dict.fromkeys(("current_l1_a", "current_l2_a", "current_l3_a"), 0.01),
    **dict.fromkeys(("power_w", "power_l1_w", "power_l2_w", "power_l3_w"), 1.0),
    "frequency_hz": 0.01,
    "energy_import_kwh": 0.01,
    "energy_export_kwh": 0.01,
    "reactive_import_kvarh": 0.01,
    "reactive_export_kvarh": 0.01,
}
_IEM: dict[str, Resolution] = {
    **_all(IEM3155_CHANNELS, "f32"),
    **dict.fromkeys(
        (
            "power_w",
            "power_l1_w",
            "power_l2_w",
            "power_l3_w",
            "reactive_power_var",
            "apparent_power_va",
        ),
        "f32k",
    ),
}

PROFILES: Final[dict[str, Profile]] = {
    p.name: p
    for p in (
        Profile(
            "eastron-sdm630",
            "electricity",
            "modbus",
            3,
            THREE_PHASE_CHANNELS,
            _all(THREE_PHASE_CHANNELS, "f32"),
        ),
        Profile(
            "eastron-sdm120",
            "electricity",
            "modbus",
            1,
            SINGLE_PHASE_CHANNELS,
            _all(SINGLE_PHASE_CHANNELS, "f32"),
        ),
        Profile(
            "acrel-adl400",
            "electricity",
            "modbus",
            3,
            ADL400_CHANNELS,
            _ACREL,
            dict.fromkeys(_COUNTERS, ACREL_ENERGY_MODULUS),
        ),
        Profile("schneider-iem3155", "electricity", "modbus", 3, IEM3155_CHANNELS, _IEM),
        Profile(
            "water-generic",
            "water",
            "modbus",
            0,
            WATER_CHANNELS,
            {"water_volume_m3": 0.001, "water_flow_m3h": 0.001},
            {"water_volume_m3": WATER_DIAL_MODULUS},
        ),
        Profile(
            "mqtt-wifi-plug",
            "electricity",
            "mqtt",
            1,
            PLUG_CHANNELS,
            {
                "energy_import_kwh": 0.001,
                "power_w": 0.1,
                "power_factor": 0.01,
                "voltage_l1_v": 0.1,
                "current_l1_a": 0.001,
            },
        ),
        Profile(
            "mqtt-weather",
            "weather",
            "mqtt",
            0,
            WEATHER_CHANNELS,
            {"temperature_c": 0.1, "relative_humidity_pct": 1.0},
        ),
    )
}

LoadShape = Literal["household", "office", "lighting", "lift", "pump", "hvac", "weather"]
Occupancy = Literal["household", "office"]

LOADS_BY_KIND: Final[dict[MeterKind, frozenset[str]]] = {
    "electricity": frozenset({"household", "office", "lighting", "lift", "pump", "hvac"}),
    "water": frozenset({"household", "office"}),
    "weather": frozenset({"weather"}),
}

# Nominal mean-ish size of one meter's load at scale 1.0 (W, or m3/h for water): a Chinese
# urban flat uses ~3 000 kWh a year; an office floor of ~1 500 m2 draws ~30 kW in the day.
NOMINAL: Final[dict[tuple[MeterKind, str], float]] = {
    ("electricity", "household"): 220.0,
    ("electricity", "office"): 30_000.0,
    ("electricity", "lighting"): 3_000.0,
    ("electricity", "lift"): 7_500.0,
    ("electricity", "pump"): 5_500.0,
    ("electricity", "hvac"): 150_000.0,
    ("water", "household"): 0.0125,
    ("water", "office"): 0.35,
}
