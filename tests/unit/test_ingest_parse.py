"""ingest.parse: any message ends as rows or dead letters, with the right reason."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.fixtures import GoldenPayload, golden_now, golden_payloads, golden_registry
from contracts.wire import Batch, Reading, Reason, encode
from ingest.parse import GatewayEntry, MeterEntry, Registry, parse

GOLDEN = golden_payloads()


def registry_from_golden() -> Registry:
    doc = golden_registry()
    projects = {p: i for i, p in enumerate(sorted(set(doc["gateways"].values())), start=1)}
    gateways = enumerate(doc["gateways"].items())
    meters = enumerate(doc["meters"].items())
    return Registry(
        gateways={g: GatewayEntry(100 + i, projects[p]) for i, (g, p) in gateways},
        meters={m: MeterEntry(1000 + i, projects[p]) for i, (m, p) in meters},
    )


REGISTRY = registry_from_golden()


def readings_in(case: GoldenPayload) -> int:
    try:
        return len(json.loads(case.payload)["readings"])
    except (ValueError, KeyError, TypeError):
        return 0


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: c.name)
def test_golden_payload_outcome(case: GoldenPayload) -> None:
    parsed = parse(case.topic, case.payload, registry=REGISTRY, now=golden_now())
    if case.expect == "ok":
        assert parsed.dead == []
        assert len(parsed.rows) == readings_in(case)
        assert parsed.ack is not None
        assert parsed.ack.status == "stored"
        assert parsed.ack.accepted == len(parsed.rows)
    elif case.scope == "batch":
        assert parsed.rows == []
        assert [(d.reason, d.scope) for d in parsed.dead] == [(case.expect, "batch")]
        assert parsed.dead[0].payload == case.payload  # kept whole
    else:
        assert [(d.reason, d.scope) for d in parsed.dead] == [(case.expect, "reading")] * len(
            case.rejected
        )
        assert len(parsed.rows) == readings_in(case) - len(case.rejected)
        assert parsed.ack is not None
        assert (parsed.ack.status, parsed.ack.rejected) == ("stored", len(case.rejected))


def test_refused_batch_is_acked_when_its_sender_is_known() -> None:
    case = next(c for c in GOLDEN if c.name == "schema_version")
    parsed = parse(case.topic, case.payload, registry=REGISTRY, now=golden_now())
    assert parsed.ack is not None
    assert parsed.ack.status == "dead_letter"
    assert parsed.ack.reason == "schema_version"
    assert (parsed.ack.from_seq, parsed.ack.upto_seq) == (100, 102)


def test_unreadable_batch_cannot_be_acked() -> None:
    case = next(c for c in GOLDEN if c.name == "invalid_json")
    assert parse(case.topic, case.payload, registry=REGISTRY, now=golden_now()).ack is None


def test_rows_carry_ids_from_the_registry() -> None:
    case = next(c for c in GOLDEN if c.name == "live_three_phase")
    parsed = parse(case.topic, case.payload, registry=REGISTRY, now=golden_now())
    meter = REGISTRY.meters["P001-E-0001"].id
    gateway = REGISTRY.gateways["gw-0001"].id
    assert [r[0] for r in parsed.rows] == [meter] * 3
    assert {r[6] for r in parsed.rows} == {gateway}
    assert [r[8] for r in parsed.rows] == [100, 101, 102]
    assert {r[5] for r in parsed.rows} == {"live"}


NOW = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)


def batch_at(sent_at: dt.datetime, *readings: Reading, kind: str = "live") -> bytes:
    return encode(
        Batch(1, "gw-0001", uuid.UUID(int=5), kind, sent_at, readings[0].seq, readings[-1].seq,  # type: ignore[arg-type]
              list(readings))
    )  # fmt: skip


def test_skewed_gateway_clock_marks_values_suspect_but_keeps_null_reasons() -> None:
    good = Reading("P001-E-0001", "power_w", NOW, 5.0, "W", 1)
    silent = Reading("P001-E-0001", "voltage_l1_v", NOW, None, "V", 2, "comm_error")
    payload = batch_at(NOW - dt.timedelta(hours=2), good, silent)
    parsed = parse("v1/gw/gw-0001/readings", payload, registry=REGISTRY, now=NOW)
    assert [r[4] for r in parsed.rows] == ["clock_suspect", "comm_error"]
    assert parsed.skew == dt.timedelta(hours=2)
    on_time = parse(
        "v1/gw/gw-0001/readings", batch_at(NOW, good, silent), registry=REGISTRY, now=NOW
    )
    assert [r[4] for r in on_time.rows] == ["good", "comm_error"]


def test_kind_must_match_the_topic() -> None:
    payload = batch_at(NOW, Reading("P001-E-0001", "power_w", NOW, 5.0, "W", 1), kind="live")
    parsed = parse("v1/gw/gw-0001/backfill", payload, registry=REGISTRY, now=NOW)
    assert [d.reason for d in parsed.dead] == [Reason.SCHEMA]
    backfill = batch_at(NOW, Reading("P001-E-0001", "power_w", NOW, 5.0, "W", 1), kind="backfill")
    rows = parse("v1/gw/gw-0001/backfill", backfill, registry=REGISTRY, now=NOW).rows
    assert [r[5] for r in rows] == ["backfill"]


def test_a_dead_reading_replays_once_its_meter_is_registered() -> None:
    case = next(c for c in GOLDEN if c.name == "unknown_meter")
    parsed = parse(case.topic, case.payload, registry=REGISTRY, now=golden_now())
    (dead,) = parsed.dead
    assert dead.seq == 300
    project = REGISTRY.meters["P001-E-0001"].project_id
    fixed = Registry(
        gateways=REGISTRY.gateways,
        meters={**REGISTRY.meters, "NOT-REGISTERED-0001": MeterEntry(9, project)},
    )
    replay = parse(dead.topic, dead.payload, registry=fixed, now=golden_now())
    assert replay.dead == []
    assert [(r[0], r[8]) for r in replay.rows] == [(9, 300)]


def test_a_reading_refused_by_typing_replays_as_a_batch() -> None:
    case = next(c for c in GOLDEN if c.name == "schema_reading_missing_field")
    (dead,) = parse(case.topic, case.payload, registry=REGISTRY, now=golden_now()).dead
    assert dead.seq is None
    assert json.loads(dead.payload)["readings"][0]["channel"] == "power_w"


@settings(max_examples=300)
@given(
    topic=st.one_of(
        st.text(max_size=40), st.sampled_from(["v1/gw/gw-0001/readings", "v1/gw/gw-0001/ack"])
    ),
    payload=st.one_of(st.binary(max_size=400), st.sampled_from([c.payload for c in GOLDEN[:5]])),
)
def test_any_bytes_on_any_topic_end_as_rows_or_dead_letters(topic: str, payload: bytes) -> None:
    parsed = parse(topic, payload, registry=REGISTRY, now=golden_now())
    assert parsed.rows or parsed.dead
