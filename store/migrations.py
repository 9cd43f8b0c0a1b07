"""Schema migrations for both stores, applied with yoyo-migrations.

yoyo runs the ordered SQL files in `sql/migrations/`, records what it applied, and serialises
concurrent runs with its own lock table, so two processes starting at once migrate once.
Before the first migration, this module decides the store's backend: it installs TimescaleDB
in the database when the server can load it and settings allow. The SQL then makes `readings`
a hypertable if and only if the extension is present.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
from yoyo import get_backend, read_migrations

from store.capabilities import Capabilities, detect

TimescaleMode = Literal["auto", "require", "off"]


class StoreError(Exception):
    """A store problem phrased for a person: what is wrong and what to do."""


def migrations_dir() -> Path:
    """The migration files: beside the package when installed, at the repo root when editable."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql" / "migrations", here.parent / "sql" / "migrations"):
        if candidate.is_dir():
            return candidate
    raise StoreError(f"migration files not found next to {here}")


def yoyo_uri(url: str) -> str:
    """yoyo picks its driver from the scheme; ours is psycopg 3."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in {"postgresql", "postgres"}:
        raise StoreError(f"not a postgresql:// URL: {scheme}://...")
    return f"postgresql+psycopg://{rest}"


@dataclass(frozen=True, slots=True)
class MigrationState:
    id: str
    applied: bool


@dataclass(frozen=True, slots=True)
class StoreStatus:
    capabilities: Capabilities
    migrations: tuple[MigrationState, ...]
    readings_is_hypertable: bool

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.migrations if not m.applied)


def _readings_exists(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("SELECT to_regclass('readings') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _readings_is_hypertable(
    conn: psycopg.Connection[tuple[object, ...]], caps: Capabilities
) -> bool:
    if not caps.timescaledb_installed:
        return False
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables"
        " WHERE hypertable_name = 'readings' AND hypertable_schema = current_schema())"
    ).fetchone()
    return bool(row and row[0])


def prepare_backend(url: str, mode: TimescaleMode) -> Capabilities:
    """Install TimescaleDB in a database about to receive `readings`, when possible and wanted.

    The choice is made once, before `readings` exists; an existing store keeps its backend.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        caps = detect(conn)
        fresh = not _readings_exists(conn)
        if fresh and mode != "off" and not caps.timescaledb_installed:
            if caps.can_install_timescaledb:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                caps = detect(conn)
            elif mode == "require":
                why = (
                    "the server has no timescaledb extension files"
                    if caps.timescaledb_available is None
                    else "timescaledb is not in shared_preload_libraries"
                )
                raise StoreError(
                    f"timescaledb required but {why}; run scripts/bootstrap.sh or set"
                    " MW_TIMESCALEDB=auto"
                )
        return caps


def migrate(url: str, mode: TimescaleMode = "auto") -> tuple[list[str], Capabilities]:
    """Apply pending migrations; return the ids applied now (empty when up to date)."""
    prepare_backend(url, mode)
    migrations = read_migrations(str(migrations_dir()))
    with get_backend(yoyo_uri(url)) as backend, backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
        applied = [m.id for m in pending]
    with psycopg.connect(url, autocommit=True) as conn:
        caps = detect(conn)
    return applied, caps


def status(url: str) -> StoreStatus:
    """Backend, extension version and licence, and each migration with whether it is applied."""
    migrations = read_migrations(str(migrations_dir()))
    with get_backend(yoyo_uri(url)) as backend:
        applied = set(backend.get_applied_migration_hashes())
    with psycopg.connect(url, autocommit=True) as conn:
        caps = detect(conn)
        hyper = _readings_is_hypertable(conn, caps)
    states = tuple(MigrationState(id=m.id, applied=m.hash in applied) for m in migrations)
    return StoreStatus(capabilities=caps, migrations=states, readings_is_hypertable=hyper)
