"""Counters are the integral of what the meter measures; electrical channels agree."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulators.history import History
from simulators.scenario import parse_scenario, plan


def scenario(
    groups: list[dict[str, Any]],
    *,
    start: str = "2026-01-05",
    seed: int = 1,
    zone: str = "Asia/Shanghai",
    faults: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "scenario": {"name": "t", "seed": seed, "start": start, "time_zone": zone},
        "projects": [{"id": "p", "time_zone": zone, "meters": groups}],
        "faults": faults or [],
    }


def group(load: str, profile: str, count: int = 2, **extra: Any) -> dict[str, Any]:
    kind = {"water-generic": "water", "mqtt-weather": "weather"}.get(profile, "electricity")
    return {
        "id": f"{load}-{{n}}",
        "count": count,
        "kind": kind,
        "profile": profile,
        "load": load,
        **extra,
    }


def history(data: dict[str, Any], days: float, interval_s: int) -> pl.DataFrame:
    run = History(plan(parse_scenario(data)), days=days, interval_s=interval_s)
    return run.collect().with_columns(pl.col("meter_id", "channel").cast(pl.String))


def series(df: pl.DataFrame, meter: str, channel: str, column: str = "value") -> np.ndarray:
    rows = df.filter((pl.col("meter_id") == meter) & (pl.col("channel") == channel)).sort("ts")
    return rows[column].to_numpy()


ELECTRIC = [
    ("household", "eastron-sdm120"),
    ("household", "mqtt-wifi-plug"),
    ("office", "schneider-iem3155"),
    ("lighting", "acrel-adl400"),
    ("lift", "eastron-sdm630"),
    ("pump", "eastron-sdm630"),
    ("hvac", "acrel-adl400"),
]


@pytest.mark.parametrize(("load", "profile"), ELECTRIC, ids=[f"{a}-{b}" for a, b in ELECTRIC])
def test_energy_counter_is_the_integral_of_power_over_a_week(load: str, profile: str) -> None:
    """Sampling every minute (the fine step), sum(power x 60 s) equals the counter's rise: to
    float precision for the truth, within 0.1 % for what the meter reports."""
    start = "2026-07-06" if load == "hvac" else "2026-01-05"
    df = history(scenario([group(load, profile)], start=start), days=7, interval_s=60)
    for meter in (f"{load}-1", f"{load}-2"):
        for column, rel in (("true_value", 1e-9), ("value", 1e-3)):
            power = series(df, meter, "power_w", column)
            energy = series(df, meter, "energy_import_kwh", column)
            integral = power[:-1].sum() * 60.0 / 3.6e6
            assert energy[-1] - energy[0] > 1.0  # a week of real consumption
            assert integral == pytest.approx(energy[-1] - energy[0], rel=rel), (meter, column)


def test_water_volume_is_the_integral_of_flow() -> None:
    df = history(scenario([group("household", "water-generic")]), days=7, interval_s=60)
    for meter in ("household-1", "household-2"):
        flow = series(df, meter, "water_flow_m3h", "true_value")
        volume = series(df, meter, "water_volume_m3", "true_value")
        assert flow[:-1].sum() / 60.0 == pytest.approx(volume[-1] - volume[0], rel=1e-9)
        reported = series(df, meter, "water_volume_m3")
        assert reported[-1] - reported[0] == pytest.approx(volume[-1] - volume[0], abs=0.002)


def test_reactive_energy_is_the_integral_of_reactive_power() -> None:
    df = history(scenario([group("pump", "eastron-sdm630")]), days=2, interval_s=60)
    q = series(df, "pump-1", "reactive_power_var", "true_value")
    e = series(df, "pump-1", "reactive_import_kvarh", "true_value")
    # The counter takes whole mvarh per minute (a 0.03 var quantum): within 1e-5.
    assert q[:-1].sum() * 60.0 / 3.6e6 == pytest.approx(e[-1] - e[0], rel=1e-5)


LOADS = st.sampled_from([*ELECTRIC, ("household", "water-generic")])
ZONES = st.sampled_from(["Asia/Shanghai", "Europe/Berlin", "America/New_York", "Asia/Singapore"])
STARTS = st.sampled_from(["2026-01-05", "2026-03-28", "2026-07-01", "2026-10-24", "2026-12-31"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), pair=LOADS, zone=ZONES, start=STARTS)
def test_without_faults_counters_never_decrease(
    seed: int, pair: tuple[str, str], zone: str, start: str
) -> None:
    load, profile = pair
    df = history(scenario([group(load, profile)], seed=seed, zone=zone, start=start), 2, 900)
    counters = df.filter(
        pl.col("channel").is_in(
            [
                "energy_import_kwh",
                "energy_export_kwh",
                "reactive_import_kvarh",
                "reactive_export_kvarh",
                "water_volume_m3",
            ]
        )
    ).sort("meter_id", "channel", "ts")
    steps = counters.group_by("meter_id", "channel").agg(
        pl.col("value").diff().min().alias("value"),
        pl.col("true_value").diff().min().alias("true"),
    )
    assert (steps["value"] >= 0).all(), steps
    assert (steps["true"] >= 0).all(), steps
    assert (df["quality"] == "good").all()


def test_three_phase_channels_are_consistent() -> None:
    df = history(scenario([group("lift", "eastron-sdm630", 1)]), days=1, interval_s=60)
    wide = df.pivot(on="channel", index="ts", values="true_value")
    p = wide["power_w"].to_numpy()
    phases = [wide[f"power_l{i}_w"].to_numpy() for i in (1, 2, 3)]
    volts = [wide[f"voltage_l{i}_v"].to_numpy() for i in (1, 2, 3)]
    amps = [wide[f"current_l{i}_a"].to_numpy() for i in (1, 2, 3)]
    s = wide["apparent_power_va"].to_numpy()
    q = wide["reactive_power_var"].to_numpy()
    pf = wide["power_factor"].to_numpy()
    np.testing.assert_allclose(sum(phases), p, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(sum(v * i for v, i in zip(volts, amps, strict=True)), s, rtol=1e-9)
    np.testing.assert_allclose(pf * s, p, rtol=1e-9, atol=1e-6)
    assert (s * s >= p * p + q * q - 1e-6).all()
    # Per phase: P = V I PF with PF = P / (V I) in 0.55..1.
    for v, i, ph_p in zip(volts, amps, phases, strict=True):
        loaded = i > 0.05
        phase_pf = ph_p[loaded] / (v[loaded] * i[loaded])
        assert ((phase_pf > 0.55) & (phase_pf <= 1.0)).all()


def test_reported_values_agree_within_register_resolution() -> None:
    df = history(scenario([group("household", "eastron-sdm120", 1)]), days=1, interval_s=60)
    wide = df.pivot(on="channel", index="ts", values="value")
    p, v, i, pf = (
        wide[c].to_numpy() for c in ("power_w", "voltage_l1_v", "current_l1_a", "power_factor")
    )
    np.testing.assert_allclose(v * i * pf, p, rtol=1e-5)


def test_voltage_and_frequency_are_plausible() -> None:
    df = history(scenario([group("office", "schneider-iem3155", 4)]), days=7, interval_s=900)
    volts = df.filter(pl.col("channel").str.starts_with("voltage"))["value"].to_numpy()
    assert ((volts > 210) & (volts < 245)).all()
    assert ((volts >= 220) & (volts <= 235)).mean() > 0.95
    freq = df.filter(pl.col("channel") == "frequency_hz")["value"].to_numpy()
    assert ((freq > 49.85) & (freq < 50.15)).all()
    assert abs(freq.mean() - 50.0) < 0.02
    assert freq.std() > 0.003  # it does move
