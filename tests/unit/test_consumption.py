"""Consumption from counter registers: a test per way a register misleads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from analytics.consumption import ConsumptionParams, ConsumptionResult, consumption
from analytics.frames import CONSUMPTION_SCHEMA, COUNTER_EVENTS_SCHEMA
from simulators.history import History
from simulators.scenario import load_scenario, plan

T0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)  # a Monday, 00:00 UTC
Q = dt.timedelta(minutes=15)
KWH = "energy_import_kwh"


def reads(
    values: Sequence[float | None],
    *,
    meter: str = "m1",
    channel: str = KWH,
    start: dt.datetime = T0,
    step: dt.timedelta = Q,
    quality: Sequence[str] | None = None,
    slots: Sequence[int] | None = None,
) -> pl.DataFrame:
    """One stream's readings at start + slot * step (slots default 0, 1, 2, ...)."""
    at = range(len(values)) if slots is None else slots
    return pl.DataFrame(
        {
            "meter_id": [meter] * len(values),
            "channel": [channel] * len(values),
            "ts": [start + k * step for k in at],
            "value": list(values),
            "quality": list(quality) if quality is not None else ["good"] * len(values),
        },
        schema={
            "meter_id": pl.String,
            "channel": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "value": pl.Float64,
            "quality": pl.String,
        },
    )


def meters(**columns: list[Any]) -> pl.DataFrame:
    return pl.DataFrame({"meter_id": ["m1"], **columns})


def counters(modulus: float | None) -> list[list[dict[str, Any]]]:
    return [[{"channel": KWH, "opening": 0.0, "modulus": modulus}]]


def values(out: ConsumptionResult) -> list[float | None]:
    return [None if v is None else round(v, 9) for v in out.intervals["consumption"].to_list()]


def qualities(out: ConsumptionResult) -> list[str | None]:
    return out.intervals["quality"].cast(pl.String).to_list()


def events(out: ConsumptionResult) -> list[str]:
    return out.events["event"].cast(pl.String).to_list()


def assert_contiguous(out: ConsumptionResult, step: dt.timedelta = Q) -> None:
    iv = out.intervals
    for _, g in iv.group_by("meter_id", "channel"):
        assert (g["end"] - g["start"]).unique().to_list() == [step]
        assert g["start"][1:].to_list() == g["end"][:-1].to_list()


def test_plain_register_gives_measured_deltas_on_the_stream_grid() -> None:
    out = consumption(reads([10.0, 11.0, 13.5, 13.5]))
    assert out.intervals.schema == CONSUMPTION_SCHEMA
    assert out.events.schema == COUNTER_EVENTS_SCHEMA
    assert values(out) == [1.0, 2.5, 0.0]
    assert qualities(out) == ["measured"] * 3
    assert out.intervals["start"].to_list() == [T0, T0 + Q, T0 + 2 * Q]
    assert out.intervals["end"].to_list() == [T0 + Q, T0 + 2 * Q, T0 + 3 * Q]
    assert out.events.height == 0


def test_non_counter_channels_are_ignored() -> None:
    frame = pl.concat([reads([1.0, 2.0]), reads([230.0, 1.0], channel="voltage_l1_v")])
    out = consumption(frame)
    assert out.intervals["channel"].unique().to_list() == [KWH]


def test_rollover_at_the_ledger_modulus() -> None:
    out = consumption(reads([99_990.0, 99_998.0, 2.0, 9.0]), meters(counters=counters(100_000.0)))
    assert values(out) == [8.0, 4.0, 7.0]
    assert qualities(out) == ["measured"] * 3
    assert events(out) == ["rollover"]
    assert "(ledger)" in out.events["detail"][0]
    assert out.events["ts"][0] == T0 + 2 * Q


def test_rollover_at_an_undeclared_modulus_is_inferred_from_the_power_of_ten() -> None:
    out = consumption(reads([99_990.0, 99_995.0, 3.0, 8.0]))  # a 5-digit register
    assert values(out) == [5.0, 8.0, 5.0]
    assert events(out) == ["rollover"]
    assert "100000" in out.events["detail"][0]
    assert "(inferred)" in out.events["detail"][0]


