"""`meterward demo` with zero setup: embedded PostgreSQL, a local broker, clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENTRY = [sys.executable, "-c", "from meterward.cli import main; main()"]


def demo_env(data_dir: Path, *, without_mosquitto: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    env["MW_DATA_DIR"] = str(data_dir)
    if without_mosquitto:
        # Hide /usr/sbin (mosquitto's home on Debian) so the in-process amqtt broker is used.
        env["PATH"] = os.pathsep.join(
            p for p in env.get("PATH", "").split(os.pathsep) if not p.endswith("sbin")
        )
    return env


def processes_using(data_dir: Path) -> list[str]:
    """Live processes whose command line mentions the demo's data dir (orphans if any)."""
    found = []
    for proc in psutil.process_iter(attrs=["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline and proc.info["pid"] != os.getpid():
            found.append(f"{proc.info['pid']}: {cmdline}")
    return found


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_smoke_passes_with_no_services_configured(tmp_path: Path, broker: str) -> None:
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [*ENTRY, "demo", "--smoke"],
        check=False,
        env=demo_env(data_dir, without_mosquitto=broker == "amqtt"),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "embedded PostgreSQL" in out
    assert f"local {broker}" in out
    assert "smoke: database: answers" in out
    assert "smoke: broker: round trip ok" in out
    assert "smoke: ingest: batch stored and acknowledged" in out
    assert "smoke: fleet: 94 Modbus meters, 2 MQTT meters" in out
    # The gateway agent polled the served fleet, and ingest stored what it forwarded.
    assert re.search(r"smoke: gateways: \d+ meters' readings stored through 1 gateway\(s\)", out)
    assert re.search(r"smoke: analytics: \d+ ticks in \d+ steps", out)
    assert "smoke: all parts answer" in out
    assert processes_using(data_dir) == []


def test_sigterm_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [*ENTRY, "demo"],
        env=demo_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "press Ctrl-C to stop" in line or time.monotonic() > deadline:
            break
    assert any("press Ctrl-C" in line for line in lines), "".join(lines)
    assert len(processes_using(data_dir)) >= 2  # postgres and mosquitto are up
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopping" in rest
    assert processes_using(data_dir) == []
    # The data directory is kept: a second run reattaches and finds the schema up to date.
    assert (data_dir / "demo" / "postgres" / "PG_VERSION").is_file()
    again = subprocess.run(
        [*ENTRY, "demo", "--smoke"],
        check=False,
        env=demo_env(data_dir),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "migrations applied now: none (up to date)" in again.stdout
