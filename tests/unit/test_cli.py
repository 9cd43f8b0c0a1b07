"""The CLI: --help everywhere, one-line errors with non-zero exits."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from meterward.cli import app

ENTRY = [sys.executable, "-c", "from meterward.cli import main; main()"]


def command_paths() -> Iterator[list[str]]:
    """Every command and group in the tree, as argv prefixes."""
    root = typer.main.get_command(app)

    def walk(cmd: object, path: list[str]) -> Iterator[list[str]]:
        yield path
        # Typer vendors click, so test for the group's shape rather than a click class.
        subcommands: dict[str, object] = getattr(cmd, "commands", None) or {}
        for name, sub in subcommands.items():
            yield from walk(sub, [*path, name])

    yield from walk(root, [])


ALL_COMMANDS = list(command_paths())


def test_tree_has_the_foundation_commands() -> None:
    names = {" ".join(p) for p in ALL_COMMANDS}
    assert {"demo", "db", "db migrate", "db status", "config show"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "meterward")
def test_help_works_for_every_command(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # Every command documents itself: a help text beyond the usage line.
    assert len(result.output.strip().splitlines()) > 3


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    return subprocess.run(
        [*ENTRY, *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
        check=False,
    )


def test_entry_point_help() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout


def test_bad_setting_is_one_line_exit_2() -> None:
    result = _run("config", "show", MW_DATABASE_URL="mysql://nope")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meterward: error: invalid settings")
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_one_line(tmp_path: object) -> None:
    result = _run("--config", "/nonexistent/meterward.toml", "config", "show")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "meterward: error: config file not found: /nonexistent/meterward.toml"
    )


def test_db_without_url_explains() -> None:
    result = _run("db", "status")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("meterward: error: MW_DATABASE_URL is not set")


def test_unreachable_database_is_one_line() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    result = _run("db", "status", MW_DATABASE_URL="postgresql://x@127.0.0.1:1/none")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meterward: error: OperationalError")


def test_config_show_masks_password() -> None:
    result = _run("config", "show", MW_DATABASE_URL="postgresql://u:hunter2@db/x")
    assert result.returncode == 0
    assert "hunter2" not in result.stdout
    assert '"database_url": "postgresql://u:***@db/x"' in result.stdout


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("meterward ")
