"""The outbox on a real SQLite file: round trip, seq durability, atomic cycles, the byte
budget on disk, the full policies and their counters."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_agent.outbox import Outbox, iter_rows
from gateway_agent.sample import Sample
from gateway_agent.site import InstantPolicy, OutboxConfig
from gateway_agent.thinning import counter_delta_sum

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def cycle(i: int, meters: int = 10, *, instants: bool = True) -> list[Sample]:
    """One poll cycle at T0 + i seconds: an energy counter (and power) per meter."""
    ts = T0 + dt.timedelta(seconds=i)
    out = [
        Sample(f"M{m:03d}", "energy_import_kwh", ts, 1000.0 * m + 0.01 * i, "kWh")
        for m in range(meters)
    ]
    if instants:
        out += [Sample(f"M{m:03d}", "power_w", ts, 100.0 + i, "W") for m in range(meters)]
    return out


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "outbox.db")


@pytest.fixture
def outbox(path: str) -> Iterator[Outbox]:
    box = Outbox(OutboxConfig(path=path), boot_id=uuid.uuid4())
    yield box
    box.close()


def test_round_trip_read_and_ack(outbox: Outbox) -> None:
    samples = [
        Sample("M1", "energy_import_kwh", T0, 12.5, "kWh", raw=(1, 2)),
        Sample("M1", "power_w", T0 + dt.timedelta(microseconds=1), None, "W", "comm_error"),
        Sample("M2", "voltage_l1_v", T0, 231.2, "V", "out_of_range"),
    ]
    outcome = outbox.append(samples)
    assert (outcome.accepted, outcome.first_seq, outcome.last_seq) == (3, 1, 3)
    rows = outbox.read(0, 10)
    assert [r.reading for r in rows] == [s.to_reading(i + 1) for i, s in enumerate(samples)]
    assert {r.boot_id for r in rows} == {outbox.boot_id}
    assert [r.reading.seq for r in outbox.read(1, 10, upto_seq=2)] == [2]
    assert outbox.ack(uuid.uuid4(), 1, 3) == 0  # another boot's ack deletes nothing
    assert outbox.ack(outbox.boot_id, 1, 2) == 2
    assert [r.reading.seq for r in outbox.read(0, 10)] == [3]
    stats = outbox.stats()
    assert (stats.rows, stats.appended_total, stats.acked_total, stats.dropped_total) == (
        1,
        3,
        2,
        0,
    )


def test_seq_survives_reopen_and_is_never_reused(path: str) -> None:
    first_boot, second_boot = uuid.uuid4(), uuid.uuid4()
    with Outbox(OutboxConfig(path=path), boot_id=first_boot) as box:
        box.append(cycle(0, 3))
        assert box.ack(first_boot, 1, 6) == 6  # everything delivered: the table is empty
    with Outbox(OutboxConfig(path=path), boot_id=second_boot) as box:
        assert box.max_seq() == 6
        outcome = box.append(cycle(1, 3))
        assert (outcome.first_seq, outcome.last_seq) == (7, 12)
        assert {r.boot_id for r in box.read(0, 100)} == {second_boot}


def test_rows_of_earlier_boots_keep_their_boot(path: str) -> None:
    old, new = uuid.uuid4(), uuid.uuid4()
    with Outbox(OutboxConfig(path=path), boot_id=old) as box:
        box.append(cycle(0, 2))
    with Outbox(OutboxConfig(path=path), boot_id=new) as box:
        box.append(cycle(1, 2))
        rows = box.read(0, 100)
        assert [r.boot_id for r in rows] == [old] * 4 + [new] * 4
        assert box.ack(new, 1, 8) == 4  # the new boot's ack leaves the old boot's rows
        assert box.ack(old, 1, 8) == 4


def test_a_failing_cycle_leaves_nothing(outbox: Outbox) -> None:
    outbox.append(cycle(0, 2))
    bad = [*cycle(1, 2), Sample("M9", "power_w", T0, object(), "W")]  # type: ignore[arg-type]
    with pytest.raises(Exception, match="type"):
        outbox.append(bad)
    assert outbox.stats().rows == 4
    assert outbox.append(cycle(2, 2)).first_seq == 5  # no seq was consumed by the failure


def test_kill_mid_transaction_leaves_nothing_of_the_cycle(path: str) -> None:
    """A process killed (os._exit) while inserting a cycle: the cycle is not there."""
    child = textwrap.dedent(
        f"""
        import os, sys, uuid
        sys.path.insert(0, {str(ROOT)!r})
        from tests.unit.test_outbox import cycle
        from gateway_agent.outbox import Outbox
        from gateway_agent.site import OutboxConfig
        box = Outbox(OutboxConfig(path={path!r}), boot_id=uuid.uuid4())
        box.append(cycle(0, 5))
        real = box._conn

        class Dying:
            def __getattr__(self, name):
                return getattr(real, name)

            def executemany(self, sql, rows):
                def some():
                    for n, row in enumerate(rows):
                        if n == 5:
                            os._exit(9)
                        yield row
                return real.executemany(sql, some())

        box._conn = Dying()
        box.append(cycle(1, 5))
        """
    )
    result = subprocess.run([sys.executable, "-c", child], check=False, cwd=ROOT)
    assert result.returncode == 9
    with Outbox(OutboxConfig(path=path), boot_id=uuid.uuid4()) as box:
        seqs = [r.reading.seq for r in iter_rows(box)]
        assert seqs == list(range(1, 11))
        assert box.append(cycle(2, 1)).first_seq == 11


def fill_up(box: Outbox, cycles: int, meters: int = 10, *, instants: bool = True) -> None:
    for i in range(cycles):
        box.append(cycle(i, meters, instants=instants))


@pytest.mark.parametrize("policy", ["reject_new", "overwrite_oldest"])
def test_budget_is_never_exceeded_on_disk(path: str, policy: InstantPolicy) -> None:
    budget = 512 * 1024
    config = OutboxConfig(path=path, budget_bytes=budget, instant_policy=policy, thin_keep_s=60)
    cycle_rows = 20
    with Outbox(config, boot_id=uuid.uuid4()) as box:
        worst = 0
        for i in range(3000):
            box.append(cycle(i, 10))
            stats = box.stats()
            worst = max(worst, stats.disk_bytes)
            assert stats.used_bytes <= stats.capacity_bytes
            # db + WAL on disk within the budget plus the documented slack (one cycle).
            assert stats.disk_bytes <= budget + cycle_rows * 100, (i, stats)
        assert stats.dropped_total > 0  # the budget really was reached
    db = Path(path)
    files = db.stat().st_size + (
        Path(path + "-wal").stat().st_size if Path(path + "-wal").exists() else 0
    )
    assert files <= budget
    assert worst > budget * 0.8


def series_values(box: Outbox, meter: str, channel: str) -> list[float]:
    return [
        r.reading.value
        for r in iter_rows(box)
        if r.reading.meter_id == meter
        and r.reading.channel == channel
        and r.reading.value is not None
    ]


def test_counters_are_thinned_when_full_and_totals_kept(path: str) -> None:
    config = OutboxConfig(path=path, budget_bytes=512 * 1024, thin_keep_s=120)
    with Outbox(config, boot_id=uuid.uuid4()) as box:
        cycles = 4000
        fill_up(box, cycles, instants=False)
        stats = box.stats()
        assert stats.thinned_total > 0
        assert (stats.rejected_total, stats.overwritten_total) == (0, 0)
        assert stats.dropped_total == stats.thinned_total
        assert stats.rows + stats.thinned_total == stats.appended_total == cycles * 10
        for m in range(10):
            kept = series_values(box, f"M{m:03d}", "energy_import_kwh")
            truth = [1000.0 * m + 0.01 * i for i in range(cycles)]
            assert kept[0] == truth[0]
            assert kept[-1] == truth[-1]
            assert counter_delta_sum(kept) == pytest.approx(truth[-1] - truth[0])
        # The oldest part went to one sample per 2 minutes; the newest is still dense.
        oldest = [r.reading.ts for r in box.read(0, 50) if r.reading.meter_id == "M000"]
        assert oldest[1] - oldest[0] >= dt.timedelta(seconds=60)


def test_reject_new_refuses_instantaneous_rows_only(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = OutboxConfig(
        path=path, budget_bytes=512 * 1024, instant_policy="reject_new", thin_keep_s=60
    )
    caplog.set_level(logging.WARNING, "gateway_agent.outbox")
    with Outbox(config, boot_id=uuid.uuid4()) as box:
        fill_up(box, 2500)
        stats = box.stats()
        assert stats.rejected_total > 0
        assert stats.thinned_total > 0
        assert stats.rows + stats.dropped_total == 2500 * 20
        # Every counter sample was accepted (some thinned later); instantaneous ones were
        # refused, or overwritten only once counters needed their room.
        counters = sum(1 for r in iter_rows(box) if r.reading.channel == "energy_import_kwh")
        assert counters + stats.thinned_total == 2500 * 10
        assert stats.rejected_total + stats.overwritten_total == 2500 * 10 - sum(
            1 for r in iter_rows(box) if r.reading.channel == "power_w"
        )
        # A cycle is either accepted whole or loses just its instantaneous values.
        outcomes = [box.append(cycle(i)) for i in range(2500, 2600)]
        assert {(o.accepted, o.rejected) for o in outcomes} <= {(20, 0), (10, 10)}
        assert (10, 10) in {(o.accepted, o.rejected) for o in outcomes}
    assert any("reject_new refused" in r.getMessage() for r in caplog.records)
    assert any("thinned" in r.getMessage() for r in caplog.records)


def test_overwrite_oldest_deletes_the_oldest_instantaneous_rows(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = OutboxConfig(
        path=path, budget_bytes=512 * 1024, instant_policy="overwrite_oldest", thin_keep_s=60
    )
    caplog.set_level(logging.WARNING, "gateway_agent.outbox")
    with Outbox(config, boot_id=uuid.uuid4()) as box:
        fill_up(box, 2500)
        stats = box.stats()
        assert stats.overwritten_total > 0
        assert stats.rejected_total == 0
        assert stats.rows + stats.dropped_total == 2500 * 20
        power = [r.reading for r in iter_rows(box) if r.reading.channel == "power_w"]
        # The newest instantaneous values are all there, the oldest are gone.
        assert power[-1].ts == T0 + dt.timedelta(seconds=2499)
        assert power[0].ts > T0 + dt.timedelta(seconds=100)
        newest = {p.ts for p in power}
        assert len(newest) == (power[-1].ts - power[0].ts).total_seconds() + 1  # contiguous
    assert any("overwrite_oldest deleted" in r.getMessage() for r in caplog.records)


def test_warnings_fire_once_at_80_and_95_percent(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = OutboxConfig(path=path, budget_bytes=512 * 1024, thin_keep_s=60)
    caplog.set_level(logging.WARNING, "gateway_agent.outbox")
    with Outbox(config, boot_id=uuid.uuid4()) as box:
        levels_seen: list[tuple[float, ...]] = []
        for i in range(2500):
            box.append(cycle(i))
            stats = box.stats()
            if not levels_seen or levels_seen[-1] != stats.warning_levels:
                levels_seen.append(stats.warning_levels)
        assert levels_seen[:3] == [(), (0.8,), (0.8, 0.95)]
        total = box.stats().warnings_total
    warnings = [r.getMessage() for r in caplog.records if "% full" in r.getMessage()]
    # One log line per upward crossing, each counted; a 95 % crossing follows an 80 % one
    # (policies may free enough to fall below 80 % again, which re-arms both).
    assert len(warnings) == total >= 2
    assert warnings[0].startswith("outbox 80% full")
    assert warnings[1].startswith("outbox 95% full")
    for previous, current in itertools.pairwise(warnings):
        if current.startswith("outbox 95%"):
            assert previous.startswith("outbox 80%")


def test_nothing_dropped_without_a_policy(outbox: Outbox) -> None:
    fill_up(outbox, 200)
    stats = outbox.stats()
    assert (stats.dropped_total, stats.policy_actions_total, stats.warnings_total) == (0, 0, 0)
    assert stats.rows == stats.appended_total == 4000


def test_a_budget_too_small_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="WAL reserve"):
        Outbox(OutboxConfig(path=path, budget_bytes=150 * 1024), boot_id=uuid.uuid4())
