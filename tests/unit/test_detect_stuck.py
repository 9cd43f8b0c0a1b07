"""Stuck meters: a flat register is a finding only with evidence it should have moved; a vacant
flat, a quiet night, a lighting circuit switching on at dusk are not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from analytics.detectors.stuck import StuckParams, detect_stuck
from analytics.frames import FINDINGS_SCHEMA
from tests.support.detector_data import grid, meters, overlaps, readings, shuffled, simulated

N = 96  # a day at 15-minute polls
TS = grid(N)
M = meters(["m1"])


def register(rate_kwh_per_poll: list[float], start: float = 1000.0) -> list[float]:
    out, v = [], start
    for r in rate_kwh_per_poll:
        v += r
        out.append(round(v, 2))  # a 0.01 kWh register
    return out


def meter(power_w: list[float], energy: list[float], meter_id: str = "m1") -> pl.DataFrame:
    return pl.concat(
        [
            readings(meter_id, "energy_import_kwh", TS, energy),
            readings(meter_id, "power_w", TS, power_w),
        ]
    )


def frozen_from(values: list[float], i: int, j: int) -> list[float]:
    return [values[i] if i <= k < j else v for k, v in enumerate(values)]


def test_a_frozen_register_under_load_is_stuck_with_its_evidence() -> None:
    power = [500.0] * N
    energy = frozen_from(register([0.125] * N), 20, 60)
    out = detect_stuck(meter(power, energy), None, M)
    assert out.schema == FINDINGS_SCHEMA
    assert out.height == 1
    row = out.row(0, named=True)
    assert (row["subject"], row["rule"], row["kind"]) == ("m1", "stuck.related_channel", "stuck")
    assert row["start"] == TS[20]
    assert row["end"] == TS[59]
    ev = json.loads(row["evidence"])
    assert ev["channel"] == "energy_import_kwh"
    assert ev["related_channel"] == "power_w"
    assert ev["flat_hours"] == 9.75
    assert abs(ev["expected"] - 0.5 * 9.75) < 1e-6
    assert ev["resolution"] > 0
    assert ev["mean_rate_per_h"] == 0.5


def test_a_vacant_flat_with_no_power_is_not_stuck() -> None:
    energy = [1000.0] * N
    assert detect_stuck(meter([0.0] * N, energy), None, M).height == 0


def test_a_quiet_night_below_the_register_s_resolution_is_not_stuck() -> None:
    # 2 W of standby for a day: 0.048 kWh, under ten register steps
    energy = register([0.0005] * N)
    assert detect_stuck(meter([2.0] * N, energy), None, M).height == 0


def test_a_load_switching_on_at_the_end_of_a_flat_spell_is_not_use_during_it() -> None:
    """Lighting: standby all day, the lights come on at the last flat reading (dusk)."""
    power = [4.0] * 60 + [3000.0] * 36
    energy = register([0.0] * 61 + [0.75] * 35)
    assert detect_stuck(meter(power, energy), None, M).height == 0


def test_a_stuck_water_register_against_its_flow() -> None:
    volume = frozen_from(register([0.01] * N), 10, 50)
    df = pl.concat(
        [
            readings("w1", "water_volume_m3", TS, volume),
            readings("w1", "water_flow_m3h", TS, [0.04] * N),
        ]
    )
    out = detect_stuck(df, None, meters(["w1"], kind="water"))
    assert out.get_column("rule").to_list() == ["stuck.related_channel"]
    assert json.loads(out.item(0, "evidence"))["related_channel"] == "water_flow_m3h"


def test_current_stands_in_for_power() -> None:
    energy = frozen_from(register([0.1] * N), 30, 70)
    df = pl.concat(
        [
            readings("m1", "energy_import_kwh", TS, energy),
            readings("m1", "current_l1_a", TS, [2.0] * N),
        ]
    )
    out = detect_stuck(df, None, M)
    assert json.loads(out.item(0, "evidence"))["related_channel"] == "current_l1_a"


def test_without_a_related_channel_the_meter_s_history_decides() -> None:
    days = grid(N * 7)
    steady = register([0.1] * len(days))
    stuck = frozen_from(steady, 300, 340)
    out = detect_stuck(readings("m1", "energy_import_kwh", days, stuck), None, M)
    assert out.get_column("rule").to_list() == ["stuck.history"]
    ev = json.loads(out.item(0, "evidence"))
    assert ev["low_rate_per_h"] > 0
    assert ev["expected"] >= 10 * ev["resolution"]
    # a meter that is idle half of the time has no such history: its flat spell is not news
    idle = register([0.1 if (k // 48) % 2 else 0.0 for k in range(len(days))])
    assert detect_stuck(readings("m1", "energy_import_kwh", days, idle), None, M).height == 0


def test_thresholds_are_parameters() -> None:
    energy = frozen_from(register([0.125] * N), 20, 34)  # three and a quarter hours
    df = meter([500.0] * N, energy)
    assert detect_stuck(df, None, M).height == 1
    assert detect_stuck(df, None, M, params=StuckParams(min_hours=4.0)).height == 0
    assert detect_stuck(df, None, M, params=StuckParams(min_steps=20.0)).height == 0


def test_same_input_in_any_order_gives_the_same_bytes() -> None:
    energy = frozen_from(register([0.125] * N), 20, 60)
    df = pl.concat([meter([500.0] * N, energy), meter([500.0] * N, energy, "m2")])
    m = meters(["m1", "m2"])
    first = detect_stuck(df, None, m)
    assert first.height == 2
    assert_frame_equal(first, detect_stuck(shuffled(df), None, m))


def test_the_simulated_estate_s_stuck_register_is_found_and_nothing_else() -> None:
    estate = simulated()
    out = detect_stuck(estate.readings, estate.consumption, estate.meters)
    stuck = estate.faults.filter(pl.col("kind") == "stuck")
    assert out.height == 1
    assert overlaps(out, stuck).height == 1


def test_enum_and_text_columns_give_the_same_bytes() -> None:
    """The simulator writes Enum meter, channel and quality columns, the store gives text; the
    detector codes both to integers its own way and must not tell them apart."""
    volume = frozen_from(register([0.01] * N), 10, 50)
    df = pl.concat(
        [
            meter([500.0] * N, frozen_from(register([0.125] * N), 20, 60)),
            readings("w1", "water_volume_m3", TS, volume),
            readings("w1", "water_flow_m3h", TS, [0.04] * N),
            readings("w1", "water_temperature_c", TS, [12.0] * N),
        ]
    )
    enums = df.with_columns(
        pl.col(c).cast(pl.Enum(sorted(set(df.get_column(c).to_list()))))
        for c in ("meter_id", "channel", "quality")
    )
    m = meters(["m1", "w1"])
    text = detect_stuck(df, None, m)
    assert text.height == 2
    assert_frame_equal(text, detect_stuck(enums, None, m))
    assert_frame_equal(text, detect_stuck(shuffled(enums), None, m))


def test_flat_spells_of_neighbouring_streams_stay_apart() -> None:
    """One meter's register frozen to its last reading, the next one's from its first: two
    spells, each with its own start, end and poll count, not one across both streams."""
    tail = frozen_from(register([0.125] * N), 70, N)
    head = frozen_from(register([0.125] * N), 0, 30)
    df = pl.concat(
        [
            readings("m1", "energy_import_kwh", TS, tail),
            readings("m2", "energy_import_kwh", TS, head),
            readings("m1", "power_w", TS, [500.0] * N),
            readings("m2", "power_w", TS, [500.0] * N),
        ]
    )
    out = detect_stuck(df, None, meters(["m1", "m2"]))
    assert out.get_column("subject").to_list() == ["m1", "m2"]
    assert out.get_column("start").to_list() == [TS[70], TS[0]]
    assert out.get_column("end").to_list() == [TS[N - 1], TS[29]]
    polls = [json.loads(e)["polls"] for e in out.get_column("evidence")]
    assert polls == [N - 70, 30]


def test_channels_it_does_not_read_and_bad_readings_change_nothing() -> None:
    energy = frozen_from(register([0.125] * N), 20, 60)
    base = meter([500.0] * N, energy)
    noisy = pl.concat(
        [
            base,
            readings("m1", "voltage_l1_v", TS, [230.0] * N),
            readings("m1", "energy_export_kwh", TS, [5.0] * N),
            readings("m1", "power_w", TS, [0.0] * N, quality=["bad"] * N),
            readings("m1", "energy_import_kwh", TS[20:60], [None] * 40),
        ]
    )
    expected = detect_stuck(base, None, M)
    assert expected.height == 1
    assert_frame_equal(expected, detect_stuck(shuffled(noisy), None, M))


# Run in a fresh interpreter: readings of 60 meters with text (or enum) ids, every meter's
# register frozen for a while under a running load; prints each spell's raw `expected` as
# float.hex. With `intern`, other strings and the ids in reverse order go into Polars' string
# cache first (and stay there), so the ids' categorical codes - and any order derived from
# them - differ.
_EXPECTED_IN_FRESH_PROCESS = """
import datetime as dt, json, random, sys
import polars as pl
import analytics.detectors.stuck as stuck

