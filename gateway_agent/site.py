"""A site: what one gateway polls and where it forwards, as the technician configured it.

These frozen dataclasses are the validated model the agent runs on; `load_site` (below) turns
a site TOML file into one, with errors that name the file, line and field.

A bus is one transaction at a time: an RS-485 line on a local serial port (`rtu`), the same
line behind an RS-485-to-Ethernet converter (`rtu-over-tcp`, or `tcp` when the converter
speaks Modbus TCP), or a device with its own Modbus TCP endpoint (`tcp`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway_agent.profiles import ChannelSpec, Profile

Transport = Literal["tcp", "rtu", "rtu-over-tcp"]
InstantPolicy = Literal["reject_new", "overwrite_oldest"]


@dataclass(frozen=True, slots=True)
class SerialPort:
    """A local serial port and its line settings."""

    path: str
    baud: int
    parity: Literal["N", "E", "O"]
    stop_bits: int
    data_bits: int = 8


@dataclass(frozen=True, slots=True)
class Bus:
    """One Modbus line; `timeout_s` bounds one transaction, `backoff_max_s` a dead device's wait."""

    name: str
    transport: Transport
    host: str | None = None  # tcp, rtu-over-tcp
    port: int | None = None
    serial: SerialPort | None = None  # rtu
    timeout_s: float = 1.0
    retries: int = 0  # extra attempts of one read inside a cycle before it is a comm_error
    backoff_max_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Device:
    """One Modbus meter on a bus: its unit id, register map and meter id in the registry."""

    meter_id: str
    bus: str
    unit_id: int
    profile: Profile
    channels: tuple[ChannelSpec, ...]  # the profile's channels this site reads (default: all)
    poll_groups: Mapping[str, float]  # group -> seconds (profile defaults, site overrides)
    max_registers_per_read: int  # the profile's, or lower for a fussy converter


@dataclass(frozen=True, slots=True)
class MqttMeter:
    """A meter that publishes its own JSON: topic, and a JSON path per channel."""

    meter_id: str
    topic: str
    channels: Mapping[str, str]  # channel -> JSON path, e.g. "ENERGY.Total"
    ts_path: str | None = None  # None: stamp with the gateway's clock on receipt
    time_zone: str = "UTC"  # for timestamps sent without an offset (Tasmota)


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """The durable outbox: where, how big, and what happens when it is full."""

    path: str
    budget_bytes: int = 256 * 1024 * 1024
    instant_policy: InstantPolicy = "overwrite_oldest"
    thin_keep_s: float = 900.0  # when full, keep one counter sample per meter per this span


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca_file: str
    cert_file: str | None = None  # client certificate (mutual TLS)
    key_file: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    insecure: bool = False  # skip hostname check: refused when env = "prod"


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """How readings leave the gateway."""

    mqtt_url: str
    client_id: str
    mqtt5: bool = True  # false for MQTT 3.1.1 brokers (the embedded demo broker)
    tls: TlsConfig | None = None
    session_expiry_s: int = 7 * 86400
    keepalive_s: int = 30
    batch_max_readings: int = 2000
    batch_max_age_s: float = 1.0
    max_inflight_batches: int = 16
    ack_timeout_s: float = 60.0
    backfill_rate: float = 2000.0  # readings per second drained from a backlog
    status_interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Site:
    """Everything one gateway agent runs."""

    gateway_id: str
    env: Literal["dev", "prod"]
    buses: Mapping[str, Bus]
    devices: tuple[Device, ...]
    mqtt_meters: tuple[MqttMeter, ...]
    outbox: OutboxConfig
    forward: ForwardConfig
    metrics_port: int | None = None
    source: str = field(default="<site>", compare=False)  # the file it came from
