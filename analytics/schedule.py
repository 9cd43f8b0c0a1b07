"""When analytics runs: which windows of a project are due, given how far it has got and now.

Two job kinds per project. The **intraday** job (consumption, detectors, episodes) works in
ticks aligned to UTC wall-clock boundaries (every 15 minutes by default); the **daily** job
(rollups, equipment trends) works in the project's local days, midnight to midnight, so 23- and
25-hour days are days. Each job keeps a cursor, `done_until`: everything before it is done,
nothing after it is. A window is due once it has closed and a settle delay has passed (readings
still in flight from gateways), and a day is due only once the intraday job has covered all of
it, because its rollups read that consumption.

After downtime the cursor is far behind: the windows to catch up are returned oldest first in
steps of at most `max_per_step` ticks (or days), so each step is one bounded transaction and a
worker that was down for a day does not try to process it in one giant one.

Everything here is a pure function of its arguments: `now` is passed in (tests drive a clock).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal
from zoneinfo import ZoneInfo

JobKind = Literal["intraday", "daily"]
JOB_KINDS: Final[tuple[JobKind, ...]] = ("intraday", "daily")

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """A half-open interval [start, end) in UTC worth `units` ticks (intraday) or days (daily)."""

    start: dt.datetime
    end: dt.datetime
    units: int


def _utc(ts: dt.datetime) -> dt.datetime:
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts.isoformat()}: pass an aware UTC instant")
    return ts.astimezone(dt.UTC)


def floor_tick(ts: dt.datetime, tick: dt.timedelta) -> dt.datetime:
    """The start of the UTC-aligned tick that contains `ts`.

    >>> floor_tick(dt.datetime(2026, 3, 1, 10, 44, 59, tzinfo=dt.UTC), dt.timedelta(minutes=15))
    datetime.datetime(2026, 3, 1, 10, 30, tzinfo=datetime.timezone.utc)
    """
    ts = _utc(ts)
    return ts - (ts - _EPOCH) % tick


def day_floor(ts: dt.datetime, time_zone: str) -> dt.datetime:
    """The UTC instant of the local midnight at or before `ts` in `time_zone`.

    >>> day_floor(dt.datetime(2026, 3, 1, 15, 0, tzinfo=dt.UTC), "Asia/Shanghai")
    datetime.datetime(2026, 2, 28, 16, 0, tzinfo=datetime.timezone.utc)
    """
    zone = ZoneInfo(time_zone)
    local = _utc(ts).astimezone(zone)
    return local_midnight(local.date(), time_zone)


def local_midnight(day: dt.date, time_zone: str) -> dt.datetime:
    """The UTC instant at which local `day` begins in `time_zone`.

    >>> local_midnight(dt.date(2026, 3, 29), "Europe/Berlin")
    datetime.datetime(2026, 3, 28, 23, 0, tzinfo=datetime.timezone.utc)
    """
    # Wall-clock arithmetic in the zone (a naive midnight localised), then to UTC: a day that
    # loses or gains an hour to DST still begins at its own midnight. No zone shifts at
    # midnight itself except a few historic ones, where fold=0 picks the first instant.
    return dt.datetime.combine(day, dt.time(0), tzinfo=ZoneInfo(time_zone)).astimezone(dt.UTC)


def day_ceil(ts: dt.datetime, time_zone: str) -> dt.datetime:
    """The UTC instant of the local midnight at or after `ts`.

    >>> day_ceil(dt.datetime(2026, 3, 1, 15, 0, tzinfo=dt.UTC), "Asia/Shanghai")
    datetime.datetime(2026, 3, 1, 16, 0, tzinfo=datetime.timezone.utc)
    """
    start = day_floor(ts, time_zone)
    if start == _utc(ts):
        return start
    local_day = start.astimezone(ZoneInfo(time_zone)).date()
    return local_midnight(local_day + dt.timedelta(days=1), time_zone)


def initial_cursors(
    now: dt.datetime, *, backfill: dt.timedelta, tick: dt.timedelta, time_zone: str
) -> tuple[dt.datetime, dt.datetime]:
    """Where a project seen for the first time starts: (intraday, daily) `done_until`.

    Processing starts at the local midnight `backfill` before `now` (on a tick boundary), so
    the first day the daily job rolls up is a whole day.

    >>> i, d = initial_cursors(dt.datetime(2026, 3, 2, 9, 7, tzinfo=dt.UTC),
    ...     backfill=dt.timedelta(hours=24), tick=dt.timedelta(minutes=15),
    ...     time_zone="Asia/Shanghai")
    >>> i.isoformat(), d.isoformat()
    ('2026-02-28T16:00:00+00:00', '2026-02-28T16:00:00+00:00')
    """
    intraday = floor_tick(day_floor(_utc(now) - backfill, time_zone), tick)
    return intraday, day_ceil(intraday, time_zone)


def due_intraday(
    done_until: dt.datetime,
    now: dt.datetime,
    *,
    tick: dt.timedelta,
    settle: dt.timedelta,
    max_per_step: int,
) -> list[Window]:
    """The intraday windows due at `now`, oldest first, each at most `max_per_step` ticks.

    A tick is due once `settle` has passed after it closed.

    >>> t = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
    >>> q = dt.timedelta(minutes=15)
    >>> [(w.start.strftime("%H:%M"), w.end.strftime("%H:%M"), w.units) for w in due_intraday(
    ...     t, t + dt.timedelta(hours=1, minutes=20), tick=q, settle=dt.timedelta(minutes=2),
    ...     max_per_step=3)]
    [('10:00', '10:45', 3), ('10:45', '11:15', 2)]
    """
    if max_per_step < 1:
        raise ValueError("max_per_step must be at least 1")
    start = _utc(done_until)
    if floor_tick(start, tick) != start:
        raise ValueError(f"cursor {start.isoformat()} is not on a tick boundary")
    horizon = floor_tick(_utc(now) - settle, tick)
    windows: list[Window] = []
    step = tick * max_per_step
    while start < horizon:
        end = min(start + step, horizon)
        windows.append(Window(start, end, (end - start) // tick))
        start = end
    return windows


def due_daily(
    done_until: dt.datetime,
    now: dt.datetime,
    *,
    intraday_done_until: dt.datetime,
    time_zone: str,
    settle: dt.timedelta,
    max_per_step: int,
) -> list[Window]:
    """The local days due at `now`, oldest first, at most `max_per_step` days per window.

    A day is due once it has ended, `settle` has passed, and the intraday job has covered it.

    >>> d = dt.datetime(2026, 3, 27, 23, 0, tzinfo=dt.UTC)  # Berlin, Saturday 00:00 CET
    >>> later = dt.datetime(2026, 3, 30, 12, 0, tzinfo=dt.UTC)
    >>> windows = due_daily(d, later, intraday_done_until=later, time_zone="Europe/Berlin",
    ...     settle=dt.timedelta(0), max_per_step=1)
    >>> [(w.start.isoformat(), (w.end - w.start) / dt.timedelta(hours=1)) for w in windows]
    [('2026-03-27T23:00:00+00:00', 24.0), ('2026-03-28T23:00:00+00:00', 23.0)]

    (Sunday 29 March 2026 has 23 hours in Berlin; Monday has not ended at `later`.)
    """
    if max_per_step < 1:
        raise ValueError("max_per_step must be at least 1")
    start = _utc(done_until)
    if day_floor(start, time_zone) != start:
        raise ValueError(f"cursor {start.isoformat()} is not a local midnight in {time_zone}")
    horizon = min(_utc(now) - settle, _utc(intraday_done_until))
    zone = ZoneInfo(time_zone)
    windows: list[Window] = []
    while True:
        day = start.astimezone(zone).date()
        days = 0
        end = start
        while days < max_per_step:
            nxt = local_midnight(day + dt.timedelta(days=days + 1), time_zone)
            if nxt > horizon:
                break
            end = nxt
            days += 1
        if days == 0:
            return windows
        windows.append(Window(start, end, days))
        start = end


def lag(done_until: dt.datetime, now: dt.datetime) -> dt.timedelta:
    """How far a job's cursor is behind `now` (zero when it is ahead).

    >>> lag(dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC), dt.datetime(2026, 3, 1, 10, 20,
    ...     tzinfo=dt.UTC))
    datetime.timedelta(seconds=1200)
    """
    return max(_utc(now) - _utc(done_until), dt.timedelta(0))
