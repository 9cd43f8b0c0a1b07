"""analytics.schedule: which windows are due, tiling time without gaps or overlaps."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics.jobs import JobConfig, Project, default_trigger, lock_key
from analytics.schedule import (
    day_ceil,
    day_floor,
    due_daily,
    due_intraday,
    floor_tick,
    initial_cursors,
    lag,
    local_midnight,
)

UTC = dt.UTC
Q = dt.timedelta(minutes=15)
ZONES = ["UTC", "Asia/Shanghai", "Europe/Berlin", "America/New_York", "Asia/Kolkata",
         "Australia/Lord_Howe", "Asia/Kathmandu"]  # fmt: skip

# Hypothesis takes naive bounds and attaches the zone itself.
_LOW, _HIGH = dt.datetime(2020, 1, 1), dt.datetime(2035, 12, 31)  # noqa: DTZ001
instants = st.datetimes(min_value=_LOW, max_value=_HIGH, timezones=st.just(UTC))
ticks = st.sampled_from([1, 5, 10, 15, 30, 60]).map(lambda m: dt.timedelta(minutes=m))


@given(ts=instants, tick=ticks)
def test_floor_tick_is_on_a_boundary_within_one_tick(ts: dt.datetime, tick: dt.timedelta) -> None:
    start = floor_tick(ts, tick)
    assert start <= ts < start + tick
    assert start.second == 0
    assert start.microsecond == 0
    assert (start.minute * 60) % (tick.total_seconds()) == 0


@given(done=instants, span=st.integers(0, 2000), extra=st.integers(0, 899), tick=ticks,
       settle=st.integers(0, 600), step=st.integers(1, 40))  # fmt: skip
def test_intraday_windows_tile_up_to_the_horizon(
    done: dt.datetime, span: int, extra: int, tick: dt.timedelta, settle: int, step: int
) -> None:
    start = floor_tick(done, tick)
    now = start + span * tick + dt.timedelta(seconds=extra + settle)
    windows = due_intraday(
        start, now, tick=tick, settle=dt.timedelta(seconds=settle), max_per_step=step
    )
    horizon = floor_tick(now - dt.timedelta(seconds=settle), tick)
    assert sum(w.units for w in windows) == (horizon - start) // tick
    cursor = start
    for w in windows:
        assert w.start == cursor
        assert 1 <= w.units <= step
        assert w.end - w.start == w.units * tick
        cursor = w.end
    assert cursor == max(horizon, start)
    # Everything but the last step is full: catching up uses as few transactions as it can.
    assert all(w.units == step for w in windows[:-1])


def test_a_tick_waits_for_the_settle_delay() -> None:
    start = dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    settle = dt.timedelta(minutes=2)
    just_closed = start + Q + dt.timedelta(minutes=1)
    assert due_intraday(start, just_closed, tick=Q, settle=settle, max_per_step=4) == []
    settled = start + Q + settle
    (w,) = due_intraday(start, settled, tick=Q, settle=settle, max_per_step=4)
    assert (w.start, w.end, w.units) == (start, start + Q, 1)


def test_a_cursor_off_the_tick_grid_is_refused() -> None:
    off = dt.datetime(2026, 3, 1, 10, 7, tzinfo=UTC)
    with pytest.raises(ValueError, match="tick boundary"):
        due_intraday(off, off + dt.timedelta(hours=1), tick=Q, settle=Q, max_per_step=4)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        floor_tick(dt.datetime(2026, 3, 1, 10, 7), Q)  # noqa: DTZ001


def test_six_hours_behind_catch_up_in_bounded_steps() -> None:
    done = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    now = done + dt.timedelta(hours=6, minutes=3)
    windows = due_intraday(done, now, tick=Q, settle=dt.timedelta(minutes=2), max_per_step=16)
    assert [w.units for w in windows] == [16, 8]
    assert windows[-1].end == done + dt.timedelta(hours=6)


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("Europe/Berlin", dt.date(2026, 3, 29), 23),
        ("Europe/Berlin", dt.date(2026, 10, 25), 25),
        ("America/New_York", dt.date(2026, 3, 8), 23),
        ("America/New_York", dt.date(2026, 11, 1), 25),
        ("Asia/Shanghai", dt.date(2026, 3, 29), 24),
        ("Australia/Lord_Howe", dt.date(2026, 4, 5), 24.5),  # a half-hour DST shift
    ],
)
def test_local_days_have_their_real_length(zone: str, day: dt.date, hours: float) -> None:
    start = local_midnight(day, zone)
    end = local_midnight(day + dt.timedelta(days=1), zone)
    assert (end - start) / dt.timedelta(hours=1) == hours
    (w,) = due_daily(start, end + dt.timedelta(hours=3), intraday_done_until=end, time_zone=zone,
                     settle=dt.timedelta(minutes=2), max_per_step=3)  # fmt: skip
    assert (w.start, w.end, w.units) == (start, end, 1)


@given(done=instants, days=st.integers(0, 40), zone=st.sampled_from(ZONES),
       step=st.integers(1, 7), intraday_lag_h=st.integers(0, 72))  # fmt: skip
def test_daily_windows_are_whole_local_days_tiling_to_the_horizon(
    done: dt.datetime, days: int, zone: str, step: int, intraday_lag_h: int
) -> None:
    start = day_floor(done, zone)
    now = start + dt.timedelta(days=days, hours=5)
    intraday = now - dt.timedelta(hours=intraday_lag_h)
    settle = dt.timedelta(minutes=2)
    windows = due_daily(start, now, intraday_done_until=intraday, time_zone=zone, settle=settle,
                        max_per_step=step)  # fmt: skip
    tz = ZoneInfo(zone)
    cursor = start
    for w in windows:
        assert w.start == cursor
        assert 1 <= w.units <= step
        local_start, local_end = w.start.astimezone(tz), w.end.astimezone(tz)
        assert (local_start.hour, local_start.minute) == (0, 0)
        assert (local_end.hour, local_end.minute) == (0, 0)
        assert (local_end.date() - local_start.date()).days == w.units
        cursor = w.end
    horizon = min(now - settle, intraday)
    assert cursor <= max(horizon, start)
    # The next local midnight after the cursor is beyond the horizon: nothing due is left out.
    assert day_ceil(cursor + dt.timedelta(seconds=1), zone) > horizon


def test_a_day_waits_for_the_intraday_job() -> None:
    zone = "Asia/Shanghai"
    start = local_midnight(dt.date(2026, 3, 1), zone)
    end = local_midnight(dt.date(2026, 3, 2), zone)
    late = end + dt.timedelta(hours=6)
    settle = dt.timedelta(minutes=2)
    behind = end - Q
    assert due_daily(start, late, intraday_done_until=behind, time_zone=zone, settle=settle,
                     max_per_step=1) == []  # fmt: skip
    assert due_daily(start, late, intraday_done_until=end, time_zone=zone, settle=settle,
                     max_per_step=1)[0].end == end  # fmt: skip


@given(now=instants, zone=st.sampled_from(ZONES), tick=ticks,
       backfill_h=st.integers(0, 24 * 30))  # fmt: skip
def test_initial_cursors_are_aligned(
    now: dt.datetime, zone: str, tick: dt.timedelta, backfill_h: int
) -> None:
    intraday, daily = initial_cursors(
        now, backfill=dt.timedelta(hours=backfill_h), tick=tick, time_zone=zone
    )
    assert floor_tick(intraday, tick) == intraday
    assert day_floor(daily, zone) == daily
    assert intraday <= daily < intraday + dt.timedelta(days=1)
    assert intraday <= now - dt.timedelta(hours=backfill_h)


def test_lag_is_never_negative() -> None:
    t = dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert lag(t, t - Q) == dt.timedelta(0)
    assert lag(t, t + Q) == Q


def test_wake_ups_fall_on_tick_boundaries_plus_the_settle_delay() -> None:
    config = JobConfig(tick=Q, settle=dt.timedelta(minutes=2), daily_hour=1)
    project = Project(1, "P", "Asia/Shanghai")
    trigger = default_trigger(config, "intraday", project)
    now = dt.datetime(2026, 3, 1, 10, 3, 30, tzinfo=UTC)
    fire = trigger.get_next_fire_time(None, now)
    assert fire == dt.datetime(2026, 3, 1, 10, 17, tzinfo=UTC)
    assert trigger.get_next_fire_time(fire, fire) == fire + Q
    # Started off the grid (a catch-up run at start-up), the next wake-up is back on it.
    off = dt.datetime(2026, 3, 1, 10, 9, 41, tzinfo=UTC)
    assert trigger.get_next_fire_time(off, off) == fire
    hourly = default_trigger(JobConfig(tick=dt.timedelta(hours=1), settle=dt.timedelta(
        seconds=150)), "intraday", project)  # fmt: skip
    assert hourly.get_next_fire_time(None, now) == dt.datetime(2026, 3, 1, 11, 2, 30, tzinfo=UTC)
    # The daily wake-up is at 01:05 in the project's zone: 17:05 UTC the day before.
    daily = default_trigger(config, "daily", project).get_next_fire_time(None, now)
    assert daily == dt.datetime(2026, 3, 1, 17, 5, tzinfo=UTC)


def test_lock_keys_differ_by_kind_and_project() -> None:
    keys = {lock_key(k, p) for k in ("intraday", "daily") for p in (1, 2, 2**31 + 1)}
    assert len(keys) == 4  # project 2**31 + 1 wraps onto project 1: they take turns
    assert all(-(2**31) <= a < 2**31 and 0 <= b < 2**31 for a, b in keys)


def test_analytics_settings_refuse_a_tick_that_does_not_divide_the_hour() -> None:
    from pydantic import ValidationError  # noqa: PLC0415

    from meterward.settings import AnalyticsSettings  # noqa: PLC0415

    assert AnalyticsSettings(tick_minutes=20).tick_minutes == 20
    with pytest.raises(ValidationError, match="must divide 60"):
        AnalyticsSettings(tick_minutes=7)
