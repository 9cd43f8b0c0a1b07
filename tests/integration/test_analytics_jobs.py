"""The analytics scheduler on real PostgreSQL: advisory locks, cursors, catch-up, failures.

The tick body here is a recording callable: it writes a row into a table of its own on the
step's connection (so what a rolled-back step wrote is seen to vanish) and remembers each call.
The scheduler, the locks and the cursors under test are the real ones.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from analytics.jobs import (
    AnalyticsWorker,
    JobConfig,
    Project,
    TickContext,
    TickOutcome,
    job_status,
    running,
)
from analytics.schedule import JobKind, day_floor, floor_tick
from store.migrations import migrate
from store.pool import open_pool
from tests.conftest import DatabaseFactory

pytestmark = pytest.mark.integration

UTC = dt.UTC
Q = dt.timedelta(minutes=15)
# Three projects in three zones: UTC, a zone 8 h ahead, one with DST.
PROJECTS = {"P-UTC": "UTC", "P-SHA": "Asia/Shanghai", "P-NYC": "America/New_York"}
START = dt.datetime(2026, 3, 7, 9, 4, tzinfo=UTC)  # New York's DST starts 8 March 2026
ENTRY = [sys.executable, "-c", "from meterward.cli import main; main()"]


class FakeClock:
    """The clock every worker of a test reads; the test moves it."""

    def __init__(self, now: dt.datetime) -> None:
        self._now = now
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, by: dt.timedelta) -> None:
        with self._lock:
            self._now += by


@dataclass
class Recorder:
    """A tick body that records its calls and writes one marker row per call."""

    delay_s: float = 0.0
    fail: Callable[[TickContext], bool] = lambda ctx: False
    calls: list[tuple[str, JobKind, str, dt.datetime, dt.datetime]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, ctx: TickContext) -> TickOutcome:
        ctx.conn.execute(
            "INSERT INTO tick_marks (kind, project, window_start, worker) VALUES (%s, %s, %s, %s)",
            (ctx.kind, ctx.project.code, ctx.window.start, ctx.worker_id),
        )
        with self.lock:
            self.calls.append(
                (ctx.worker_id, ctx.kind, ctx.project.code, ctx.window.start, ctx.window.end)
            )
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail(ctx):
            raise RuntimeError(f"injected failure for {ctx.project.code}")
        return TickOutcome(rows={"tick_marks": 1})


@pytest.fixture
def db(make_database: DatabaseFactory) -> str:
    url = make_database()
    migrate(url, "auto")
    with psycopg.connect(url, autocommit=True) as conn:
        org = conn.execute(
            "INSERT INTO organisations (code, name) VALUES ('t', 't') RETURNING id"
        ).fetchone()
        assert org is not None
        for code, zone in PROJECTS.items():
            conn.execute(
                "INSERT INTO projects (organisation_id, code, name, time_zone)"
                " VALUES (%s, %s, %s, %s)",
                (org[0], code, code, zone),
            )
        conn.execute(
            "CREATE TABLE tick_marks (kind text, project text, window_start timestamptz,"
            " worker text)"
        )
    return url


@pytest.fixture
def pools(db: str) -> Iterator[Callable[[], ConnectionPool]]:
    opened: list[ConnectionPool] = []

    def make() -> ConnectionPool:
        pool = open_pool(db, min_size=1, max_size=4, name="mw-test-analytics")
        opened.append(pool)
        return pool

    yield make
    for pool in opened:
        pool.close()


CONFIG = JobConfig(
    tick=Q,
    settle=dt.timedelta(minutes=2),
    daily_hour=1,
    max_ticks_per_step=16,
    initial_backfill=dt.timedelta(hours=6),
    threads=3,
)


def done_runs(url: str) -> list[tuple[str, str, dt.datetime, dt.datetime, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT r.kind, p.code, r.window_start, r.window_end, r.units FROM analytics_runs r"
            " JOIN projects p ON p.id = r.project_id WHERE r.status = 'done'"
            " ORDER BY r.kind, p.code, r.window_start"
        ).fetchall()
    return [(str(k), str(c), s, e, int(u)) for k, c, s, e, u in rows]


def cursors(url: str) -> dict[tuple[str, str], dt.datetime]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.kind, p.code, c.done_until FROM analytics_job_cursors c"
            " JOIN projects p ON p.id = c.project_id"
        ).fetchall()
    return {(str(k), str(c)): d for k, c, d in rows}


def marks(url: str) -> list[tuple[str, str, dt.datetime]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT kind, project, window_start FROM tick_marks ORDER BY 1, 2, 3"
        ).fetchall()
    return [(str(k), str(p), s) for k, p, s in rows]


def assert_tiled_once(url: str, recorders: list[Recorder]) -> dict[tuple[str, str], int]:
    """Done runs of each (kind, project) tile time from its first start to its cursor with no
    gap and no overlap; every tick body call belongs to exactly one done run. Returns the
    number of ticks (or days) covered per (kind, project)."""
    runs = done_runs(url)
    ends = cursors(url)
    covered: dict[tuple[str, str], int] = {}
    by_job: dict[tuple[str, str], list[tuple[dt.datetime, dt.datetime, int]]] = {}
    for kind, code, start, end, units in runs:
        by_job.setdefault((kind, code), []).append((start, end, units))
    for job, windows in by_job.items():
        for (_, prev_end, _), (start, _, _) in itertools.pairwise(windows):
            assert start == prev_end, f"{job}: gap or overlap at {start}"
        assert windows[-1][1] == ends[job]
        covered[job] = sum(u for _, _, u in windows)
    calls = sorted((k, p, s, e) for r in recorders for _, k, p, s, e in r.calls)
    assert calls == sorted((k, c, s, e) for k, c, s, e, _ in runs)
    assert marks(url) == sorted((k, c, s) for k, c, s, _, _ in runs)
    return covered


def test_two_workers_process_each_project_once_per_tick(
    db: str, pools: Callable[[], ConnectionPool]
) -> None:
    """Two workers wake together at every tick for 8 hours of ticks: each (project, tick) is
    done by exactly one of them."""
    clock = FakeClock(START)
    rec_a, rec_b = Recorder(delay_s=0.01), Recorder(delay_s=0.01)
    a = AnalyticsWorker(pools(), {"intraday": rec_a, "daily": rec_a}, config=CONFIG,
                        clock=clock, worker_id="a")  # fmt: skip
    b = AnalyticsWorker(pools(), {"intraday": rec_b, "daily": rec_b}, config=CONFIG,
                        clock=clock, worker_id="b")  # fmt: skip
    for _ in range(32):
        clock.advance(Q)
        barrier = threading.Barrier(2)

        def wake(worker: AnalyticsWorker, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            worker.run_all()

        threads = [threading.Thread(target=wake, args=(w,)) for w in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    covered = assert_tiled_once(db, [rec_a, rec_b])
    now = clock()
    for code, zone in PROJECTS.items():
        start = cursors(db)[("intraday", code)]
        assert start == floor_tick(now - CONFIG.settle, Q)
        # From the initial cursor (local midnight 6 h before the start) to now, every tick.
        first = floor_tick(day_floor(START - CONFIG.initial_backfill, zone), Q)
        assert covered[("intraday", code)] == (start - first) // Q
    # Both took part; the locks made them take turns rather than double up.
    assert rec_a.calls
    assert rec_b.calls
    locked = sum(
        w.metrics.registry.get_sample_value(
            "analytics_steps_total", {"kind": k, "result": "locked"}
        )
        or 0
        for w in (a, b)
        for k in ("intraday", "daily")
    )
    assert locked > 0


def test_two_scheduled_workers_with_apscheduler(
    db: str, pools: Callable[[], ConnectionPool]
) -> None:
    """The same with real APScheduler schedulers (fast wake-ups instead of 15-minute ones)
    while the shared clock moves a tick every 100 ms."""
    from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]  # noqa: PLC0415

    def fast(kind: JobKind, project: Project) -> Any:
        return IntervalTrigger(seconds=0.02)

    clock = FakeClock(START)
    recs = [Recorder(delay_s=0.005), Recorder(delay_s=0.005)]
    workers = [
        AnalyticsWorker(
            pools(),
            {"intraday": r, "daily": r},
            config=CONFIG,
            clock=clock,
            worker_id=f"w{i}",
            triggers=fast,
        )
        for i, r in enumerate(recs)
    ]
    with running(workers[0]), running(workers[1]):
        for _ in range(40):
            clock.advance(Q)
            time.sleep(0.1)
        horizon = floor_tick(clock() - CONFIG.settle, Q)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            c = cursors(db)
            if all(c.get(("intraday", p)) == horizon for p in PROJECTS):
                break
            time.sleep(0.05)
        assert {w.scheduled_jobs()[0][0] for w in workers} == {"daily:1"}
    assert all(cursors(db)[("intraday", p)] == horizon for p in PROJECTS)
    covered = assert_tiled_once(db, recs)
    # Local days that ended (plus daily_hour) before 19:04 UTC and that intraday covered:
    # Shanghai's 7 March (ends 16:00 UTC) and New York's 6 March (ends 05:00 UTC on the 7th);
    # UTC's 7 March has not ended.
    days = {p: covered.get(("daily", p), 0) for p in PROJECTS}
    assert days == {"P-UTC": 0, "P-SHA": 1, "P-NYC": 1}
    assert recs[0].calls
    assert recs[1].calls


def test_catch_up_after_six_hours_down_takes_seconds(
    db: str, pools: Callable[[], ConnectionPool]
) -> None:
    clock = FakeClock(START)
    rec = Recorder()
    worker = AnalyticsWorker(pools(), {"intraday": rec, "daily": rec}, config=CONFIG, clock=clock)
    worker.run_all()
    before = cursors(db)
    runs_before = len(done_runs(db))
    clock.advance(dt.timedelta(hours=6))
    t0 = time.monotonic()
    summaries = worker.run_all()
    elapsed = time.monotonic() - t0
    assert elapsed < 5, elapsed
    after = cursors(db)
    for code in PROJECTS:
        assert after[("intraday", code)] - before[("intraday", code)] == dt.timedelta(hours=6)
    intraday = [s for s in summaries if s.kind == "intraday"]
    # 24 ticks in steps of at most 16: two bounded transactions per project, oldest first.
    assert [(s.steps, s.units, s.stopped) for s in intraday] == [(2, 24, "idle")] * 3
    new_runs = done_runs(db)[runs_before:]
    assert all(u <= CONFIG.max_ticks_per_step for k, _, _, _, u in new_runs if k == "intraday")
    assert_tiled_once(db, [rec])


def test_a_failing_project_does_not_stop_others_and_is_retried(
    db: str, pools: Callable[[], ConnectionPool]
) -> None:
    clock = FakeClock(START)
    broken = {"on": True}
    rec = Recorder(fail=lambda ctx: broken["on"] and ctx.project.code == "P-SHA")
    worker = AnalyticsWorker(pools(), {"intraday": rec, "daily": rec}, config=CONFIG, clock=clock)
    worker.run_all()
    first = cursors(db)
    stuck = first[("intraday", "P-SHA")]
    clock.advance(Q)
    worker.run_all()
    after = cursors(db)
    # The others moved on; the broken one stayed where it was, its writes rolled back.
    assert after[("intraday", "P-UTC")] == first[("intraday", "P-UTC")] + Q
    assert after[("intraday", "P-NYC")] == first[("intraday", "P-NYC")] + Q
    assert after[("intraday", "P-SHA")] == stuck
    assert not [m for m in marks(db) if m[1] == "P-SHA"]
    with psycopg.connect(db) as conn:
        failed = conn.execute(
            "SELECT count(*), min(detail->>'error') FROM analytics_runs r"
            " JOIN projects p ON p.id = r.project_id WHERE p.code = 'P-SHA'"
            " AND r.status = 'failed'"
        ).fetchone()
        assert failed is not None
        assert failed[0] == 2
        assert "injected failure for P-SHA" in failed[1]
        status = {(s.project, s.kind): s for s in job_status(conn)}
    assert status[("P-SHA", "intraday")].last_status == "failed"
    assert status[("P-SHA", "intraday")].failures_since_done == 2
    # Fixed: the next wake-up does the failed windows and what came since, once each.
    broken["on"] = False
    clock.advance(Q)
    worker.run_all()
    assert cursors(db)[("intraday", "P-SHA")] == cursors(db)[("intraday", "P-UTC")]
    runs = done_runs(db)
    assert ("intraday", "P-SHA", stuck) in {(k, p, s) for k, p, s, _, _ in runs}
    assert sorted((k, p, s) for k, p, s, _, _ in runs) == marks(db)


def test_stop_finishes_the_step_in_hand_and_starts_no_other(
    db: str, pools: Callable[[], ConnectionPool]
) -> None:
    clock = FakeClock(START)
    entered, release = threading.Event(), threading.Event()

    def slow(ctx: TickContext) -> TickOutcome:
        entered.set()
        assert release.wait(10)
        ctx.conn.execute(
            "INSERT INTO tick_marks VALUES (%s, %s, %s, %s)",
            (ctx.kind, ctx.project.code, ctx.window.start, ctx.worker_id),
        )
        return TickOutcome(rows={"tick_marks": 1})

    cfg = JobConfig(tick=Q, settle=CONFIG.settle, max_ticks_per_step=1,
                    initial_backfill=dt.timedelta(hours=6), threads=1)  # fmt: skip
    worker = AnalyticsWorker(pools(), {"intraday": slow, "daily": slow}, config=cfg, clock=clock)
    worker.start()
    assert entered.wait(10)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    time.sleep(0.3)
    assert stopper.is_alive(), "stop() returned while a step was still running"
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    # The step in hand committed (one tick, max_ticks_per_step=1); no other step started,
    # although many ticks were due.
    runs = done_runs(db)
    assert len(runs) == 1
    assert marks(db) == [(runs[0][0], runs[0][1], runs[0][2])]


def test_status_lists_every_job(db: str, pools: Callable[[], ConnectionPool]) -> None:
    clock = FakeClock(START)
    rec = Recorder()
    AnalyticsWorker(pools(), {"intraday": rec, "daily": rec}, config=CONFIG, clock=clock).run_all()
    with psycopg.connect(db) as conn:
        status = job_status(conn)
    assert sorted((s.project, s.kind) for s in status) == sorted(
        (p, k) for p in PROJECTS for k in ("daily", "intraday")
    )
    assert all(s.last_status in {"done", None} for s in status)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")} | {"MW_DATABASE_URL": db}
    out = subprocess.run(
        [*ENTRY, "analytics", "status", "--json"], env=env, capture_output=True, text=True,
        check=True, timeout=60,
    )  # fmt: skip
    shown = json.loads(out.stdout)
    assert sorted((r["project"], r["job"]) for r in shown) == sorted(
        (s.project, s.kind) for s in status
    )
    by_job = {(r["project"], r["job"]): r for r in shown}
    for s in status:
        assert by_job[(s.project, s.kind)]["done_until"] == s.done_until.isoformat()


# -- the real tick bodies over a simulated project --------------------------------------------


@dataclass(frozen=True)
class Estate:
    url: str
    start: dt.datetime  # the simulated fleet's start
    until: dt.datetime  # readings stored up to here


@pytest.fixture
def estate(make_database: DatabaseFactory) -> Estate:
    """A migrated database with the residential-small scenario's meters and 2.5 days of its
    readings (faults included: a reset on day two, a spike, a leak starting)."""
    import meterward.demo_analytics as da  # noqa: PLC0415
    from meterward.demo_gateways import register_fleet  # noqa: PLC0415
    from simulators.fleet import Fleet  # noqa: PLC0415
    from simulators.scenario import load_scenario, plan  # noqa: PLC0415
    from simulators.serve import scenario_file  # noqa: PLC0415

    url = make_database()
    start = dt.datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # local midnight in Shanghai
    until = start + dt.timedelta(days=2, hours=12)
    migrate(url, "auto")
    p = plan(load_scenario(scenario_file("residential-small")), start=start.isoformat())
    register_fleet(url, Fleet(p))
    saved = da.HISTORY
    da.HISTORY = until - start
    try:
        assert da.write_history(url, p, until=until) > 0
    finally:
        da.HISTORY = saved
    return Estate(url, start, until)


REAL = JobConfig(
    tick=Q,
    settle=dt.timedelta(minutes=2),
    daily_hour=1,
    max_ticks_per_step=96,
    initial_backfill=dt.timedelta(days=3),
    lookback=dt.timedelta(days=7),
    threads=1,
)


def scalar(url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.slow
def test_ticks_over_a_simulated_project_write_consumption_findings_and_episodes(
    estate: Estate,
) -> None:
    from analytics.jobs import pipeline_work  # noqa: PLC0415

    clock = FakeClock(estate.until + dt.timedelta(minutes=5))
    pool = open_pool(estate.url, min_size=1, max_size=2, name="mw-test-analytics-real")
    try:
        worker = AnalyticsWorker(pool, pipeline_work(), config=REAL, clock=clock)
        t0 = time.monotonic()
        summaries = worker.run_all()
        elapsed = time.monotonic() - t0
    finally:
        pool.close()
    print(f"catch-up over 2.5 days of 96 meters: {elapsed:.1f} s; {summaries}")
    assert all(s.stopped == "idle" for s in summaries), summaries
    url = estate.url
    assert scalar(url, "SELECT count(*) FROM analytics_runs WHERE status = 'failed'") == 0
    # Consumption: every counter stream, never negative, and across the whole run equal to
    # the register's advance for a meter without faults (first to last reading).
    assert scalar(url, "SELECT count(*) FROM consumption_intervals") > 10_000
    assert scalar(url, "SELECT count(*) FROM consumption_intervals WHERE consumption < 0") == 0
    with psycopg.connect(url) as conn:
        meter = conn.execute("SELECT id FROM meters WHERE code = 'b1-flat-02'").fetchone()
        assert meter is not None
        sums = conn.execute(
            "SELECT (SELECT sum(consumption) FROM consumption_intervals WHERE meter_id = %(m)s"
            "        AND channel = 'energy_import_kwh'),"
            " (SELECT value FROM readings WHERE meter_id = %(m)s"
            "  AND channel = 'energy_import_kwh' ORDER BY ts LIMIT 1),"
            " (SELECT value FROM readings WHERE meter_id = %(m)s"
            "  AND channel = 'energy_import_kwh' ORDER BY ts DESC LIMIT 1)",
            {"m": meter[0]},
        ).fetchone()
    assert sums is not None
    total, first, last = sums
    assert total == pytest.approx(last - first, rel=1e-9)
    # The simulated faults, found: the firmware reset of b4-flat-09 on day two (a finding;
    # an instant, so no episode by the default policy), the frozen register of b3-flat-05 from
    # +2d8h (an episode still open at the end, its 'opened' event in the outbox) and the lift
    # cabinet powered off at +1d14h for two hours (an episode opened and closed).
    assert scalar(url, "SELECT count(*) FROM findings WHERE subject = 'b4-flat-09'"
                  " AND rule = 'counter.reset'") == 1  # fmt: skip
    with psycopg.connect(url) as conn:
        episodes = {
            (str(s), str(r)): (str(st), [str(e) for e in evs])
            for s, r, st, evs in conn.execute(
                "SELECT e.subject, e.rule, e.state,"
                " array_agg(v.event::text ORDER BY v.occurred_at)"
                " FROM alarm_episodes e JOIN alarm_events v ON v.episode_id = e.id"
                " GROUP BY e.subject, e.rule, e.state"
            ).fetchall()
        }
    assert episodes[("b3-flat-05", "stuck.related_channel")] == ("open", ["opened"])
    assert episodes[("b2-lift-2", "comm_loss.silence")] == ("closed", ["opened", "closed"])
    # Two local days ended (Shanghai) and were rolled up; a project's day is its meters' sum.
    days = scalar(url, "SELECT count(DISTINCT bucket_start) FROM rollups WHERE level = 'project'"
                  " AND period = 'day'")  # fmt: skip
    assert days == 2
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT r.consumption, (SELECT sum(c.consumption) FROM consumption_intervals c"
            " JOIN meters m ON m.id = c.meter_id WHERE c.channel = r.channel"
            " AND c.start_at >= r.bucket_start AND c.end_at <= r.bucket_end)"
            " FROM rollups r WHERE r.level = 'project' AND r.period = 'day'"
            " AND r.channel = 'energy_import_kwh' ORDER BY r.bucket_start LIMIT 1"
        ).fetchone()
    assert row is not None
    assert row[0] == pytest.approx(row[1], rel=1e-9)
    # The watermark moved with the cursor.
    assert scalar(url, "SELECT watermark FROM analytics_watermarks WHERE job = 'intraday'") == (
        floor_tick(clock() - REAL.settle, Q)
    )


@pytest.mark.slow
def test_a_re_run_tick_changes_nothing(estate: Estate) -> None:
    """Idempotence: move a project's cursor back a few hours and run again: the stored
    results are the same rows, untouched (`computed_at` unchanged)."""
    from analytics.jobs import pipeline_work  # noqa: PLC0415

    clock = FakeClock(estate.until + dt.timedelta(minutes=5))
    pool = open_pool(estate.url, min_size=1, max_size=2, name="mw-test-analytics-rerun")
    snapshot = (
        "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM ("
        " SELECT meter_id, channel, start_at, consumption, quality, computed_at"
        " FROM consumption_intervals) t"
    )
    try:
        worker = AnalyticsWorker(pool, pipeline_work(), config=REAL, clock=clock)
        worker.run_all()
        before = scalar(estate.url, snapshot)
        findings = scalar(estate.url, "SELECT count(*) FROM findings")
        events = scalar(estate.url, "SELECT count(*) FROM alarm_events")
        with psycopg.connect(estate.url) as conn:
            conn.execute(
                "UPDATE analytics_job_cursors SET done_until = done_until - interval '6 hours'"
                " WHERE kind = 'intraday'"
            )
            conn.execute("DELETE FROM analytics_runs WHERE window_end > (SELECT done_until"
                         " FROM analytics_job_cursors WHERE kind = 'intraday')")  # fmt: skip
        summaries = worker.run_all()
    finally:
        pool.close()
    assert [s.units for s in summaries if s.kind == "intraday"] == [24]
    assert scalar(estate.url, snapshot) == before
    assert scalar(estate.url, "SELECT count(*) FROM findings") == findings
    assert scalar(estate.url, "SELECT count(*) FROM alarm_events") == events


# -- the command ------------------------------------------------------------------------------


def test_run_help() -> None:
    out = subprocess.run(
        [*ENTRY, "analytics", "run", "--help"], capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MW_")}, timeout=60,
    )  # fmt: skip
    assert "SIGTERM" in out.stdout
    assert "advisory" in out.stdout


@pytest.mark.slow
def test_sigterm_finishes_the_step_in_hand_and_exits(make_database: DatabaseFactory) -> None:
    """`meterward analytics run` catching up over a day of a simulated project, in small
    steps; SIGTERM after its first step: the steps in hand commit, no other starts, exit 0."""
    import meterward.demo_analytics as da  # noqa: PLC0415
    from meterward.demo_gateways import register_fleet  # noqa: PLC0415
    from simulators.fleet import Fleet  # noqa: PLC0415
    from simulators.scenario import load_scenario, plan  # noqa: PLC0415
    from simulators.serve import scenario_file  # noqa: PLC0415

    url = make_database()
    migrate(url, "auto")
    now = dt.datetime.now(UTC)
    start = floor_tick(now - dt.timedelta(days=1), Q)
    p = plan(load_scenario(scenario_file("residential-small")), start=start.isoformat())
    register_fleet(url, Fleet(p))
    assert da.write_history(url, p, until=now) > 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    env |= {
        "MW_DATABASE_URL": url,
        "MW_LOG_FORMAT": "json",
        "MW_ANALYTICS__MAX_TICKS_PER_STEP": "4",
        "MW_ANALYTICS__INITIAL_BACKFILL_HOURS": "24",
        "MW_ANALYTICS__LOOKBACK_DAYS": "2",
    }
    proc = subprocess.Popen(
        [*ENTRY, "analytics", "run"], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    try:
        for line in proc.stderr:
            if line.startswith("{"):
                events.append(json.loads(line))
            if events and events[-1]["event"] == "analytics step done":
                break
            assert time.monotonic() < deadline, "no step done in 120 s"
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest[-2000:]
    events += [json.loads(x) for x in rest.splitlines() if x.startswith("{")]
    names = [e["event"] for e in events]
    stopping = names.index("analytics worker stopping")
    assert names[-1] == "analytics worker stopped"
    # After the signal, only the steps already in hand finish (one per job thread at most).
    after = [e for e in events[stopping:] if e["event"] == "analytics step done"]
    assert len(after) <= 2
    done_logged = [e for e in events if e["event"] == "analytics step done"]
    runs = done_runs(url)
    assert len(runs) == len(done_logged)
    # It stopped with work left: the intraday cursor is short of the horizon.
    horizon = floor_tick(dt.datetime.now(UTC) - dt.timedelta(seconds=120), Q)
    assert max(c for (k, _), c in cursors(url).items() if k == "intraday") < horizon


@pytest.mark.slow
def test_late_readings_recompute_the_intervals_and_rollups_they_touch(estate: Estate) -> None:
    """R11: three hours of one meter's readings arrive a day late (a gateway's outbox after an
    outage). The next tick recomputes that meter's intervals there (estimated -> measured) and
    the rollup buckets they touch, already rolled up by the daily job; nothing else."""
    from analytics.jobs import pipeline_work  # noqa: PLC0415

    url = estate.url
    gap = (
        estate.start + dt.timedelta(days=1, hours=2),
        estate.start + dt.timedelta(days=1, hours=5),
    )
    with psycopg.connect(url) as conn:
        held = conn.execute(
            "DELETE FROM readings r USING meters m WHERE m.id = r.meter_id"
            " AND m.code = 'b1-flat-04' AND r.ts >= %s AND r.ts < %s"
            " RETURNING r.meter_id, r.channel, r.ts, r.value, r.quality",
            gap,
        ).fetchall()
    assert held
    clock = FakeClock(estate.until + dt.timedelta(minutes=5))
    pool = open_pool(url, min_size=1, max_size=2, name="mw-test-analytics-late")
    hours = (
        "SELECT r.bucket_start, r.consumption, r.quality::text, r.computed_at FROM rollups r"
        " WHERE r.level = 'meter' AND r.period = 'hour' AND r.key = %s"
        " AND r.channel = 'energy_import_kwh' AND r.bucket_start >= %s AND r.bucket_start < %s"
        " ORDER BY 1"
    )
    interval_hours = (
        "SELECT date_trunc('hour', c.start_at), sum(c.consumption) FROM consumption_intervals c"
        " JOIN meters m ON m.id = c.meter_id WHERE m.code = %s"
        " AND c.channel = 'energy_import_kwh' AND c.start_at >= %s AND c.start_at < %s"
        " GROUP BY 1 ORDER BY 1"
    )
    try:
        worker = AnalyticsWorker(pool, pipeline_work(), config=REAL, clock=clock)
        worker.run_all()
        with psycopg.connect(url) as conn:
            before = conn.execute(hours, ("b1-flat-04", *gap)).fetchall()
            other_before = conn.execute(hours, ("b1-flat-05", *gap)).fetchall()
        assert [q for _, _, q, _ in before] == ["estimated"] * 3
        time.sleep(1.5)  # the late rows' received_at must be after the tick's horizon
        with psycopg.connect(url) as conn:
            conn.cursor().executemany(
                "INSERT INTO readings (meter_id, channel, ts, value, quality, source, received_at)"
                " VALUES (%s, %s, %s, %s, %s, 'backfill', now() - interval '61 seconds')",
                held,
            )
        clock.advance(Q)
        summaries = worker.run_all()
    finally:
        pool.close()
    assert [s.steps for s in summaries if s.kind == "intraday"] == [1]
    with psycopg.connect(url) as conn:
        after = conn.execute(hours, ("b1-flat-04", *gap)).fetchall()
        sums = conn.execute(interval_hours, ("b1-flat-04", *gap)).fetchall()
        other_after = conn.execute(hours, ("b1-flat-05", *gap)).fetchall()
        note = conn.execute(
            "SELECT detail->>'note' FROM analytics_runs WHERE kind = 'intraday'"
            " ORDER BY window_end DESC LIMIT 1"
        ).fetchone()
    assert note is not None
    assert "late streams" in note[0]
    # The meter's hours in the gap: measured now, each the exact sum of its new intervals.
    assert [q for _, _, q, _ in after] == ["measured"] * 3
    assert [c for _, c, _, _ in after] == [pytest.approx(s, rel=1e-12) for _, s in sums]
    assert [c for _, c, _, _ in after] != [c for _, c, _, _ in before]
    # Another meter's rows in the same hours were not touched (computed_at unchanged).
    assert other_after == other_before


def test_late_readings_older_than_the_lookback_are_said_not_recomputed(
    estate: Estate, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reading that arrives later than the lookback reaches is stored by ingest, but a tick
    does not recompute that far back: it says so and carries on with its own window."""
    from analytics.jobs import pipeline_work  # noqa: PLC0415

    url = estate.url
    clock = FakeClock(estate.until + dt.timedelta(minutes=5))
    pool = open_pool(url, min_size=1, max_size=2, name="mw-test-analytics-too-late")
    old = estate.until - dt.timedelta(days=8)  # REAL's lookback is 7 days
    try:
        worker = AnalyticsWorker(pool, pipeline_work(), config=REAL, clock=clock)
        worker.run_all()
        time.sleep(1.5)  # the late row's received_at must be after the tick's horizon
        with psycopg.connect(url) as conn:
            conn.execute(
                "INSERT INTO readings (meter_id, channel, ts, value, quality, source, received_at)"
                " SELECT id, 'energy_import_kwh', %s, 1.0, 'good', 'backfill',"
                " now() - interval '61 seconds' FROM meters WHERE code = 'b1-flat-04'",
                (old,),
            )
        clock.advance(Q)
        capsys.readouterr()
        summaries = worker.run_all()
    finally:
        pool.close()
    assert [s.steps for s in summaries if s.kind == "intraday"] == [1]
    logged = "".join(capsys.readouterr())
    assert "late readings older than the lookback are not recomputed" in logged
    with psycopg.connect(url) as conn:
        written = conn.execute(
            "SELECT count(*) FROM consumption_intervals WHERE start_at < %s", (old,)
        ).fetchone()
        note = conn.execute(
            "SELECT detail->>'note' FROM analytics_runs WHERE kind = 'intraday'"
            " ORDER BY window_end DESC LIMIT 1"
        ).fetchone()
    assert written == (0,)
    assert note is not None
    assert "late streams" not in (note[0] or "")
