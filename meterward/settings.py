"""Settings: a TOML file plus `MW_`-prefixed environment, validated once at start-up.

Precedence, highest first: explicit overrides (CLI flags), environment (`MW_DATABASE_URL`,
`MW_DEMO__API_PORT`, ...), the TOML file (`--config` or `MW_CONFIG`), defaults.
Errors come out as one line naming the key and the source, never as a traceback.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_config_file: ContextVar[Path | None] = ContextVar("meterward_config_file", default=None)

POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
MQTT_SCHEMES = frozenset({"mqtt", "mqtts"})


class SettingsError(Exception):
    """A configuration problem, already phrased as one line for a person to fix."""


def _default_data_dir() -> Path:
    """~/.local/share/meterward, or /var/lib/meterward for root.

    As root, the embedded PostgreSQL runs as its own user and makes every directory above its
    data traversable; under /root that would open root's home to everyone.
    """
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]) / "meterward"
    if os.geteuid() == 0:
        return Path("/var/lib/meterward")
    return Path.home() / ".local" / "share" / "meterward"


def validate_database_url(url: str) -> str:
    """Accept `postgresql://user:pw@host:port/db` or a Unix-socket form (`?host=/run/dir`)."""
    parts = urlsplit(url)
    if parts.scheme not in POSTGRES_SCHEMES:
        raise ValueError(f"must start with postgresql:// (got scheme {parts.scheme or 'none'!r})")
    socket_dir = parse_qs(parts.query).get("host")
    if not parts.hostname and not socket_dir:
        raise ValueError("needs a host (postgresql://HOST/DB) or a socket dir (?host=/path)")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    if not parts.path.strip("/"):
        raise ValueError("needs a database name (postgresql://HOST/DBNAME)")
    return url


def validate_mqtt_url(url: str) -> str:
    """Accept `mqtt://[user:pw@]host[:port]` or `mqtts://...`."""
    parts = urlsplit(url)
    if parts.scheme not in MQTT_SCHEMES:
        raise ValueError(f"must start with mqtt:// or mqtts:// (got {parts.scheme or 'none'!r})")
    if not parts.hostname:
        raise ValueError("needs a host (mqtt://HOST:PORT)")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    return url


class DemoSettings(BaseModel):
    """What `meterward demo` runs when no external infrastructure is named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path | None = Field(
        default=None, description="where the embedded database and broker keep state"
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8420, ge=0, le=65535)
    scenario: str = Field(
        default="residential-small", description="shipped scenario served as the demo's fleet"
    )
    fleet_base_port: int = Field(default=15020, ge=0, le=65000)


class MappingSettings(BaseModel):
    """A family of meters publishing their own JSON (see ingest/mappings.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    topic: str = Field(description="MQTT filter, e.g. tele/+/SENSOR")
    format: Literal["tasmota", "json"]
    device_level: int = Field(ge=0, description="the topic level that names the device")
    devices: dict[str, str] = Field(description="device name -> meter code")
    ts_path: str = "Time"
    channels: dict[str, str] = Field(default_factory=dict, description="channel -> JSON path")
    time_zone: str = "UTC"


class IngestSettings(BaseModel):
    """`meterward ingest run`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: str = Field(
        default="meterward-ingest-1",
        min_length=1,
        description="stable per worker: the broker keeps this worker's session under it",
    )
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    mqtt5: bool = Field(default=True, description="false for MQTT 3.1.1-only brokers")
    shared_subscription: bool = Field(
        default=True, description="$share/<group>/...: workers split the load (MQTT 5)"
    )
    share_group: str = Field(default="ingest", pattern=r"^[A-Za-z0-9_-]+$")
    end_session_on_exit: bool = Field(
        default=False,
        description="drop the broker session at exit: for a worker removed for good, whose"
        " share of a shared subscription would otherwise queue up for it",
    )
    max_messages: int = Field(default=200, ge=1)
    max_age_ms: int = Field(default=50, ge=1)
    skew_limit_s: float = Field(default=600.0, gt=0)
    max_future_s: float = Field(default=86400.0, gt=0)
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve Prometheus metrics on 127.0.0.1:PORT"
    )
    mappings: list[MappingSettings] = Field(default_factory=list)