ids = [f"meter-{i:02d}" for i in range(60)]
# held for the whole run: the string cache forgets the strings of columns no longer alive
interned = pl.Series([f"other-{i}" for i in range(300)] + ids[::-1]).cast(pl.Categorical)
if sys.argv[1] != "intern":
    del interned
rng = random.Random(11)
t0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
ts = [t0 + dt.timedelta(minutes=15 * i) for i in range(96 * 4)]
rows = []
for n, m in enumerate(ids):
    energy = 1000.0 * (n + 1)
    stop, restart = 100 + n, 150 + n
    for i, t in enumerate(ts):
        power = rng.uniform(200.0, 9000.0)
        if not stop <= i < restart:
            energy = round(energy + power * 0.25 / 1000.0, 2)
        rows.append((m, "energy_import_kwh", t, energy))
        rows.append((m, "power_w", t, power))
df = pl.DataFrame(rows, schema=["meter_id", "channel", "ts", "value"], orient="row")
df = df.with_columns(pl.col("ts").dt.cast_time_unit("us"), quality=pl.lit("good"))
if sys.argv[2] == "enum":
    df = df.with_columns(pl.col("meter_id").cast(pl.Enum(sorted(ids, reverse=True))))
seen = []
original = stuck._expected_from_related
def spy(flats, related):
    out = original(flats, related)
    seen.append(out)
    return out
