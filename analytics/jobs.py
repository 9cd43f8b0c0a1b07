"""The scheduled analytics worker: per project, an intraday job and a daily job, shared safely
between any number of workers through PostgreSQL advisory locks.

What runs when is decided by `analytics.schedule` (pure) from each job's cursor and the
injected clock; APScheduler only wakes the worker up: every tick (UTC boundaries plus the settle
delay) for the intraday job, at the project's local `daily_hour` for the daily job, and at once
on start so a worker that was down catches up.

One **step** = one transaction:

1. `pg_try_advisory_xact_lock(kind, project)`; if another worker holds it, skip — it is doing
   this project's job right now, and the next wake-up looks again.
2. Read the job's cursor (after the lock, so a window another worker just committed is seen)
   and take the oldest due window, at most `max_ticks_per_step` ticks (or days) long.
3. Run the tick body (`TickWork`) on that transaction's connection: it loads the window plus
   the lookback its baselines need, computes, and writes its results.
4. Move the cursor to the window's end, record the run, COMMIT. The lock goes with the COMMIT.

Why transaction-level locks rather than session locks: the lock lives exactly as long as the
transaction whose results it protects, and PostgreSQL releases it on COMMIT, ROLLBACK or a
dropped connection. A session lock taken on a pooled connection must be unlocked on that same
connection; a crash between lock and unlock would hand a connection that still holds it back to
the pool, blocking that project until the connection closes. Re-taking the lock per step costs
one round trip, and lets a second worker share a long catch-up step by step.

A failing step rolls back (results, cursor and all), is recorded as a failed run, and is tried
again at the project's next wake-up; other projects are untouched (each job runs on its own).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import polars as pl
import psycopg
import structlog
from apscheduler.executors.pool import ThreadPoolExecutor  # type: ignore[import-untyped]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from psycopg_pool import ConnectionPool

from analytics.schedule import (
    JOB_KINDS,
    JobKind,
    Window,
    due_daily,
    due_intraday,
    initial_cursors,
    lag,
)

log = structlog.get_logger("meterward.analytics")

Clock = Callable[[], dt.datetime]

# Advisory lock keys: (namespace for the job kind, project id). The two-int form lives in its
# own key space (PostgreSQL records it apart from single-bigint locks), and the namespace keeps
# these clear of any other two-int advisory lock user.
LOCK_NAMESPACE: Final[Mapping[JobKind, int]] = {"intraday": 0x6D770001, "daily": 0x6D770002}
_INT4: Final = 2**31


def lock_key(kind: JobKind, project_id: int) -> tuple[int, int]:
    """The advisory lock for one project's job. Ids beyond int4 wrap: a clash there only makes
    two projects take turns, never lets two workers share one project.

    >>> lock_key("daily", 7)
    (1836515330, 7)
    """
    return LOCK_NAMESPACE[kind], project_id % _INT4


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    code: str
    time_zone: str


@dataclass(frozen=True, slots=True)
class TickContext:
    """What a tick body gets: the window to do, on a connection inside the step's transaction.

    The body loads readings from `load_from` (the window's start minus the lookback its
    baselines need) to `window.end`, writes results for the window only, and must not commit:
    its writes commit with the cursor, or not at all.
    """

    conn: psycopg.Connection[Any]
    kind: JobKind
    project: Project
    window: Window
    load_from: dt.datetime
    now: dt.datetime
    worker_id: str


@dataclass(frozen=True, slots=True)
class TickOutcome:
    """What a tick body wrote: rows per table (kept in the run record), and a short note."""

    rows: Mapping[str, int] = field(default_factory=dict)
    note: str = ""


TickWork = Callable[[TickContext], TickOutcome]


@dataclass(frozen=True, slots=True)
class JobConfig:
    tick: dt.timedelta = dt.timedelta(minutes=15)
    settle: dt.timedelta = dt.timedelta(minutes=2)
    daily_hour: int = 1  # a day is rolled up this long after its local midnight
    max_ticks_per_step: int = 16
    max_days_per_step: int = 1
    initial_backfill: dt.timedelta = dt.timedelta(hours=24)
    lookback: dt.timedelta = dt.timedelta(days=28)
    threads: int = 2
    projects_refresh: dt.timedelta = dt.timedelta(minutes=5)


StepResult = Literal["done", "idle", "locked", "failed"]


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One wake-up of one project's job: steps done, and why it stopped."""

    kind: JobKind
    project: str
    steps: int
    units: int
    stopped: StepResult | Literal["stopping"]
    done_until: dt.datetime | None