class AnalyticsSettings(BaseModel):
    """`meterward analytics run`: the scheduled analytics worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    worker_id: str = Field(
        default="meterward-analytics-1",
        min_length=1,
        description="names this worker in run records and logs; several may run at once",
    )
    tick_minutes: int = Field(
        default=15, ge=1, le=60, description="the short tick, aligned to UTC wall-clock"
    )
    settle_s: float = Field(
        default=120.0,
        ge=0,
        description="a tick runs this long after its window closes, so readings still in"
        " flight from the gateways are in",
    )
    daily_hour: int = Field(
        default=1,
        ge=0,
        le=23,
        description="local hour after midnight at which the daily job runs (it also waits"
        " until the short ticks have covered the whole day)",
    )
    max_ticks_per_step: int = Field(
        default=16,
        ge=1,
        description="catch-up: at most this many short ticks' worth in one transaction",
    )
    max_days_per_step: int = Field(
        default=1, ge=1, description="catch-up: at most this many days in one daily step"
    )
    initial_backfill_hours: float = Field(
        default=24.0,
        ge=0,
        description="a project seen for the first time is processed from this long ago",
    )
    lookback_days: float = Field(
        default=28.0,
        ge=0,
        description="history loaded before each window for baselines (same hour of week)",
    )
    threads: int = Field(default=2, ge=1, le=64, description="projects processed in parallel")
    projects_refresh_s: float = Field(
        default=300.0, gt=0, description="how often new projects are picked up"
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve Prometheus metrics on 127.0.0.1:PORT"
    )

    @field_validator("tick_minutes")
    @classmethod
    def _divides_the_hour(cls, value: int) -> int:
        # Ticks align to wall-clock boundaries; a length that does not divide the hour would
        # drift across hours and make windows differ between workers started at other times.
        if 60 % value:
            raise ValueError("must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60)")
        return value


class Settings(BaseSettings):
    """Everything a meterward process reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="MW_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset means an embedded server (demo only)"
    )
    mqtt_url: str | None = Field(
        default=None, description="MQTT broker URL; unset means an in-process broker (demo only)"
    )
    timescaledb: Literal["auto", "require", "off"] = Field(
        default="auto",
        description="auto: use the extension when the server has it; require: fail without it",
    )
    data_dir: Path = Field(default_factory=_default_data_dir)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=8, ge=1)
    demo: DemoSettings = DemoSettings()
    ingest: IngestSettings = IngestSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        return None if value is None else validate_database_url(value)

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        return None if value is None else validate_mqtt_url(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with passwords in URLs masked, for `config show` and logs."""
        data = self.model_dump(mode="json")
        for key in ("database_url", "mqtt_url"):
            if data.get(key):
                data[key] = redact_url(data[key])
        return data


def redact_url(url: str) -> str:
    """`postgresql://u:secret@h/db` -> `postgresql://u:***@h/db`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ())) or "settings"
    msg = str(error.get("msg", "invalid"))
    if error.get("type") == "extra_forbidden":
        msg = "unknown key"
    return f"{where}: {msg.removeprefix('Value error, ')}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate settings; raise `SettingsError` with a one-line message on any problem."""
    path = config_file
    if path is None and os.environ.get("MW_CONFIG"):
        path = Path(os.environ["MW_CONFIG"])
    if path is not None and not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    token = _config_file.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        source = f" (config file {path} or MW_* environment)" if path else " (MW_* environment)"
        details = "; ".join(_describe(dict(e)) for e in exc.errors())
        raise SettingsError(f"invalid settings{source}: {details}") from None
    except (OSError, ValueError) as exc:  # a TOML syntax error surfaces as ValueError
        raise SettingsError(f"cannot read config file {path}: {exc}") from None
    finally:
        _config_file.reset(token)
