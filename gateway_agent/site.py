"""A site: what one gateway polls and where it forwards, as the technician configured it.

These frozen dataclasses are the validated model the agent runs on; `load_site` (below) turns
a site TOML file into one, raising `SiteError` that names the file, line and field. The shape
(ops/gateway/site.example.toml is a complete, commented example):

    [gateway]        id, env ("dev" | "prod"), metrics_port
    [forward]        mqtt_url (mqtt:// or mqtts://), client_id (default "gw-<id>"), mqtt5,
                     session_expiry_s, keepalive_s, batch_max_readings, batch_max_age_s,
                     max_inflight_batches, ack_timeout_s, backfill_rate, status_interval_s
    [forward.tls]    ca_file, cert_file, key_file, min_version ("1.2" | "1.3"), insecure
    [outbox]         path, budget ("256MiB", "1GB" or bytes), instant_policy, thin_keep
    [mqtt_input]     url, client_id, mqtt5, [mqtt_input.tls]: the MQTT-native meters' broker
                     (default: the forward broker, client id "<forward client id>-in")
    [[buses]]        name, transport ("tcp" | "rtu" | "rtu-over-tcp"), host + port (tcp: 502)
                     or path + baud/parity/stop_bits/data_bits (default: the devices'
                     profiles), timeout, retries, backoff_max
    [[devices]]      meter_id, bus, unit_id (default: the profile's), profile (built-in id or
                     a .toml path), channels (subset), poll = { group = seconds },
                     max_registers_per_read (at most the profile's)
    [[mqtt_meters]]  meter_id, topic, channels = { channel = "JSON.path[0]" }, ts_path,
                     time_zone (IANA; for timestamps without an offset)

Keys are the model's field names (so a setting added to a config dataclass is configurable
at once), except `budget`, `thin_keep`, `timeout` and `backoff_max`. Durations take seconds
or "90s"/"15m"/"2h"/"7d"; relative paths resolve against the site file's folder; unknown keys
are errors. With env = "prod" the loader enforces R25: no plaintext MQTT beyond loopback, no
TLS without a pinned CA, no TLS below 1.2, no `insecure`.

A bus is one transaction at a time: an RS-485 line on a local serial port (`rtu`), the same
line behind an RS-485-to-Ethernet converter (`rtu-over-tcp`, or `tcp` when the converter
speaks Modbus TCP), or a device with its own Modbus TCP endpoint (`tcp`).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, Final, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contracts.channels import CHANNELS
from contracts.meter_json import parse_path
from contracts.topics import readings_topic
from contracts.wire import MAX_READINGS_PER_BATCH
from gateway_agent.profiles import (
    ChannelSpec,
    LocatedError,
    Profile,
    ProfileError,
    _Locator,
    _Reader,
    builtin_profiles,
    load_profile,
)

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

    @classmethod
    def of(
        cls,
        meter_id: str,
        bus: str,
        unit_id: int,
        profile: Profile,
        poll_groups: Mapping[str, float] | None = None,
    ) -> Device:
        """A device on its profile's defaults: every channel, its largest read, its poll
        intervals (`poll_groups` overrides some of them)."""
        return cls(
            meter_id,
            bus,
            unit_id,
            profile,
            tuple(profile.channels.values()),
            {**profile.poll_groups, **(poll_groups or {})},
            profile.max_registers_per_read,
        )


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
    """TLS to a broker. Without `ca_file` the system's trust store is used (refused in prod)."""

    ca_file: str | None = None
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
class InputBroker:
    """The broker the site's MQTT-native meters publish to (often the forward broker)."""

    url: str
    client_id: str  # differs from the forwarder's: one broker drops the older of two sessions
    mqtt5: bool = True
    tls: TlsConfig | None = None


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
    mqtt_input: InputBroker | None = None  # None: the forward broker (`input_broker()`)
    source: str = field(default="<site>", compare=False)  # the file it came from

    def input_broker(self) -> InputBroker:
        """Where the MQTT-native meters are read: `[mqtt_input]`, else the forward broker."""
        if self.mqtt_input is not None:
            return self.mqtt_input
        fwd = self.forward
        return InputBroker(fwd.mqtt_url, f"{fwd.client_id}-in", fwd.mqtt5, fwd.tls)