@dataclass
class JobMetrics:
    """Prometheus metrics on a registry of their own (tests run several workers per process)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.steps = Counter(
            "analytics_steps", "steps by job kind and result", ["kind", "result"], registry=r
        )
        self.units = Counter(
            "analytics_units", "ticks (intraday) or days (daily) processed", ["kind"], registry=r
        )
        self.seconds = Histogram(
            "analytics_step_seconds",
            "one step: load, compute, write, commit",
            ["kind"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.lag = Gauge(
            "analytics_lag_seconds", "clock minus the job's cursor", ["kind", "project"],
            registry=r,
        )  # fmt: skip


def config_from_settings(settings: Any) -> JobConfig:
    """A `JobConfig` from `meterward.settings.AnalyticsSettings`.

    >>> from meterward.settings import AnalyticsSettings
    >>> config_from_settings(AnalyticsSettings(tick_minutes=5)).tick
    datetime.timedelta(seconds=300)
    """
    return JobConfig(
        tick=dt.timedelta(minutes=settings.tick_minutes),
        settle=dt.timedelta(seconds=settings.settle_s),
        daily_hour=settings.daily_hour,
        max_ticks_per_step=settings.max_ticks_per_step,
        max_days_per_step=settings.max_days_per_step,
        initial_backfill=dt.timedelta(hours=settings.initial_backfill_hours),
        lookback=dt.timedelta(days=settings.lookback_days),
        threads=settings.threads,
        projects_refresh=dt.timedelta(seconds=settings.projects_refresh_s),
    )


def list_projects(conn: psycopg.Connection[Any]) -> list[Project]:
    rows = conn.execute("SELECT id, code, time_zone FROM projects ORDER BY id").fetchall()
    return [Project(int(i), str(c), str(z)) for i, c, z in rows]


def default_trigger(config: JobConfig, kind: JobKind, project: Project) -> Any:
    """When APScheduler wakes a project's job. Intraday: every tick on UTC boundaries plus the
    settle delay (a cron expression, so the wake-ups stay on the grid whenever the worker
    started). Daily: the project's local `daily_hour`, a few minutes past it, so the intraday
    wake-up at that hour goes first.

    >>> now = dt.datetime(2026, 3, 1, 10, 3, tzinfo=dt.UTC)
    >>> p = Project(1, "P", "Asia/Shanghai")
    >>> default_trigger(JobConfig(), "intraday", p).get_next_fire_time(None, now).isoformat()
    '2026-03-01T10:17:00+00:00'
    >>> default_trigger(JobConfig(), "daily", p).get_next_fire_time(None, now).isoformat()
    '2026-03-02T01:05:00+08:00'
    """
    if kind == "intraday":
        tick_s = int(config.tick.total_seconds())
        offset = int(config.settle.total_seconds()) % tick_s
        minutes = tick_s // 60
        return CronTrigger(
            minute=f"{offset // 60}-59/{minutes}" if minutes < 60 else str(offset // 60),
            second=offset % 60,
            timezone=dt.UTC,
        )
    return CronTrigger(hour=config.daily_hour, minute=5, timezone=project.time_zone)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Skip(Exception):  # noqa: N818 - control flow inside `_step`, never escapes it
    def __init__(self, result: StepResult) -> None:
        self.result = result


class AnalyticsWorker:
    """Runs each project's jobs when due; `start()` schedules them, `stop()` ends cleanly.

    `work` maps each job kind to its tick body. `clock` decides what is due (tests drive it);
    APScheduler's own clock only decides when to look.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        work: Mapping[JobKind, TickWork],
        *,
        config: JobConfig | None = None,
        clock: Clock = _utc_now,
        worker_id: str = "meterward-analytics",
        metrics: JobMetrics | None = None,
        triggers: Callable[[JobKind, Project], Any] | None = None,
    ) -> None:
        self.pool = pool
        self.work = dict(work)
        self.config = config or JobConfig()
        self.clock = clock
        self.worker_id = worker_id
        self.metrics = metrics or JobMetrics()
        self._triggers = triggers or (lambda k, p: default_trigger(self.config, k, p))
        self._stop = threading.Event()
        self._scheduler: Any = None
        self._scheduled: dict[str, Project] = {}
        self._cursors_known: set[int] = set()

    # -- one step, one transaction ------------------------------------------------------------

    def _ensure_cursors(self, project: Project) -> None:
        """Give a project seen for the first time both cursors, in a transaction of their own:
        the daily job's start must line up with the intraday job's whichever sees it first,
        and a first step that fails must not take the starting point back with it (the next
        try would start from a later `now`)."""
        if project.id in self._cursors_known:
            return
        intraday0, daily0 = initial_cursors(
            self.clock(),
            backfill=self.config.initial_backfill,
            tick=self.config.tick,
            time_zone=project.time_zone,
        )
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO analytics_job_cursors (kind, project_id, done_until)"
                " VALUES ('intraday', %(p)s, %(i)s), ('daily', %(p)s, %(d)s)"
                " ON CONFLICT (kind, project_id) DO NOTHING",
                {"p": project.id, "i": intraday0, "d": daily0},
            )
        self._cursors_known.add(project.id)

    def _due(
        self, conn: psycopg.Connection[Any], kind: JobKind, project: Project, now: dt.datetime
    ) -> tuple[dt.datetime, list[Window]]:
        cfg = self.config
        rows = conn.execute(
            "SELECT kind, done_until FROM analytics_job_cursors WHERE project_id = %s",
            (project.id,),
        ).fetchall()
        cursors = {str(k): d for k, d in rows}
        done = cursors[kind]
        if kind == "intraday":
            windows = due_intraday(
                done, now, tick=cfg.tick, settle=cfg.settle, max_per_step=cfg.max_ticks_per_step
            )
        else:
            windows = due_daily(
                done,
                now,
                intraday_done_until=cursors["intraday"],
                time_zone=project.time_zone,
                settle=dt.timedelta(hours=cfg.daily_hour),
                max_per_step=cfg.max_days_per_step,
            )
        return done, windows

    def _step(self, kind: JobKind, project: Project) -> tuple[StepResult, Window | None]:
        """Take the lock, do the oldest due window of this job, commit. Never raises."""
        now = self.clock()
        started = time.monotonic()
        window: Window | None = None
        try:
            self._ensure_cursors(project)
            with self.pool.connection() as conn, conn.transaction():
                got = conn.execute(
                    "SELECT pg_try_advisory_xact_lock(%s, %s)", lock_key(kind, project.id)
                ).fetchone()
                if not (got and got[0]):
                    raise _Skip("locked")
                done, windows = self._due(conn, kind, project, now)
                self.metrics.lag.labels(kind, project.code).set(lag(done, now).total_seconds())
                if not windows:
                    raise _Skip("idle")
                window = windows[0]
                db_start = conn.execute("SELECT clock_timestamp()").fetchone()
                ctx = TickContext(
                    conn=conn,
                    kind=kind,
                    project=project,
                    window=window,
                    load_from=window.start - self.config.lookback,
                    now=now,
                    worker_id=self.worker_id,
                )
                outcome = self.work[kind](ctx)
                moved = conn.execute(
                    "UPDATE analytics_job_cursors SET done_until = %s, updated_at = now()"
                    " WHERE kind = %s AND project_id = %s AND done_until = %s",
                    (window.end, kind, project.id, window.start),
                ).rowcount
                if moved != 1:  # the lock makes this impossible; if not, undo the step's work
                    raise RuntimeError(
                        f"{kind} cursor of project {project.code} moved under this step"
                    )
                conn.execute(
                    "INSERT INTO analytics_runs (kind, project_id, window_start, window_end,"
                    " units, status, worker, started_at, detail)"
                    " VALUES (%s, %s, %s, %s, %s, 'done', %s, %s, %s)",
                    (
                        kind,
                        project.id,
                        window.start,
                        window.end,
                        window.units,
                        self.worker_id,
                        db_start[0] if db_start else now,
                        json.dumps({"rows": dict(outcome.rows), "note": outcome.note}),
                    ),
                )
        except _Skip as skip:
            self.metrics.steps.labels(kind, skip.result).inc()
            return skip.result, None
        except Exception as exc:  # one project's failure must not stop others
            self.metrics.steps.labels(kind, "failed").inc()
            log.error(
                "analytics step failed",
                kind=kind,
                project=project.code,
                window_start=window.start.isoformat() if window else None,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=True,
            )
            if window is not None:
                self._record_failure(kind, project, window, exc)
            return "failed", window
        elapsed = time.monotonic() - started
        self.metrics.steps.labels(kind, "done").inc()
        self.metrics.units.labels(kind).inc(window.units)
        self.metrics.seconds.labels(kind).observe(elapsed)
        self.metrics.lag.labels(kind, project.code).set(lag(window.end, now).total_seconds())
        log.info(
            "analytics step done",
            kind=kind,
            project=project.code,
            window_start=window.start.isoformat(),
            window_end=window.end.isoformat(),
            units=window.units,
            rows=dict(outcome.rows),
            seconds=round(elapsed, 3),
        )
        return "done", window

    def _record_failure(
        self, kind: JobKind, project: Project, window: Window, exc: BaseException
    ) -> None:
        detail = {
            "error": f"{type(exc).__name__}: {exc}"[:2000],
            "where": "".join(traceback.format_exception(exc)[-3:])[:4000],
        }
        try:
            with self.pool.connection() as conn:
                conn.execute(
                    "INSERT INTO analytics_runs (kind, project_id, window_start, window_end,"
                    " units, status, worker, started_at, detail)"
                    " VALUES (%s, %s, %s, %s, %s, 'failed', %s, clock_timestamp(), %s)",
                    (
                        kind,
                        project.id,
                        window.start,
                        window.end,
                        window.units,
                        self.worker_id,
                        json.dumps(detail),
                    ),
                )
        except Exception:  # noqa: BLE001 - the database may be what failed; the log has it
            log.warning("analytics failure not recorded", kind=kind, project=project.code)

    # -- a job: steps until caught up ---------------------------------------------------------

    def run_job(self, kind: JobKind, project: Project) -> RunSummary:
        """Bring one project's job up to the clock, one bounded step at a time, oldest first.

        Stops at the first step that finds nothing due, finds the lock taken, or fails (that
        window is tried again next time), and between steps once `stop()` was called.
        """
        steps = units = 0
        last: StepResult | Literal["stopping"] = "idle"
        done_until: dt.datetime | None = None
        while True:
            if self._stop.is_set():
                last = "stopping"
                break
            result, window = self._step(kind, project)
            last = result
            if result != "done" or window is None:
                break
            steps += 1
            units += window.units
            done_until = window.end
        return RunSummary(kind, project.code, steps, units, last, done_until)

    def run_project(self, project: Project) -> list[RunSummary]:
        """The intraday job, then the daily job (a day becomes due once intraday covers it, so
        after a catch-up the rollups follow at once instead of at the next `daily_hour`)."""
        return [self.run_job(kind, project) for kind in JOB_KINDS]

    def projects(self) -> list[Project]:
        with self.pool.connection() as conn:
            return list_projects(conn)

    def run_all(self) -> list[RunSummary]:
        """Every project's jobs once, in project order (catch-up at start, and tests)."""
        out: list[RunSummary] = []
        for project in self.projects():
            out.extend(self.run_project(project))
        return out

    # -- scheduling ---------------------------------------------------------------------------

    def _job_id(self, kind: JobKind, project: Project) -> str:
        return f"{kind}:{project.id}"

    def _fire(self, kind: JobKind, project: Project) -> None:
        # The scheduler thread must never see an exception: it would only log it, and a bug in
        # one project's job must not look like a scheduler problem.
        try:
            with structlog.contextvars.bound_contextvars(project=project.code, job=kind):
                if kind == "intraday":
                    self.run_project(project)
                else:
                    self.run_job("daily", project)
        except Exception:  # logged with its traceback
            log.exception("analytics job crashed", kind=kind, project=project.code)

    def refresh_projects(self) -> None:
        """Add jobs for projects that appeared, drop jobs of projects that went away."""
        if self._scheduler is None or self._stop.is_set():
            return
        try:
            current = {str(p.id): p for p in self.projects()}
        except Exception:  # database away: keep the jobs we have, try later
            log.warning("analytics: cannot list projects", exc_info=True)
            return
        now = _utc_now()
        for pid, project in sorted(current.items()):
            if pid in self._scheduled and self._scheduled[pid] == project:
                continue
            for kind in JOB_KINDS:
                self._scheduler.add_job(
                    self._fire,
                    trigger=self._triggers(kind, project),
                    args=(kind, project),
                    id=self._job_id(kind, project),
                    name=f"analytics {kind} {project.code}",
                    replace_existing=True,
                    next_run_time=now,  # catch up at once, then on the trigger
                )
            self._scheduled[pid] = project
            log.info("analytics project scheduled", project=project.code, tz=project.time_zone)
        for pid in sorted(set(self._scheduled) - set(current)):
            project = self._scheduled.pop(pid)
            for kind in JOB_KINDS:
                job = self._scheduler.get_job(self._job_id(kind, project))
                if job is not None:
                    job.remove()

    def start(self) -> None:
        """Start the scheduler in background threads; each project catches up at once."""
        self._stop.clear()
        # APScheduler logs every wake-up of every job at INFO ("Running job ...", "executed
        # successfully"): two lines per project per tick that say less than our step events.
        # Its warnings (a wake-up skipped, a job missed) still come through.
        for name in ("apscheduler.executors", "apscheduler.scheduler"):
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.WARNING and not logger.isEnabledFor(
                logging.DEBUG
            ):
                logger.setLevel(logging.WARNING)
        self._scheduler = BackgroundScheduler(
            timezone=dt.UTC,
            executors={"default": ThreadPoolExecutor(self.config.threads)},
            job_defaults={
                # One run of a job at a time; wake-ups missed while it ran fold into one, and a
                # late wake-up still runs (the cursor, not the wake-up, says what is due).
                "max_instances": 1,
                "coalesce": True,
                "misfire_grace_time": None,
            },
        )
        self._scheduler.add_job(
            self.refresh_projects,
            trigger=IntervalTrigger(seconds=self.config.projects_refresh.total_seconds()),
            id="projects",
            name="analytics project list",
            executor="default",
        )
        self._scheduler.start()
        self.refresh_projects()
        log.info("analytics worker started", worker=self.worker_id, threads=self.config.threads)

    def stop(self, wait: bool = True) -> None:
        """Finish the steps in hand (no new step starts), then stop the scheduler."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=wait)
            self._scheduler = None
            self._scheduled.clear()
            log.info("analytics worker stopped", worker=self.worker_id)

    def run(self, stop: threading.Event) -> None:
        """Start, block until `stop` is set (signal handlers set it), then stop cleanly."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop(wait=True)

    def scheduled_jobs(self) -> list[tuple[str, dt.datetime | None]]:
        """(job id, next run time) of every scheduled job, for status and tests."""
        if self._scheduler is None:
            return []
        return sorted(
            (str(j.id), j.next_run_time) for j in self._scheduler.get_jobs() if j.id != "projects"
        )


