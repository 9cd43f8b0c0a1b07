"""scripts/bootstrap.sh: idempotent, and clear about what is missing."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def bootstrap(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "bootstrap.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        timeout=900,
        check=False,
    )


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_second_run_changes_nothing() -> None:
    first = bootstrap()
    assert first.returncode == 0, first.stdout + first.stderr
    second = bootstrap()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "bootstrap: changed nothing" in second.stdout, second.stdout
    # Every step reports its state and its duration.
    for step in ("python", "postgres", "timescaledb", "mosquitto", "tools"):
        assert f"[{step} " in second.stdout
    assert "timescaledb: 2." in second.stdout
    assert "loaded in" in second.stdout


def test_check_mode_reports_everything_present() -> None:
    result = bootstrap("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bootstrap: everything present" in result.stdout


def test_check_names_a_missing_broker_binary() -> None:
    result = bootstrap("--check", "--only", "mosquitto", MW_MOSQUITTO_BIN="/nonexistent/mosquitto")
    assert result.returncode == 1
    assert "missing: mosquitto broker binary (apt-get install mosquitto)" in result.stdout


def test_check_names_a_broker_that_is_not_running() -> None:
    port = unused_port()
    result = bootstrap("--check", "--only", "mosquitto", MW_TEST_MQTT_PORT=str(port))
    assert result.returncode == 1
    assert f"missing: test broker on 127.0.0.1:{port} is not running" in result.stdout


def test_check_changes_nothing(tmp_path: Path) -> None:
    """--check on an empty state dir reports the broker missing and writes nothing."""
    state = tmp_path / "state"
    result = bootstrap("--check", "--only", "mosquitto", MW_STATE_DIR=str(state))
    assert result.returncode == 1
    assert "missing: test broker" in result.stdout
    assert list(state.iterdir()) == []


def test_unknown_step_is_refused() -> None:
    result = bootstrap("--only", "redis")
    assert result.returncode == 1
    assert "unknown step 'redis'" in result.stderr
