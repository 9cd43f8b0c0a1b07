"""`meterward ingest`: the ingest worker and its dead-letter tools."""

from __future__ import annotations

import datetime as dt
import signal
from typing import Annotated

import typer

from meterward.settings import Settings

ingest_app = typer.Typer(
    help="Store gateway readings exactly once; inspect and replay dead letters.",
    no_args_is_help=True,
)
dead_app = typer.Typer(
    help="Payloads ingest refused, kept whole with the reason.", no_args_is_help=True
)
ingest_app.add_typer(dead_app, name="dead-letter")


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


def _need(value: str | None, what: str) -> str:
    if not value:
        from meterward.cli import CliError  # noqa: PLC0415 - avoid an import cycle

        raise CliError(f"{what} is not set; `meterward ingest` needs a real one")
    return value


@ingest_app.command("run")
def run(ctx: typer.Context) -> None:
    """Consume gateway batches from MQTT and store them; runs until SIGTERM/Ctrl-C.

    Refuses to start if the database could lose acknowledged data (fsync, full_page_writes
    or synchronous_commit off). SIGTERM finishes the batch in hand, acks it, and exits.
    """
    from prometheus_client import start_http_server  # noqa: PLC0415

    from contracts.wire import Bounds  # noqa: PLC0415
    from ingest.consumer import Consumer  # noqa: PLC0415
    from ingest.mappings import MeterMapping  # noqa: PLC0415
    from ingest.service import IngestConfig, IngestWorker  # noqa: PLC0415
    from store.pool import open_pool  # noqa: PLC0415

    settings = _settings(ctx)
    cfg = settings.ingest
    try:
        mappings = tuple(MeterMapping(**m.model_dump()) for m in cfg.mappings)
    except ValueError as exc:
        from meterward.cli import CliError  # noqa: PLC0415

        raise CliError(f"ingest.mappings: {exc}") from None
    db_url = _need(settings.database_url, "MW_DATABASE_URL")
    mqtt_url = _need(settings.mqtt_url, "MW_MQTT_URL")
    pool = open_pool(db_url, min_size=1, max_size=2, name=cfg.client_id)
    consumer = Consumer(
        mqtt_url,
        client_id=cfg.client_id,
        receive_maximum=cfg.receive_maximum,
        mqtt5=cfg.mqtt5,
        shared=cfg.shared_subscription,
        share_group=cfg.share_group,
        extra_topics=tuple(m.topic for m in mappings),
    )
    config = IngestConfig(
        max_messages=cfg.max_messages,
        max_age_s=cfg.max_age_ms / 1000,
        skew_limit=dt.timedelta(seconds=cfg.skew_limit_s),
        bounds=Bounds(max_future=dt.timedelta(seconds=cfg.max_future_s)),
        mappings=mappings,
    )
    worker = IngestWorker(pool, consumer, config=config)
    worker.end_session_on_stop = cfg.end_session_on_exit
    if cfg.metrics_port is not None:
        start_http_server(cfg.metrics_port, addr="127.0.0.1", registry=worker.metrics.registry)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    try:
        worker.run()
    finally:
        pool.close()


@dead_app.command("list")
def dead_list(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Only this reason code.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 50,
) -> None:
    """List pending dead letters, newest first (payload sizes, not payloads)."""
    from ingest.replay import list_dead_letters  # noqa: PLC0415
    from store.pool import open_pool  # noqa: PLC0415

    pool = open_pool(_need(_settings(ctx).database_url, "MW_DATABASE_URL"), name="mw-cli")
    try:
        rows = list_dead_letters(pool, reason=reason, limit=limit)
    finally:
        pool.close()
    if not rows:
        typer.echo("no pending dead letters")
        return
    for r in rows:
        when = r.received_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        last = f"  [{r.replay_result}]" if r.replay_result else ""
        typer.echo(
            f"{r.id:>8}  {when}Z  {r.reason:<20} {r.scope:<7} {r.gateway_code or '-':<12}"
            f" {r.size:>9} B  {r.detail[:60]}{last}"
        )


@dead_app.command("replay")
def dead_replay(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="A dead letter id (repeatable).")
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Every pending dead letter of this reason.")
    ] = None,
) -> None:
    """Run dead letters through ingest again (e.g. after registering a missing meter)."""
    from ingest.replay import replay  # noqa: PLC0415
    from store.pool import open_pool  # noqa: PLC0415

    if not ids and reason is None:
        from meterward.cli import CliError  # noqa: PLC0415

        raise CliError("name dead letters with --id N or --reason CODE")
    pool = open_pool(_need(_settings(ctx).database_url, "MW_DATABASE_URL"), name="mw-cli")
    try:
        summary = replay(pool, ids=ids or (), reason=reason, now=dt.datetime.now(dt.UTC))
    finally:
        pool.close()
    typer.echo(
        f"stored {summary.stored_readings} readings from {summary.stored_letters} dead letters"
    )
    for outcome, n in sorted(summary.still_refused.items()):
        typer.echo(f"still refused ({outcome}): {n}")