# -- status ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobStatus:
    project: str
    kind: str
    done_until: dt.datetime
    last_run: dt.datetime | None
    last_status: str | None
    failures_since_done: int


def job_status(conn: psycopg.Connection[Any]) -> list[JobStatus]:
    """Every project's job cursors with their latest run, for `meterward analytics status`."""
    rows = conn.execute(
        """
        SELECT p.code, c.kind, c.done_until, r.finished_at, r.status,
               (SELECT count(*) FROM analytics_runs f
                 WHERE f.project_id = c.project_id AND f.kind = c.kind AND f.status = 'failed'
                   AND f.window_start >= c.done_until)
          FROM analytics_job_cursors c
          JOIN projects p ON p.id = c.project_id
          LEFT JOIN LATERAL (
              SELECT finished_at, status FROM analytics_runs
               WHERE project_id = c.project_id AND kind = c.kind
               ORDER BY finished_at DESC, id DESC LIMIT 1) r ON true
         ORDER BY p.code, c.kind
        """
    ).fetchall()
    return [JobStatus(str(a), str(b), c, d, e, int(f)) for a, b, c, d, e, f in rows]


@contextmanager
def running(worker: AnalyticsWorker) -> Iterator[AnalyticsWorker]:
    """`with running(worker):` — started on entry, stopped (steps in hand finished) on exit."""
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(wait=True)