stuck._expected_from_related = spy
found = stuck.detect_stuck(df, None, pl.DataFrame({"meter_id": ids}))
spells = seen[0].select(pl.col("meter_id").cast(pl.String), "a", "expected").sort("meter_id", "a")
print(json.dumps({"spells": [[m, a, float.hex(e)] for m, a, e in spells.rows()],
                  "findings": found.get_column("subject").cast(pl.String).to_list()}))
"""


def _expected_in_fresh_process(intern: bool, ids: str) -> dict[str, object]:
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", _EXPECTED_IN_FRESH_PROCESS, "intern" if intern else "-", ids],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    out: dict[str, object] = json.loads(run.stdout)
    return out


def test_expected_is_bit_identical_across_processes_and_id_types() -> None:
    """The related-channel integral of a spell does not depend on which codes the meter ids
    get: two fresh processes that interned different strings first, and enum ids, give the
    same `expected` bit for bit."""
    plain = _expected_in_fresh_process(intern=False, ids="text")
    spells = plain["spells"]
    findings = plain["findings"]
    assert isinstance(spells, list)
    assert isinstance(findings, list)
    assert len(spells) == 60  # every meter's spell was integrated
    assert len(findings) == 60
    assert _expected_in_fresh_process(intern=True, ids="text") == plain
    assert _expected_in_fresh_process(intern=True, ids="enum") == plain