# --- loading -------------------------------------------------------------------------------


class SiteError(LocatedError):
    """A site file that cannot be run, with where the problem is: file, line and field."""


class _Table(_Reader):
    """One table of the site file. Tables without a header of their own (inline tables, the
    elements of an inline array) report their parent's line for the key that holds them."""

    error = SiteError

    def __init__(
        self,
        file: str,
        loc: _Locator,
        data: Mapping[str, Any],
        table: str,
        index: int | None = None,
        *,
        parent: _Table | None = None,
        key: str = "",
        base_dir: Path | None = None,
    ) -> None:
        super().__init__(file, loc, data, table, index)
        self.parent, self.key, self.base_dir = parent, key, base_dir

    def path(self, key: str | None = None) -> str:
        if not self.table:
            return key or ""
        if self.parent is None or self.index is not None:
            return super().path(key)
        base = self.parent.path(self.key)
        return f"{base}.{key}" if key else base

    def fail(self, key: str | None, message: str) -> LocatedError:
        return SiteError(self.file, self.line(key), self.path(key), message)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if default is ... and key not in self.data:  # name the missing field itself
            self.used.add(key)
            raise self.fail(key, f"missing required field {key!r}")
        return super().get(key, kind, default)

    def line(self, key: str | None = None) -> int | None:
        found = None
        if not self.table:
            found = self._top_line(key)
        elif self.parent is None or self.parent.index is None:
            found = self.loc.line(self.table, self.index, key)
        if found is None and self.parent is not None:
            found = self.parent.line(self.key)
        return found

    def _top_line(self, key: str | None) -> int | None:
        if key is None:
            return None
        found = self.loc.line(key) or self.loc.line(key, 0)
        if found:
            return found
        assignment = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*[=.]")
        header = re.compile(rf"^\s*\[\[?\s*{re.escape(key)}\s*\.")
        for i, text in enumerate(self.loc.lines):
            if assignment.match(text) or header.match(text):
                return i + 1
        return None

    def child(self, key: str, required: bool = False) -> _Table:
        """The sub-table `key` (empty when absent and not required)."""
        data = self.get(key, dict) if required else self.get(key, dict, {})
        table = f"{self.table}.{key}" if self.table else key
        return _Table(
            self.file, self.loc, data, table, parent=self, key=key, base_dir=self.base_dir
        )

    def items(self, key: str) -> list[_Table]:
        """The elements of the array of tables `key` (`[[key]]`)."""
        elements = self.get(key, list, [])
        tables = []
        for i, element in enumerate(elements):
            if not isinstance(element, dict):
                raise self.fail(key, f"element {i} is not a table: {element!r}")
            tables.append(
                _Table(
                    self.file,
                    self.loc,
                    element,
                    key,
                    i,
                    parent=self,
                    key=key,
                    base_dir=self.base_dir,
                )
            )
        return tables

    def text(self, key: str, default: Any = ...) -> Any:
        """A non-empty string without surrounding whitespace."""
        value = self.get(key, str, default)
        if isinstance(value, str) and (not value.strip() or value != value.strip()):
            raise self.fail(key, f"{value!r}: expected non-empty text without outer spaces")
        return value

    def file_path(self, key: str, default: Any = ...) -> Any:
        """A path, relative ones resolved against the site file's folder."""
        value = self.text(key, default)
        if isinstance(value, str) and self.base_dir is not None:
            return str(self.base_dir / value)  # an absolute `value` replaces base_dir
        return value

    def duration(self, key: str, default: Any = ...) -> Any:
        """Seconds: a number, or text such as "90s", "15m", "1h30m", "7d"."""
        self.used.add(key)
        if key not in self.data:
            return self.get(key, (int, float, str), default)
        value = self.data[key]
        if isinstance(value, str):
            parts = _DURATION_PART.findall(value.replace(" ", ""))
            if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
                raise self.fail(key, f"{value!r}: expected seconds or e.g. '90s', '15m', '2h'")
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
        return self.number(key)

    def size(self, key: str, default: Any = ...) -> Any:
        """Bytes: an integer, or text such as "256MiB", "1GB", "512 kB"."""
        value = self.get(key, (int, str), default)
        if isinstance(value, str):
            match = _SIZE.fullmatch(value)
            if match is None:
                raise self.fail(key, f"{value!r}: expected bytes or e.g. '256MiB', '1GB'")
            unit = (match.group(2) or "b").lower()
            return round(float(match.group(1)) * _SIZE_UNITS[unit])
        return value