# -- the tick bodies over the store ------------------------------------------------------------

# Rules whose findings the daily job owns (equipment trends need days of history); the intraday
# job leaves their findings and episodes alone, and the daily job touches nothing else.
DAILY_RULE_PREFIX: Final = "degradation."
# Closed episodes loaded with the state: a condition that returns within this of a close
# reopens the same episode (the longest cooldown or flap window of the default policy).
EPISODE_MEMORY: Final = dt.timedelta(days=2)


def _own_rules(rules: pl.Series, daily: bool) -> pl.Series:
    owned = rules.str.starts_with(DAILY_RULE_PREFIX)
    return rules.filter(owned if daily else ~owned)


def _load_meters(conn: psycopg.Connection[Any], project: int) -> pl.DataFrame:
    """The project's meters frame. A meter with no building (the registry allows it) rolls up
    under the building '' instead of breaking the building level of the rollups."""
    from analytics import store  # noqa: PLC0415

    return store.load_meters(conn, project).with_columns(pl.col("building").fill_null(""))


def _weather(readings: pl.DataFrame, meters: pl.DataFrame) -> pl.DataFrame | None:
    """The project's temperature channel as the detectors' weather frame, when it has one."""
    temp = readings.filter(pl.col("channel") == "temperature_c", pl.col("value").is_finite())
    if temp.is_empty():
        return None
    return (
        temp.join(meters.select("meter_id", "project"), on="meter_id")
        .group_by("project", "ts")
        .agg(pl.col("value").mean().alias("temperature_c"))
        .sort("project", "ts")
    )


