"""What travels between a gateway and ingest: readings, the batch envelope and the ack.

msgspec decodes and type-checks a whole batch in C (the ingest hot path); the few rules a
type cannot express (unit matches channel, value present unless the meter did not answer,
sequence order, timestamp plausibility) are checked in one pass in `check_readings`. A batch
whose envelope is unreadable is refused whole; a bad reading is refused alone.
`bench/contract_decode.py` measured the alternatives; see bench/RESULTS.md.

Example of one batch on the wire (`v1/gw/gw-0001/readings`):

    {"v": 1, "gateway_id": "gw-0001", "boot_id": "4f0c...", "kind": "live",
     "sent_at": "2026-03-01T08:00:05Z", "seq_first": 7, "seq_last": 8,
     "readings": [
       {"meter_id": "P001-E-0042", "channel": "energy_import_kwh",
        "ts": "2026-03-01T08:00:00Z", "value": 1234.56, "unit": "kWh", "seq": 7},
       {"meter_id": "P001-E-0042", "channel": "power_w",
        "ts": "2026-03-01T08:00:00Z", "value": null, "unit": "W", "seq": 8,
        "quality": "comm_error"}]}
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal

import msgspec

from contracts.channels import UNITS, ChannelName

SCHEMA_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
MAX_READINGS_PER_BATCH: Final = 20_000
# A value beyond this magnitude is a decoding fault, not a measurement (and JSON numbers like
# 1e400 decode to infinity).
MAX_ABS_VALUE: Final = 1e15
MAX_FUTURE: Final = dt.timedelta(days=1)
EARLIEST_TS: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

Quality = Literal[
    "good",  # read and decoded as expected
    "uncertain",  # plausible but flagged by the device or a rule
    "bad",  # known wrong (kept for the record, never used for consumption)
    "nan_sentinel",  # the device answered with its "not available" value; value is null
    "comm_error",  # the device did not answer (timeout, exception); value is null
    "clock_suspect",  # timestamp from a clock known to be off
    "out_of_range",  # outside the profile's plausible range
]
NULL_VALUE_QUALITIES: Final = frozenset({"nan_sentinel", "comm_error"})

# Only the length is checked here: a per-reading regex would halve decode throughput, and
# ingest resolves every meter id against the registry anyway (unknown ones are dead-lettered).
MeterId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
GatewayId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
AwareDatetime = Annotated[dt.datetime, msgspec.Meta(tz=True)]


class Reading(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, gc=False
):
    """One value of one channel of one meter at one instant.

    `seq` numbers the gateway's readings within one boot (its outbox order); together with
    the gateway and boot id it lets ingest account for every reading.
    """

    meter_id: MeterId
    channel: ChannelName
    ts: AwareDatetime
    value: float | None
    unit: str
    seq: Seq
    quality: Quality = "good"
    raw: tuple[int, ...] | None = None  # the register words as read, for audit

    @property
    def idempotency_key(self) -> tuple[str, str, dt.datetime]:
        return (self.meter_id, self.channel, self.ts)


class _Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The fields of a batch around its readings."""

    v: int
    gateway_id: GatewayId
    boot_id: uuid.UUID
    kind: Literal["live", "backfill"]
    sent_at: AwareDatetime
    seq_first: Seq
    seq_last: Seq


class Batch(_Envelope, frozen=True, forbid_unknown_fields=True):
    """A gateway's publication: consecutive outbox readings of one boot."""

    readings: list[Reading]


