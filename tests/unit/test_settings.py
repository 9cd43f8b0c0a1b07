"""Settings: TOML + MW_ environment, validated, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterward.settings import SettingsError, load_settings, redact_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("MW_DATABASE_URL", "MW_MQTT_URL", "MW_CONFIG", "MW_TIMESCALEDB", "MW_LOG_LEVEL"):
        monkeypatch.delenv(key, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meterward.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_need_no_configuration() -> None:
    settings = load_settings()
    assert settings.database_url is None
    assert settings.mqtt_url is None
    assert settings.timescaledb == "auto"
    assert settings.demo.api_port == 8420


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'database_url = "postgresql://mw@db.internal:5433/meterward"\n'
        'mqtt_url = "mqtts://broker.internal:8883"\n'
        'timescaledb = "require"\n'
        "[demo]\napi_port = 9000\n",
    )
    settings = load_settings(path)
    assert settings.database_url == "postgresql://mw@db.internal:5433/meterward"
    assert settings.mqtt_url == "mqtts://broker.internal:8883"
    assert settings.timescaledb == "require"
    assert settings.demo.api_port == 9000


def test_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'timescaledb = "require"\n[demo]\napi_port = 9000\n')
    monkeypatch.setenv("MW_TIMESCALEDB", "off")
    monkeypatch.setenv("MW_DEMO__API_PORT", "9100")
    settings = load_settings(path)
    assert settings.timescaledb == "off"
    assert settings.demo.api_port == 9100


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_CONFIG", str(write(tmp_path, 'log_level = "DEBUG"\n')))
    assert load_settings().log_level == "DEBUG"


def test_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_LOG_LEVEL", "ERROR")
    assert load_settings(log_level="DEBUG").log_level == "DEBUG"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://x/y", "must start with postgresql://"),
        ("postgresql:///meterward", "needs a host"),
        ("postgresql://db:99999/x", "bad port"),
        ("postgresql://db:5432", "needs a database name"),
    ],
)
def test_bad_database_url_is_one_line(
    url: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_DATABASE_URL", url)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert "database_url" in message
    assert fragment in message


def test_socket_database_url_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://postgres:@/meterward?host=/tmp/pg"
    monkeypatch.setenv("MW_DATABASE_URL", url)
    assert load_settings().database_url == url


def test_bad_mqtt_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_MQTT_URL", "http://broker:1883")
    with pytest.raises(SettingsError, match=r"mqtt_url: must start with mqtt://"):
        load_settings()


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, 'databse_url = "postgresql://h/db"\n')
    with pytest.raises(SettingsError, match=r"databse_url: unknown key"):
        load_settings(path)


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"demo\.api_prot: unknown key"):
        load_settings(write(tmp_path, "[demo]\napi_prot = 1\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"config file not found: .*nope\.toml"):
        load_settings(tmp_path / "nope.toml")


def test_toml_syntax_error_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, "database_url = \n"))
    assert "\n" not in str(info.value)
    assert "cannot read config file" in str(info.value)


def test_wrong_type_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_TIMESCALEDB", "sometimes")
    with pytest.raises(SettingsError, match=r"timescaledb: Input should be 'auto', 'require'"):
        load_settings()


def test_passwords_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_DATABASE_URL", "postgresql://mw:s3cret@db/meterward")
    shown = load_settings().redacted()
    assert shown["database_url"] == "postgresql://mw:***@db/meterward"
    assert "s3cret" not in str(shown)
    assert redact_url("mqtt://broker:1883") == "mqtt://broker:1883"


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os  # noqa: PLC0415

    monkeypatch.delenv("MW_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert load_settings().data_dir == tmp_path / "meterward"
    monkeypatch.delenv("XDG_DATA_HOME")
    expected = (
        Path("/var/lib/meterward")
        if os.geteuid() == 0
        else Path.home() / ".local" / "share" / "meterward"
    )
    assert load_settings().data_dir == expected
