"""Counter semantics under random abuse: a register model with rollovers, resets, replacements,
bad reads and gaps, against the consumption it really saw.

Each example draws a few streams. A stream's true use per interval is drawn first; its register
then opens near a modulus (so it wraps), may be reset right after a read (so what the register
shows equals what was used, and `reset_fill="counted"` must give the truth exactly), may be
replaced between two reads (closing and opening in the ledger), and its reads may be zeros,
NaN sentinels, comm errors, jumps that come back, or missing rows. Register events, bad reads
and gaps are kept apart from each other (a bad read right at a reset is ambiguous by nature) and
off the first and last reads (which bound what can be measured).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.consumption import ConsumptionParams, consumption

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
STEP = dt.timedelta(minutes=15)
MODULUS = 10_000.0
COUNTED = ConsumptionParams(reset_fill="counted")


@dataclass
class Stream:
    meter: str
    use: list[float]  # true use in each interval between consecutive reads
    rows: list[dict[str, Any]] = field(default_factory=list)
    replacements: list[dict[str, Any]] = field(default_factory=list)
    declared: bool = True  # modulus in the ledger (else inferred from the power of ten)


@st.composite
def streams(draw: st.DrawFn, meter: str) -> Stream:
    n = draw(st.integers(min_value=6, max_value=90))
    # Use between 0.5 and 5 per interval (a few idle intervals): plausible against the
    # stream's own mean rate, as every real meter's steps are.
    # The last intervals use something: a register that stays at zero to the end after a
    # reset looks exactly like trailing zero reads, which wait for the register to come back.
    use = [
        draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0]) | st.floats(0.5, 5.0, width=32))
        if i < n - 5
        else draw(st.floats(0.5, 5.0, width=32))
        for i in range(n - 1)
    ]
    register = draw(
        st.floats(0.0, 60.0, width=32, exclude_min=True).map(lambda x: MODULUS - x)  # wraps soon
        | st.floats(1_000.0, 8_000.0, width=32)
    )
    k = max(n - 1, 1)
    kinds = draw(st.lists(st.sampled_from(["reset", "replacement"]), max_size=3).map(sorted))
    # Register events at distinct reads, apart from each other and from the ends.
    at = draw(st.permutations(range(2, k - 1)))[: len(kinds)] if k > 6 else []
    events: dict[int, str] = dict(zip(sorted(at), draw(st.permutations(kinds)), strict=False))
    s = Stream(meter=meter, use=use, declared=draw(st.booleans()))
    values: list[float] = [register]
    for i, u in enumerate(use, start=1):
        what = events.get(i)
        # A reset just below the modulus looks exactly like a rollover, and one of a register
        # below what it counts next like growth: none drawn there.
        if what == "reset" and 500 <= register < MODULUS - 500:
            # restarted right after read i - 1: shows what it used since
            register = u
        elif what == "replacement":  # swapped partway through the interval
            part = draw(st.floats(0.0, 1.0))
            closing = register + part * u
            opening = float(draw(st.integers(0, 80)))
            s.replacements.append(
                {"at": T0 + (i - 1) * STEP + dt.timedelta(minutes=7), "old_serial": 1,
                 "new_serial": 2, "channel": "energy_import_kwh", "closing": closing,
                 "opening": opening}
            )  # fmt: skip
            register = opening + (1.0 - part) * u
        else:
            # No exact zero among the last reads (see above).
            bump = 0.25 if i >= n - 5 and register + u == MODULUS else 0.0
            use[i - 1] = u + bump
            register += u + bump
            if register >= MODULUS:
                register -= MODULUS
                events[i] = "wrap"  # a register event too: bad reads stay clear of it
        values.append(register)
    # Bad reads and gaps: at reads away from the register events and the ends.
    quiet = [i for i in range(2, n - 2) if all(abs(i - e) > 4 for e in events)]
    spoiled = draw(st.lists(st.sampled_from(quiet), unique=True, max_size=4)) if quiet else []
    spoiled = [i for i in sorted(spoiled) if all(abs(i - j) > 4 for j in spoiled if j < i)]
    faults = {i: draw(st.sampled_from(["zero", "nan", "comm", "jump", "missing"])) for i in spoiled}
    for i, v in enumerate(values):
        fault = faults.get(i)
        if fault == "missing":
            continue
        row = {"ts": T0 + i * STEP, "value": v, "quality": "good"}
        if fault == "zero":
            row["value"] = 0.0
        elif fault == "nan":
            row.update(value=float("nan"), quality="nan_sentinel")
        elif fault == "comm":
            row.update(value=None, quality="comm_error")
        elif fault == "jump":
            row["value"] = v + 50_000.0
        s.rows.append(row)
    return s


@st.composite
def fleets(draw: st.DrawFn) -> list[Stream]:
    count = draw(st.integers(1, 3))
    return [draw(streams(f"m{i}")) for i in range(count)]


def frames(fleet: list[Stream]) -> tuple[pl.DataFrame, pl.DataFrame]:
    rows = [
        {"meter_id": s.meter, "channel": "energy_import_kwh", **r} for s in fleet for r in s.rows
    ]
    readings = pl.DataFrame(
        rows,
        schema={"meter_id": pl.String, "channel": pl.String, "ts": pl.Datetime("us", "UTC"),
                "value": pl.Float64, "quality": pl.String},
    )  # fmt: skip
    meters = pl.DataFrame(
        {
            "meter_id": [s.meter for s in fleet],
            "counters": [
                [
                    {
                        "channel": "energy_import_kwh",
                        "opening": 0.0,
                        "modulus": MODULUS if s.declared else None,
                    }
                ]
                for s in fleet
            ],
            "replacements": [s.replacements for s in fleet],
        },
        schema={
            "meter_id": pl.String,
            "counters": pl.List(
                pl.Struct({"channel": pl.String, "opening": pl.Float64, "modulus": pl.Float64})
            ),
            "replacements": pl.List(
                pl.Struct(
                    {
                        "at": pl.Datetime("us", "UTC"),
                        "old_serial": pl.Int64,
                        "new_serial": pl.Int64,
                        "channel": pl.String,
                        "closing": pl.Float64,
                        "opening": pl.Float64,
                    }
                )
            ),
        },
    )
    return readings, meters


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(fleets())
def test_consumption_sums_equal_the_true_sums(fleet: list[Stream]) -> None:
    readings, meters = frames(fleet)
    out = consumption(readings, meters, params=COUNTED)
    iv = out.intervals
    assert iv["consumption"].null_count() == 0
    assert (iv["consumption"] >= 0).all()
    assert "unexplained_drop" not in out.events["event"].cast(pl.String).to_list()
    for s in fleet:
        mine = iv.filter(pl.col("meter_id") == s.meter)
        assert mine["consumption"].sum() == pytest.approx(sum(s.use), rel=1e-9, abs=1e-6)
        # One contiguous interval per slot from the first read to the last.
        assert mine.height == len(s.use)
        assert mine["start"][1:].to_list() == mine["end"][:-1].to_list()


@PROPERTY
@given(fleets())
def test_no_negative_consumption_and_resets_only_add(fleet: list[Stream]) -> None:
    readings, meters = frames(fleet)
    counted = consumption(readings, meters, params=COUNTED).intervals
    topped = consumption(readings, meters).intervals
    assert (topped["consumption"].fill_null(0.0) >= 0).all()
    assert topped.select("meter_id", "start").equals(counted.select("meter_id", "start"))
    # Topping a reset up never takes anything away from what the registers showed.
    assert (topped["consumption"] >= counted["consumption"] - 1e-9).all()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.just(float("nan")), st.just(float("inf")), st.floats(-1e6, 1e7)),
        max_size=40,
    ),
    st.lists(
        st.sampled_from(["good", "nan_sentinel", "comm_error", "clock_suspect", "out_of_range"]),
        min_size=40,
        max_size=40,
    ),
)
def test_any_garbage_gives_no_negative_value_and_contiguous_intervals(
    values: list[float | None], quality: list[str]
) -> None:
    readings = pl.DataFrame(
        {
            "meter_id": ["m"] * len(values),
            "channel": ["water_volume_m3"] * len(values),
            "ts": [T0 + i * STEP for i in range(len(values))],
            "value": values,
            "quality": quality[: len(values)],
        },
        schema={"meter_id": pl.String, "channel": pl.String, "ts": pl.Datetime("us", "UTC"),
                "value": pl.Float64, "quality": pl.String},
    )  # fmt: skip
    out = consumption(readings)
    iv = out.intervals
    assert (iv["consumption"].drop_nulls() >= 0).all()
    assert iv["consumption"].drop_nulls().is_finite().all()
    assert iv["start"][1:].to_list() == iv["end"][:-1].to_list()
    assert (iv["consumption"].is_null() == iv["quality"].is_null()).all()
