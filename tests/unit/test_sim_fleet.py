"""The live Fleet API agrees with the history generator, and its clocks run as told."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from simulators.clock import AcceleratedClock, Clock, ManualClock, SystemClock
from simulators.faults import MODBUS_SLAVE_BUSY, DeviceFault
from simulators.fleet import Fleet
from simulators.history import History
from simulators.scenario import Plan, load_scenario, parse_duration, plan

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "residential-small.toml"


@pytest.fixture(scope="module")
def the_plan() -> Plan:
    return plan(load_scenario(SCENARIO))


@pytest.fixture(scope="module")
def readings(the_plan: Plan) -> pl.DataFrame:
    df = History(the_plan, days=5, interval_s=900).collect()
    return df.with_columns(
        pl.col("meter_id", "channel").cast(pl.String), pl.col("ts").dt.epoch("us").alias("us")
    )


def at(p: Plan, text: str) -> int:
    return p.start + parse_duration(text.lstrip("+"))


def history_values(readings: pl.DataFrame, meter: str, t: int) -> dict[str, float | None]:
    rows = readings.filter((pl.col("meter_id") == meter) & (pl.col("us") == t * 1_000_000))
    return dict(zip(rows["channel"].to_list(), rows["value"].to_list(), strict=True))


def same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-9)


def test_values_agree_with_history(the_plan: Plan, readings: pl.DataFrame) -> None:
    fleet = Fleet(the_plan)
    rng = np.random.default_rng(0)
    meters = [m.meter_id for m in the_plan.meters if m.meter_id != "clubhouse-plug"]
    instants = the_plan.start + 900 * rng.integers(0, 5 * 96, size=60)
    checked = 0
    for t in sorted(instants):  # advancing time: the cheap path
        for meter in rng.choice(meters, size=5, replace=False):
            want = history_values(readings, str(meter), int(t))
            got = fleet.values(str(meter), float(t))
            assert set(got) == set(want)
            for channel, value in want.items():
                if value is None:  # the device was silent; its registers still hold values
                    assert fleet.device_fault(str(meter), float(t)) is not None
                    continue
                assert same(got[channel], value), (meter, t, channel, got[channel], value)
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    ("meter", "when"),
    [
        ("b2-flat-01", "+0d"),  # the rollover meter
        ("b3-flat-05", "+2d10h"),  # stuck
        ("b4-flat-09", "+1d3h"),  # at the reset instant
        ("b3-water-04", "+2d12h"),  # after the replacement
        ("b4-lighting", "+3d"),  # CT reversed
        ("b3-lift-1", "+3d3h"),  # phase lost
        ("b4-water-02", "+2d6h15m"),  # NaN sentinel
        ("b1-flat-08", "+1d12h"),  # bad zero
        ("plant-pump-1", "+4d"),  # degrading
    ],
)
def test_faulted_values_agree_with_history(
    the_plan: Plan, readings: pl.DataFrame, meter: str, when: str
) -> None:
    t = at(the_plan, when)
    want = history_values(readings, meter, t)
    got = Fleet(the_plan).values(meter, t)
    for channel, value in want.items():
        assert same(got[channel], value), (channel, got[channel], value)


def test_rollover_found_live_matches_the_ledger(the_plan: Plan) -> None:
    run = History(the_plan, days=1, interval_s=900)
    run.collect()
    (wrap,) = [r for r in run.fault_rows() if r["kind"] == "rollover"]
    t = wrap["start"] / 1e6
    fleet = Fleet(the_plan)
    before = fleet.values("b2-flat-01", t - 1)["energy_import_kwh"]
    after = fleet.values("b2-flat-01", t + 1)["energy_import_kwh"]
    assert before > 99_999.9
    assert after < 0.1


def test_counters_between_grid_points_follow_power(the_plan: Plan) -> None:
    fleet = Fleet(the_plan, refresh_s=0)  # exactly at t, no register refresh period
    t = at(the_plan, "+1d19h") + 7.5  # inside a minute
    a = fleet.true_values("b1-flat-01", t)
    b = fleet.true_values("b1-flat-01", t + 30)
    assert a["power_w"] == b["power_w"]  # power is constant over the minute
    rise = (b["energy_import_kwh"] - a["energy_import_kwh"]) * 3.6e6
    assert rise == pytest.approx(a["power_w"] * 30, rel=1e-6)


def test_registers_refresh_once_a_second(the_plan: Plan) -> None:
    fleet = Fleet(the_plan)  # refresh_s=1.0
    t = at(the_plan, "+1d19h") + 12
    first = fleet.true_values("b1-flat-01", t)
    assert fleet.true_values("b1-flat-01", t + 0.999) == first
    later = fleet.true_values("b1-flat-01", t + 1.0)
    assert later["energy_import_kwh"] > first["energy_import_kwh"]
    assert fleet.values("b1-flat-01", t + 0.5) == Fleet(the_plan, refresh_s=0).values(
        "b1-flat-01", t
    )


def test_queries_may_go_back_in_time(the_plan: Plan) -> None:
    fresh = Fleet(the_plan)
    fleet = Fleet(the_plan)
    early, late = at(the_plan, "+6h"), at(the_plan, "+3d6h")
    fleet.values("b1-flat-02", late)
    assert fleet.values("b1-flat-02", early) == fresh.values("b1-flat-02", early)
    with pytest.raises(ValueError, match="before the fleet's start"):
        fleet.values("b1-flat-02", the_plan.start - 60)
    with pytest.raises(KeyError, match="no meter 'nope'"):
        fleet.values("nope", late)


def test_values_accept_aware_datetimes(the_plan: Plan) -> None:
    fleet = Fleet(the_plan)
    t = at(the_plan, "+1d")
    assert fleet.values("b1-flat-01", datetime.fromtimestamp(t, UTC)) == fleet.values(
        "b1-flat-01", t
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        fleet.values("b1-flat-01", datetime(2026, 1, 6))  # noqa: DTZ001


def test_snapshot_is_values_of_everyone(the_plan: Plan) -> None:
    fleet = Fleet(the_plan)
    t = at(the_plan, "+2d7h")
    snap = fleet.snapshot(t)
    assert set(snap) == set(fleet.meters)
    for meter in ("b1-flat-01", "b3-water-04", "weather-station", "plant-pump-2"):
        assert snap[meter] == pytest.approx(fleet.values(meter, t), nan_ok=True)
    assert set(fleet.snapshot(t, ["b1-flat-01"])) == {"b1-flat-01"}


def test_device_faults(the_plan: Plan) -> None:
    fleet = Fleet(the_plan)
    assert fleet.device_fault("b2-lift-2", at(the_plan, "+1d15h")) == DeviceFault("no_response")
    assert fleet.device_fault("b2-lift-2", at(the_plan, "+1d17h")) is None
    slow = fleet.device_fault("b1-water-01", at(the_plan, "+2d1h"))
    assert slow == DeviceFault("slow", delay_s=1.5)
    # The replacement's downtime is silence too.
    assert fleet.device_fault("b3-water-04", at(the_plan, "+2d10h10m")) == DeviceFault(
        "no_response"
    )
    busy = [fleet.device_fault("b2-flat-10", at(the_plan, "+1d9h") + s) for s in range(0, 3600, 7)]
    hits = [f for f in busy if f is not None]
    assert {f.exception_code for f in hits} == {MODBUS_SLAVE_BUSY}
    assert 0.35 < len(hits) / len(busy) < 0.65


def test_serial_and_clock(the_plan: Plan) -> None:
    fleet = Fleet(the_plan)
    old = fleet.serial("b3-water-04", at(the_plan, "+2d"))
    assert isinstance(old, int)
    assert 0 < old < 2**32
    assert fleet.serial("b3-water-04", at(the_plan, "+2d11h")) == 24110388
    assert fleet.clock_offset("clubhouse-plug", at(the_plan, "+1d")) == pytest.approx(120.0)
    assert fleet.clock_offset("clubhouse-plug", at(the_plan, "+6d")) == 0.0
    assert fleet.clock_offset("b1-flat-01", at(the_plan, "+1d")) == 0.0


def test_meter_info_for_servers(the_plan: Plan) -> None:
    fleet = Fleet(the_plan)
    flat = fleet.meters["b1-flat-01"]
    assert (flat.transport, flat.bus, flat.unit_id) == ("modbus", "b1-rs485", 1)
    assert flat.channels[0] == "energy_import_kwh"
    assert flat.units[0] == "kWh"
    assert fleet.meters["weather-station"].transport == "mqtt"


# -- clocks ---------------------------------------------------------------------------------------


def test_clocks_follow_the_protocol() -> None:
    for clock in (SystemClock(), AcceleratedClock(0, 10.0), ManualClock(0)):
        assert isinstance(clock, Clock)
    assert abs(SystemClock().now() - time.time()) < 1.0


def test_accelerated_clock_runs_a_year_in_seconds() -> None:
    fake = [0.0]
    speed = AcceleratedClock.speed_for(365 * 86400, 10.0)
    clock = AcceleratedClock(start=1_767_225_600, speed=speed, monotonic=lambda: fake[0])
    fake[0] = 10.0
    assert clock.now() == pytest.approx(1_767_225_600 + 365 * 86400)
    real = AcceleratedClock(start=0, speed=1000.0)
    began = time.monotonic()
    asyncio.run(real.sleep(50.0))  # 50 simulated seconds
    assert time.monotonic() - began < 1.0


def test_manual_clock() -> None:
    clock = ManualClock(100.0)
    asyncio.run(clock.sleep(5))
    assert clock.now() == 105.0
    clock.advance(10)
    assert clock.now() == 115.0
    with pytest.raises(ValueError, match="backwards"):
        clock.set(0)


def test_a_fleet_lives_through_a_year_on_an_accelerated_clock() -> None:
    data: dict[str, Any] = {
        "scenario": {"name": "year", "seed": 4, "start": "2026-01-01"},
        "projects": [
            {
                "id": "p",
                "meters": [
                    {"id": "flat", "kind": "electricity", "profile": "eastron-sdm120"},
                    {"id": "water", "kind": "water", "profile": "water-generic"},
                ],
            }
        ],
    }
    from simulators.scenario import parse_scenario  # noqa: PLC0415

    p = plan(parse_scenario(data))
    fleet = Fleet(p, block_minutes=7 * 1440)
    fake = [0.0]
    clock = AcceleratedClock(p.start, AcceleratedClock.speed_for(365 * 86400, 12), lambda: fake[0])
    began = time.perf_counter()
    readings = []
    for month in range(13):
        fake[0] = float(month)
        readings.append(fleet.values("flat", clock.now())["energy_import_kwh"])
    assert time.perf_counter() - began < 10
    year = readings[-1] - readings[0]
    assert 1500 < year < 8000  # a flat's year
    assert all(b >= a for a, b in itertools.pairwise(readings))
