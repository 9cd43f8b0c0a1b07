"""Communication loss against each stream's own cadence: silence, intermittent failures, NaN
runs; what is not a loss (one dropped poll, a slow answer within the timeout, a planned swap)."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
from polars.testing import assert_frame_equal

from analytics.detectors.comm_loss import CommLossParams, detect_comm_loss
from analytics.frames import FINDINGS_SCHEMA
from tests.support.detector_data import T0, grid, meters, overlaps, readings, shuffled, simulated

M = meters(["m1", "m2"])


def polls(meter: str, quality: list[str], channel: str = "power_w") -> pl.DataFrame:
    values = [None if q == "comm_error" else 1.0 for q in quality]
    values = [
        float("nan") if q == "nan_sentinel" else v for q, v in zip(quality, values, strict=True)
    ]
    return readings(meter, channel, grid(len(quality)), values, quality)


def test_a_silent_spell_is_one_finding_with_its_lost_polls() -> None:
    q = ["good"] * 8 + ["comm_error"] * 4 + ["good"] * 8
    out = detect_comm_loss(polls("m1", q), None, M)
    assert out.schema == FINDINGS_SCHEMA
    assert out.height == 1
    row = out.row(0, named=True)
    assert (row["subject"], row["rule"], row["kind"]) == ("m1", "comm_loss.silence", "comm_loss")
    assert row["start"] == T0 + dt.timedelta(minutes=15 * 8)
    assert row["end"] == T0 + dt.timedelta(minutes=15 * 11)
    ev = json.loads(row["evidence"])
    assert ev["lost_polls"] == 4
    assert ev["cadence_s"] == 900.0
    assert ev["channels"] == ["power_w"]
    assert ev["params"]["silence_polls"] == 2


def test_missing_rows_count_as_lost_polls() -> None:
    ts = grid(20)
    kept = [t for i, t in enumerate(ts) if not 5 <= i < 10]
    out = detect_comm_loss(readings("m1", "power_w", kept, [1.0] * len(kept)), None, M)
    assert out.get_column("rule").to_list() == ["comm_loss.silence"]
    assert json.loads(out.item(0, "evidence"))["lost_polls"] == 5


def test_a_meter_that_went_quiet_is_silent_up_to_the_last_instant_seen() -> None:
    talking = polls("m2", ["good"] * 20)
    quiet = polls("m1", ["good"] * 10)
    out = detect_comm_loss(pl.concat([talking, quiet]), None, M)
    assert out.get_column("subject").to_list() == ["m1"]
    assert out.item(0, "end") >= T0 + dt.timedelta(minutes=15 * 19)


def test_one_dropped_poll_is_not_a_finding_but_repeated_drops_are() -> None:
    single = ["good"] * 10 + ["comm_error"] + ["good"] * 10
    assert detect_comm_loss(polls("m1", single), None, M).height == 0
    flaky = ["good"] * 4 + ["comm_error", "good", "good", "comm_error", "good"] * 3 + ["good"] * 4
    out = detect_comm_loss(polls("m1", flaky), None, M)
    assert out.get_column("rule").to_list() == ["comm_loss.intermittent"]
    ev = json.loads(out.item(0, "evidence"))
    assert ev["window_polls"] == 8
    assert ev["lost_polls"] >= 2


def test_nan_answers_are_a_loss_only_when_they_last() -> None:
    short = ["good"] * 5 + ["nan_sentinel"] * 2 + ["good"] * 5
    assert detect_comm_loss(polls("m1", short), None, M).height == 0
    long = ["good"] * 5 + ["nan_sentinel"] * 9 + ["good"] * 5
    out = detect_comm_loss(polls("m1", long), None, M)
    assert out.get_column("rule").to_list() == ["comm_loss.no_value"]


def test_each_stream_is_held_to_its_own_cadence() -> None:
    fast_ts = grid(200, step_s=10)
    gap = [t for i, t in enumerate(fast_ts) if not 100 <= i < 112]  # two minutes quiet
    fast = readings("m1", "power_w", gap, [1.0] * len(gap))
    slow = readings("m1", "energy_import_kwh", grid(3), [1.0, 2.0, 3.0])
    out = detect_comm_loss(pl.concat([fast, slow]), None, M)
    assert out.height == 1
    ev = json.loads(out.item(0, "evidence"))
    assert ev["channels"] == ["power_w"]
    assert ev["cadence_s"] == 10.0


def test_channels_of_one_meter_silent_together_make_one_finding() -> None:
    q = ["good"] * 6 + ["comm_error"] * 3 + ["good"] * 6
    both = pl.concat([polls("m1", q, "power_w"), polls("m1", q, "energy_import_kwh")])
    out = detect_comm_loss(both, None, M)
    assert out.height == 1
    assert json.loads(out.item(0, "evidence"))["channels"] == ["energy_import_kwh", "power_w"]


def test_a_listed_meter_swap_excuses_its_downtime() -> None:
    q = ["good"] * 6 + ["comm_error"] * 3 + ["good"] * 6
    swapped = M.with_columns(
        pl.Series(
            "replacements",
            [[{"at": T0 + dt.timedelta(minutes=15 * 9), "channel": "power_w"}], []],
        )
    )
    assert detect_comm_loss(polls("m1", q), None, M).height == 1
    assert detect_comm_loss(polls("m1", q), None, swapped).height == 0


def test_thresholds_are_parameters() -> None:
    q = ["good"] * 6 + ["comm_error"] * 3 + ["good"] * 6
    strict = detect_comm_loss(polls("m1", q), None, M, params=CommLossParams(silence_polls=4))
    assert strict.filter(pl.col("rule") == "comm_loss.silence").height == 0


def test_a_day_of_silence_is_critical() -> None:
    q = ["good"] * 4 + ["comm_error"] * 100 + ["good"] * 4
    out = detect_comm_loss(polls("m1", q), None, M)
    assert out.get_column("severity").to_list() == ["critical"]


def test_same_input_in_any_order_gives_the_same_bytes() -> None:
    estate = simulated()
    first = detect_comm_loss(estate.readings, None, estate.meters)
    again = detect_comm_loss(shuffled(estate.readings), None, estate.meters)
    assert first.height > 0
    assert_frame_equal(first, again)


def test_the_simulated_estate_s_device_faults_are_found_and_nothing_else() -> None:
    estate = simulated()
    out = detect_comm_loss(estate.readings, None, estate.meters)
    lost = estate.faults.filter(
        pl.col("kind").is_in(["no_response", "slow", "busy"])
        & ~pl.col("params").str.contains('"times_out":false')
    )
    pairs = overlaps(out, lost)
    # every finding is a device fault of the ledger (the meter swap's downtime is excused) ...
    assert set(out.get_column("subject")) == set(pairs.get_column("subject"))
    # ... the silent ones are all found, and the slow-but-in-time water meter is not reported
    silent = lost.filter(pl.col("kind") != "busy").get_column("meter_id").to_list()
    assert set(silent) <= set(pairs.get_column("subject"))
    assert "b1-water-02" not in out.get_column("subject").to_list()


def test_a_drifting_clock_that_resynchronises_is_not_a_silence() -> None:
    """The meter's clock ran 25 minutes slow; on resync its stamps jump forward: no poll lost."""
    slow = [t - dt.timedelta(minutes=25) for t in grid(10)]
    after = grid(10, start=T0 + dt.timedelta(minutes=15 * 10))
    df = pl.concat(
        [
            readings("m1", "power_w", slow, [1.0] * 10, ["clock_suspect"] * 10),
            readings("m1", "power_w", after, [1.0] * 10),
        ]
    )
    assert detect_comm_loss(df, None, M).height == 0
    # lost polls on record still count next to such stamps
    lost = readings("m1", "power_w", grid(3, start=after[0]), [None] * 3, ["comm_error"] * 3)
    later = readings("m1", "power_w", grid(5, start=after[-1]), [1.0] * 5)
    out = detect_comm_loss(pl.concat([df.head(10), lost, later]), None, M)
    assert out.filter(pl.col("rule") == "comm_loss.silence").height == 1


def test_two_lost_polls_a_few_polls_apart_are_intermittent() -> None:
    q = ["good"] * 8 + ["comm_error", "good", "good", "comm_error"] + ["good"] * 8
    out = detect_comm_loss(polls("m1", q), None, M)
    assert out.get_column("rule").to_list() == ["comm_loss.intermittent"]
    assert json.loads(out.item(0, "evidence"))["lost_polls"] == 2


def test_a_meter_whose_clock_runs_behind_is_not_silent_at_the_end() -> None:
    """Its last stamps lag the other meters' by 25 minutes: late clocks, not lost polls."""
    behind = readings(
        "m1",
        "power_w",
        [t - dt.timedelta(minutes=25) for t in grid(20)],
        [1.0] * 20,
        ["clock_suspect"] * 20,
    )
    assert detect_comm_loss(pl.concat([behind, polls("m2", ["good"] * 20)]), None, M).height == 0
