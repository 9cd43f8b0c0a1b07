"""Main meter against its sub-meters (analytics.detectors.balance), on synthetic trees: the
simulator has no meter hierarchy, so each test builds a main meter and its sub-meters' 15-minute
consumption by hand, with a known unmetered load, losses or a double-counted sub.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from analytics import frames
from analytics.detectors.balance import BalanceParams, balance_windows, detect_balance

T0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
STEP = dt.timedelta(minutes=15)
N = 2 * 96  # two days of 15-minute intervals
SUBS = ("sub-a", "sub-b", "sub-c")
METERS = pl.DataFrame(
    {"meter_id": ["main", *SUBS], "parent_meter_id": [None, "main", "main", "main"]}
)


def intervals(meter_id: str, kwh: np.ndarray, quality: str = "measured") -> pl.DataFrame:
    starts = [T0 + i * STEP for i in range(kwh.size)]
    return pl.DataFrame(
        {
            "meter_id": meter_id,
            "channel": "energy_import_kwh",
            "start": starts,
            "end": [s + STEP for s in starts],
            "consumption": kwh,
            "quality": quality,
        },
        schema=frames.CONSUMPTION_SCHEMA,
    )


def tree(
    losses: float = 0.02, extra: np.ndarray | None = None, seed: int = 1
) -> dict[str, np.ndarray]:
    """Sub-meter loads (a daily shape with noise) and a main = subs x (1 + losses) + extra."""
    rng = np.random.default_rng(seed)
    hour = (np.arange(N) % 96) / 4.0
    shape = 1.0 + 0.8 * np.sin((hour - 6.0) / 24.0 * 2 * np.pi).clip(0)
    subs = {m: shape * (0.5 + 0.5 * rng.random()) * (1 + 0.05 * rng.random(N)) for m in SUBS}
    main: np.ndarray = np.sum(list(subs.values()), axis=0) * (1.0 + losses)
    if extra is not None:
        main = main + extra
    return {"main": main, **subs}


def consumption(series: dict[str, np.ndarray]) -> pl.DataFrame:
    return pl.concat([intervals(m, v) for m, v in series.items()])


def test_a_tree_within_its_losses_is_in_balance() -> None:
    found = detect_balance(None, consumption(tree(losses=0.03)), METERS)
    assert found.schema == frames.FINDINGS_SCHEMA
    assert found.is_empty()


def test_an_unmetered_load_is_found_with_its_figures() -> None:
    extra = np.zeros(N)
    extra[40:80] = 0.4  # 1.6 kW tapped before the sub-meters, 10:00-20:00 on day one
    series = tree(extra=extra)
    found = detect_balance(None, consumption(series), METERS)
    assert found.height == 1
    row = found.row(0, named=True)
    assert (row["subject"], row["rule"], row["kind"]) == ("main", "balance.unmetered", "balance")
    assert (row["start"], row["end"]) == (T0 + dt.timedelta(hours=10), T0 + dt.timedelta(hours=20))
    ev = json.loads(row["evidence"])
    main = series["main"][40:80].sum()
    subs = sum(series[m][40:80].sum() for m in SUBS)
    assert ev["main_kwh"] == pytest.approx(main, rel=1e-5)
    assert ev["subs_kwh"] == pytest.approx(subs, rel=1e-5)
    assert ev["difference_kwh"] == pytest.approx(main - subs, rel=1e-4)
    assert ev["sub_meters"] == list(SUBS)
    assert ev["windows"] == 10
    assert len(ev["values"]) == 10
    assert ev["parameters"]["tolerance_pct"] == BalanceParams().tolerance_pct
    share = 100 * (main - subs) / main
    assert row["severity"] == ("critical" if share >= 20 else "warning")


def test_subs_adding_up_to_more_than_the_main_is_its_own_rule() -> None:
    series = tree()
    series["sub-b"] = series["sub-b"] * 2.0  # a CT ratio set twice too high
    found = detect_balance(None, consumption(series), METERS)
    assert found["rule"].to_list() == ["balance.subs_exceed_main"]
    assert found["start"].to_list() == [T0]
    assert found["end"].to_list() == [T0 + N * STEP]


def test_a_short_excursion_or_a_quiet_night_is_not_a_finding() -> None:
    extra = np.zeros(N)
    extra[40:48] = 0.5  # two hours only
    series = tree(extra=extra)
    # A quiet night: 5 % off but under the absolute floor of 0.1 kWh an hour.
    small = {m: v * 0.01 for m, v in tree(losses=0.08, seed=2).items()}
    assert detect_balance(None, consumption(series), METERS).is_empty()
    assert detect_balance(None, consumption(small), METERS).is_empty()


def test_windows_with_a_silent_or_estimated_child_are_not_judged() -> None:
    extra = np.full(N, 0.4)
    series = tree(extra=extra)
    c = consumption(series)
    # sub-c silent for the first day, estimated on the second: nothing can be judged.
    gappy = c.filter(~((pl.col("meter_id") == "sub-c") & (pl.col("start") < T0 + 96 * STEP)))
    gappy = gappy.with_columns(
        quality=pl.when(pl.col("meter_id") == "sub-c")
        .then(pl.lit("estimated"))
        .otherwise(pl.col("quality"))
        .cast(frames.CONSUMPTION_QUALITY_ENUM)
    )
    assert balance_windows(None, gappy, METERS).is_empty()
    assert detect_balance(None, gappy, METERS).is_empty()
    # Trusting estimates is a parameter: then the second day is judged.
    trusting = detect_balance(None, gappy, METERS, params=BalanceParams(measured_only=False))
    assert trusting["start"].to_list() == [T0 + dt.timedelta(days=1)]


def test_no_hierarchy_no_finding() -> None:
    series = tree(extra=np.full(N, 1.0))
    flat = pl.DataFrame({"meter_id": ["main", *SUBS]})
    assert detect_balance(None, consumption(series), flat).is_empty()
    assert detect_balance(None, consumption(series), None).is_empty()


def test_register_readings_stand_in_for_consumption() -> None:
    extra = np.zeros(N)
    extra[100:140] = 0.6
    series = tree(extra=extra)
    ts = [T0 + i * STEP for i in range(N + 1)]
    readings = pl.concat(
        pl.DataFrame(
            {
                "meter_id": m,
                "channel": "energy_import_kwh",
                "ts": ts,
                "value": 1000.0 + np.concatenate([[0.0], np.cumsum(v)]),
                "quality": "good",
            }
        )
        for m, v in series.items()
    ).with_columns(pl.col("ts").cast(frames.TS))
    from_registers = detect_balance(readings, None, METERS)
    from_consumption = detect_balance(None, consumption(series), METERS)
    assert from_registers.height == 1
    assert from_registers.select("subject", "rule", "start", "end").equals(
        from_consumption.select("subject", "rule", "start", "end")
    )


def test_output_does_not_depend_on_row_order() -> None:
    extra = np.zeros(N)
    extra[20:60] = 0.5
    extra[120:170] = -0.9
    c = consumption(tree(extra=extra))
    first = detect_balance(None, c, METERS)
    again = detect_balance(None, c.sample(fraction=1.0, shuffle=True, seed=11), METERS)
    assert first.height == 2
    assert first.equals(again)
