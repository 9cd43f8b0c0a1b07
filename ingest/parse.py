"""From one MQTT message to what ingest writes: rows, dead letters and the ack to send.

Pure: no I/O. The registry (gateway and meter codes → ids and projects) and the receiver's
clock come in as values, so every rule here is testable in microseconds, and any bytes on any
topic end as rows or dead letters, never as an exception.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from contracts.topics import parse_topic
from contracts.wire import (
    DEFAULT_BOUNDS,
    SCHEMA_VERSION,
    Ack,
    Batch,
    Bounds,
    ContractError,
    Reading,
    Reason,
    Rejected,
    decode_batch,
)
from ingest.mappings import MeterMapping, map_message

DEFAULT_SKEW_LIMIT: Final = dt.timedelta(minutes=10)

# A reading as COPY writes it into the staging table, in `STAGING_COLUMNS` order. Readings
# from self-publishing meters (ingest.mappings) have no gateway, boot or seq.
Row = tuple[int, str, dt.datetime, float | None, str, str, int | None, uuid.UUID | None, int | None]
STAGING_COLUMNS: Final = (
    "meter_id", "channel", "ts", "value", "quality", "source", "gateway_id", "boot_id", "seq",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class GatewayEntry:
    id: int
    project_id: int


@dataclass(frozen=True, slots=True)
class MeterEntry:
    id: int
    project_id: int


@dataclass(frozen=True, slots=True)
class Registry:
    """Codes on the wire → ids in the store, with each one's project."""

    gateways: Mapping[str, GatewayEntry]
    meters: Mapping[str, MeterEntry]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something refused, kept whole with why, enough to replay it once the cause is fixed."""

    topic: str
    gateway_code: str | None
    reason: Reason
    detail: str
    payload: bytes
    scope: str  # "batch" or "reading"
    boot_id: uuid.UUID | None = None
    seq: int | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


@dataclass(frozen=True, slots=True)
class Parsed:
    """The outcome for one message."""

    topic: str
    gateway_code: str | None
    gateway_id: int | None = None
    rows: list[Row] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    ack: Ack | None = None  # None when the sender cannot be identified
    skew: dt.timedelta | None = None  # receiver clock minus the gateway's `sent_at`
    seq_first: int | None = None
    seq_last: int | None = None


class _Envelope(msgspec.Struct):
    """What is needed to ack a refused batch, read as leniently as possible."""

    boot_id: uuid.UUID | None = None
    seq_first: int | None = None
    seq_last: int | None = None


class _SeqProbe(msgspec.Struct):
    seq: int | None = None


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_seq_decoder: Final = msgspec.json.Decoder(_SeqProbe)
_encoder: Final = msgspec.json.Encoder()


def parse(
    topic: str,
    payload: bytes,
    *,
    registry: Registry,
    now: dt.datetime,
    bounds: Bounds = DEFAULT_BOUNDS,
    skew_limit: dt.timedelta = DEFAULT_SKEW_LIMIT,
) -> Parsed:
    """Classify one message. Never raises for any topic or payload."""
    try:
        parsed_topic = parse_topic(topic)
    except ContractError as exc:
        return Parsed(topic, None, dead=[_whole(topic, None, exc.reason, exc.detail, payload)])
    code = parsed_topic.gateway_id
    if parsed_topic.kind not in ("readings", "backfill"):
        detail = f"gateways publish readings on readings/backfill, not {parsed_topic.kind}"
        return Parsed(
            topic, code, dead=[_whole(topic, code, Reason.UNKNOWN_TOPIC, detail, payload)]
        )
    try:
        decoded = decode_batch(payload, topic_gateway_id=code, now=now, bounds=bounds)
    except ContractError as exc:
        return _refuse(topic, code, exc.reason, exc.detail, payload)
    batch = decoded.batch
    expected_kind = "live" if parsed_topic.kind == "readings" else "backfill"
    if batch.kind != expected_kind:
        detail = f"kind {batch.kind!r} published on the {parsed_topic.kind} topic"
        return _refuse(topic, code, Reason.SCHEMA, detail, payload)
    gateway = registry.gateways.get(code)
    if gateway is None:
        return _refuse(topic, code, Reason.UNKNOWN_GATEWAY, f"gateway {code!r}", payload)

    skew = now - batch.sent_at
    suspect = abs(skew) > skew_limit
    dead = [_reading_dead(topic, batch, r) for r in decoded.rejected]
    rows: list[Row] = []
    meters = registry.meters
    project = gateway.project_id
    source = batch.kind
    boot = batch.boot_id
    gid = gateway.id
    for reading in batch.readings:
        meter = meters.get(reading.meter_id)
        if meter is None or meter.project_id != project:
            reason = Reason.UNKNOWN_METER if meter is None else Reason.METER_OTHER_PROJECT
            dead.append(_registry_dead(topic, batch, reading, reason))
            continue
        quality = reading.quality
        # A clock known to be off makes its timestamps suspect; null values keep the quality
        # that explains them.
        if suspect and reading.value is not None and quality == "good":
            quality = "clock_suspect"
        rows.append(
            (meter.id, reading.channel, reading.ts, reading.value, quality, source, gid, boot,
             reading.seq)
        )  # fmt: skip
    ack = Ack(
        v=SCHEMA_VERSION,
        boot_id=boot,
        from_seq=batch.seq_first,
        upto_seq=batch.seq_last,
        status="stored",
        accepted=len(rows),
        rejected=len(dead),
    )
    return Parsed(
        topic, code, gid, rows, dead, ack, skew, seq_first=batch.seq_first, seq_last=batch.seq_last
    )


def _whole(topic: str, code: str | None, reason: Reason, detail: str, payload: bytes) -> DeadLetter:
    return DeadLetter(topic, code, reason, detail, payload, scope="batch")


def _refuse(topic: str, code: str, reason: Reason, detail: str, payload: bytes) -> Parsed:
    """A whole batch refused: dead-letter it, and ack it if the sender can be identified, so a
    gateway does not resend the same poison forever."""
    dead = DeadLetter(topic, code, reason, detail, payload, scope="batch")
    try:
        envelope = _envelope_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError):
        envelope = _Envelope()
    ack = None
    first, last = envelope.seq_first, envelope.seq_last
    if envelope.boot_id and first is not None and last is not None and 0 <= first <= last:
        dead = DeadLetter(topic, code, reason, detail, payload, "batch", envelope.boot_id, first)
        ack = Ack(
            v=SCHEMA_VERSION,
            boot_id=envelope.boot_id,
            from_seq=first,
            upto_seq=last,
            status="dead_letter",
            reason=str(reason),
        )
    return Parsed(topic, code, dead=[dead], ack=ack)


def _single_reading_batch(batch: Batch, reading_json: bytes, seq: int) -> bytes:
    """A refused reading wrapped in its batch's envelope, so a replay is a normal batch."""
    head = _encoder.encode(
        {
            "v": batch.v,
            "gateway_id": batch.gateway_id,
            "boot_id": batch.boot_id,
            "kind": batch.kind,
            "sent_at": batch.sent_at,
            "seq_first": seq,
            "seq_last": seq,
        }
    )
    return head[:-1] + b',"readings":[' + reading_json + b"]}"


