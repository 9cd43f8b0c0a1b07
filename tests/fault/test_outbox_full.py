"""R10 Outbox full: the uplink is down for three times as long as the budget covers.

The byte budget is set to the nominal rate (measured on a real file) for a period, scaled
from 72 h to two simulated hours of 10-second cycles so the test runs in seconds. The outage
then lasts six simulated hours. The policies must act as configured, every action counted
and logged, warnings at 80 % and 95 %, nothing dropped silently, the budget held on disk, and
the consumption over any window of the thinned counters equal to the unthinned truth.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from pathlib import Path

import pytest

from gateway_agent.outbox import WAL_RESERVE_MIN, Outbox, iter_rows
from gateway_agent.sample import Sample
from gateway_agent.site import InstantPolicy, OutboxConfig
from gateway_agent.thinning import reset_aware_consumption

pytestmark = [pytest.mark.fault, pytest.mark.slow]

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
METERS = 20
CYCLE_S = 10
NOMINAL_CYCLES = 720  # the budget covers 2 h at the nominal rate ("72 h", scaled)
OUTAGE_CYCLES = 3 * NOMINAL_CYCLES
KEEP_S = 300.0
RESET_AT = 1000  # meter M007 is replaced: its counter restarts from zero


def energy(meter: int, i: int) -> float:
    """The truth: kWh of `meter` at cycle `i` (uneven load, one reset)."""
    base = 0.0 if meter == 7 and i >= RESET_AT else 5000.0 * meter
    start = RESET_AT if meter == 7 and i >= RESET_AT else 0
    return base + sum(0.001 * (1 + (meter + k) % 5) for k in range(start, i))


TRUTH = {m: [round(energy(m, i), 6) for i in range(OUTAGE_CYCLES)] for m in range(METERS)}


def cycle(i: int) -> list[Sample]:
    ts = T0 + dt.timedelta(seconds=CYCLE_S * i)
    out = []
    for m in range(METERS):
        meter = f"P001-E-{m:04d}"
        out.append(Sample(meter, "energy_import_kwh", ts, TRUTH[m][i], "kWh"))
        out.append(Sample(meter, "power_w", ts, 1000.0 + m + i % 7, "W"))
        out.append(Sample(meter, "voltage_l1_v", ts, 230.0 + (i % 3), "V"))
    return out


def nominal_bytes_per_cycle(tmp_path: Path) -> float:
    """Measure the on-disk growth per cycle on a real file (no budget pressure)."""
    config = OutboxConfig(path=str(tmp_path / "calibrate.db"), budget_bytes=1 << 30)
    with Outbox(config, boot_id=uuid.uuid4()) as box:
        box.append(cycle(0))
        before = box.stats().used_bytes
        for i in range(1, 201):
            box.append(cycle(i))
        return (box.stats().used_bytes - before) / 200


@pytest.mark.parametrize("policy", ["reject_new", "overwrite_oldest"])
def test_outbox_full_policies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: InstantPolicy
) -> None:
    per_cycle = nominal_bytes_per_cycle(tmp_path)
    capacity = int(per_cycle * NOMINAL_CYCLES)
    budget = capacity + max(capacity // 7, WAL_RESERVE_MIN)  # capacity + the WAL reserve
    config = OutboxConfig(
        path=str(tmp_path / "outbox.db"),
        budget_bytes=budget,
        instant_policy=policy,
        thin_keep_s=KEEP_S,
    )
    caplog.set_level(logging.WARNING, "gateway_agent.outbox")
    samples_total = 0
    first_action_cycle: int | None = None
    with Outbox(config, boot_id=uuid.uuid4()) as box:
        assert box.capacity_bytes == pytest.approx(capacity, rel=0.02)
        for i in range(OUTAGE_CYCLES):
            outcome = box.append(cycle(i))
            samples_total += 3 * METERS
            assert outcome.accepted + outcome.rejected == 3 * METERS
            stats = box.stats()
            if first_action_cycle is None and stats.policy_actions_total:
                first_action_cycle = i
            if not stats.policy_actions_total:
                assert stats.dropped_total == 0  # nothing given up before a policy acts
            # The budget holds on disk (plus the documented slack of one cycle).
            assert stats.disk_bytes <= budget + 3 * METERS * 100, (i, stats)
            # Counters: every sample accepted, whatever the instant policy.
            assert outcome.accepted >= METERS
        stats = box.stats()

        # The budget was sized for NOMINAL_CYCLES: policies start about there.
        assert first_action_cycle is not None
        assert 0.8 * NOMINAL_CYCLES <= first_action_cycle <= 1.1 * NOMINAL_CYCLES

        # No silent drop: every sample is stored or counted under a policy.
        assert stats.rows + stats.dropped_total == samples_total
        assert stats.dropped_total == (
            stats.thinned_total + stats.rejected_total + stats.overwritten_total
        )
        assert stats.thinned_total > 0
        if policy == "reject_new":
            assert stats.rejected_total > 0
        else:
            assert stats.overwritten_total > 0
            assert stats.rejected_total == 0
        assert stats.warnings_total >= 2

        # Totals: for each meter, consumption over any window bounded by kept samples equals
        # the truth; over the whole outage too (first and last samples were kept).
        rows = [r.reading for r in iter_rows(box) if r.reading.channel == "energy_import_kwh"]
        assert len(rows) < METERS * OUTAGE_CYCLES / 5  # really thinned
        for m in range(METERS):
            kept = [r for r in rows if r.meter_id == f"P001-E-{m:04d}"]
            index = [int((r.ts - T0).total_seconds()) // CYCLE_S for r in kept]
            assert index[0] == 0
            assert index[-1] == OUTAGE_CYCLES - 1
            values = [r.value for r in kept if r.value is not None]
            assert len(values) == len(kept)
            for a, b in [(0, len(kept) - 1), (1, len(kept) // 2), (len(kept) // 3, -1)]:
                window = values[a : (b % len(kept)) + 1]
                truth = TRUTH[m][index[a] : index[b] + 1]
                assert math.isclose(
                    reset_aware_consumption(window),
                    reset_aware_consumption(truth),
                    rel_tol=1e-9,
                    abs_tol=1e-9,
                )
            # Older counter samples are at most one per KEEP_S (plus reset anchors).
            old = [i for i in index if i < NOMINAL_CYCLES]
            assert len(old) <= NOMINAL_CYCLES * CYCLE_S / KEEP_S + 4

        # Delivered at last: acking everything empties the outbox.
        assert box.ack(box.boot_id, 0, box.max_seq()) == stats.rows
        assert box.rows() == 0

    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("outbox 80% full") for m in messages)
    assert any(m.startswith("outbox 95% full") for m in messages)
    assert any("thinned" in m for m in messages)
    action = "reject_new refused" if policy == "reject_new" else "overwrite_oldest deleted"
    assert any(action in m for m in messages)
