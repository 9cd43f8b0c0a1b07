"""The analytics pass as a whole: the steps fit together on awkward input."""

from __future__ import annotations

import datetime as dt

import polars as pl

from analytics.pipeline import run_pass
from tests.support.detector_data import simulated


def _meters() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "meter_id": ["m1"],
            "project": ["p"],
            "building": ["b"],
            "kind": ["electricity"],
            "load": ["household"],
            "time_zone": ["Asia/Shanghai"],
        }
    )


def test_an_unexplained_drop_leaves_a_hole_not_a_crash() -> None:
    t0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    values = [5000.0 + i for i in range(8)] + [3000.0 + i for i in range(8)]
    readings = pl.DataFrame(
        {
            "meter_id": "m1",
            "channel": "energy_import_kwh",
            "ts": [t0 + dt.timedelta(minutes=15 * i) for i in range(len(values))],
            "value": values,
            "quality": "good",
        }
    )
    out = run_pass(readings, _meters())
    hole = out.intervals.filter(pl.col("consumption").is_null())
    assert hole.height == 1
    assert hole["start"].item() == t0 + dt.timedelta(minutes=15 * 7)
    assert out.intervals["consumption"].drop_nulls().to_list() == [1.0] * 14
    drops = out.findings.filter(pl.col("kind") == "unexplained_drop")
    assert drops["subject"].to_list() == ["m1"]
    day = out.rollups.filter(level="meter", period="day", channel="energy_import_kwh")
    assert day["consumption"].sum() == 14.0  # the hole is not summed as anything


def test_enum_and_string_ids_give_the_same_pass() -> None:
    """The pass keeps dictionary-encoded ids as they come (memory); strings must give the same
    bytes out."""
    estate = simulated(days=3.0)
    as_enums = run_pass(estate.readings, estate.meters)
    as_strings = run_pass(
        estate.readings.with_columns(pl.col("meter_id", "channel", "quality").cast(pl.String)),
        estate.meters,
    )
    assert isinstance(estate.readings.schema["meter_id"], pl.Enum)
    for name in ("intervals", "events", "findings", "rollups"):
        a, b = getattr(as_enums, name), getattr(as_strings, name)
        assert a.height > 0, name
        assert a.schema == b.schema, name
        assert a.equals(b), name