def _reading_dead(topic: str, batch: Batch, rejected: Rejected) -> DeadLetter:
    try:
        probed = _seq_decoder.decode(rejected.reading).seq
    except (msgspec.ValidationError, msgspec.DecodeError):
        probed = None
    seq = probed if probed is not None and probed >= 0 else -1
    payload = _single_reading_batch(batch, rejected.reading, max(seq, 0))
    return DeadLetter(
        topic,
        batch.gateway_id,
        rejected.reason,
        f"reading {rejected.index}: {rejected.detail}",
        payload,
        scope="reading",
        boot_id=batch.boot_id,
        seq=seq if seq >= 0 else None,
    )


def _registry_dead(topic: str, batch: Batch, reading: Reading, reason: Reason) -> DeadLetter:
    payload = _single_reading_batch(batch, _encoder.encode(reading), reading.seq)
    return DeadLetter(
        topic,
        batch.gateway_id,
        reason,
        f"meter {reading.meter_id!r}",
        payload,
        scope="reading",
        boot_id=batch.boot_id,
        seq=reading.seq,
    )


def parse_mapped(
    mapping: MeterMapping,
    topic: str,
    payload: bytes,
    *,
    registry: Registry,
    now: dt.datetime,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> Parsed:
    """A message of a self-publishing meter (see ingest.mappings): rows and dead letters, no
    ack (such meters do not take one)."""
    mapped = map_message(mapping, topic, payload)
    dead = [
        DeadLetter(topic, None, reason, f"{mapping.name}: {detail}", payload, scope="batch")
        for reason, detail in mapped.refused
    ]
    rows: list[Row] = []
    latest, earliest = now + bounds.max_future, bounds.earliest
    for reading in mapped.readings:
        meter = registry.meters.get(reading.meter_id)
        if meter is None:
            dead.append(
                DeadLetter(topic, None, Reason.UNKNOWN_METER, f"{mapping.name}: meter"
                           f" {reading.meter_id!r}", payload, scope="reading")
            )  # fmt: skip
            continue
        if not earliest <= reading.ts <= latest:
            reason = Reason.TS_FUTURE if reading.ts > latest else Reason.TS_TOO_OLD
            dead.append(
                DeadLetter(topic, None, reason, f"{mapping.name}: ts {reading.ts.isoformat()}",
                           payload, scope="reading")
            )  # fmt: skip
            continue
        rows.append(
            (meter.id, reading.channel, reading.ts, reading.value, "good", "live", None, None, None)
        )
    return Parsed(topic, None, rows=rows, dead=dead)