def test_a_small_register_never_wraps_at_an_inferred_modulus() -> None:
    # 95 -> 2 could be a wrap at 100, but registers that small are not assumed to wrap.
    out = consumption(reads([90.0, 95.0, 2.0, 3.0]), params=ConsumptionParams(reset_fill="counted"))
    assert events(out) == ["reset"]
    assert values(out) == [5.0, 2.0, 1.0]


def test_a_wrap_right_after_an_idle_spell_is_still_a_rollover() -> None:
    # Idle for hours, then 5 kWh in the interval that wraps: more than the stream's mean rate
    # makes plausible, but the register was right below its modulus and lands near zero.
    out = consumption(
        reads([9_999.0] * 8 + [4.0, 4.5, 5.0, 5.5]), meters(counters=counters(10_000.0))
    )
    assert events(out) == ["rollover"]
    assert values(out) == [0.0] * 7 + [5.0, 0.5, 0.5, 0.5]


def test_a_jump_right_before_a_rollover_is_a_bad_read() -> None:
    out = consumption(reads([99_990.0, 99_995.0, 600_000.0, 99_998.0, 1.0, 4.0]))
    assert sorted(events(out)) == ["bad_read", "gap", "rollover"]
    assert sum(values(out)) == pytest.approx(14.0)  # type: ignore[arg-type]


def test_a_drop_far_from_the_ledger_modulus_is_not_a_rollover() -> None:
    out = consumption(
        reads([5_000.0, 5_001.0, 0.5, 1.5]),
        meters(counters=counters(100_000.0)),
        params=ConsumptionParams(reset_fill="counted"),
    )
    assert events(out) == ["reset"]
    assert values(out) == [1.0, 0.5, 1.0]


def test_reset_counts_from_zero_when_asked_to() -> None:
    out = consumption(
        reads([5_000.0, 5_001.0, 0.5, 1.5, 2.5]), params=ConsumptionParams(reset_fill="counted")
    )
    assert values(out) == [1.0, 0.5, 1.0, 1.0]
    assert qualities(out) == ["measured"] * 4
    assert events(out) == ["reset"]
    assert "counted from 0" in out.events["detail"][0]


def test_reset_is_topped_up_to_the_typical_interval_by_default() -> None:
    # The register restarted at the read: what it counted before the reset is lost, so the
    # interval gets the meter's typical use (1 kWh per interval here), flagged estimated.
    out = consumption(reads([5_000.0, 5_001.0, 5_002.0, 0.0, 1.0, 2.0]))
    assert values(out) == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert qualities(out) == ["measured", "measured", "estimated", "measured", "measured"]
    assert events(out) == ["reset"]
    assert "topped up" in out.events["detail"][0]


def test_reset_counted_more_than_typical_keeps_the_count() -> None:
    out = consumption(reads([5_000.0, 5_001.0, 5_002.0, 3.0, 4.0, 5.0]))
    assert values(out) == [1.0, 1.0, 3.0, 1.0, 1.0]
    assert qualities(out) == ["measured"] * 5


def test_replacement_seam_uses_closing_and_opening_readings() -> None:
    at = T0 + Q + dt.timedelta(minutes=10)
    swap = [{"at": at, "old_serial": 1, "new_serial": 2, "channel": KWH, "closing": 101.5,
             "opening": 10.0}]  # fmt: skip
    out = consumption(reads([100.0, 101.0, 10.25, 11.25]), meters(replacements=[swap]))
    # (closing - last old read) + (first new read - opening) = 0.5 + 0.25
    assert values(out) == [1.0, 0.75, 1.0]
    assert qualities(out) == ["measured"] * 3
    assert events(out) == ["replacement"]
    assert out.events["ts"][0] == at


def test_replacement_without_closing_reading_closes_at_the_last_old_read() -> None:
    at = T0 + Q + dt.timedelta(minutes=10)
    swap = [{"at": at, "old_serial": 1, "new_serial": 2, "channel": KWH, "closing": None,
             "opening": 0.0}]  # fmt: skip
    out = consumption(reads([100.0, 101.0, 0.25, 1.25]), meters(replacements=[swap]))
    assert values(out) == [1.0, 0.25, 1.0]


def test_replacement_of_another_channel_does_not_touch_this_one() -> None:
    swap = [{"at": T0 + Q, "old_serial": 1, "new_serial": 2, "channel": "water_volume_m3",
             "closing": 5.0, "opening": 0.0}]  # fmt: skip
    out = consumption(reads([100.0, 101.0, 102.0]), meters(replacements=[swap]))
    assert values(out) == [1.0, 1.0]
    assert out.events.height == 0


