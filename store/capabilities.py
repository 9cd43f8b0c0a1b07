"""What the connected PostgreSQL server can do, detected once and carried as a value.

TimescaleDB features split by licence: hypertables, chunks, `time_bucket` and `drop_chunks` are
in the Apache-2 edition; compression, continuous aggregates and background policies need the
Timescale licence. meterward uses the latter only when `timescaledb.license` allows them and
never depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Facts about one server and database."""

    server_version: str
    server_version_num: int
    timescaledb_available: str | None  # version the server could install, None if absent
    timescaledb_preloaded: bool  # in shared_preload_libraries, so CREATE EXTENSION works
    timescaledb_installed: str | None  # version installed in this database
    timescaledb_license: str | None  # 'apache' or 'timescale' when installed

    @property
    def backend(self) -> str:
        """`timescaledb` when the extension is installed in this database, else `postgresql`."""
        return "timescaledb" if self.timescaledb_installed else "postgresql"

    @property
    def can_install_timescaledb(self) -> bool:
        return self.timescaledb_available is not None and self.timescaledb_preloaded

    @property
    def compression_allowed(self) -> bool:
        """Native compression is a Timescale-licensed feature."""
        return self.timescaledb_license == "timescale"

    @property
    def continuous_aggregates_allowed(self) -> bool:
        """Continuous aggregates are a Timescale-licensed feature."""
        return self.timescaledb_license == "timescale"


def detect(conn: psycopg.Connection[tuple[object, ...]]) -> Capabilities:
    """Query the server; read-only, safe on any database the role can connect to."""
    row = conn.execute(
        """
        SELECT current_setting('server_version'),
               current_setting('server_version_num')::int,
               (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
               (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
               coalesce(current_setting('shared_preload_libraries', true), '')
        """
    ).fetchone()
    assert row is not None
    version, version_num, available, installed, preload = row
    preloaded = "timescaledb" in {p.strip() for p in str(preload).split(",")}
    license_ = None
    if installed:
        lic = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
        license_ = str(lic[0]) if lic and lic[0] else None
    return Capabilities(
        server_version=str(version),
        server_version_num=int(str(version_num)),
        timescaledb_available=None if available is None else str(available),
        timescaledb_preloaded=preloaded,
        timescaledb_installed=None if installed is None else str(installed),
        timescaledb_license=license_,
    )
