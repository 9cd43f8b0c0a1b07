"""Scenario files: the shipped ones load; broken ones say what is wrong and where."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from simulators.catalogue import PROFILES
from simulators.faults import FAULT_KINDS
from simulators.scenario import (
    ScenarioError,
    load_scenario,
    parse_duration,
    parse_scenario,
    plan,
    resolve_instant,
)

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"


def test_residential_small() -> None:
    p = plan(load_scenario(SCENARIOS / "residential-small.toml"))
    kinds = {m.load for m in p.meters}
    assert {"household", "lighting", "lift", "pump", "weather"} <= kinds
    flats = [m for m in p.meters if m.kind == "electricity" and m.load == "household"]
    assert 40 <= len(flats) <= 45
    assert sum(m.kind == "water" for m in p.meters) == 40
    assert {f.kind for f in p.faults} == set(FAULT_KINDS)
    assert p.start == int(datetime(2026, 1, 4, 16, tzinfo=UTC).timestamp())  # 00:00 +08:00


def test_office_tower() -> None:
    p = plan(load_scenario(SCENARIOS / "office-tower.toml"))
    floors = [m for m in p.meters if m.profile == "schneider-iem3155" and m.load == "office"]
    assert len(floors) == 30
    assert {m.occupancy for m in floors} == {"office"}
    assert {"hvac", "lift", "pump", "lighting"} <= {m.load for m in p.meters}


def test_mixed_fleet() -> None:
    p = plan(load_scenario(SCENARIOS / "mixed-fleet.toml"))
    assert len(p.meters) >= 2000
    assert len(p.projects) >= 5
    zones = {proj.time_zone for proj in p.projects.values()}
    assert {"Europe/Berlin", "America/New_York"} <= zones
    assert len(zones) >= 4
    assert {m.profile for m in p.meters} == set(PROFILES)
    assert {m.kind for m in p.meters} == {"electricity", "water", "weather"}
    assert {f.kind for f in p.faults} == set(FAULT_KINDS)
    buses: dict[tuple[str, int], str] = {}
    for m in p.meters:
        if m.unit_id is not None:
            assert m.bus is not None
            assert 1 <= m.unit_id <= 247
            assert buses.setdefault((m.bus, m.unit_id), m.meter_id) == m.meter_id


def minimal(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "scenario": {"name": "x", "seed": 1},
        "projects": [
            {
                "id": "p",
                "meters": [
                    {
                        "id": "m{n}",
                        "count": 2,
                        "kind": "electricity",
                        "profile": "eastron-sdm630",
                        "load": "pump",
                    },
                    {"id": "w1", "kind": "water", "profile": "water-generic"},
                    {"id": "s1", "kind": "electricity", "profile": "eastron-sdm120"},
                ],
            }
        ],
        "faults": [],
    }
    data.update(copy.deepcopy(changes))
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data, "s.toml")
    assert str(err.value).startswith("s.toml: ")
    return err.value.problems


def test_minimal_is_valid() -> None:
    assert len(plan(parse_scenario(minimal())).meters) == 4


def with_meter(**fields: Any) -> dict[str, Any]:
    data = minimal()
    data["projects"][0]["meters"][0].update(fields)
    return data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_meter(profile="sdm630"), "projects[0].meters[0]: unknown profile 'sdm630'"),
        (with_meter(kind="water"), "is a electricity meter, not water"),
        (with_meter(load="bakery"), "load 'bakery' does not fit a electricity meter"),
        (with_meter(colour="red"), "projects[0].meters[0].colour: Extra inputs are not permitted"),
        (with_meter(id="m"), "id 'm' needs {n} when count > 1"),
        (with_meter(id="m{x}"), "may only use {n} and {b}"),
        (with_meter(serial="ABC{n}"), "is not a decimal number"),
        (with_meter(modulus={"power_w": 10.0}), "'power_w' is not a counter of eastron-sdm630"),
        (with_meter(unit_id_start=1, bus="b"), None),
        (minimal(scenario={"name": "x", "time_zone": "Mars/Olympus"}), "unknown IANA time zone"),
    ],
)
def test_meter_group_errors(data: dict[str, Any], expected: str | None) -> None:
    if expected is None:
        parse_scenario(data)
        return
    found = problems(data)
    assert any(expected in p for p in found), found


def test_project_errors() -> None:
    data = minimal()
    data["projects"][0]["time_zone"] = "Nowhere/Land"
    assert any("projects[0].time_zone" in p and "Nowhere/Land" in p for p in problems(data))
    data = minimal()
    data["projects"].append(copy.deepcopy(data["projects"][0]))
    found = problems(data)
    assert any("duplicate project id 'p'" in p for p in found)
    assert any("duplicate meter id 'm1'" in p for p in found)


def test_unit_ids_must_be_unique_on_a_bus() -> None:
    data = minimal()
    data["projects"][0]["meters"][0].update(bus="bus-1", unit_id_start=5)
    data["projects"][0]["meters"][2].update(bus="bus-1", unit_id_start=6)
    assert any("share unit id 6 on bus 'bus-1'" in p for p in problems(data))


def test_unit_ids_continue_on_a_shared_bus() -> None:
    data = minimal()
    data["projects"][0]["meters"][0]["bus"] = "shared"
    data["projects"][0]["meters"][2]["bus"] = "shared"
    p = plan(parse_scenario(data))
    assert [(m.meter_id, m.unit_id) for m in p.meters if m.bus == "shared"] == [
        ("m1", 1),
        ("m2", 2),
        ("s1", 3),
    ]


def test_too_many_problems_are_summarised() -> None:
    data = minimal()
    data["projects"][0]["meters"][0].update(count=300, bus="one-bus", per_bus=247)
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data)
    message = str(err.value)
    assert "more problems" in message
    assert len(message.splitlines()) == ScenarioError.SHOWN + 1


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"kind": "leak", "meter": "m1", "start": "+1d"}, "a leak needs a water meter"),
        ({"kind": "leak", "meter": "nope"}, "no meter matches 'nope'"),
        ({"kind": "spike", "meter": "m1", "start": "+1d"}, "this fault needs an `end`"),
        ({"kind": "phase_loss", "meter": "s1"}, "phase_loss needs a three-phase meter"),
        ({"kind": "degradation", "meter": "s1"}, "give it a pump"),
        ({"kind": "ct_reversal", "meter": "s1", "phases": [2]}, "only has phase 1"),
        (
            {"kind": "rollover", "meter": "m1", "modulus": 10, "start_value": 11},
            "start_value must be below modulus",
        ),
        (
            {
                "kind": "rollover",
                "meter": "m1",
                "channel": "power_w",
                "modulus": 10,
                "start_value": 1,
            },
            "'power_w' is not one of its counters",
        ),
        (
            {"kind": "stuck", "meter": "w1", "end": "+1d", "channels": ["power_w"]},
            "has no channel 'power_w'",
        ),
        ({"kind": "reset", "meter": "m1", "end": "+1d"}, "happens at an instant"),
        ({"kind": "slow", "meter": "m1", "end": "+1d"}, "delay_ms"),
        ({"kind": "busy", "meter": "m1", "end": "+1d", "probability": 2}, "probability"),
        ({"kind": "no_response", "meter": "m1", "end": "soon"}, "bad time 'soon'"),
        ({"kind": "no_response", "meter": "m1", "end": "+1x"}, "bad duration '1x'"),
        (
            {"kind": "no_response", "meters": ["m*"], "meter": "m1", "end": "+1d"},
            "exactly one of `meter`",
        ),
        ({"kind": "teleport", "meter": "m1"}, "faults[0]"),
        ({"kind": "replacement", "meter": "m1", "new_serial": 2**33}, "new_serial"),
    ],
)
def test_fault_errors(fault: dict[str, Any], expected: str) -> None:
    found = problems(minimal(faults=[fault]))
    assert any(expected in p for p in found), found


def test_fault_targets_by_glob_and_times() -> None:
    data = minimal(
        faults=[
            {"kind": "no_response", "meters": ["m*"], "start": "+1d2h", "end": "+1d3h"},
            {"kind": "clock_drift", "meter": "s1", "start": "2026-01-02T08:00:00"},
            {"kind": "retrofit", "meter": "m2", "start": "2026-01-03", "savings_pct": 10},
        ]
    )
    data["scenario"]["start"] = "2026-01-01T00:00:00+08:00"
    p = plan(parse_scenario(data))
    by = {(f.meter_id, f.kind): f for f in p.faults}
    day = 86400
    assert by[("m1", "no_response")].start == p.start + day + 7200
    assert by[("m2", "no_response")].end == p.start + day + 3 * 3600
    # Naive times are the project's local time (Asia/Shanghai by default).
    assert by[("s1", "clock_drift")].start == p.start + day + 8 * 3600
    assert by[("m2", "retrofit")].start == p.start + 2 * day
    assert by[("s1", "clock_drift")].end is None


def test_run_start_and_seed_override() -> None:
    scenario = parse_scenario(minimal())
    p = plan(scenario, start="2026-07-01", seed=5)
    assert p.seed == 5
    assert p.start == int(datetime(2026, 6, 30, 16, tzinfo=UTC).timestamp())
    with pytest.raises(ScenarioError, match="whole minute"):
        plan(scenario, start="2026-07-01T00:00:30+00:00")


def test_durations_and_instants() -> None:
    assert parse_duration("1d6h30m15s") == 109815
    assert parse_duration("90s") == 90
    assert parse_duration("0") == 0
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("6h1d")
    assert resolve_instant("+2h", "UTC", 100) == 7300
    assert resolve_instant("2026-01-01T00:00:00Z", "Asia/Shanghai") == 1767225600
    assert resolve_instant("2026-01-01", "Asia/Shanghai") == 1767225600 - 8 * 3600


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="file not found"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\nname = 1\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="invalid TOML"):
        load_scenario(bad)
