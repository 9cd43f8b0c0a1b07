"""The wire contract: golden payloads, round trips, topics."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.channels import CHANNELS, COUNTERS, UNITS, ChannelName
from contracts.fixtures import GoldenPayload, golden_now, golden_payloads, golden_registry
from contracts.topics import (
    ack_topic,
    backfill_topic,
    parse_topic,
    readings_topic,
    shared_subscription,
    status_topic,
)
from contracts.wire import (
    MAX_ABS_VALUE,
    NULL_VALUE_QUALITIES,
    Ack,
    Batch,
    Bounds,
    ContractError,
    Quality,
    Reading,
    Reason,
    decode_ack,
    decode_batch,
    encode,
)

GOLDEN = golden_payloads()


def judge(case: GoldenPayload) -> tuple[str, tuple[int, ...]]:
    """What the contract alone says: ('ok' or the reason, positions of refused readings)."""
    try:
        topic = parse_topic(case.topic)
        decoded = decode_batch(case.payload, topic_gateway_id=topic.gateway_id, now=golden_now())
    except ContractError as exc:
        return str(exc.reason), ()
    reasons = {str(r.reason) for r in decoded.rejected}
    assert len(reasons) <= 1, reasons
    return (reasons.pop() if reasons else "ok"), tuple(r.index for r in decoded.rejected)


def test_channel_vocabulary_is_closed_and_consistent() -> None:
    assert set(get_args(ChannelName)) == set(CHANNELS)
    assert {n for n, c in CHANNELS.items() if c.cumulative} == COUNTERS
    assert all(UNITS[name] for name in CHANNELS)


def test_every_contract_reason_has_a_golden_payload() -> None:
    covered = {case.expect for case in GOLDEN}
    assert set(Reason) <= covered, set(Reason) - covered


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: c.name)
def test_golden_payload(case: GoldenPayload) -> None:
    verdict, refused = judge(case)
    if case.stage == "ingest":
        # Ingest-stage reasons need the registry: the contract itself accepts the payload.
        assert (verdict, refused) == ("ok", ())
        assert case.expect in {
            Reason.UNKNOWN_GATEWAY,
            Reason.UNKNOWN_METER,
            Reason.METER_OTHER_PROJECT,
        }
    elif case.scope == "batch":
        assert (verdict, refused) == (case.expect, ()), case.note
    else:
        assert (verdict, refused) == (case.expect, case.rejected), case.note


def test_a_bad_reading_does_not_poison_its_batch() -> None:
    for case in GOLDEN:
        if case.stage != "contract" or case.scope != "reading":
            continue
        decoded = decode_batch(case.payload, topic_gateway_id="gw-0001", now=golden_now())
        total = len(decoded.batch.readings) + len(decoded.rejected)
        assert total == 3, case.name  # the golden batches carry three readings
        assert decoded.batch.readings, case.name
        for rejected in decoded.rejected:
            assert rejected.reading.startswith(b"{"), "the refused reading is kept for replay"


def test_ingest_stage_cases_fit_the_registry() -> None:
    registry = golden_registry()
    project = registry["gateways"]["gw-0001"]
    for case in GOLDEN:
        if case.stage != "ingest":
            continue
        if case.scope == "batch":
            assert parse_topic(case.topic).gateway_id not in registry["gateways"]
            continue
        batch = decode_batch(case.payload, topic_gateway_id="gw-0001", now=golden_now()).batch
        meters = [r.meter_id for r in batch.readings]
        refused = {meters[i] for i in case.rejected}
        assert all(registry["meters"].get(m) == project for m in set(meters) - refused)
        if case.expect == Reason.UNKNOWN_METER:
            assert not refused & set(registry["meters"])
        else:
            assert all(registry["meters"][m] != project for m in refused)


def test_contract_errors_are_the_only_errors() -> None:
    garbage = [b"", b"\x00\xff", b"[]", b"null", b'{"v": "1"}', b'{"readings": 5}', b"1e999"]
    for payload in garbage:
        with pytest.raises(ContractError):
            decode_batch(payload, topic_gateway_id="gw-0001", now=golden_now())


# ---------------------------------------------------------------- round trip (hypothesis)
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
channels: st.SearchStrategy[ChannelName] = st.sampled_from(get_args(ChannelName))
qualities = st.sampled_from(get_args(Quality))
# hypothesis takes naive bounds and attaches the zone itself.
timestamps = st.datetimes(
    min_value=dt.datetime(2000, 1, 2),  # noqa: DTZ001
    max_value=dt.datetime(2026, 6, 1),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
)


@st.composite
def readings(draw: st.DrawFn, seq: int) -> Reading:
    channel = draw(channels)
    quality = draw(qualities)
    value = (
        None
        if quality in NULL_VALUE_QUALITIES
        else draw(st.floats(-MAX_ABS_VALUE, MAX_ABS_VALUE, allow_nan=False))
    )
    raw = draw(st.none() | st.lists(st.integers(0, 0xFFFF), max_size=4).map(tuple))
    return Reading(
        meter_id=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,30}", fullmatch=True)),
        channel=channel,
        ts=draw(timestamps),
        value=value,
        unit=UNITS[channel],
        seq=seq,
        quality=quality,
        raw=raw,
    )


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    start = draw(st.integers(0, 2**40))
    gaps = draw(st.lists(st.integers(1, 5), min_size=1, max_size=30))
    seqs = [start + sum(gaps[:i]) for i in range(len(gaps))]
    items = [draw(readings(seq)) for seq in seqs]
    return Batch(
        v=1,
        gateway_id=draw(st.from_regex(r"gw-[a-z0-9]{1,8}", fullmatch=True)),
        boot_id=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
        kind=draw(st.sampled_from(["live", "backfill"])),
        sent_at=NOW,
        seq_first=seqs[0],
        seq_last=seqs[-1],
        readings=items,
    )


@given(batches())
def test_batch_round_trip(batch: Batch) -> None:
    decoded = decode_batch(encode(batch), topic_gateway_id=batch.gateway_id, now=NOW)
    assert decoded.rejected == ()
    assert decoded.batch == batch


@given(
    st.builds(
        Ack,
        v=st.just(1),
        boot_id=st.uuids(),
        from_seq=st.integers(0, 2**62),
        upto_seq=st.integers(0, 2**62),
        status=st.sampled_from(["stored", "dead_letter"]),
        accepted=st.integers(0, 20_000),
        rejected=st.integers(0, 20_000),
        reason=st.none() | st.sampled_from([str(r) for r in Reason]),
    )
)
def test_ack_round_trip(ack: Ack) -> None:
    assert decode_ack(encode(ack)) == ack


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_other_errors(payload: bytes) -> None:
    with pytest.raises(ContractError):
        decode_batch(payload, topic_gateway_id="gw-0001", now=NOW)


def test_offsets_denote_the_same_instant() -> None:
    case = next(c for c in GOLDEN if c.name == "local_offset_and_raw")
    batch = decode_batch(case.payload, topic_gateway_id="gw-0001", now=golden_now()).batch
    assert batch.readings[0].ts == dt.datetime(2026, 3, 1, 11, 59, tzinfo=dt.UTC)
    assert batch.readings[0].raw == (1, 57920)


def test_default_fields_are_not_sent() -> None:
    reading = Reading("m", "power_w", NOW, 1.0, "W", 1)
    assert b"quality" not in encode(reading)
    assert b"raw" not in encode(reading)


def test_non_finite_values_never_pass_as_numbers() -> None:
    """msgspec writes inf/NaN as null, which the contract then refuses unless the quality
    says why the value is missing; an out-of-range literal is refused as non_finite."""
    good = Reading("m", "power_w", NOW, 1.0, "W", 1)
    bad = Reading("m", "power_w", NOW, math.inf, "W", 2)
    batch = Batch(1, "gw-1", uuid.UUID(int=1), "live", NOW, 1, 2, [good, bad])
    payload = encode(batch)
    assert b'"value":null' in payload
    decoded = decode_batch(payload, topic_gateway_id="gw-1", now=NOW)
    assert decoded.batch.readings == [good]
    assert [(r.index, r.reason) for r in decoded.rejected] == [(1, Reason.MISSING_VALUE)]
    literal = payload.replace(b'"value":null', b'"value":-1e999')
    decoded = decode_batch(literal, topic_gateway_id="gw-1", now=NOW)
    assert decoded.batch.readings == [good]
    assert [(r.index, r.reason) for r in decoded.rejected] == [(1, Reason.NON_FINITE)]
    assert b"-1e999" in decoded.rejected[0].reading


def test_bounds_are_configurable() -> None:
    reading = Reading("m", "power_w", NOW + dt.timedelta(hours=2), 1.0, "W", 1)
    payload = encode(Batch(1, "gw-1", uuid.UUID(int=1), "live", NOW, 1, 1, [reading]))
    assert decode_batch(payload, topic_gateway_id="gw-1", now=NOW).rejected == ()
    strict = Bounds(max_future=dt.timedelta(hours=1))
    decoded = decode_batch(payload, topic_gateway_id="gw-1", now=NOW, bounds=strict)
    assert [r.reason for r in decoded.rejected] == [Reason.TS_FUTURE]


# ---------------------------------------------------------------- topics
def test_topic_builders_and_parser_agree() -> None:
    for build, kind in (
        (readings_topic, "readings"),
        (backfill_topic, "backfill"),
        (ack_topic, "ack"),
        (status_topic, "status"),
    ):
        topic = build("gw-0001")
        assert topic == f"v1/gw/gw-0001/{kind}"
        assert parse_topic(topic) == ("gw-0001", kind)
    assert shared_subscription("v1/gw/+/readings") == "$share/ingest/v1/gw/+/readings"


@pytest.mark.parametrize(
    "topic",
    ["v1/gw/gw-0001", "v1/gw/gw-0001/readings/x", "v2/gw/a/readings", "v1/gw/+/readings",
     "v1/gw//readings", "v1/gw/a#/ack", "", "v1/gw/gw-0001/Readings"],
)  # fmt: skip
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_topic(topic)
    assert info.value.reason == Reason.UNKNOWN_TOPIC


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "gw 1", "x" * 65])
def test_topic_builders_refuse_bad_gateway_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid gateway id"):
        readings_topic(bad)