def test_a_reset_recorded_in_the_ledger_is_an_exact_seam() -> None:
    at = T0 + 2 * Q + dt.timedelta(minutes=5)
    note = [{"at": at, "old_serial": 7, "new_serial": 7, "channel": KWH, "closing": 5_002.5,
             "opening": 0.0}]  # fmt: skip
    out = consumption(reads([5_000.0, 5_001.0, 5_002.0, 0.5, 1.5]), meters(replacements=[note]))
    assert values(out) == [1.0, 1.0, 1.0, 1.0]
    assert qualities(out) == ["measured"] * 4


def test_a_replacement_on_a_stream_without_values_is_harmless() -> None:
    swap = [{"at": T0 + Q, "old_serial": 1, "new_serial": 2, "channel": KWH, "closing": 5.0,
             "opening": 0.0}]  # fmt: skip
    out = consumption(
        reads([None, None], quality=["comm_error", "comm_error"]), meters(replacements=[swap])
    )
    assert out.intervals.height == 0
    assert events(out) == ["replacement"]  # the ledger's seam lies within the stream's rows


def test_zero_read_is_a_bad_read_bridged_by_the_delta() -> None:
    out = consumption(reads([100.0, 101.0, 0.0, 103.0, 104.0]))
    assert values(out) == [1.0, 1.0, 1.0, 1.0]  # 101 -> 103 spread over two slots
    assert qualities(out) == ["measured", "estimated", "estimated", "measured"]
    assert events(out) == ["gap", "bad_read"]  # by time: the gap opens at the last kept read
    assert "zero read" in out.events["detail"][1]
    assert out.events["ts"].to_list() == [T0 + Q, T0 + 2 * Q]
    assert_contiguous(out)


def test_a_long_run_of_zero_reads_is_bridged() -> None:
    out = consumption(reads([100.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 106.0]))
    assert sum(values(out)) == pytest.approx(6.0)  # type: ignore[arg-type]
    assert events(out).count("bad_read") == 6
    assert "reset" not in events(out)


def test_leading_zero_read_is_bad_not_a_jump_from_zero() -> None:
    out = consumption(reads([0.0, 5_000.0, 5_001.0, 5_002.0]))
    assert values(out) == [1.0, 1.0]
    assert out.intervals["start"][0] == T0 + Q
    assert events(out) == ["bad_read"]


def test_a_new_register_starting_at_zero_is_not_a_bad_read() -> None:
    out = consumption(reads([0.0, 0.5, 1.0, 1.5]))
    assert values(out) == [0.5, 0.5, 0.5]
    assert out.events.height == 0


def test_an_unused_register_stays_at_zero_without_events() -> None:
    out = consumption(reads([0.0, 0.0, 0.0], channel="energy_export_kwh"))
    assert values(out) == [0.0, 0.0]
    assert out.events.height == 0


def test_nan_sentinel_and_comm_error_are_not_values() -> None:
    out = consumption(
        reads(
            [100.0, float("nan"), None, 103.0, 104.0],
            quality=["good", "nan_sentinel", "comm_error", "good", "good"],
        )
    )
    assert values(out) == [1.0, 1.0, 1.0, 1.0]
    assert qualities(out) == ["estimated"] * 3 + ["measured"]
    assert events(out) == ["gap", "bad_read"]  # sorted by time: the gap opens at the last read


def test_out_of_range_and_negative_reads_are_bad_reads() -> None:
    out = consumption(
        reads([100.0, 1e12, -5.0, 103.0], quality=["good", "out_of_range", "good", "good"])
    )
    assert values(out) == [1.0, 1.0, 1.0]
    assert events(out).count("bad_read") == 2


def test_implausible_jump_that_comes_back_is_a_bad_read() -> None:
    out = consumption(reads([100.0, 101.0, 50_000.0, 103.0, 104.0]))
    assert values(out) == [1.0, 1.0, 1.0, 1.0]
    assert events(out) == ["gap", "bad_read"]
    assert "jump" in out.events["detail"][1]


def test_two_jumps_in_a_row_that_come_back_are_bad_reads() -> None:
    out = consumption(reads([100.0, 101.0, 9_000.0, 9_500.0, 104.0, 105.0]))
    assert sum(values(out)) == pytest.approx(5.0)  # type: ignore[arg-type]
    assert events(out).count("bad_read") == 2


