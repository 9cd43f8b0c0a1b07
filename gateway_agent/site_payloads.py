"""Samples from the JSON that a site's MQTT-native meters publish (Tasmota plugs, weather
stations, anything with a JSON path per channel). Pure: bytes in, samples or a refusal out.

The meter's site entry (`site.MqttMeter`) names a JSON path per channel and where the
timestamp is; paths and timestamps are read as ingest reads them (`contracts.meter_json`).
A timestamp without an offset is the meter's local time (Tasmota), placed in its time zone;
epoch seconds or milliseconds are accepted; no `ts_path` stamps the message on arrival.

    >>> import datetime as dt
    >>> plug = MqttMeter("P001-PLUG-01", "tele/plug-01/SENSOR",
    ...                  {"energy_import_kwh": "ENERGY.Total", "power_w": "ENERGY.Power"},
    ...                  ts_path="Time", time_zone="Asia/Shanghai")
    >>> now = dt.datetime(2026, 3, 1, 4, 0, 5, tzinfo=dt.UTC)
    >>> out = extract(b'{"Time":"2026-03-01T12:00:00","ENERGY":{"Total":12.346,"Power":1200}}',
    ...               plug, now)
    >>> [(s.channel, s.value, s.unit) for s in out.samples]
    [('energy_import_kwh', 12.346, 'kWh'), ('power_w', 1200.0, 'W')]
    >>> out.samples[0].ts.isoformat()  # 12:00 in Shanghai
    '2026-03-01T04:00:00+00:00'

A value the meter left out is simply absent (it did not read it); a value that is not a
finite number is skipped with its reason. Details never quote the payload, so they may be
logged (payloads can carry personal data).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

from contracts.channels import UNITS
from contracts.meter_json import lookup, timestamp
from contracts.wire import EARLIEST_TS, MAX_ABS_VALUE, MAX_FUTURE, MAX_PAYLOAD_BYTES, Reason
from gateway_agent.sample import Sample
from gateway_agent.site import MqttMeter


@dataclass(frozen=True, slots=True)
class PayloadError:
    """A message that yields nothing: why (a dead-letter reason code) and a detail."""

    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A channel present in the message whose value could not be used."""

    channel: str
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Extracted:
    """The samples of one message, and the values left out with their reasons."""

    samples: list[Sample]
    skipped: list[Skipped]


def extract(payload: bytes, meter: MqttMeter, received_at: dt.datetime) -> Extracted | PayloadError:
    """The samples in one message of `meter`, received at `received_at` (aware).

    A message without a readable, plausible timestamp is refused whole: its values would be
    stored at the wrong instant, which is worse than not at all.
    """
    doc = _decode(payload)
    if isinstance(doc, PayloadError):
        return doc
    received = received_at.astimezone(dt.UTC)
    ts = received
    if meter.ts_path is not None:
        stamped = _timestamp(doc, meter, received)
        if isinstance(stamped, PayloadError):
            return stamped
        ts = stamped

    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for channel, path in meter.channels.items():
        try:
            value = lookup(doc, path)
        except KeyError:
            continue  # the meter left it out: it did not read it (Tasmota, our simulators)
        except ValueError:
            skipped.append(Skipped(channel, Reason.SCHEMA, f"malformed path {path!r}"))
            continue
        problem = _unusable(value)
        if problem is not None:
            skipped.append(Skipped(channel, problem, f"{path}: {_kind(value)}"))
            continue
        samples.append(Sample(meter.meter_id, channel, ts, float(value), UNITS[channel]))
    if not samples and not skipped:
        return PayloadError(Reason.SCHEMA, "none of the meter's channels is in the message")
    return Extracted(samples, skipped)


def _decode(payload: bytes) -> Any:
    """The JSON document, or a PayloadError (which no JSON document decodes to)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return PayloadError(Reason.TOO_LARGE, f"{len(payload)} bytes")
    try:
        return json.loads(payload)
    except UnicodeDecodeError:
        return PayloadError(Reason.INVALID_JSON, "not UTF-8")
    except json.JSONDecodeError as exc:
        return PayloadError(Reason.INVALID_JSON, f"{exc.msg} at byte {exc.pos}")
    except (ValueError, RecursionError):  # nesting deeper than the parser goes
        return PayloadError(Reason.INVALID_JSON, "unreadable JSON")


def _timestamp(doc: Any, meter: MqttMeter, received: dt.datetime) -> dt.datetime | PayloadError:
    path = meter.ts_path
    assert path is not None
    try:
        raw = lookup(doc, path)
    except (KeyError, ValueError):
        return PayloadError(Reason.SCHEMA, f"no timestamp at {path!r}")
    try:
        ts = timestamp(raw, meter.time_zone, near=received)
    except (ValueError, TypeError, OverflowError):
        return PayloadError(Reason.SCHEMA, f"timestamp at {path!r} ({_kind(raw)}) is unreadable")
    if ts < EARLIEST_TS:  # e.g. a Tasmota plug before its first NTP sync sends 1970
        return PayloadError(Reason.TS_TOO_OLD, f"timestamp at {path!r} is before {EARLIEST_TS}")
    if ts > received + MAX_FUTURE:
        return PayloadError(Reason.TS_FUTURE, f"timestamp at {path!r} is over {MAX_FUTURE} ahead")
    return ts


def _unusable(value: Any) -> Reason | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Reason.SCHEMA
    if isinstance(value, float) and not math.isfinite(value):
        return Reason.NON_FINITE
    if abs(value) > MAX_ABS_VALUE:  # beyond any measurement: a fault, as ingest judges it
        return Reason.NON_FINITE
    return None


def _kind(value: Any) -> str:
    """What a JSON value is, without quoting it."""
    if isinstance(value, float) and not math.isfinite(value):
        return "non-finite number"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "number out of range"
    return {str: "text", list: "array", dict: "object", type(None): "null"}.get(
        type(value), type(value).__name__
    )