class Ack(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ingest's answer, published only after the batch is durable (COMMIT) or dead-lettered.

    Every reading of `boot_id` with `from_seq <= seq <= upto_seq` is settled: `accepted`
    readings are durable in the store (newly, or already from an earlier delivery), `rejected`
    ones are kept in the dead-letter table. `status` is `dead_letter` when the whole batch was
    refused, with its `reason`. The gateway deletes those outbox rows and nothing else.
    """

    v: int
    boot_id: uuid.UUID
    from_seq: Seq
    upto_seq: Seq
    status: Literal["stored", "dead_letter"]
    accepted: int = 0
    rejected: int = 0
    reason: str | None = None


class Reason(StrEnum):
    """Why a payload went to the dead-letter table instead of the store."""

    INVALID_JSON = "invalid_json"
    TOO_LARGE = "too_large"
    SCHEMA_VERSION = "schema_version"
    SCHEMA = "schema"
    UNKNOWN_TOPIC = "unknown_topic"
    GATEWAY_MISMATCH = "gateway_mismatch"
    EMPTY_BATCH = "empty_batch"
    TOO_MANY_READINGS = "too_many_readings"
    UNIT_MISMATCH = "unit_mismatch"
    MISSING_VALUE = "missing_value"
    NON_FINITE = "non_finite"
    SEQ_ORDER = "seq_order"
    SEQ_RANGE = "seq_range"
    TS_FUTURE = "ts_future"
    TS_TOO_OLD = "ts_too_old"
    # Decided by ingest against the registry, not by the contract alone.
    UNKNOWN_GATEWAY = "unknown_gateway"
    UNKNOWN_METER = "unknown_meter"
    METER_OTHER_PROJECT = "meter_other_project"


class ContractError(ValueError):
    """A payload that breaks the contract, with the reason code it is dead-lettered under."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _VersionProbe(msgspec.Struct):
    v: object = None


class _LenientBatch(_Envelope, frozen=True, forbid_unknown_fields=True):
    """The envelope typed, each reading left raw: the slow path after a typing failure."""

    readings: list[msgspec.Raw]


@dataclass(frozen=True, slots=True)
class Rejected:
    """One reading refused while the rest of its batch is accepted."""

    index: int  # position in the batch as published
    reason: Reason
    detail: str
    reading: bytes  # the reading's JSON, enough to replay it


@dataclass(frozen=True, slots=True)
class Decoded:
    """A readable batch: `batch.readings` holds the accepted readings, in order."""

    batch: Batch
    rejected: tuple[Rejected, ...] = ()


@dataclass(frozen=True, slots=True)
class Bounds:
    """How far a reading's timestamp may stray from the receiver's clock."""

    max_future: dt.timedelta = MAX_FUTURE
    earliest: dt.datetime = EARLIEST_TS


DEFAULT_BOUNDS: Final = Bounds()
_batch_decoder: Final = msgspec.json.Decoder(Batch)
_lenient_decoder: Final = msgspec.json.Decoder(_LenientBatch)
_reading_decoder: Final = msgspec.json.Decoder(Reading)
_probe_decoder: Final = msgspec.json.Decoder(_VersionProbe)
_encoder: Final = msgspec.json.Encoder()
_ack_decoder: Final = msgspec.json.Decoder(Ack)


def decode_batch(
    payload: bytes, *, topic_gateway_id: str, now: dt.datetime, bounds: Bounds = DEFAULT_BOUNDS
) -> Decoded:
    """Decode and validate a batch published under `topic_gateway_id`.

    A batch that cannot be read as a whole (not JSON, wrong version, bad envelope, sequence
    disorder, wrong gateway) raises `ContractError` with its dead-letter reason. A readable
    batch returns its good readings plus the bad ones as `Rejected`: one bad reading never
    poisons the others. Raises nothing but `ContractError`.

    >>> decode_batch(b'{"v": 2}', topic_gateway_id="gw-1", now=EARLIEST_TS)
    Traceback (most recent call last):
    ...
    contracts.wire.ContractError: schema_version: schema version 2 is not supported (expected 1)
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError(
            Reason.TOO_LARGE, f"{len(payload)} bytes > limit of {MAX_PAYLOAD_BYTES}"
        )
    try:
        batch = _batch_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        # Fast path failed: find out whether the envelope or some readings are at fault.
        return _decode_slow(payload, exc, topic_gateway_id, now, bounds)
    except msgspec.DecodeError as exc:
        raise ContractError(Reason.INVALID_JSON, str(exc)) from None
    _check_envelope(batch.v, batch.gateway_id, len(batch.readings), topic_gateway_id)
    readings = batch.readings
    if readings[0].seq != batch.seq_first or readings[-1].seq != batch.seq_last:
        raise ContractError(
            Reason.SEQ_RANGE,
            f"envelope says seq {batch.seq_first}..{batch.seq_last}, readings run"
            f" {readings[0].seq}..{readings[-1].seq}",
        )
    bad = check_readings(readings, now, bounds)
    if not bad:
        return Decoded(batch)
    rejected = tuple(
        Rejected(index, reason, detail, _encoder.encode(readings[index]))
        for index, reason, detail in bad
    )
    skip = {r.index for r in rejected}
    good = [r for i, r in enumerate(readings) if i not in skip]
    return Decoded(msgspec.structs.replace(batch, readings=good), rejected)


def _version_message(version: object) -> str:
    return f"schema version {version!r} is not supported (expected {SCHEMA_VERSION})"


def _schema_reason(exc: msgspec.ValidationError) -> Reason:
    # msgspec refuses JSON numbers beyond float range (1e400) with this message; it has no
    # error subtype for it, so the text is the only way to give the precise reason.
    return Reason.NON_FINITE if str(exc).startswith("Number out of range") else Reason.SCHEMA


def _check_envelope(version: int, gateway_id: str, count: int, topic_gateway_id: str) -> None:
    if version != SCHEMA_VERSION:
        raise ContractError(Reason.SCHEMA_VERSION, _version_message(version))
    if gateway_id != topic_gateway_id:
        raise ContractError(
            Reason.GATEWAY_MISMATCH,
            f"payload gateway_id {gateway_id!r} published on {topic_gateway_id!r}'s topic",
        )
    if count == 0:
        raise ContractError(Reason.EMPTY_BATCH, "a batch carries at least one reading")
    if count > MAX_READINGS_PER_BATCH:
        raise ContractError(
            Reason.TOO_MANY_READINGS, f"{count} > limit of {MAX_READINGS_PER_BATCH}"
        )


def _decode_slow(
    payload: bytes,
    first_error: msgspec.ValidationError,
    topic_gateway_id: str,
    now: dt.datetime,
    bounds: Bounds,
) -> Decoded:
    try:
        lenient = _lenient_decoder.decode(payload)
    except msgspec.ValidationError:
        try:
            version = _probe_decoder.decode(payload).v
        except (msgspec.ValidationError, msgspec.DecodeError):
            version = None
        if version is not None and version != SCHEMA_VERSION:
            raise ContractError(Reason.SCHEMA_VERSION, _version_message(version)) from None
        raise ContractError(_schema_reason(first_error), str(first_error)) from None
    _check_envelope(lenient.v, lenient.gateway_id, len(lenient.readings), topic_gateway_id)
    typed: list[Reading] = []
    positions: list[int] = []
    rejected: list[Rejected] = []
    for index, raw in enumerate(lenient.readings):
        try:
            typed.append(_reading_decoder.decode(raw))
            positions.append(index)
        except msgspec.ValidationError as exc:
            rejected.append(Rejected(index, _schema_reason(exc), str(exc), bytes(raw)))
    for local, reason, detail in check_readings(typed, now, bounds):
        index = positions[local]
        rejected.append(Rejected(index, reason, detail, bytes(lenient.readings[index])))
    skip = {r.index for r in rejected}
    good = [r for r, i in zip(typed, positions, strict=True) if i not in skip]
    batch = Batch(
        v=lenient.v,
        gateway_id=lenient.gateway_id,
        boot_id=lenient.boot_id,
        kind=lenient.kind,
        sent_at=lenient.sent_at,
        seq_first=lenient.seq_first,
        seq_last=lenient.seq_last,
        readings=good,
    )
    return Decoded(batch, tuple(sorted(rejected, key=lambda r: r.index)))


def check_readings(
    readings: list[Reading], now: dt.datetime, bounds: Bounds
) -> list[tuple[int, Reason, str]]:
    """The per-reading rules, in one pass; returns (index, reason, detail) of each failure.

    Sequence disorder is a batch-level fault (the gateway's outbox is broken) and raises.
    """
    latest = now + bounds.max_future
    earliest = bounds.earliest
    units = UNITS
    previous = -1
    bad: list[tuple[int, Reason, str]] = []
    for index, r in enumerate(readings):
        if r.seq <= previous:
            raise ContractError(Reason.SEQ_ORDER, f"reading {index}: seq {r.seq} after {previous}")
        previous = r.seq
        if units[r.channel] != r.unit:
            bad.append(
                (
                    index,
                    Reason.UNIT_MISMATCH,
                    f"{r.channel} is in {units[r.channel]}, not {r.unit!r}",
                )
            )
            continue
        value = r.value
        if value is None:
            if r.quality not in NULL_VALUE_QUALITIES:
                bad.append(
                    (index, Reason.MISSING_VALUE, f"value is null but quality is {r.quality!r}")
                )
                continue
        elif not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:  # also false for NaN
            bad.append((index, Reason.NON_FINITE, f"value {value!r}"))
            continue
        if not earliest <= r.ts <= latest:
            reason = Reason.TS_FUTURE if r.ts > latest else Reason.TS_TOO_OLD
            bad.append((index, reason, f"ts {r.ts.isoformat()}"))
    return bad


def encode(obj: Batch | Ack | Reading) -> bytes:
    """Compact JSON for any contract type."""
    return _encoder.encode(obj)


def decode_ack(payload: bytes) -> Ack:
    """Decode an ack; raises `ContractError` (reason schema / invalid_json)."""
    try:
        ack = _ack_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ContractError(Reason.SCHEMA, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ContractError(Reason.INVALID_JSON, str(exc)) from None
    if ack.v != SCHEMA_VERSION:
        raise ContractError(Reason.SCHEMA_VERSION, _version_message(ack.v))
    return ack
