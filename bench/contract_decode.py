"""Decode + validate throughput of gateway batches: the ingest hot path.

Candidates, measured in the same run on the same payloads:
  baseline  json.loads + the same checks written by hand in Python
  orjson    orjson.loads + the same hand checks
  pydantic  a pydantic v2 model (validate_json) + the contract's rule pass
  msgspec   contracts.wire.decode_batch (what meterward uses)

Prints readings/s for each and the ratio to the baseline. One core (this process only).

    .venv/bin/python bench/contract_decode.py [--batches 200] [--size 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

import orjson
import pydantic

from contracts.channels import CHANNELS, UNITS, ChannelName
from contracts.wire import (
    MAX_ABS_VALUE,
    MAX_FUTURE,
    NULL_VALUE_QUALITIES,
    Batch,
    Bounds,
    Quality,
    Reading,
    check_readings,
    decode_batch,
    encode,
)

GATEWAY = "gw-0001"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
# A three-phase meter polled as a gateway does: energy counters and the fast channels.
CHANNEL_MIX = (
    "energy_import_kwh", "energy_export_kwh", "power_w", "voltage_l1_v", "voltage_l2_v",
    "voltage_l3_v", "current_l1_a", "current_l2_a", "current_l3_a", "power_factor",
    "frequency_hz",
)  # fmt: skip


def make_batches(count: int, size: int) -> list[bytes]:
    """Realistic batches: consecutive seqs, 11 channels per meter per poll, some comm errors."""
    out = []
    seq = 0
    boot = uuid.UUID(int=7)
    for b in range(count):
        readings = []
        for i in range(size):
            meter = f"P{b % 40:03d}-B{(i // 11) % 9:02d}-E-{(b * size + i) // 11 % 9999:04d}"
            channel = CHANNEL_MIX[i % len(CHANNEL_MIX)]
            ts = NOW - dt.timedelta(minutes=b, seconds=(i // 11) % 60)
            comm_error = i % 97 == 0
            readings.append(
                Reading(
                    meter_id=meter,
                    channel=channel,  # type: ignore[arg-type]
                    ts=ts,
                    value=None if comm_error else 1000.0 + i * 0.37,
                    unit=UNITS[channel],
                    seq=seq,
                    quality="comm_error" if comm_error else "good",
                )
            )
            seq += 1
        batch = Batch(
            v=1,
            gateway_id=GATEWAY,
            boot_id=boot,
            kind="live",
            sent_at=NOW,
            seq_first=readings[0].seq,
            seq_last=readings[-1].seq,
            readings=readings,
        )
        out.append(encode(batch))
    return out


# ---------------------------------------------------------------- hand-checked baseline
_QUALITIES = frozenset(
    {"good", "uncertain", "bad", "nan_sentinel", "comm_error", "clock_suspect", "out_of_range"}
)
_READING_KEYS = frozenset({"meter_id", "channel", "ts", "value", "unit", "seq", "quality", "raw"})
_EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def hand_checked(loads: Callable[[bytes], Any]) -> Callable[[bytes], int]:
    def run(payload: bytes) -> int:
        doc = loads(payload)
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError("version")
        if doc.get("gateway_id") != GATEWAY:
            raise ValueError("gateway")
        uuid.UUID(doc["boot_id"])
        if doc.get("kind") not in ("live", "backfill"):
            raise ValueError("kind")
        dt.datetime.fromisoformat(doc["sent_at"])
        readings = doc["readings"]
        if not isinstance(readings, list) or not readings:
            raise ValueError("readings")
        latest = NOW + MAX_FUTURE
        previous = -1
        for r in readings:
            if not isinstance(r, dict) or not _READING_KEYS.issuperset(r):
                raise ValueError("keys")
            meter = r["meter_id"]
            if not isinstance(meter, str) or not 0 < len(meter) <= 64:
                raise ValueError("meter")
            channel = r["channel"]
            if channel not in CHANNELS or UNITS[channel] != r["unit"]:
                raise ValueError("channel/unit")
            seq = r["seq"]
            if type(seq) is not int or seq <= previous:
                raise ValueError("seq")
            previous = seq
            quality = r.get("quality", "good")
            if quality not in _QUALITIES:
                raise ValueError("quality")
            value = r["value"]
            if value is None:
                if quality not in NULL_VALUE_QUALITIES:
                    raise ValueError("missing value")
            elif type(value) not in (float, int) or not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
                raise ValueError("value")
            ts = dt.datetime.fromisoformat(r["ts"])
            if ts.tzinfo is None or not _EARLIEST <= ts <= latest:
                raise ValueError("ts")
        if readings[0]["seq"] != doc["seq_first"] or readings[-1]["seq"] != doc["seq_last"]:
            raise ValueError("seq range")
        return len(readings)

    return run


# ---------------------------------------------------------------- pydantic candidate
class PReading(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    meter_id: str = pydantic.Field(min_length=1, max_length=64)
    channel: ChannelName
    ts: pydantic.AwareDatetime
    value: float | None
    unit: str
    seq: int = pydantic.Field(ge=0)
    quality: Quality = "good"
    raw: tuple[int, ...] | None = None


class PBatch(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    v: int
    gateway_id: str
    boot_id: uuid.UUID
    kind: Literal["live", "backfill"]
    sent_at: pydantic.AwareDatetime
    seq_first: int
    seq_last: int
    readings: list[PReading]


def pydantic_checked(payload: bytes) -> int:
    batch = PBatch.model_validate_json(payload)
    assert batch.gateway_id == GATEWAY
    assert not check_readings(batch.readings, NOW, Bounds())  # type: ignore[arg-type]
    return len(batch.readings)


def msgspec_checked(payload: bytes) -> int:
    return len(decode_batch(payload, topic_gateway_id=GATEWAY, now=NOW).batch.readings)


def measure(fn: Callable[[bytes], int], payloads: list[bytes], repeat: int) -> float:
    """Best-of-`repeat` readings per second (best = least disturbed by a noisy machine)."""
    best = float("inf")
    total = 0
    for _ in range(repeat):
        start = time.perf_counter()
        total = sum(fn(p) for p in payloads)
        best = min(best, time.perf_counter() - start)
    return total / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--size", type=int, default=500, help="readings per batch")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    payloads = make_batches(args.batches, args.size)
    readings = args.batches * args.size
    avg = sum(map(len, payloads)) / len(payloads)
    print(f"{args.batches} batches x {args.size} readings = {readings:,}; {avg:,.0f} B/batch")
    # Every candidate must accept the same payloads before it is timed.
    for fn in (hand_checked(json.loads), pydantic_checked, msgspec_checked):
        assert fn(payloads[0]) == args.size
    candidates = {
        "baseline (json + hand checks)": hand_checked(json.loads),
        "orjson + hand checks": hand_checked(orjson.loads),
        "pydantic v2 validate_json": pydantic_checked,
        "msgspec (contracts.wire)": msgspec_checked,
    }
    results = {name: measure(fn, payloads, args.repeat) for name, fn in candidates.items()}
    base = results["baseline (json + hand checks)"]
    for name, rate in results.items():
        print(f"{name:32} {rate:>12,.0f} readings/s   ratio {rate / base:5.2f}x")


if __name__ == "__main__":
    main()
