"""What travels between a gateway and ingest: readings, the batch envelope and the ack.

msgspec decodes and type-checks a whole batch in C (the ingest hot path); the few rules a
type cannot express (unit matches channel, value present unless the meter did not answer,
sequence order, timestamp plausibility) are checked in one pass in `validate_batch`.
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


class Batch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A gateway's publication: consecutive outbox readings of one boot."""

    v: int
    gateway_id: GatewayId
    boot_id: uuid.UUID
    kind: Literal["live", "backfill"]
    sent_at: AwareDatetime
    seq_first: Seq
    seq_last: Seq
    readings: list[Reading]


class Ack(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ingest's answer, published only after the batch is durable (COMMIT) or dead-lettered.

    Every reading of `boot_id` with `from_seq <= seq <= upto_seq` is settled: stored, already
    stored (duplicates), or kept in the dead-letter table with `reason`. The gateway deletes
    those outbox rows and nothing else.
    """

    v: int
    boot_id: uuid.UUID
    from_seq: Seq
    upto_seq: Seq
    status: Literal["stored", "dead_letter"]
    stored: int = 0
    duplicates: int = 0
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
    # Decided by ingest against the meter registry, not by the contract alone.
    UNKNOWN_METER = "unknown_meter"
    METER_NOT_ON_GATEWAY = "meter_not_on_gateway"


class ContractError(ValueError):
    """A payload that breaks the contract, with the reason code it is dead-lettered under."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _VersionProbe(msgspec.Struct):
    v: object = None


_batch_decoder: Final = msgspec.json.Decoder(Batch)
_probe_decoder: Final = msgspec.json.Decoder(_VersionProbe)
_encoder: Final = msgspec.json.Encoder()
_ack_decoder: Final = msgspec.json.Decoder(Ack)


def decode_batch(payload: bytes, *, topic_gateway_id: str, now: dt.datetime) -> Batch:
    """Decode and fully validate a batch published under `topic_gateway_id`.

    Raises `ContractError` with the dead-letter reason; never anything else.

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
        raise _classify_schema_error(payload, exc) from None
    except msgspec.DecodeError as exc:
        raise ContractError(Reason.INVALID_JSON, str(exc)) from None
    if batch.v != SCHEMA_VERSION:
        raise ContractError(Reason.SCHEMA_VERSION, _version_message(batch.v))
    validate_batch(batch, topic_gateway_id=topic_gateway_id, now=now)
    return batch


def _version_message(version: object) -> str:
    return f"schema version {version!r} is not supported (expected {SCHEMA_VERSION})"


def _classify_schema_error(payload: bytes, exc: msgspec.ValidationError) -> ContractError:
    """A batch of another schema version fails typing for that reason, not a field's."""
    try:
        version = _probe_decoder.decode(payload).v
    except (msgspec.ValidationError, msgspec.DecodeError):
        version = None
    if version is not None and version != SCHEMA_VERSION:
        return ContractError(Reason.SCHEMA_VERSION, _version_message(version))
    # msgspec refuses JSON numbers beyond float range (1e400) with this message; it has no
    # error subtype for it, so the text is the only way to give the precise reason.
    if str(exc).startswith("Number out of range"):
        return ContractError(Reason.NON_FINITE, str(exc))
    return ContractError(Reason.SCHEMA, str(exc))


def validate_batch(batch: Batch, *, topic_gateway_id: str, now: dt.datetime) -> None:
    """The rules beyond typing, in one pass over the readings. Raises `ContractError`."""
    if batch.gateway_id != topic_gateway_id:
        raise ContractError(
            Reason.GATEWAY_MISMATCH,
            f"payload gateway_id {batch.gateway_id!r} published on {topic_gateway_id!r}'s topic",
        )
    readings = batch.readings
    if not readings:
        raise ContractError(Reason.EMPTY_BATCH, "a batch carries at least one reading")
    if len(readings) > MAX_READINGS_PER_BATCH:
        raise ContractError(
            Reason.TOO_MANY_READINGS, f"{len(readings)} > limit of {MAX_READINGS_PER_BATCH}"
        )
    if readings[0].seq != batch.seq_first or readings[-1].seq != batch.seq_last:
        raise ContractError(
            Reason.SEQ_RANGE,
            f"envelope says seq {batch.seq_first}..{batch.seq_last}, readings run"
            f" {readings[0].seq}..{readings[-1].seq}",
        )
    latest = now + MAX_FUTURE
    units = UNITS
    previous = -1
    # One loop, cheapest checks first; the index is only needed to report a failure.
    for index, r in enumerate(readings):
        if r.seq <= previous:
            raise ContractError(Reason.SEQ_ORDER, f"reading {index}: seq {r.seq} after {previous}")
        previous = r.seq
        if units[r.channel] != r.unit:
            raise ContractError(
                Reason.UNIT_MISMATCH,
                f"reading {index}: {r.channel} is in {units[r.channel]}, not {r.unit!r}",
            )
        value = r.value
        if value is None:
            if r.quality not in NULL_VALUE_QUALITIES:
                raise ContractError(
                    Reason.MISSING_VALUE,
                    f"reading {index}: value is null but quality is {r.quality!r}",
                )
        elif not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:  # also false for NaN
            raise ContractError(Reason.NON_FINITE, f"reading {index}: value {value!r}")
        if not EARLIEST_TS <= r.ts <= latest:
            reason = Reason.TS_FUTURE if r.ts > latest else Reason.TS_TOO_OLD
            raise ContractError(reason, f"reading {index}: ts {r.ts.isoformat()}")


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
