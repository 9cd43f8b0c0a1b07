"""`gateway check` against simulated meters over Modbus TCP: decoded values with units and
plausibility, a word-order suggestion for a meter whose real order differs from its profile,
and failures shown per channel instead of aborting."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest

from gateway_agent.check import CheckRow, check_site, render_table
from gateway_agent.profiles import Profile, builtin_profile
from gateway_agent.registers import Order
from gateway_agent.site import Bus, Device
from simulators.modbus import ModbusTcpEndpoint, SimulatedDevice, StaticValues
from tests.support.modbus_fleet import make_site, register_value

pytestmark = pytest.mark.integration

T = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
VALUES = {"voltage_l1_v": 231.5, "voltage_l2_v": 230.0, "voltage_l3_v": 229.25,
          "frequency_hz": 50.0, "power_w": 1500.0, "energy_import_kwh": 4321.25,
          "power_factor": 0.95, "current_l1_a": 6.5}  # fmt: skip


def word_swapped(profile: Profile) -> Profile:
    """The same meter with every float stored low word first (a firmware variant)."""
    channels = {
        name: dataclasses.replace(spec, fmt=dataclasses.replace(spec.fmt, order=Order.CDAB))
        for name, spec in profile.channels.items()
    }
    return dataclasses.replace(profile, channels=channels)


def device(meter: str, unit: int, profile: Profile) -> Device:
    return Device.of(meter, "conv", unit, profile)


def test_check_reports_values_plausibility_and_word_order() -> None:
    sdm630 = builtin_profile("eastron_sdm630")

    async def scenario() -> list[CheckRow]:
        sims = {
            1: SimulatedDevice(sdm630, "good", StaticValues(VALUES), clock=lambda: T),
            2: SimulatedDevice(
                word_swapped(sdm630), "swapped", StaticValues(VALUES), clock=lambda: T
            ),
        }
        async with ModbusTcpEndpoint(sims) as endpoint:
            bus = Bus("conv", "tcp", host="127.0.0.1", port=endpoint.port, timeout_s=0.3)
            site = make_site({"conv": bus}, [device("good", 1, sdm630),
                                             device("swapped", 2, sdm630),
                                             device("absent", 9, sdm630)])  # fmt: skip
            return await asyncio.wait_for(check_site(site), 30)

    rows = asyncio.run(scenario())
    by = {(r.meter_id, r.channel): r for r in rows}
    n = len(sdm630.channels)
    assert len(rows) == 3 * n
    assert [r.meter_id for r in rows] == ["good"] * n + ["swapped"] * n + ["absent"] * n
    for name, spec in sdm630.channels.items():
        good = by[("good", name)]
        assert good.value == register_value(spec, VALUES.get(name, 0.0))
        assert good.plausible is True
        assert good.suggested_order is None
        assert good.unit == spec.unit
        assert good.raw is not None
        assert len(good.raw) == spec.count
        absent = by[("absent", name)]
        assert absent.value is None
        assert absent.error == "timeout"
    for name in ("voltage_l1_v", "voltage_l2_v", "frequency_hz"):
        assert by[("swapped", name)].plausible is False, by[("swapped", name)]
    # 229.25 V word-swapped reads as a plausible 2.0 V: only the device as a whole tells
    assert by[("swapped", "voltage_l3_v")].value == pytest.approx(2.004, abs=1e-3)
    for name, spec in sdm630.channels.items():
        swapped = by[("swapped", name)]
        changes = swapped.raw != tuple(reversed(swapped.raw or ())) and any(swapped.raw or ())
        assert swapped.suggested_order is (Order.CDAB if changes else None), swapped
        assert spec.count == 2
    table = render_table(rows)
    assert "word order CDAB would be plausible" in table
    assert "no value: timeout" in table
    assert table.splitlines()[0].split()[:3] == ["meter", "unit", "id"]
    assert table.splitlines()[-1].startswith("3 devices")
    assert "2 answered" in table.splitlines()[-1]
    assert any("231.5" in line and "good" in line for line in table.splitlines())
