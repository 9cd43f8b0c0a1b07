"""The ledger files: byte-identical for the same seed, documented schema, consistent tables."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from contracts.channels import CHANNELS
from simulators.catalogue import PROFILES
from simulators.faults import QUALITIES
from simulators.history import History
from simulators.ledger import LedgerPaths, sha256
from simulators.scenario import load_scenario, plan

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "residential-small.toml"


def write(folder: Path, seed: int | None = None, workers: int = 2) -> LedgerPaths:
    run = History(plan(load_scenario(SCENARIO), seed=seed), days=3, interval_s=900)
    return run.write(folder / "readings.parquet", workers=workers).paths


def hashes(paths: LedgerPaths) -> dict[str, str]:
    return {p.name: sha256(p) for p in paths.all()}


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> LedgerPaths:
    return write(tmp_path_factory.mktemp("first"))


def test_same_seed_gives_byte_identical_files(first: LedgerPaths, tmp_path: Path) -> None:
    again = write(tmp_path)
    assert hashes(first) == hashes(again)


def test_generator_threads_do_not_change_a_byte(first: LedgerPaths, tmp_path: Path) -> None:
    assert hashes(write(tmp_path / "one", workers=1)) == hashes(first)
    assert hashes(write(tmp_path / "three", workers=3)) == hashes(first)


def test_another_seed_gives_other_files(first: LedgerPaths, tmp_path: Path) -> None:
    other = write(tmp_path, seed=99)
    a, b = hashes(first), hashes(other)
    for name in ("readings.parquet", "readings.meters.parquet", "readings.weather.parquet"):
        assert a[name] != b[name], name


def test_files_sit_beside_the_readings(first: LedgerPaths) -> None:
    names = sorted(p.name for p in first.readings.parent.iterdir())
    assert names == [
        "readings.faults.parquet",
        "readings.meters.parquet",
        "readings.parquet",
        "readings.weather.parquet",
    ]


def test_readings_schema_and_vocabulary(first: LedgerPaths) -> None:
    df = pl.read_parquet(first.readings)
    assert df.columns == ["meter_id", "channel", "ts", "value", "unit", "quality", "true_value"]
    assert df.schema["ts"] == pl.Datetime("us", "UTC")
    assert df.schema["value"] == pl.Float64
    assert df.schema["true_value"] == pl.Float64
    strings = df.with_columns(pl.col("meter_id", "channel", "unit", "quality").cast(pl.String))
    assert set(strings["quality"]) <= set(QUALITIES)
    units = strings.select("channel", "unit").unique()
    for channel, unit in units.iter_rows():
        assert CHANNELS[channel].unit == unit
    # Null exactly where the device did not answer; the truth is always known.
    assert strings.filter(pl.col("value").is_null())["quality"].unique().to_list() == ["comm_error"]
    assert strings["true_value"].null_count() == 0
    # Every meter has every channel of its profile at every instant.
    meters = pl.read_parquet(first.meters)
    per_meter = strings.group_by("meter_id").agg(pl.col("channel").n_unique(), pl.len())
    expected = {
        m: len(PROFILES[p].channels) for m, p in meters.select("meter_id", "profile").rows()
    }
    for meter, channels, rows in per_meter.rows():
        assert channels == expected[meter]
        assert rows == channels * 3 * 96


def test_meters_file(first: LedgerPaths) -> None:
    meters = pl.read_parquet(first.meters)
    assert meters.height == 96
    assert set(meters["time_zone"]) == {"Asia/Shanghai"}
    modbus = meters.filter(pl.col("transport") == "modbus")
    assert modbus["unit_id"].null_count() == 0
    assert modbus["bus"].null_count() == 0
    assert modbus.select("bus", "unit_id").is_unique().all()
    assert meters.filter(pl.col("transport") == "mqtt")["unit_id"].null_count() == 2
    water = meters.filter(pl.col("kind") == "water")["counters"][0]
    assert water[0]["channel"] == "water_volume_m3"
    assert water[0]["modulus"] == 100_000.0
    acrel = meters.filter(pl.col("profile") == "acrel-adl400")["counters"][0]
    assert {c["modulus"] for c in acrel} == {21_474_836.48}
    assert meters.filter(pl.col("profile") == "eastron-sdm120")["counters"][0][0]["modulus"] is None


def test_weather_file(first: LedgerPaths) -> None:
    weather = pl.read_parquet(first.weather)
    assert weather.columns == ["project", "ts", "temperature_c", "relative_humidity_pct"]
    assert weather.height == 3 * 96
    station = pl.read_parquet(first.readings).filter(
        (pl.col("meter_id").cast(pl.String) == "weather-station")
        & (pl.col("channel").cast(pl.String) == "temperature_c")
    )
    assert station["true_value"].to_list() == weather["temperature_c"].to_list()


def test_faults_file_covers_the_run_only(first: LedgerPaths) -> None:
    faults = pl.read_parquet(first.faults)
    assert faults.columns == ["meter_id", "kind", "start", "end", "params"]
    last = pl.read_parquet(first.readings)["ts"].max()
    assert last is not None
    assert (faults["start"] <= last).all()
    assert "retrofit" not in set(faults["kind"])  # starts on day 4, after this 3-day run
