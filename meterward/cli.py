"""The `meterward` command line: one entry point for every component.

Errors a person can fix (bad settings, unreachable database, missing extension) come out as one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from meterward import __version__
from meterward.cli_analytics import analytics_app
from meterward.cli_analyze import analyze_app
from meterward.cli_gateway import gateway_app
from meterward.cli_ingest import ingest_app
from meterward.cli_simulate import simulate_app
from meterward.logs import configure_logging
from meterward.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="meterward",
    help="Meter, understand and act on the water and electricity use of managed properties.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The store: schema migrations and status.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(analytics_app, name="analytics")
app.add_typer(analyze_app, name="analyze")
app.add_typer(gateway_app, name="gateway")
app.add_typer(ingest_app, name="ingest")
app.add_typer(simulate_app, name="simulate")


class CliError(Exception):
    """A failure to report as one line and exit code 1."""


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"meterward: error: {message}", file=sys.stderr)  # noqa: T201
    raise SystemExit(code)


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _require_database(settings: Settings) -> str:
    if not settings.database_url:
        raise CliError(
            "MW_DATABASE_URL is not set (or database_url in the config file);"
            " `meterward db` works on a real database"
        )
    return settings.database_url


def _version(value: bool) -> None:
    if value:
        print(f"meterward {__version__}")  # noqa: T201
        raise typer.Exit


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="TOML settings file (default: $MW_CONFIG).", show_default=False
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(help="DEBUG, INFO, WARNING or ERROR (default: $MW_LOG_LEVEL or INFO)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """meterward: every component of the system behind one command."""
    overrides = {"log_level": log_level.upper()} if log_level else {}
    settings = load_settings(config, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    ctx.obj = settings


@app.command()
def demo(
    ctx: typer.Context,
    smoke: Annotated[
        bool,
        typer.Option("--smoke", help="Start everything, check each part answers, stop, exit 0."),
    ] = False,
) -> None:
    """Run the whole system on this machine with zero setup.

    Uses MW_DATABASE_URL / MW_MQTT_URL when set; otherwise starts an embedded PostgreSQL and a
    local MQTT broker, keeping their data in <data_dir>/demo for the next run.
    """
    from meterward.demo import run_demo  # noqa: PLC0415 - server-side imports stay off the gateway path

    raise typer.Exit(asyncio.run(run_demo(_settings(ctx), smoke=smoke)))


@db_app.command("migrate")
def db_migrate(ctx: typer.Context) -> None:
    """Apply pending schema migrations (a hypertable when the server has TimescaleDB)."""
    from store.migrations import migrate  # noqa: PLC0415

    settings = _settings(ctx)
    applied, caps = migrate(_require_database(settings), settings.timescaledb)
    print(f"backend: {caps.backend} (PostgreSQL {caps.server_version})")  # noqa: T201
    print(f"applied: {', '.join(applied) if applied else 'nothing, already up to date'}")  # noqa: T201


@db_app.command("status")
def db_status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the backend, TimescaleDB version and licence, and which migrations are applied."""
    from store.migrations import status  # noqa: PLC0415

    state = status(_require_database(_settings(ctx)))
    caps = state.capabilities
    info = {
        "backend": caps.backend,
        "server_version": caps.server_version,
        "timescaledb_installed": caps.timescaledb_installed,
        "timescaledb_available": caps.timescaledb_available,
        "timescaledb_preloaded": caps.timescaledb_preloaded,
        "timescaledb_license": caps.timescaledb_license,
        "compression_allowed": caps.compression_allowed,
        "continuous_aggregates_allowed": caps.continuous_aggregates_allowed,
        "readings_is_hypertable": state.readings_is_hypertable,
        "migrations": {m.id: m.applied for m in state.migrations},
        "pending": list(state.pending),
    }
    if as_json:
        print(json.dumps(info, indent=2))  # noqa: T201
        return
    for key, value in info.items():
        if key == "migrations":
            continue
        print(f"{key:32} {value}")  # noqa: T201
    for mig in state.migrations:
        print(f"migration {mig.id:23} {'applied' if mig.applied else 'PENDING'}")  # noqa: T201


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective settings as JSON, passwords masked."""
    print(json.dumps(_settings(ctx).redacted(), indent=2))  # noqa: T201


def main() -> None:
    """Console entry point: turn expected failures into one-line errors."""
    try:
        app()
    except SettingsError as exc:
        fail(str(exc), code=2)
    except CliError as exc:
        fail(str(exc))
    except Exception as exc:
        # Store and driver errors are expected at the edges (server down, wrong password);
        # anything else is a bug and keeps its traceback.
        module = type(exc).__module__
        if module.startswith(("psycopg", "store", "yoyo")):
            first_line = next(iter(str(exc).strip().splitlines()), "")
            fail(f"{type(exc).__name__}: {first_line}")
        raise