_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?B|B)?\s*")
_SIZE_UNITS: Final = {"b": 1} | {
    f"{p}{i}b": (1024 if i else 1000) ** n for n, p in enumerate("kmgt", start=1) for i in ("", "i")
}
_METER_ID: Final = re.compile(r"[^\s\x00-\x1f\x7f]{1,64}")
_CLIENT_ID: Final = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")

# Limits of numeric settings read from the model's fields (inclusive; None: unbounded).
# Every other number must be >= 0: no setting here is a negative count, size or time.
_LIMITS: Final[Mapping[str, tuple[float, float | None]]] = {
    "batch_max_readings": (1, MAX_READINGS_PER_BATCH),  # ingest refuses bigger batches
    "batch_max_age_s": (0.001, None),
    "max_inflight_batches": (1, 65535),  # QoS 1 packet ids
    "ack_timeout_s": (0.001, None),
    "backfill_rate": (0.001, None),
    "status_interval_s": (0.001, None),
    "session_expiry_s": (0, 0xFFFFFFFF),  # MQTT 5: four bytes; the maximum never expires
    "keepalive_s": (0, 65535),
    "budget_bytes": (1, None),
    "thin_keep_s": (1, None),
    "timeout_s": (0.001, None),
    "retries": (0, 10),
    "backoff_max_s": (0.001, None),
}


def _fields(
    t: _Table, cls: type, *, skip: frozenset[str] = frozenset(), keys: Mapping[str, str] = {}
) -> dict[str, Any]:
    """Keyword arguments for the dataclass `cls` from table `t`: one key per field (named as
    the field, or as `keys` says), typed by the field's annotation. Reading the model's own
    fields means a setting added to it is configurable the day it appears.

    Durations (`*_s`) take "15m" as well as seconds, sizes (`*_bytes`) "256MiB", and text
    fields named `*_file` or `path` are paths relative to the site file."""
    hints = get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        key = keys.get(f.name, f.name)
        if key not in t.data:
            t.used.add(key)
            if f.default is MISSING and f.default_factory is MISSING:
                raise t.fail(key, f"missing required field {key!r}")
            continue
        out[f.name] = _typed(t, key, f.name, hints[f.name])
    return out


def _typed(t: _Table, key: str, name: str, hint: Any) -> Any:
    options = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (Union, UnionType) and len(options) == 1:
        hint = options[0]  # TOML has no null: an absent key keeps the default
    if get_origin(hint) is Literal:
        return t.choice(key, get_args(hint))
    if hint is bool:
        return t.get(key, bool)
    if hint is str:
        return t.file_path(key) if name == "path" or name.endswith("_file") else t.text(key)
    if hint in (int, float):
        if name.endswith("_s"):
            value = t.duration(key)
        elif name.endswith("_bytes"):
            value = t.size(key)
        else:
            value = t.get(key, int) if hint is int else t.number(key)
        low, high = _LIMITS.get(name, (0, None))
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"within {low}..{high}"
            raise t.fail(key, f"{value!r} is not {bound}")
        if hint is int:
            if value != int(value):
                raise t.fail(key, f"{value!r} is not a whole number")
            return int(value)
        return float(value)
    raise t.fail(key, f"cannot be set from a site file ({hint})")  # a model type to support


