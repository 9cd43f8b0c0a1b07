"""`meterward simulate history` end to end as a process, on the shipped scenarios, checked the
way analytics will use the files: savings against a control group, weather-driven HVAC, the
big mixed fleet in every time zone."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ENTRY = [sys.executable, "-c", "from meterward.cli import main; main()"]


def simulate(scenario: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    result = subprocess.run(
        [
            *ENTRY,
            "simulate",
            "history",
            "--scenario",
            str(ROOT / "scenarios" / scenario),
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def tower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tower") / "tower.parquet"
    simulate("office-tower.toml", out, "--days", "28", "--interval", "15m")
    return out


def daily_energy(path: Path, zone: str) -> pl.DataFrame:
    return (
        pl.scan_parquet(path)
        .filter(pl.col("channel").cast(pl.String) == "energy_import_kwh")
        .with_columns(
            pl.col("meter_id").cast(pl.String),
            pl.col("ts").dt.convert_time_zone(zone).dt.date().alias("day"),
        )
        .group_by("meter_id", "day")
        .agg((pl.col("true_value").max() - pl.col("true_value").min()).alias("kwh"))
        .collect()
    )


def test_retrofit_savings_show_against_the_control_floors(tower: Path) -> None:
    daily = daily_energy(tower, "Asia/Shanghai").filter(
        pl.col("meter_id").str.starts_with("floor-")
        & (pl.col("day").dt.weekday() <= 5)
        & (pl.col("day") > date(2026, 6, 1))
    )
    treated = [f"floor-{n:02d}" for n in range(11, 21)]
    retrofit = date(2026, 6, 15)
    group = pl.when(pl.col("meter_id").is_in(treated)).then(pl.lit("t")).otherwise(pl.lit("c"))
    period = pl.when(pl.col("day") >= retrofit).then(pl.lit("after")).otherwise(pl.lit("before"))
    means = (
        daily.filter(pl.col("meter_id") != "floor-07")  # CT reversal: import stops there
        .with_columns(group.alias("g"), period.alias("p"))
        .group_by("g", "p")
        .agg(pl.col("kwh").mean())
    )
    m = {(g, p): v for g, p, v in means.iter_rows()}
    did = (m[("t", "after")] / m[("t", "before")]) / (m[("c", "after")] / m[("c", "before")])
    assert did == pytest.approx(0.75, abs=0.04)


def test_chillers_follow_the_outdoor_temperature(tower: Path) -> None:
    weather = (
        pl.read_parquet(tower.with_name("tower.weather.parquet"))
        .with_columns(pl.col("ts").dt.convert_time_zone("Asia/Shanghai").dt.date().alias("day"))
        .group_by("day")
        .agg(pl.col("temperature_c").max())
    )
    chillers = (
        daily_energy(tower, "Asia/Shanghai")
        .filter(pl.col("meter_id").str.starts_with("chiller"))
        .group_by("day")
        .agg(pl.col("kwh").sum())
        .join(weather, on="day")
        .filter(pl.col("day").dt.weekday() <= 5)
        .sort("day")
    )
    r = np.corrcoef(chillers["kwh"].to_numpy(), chillers["temperature_c"].to_numpy())[0, 1]
    assert r > 0.4, chillers


def test_tower_meters_file_names_every_bus(tower: Path) -> None:
    meters = pl.read_parquet(tower.with_name("tower.meters.parquet"))
    floors = meters.filter(pl.col("meter_id").str.starts_with("floor-"))
    assert sorted(set(floors["bus"])) == ["riser-1", "riser-2", "riser-3"]
    assert floors.group_by("bus").len()["len"].to_list() == [10, 10, 10]


def test_mixed_fleet_in_every_zone(tmp_path: Path) -> None:
    out = tmp_path / "fleet.parquet"
    result = simulate("mixed-fleet.toml", out, "--days", "1", "--interval", "15m")
    assert "2,319 meters" in result.stderr
    readings = pl.scan_parquet(out)
    per_meter = readings.group_by("meter_id").agg(pl.col("ts").n_unique().alias("n")).collect()
    assert per_meter.height == 2319
    assert per_meter["n"].min() == 96
    meters = pl.read_parquet(tmp_path / "fleet.meters.parquet")
    zones = dict(meters.group_by("project").agg(pl.col("time_zone").first()).iter_rows())
    assert zones["spree-haus"] == "Europe/Berlin"
    assert zones["hudson-lofts"] == "America/New_York"
    weather = pl.read_parquet(tmp_path / "fleet.weather.parquet")
    means = dict(weather.group_by("project").agg(pl.col("temperature_c").mean()).iter_rows())
    assert means["marina-point"] > 24 > means["jade-court"] > means["spree-haus"]
    quality = readings.group_by("quality").len().collect()
    assert set(quality["quality"].cast(pl.String)) <= {
        "good",
        "nan_sentinel",
        "comm_error",
        "clock_suspect",
    }
