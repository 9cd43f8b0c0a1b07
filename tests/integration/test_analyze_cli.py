"""`meterward analyze` as a process: file mode over Parquet and CSV, the evaluation against the
simulators' ledger, and one-line errors for the files a person gets wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from analytics.frames import CONSUMPTION_SCHEMA, FINDINGS_SCHEMA
from simulators.history import History
from simulators.scenario import load_scenario, plan

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
ENTRY = [sys.executable, "-c", "from meterward.cli import main; main()"]
NO_PIPELINE = "analytics.pipeline (run_pass) has not landed yet"


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    return subprocess.run(
        [*ENTRY, "analyze", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
        cwd=ROOT,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meterward: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analyze") / "readings.parquet"
    scenario = plan(load_scenario(ROOT / "scenarios" / "residential-small.toml"))
    History(scenario, days=7, interval_s=900).write(out)
    return out


@pytest.fixture(scope="module")
def pipeline() -> object:
    return pytest.importorskip("analytics.pipeline", reason=NO_PIPELINE)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["consumption", "detect"])
def test_a_missing_input_is_one_line(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.parquet"
    line = one_error_line(analyze(command, "--input", missing, "--output", tmp_path / "o.csv"))
    assert line == f"meterward: error: input not found: {missing}"


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    csv = tmp_path / "export.csv"
    csv.write_text("meter_id,channel,ts,quality\nm1,energy_import_kwh,2026-01-05T00:00:00Z,good\n")
    line = one_error_line(analyze("consumption", "-i", csv, "-o", tmp_path / "o.parquet"))
    assert "missing column 'value'" in line
    assert str(csv) in line


def test_missing_columns_are_all_named(tmp_path: Path) -> None:
    path = tmp_path / "export.parquet"
    pl.DataFrame({"meter_id": ["m1"], "reading": [1.0]}).write_parquet(path)
    line = one_error_line(analyze("detect", "-i", path, "-o", tmp_path / "o.json"))
    assert "missing columns 'channel', 'ts', 'value'" in line


def test_a_timestamp_that_is_not_a_time_is_named(tmp_path: Path) -> None:
    csv = tmp_path / "export.csv"
    csv.write_text(
        "meter_id,channel,ts,value\n"
        "m1,energy_import_kwh,2026-01-05T00:00:00Z,1.0\n"
        "m1,energy_import_kwh,yesterday,2.0\n"
    )
    line = one_error_line(analyze("consumption", "-i", csv, "-o", tmp_path / "o.csv"))
    assert line.startswith(f"meterward: error: {csv}: column 'ts': 'yesterday' is not a time")


def test_an_unwritable_output_is_one_line(pipeline: object, tmp_path: Path) -> None:
    csv = tmp_path / "export.csv"
    csv.write_text("meter_id,channel,ts,value\nm1,energy_import_kwh,2026-01-05T00:00:00Z,1.0\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_error_line(analyze("consumption", "-q", "-i", csv, "-o", blocker / "o.csv"))
    assert line.startswith(f"meterward: error: cannot write {blocker / 'o.csv'}")


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    line = one_error_line(analyze("consumption", "-i", path, "-o", tmp_path / "o.csv"))
    assert line.startswith(f"meterward: error: cannot read input {path}")


def test_a_meters_file_without_time_zone_is_named(history: Path, tmp_path: Path) -> None:
    meters = tmp_path / "meters.parquet"
    pl.read_parquet(history.with_name("readings.meters.parquet")).drop("time_zone").write_parquet(
        meters
    )
    result = analyze("detect", "-i", history, "--meters", meters, "-o", tmp_path / "f.json")
    assert "missing column 'time_zone'" in one_error_line(result)


def test_a_row_without_a_time_is_one_line(tmp_path: Path) -> None:
    csv = tmp_path / "export.csv"
    csv.write_text(
        "meter_id,channel,ts,value,quality\n"
        "m1,energy_import_kwh,2026-01-05T00:00:00Z,1.0,good\n"
        "m1,energy_import_kwh,,2.0,good\n"
    )
    line = one_error_line(analyze("consumption", "-i", csv, "-o", tmp_path / "o.parquet"))
    assert line == f"meterward: error: {csv}: column 'ts': 1 row(s) without a value"


def test_an_unknown_time_zone_is_one_line(tmp_path: Path) -> None:
    csv = tmp_path / "export.csv"
    csv.write_text("meter_id,channel,ts,value\nm1,energy_import_kwh,2026-01-05T00:00:00Z,1\n")
    line = one_error_line(
        analyze("detect", "-i", csv, "-o", tmp_path / "o.json", "--time-zone", "Mars/Base")
    )
    assert line == "meterward: error: --time-zone: 'Mars/Base' is not an IANA time zone"


def test_a_project_in_two_time_zones_is_one_line(history: Path, tmp_path: Path) -> None:
    meters = pl.read_parquet(history.with_name("readings.meters.parquet"))
    zones = ["Asia/Shanghai"] * (meters.height - 1) + ["Europe/Berlin"]
    path = tmp_path / "meters.parquet"
    meters.with_columns(time_zone=pl.Series(zones)).write_parquet(path)
    line = one_error_line(
        analyze("consumption", "-i", history, "--meters", path, "-o", tmp_path / "o.parquet")
    )
    assert "has meters in more than one time zone" in line


def test_a_weather_time_that_is_not_a_time_is_one_line(history: Path, tmp_path: Path) -> None:
    weather = tmp_path / "weather.csv"
    weather.write_text("project,ts,temperature_c\nsunrise-garden,notatime,3.5\n")
    line = one_error_line(
        analyze("detect", "-i", history, "--weather", weather, "-o", tmp_path / "o.json")
    )
    assert str(weather) in line


def test_evaluate_needs_something_to_evaluate() -> None:
    assert "--ledger" in one_error_line(analyze("evaluate"))


def test_evaluate_input_needs_a_ledger(history: Path) -> None:
    assert "--input needs --ledger" in one_error_line(analyze("evaluate", "--input", history))


def test_evaluate_names_a_missing_ledger_file(history: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.parquet"
    lonely.write_bytes(history.read_bytes())
    line = one_error_line(analyze("evaluate", "--ledger", lonely))
    assert line == (
        f"meterward: error: ledger faults file not found: {tmp_path / 'lonely.faults.parquet'}"
    )


def test_evaluate_names_a_missing_ledger_column(history: Path, tmp_path: Path) -> None:
    faults = tmp_path / "r.faults.parquet"
    pl.read_parquet(history.with_name("readings.faults.parquet")).drop("params").write_parquet(
        faults
    )
    (tmp_path / "r.parquet").write_bytes(history.read_bytes())
    assert "missing column 'params'" in one_error_line(analyze("evaluate", "--ledger", faults))


def test_evaluate_refuses_random_scenarios_too_short_for_a_baseline() -> None:
    line = one_error_line(analyze("evaluate", "--scenarios", "1", "--days", "3"))
    assert "--days must be at least 7" in line


def test_evaluate_names_a_bad_tolerance(history: Path) -> None:
    line = one_error_line(analyze("evaluate", "--ledger", history, "--tolerance", "soon"))
    assert "bad duration 'soon'" in line


# -- file mode and evaluation (need the pipeline) ----------------------------------------------


@pytest.mark.slow
def test_consumption_in_every_format_and_from_csv(
    pipeline: object, history: Path, tmp_path: Path
) -> None:
    outs = {}
    for fmt in ("parquet", "csv", "json"):
        out = tmp_path / f"consumption.{fmt}"
        result = analyze("consumption", "-i", history, "-o", out, "--format", fmt, "-q")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        outs[fmt] = out
    parquet = pl.read_parquet(outs["parquet"])
    assert parquet.columns == list(CONSUMPTION_SCHEMA)
    assert parquet.height > 0
    assert parquet.filter(pl.col("consumption") < 0).is_empty()
    from_csv = pl.read_csv(outs["csv"]).get_column("consumption")
    assert from_csv.to_list() == parquet.get_column("consumption").to_list()
    assert pl.read_json(outs["json"]).height == parquet.height
    # The same readings exported as CSV (ts as text) give the same consumption.
    export = tmp_path / "readings.csv"
    pl.read_parquet(history).select("meter_id", "channel", "ts", "value", "quality").write_csv(
        export
    )
    again = tmp_path / "again.parquet"
    meters = history.with_name("readings.meters.parquet")
    result = analyze("consumption", "-i", export, "--meters", meters, "-o", again)
    assert result.returncode == 0, result.stderr
    assert pl.read_parquet(again).equals(parquet)


@pytest.mark.slow
def test_detect_writes_findings(pipeline: object, history: Path, tmp_path: Path) -> None:
    out = tmp_path / "findings.parquet"
    result = analyze("detect", "-i", history, "-o", out)
    assert result.returncode == 0, result.stderr
    findings = pl.read_parquet(out)
    assert findings.columns == list(FINDINGS_SCHEMA)
    assert "leak" in set(findings.get_column("kind").cast(pl.String))


@pytest.mark.slow
def test_evaluate_a_ledger_prints_the_table(
    pipeline: object, history: Path, tmp_path: Path
) -> None:
    out = tmp_path / "accuracy.csv"
    result = analyze("evaluate", "--ledger", history, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["kind", "expected", "found", "recall"]
    for kind in ("leak", "spike", "stuck", "comm_loss", "rollover", "reset", "replacement"):
        assert any(line.startswith(f"{kind} ") for line in lines), kind
    assert any(line.startswith("consumption: ") for line in lines)
    kinds = pl.read_csv(out)
    assert {"precision", "recall", "median_ttd_h", "before_failure"} <= set(kinds.columns)
    for part in ("faults", "detections", "consumption"):
        assert (tmp_path / f"accuracy.{part}.csv").is_file(), part


@pytest.mark.slow
def test_evaluate_an_export_against_its_ledger(
    pipeline: object, history: Path, tmp_path: Path
) -> None:
    export = tmp_path / "export.csv"
    pl.read_parquet(history).select("meter_id", "channel", "ts", "value", "quality").write_csv(
        export
    )
    direct = analyze("evaluate", "--ledger", history, "-q")
    via_csv = analyze("evaluate", "--ledger", history, "--input", export, "-q")
    assert direct.returncode == 0, direct.stderr
    assert via_csv.returncode == 0, via_csv.stderr
    assert via_csv.stdout == direct.stdout
    # --check turns a missed target into exit 1, and only that.
    checked = analyze("evaluate", "--ledger", history, "--check", "-q")
    assert checked.stdout == direct.stdout
    assert checked.returncode == (1 if "MISSED" in direct.stdout else 0)


@pytest.mark.slow
def test_evaluate_random_scenarios(pipeline: object, tmp_path: Path) -> None:
    result = analyze(
        "evaluate", "--scenarios", "2", "--seed", "5", "--days", "8", "--workdir", tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "all 2 scenarios:" in result.stdout
    assert (tmp_path / "random-5.toml").is_file()
    assert (tmp_path / "random-6.faults.parquet").is_file()
    assert "[2/2]" in result.stderr