def test_a_step_up_that_stays_is_consumption() -> None:
    # A stuck register catching up: the jump does not come back, so it is consumption.
    out = consumption(reads([100.0, 100.0, 100.0, 130.0, 131.0]))
    assert values(out) == [0.0, 0.0, 30.0, 1.0]
    assert out.events.height == 0


def test_gap_is_spread_evenly_without_a_profile() -> None:
    out = consumption(reads([100.0, 101.0, 109.0, 110.0], slots=[0, 1, 5, 6]))
    assert values(out) == [1.0, 2.0, 2.0, 2.0, 2.0, 1.0]
    assert qualities(out) == ["measured"] + ["estimated"] * 4 + ["measured"]
    assert_contiguous(out)
    gap = out.events.filter(pl.col("event") == "gap")
    assert gap.height == 1
    assert gap["ts"][0] == T0 + Q
    assert "3 slots" in gap["detail"][0]


def test_gap_is_spread_by_the_meters_hour_of_week_profile() -> None:
    # 15-minute reads over two weeks: 3 kWh an interval on Wednesdays 08:00-12:00 UTC, 1 kWh
    # otherwise. A gap on Wednesday of week two is spread by week one's Wednesday, not by an
    # average day.
    n = 14 * 96
    wednesday = 2 * 96
    use = [3.0 if (k % (7 * 96)) // 96 == 2 and 32 <= k % 96 < 48 else 1.0 for k in range(n)]
    register = [1_000.0]
    for u in use:
        register.append(register[-1] + u)
    hole = range(7 * 96 + wednesday + 24, 7 * 96 + wednesday + 56)  # 06:00 to 14:00
    kept = [k for k in range(n + 1) if k not in hole]
    out = consumption(reads([register[k] for k in kept], slots=kept))
    got = out.intervals.filter(pl.col("quality") == "estimated")
    spread = use[hole.start - 1 : hole.stop]
    assert got.height == len(hole) + 1
    assert got["consumption"].to_list() == pytest.approx(spread)
    assert out.intervals["consumption"].sum() == pytest.approx(sum(use))


def test_gap_is_spread_by_the_hour_of_day_while_the_history_is_short() -> None:
    # Hourly reads over three days: one sample per hour of week, too few; hours of day have 2.
    use = [3.0 if 8 <= h % 24 < 12 else 1.0 for h in range(72)]
    register = [1_000.0]
    for u in use:
        register.append(register[-1] + u)
    hole = range(48 + 6, 48 + 14)
    kept = [k for k in range(73) if k not in hole]
    out = consumption(
        reads([register[k] for k in kept], slots=kept, step=dt.timedelta(hours=1)),
        params=ConsumptionParams(profile_samples=2),
    )
    got = out.intervals.filter(pl.col("quality") == "estimated")
    assert got["consumption"].to_list() == pytest.approx(use[hole.start - 1 : hole.stop])


def test_unexplained_drop_gives_no_consumption_and_an_event() -> None:
    out = consumption(reads([1_000.0, 1_010.0, 900.0, 910.0, 920.0]))
    assert values(out) == [10.0, None, 10.0, 10.0]
    assert qualities(out) == ["measured", None, "measured", "measured"]
    assert events(out) == ["unexplained_drop"]
    assert out.events["ts"][0] == T0 + 2 * Q


def test_multiplier_scales_consumption() -> None:
    out = consumption(reads([10.0, 11.0, 13.0]), meters(multiplier=[40.0]))
    assert values(out) == [40.0, 80.0]


def test_multiplier_scales_a_spread_gap_and_a_rollover() -> None:
    out = consumption(
        reads([99_998.0, 99_999.0, 1.0, 2.0], slots=[0, 1, 3, 4]),
        meters(multiplier=[2.0], counters=counters(100_000.0)),
    )
    assert values(out) == [2.0, 2.0, 2.0, 2.0]


def test_daylight_saving_changes_nothing_in_utc() -> None:
    # Europe/Berlin springs forward at 01:00 UTC on 2026-03-29: the UTC grid does not notice.
    start = dt.datetime(2026, 3, 29, 0, 0, tzinfo=dt.UTC)
    out = consumption(reads([float(k) for k in range(12)], start=start))
    assert values(out) == [1.0] * 11
    assert_contiguous(out)
    assert out.intervals["start"][4] == dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC)


