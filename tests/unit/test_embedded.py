"""Helpers of the demo's embedded infrastructure."""

from __future__ import annotations

from pathlib import Path

from meterward.embedded import free_port, traversable_by


def test_traversable_by_follows_every_parent(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    inner = closed / "inner"
    inner.mkdir(parents=True)
    closed.chmod(0o700)
    stranger = 65534  # nobody
    tmp_path.chmod(0o755)
    try:
        assert not traversable_by(inner, stranger, stranger)
        closed.chmod(0o711)
        assert traversable_by(inner, stranger, stranger) == all(
            p.stat().st_mode & 0o001 for p in inner.parents
        )
    finally:
        closed.chmod(0o755)


def test_free_port_prefers_the_asked_port_and_falls_back() -> None:
    import socket  # noqa: PLC0415

    port = free_port(0)
    assert port > 0
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        assert free_port(port) != port