def _episodes(
    ctx: TickContext, findings: pl.DataFrame, *, daily: bool, data_now: dt.datetime
) -> tuple[Any, pl.DataFrame]:
    """Advance the job's own episodes (by rule) with the findings still current at the window."""
    from analytics import episodes, store  # noqa: PLC0415

    state = store.load_episodes(ctx.conn, ctx.project.id, closed_since=data_now - EPISODE_MEMORY)
    own = state.filter(pl.col("rule").is_in(_own_rules(state["rule"], daily).implode()))
    current = findings.filter(pl.col("end") >= ctx.window.start)
    return episodes.advance(own, current, data_now), current


def _instant(value: object) -> dt.datetime:
    assert isinstance(value, dt.datetime)
    return value


def _refresh_rollups(ctx: TickContext, meters: pl.DataFrame, changed: pl.DataFrame) -> int:
    """Recompute and write the rollup buckets (every level and period) that `changed`
    intervals touch, continuing from the stored rollups; returns rows changed."""
    from analytics import rollups, store  # noqa: PLC0415

    changed = changed.filter(pl.col("consumption").is_not_null())
    if changed.is_empty():
        return 0
    conn, pid = ctx.conn, ctx.project.id
    dirty = rollups.dirty_buckets(changed, meters)
    span = rollups.consumption_window(dirty)
    # A month bucket starts at the month's start: its 15-minute rows are loaded from there.
    first, last = _instant(dirty["bucket_start"].min()), _instant(dirty["bucket_end"].max())
    lo, hi = _instant(span["start"].min()), _instant(span["end"].max())
    # Intervals overlapping the dirty slots: those starting up to a day earlier may reach in.
    consumption = store.load_consumption(conn, pid, (lo - dt.timedelta(days=1), hi))
    consumption = consumption.filter(pl.col("end") > lo, pl.col("consumption").is_not_null())
    previous = store.load_rollups(conn, pid, (first, last))
    fresh = rollups.recompute(previous, consumption, meters, dirty)
    # With `dirty=`, a dirty bucket that no longer has any interval is deleted as well.
    w = store.write_rollups(conn, pid, fresh, computed_at=ctx.now, dirty=dirty)
    return w.upserted + w.deleted


