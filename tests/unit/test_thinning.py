"""Thinning keeps totals recoverable, whatever the pass boundaries; fill alarms fire once."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_agent.thinning import (
    CounterPoint,
    CounterRow,
    FillAlarm,
    Thinner,
    counter_delta_sum,
    plan_thinning,
    reset_aware_consumption,
    thin_series,
)

KEEP_S = 900.0


@st.composite
def counter_series(draw: st.DrawFn) -> list[CounterPoint]:
    """A counter polled at irregular intervals, with occasional resets and missing values."""
    n = draw(st.integers(1, 120))
    ts = draw(st.floats(1.7e9, 1.8e9, allow_nan=False))
    value = draw(st.floats(0, 1e6, allow_nan=False))
    points = []
    for seq in range(1, n + 1):
        ts += draw(st.sampled_from([1.0, 5.0, 60.0, 300.0, 1000.0]))
        step = draw(st.sampled_from(["up", "up", "up", "flat", "reset", "null"]))
        if step == "up":
            value += draw(st.floats(0, 50, allow_nan=False))
        elif step == "reset":
            value = draw(st.floats(0, 10, allow_nan=False))
        points.append(CounterPoint(seq, ts, None if step == "null" else value))
    return points


def passes(points: list[CounterPoint], cuts: list[int]) -> list[list[CounterPoint]]:
    bounds = sorted({c % (len(points) + 1) for c in cuts} | {0, len(points)})
    return [points[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def thin_in_passes(points: list[CounterPoint], cuts: list[int]) -> list[CounterPoint]:
    thinner = Thinner(KEEP_S)
    dropped: set[int] = set()
    for chunk in passes(points, cuts):
        dropped |= set(thinner.thin(CounterRow("m", "energy_import_kwh", p) for p in chunk))
    return [p for p in points if p.seq not in dropped]


def values(points: list[CounterPoint]) -> list[float]:
    return [p.value for p in points if p.value is not None]


@settings(max_examples=150, deadline=None)
@given(counter_series(), st.lists(st.integers(0, 400), max_size=8))
def test_totals_survive_thinning_in_any_passes(points: list[CounterPoint], cuts: list[int]) -> None:
    kept = thin_in_passes(points, cuts)
    original, thinned = values(points), values(kept)
    # Sum of consecutive deltas over kept rows == last - first of the original.
    assert math.isclose(
        counter_delta_sum(thinned), original[-1] - original[0] if original else 0.0,
        rel_tol=1e-9, abs_tol=1e-6,
    )  # fmt: skip
    assert math.isclose(
        reset_aware_consumption(thinned), reset_aware_consumption(original),
        rel_tol=1e-9, abs_tol=1e-6,
    )  # fmt: skip
    # The series' ends are never given up.
    assert kept[0] == points[0]
    assert kept[-1] == points[-1]


@settings(max_examples=100, deadline=None)
@given(counter_series(), st.lists(st.integers(0, 400), max_size=8))
def test_density_is_one_per_bucket_plus_anchors(
    points: list[CounterPoint], cuts: list[int]
) -> None:
    kept = thin_in_passes(points, cuts)
    buckets = len({math.floor(p.ts / KEEP_S) for p in points})
    vals = [p.value for p in points if p.value is not None]
    decreases = sum(1 for a, b in itertools.pairwise(vals) if b < a)
    # first/last (valued or not) + one per bucket + both sides of every decrease; passes
    # add at most one "last valued" row each when a pass ends on a missing value.
    assert len(kept) <= buckets + 2 * decreases + 4 + len(cuts)


@given(counter_series())
def test_thinning_twice_drops_nothing_more(points: list[CounterPoint]) -> None:
    once = [p for p in points if p.seq not in thin_series(points, KEEP_S)]
    assert thin_series(once, KEEP_S) == set()


def test_one_sample_per_bucket_of_a_regular_series() -> None:
    points = [CounterPoint(i, 60.0 * i, 10.0 + i) for i in range(121)]  # 2 h at 1/min
    kept = [p.seq for p in points if p.seq not in thin_series(points, KEEP_S)]
    assert kept == [0, 15, 30, 45, 60, 75, 90, 105, 120]


def test_series_are_thinned_separately() -> None:
    rows = [
        CounterRow(meter, "energy_import_kwh", CounterPoint(seq, 60.0 * (seq // 2), float(seq)))
        for seq in range(60)
        for meter in ["a" if seq % 2 == 0 else "b"]
    ]
    drop = set(plan_thinning(rows, KEEP_S))
    kept_a = [r.point.seq for r in rows if r.meter_id == "a" and r.point.seq not in drop]
    kept_b = [r.point.seq for r in rows if r.meter_id == "b" and r.point.seq not in drop]
    assert kept_a == [0, 30, 58]
    assert kept_b == [1, 31, 59]


def test_keep_span_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Thinner(0)


def test_fill_alarm_fires_once_per_crossing() -> None:
    alarm = FillAlarm()
    assert alarm.update(0.5) == []
    assert alarm.update(0.81) == [0.8]
    assert alarm.update(0.85) == []
    assert alarm.update(0.96) == [0.95]
    assert alarm.update(0.99) == []
    assert alarm.update(0.93) == []  # hovering near 95 %: not re-armed yet
    assert alarm.update(0.96) == []
    assert alarm.update(0.70) == []  # well below both: both re-armed
    assert alarm.update(0.97) == [0.8, 0.95]
    assert alarm.active(0.9) == (0.8,)