def test_zoned_timestamps_are_read_as_instants() -> None:
    frame = reads([1.0, 2.0, 3.0]).with_columns(pl.col("ts").dt.convert_time_zone("Europe/Berlin"))
    out = consumption(frame)
    assert out.intervals["start"].dtype == pl.Datetime("us", "UTC")
    assert out.intervals["start"][0] == T0


def test_a_drifting_clock_snaps_reads_to_the_stream_grid() -> None:
    drift = [dt.timedelta(seconds=5 * k) for k in range(10)]  # 8 minutes a day fast
    frame = pl.DataFrame(
        {
            "meter_id": ["m1"] * 10,
            "channel": [KWH] * 10,
            "ts": [T0 + k * Q + drift[k] for k in range(10)],
            "value": [float(k) for k in range(10)],
            "quality": ["clock_suspect"] * 10,
        }
    )
    out = consumption(frame)
    assert out.intervals["consumption"].sum() == pytest.approx(9.0)
    assert_contiguous(out)
    assert out.intervals["start"][0] == T0


def test_a_clock_drifting_past_half_the_cadence_loses_nothing() -> None:
    # 10 s slow each read (16 minutes a day): after 45 reads two reads share a slot (the later
    # stays), yet every kWh between the first and last read is counted, on a contiguous grid.
    n = 60
    frame = pl.DataFrame(
        {
            "meter_id": ["m1"] * n,
            "channel": [KWH] * n,
            "ts": [T0 + k * Q - dt.timedelta(seconds=10 * k) for k in range(n)],
            "value": [100.0 + 2.0 * k for k in range(n)],
            "quality": ["clock_suspect"] * n,
        }
    )
    out = consumption(frame)
    assert out.intervals.height == n - 2  # one slot held two reads
    assert out.intervals["consumption"].sum() == pytest.approx(2.0 * (n - 1))
    assert (out.intervals["consumption"] >= 0).all()
    assert_contiguous(out)


def test_duplicated_rows_count_once() -> None:
    frame = reads([10.0, 11.0, 12.0, 13.0])
    out = consumption(pl.concat([frame, frame.slice(1, 2)]))
    assert values(out) == [1.0, 1.0, 1.0]


def test_cadence_is_inferred_per_stream() -> None:
    frame = pl.concat(
        [reads([1.0, 2.0, 3.0]), reads([1.0, 2.0, 3.0], meter="m2", step=dt.timedelta(hours=1))]
    )
    out = consumption(frame)
    steps = out.intervals.group_by("meter_id").agg((pl.col("end") - pl.col("start")).first())
    assert dict(steps.iter_rows()) == {"m1": Q, "m2": dt.timedelta(hours=1)}


def test_output_is_sorted_by_meter_channel_start() -> None:
    frame = pl.concat(
        [
            reads([1.0, 2.0, 3.0], meter="b"),
            reads([5.0, 6.0], meter="a", channel="water_volume_m3"),
            reads([7.0, 8.0], meter="a"),
        ]
    )
    out = consumption(frame)
    assert out.intervals.equals(out.intervals.sort("meter_id", "channel", "start"))
    assert out.intervals["meter_id"].to_list() == ["a", "a", "b", "b"]


def test_same_input_in_any_row_order_or_dtype_gives_identical_frames() -> None:
    frame = pl.concat(
        [
            reads([100.0, 101.0, 0.0, 103.0, 99_990.0, 3.0], meter="m1"),
            reads([5.0, None, 9.0, 50.0, 10.0], meter="m2", quality=["good"] * 5),
            reads([7.0, 8.0, 1.0, 2.0], meter="m3", channel="water_volume_m3"),
        ]
    )
    first = consumption(frame)
    again = consumption(frame)
    assert_frame_equal(first.intervals, again.intervals)
    assert_frame_equal(first.events, again.events)
    shuffled = consumption(frame.sample(fraction=1.0, shuffle=True, seed=7))
    assert_frame_equal(first.intervals, shuffled.intervals)
    assert_frame_equal(first.events, shuffled.events)
    enums = frame.with_columns(
        pl.col("meter_id").cast(pl.Enum(["m3", "m2", "m1"])),
        pl.col("channel").cast(pl.Enum([KWH, "water_volume_m3", "power_w"])),
        pl.col("quality").cast(pl.Enum(["good", "nan_sentinel", "comm_error", "clock_suspect"])),
    )
    as_enum = consumption(enums.lazy())
    assert_frame_equal(first.intervals, as_enum.intervals)
    assert_frame_equal(first.events, as_enum.events)


