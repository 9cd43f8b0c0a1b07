"""`meterward simulate history` through the real CLI tree (typer's CliRunner)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from meterward.cli import app

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "residential-small.toml"


def test_history_smoke(tmp_path: Path) -> None:
    out = tmp_path / "run" / "readings.parquet"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "history",
            "--scenario",
            str(SCENARIO),
            "--days",
            "2",
            "--interval",
            "15m",
            "--out",
            str(out),
            "--seed",
            "7",
            "--start",
            "2026-02-02",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "100.0%" in result.output  # progress
    assert "wrote 146,880 readings of 96 meters" in result.output
    readings = pl.read_parquet(out)
    assert readings.height == 146_880
    assert str(readings["ts"].min()) == "2026-02-01 16:00:00+00:00"
    for suffix in ("faults", "meters", "weather"):
        assert (out.parent / f"readings.{suffix}.parquet").is_file()
    faults = pl.read_parquet(out.parent / "readings.faults.parquet")
    assert {"rollover", "reset", "spike", "no_response"} <= set(faults["kind"])


def test_history_quiet_and_hourly(tmp_path: Path) -> None:
    out = tmp_path / "h.parquet"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "history",
            "-s",
            str(SCENARIO),
            "--days",
            "1",
            "--interval",
            "1h",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "%" not in result.output
    assert pl.read_parquet(out)["ts"].n_unique() >= 24
    assert (tmp_path / "h.meters.parquet").is_file()


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["simulate", "history", "--out", str(tmp_path / "x.parquet")]
    cases = [
        (["--scenario", str(tmp_path / "none.toml")], "file not found"),
        (["--scenario", str(SCENARIO), "--interval", "often"], "--interval: bad duration"),
        (["--scenario", str(SCENARIO), "--days", "0"], "--days must be positive"),
        (["--scenario", str(SCENARIO), "--start", "someday"], "--start:"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert "meterward: error:" in result.output, result.output
        assert message in result.output, result.output
        assert "Traceback" not in result.output
    broken = tmp_path / "broken.toml"
    broken.write_text(
        '[scenario]\nname = "b"\n[[projects]]\nid = "p"\n'
        '[[projects.meters]]\nid = "m"\nkind = "electricity"\nprofile = "sdm999"\n',
        encoding="utf-8",
    )
    result = runner.invoke(app, [*base, "--scenario", str(broken)])
    assert result.exit_code == 2
    assert "projects[0].meters[0]: unknown profile 'sdm999'" in result.output
