"""`meterward analytics`: the scheduled analytics worker and how far it has got."""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
from typing import Annotated

import structlog
import typer

from meterward.settings import Settings

log = structlog.get_logger("meterward.analytics")

analytics_app = typer.Typer(
    help="Scheduled analytics: consumption, detectors and episodes every tick, rollups daily.",
    no_args_is_help=True,
)


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        from meterward.cli import CliError  # noqa: PLC0415 - avoid an import cycle

        raise CliError("MW_DATABASE_URL is not set; `meterward analytics` needs a real database")
    return settings.database_url


@analytics_app.command("run")
def run(ctx: typer.Context) -> None:
    """Run each project's analytics jobs on schedule until SIGTERM/Ctrl-C.

    Every tick (15 minutes, UTC-aligned) each project's new readings become consumption,
    findings and episodes; after each local day, its rollups and equipment trends. On start,
    and after any downtime, every project catches up from where it stopped, in bounded steps.
    Run several workers against one database to share the projects: an advisory lock per
    project and job makes sure no window is processed twice. SIGTERM finishes the step in
    hand (it commits) and exits.
    """
    from prometheus_client import start_http_server  # noqa: PLC0415

    from analytics.jobs import AnalyticsWorker, config_from_settings, pipeline_work  # noqa: PLC0415
    from store.pool import open_pool  # noqa: PLC0415

    settings = _settings(ctx)
    cfg = settings.analytics
    url = _database_url(settings)
    pool = open_pool(url, min_size=1, max_size=cfg.threads + 1, name=cfg.worker_id)
    config = config_from_settings(cfg)
    worker = AnalyticsWorker(pool, pipeline_work(), config=config, worker_id=cfg.worker_id)
    if cfg.metrics_port is not None:
        start_http_server(cfg.metrics_port, addr="127.0.0.1", registry=worker.metrics.registry)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # Runs in the main thread, which only waits on `stop`: logging here cannot deadlock.
        log.info("analytics worker stopping", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        worker.run(stop)
    finally:
        pool.close()


@analytics_app.command("status")
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each project's jobs: done up to when, how far behind, the last run and open failures."""
    import psycopg  # noqa: PLC0415

    from analytics.jobs import job_status  # noqa: PLC0415

    with psycopg.connect(_database_url(_settings(ctx)), connect_timeout=10) as conn:
        rows = job_status(conn)
    now = dt.datetime.now(dt.UTC)
    if as_json:
        out = [
            {
                "project": r.project,
                "job": r.kind,
                "done_until": r.done_until.isoformat(),
                "lag_s": max((now - r.done_until).total_seconds(), 0.0),
                "last_run": r.last_run.isoformat() if r.last_run else None,
                "last_status": r.last_status,
                "failures_since_done": r.failures_since_done,
            }
            for r in rows
        ]
        typer.echo(json.dumps(out, indent=2))
        return
    if not rows:
        typer.echo("no analytics runs yet")
        return
    typer.echo(f"{'project':<16} {'job':<9} {'done until (UTC)':<20} {'lag':>9}  last run")
    for r in rows:
        lag_min = max((now - r.done_until).total_seconds(), 0.0) / 60
        last = (
            f"{r.last_run.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} {r.last_status}"
            if r.last_run
            else "-"
        )
        failing = f"  ({r.failures_since_done} failed tries)" if r.failures_since_done else ""
        typer.echo(
            f"{r.project:<16} {r.kind:<9} {r.done_until.astimezone(dt.UTC):%Y-%m-%d %H:%M}"
            f"     {lag_min:>7.0f}m  {last}{failing}"
        )