def test_chunking_by_streams_does_not_change_the_result() -> None:
    frame = pl.concat(
        [
            reads([100.0, 101.0, 0.0, 103.0, 99_990.0, 3.0], meter="m1"),
            reads([5.0, None, 9.0, 50.0, 10.0], meter="m2"),
            reads([7.0, 8.0, 1.0, 2.0], meter="m3", slots=[0, 1, 4, 5]),
        ]
    )
    whole = consumption(frame)
    for rows in (1, 4, 7):
        chunked = consumption(frame, params=ConsumptionParams(chunk_rows=rows))
        assert_frame_equal(whole.intervals, chunked.intervals)
        assert_frame_equal(whole.events, chunked.events)


def test_no_readings_give_empty_frames_with_the_schemas() -> None:
    out = consumption(reads([]))
    assert out.intervals.schema == CONSUMPTION_SCHEMA
    assert out.intervals.height == 0
    assert out.events.schema == COUNTER_EVENTS_SCHEMA


def test_a_single_reading_gives_no_interval() -> None:
    out = consumption(reads([5.0]))
    assert out.intervals.height == 0


# -- against the simulator's ground truth ----------------------------------------------------


@pytest.fixture(scope="module")
def estate() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A week of the shipped residential estate: readings, meters and faults ledgers."""
    root = Path(__file__).resolve().parents[2]
    run = History(plan(load_scenario(root / "scenarios" / "residential-small.toml")), 7, 900)
    readings = run.collect()
    return readings, run.meters_frame(), run.faults_frame()


@pytest.mark.slow
def test_totals_match_the_ledger_across_every_fault(
    estate: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
) -> None:
    readings, meters_, faults = estate
    out = consumption(readings, meters_)
    assert (out.intervals["consumption"].drop_nulls() >= 0).all()
    # A reversed CT changes what the meter counts, not what flows (true_value): left out.
    reversed_ct = faults.filter(pl.col("kind") == "ct_reversal")["meter_id"].to_list()
    value = pl.col("quality").cast(pl.String).is_in(["good", "clock_suspect"]) & pl.col(
        "value"
    ).is_not_nan().fill_null(False)
    truth = (
        readings.filter(pl.col("channel").cast(pl.String).str.contains("kwh|kvarh|m3$"))
        .filter(value)
        .group_by(pl.col("meter_id").cast(pl.String), pl.col("channel").cast(pl.String))
        .agg((pl.col("true_value").last() - pl.col("true_value").first()).alias("truth"))
    )
    ours = out.intervals.group_by("meter_id", "channel").agg(pl.col("consumption").sum())
    both = truth.join(ours, on=["meter_id", "channel"], how="left").filter(
        ~pl.col("meter_id").is_in(reversed_ct)
    )
    assert both.height > 200
    moving = both.filter(pl.col("truth") > 0)
    rel = (moving["consumption"] - moving["truth"]).abs() / moving["truth"]
    assert (rel < 0.001).all(), moving.with_columns(rel=rel).sort("rel").tail(3)
    idle = both.filter(pl.col("truth") == 0)["consumption"].fill_null(0.0)
    assert (idle.abs() < 1e-9).all()


@pytest.mark.slow
def test_register_events_match_the_faults_ledger(
    estate: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
) -> None:
    readings, meters_, faults = estate
    ev = consumption(readings, meters_).events
    for kind in ("rollover", "reset", "replacement"):
        planned = faults.filter(pl.col("kind") == kind)
        found = ev.filter(pl.col("event") == kind)
        assert planned.height > 0
        # Every planned one found within a poll of when it happened, on its meter ...
        for meter, start, end in planned.select("meter_id", "start", "end").iter_rows():
            near = found.filter(
                (pl.col("meter_id") == meter)
                & pl.col("ts").is_between(start - Q, (end or start) + Q)
            )
            assert near.height > 0, (kind, meter)
        # ... and nothing else.
        assert set(found["meter_id"]) == set(planned["meter_id"])
    assert ev.filter(pl.col("event") == "unexplained_drop").height == 0
