"""Every fault kind lands in the ledger where the scenario put it, and shows in the readings in
its window only. The faulted run is compared row by row with the same scenario without faults
(same seed): meters evaluate pointwise in absolute time, so anything that differs is a fault."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from simulators.faults import FAULT_KINDS
from simulators.history import History
from simulators.scenario import parse_duration, parse_scenario, plan

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "residential-small.toml"
DAYS = 7
COUNTERS = {
    "energy_import_kwh",
    "energy_export_kwh",
    "reactive_import_kvarh",
    "reactive_export_kvarh",
    "water_volume_m3",
}
US = 1_000_000


class Runs:
    def __init__(self) -> None:
        self.data = tomllib.loads(SCENARIO.read_text(encoding="utf-8"))
        faulted = History(plan(parse_scenario(self.data)), days=DAYS, interval_s=900)
        clean = History(plan(parse_scenario({**self.data, "faults": []})), DAYS, 900)
        self.plan = faulted.plan
        self.df = faulted.collect().with_columns(
            pl.col("meter_id", "channel", "quality").cast(pl.String),
            pl.col("ts").dt.epoch("us").alias("ts_us"),
        )
        self.base = clean.collect().with_columns(
            pl.col("meter_id", "channel", "quality").cast(pl.String),
            pl.col("ts").dt.epoch("us").alias("ts_us"),
        )
        self.ledger = faulted.faults_frame().with_columns(
            pl.col("start").dt.epoch("us").alias("start_us"),
            pl.col("end").dt.epoch("us").alias("end_us"),
        )
        self.meters = faulted.meters_frame()
        self.start = self.plan.start

    def at(self, text: str) -> int:
        """Unix seconds of a '+<duration>' in the scenario."""
        return self.start + parse_duration(text[1:])

    def rows(self, meter: str, channel: str, base: bool = False) -> pl.DataFrame:
        df = self.base if base else self.df
        return df.filter((pl.col("meter_id") == meter) & (pl.col("channel") == channel))


@pytest.fixture(scope="module")
def runs() -> Runs:
    return Runs()


def grid_s(r: Runs, frame: pl.DataFrame) -> np.ndarray:
    """The true sampling instant of each row (rows are in the same order in both runs)."""
    del r
    return frame["ts_us"].to_numpy() // US


# -- the ledger --------------------------------------------------------------------------------


def test_every_fault_kind_is_in_the_ledger(runs: Runs) -> None:
    assert set(runs.ledger["kind"]) == set(FAULT_KINDS)


def test_ledger_times_are_where_the_scenario_put_them(runs: Runs) -> None:
    for fault in runs.data["faults"]:
        if fault["kind"] == "rollover":
            continue
        targets = fault.get("meters") or [fault["meter"]]
        start = runs.at(fault["start"])
        if fault["kind"] in ("reset", "replacement"):
            end: int | None = start + parse_duration(fault.get("downtime", "0"))
            if fault["kind"] == "replacement" and "downtime" not in fault:
                end = start + 1800
        else:
            end = runs.at(fault["end"]) if "end" in fault else None
        for meter in targets:
            rows = runs.ledger.filter(
                (pl.col("meter_id") == meter) & (pl.col("kind") == fault["kind"])
            )
            assert rows.height == 1, (meter, fault["kind"], rows)
            assert rows["start_us"][0] == start * US, (meter, fault["kind"])
            assert rows["end_us"][0] == (None if end is None else end * US), (meter, fault)


def test_ledger_params_are_canonical_json(runs: Runs) -> None:
    for text in runs.ledger["params"]:
        assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    leak = runs.ledger.filter(pl.col("kind") == "leak")["params"][0]
    assert json.loads(leak) == {"flow_m3h": 0.03}


# -- effects in their windows only ---------------------------------------------------------------


def _diff(runs: Runs, meter: str) -> pl.DataFrame:
    a = runs.df.filter(pl.col("meter_id") == meter)
    b = runs.base.filter(pl.col("meter_id") == meter)
    assert a["channel"].to_list() == b["channel"].to_list()
    va, vb = a["value"].to_numpy(), b["value"].to_numpy()
    same_value = (va == vb) | (np.isnan(va) & np.isnan(vb))
    changed = (
        ~same_value
        | (a["quality"].to_numpy() != b["quality"].to_numpy())
        | (a["ts_us"].to_numpy() != b["ts_us"].to_numpy())
    )
    return pl.DataFrame(
        {"channel": a["channel"], "t": b["ts_us"].to_numpy() // US, "changed": changed}
    )


def _windows(runs: Runs, meter: str) -> list[tuple[str, int, float]]:
    out: list[tuple[str, int, float]] = []
    for f in runs.plan.faults_of(meter):
        end = float("inf") if f.end is None else float(f.end)
        if f.kind == "reset":
            end = f.start + 1  # an instant: only counters (allowed below) change
        out.append((f.kind, f.start, end))
    return out


FAULTED = sorted(
    {
        target
        for fault in tomllib.loads(SCENARIO.read_text(encoding="utf-8"))["faults"]
        for target in (fault.get("meters") or [fault["meter"]])
        if fault["kind"] != "rollover"
    }
)


@pytest.mark.parametrize("meter", FAULTED)
def test_effects_stay_in_the_fault_windows(runs: Runs, meter: str) -> None:
    diff = _diff(runs, meter)
    windows = _windows(runs, meter)
    first = min(start for _, start, _ in windows)
    t = diff["t"].to_numpy()
    changed = diff["changed"].to_numpy()
    counter = diff["channel"].is_in(list(COUNTERS)).to_numpy()
    inside = np.zeros(t.shape, dtype=bool)
    for _, start, end in windows:
        inside |= (t >= start) & (t < end)
    # Instantaneous channels (and qualities, timestamps) change only inside a window ...
    assert not (changed & ~counter & ~inside).any(), diff.filter(
        pl.Series(changed & ~counter & ~inside)
    )
    # ... counters may carry a fault's effect on, but never before the first fault.
    assert not (changed & counter & (t < first)).any()
    # And each fault shows inside its own window (a slow answer within the timeout does not).
    for kind, start, end in windows:
        if kind == "slow" and runs.plan.faults_of(meter)[0].params["delay_ms"] < 1000:
            continue
        here = (t >= start) & (t < max(end, start + 900))
        if kind == "reset":
            here = t >= start
        assert (changed & here).any(), (meter, kind)


def test_meters_without_faults_are_untouched(runs: Runs) -> None:
    faulted = set(FAULTED) | {"b2-flat-01"}
    a = runs.df.filter(~pl.col("meter_id").is_in(list(faulted)))
    b = runs.base.filter(~pl.col("meter_id").is_in(list(faulted)))
    assert a.height > 100_000
    assert a.drop("ts").equals(b.drop("ts"))


# -- what each fault looks like ------------------------------------------------------------------


def _window(frame: pl.DataFrame, start: int, end: int) -> pl.DataFrame:
    return frame.filter((pl.col("ts_us") >= start * US) & (pl.col("ts_us") < end * US))


def test_leak_adds_constant_flow_visible_at_night(runs: Runs) -> None:
    start, end = runs.at("+1d18h"), runs.at("+4d")
    leak = _window(runs.rows("b2-water-07", "water_flow_m3h"), start, end)
    base = _window(runs.rows("b2-water-07", "water_flow_m3h", base=True), start, end)
    extra = leak["true_value"].to_numpy() - base["true_value"].to_numpy()
    np.testing.assert_allclose(extra, 0.03, atol=1e-4)
    night = leak.filter(pl.col("ts").dt.convert_time_zone("Asia/Shanghai").dt.hour() == 3)
    assert (night["value"] >= 0.029).all()


def test_spike_multiplies_the_load(runs: Runs) -> None:
    start, end = runs.at("+1d19h"), runs.at("+1d21h")
    spike = _window(runs.rows("b1-flat-03", "power_w"), start, end)["true_value"].to_numpy()
    base = _window(runs.rows("b1-flat-03", "power_w", True), start, end)["true_value"].to_numpy()
    np.testing.assert_allclose(spike / base, 4.0, rtol=1e-3)


def test_stuck_register_while_load_continues(runs: Runs) -> None:
    start, end = runs.at("+2d8h"), runs.at("+2d20h")
    rows = _window(runs.rows("b3-flat-05", "energy_import_kwh"), start, end)
    assert rows["value"].n_unique() == 1
    true = rows["true_value"].to_numpy()
    assert true.max() - true.min() > 0.5
    assert (rows["quality"] == "good").all()
    power = _window(runs.rows("b3-flat-05", "power_w"), start, end)
    assert (power["value"] > 0).all()


def test_zero_read_is_one_poll_of_zeros(runs: Runs) -> None:
    start = runs.at("+1d12h")
    rows = runs.df.filter((pl.col("meter_id") == "b1-flat-08") & (pl.col("ts_us") == start * US))
    assert rows.height == 11
    assert (rows["value"] == 0.0).all()
    assert (rows["quality"] == "good").all()  # a gateway cannot tell; analytics must
    assert (rows.filter(pl.col("channel") == "energy_import_kwh")["true_value"] > 1000).all()


def test_nan_read_has_the_sentinel_quality(runs: Runs) -> None:
    start, end = runs.at("+2d6h"), runs.at("+2d6h30m")
    rows = _window(runs.df.filter(pl.col("meter_id") == "b4-water-02"), start, end)
    assert rows.height == 4
    assert rows["value"].is_nan().all()
    assert (rows["quality"] == "nan_sentinel").all()


def test_rollover_wraps_once_at_the_ledger_instant(runs: Runs) -> None:
    wraps = runs.ledger.filter(pl.col("kind") == "rollover")
    assert wraps["meter_id"].to_list() == ["b2-flat-01"]
    params = json.loads(wraps["params"][0])
    assert params == {
        "channel": "energy_import_kwh",
        "configured": True,
        "modulus": 100000.0,
        "start_value": 99995.0,
    }
    at = wraps["start_us"][0]
    assert wraps["end_us"][0] == at
    rows = runs.rows("b2-flat-01", "energy_import_kwh")
    value, true, ts = (rows[c].to_numpy() for c in ("value", "true_value", "ts_us"))
    drops = np.nonzero(np.diff(value) < 0)[0]
    assert drops.size == 1
    j = int(drops[0])
    assert ts[j] < at <= ts[j + 1]
    assert value[j] > 99_990
    assert value[j + 1] < 10
    assert true[j] < 100_000 <= true[j + 1]  # the virtual register does not wrap
    assert (np.diff(true) >= 0).all()
    assert (value < 100_000).all()
    meters = runs.meters.filter(pl.col("meter_id") == "b2-flat-01")["counters"][0]
    energy = next(c for c in meters if c["channel"] == "energy_import_kwh")
    assert energy == {"channel": "energy_import_kwh", "opening": 99995.0, "modulus": 100000.0}


def test_reset_restarts_counters_from_zero(runs: Runs) -> None:
    start = runs.at("+1d3h")
    rows = runs.rows("b4-flat-09", "energy_import_kwh")
    before = rows.filter(pl.col("ts_us") < start * US)["value"].to_numpy()
    after = rows.filter(pl.col("ts_us") >= start * US)["value"].to_numpy()
    assert before[-1] > 1000
    assert after[0] < 0.01
    assert (np.diff(after) >= 0).all()
    assert after[-1] > 5
    # The closing reading is the old register at the reset instant (the clean run reads it).
    closing = runs.rows("b4-flat-09", "energy_import_kwh", base=True).filter(
        pl.col("ts_us") == start * US
    )["value"][0]
    params = json.loads(runs.ledger.filter(pl.col("kind") == "reset")["params"][0])
    assert params["closing"]["energy_import_kwh"] == closing


def test_replacement_new_serial_new_counter(runs: Runs) -> None:
    start, back = runs.at("+2d10h"), runs.at("+2d10h30m")
    rows = runs.rows("b3-water-04", "water_volume_m3")
    during = _window(rows, start, back)
    assert (during["quality"] == "comm_error").all()
    assert during["value"].is_null().all()
    before = rows.filter(pl.col("ts_us") < start * US)["value"].to_numpy()
    after = rows.filter(pl.col("ts_us") >= back * US)["value"].to_numpy()
    assert after[0] < 0.01 < after[-1]
    flow = _window(runs.rows("b3-water-04", "water_flow_m3h"), start, back)
    assert (flow["true_value"] == 0.0).all()  # supply isolated for the swap
    params = json.loads(runs.ledger.filter(pl.col("kind") == "replacement")["params"][0])
    assert params["new_serial"] == 24110388
    closing = runs.rows("b3-water-04", "water_volume_m3", base=True).filter(
        pl.col("ts_us") == start * US
    )["value"][0]
    assert params["closing"]["water_volume_m3"] == closing >= before[-1]
    assert params["opening"] == {"water_volume_m3": 0.0}
    meter = runs.meters.filter(pl.col("meter_id") == "b3-water-04")
    (swap,) = meter["replacements"][0]
    assert swap["old_serial"] == params["old_serial"] == meter["serial"][0]
    assert swap["new_serial"] == 24110388
    assert swap["closing"] == params["closing"]["water_volume_m3"]
    assert swap["opening"] == 0.0


def test_device_faults_give_comm_errors(runs: Runs) -> None:
    lift = _window(
        runs.df.filter(pl.col("meter_id") == "b2-lift-2"), runs.at("+1d14h"), runs.at("+1d16h")
    )
    assert (lift["quality"] == "comm_error").all()
    assert lift["value"].is_null().all()
    assert lift["true_value"].is_not_null().all()
    busy = _window(runs.rows("b2-flat-10", "power_w"), runs.at("+1d9h"), runs.at("+1d10h"))
    assert 0 < (busy["quality"] == "comm_error").sum() < busy.height
    slow = _window(runs.rows("b1-water-01", "water_flow_m3h"), runs.at("+2d"), runs.at("+2d2h"))
    assert (slow["quality"] == "comm_error").all()
    fine = _window(runs.rows("b1-water-02", "water_flow_m3h"), runs.at("+2d"), runs.at("+2d2h"))
    assert (fine["quality"] == "good").all()
    params = {
        r["meter_id"]: json.loads(r["params"])
        for r in runs.ledger.filter(pl.col("kind") == "slow").iter_rows(named=True)
    }
    assert params["b1-water-01"] == {"delay_ms": 1500.0, "times_out": True}
    assert params["b1-water-02"] == {"delay_ms": 300.0, "times_out": False}


def test_clock_drift_shifts_timestamps_and_flags_them(runs: Runs) -> None:
    rows = runs.rows("clubhouse-plug", "power_w")
    base = runs.rows("clubhouse-plug", "power_w", base=True)
    true_t = base["ts_us"].to_numpy() / US
    offset = rows["ts_us"].to_numpy() / US - true_t
    end = runs.at("+5d")
    drifting = true_t < end
    np.testing.assert_allclose(
        offset[drifting], (true_t[drifting] - runs.start) * 120 / 86400, atol=1e-6
    )
    assert (offset[~drifting] == 0).all()
    quality = rows["quality"].to_numpy()
    assert (quality[drifting & (offset >= 60)] == "clock_suspect").all()
    assert (quality[offset < 60] == "good").all()
    assert (rows["value"].to_numpy() == base["value"].to_numpy()).all()


def test_degradation_raises_pump_energy(runs: Runs) -> None:
    late = runs.start + 5 * 86400
    grown = runs.rows("plant-pump-1", "energy_import_kwh")["value"].to_numpy()
    base = runs.rows("plant-pump-1", "energy_import_kwh", True)["value"].to_numpy()
    t = runs.rows("plant-pump-1", "energy_import_kwh")["ts_us"].to_numpy() // US
    i0, i1 = np.searchsorted(t, [late, late + 86400])
    assert (grown[i1] - grown[i0]) > 1.05 * (base[i1] - base[i0])


def test_ct_reversal_flips_power_and_counts_export(runs: Runs) -> None:
    start, end = runs.at("+2d12h"), runs.at("+5d")
    power = _window(runs.rows("b4-lighting", "power_w"), start, end)
    assert (power["value"] < 0).all()
    assert (power["true_value"] > 0).all()
    imp = _window(runs.rows("b4-lighting", "energy_import_kwh"), start, end)["value"]
    exp = _window(runs.rows("b4-lighting", "energy_export_kwh"), start, end)["value"]
    assert imp.n_unique() == 1
    assert exp[-1] - exp[0] > 10
    true = _window(runs.rows("b4-lighting", "energy_import_kwh"), start, end)["true_value"]
    base = _window(runs.rows("b4-lighting", "energy_import_kwh", True), start, end)
    assert true.to_list() == base["true_value"].to_list()


def test_phase_loss_drops_one_phase(runs: Runs) -> None:
    start, end = runs.at("+3d2h"), runs.at("+3d6h")
    lift = _window(runs.df.filter(pl.col("meter_id") == "b3-lift-1"), start, end)
    for channel in ("voltage_l2_v", "current_l2_a", "power_l2_w"):
        assert (lift.filter(pl.col("channel") == channel)["value"] == 0).all()
    assert (lift.filter(pl.col("channel") == "voltage_l1_v")["value"] > 200).all()
    assert (lift.filter(pl.col("channel") == "voltage_l3_v")["value"] > 200).all()


def test_retrofit_saves_the_stated_share(runs: Runs) -> None:
    start = runs.at("+4d")
    for meter in ("b1-lighting", "b2-lighting"):
        after = runs.rows(meter, "power_w").filter(pl.col("ts_us") >= start * US)
        base = runs.rows(meter, "power_w", True).filter(pl.col("ts_us") >= start * US)
        ratio = after["true_value"].to_numpy().sum() / base["true_value"].to_numpy().sum()
        assert ratio == pytest.approx(0.6, rel=1e-3)
    untouched = runs.rows("b3-lighting", "power_w")["value"]
    assert untouched.to_list() == runs.rows("b3-lighting", "power_w", True)["value"].to_list()


# -- pump cycling needs minute resolution ---------------------------------------------------------


def _pump_run(fault: dict[str, Any] | None) -> np.ndarray:
    data: dict[str, Any] = {
        "scenario": {"name": "pump", "seed": 3, "start": "2026-01-05"},
        "projects": [
            {
                "id": "p",
                "meters": [
                    {
                        "id": "pump",
                        "kind": "electricity",
                        "profile": "eastron-sdm630",
                        "load": "pump",
                    }
                ],
            }
        ],
        "faults": [] if fault is None else [{"meter": "pump", **fault}],
    }
    df = History(plan(parse_scenario(data)), days=6, interval_s=60).collect()
    return df.filter(pl.col("channel") == "power_w").sort("ts")["true_value"].to_numpy()


def _starts_and_energy(power: np.ndarray, day: int) -> tuple[int, float]:
    p = power[day * 1440 : (day + 1) * 1440]
    on = p > 1000
    starts = int((on[1:] & ~on[:-1]).sum())
    return starts, float(p[on].sum() * 60 / 3.6e6)


def test_short_cycling_multiplies_pump_starts() -> None:
    base = _pump_run(None)
    cycling = _pump_run(
        {"kind": "degradation", "start": "+1d", "ramp_days": 2, "short_cycling_factor": 3.0}
    )
    assert np.array_equal(base[:1440], cycling[:1440])
    base_starts, _ = _starts_and_energy(base, 5)
    starts, _ = _starts_and_energy(cycling, 5)
    assert starts > 2.2 * base_starts


def test_worn_pump_uses_more_energy_per_cycle() -> None:
    base = _pump_run(None)
    worn = _pump_run(
        {"kind": "degradation", "start": "+1d", "ramp_days": 3, "energy_per_cycle_pct": 40}
    )
    base_starts, base_energy = _starts_and_energy(base, 5)
    starts, energy = _starts_and_energy(worn, 5)
    assert abs(starts - base_starts) <= 0.15 * base_starts
    assert energy / starts > 1.25 * base_energy / base_starts