def intraday_tick(ctx: TickContext) -> TickOutcome:
    """One intraday window of a project: consumption, counter events, findings, episodes and
    the alarm-event outbox, written in the step's transaction with the data watermark.

    Readings from `ctx.load_from` (the lookback the baselines need) to the window's end go
    through `analytics.pipeline.run_pass`. An interval is written once its closing reading is
    in, i.e. by the tick whose window holds its end; rows are replace-written from the window's
    start (or earlier, from the first late reading that arrived since the last tick), so a
    re-run or a recompute changes exactly what the new result changed.
    """
    from analytics import pipeline, store  # noqa: PLC0415

    conn, pid = ctx.conn, ctx.project.id
    ws, we = ctx.window.start, ctx.window.end
    horizon = store.received_horizon(conn)
    mark = store.load_watermark(conn, pid, "intraday")
    redo_from = ws
    late_streams = 0
    if mark is not None:
        late = store.late_readings(
            conn, pid, received_after=mark.received_upto, received_upto=horizon, before=ws
        )
        # Readings older than the lookback are stored but not recomputed here (a tick never
        # reaches further back than its lookback); said, not silent.
        beyond = late.filter(pl.col("ts_min") < ctx.load_from)
        if beyond.height:
            log.warning(
                "late readings older than the lookback are not recomputed",
                streams=beyond.height,
                oldest=_instant(beyond.get_column("ts_min").min()).isoformat(),
                lookback_from=ctx.load_from.isoformat(),
            )
        late = late.filter(pl.col("ts_max") >= ctx.load_from)
        if late.height:
            late_streams = late.height
            first = _instant(late.get_column("ts_min").min())
            redo_from = min(ws, max(first, ctx.load_from))
    load_from = min(ctx.load_from, redo_from - (ws - ctx.load_from))
    meters = _load_meters(conn, pid)
    readings = store.load_readings(conn, pid, (load_from, we))
    # Rollups belong to the daily job; equipment findings too (dropped below by rule).
    result = pipeline.run_pass(
        readings, meters, weather=_weather(readings, meters),
        params=pipeline.PassParams(rollups=False, equipment_warnings=False),
    )  # fmt: skip

    # An interval belongs to the tick whose window holds its closing reading (its `end`): the
    # tick before did not have that reading. The delete scope starts at `redo_from` too.
    intervals = result.intervals.filter(pl.col("end") >= redo_from)
    events = result.events.filter(pl.col("ts") >= redo_from)
    own = _own_rules(result.findings["rule"], daily=False)
    findings = result.findings.filter(
        pl.col("rule").is_in(own.implode()), pl.col("end") >= redo_from
    )
    stored = store.load_findings(conn, pid, (redo_from, we))
    rules = sorted(set(own.to_list()) | set(_own_rules(stored["rule"], daily=False).to_list()))
    window = (redo_from, we)
    c = store.write_consumption(conn, pid, intervals, computed_at=ctx.now, window=window)
    e = store.write_counter_events(conn, pid, events, computed_at=ctx.now, window=window)
    f = store.write_findings(conn, pid, findings, computed_at=ctx.now, window=window, rules=rules)
    # Late readings changed intervals of days the daily job may have rolled up already: their
    # buckets are recomputed now, and only those.
    rolled = 0
    if redo_from < ws:
        rolled = _refresh_rollups(ctx, meters, intervals.filter(pl.col("start") < ws))
    step, _ = _episodes(ctx, findings, daily=False, data_now=we)
    ep = store.write_episode_step(
        conn, pid, step, now=ctx.now,
        watermark=store.Watermark("intraday", watermark=we, received_upto=horizon),
    )  # fmt: skip
    return TickOutcome(
        rows={
            "consumption": intervals.height,
            "consumption_changed": c.upserted + c.deleted,
            "counter_events": events.height,
            "findings": findings.height,
            "findings_changed": f.upserted + f.deleted,
            "events_changed": e.upserted + e.deleted,
            "rollups_changed": rolled,
            "episodes_changed": ep.episodes + ep.dropped,
            "alarm_events": ep.events,
        },
        note=f"recomputed from {redo_from.isoformat()} ({late_streams} late streams)"
        if redo_from < ws
        else "",
    )


