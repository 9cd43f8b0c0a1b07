"""Gateway outbox throughput: readings appended, and readings forwarded (read, batched,
encoded, acked) without a network.

Measured in the same run on the same samples, each on a fresh file with the same pragmas
(WAL, synchronous=FULL, 4 KiB pages):
  append    baseline  a bare table, one `executemany` INSERT + COMMIT per poll cycle
            outbox    `Outbox.append` (budget check, seq, boot, one transaction per cycle)
  forward   baseline  SELECT a batch, `json.dumps` of plain dicts, DELETE the range
            outbox    `Outbox.read` -> `contracts.wire.Batch` -> `encode` -> `Outbox.ack`

Prints readings/s, the ratio to the baseline, and the process RSS (current and peak).

    .venv/bin/python bench/outbox.py [--devices 1000] [--cycles 100] [--batch 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from contracts.channels import UNITS
from contracts.wire import Batch, encode
from gateway_agent.outbox import Outbox
from gateway_agent.sample import Sample
from gateway_agent.site import OutboxConfig

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
CHANNELS = ("energy_import_kwh", "power_w", "voltage_l1_v", "current_l1_a", "frequency_hz")
MB = 1024 * 1024


def make_cycles(devices: int, cycles: int) -> list[list[Sample]]:
    """One sample per device per cycle (a channel in rotation): `devices` samples a cycle."""
    out = []
    for c in range(cycles):
        ts = T0 + dt.timedelta(seconds=c)
        out.append(
            [
                Sample(
                    f"P{d // 100:03d}-E-{d:04d}",
                    ch := CHANNELS[(c + d) % len(CHANNELS)],
                    ts,
                    1000.0 + d + c * 0.01,
                    UNITS[ch],
                )
                for d in range(devices)
            ]
        )
    return out


def bare(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE r (seq INTEGER PRIMARY KEY AUTOINCREMENT, meter_id TEXT, channel TEXT,"
        " ts_us INTEGER, value REAL, unit TEXT, quality TEXT)"
    )
    return conn


def micros(ts: dt.datetime) -> int:
    d = ts - EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def append_baseline(path: str, cycles: list[list[Sample]]) -> None:
    conn = bare(path)
    for samples in cycles:
        rows = [(s.meter_id, s.channel, micros(s.ts), s.value, s.unit, None) for s in samples]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO r (meter_id, channel, ts_us, value, unit, quality)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
    conn.close()


def append_outbox(path: str, cycles: list[list[Sample]]) -> None:
    box = Outbox(OutboxConfig(path=path, budget_bytes=1 << 30), boot_id=uuid.uuid4())
    for samples in cycles:
        box.append(samples)
    box.close()


def forward_baseline(path: str, batch: int) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = FULL")
    sent = 0
    cursor = 0
    while rows := conn.execute(
        "SELECT seq, meter_id, channel, ts_us, value, unit, quality FROM r WHERE seq > ?"
        " ORDER BY seq LIMIT ?",
        (cursor, batch),
    ).fetchall():
        payload = json.dumps(
            {
                "seq_first": rows[0][0],
                "seq_last": rows[-1][0],
                "readings": [
                    {
                        "seq": seq,
                        "meter_id": m,
                        "channel": ch,
                        "ts": (EPOCH + dt.timedelta(microseconds=ts)).isoformat(),
                        "value": v,
                        "unit": u,
                        "quality": q or "good",
                    }
                    for seq, m, ch, ts, v, u, q in rows
                ],
            }
        ).encode()
        assert payload
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM r WHERE seq BETWEEN ? AND ?", (rows[0][0], rows[-1][0]))
        conn.execute("COMMIT")
        cursor = rows[-1][0]
        sent += len(rows)
    conn.close()
    return sent


def forward_outbox(path: str, batch: int) -> int:
    box = Outbox(OutboxConfig(path=path, budget_bytes=1 << 30), boot_id=uuid.uuid4())
    sent = 0
    cursor = 0
    while rows := box.read(cursor, batch):
        readings = [r.reading for r in rows]
        payload = encode(
            Batch(
                v=1,
                gateway_id="gw-bench",
                boot_id=rows[0].boot_id,
                kind="backfill",
                sent_at=T0,
                seq_first=readings[0].seq,
                seq_last=readings[-1].seq,
                readings=readings,
            )
        )
        assert payload
        box.ack(rows[0].boot_id, readings[0].seq, readings[-1].seq)
        cursor = readings[-1].seq
        sent += len(rows)
    box.close()
    return sent


def best(repeat: int, run: Callable[[str], object], prepare: Callable[[str], None]) -> float:
    """Best wall time of `repeat` runs, each on a fresh file prepared outside the timing."""
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "bench.db")
            prepare(path)
            started = time.perf_counter()
            run(path)
            times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cycles = make_cycles(args.devices, args.cycles)
    total = args.devices * args.cycles
    print(
        f"{args.cycles} cycles x {args.devices} samples ({total:,} readings),"
        f" synchronous=FULL, best of {args.repeat}"
    )

    def noop(path: str) -> None:
        return None

    base_append = best(args.repeat, lambda p: append_baseline(p, cycles), noop)
    ours_append = best(args.repeat, lambda p: append_outbox(p, cycles), noop)
    base_fwd = best(
        args.repeat,
        lambda p: forward_baseline(p, args.batch),
        lambda p: append_baseline(p, cycles),
    )
    ours_fwd = best(
        args.repeat,
        lambda p: forward_outbox(p, args.batch),
        lambda p: append_outbox(p, cycles),
    )
    print(f"{'':28} {'readings/s':>12} {'ratio':>7}")
    for name, seconds, baseline in [
        ("append baseline (bare)", base_append, base_append),
        ("append Outbox.append", ours_append, base_append),
        ("forward baseline (json)", base_fwd, base_fwd),
        ("forward outbox+msgspec", ours_fwd, base_fwd),
    ]:
        print(f"{name:28} {total / seconds:12,.0f} {baseline / seconds:7.2f}")
    rss = psutil.Process().memory_info().rss / MB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RSS {rss:.1f} MB now, peak {peak:.1f} MB (samples of {args.devices} devices in memory)")


if __name__ == "__main__":
    main()
