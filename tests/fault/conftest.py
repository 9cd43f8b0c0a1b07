"""Fixtures the fault tests share: a private, killable broker and fresh databases that hold one
gateway's fleet."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from store.migrations import TimescaleMode, migrate
from tests.conftest import DatabaseFactory
from tests.support.broker import PrivateBroker
from tests.support.seed import seed_fleet


class SeededStore(Protocol):
    def __call__(
        self, gateway: str, meters: Sequence[str], *, timescale: TimescaleMode = "auto"
    ) -> str: ...


@pytest.fixture
def seeded_store(make_database: DatabaseFactory) -> SeededStore:
    """`seeded_store(gateway, meters)`: the URL of a fresh, migrated database whose registry
    holds one project with that gateway and those meters (dropped when the test ends)."""

    def make(gateway: str, meters: Sequence[str], *, timescale: TimescaleMode = "auto") -> str:
        url = make_database()
        migrate(url, timescale)
        seed_fleet(url, gateway, list(meters))
        return url

    return make


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private Mosquitto, started; killed when the test ends (thawed first if it froze it)."""
    b = PrivateBroker(tmp_path / "broker").start()
    yield b
    if b.proc is not None:
        os.kill(b.proc.pid, signal.SIGCONT)
    b.kill()
