"""Random fault scenarios (simulators.random_scenario): valid, complete, deterministic per seed,
and their faults really happen in a simulated history."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from simulators.faults import FAULT_KINDS
from simulators.history import History
from simulators.random_scenario import random_scenario, to_toml
from simulators.scenario import load_scenario, parse_duration, plan

ROOT = Path(__file__).resolve().parents[2]
DAYS = 14.0


def base(name: str = "residential-small") -> dict[str, Any]:
    return tomllib.loads((ROOT / "scenarios" / f"{name}.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("seed", range(25))
def test_every_generated_scenario_loads_plans_and_has_every_kind(seed: int, tmp_path: Path) -> None:
    path = tmp_path / f"random-{seed}.toml"
    path.write_text(to_toml(random_scenario(base(), seed, days=DAYS)), encoding="utf-8")
    scenario = load_scenario(path)
    resolved = plan(scenario)
    assert {f.kind for f in resolved.faults} == set(FAULT_KINDS)
    # One fault per meter: the ground truth of each meter is unambiguous.
    meters = [f.meter_id for f in resolved.faults]
    assert len(meters) == len(set(meters))
    end = resolved.start + DAYS * 86400
    for f in resolved.faults:
        assert resolved.start <= f.start < end, f
        if f.kind == "degradation":  # the failure date falls inside the run
            assert f.start + float(f.params["ramp_days"]) * 86400 <= end, f
        if f.end is not None:
            assert f.end <= end, f
        if f.kind == "spike":  # an added load: visible whatever the meter was doing
            assert float(f.params["extra"]) > 0, f
            assert "factor" not in f.params, f


def test_the_same_seed_gives_the_same_bytes_and_another_seed_another_scenario() -> None:
    a = to_toml(random_scenario(base(), 7, days=DAYS))
    assert a == to_toml(random_scenario(base(), 7, days=DAYS))
    assert a != to_toml(random_scenario(base(), 8, days=DAYS))


def test_the_noise_seed_changes_with_the_seed_too() -> None:
    seeds = {random_scenario(base(), s, days=DAYS)["scenario"]["seed"] for s in range(10)}
    assert len(seeds) == 10


@pytest.mark.parametrize("name", ["office-tower", "mixed-fleet"])
def test_other_shipped_fleets_work_as_a_base(name: str, tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(to_toml(random_scenario(base(name), 1, days=21)), encoding="utf-8")
    assert {f.kind for f in plan(load_scenario(path)).faults} == set(FAULT_KINDS)


def test_the_base_document_is_left_as_it_was() -> None:
    doc = base()
    before = to_toml(doc)
    random_scenario(doc, 3, days=DAYS)
    assert to_toml(doc) == before


def test_a_run_too_short_for_a_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="days must be at least"):
        random_scenario(base(), 1, days=5)


def test_a_fleet_without_pumps_cannot_cover_degradation() -> None:
    doc = base()
    for project in doc["projects"]:
        project["meters"] = [g for g in project["meters"] if g.get("load") != "pump"]
    with pytest.raises(ValueError, match="degradation"):
        random_scenario(doc, 1, days=DAYS)


@pytest.mark.parametrize("seed", [11, 12])
def test_every_fault_kind_reaches_the_ledger(seed: int, tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    doc = random_scenario(base(), seed, days=DAYS)
    path.write_text(to_toml(doc), encoding="utf-8")
    summary = History(plan(load_scenario(path)), days=DAYS, interval_s=900).write(
        tmp_path / "r.parquet"
    )
    ledger = pl.read_parquet(summary.paths.faults)
    assert set(ledger.get_column("kind")) == set(FAULT_KINDS)
    # Rollovers open below the modulus by hours of nominal load: each one wraps in the run.
    configured = [f for f in doc["faults"] if f["kind"] == "rollover"]
    wraps = ledger.filter(pl.col("kind") == "rollover")
    assert wraps.height >= len(configured)
    # Times are relative to the run start and land where the document says.
    start = plan(load_scenario(path)).start
    leak = next(f for f in doc["faults"] if f["kind"] == "leak")
    first_leak = ledger.filter(pl.col("kind") == "leak").sort("start").row(0, named=True)
    assert first_leak["start"].timestamp() >= start + parse_duration("3d")
    assert leak["start"].startswith("+")