def _endpoint(
    t: _Table, key: str, env: str, default: tuple[str, TlsConfig | None] | None = None
) -> tuple[str, TlsConfig | None]:
    """A broker URL and its TLS from `t` (`key` and the `tls` sub-table), checked against R25:
    with env = "prod" no plaintext beyond loopback, no TLS without a pinned CA, no insecure."""
    if key not in t.data and "tls" not in t.data and default is not None:
        t.used.update((key, "tls"))
        return default
    url: str = t.text(key)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise t.fail(key, f"{url!r}: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise t.fail(key, f"{url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    if port == 0 or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise t.fail(key, f"{url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    has_tls = "tls" in t.data
    tr = t.child("tls")
    if parts.scheme == "mqtt":
        if has_tls:
            raise tr.fail(None, f"TLS settings with the plaintext URL {url!r}: use mqtts://")
        if env == "prod" and not _is_loopback(parts.hostname):
            raise t.fail(key, f"{url!r}: plaintext MQTT is refused when env = 'prod' (R25): "
                         "credentials and readings would cross the network readable and "
                         "alterable; use mqtts:// with [tls] ca_file")  # fmt: skip
        return url, None
    kwargs = _fields(tr, TlsConfig, skip=frozenset({"min_version"}))
    version = tr.get("min_version", (str, float), "1.2")
    version = version if isinstance(version, str) else f"{version:.1f}"
    if version in ("1.0", "1.1"):
        raise tr.fail("min_version", f"TLS {version} is refused (R25: at least 1.2): "
                      "older versions have known attacks and no modern cipher suites")  # fmt: skip
    if version not in ("1.2", "1.3"):
        raise tr.fail("min_version", f"{version!r} is not one of 1.2, 1.3")
    tls = TlsConfig(**kwargs, min_version=version)  # type: ignore[arg-type]  # checked above
    tr.done()
    if (tls.cert_file is None) != (tls.key_file is None):
        missing = "key_file" if tls.key_file is None else "cert_file"
        raise tr.fail(missing, "a client certificate needs both cert_file and key_file")
    if env == "prod" and tls.insecure:
        why = "it skips the broker's certificate name check: anyone on the path can pose as it"
        raise tr.fail("insecure", f"refused when env = 'prod' (R25): {why}")
    if env == "prod" and tls.ca_file is None:
        why = "pin the CA that signed the broker's certificate, not every CA the system trusts"
        raise tr.fail("ca_file", f"required when env = 'prod' (R25): {why}")
    return url, tls


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _forward(top: _Table, env: str, gateway_id: str) -> ForwardConfig:
    fr = top.child("forward", required=True)
    url, tls = _endpoint(fr, "mqtt_url", env)
    client_id = fr.get("client_id", str, f"gw-{gateway_id}")
    if not _CLIENT_ID.fullmatch(client_id):
        raise fr.fail("client_id", f"{client_id!r}: 1..128 characters, no spaces")
    kwargs = _fields(fr, ForwardConfig, skip=frozenset({"mqtt_url", "client_id", "tls"}))
    fr.done()
    return ForwardConfig(mqtt_url=url, client_id=client_id, tls=tls, **kwargs)


def _mqtt_input(top: _Table, env: str, forward: ForwardConfig) -> InputBroker | None:
    if "mqtt_input" not in top.data:
        top.used.add("mqtt_input")
        return None
    ir = top.child("mqtt_input")
    url, tls = _endpoint(ir, "url", env, default=(forward.mqtt_url, forward.tls))
    client_id = ir.get("client_id", str, f"{forward.client_id}-in")
    if not _CLIENT_ID.fullmatch(client_id):
        raise ir.fail("client_id", f"{client_id!r}: 1..128 characters, no spaces")
    if client_id == forward.client_id and url == forward.mqtt_url:
        raise ir.fail("client_id", "equals the forwarder's: the broker would drop one session")
    mqtt5 = ir.get("mqtt5", bool, forward.mqtt5)
    ir.done()
    return InputBroker(url, client_id, mqtt5, tls)


def _outbox(top: _Table) -> OutboxConfig:
    orr = top.child("outbox", required=True)
    keys = {"budget_bytes": "budget", "thin_keep_s": "thin_keep"}
    kwargs = _fields(orr, OutboxConfig, keys=keys)
    orr.done()
    return OutboxConfig(**kwargs)


_SERIAL_OPTIONS: Final[Mapping[str, tuple[Any, ...]]] = {
    "baud": (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200),
    "parity": ("N", "E", "O"),
    "stop_bits": (1, 2),
    "data_bits": (7, 8),
}


def _bus(br: _Table, seen: Mapping[str, Bus]) -> tuple[Bus, dict[str, Any]]:
    """A bus, with its serial settings still to complete from its devices' profiles."""
    name = br.text("name")
    if name in seen:
        raise br.fail("name", f"duplicate bus name {name!r}")
    transport = br.choice("transport", ("tcp", "rtu", "rtu-over-tcp"))
    kwargs = _fields(
        br,
        Bus,
        skip=frozenset({"name", "transport", "host", "port", "serial"}),
        keys={"timeout_s": "timeout", "backoff_max_s": "backoff_max"},
    )
    serial: dict[str, Any] = {}
    if transport == "rtu":
        for key in ("host", "port"):
            if key in br.data:
                raise br.fail(key, "a local serial bus (rtu) has no host or port; use path")
        serial["path"] = br.text("path")  # a device name ("/dev/ttyUSB0", "COM3"), as given
        for key, options in _SERIAL_OPTIONS.items():
            serial[key] = br.choice(key, options) if key in br.data else None
        host, port = None, None
    else:
        for key in ("path", *_SERIAL_OPTIONS):
            if key in br.data:
                raise br.fail(key, f"{key} is for local serial buses (rtu); this is {transport}")
        host = br.text("host")
        default_port = 502 if transport == "tcp" else ...  # converters have no standard port
        port = br.get("port", int, default_port)
        if not 1 <= port <= 65535:
            raise br.fail("port", f"{port} is not within 1..65535")
    br.done()
    bus = Bus(name, transport, host, port, None, **kwargs)
    return bus, serial


def _serial_port(br: _Table, given: dict[str, Any], profiles: Sequence[Profile]) -> SerialPort:
    """Serial settings as given, the rest from the first device's profile (all its devices
    must agree on what is not given: one line has one baud rate)."""
    settings = dict(given)
    for key in _SERIAL_OPTIONS:
        if settings[key] is not None:
            continue
        if not profiles:
            raise br.fail(key, "no device on this bus to take serial defaults from: set it")
        values = {getattr(p.serial, key): p.id for p in profiles}
        if len(values) > 1:
            found = ", ".join(f"{p} {v}" for v, p in values.items())
            raise br.fail(key, f"the profiles of this bus's devices differ ({found}): set it")
        settings[key] = getattr(profiles[0].serial, key)
    return SerialPort(**settings)


def _profile(dr: _Table, cache: dict[str, Profile]) -> Profile:
    ref = dr.text("profile")
    builtin = builtin_profiles()
    if ref in builtin:
        return builtin[ref]
    if not (ref.endswith(".toml") or "/" in ref):
        known = ", ".join(sorted(builtin))
        raise dr.fail("profile", f"{ref!r} is neither a built-in profile ({known}) "
                      "nor a path to a profile .toml")  # fmt: skip
    path = str((dr.base_dir or Path()) / ref)
    if path not in cache:
        try:
            cache[path] = load_profile(path)
        except ProfileError as exc:
            raise dr.fail("profile", f"{ref!r} is not a usable profile: {exc}") from exc
    return cache[path]


def _device(dr: _Table, buses: Mapping[str, Bus], cache: dict[str, Profile]) -> Device:
    meter_id = _meter_id(dr)
    bus = dr.text("bus")
    if bus not in buses:
        known = ", ".join(buses) or "none"
        raise dr.fail("bus", f"no bus named {bus!r} (buses: {known})")
    profile = _profile(dr, cache)
    unit_id = dr.get("unit_id", int, profile.default_unit_id)
    if not 1 <= unit_id <= 247:
        raise dr.fail("unit_id", f"{unit_id} is not within 1..247")
    names = dr.get("channels", list, list(profile.channels))
    for name in names:
        if not isinstance(name, str) or name not in profile.channels:
            has = ", ".join(profile.channels)
            raise dr.fail("channels", f"{name!r} is not a channel of {profile.id} ({has})")
    if not names or len(set(names)) != len(names):
        raise dr.fail("channels", "list each channel once, at least one")
    channels = tuple(spec for name, spec in profile.channels.items() if name in names)
    pr = dr.child("poll")
    poll_groups = dict(profile.poll_groups)
    for group in pr.data:
        if group not in poll_groups:
            raise pr.fail(group, f"{profile.id} has no poll group {group!r} "
                          f"({', '.join(poll_groups)})")  # fmt: skip
        seconds = pr.duration(group)
        if not seconds > 0:
            raise pr.fail(group, "poll interval must be positive")
        poll_groups[group] = float(seconds)
    longest = max(spec.count for spec in channels)
    max_read = dr.get("max_registers_per_read", int, profile.max_registers_per_read)
    if not longest <= max_read <= profile.max_registers_per_read:
        raise dr.fail("max_registers_per_read", f"{max_read} is not within {longest}.."
                      f"{profile.max_registers_per_read} (longest channel..profile's)")  # fmt: skip
    dr.done()
    return Device(meter_id, bus, unit_id, profile, channels, poll_groups, max_read)


def _meter_id(r: _Table) -> str:
    meter_id: str = r.get("meter_id", str)
    if not _METER_ID.fullmatch(meter_id):
        raise r.fail("meter_id", f"{meter_id!r}: 1..64 characters, no spaces")
    return meter_id


def _mqtt_meter(mr: _Table) -> MqttMeter:
    meter_id = _meter_id(mr)
    topic = mr.text("topic")
    if any(c in topic for c in "+#\x00") or len(topic.encode()) > 65535:
        raise mr.fail("topic", f"{topic!r}: one meter's topic, without wildcards + or #")
    cr = mr.child("channels", required=True)
    channels: dict[str, str] = {}
    for channel in cr.data:
        if channel not in CHANNELS:
            raise cr.fail(channel, f"{channel!r} is not a channel of contracts.channels")
        channels[channel] = _json_path(cr, channel)
    if not channels:
        raise mr.fail("channels", "map at least one channel to a JSON path")
    ts_path = _json_path(mr, "ts_path", None)
    zone = mr.text("time_zone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise mr.fail("time_zone", f"{zone!r} is not an IANA time zone") from None
    mr.done()
    return MqttMeter(meter_id, topic, channels, ts_path, zone)


def _json_path(r: _Table, key: str, default: Any = ...) -> Any:
    path = r.get(key, str, default)
    if path is not None:
        try:
            parse_path(path)
        except ValueError as exc:
            raise r.fail(key, str(exc)) from None
    return path


def _gateway(top: _Table) -> tuple[str, Literal["dev", "prod"], int | None]:
    gr = top.child("gateway", required=True)
    gateway_id: str = gr.get("id", str)
    try:
        readings_topic(gateway_id)
    except ValueError as exc:
        raise gr.fail("id", str(exc)) from None
    env = gr.choice("env", ("dev", "prod"))
    metrics_port = gr.get("metrics_port", int, None)
    if metrics_port is not None and not 1 <= metrics_port <= 65535:
        raise gr.fail("metrics_port", f"{metrics_port} is not within 1..65535")
    gr.done()
    return gateway_id, env, metrics_port


def _devices(top: _Table, buses: Mapping[str, Bus], ids: set[str]) -> list[Device]:
    """The Modbus devices; adds their meter ids to `ids` (unique across the site)."""
    devices: list[Device] = []
    addresses: set[tuple[str, int]] = set()
    cache: dict[str, Profile] = {}  # one Profile per profile file, however many devices
    for dr in top.items("devices"):
        device = _device(dr, buses, cache)
        if device.meter_id in ids:
            raise dr.fail("meter_id", f"duplicate meter id {device.meter_id!r}")
        if (device.bus, device.unit_id) in addresses:
            raise dr.fail("unit_id", f"unit id {device.unit_id} is already used on bus "
                          f"{device.bus!r}")  # fmt: skip
        ids.add(device.meter_id)
        addresses.add((device.bus, device.unit_id))
        devices.append(device)
    return devices


_TABLES: Final = ("gateway", "forward", "mqtt_input", "outbox", "buses", "devices", "mqtt_meters")


def parse_site(text: str, file: str = "<site>", base_dir: str | Path | None = None) -> Site:
    """Validate a site file's TOML; raises `SiteError` naming the file, line and field.

    `base_dir` is the folder relative paths (outbox, TLS files, profile files) resolve
    against; `load_site` passes the site file's own folder.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise SiteError(file, int(match.group(1)) if match else None, "toml", str(exc)) from exc
    base = Path(base_dir) if base_dir is not None else None
    top = _Table(file, _Locator(text), data, "", base_dir=base)
    for key in data:  # a misspelt table is reported as such, before it is missed
        if key not in _TABLES:
            raise top.fail(key, f"unknown table {key!r} (tables: {', '.join(_TABLES)})")

    gateway_id, env, metrics_port = _gateway(top)
    forward = _forward(top, env, gateway_id)
    mqtt_input = _mqtt_input(top, env, forward)
    outbox = _outbox(top)

    buses: dict[str, Bus] = {}
    serial: dict[str, tuple[_Table, dict[str, Any]]] = {}
    for br in top.items("buses"):
        bus, given = _bus(br, buses)
        buses[bus.name] = bus
        if bus.transport == "rtu":
            serial[bus.name] = (br, given)

    ids: set[str] = set()
    devices = _devices(top, buses, ids)
    for name, (br, given) in serial.items():
        port = _serial_port(br, given, [d.profile for d in devices if d.bus == name])
        buses[name] = replace(buses[name], serial=port)

    mqtt_meters: list[MqttMeter] = []
    for mr in top.items("mqtt_meters"):
        meter = _mqtt_meter(mr)
        if meter.meter_id in ids:
            raise mr.fail("meter_id", f"duplicate meter id {meter.meter_id!r}")
        ids.add(meter.meter_id)
        mqtt_meters.append(meter)
    top.done()

    return Site(
        gateway_id=gateway_id,
        env=env,
        buses=buses,
        devices=tuple(devices),
        mqtt_meters=tuple(mqtt_meters),
        outbox=outbox,
        forward=forward,
        metrics_port=metrics_port,
        mqtt_input=mqtt_input,
        source=file,
    )


def load_site(path: str | Path) -> Site:
    """Read and validate a site file; relative paths in it are relative to its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteError(str(path), None, "file", str(exc)) from exc
    return parse_site(text, str(path), base_dir=path.resolve().parent)
