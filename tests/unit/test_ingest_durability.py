"""R8: ingest refuses to run on a server that could lose acknowledged data (fake connection)."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.sink import DurabilityError, check_durability


class FakeConnection:
    """Answers SHOW like a PostgreSQL server with the given settings."""

    def __init__(self, **settings: str) -> None:
        self.settings = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
        self.settings.update(settings)

    def execute(self, query: str) -> Any:
        name = query.removeprefix("SHOW ").strip()
        value = self.settings[name]

        class Cursor:
            def fetchone(self) -> tuple[str]:
                return (value,)

        return Cursor()


def test_durable_server_passes() -> None:
    check_durability(FakeConnection())  # type: ignore[arg-type]
    check_durability(FakeConnection(synchronous_commit="remote_apply"))  # type: ignore[arg-type]


@pytest.mark.parametrize("setting", ["fsync", "full_page_writes", "synchronous_commit"])
def test_each_unsafe_setting_is_refused(setting: str) -> None:
    with pytest.raises(DurabilityError, match=f"{setting}=off"):
        check_durability(FakeConnection(**{setting: "off"}))  # type: ignore[arg-type]


def test_all_problems_are_named_at_once() -> None:
    with pytest.raises(DurabilityError) as info:
        check_durability(FakeConnection(fsync="off", synchronous_commit="off"))  # type: ignore[arg-type]
    assert "fsync=off" in str(info.value)
    assert "synchronous_commit=off" in str(info.value)