def daily_tick(ctx: TickContext) -> TickOutcome:
    """One or more local days of a project: rollups (15 minutes to month, meter to project)
    refreshed for the buckets the days' consumption touches, and equipment-trend findings
    (which need days of history) with their episodes.

    The intraday job has written every interval of these days (the schedule waits for it), so
    the rollups read stored consumption; `rollups.refresh` continues from the stored month so
    far, and the result equals a full recompute bit for bit.
    """
    from analytics import store  # noqa: PLC0415
    from analytics.detectors.equipment import detect_equipment  # noqa: PLC0415

    conn, pid = ctx.conn, ctx.project.id
    ds, de = ctx.window.start, ctx.window.end
    meters = _load_meters(conn, pid)
    days = store.load_consumption(conn, pid, (ds, de))
    written_rollups = _refresh_rollups(ctx, meters, days)
    history = (ctx.load_from, de)
    readings = store.load_readings(conn, pid, history)
    consumption = store.load_consumption(conn, pid, history)
    found = detect_equipment(readings, consumption, meters)
    own = _own_rules(found["rule"], daily=True)
    found = found.filter(pl.col("rule").is_in(own.implode()))
    # The trends are refitted over the whole history each day: the findings of the daily
    # rules stored over it are replaced, so a moved start leaves no stale row behind.
    stored = store.load_findings(conn, pid, history)
    rules = sorted(set(own.to_list()) | set(_own_rules(stored["rule"], daily=True).to_list()))
    f = store.write_findings(conn, pid, found, computed_at=ctx.now, window=history, rules=rules)
    step, current = _episodes(ctx, found, daily=True, data_now=de)
    ep = store.write_episode_step(conn, pid, step, now=ctx.now)
    return TickOutcome(
        rows={
            "rollups_changed": written_rollups,
            "findings": current.height,
            "findings_changed": f.upserted + f.deleted,
            "episodes_changed": ep.episodes + ep.dropped,
            "alarm_events": ep.events,
        }
    )


def pipeline_work() -> dict[JobKind, TickWork]:
    """The tick bodies `meterward analytics run` and the demo schedule."""
    return {"intraday": intraday_tick, "daily": daily_tick}
