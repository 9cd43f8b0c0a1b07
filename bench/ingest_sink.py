"""How fast can the sink store readings, and what do the alternatives cost?

Every variant gets a fresh database with the real schema (TimescaleDB hypertable) and the same
workload: a fleet of meters x channels reporting every 15 minutes, written flush by flush in
time order. The baseline is a raw binary COPY of the same rows straight into `readings`
(no staging, no duplicate handling), measured in the same run.

    .venv/bin/python bench/ingest_sink.py [--meters 2000] [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import pq, sql
from psycopg.adapt import Dumper

from ingest.copybin import COPY_COLUMNS, CopyEncoder
from ingest.parse import STAGING_COLUMNS, Parsed, Row
from ingest.sink import _CREATE_STAGING, Sink
from store.migrations import migrate
from store.pool import open_pool

CHANNELS = ("energy_import_kwh", "power_w", "voltage_l1_v", "current_l1_a", "power_factor")
COLUMNS = ", ".join(STAGING_COLUMNS)
BOOT = uuid.UUID(int=1)
Flush = list[Row]


@contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    """A migrated database of its own (TimescaleDB), dropped afterwards."""
    name = f"mw_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = admin.rsplit("/", 1)[0] + "/" + name
    try:
        migrate(url, "require")
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def workload(meters: int, steps: int) -> list[Flush]:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    flushes = []
    seq = 0
    for step in range(steps):
        ts = start + dt.timedelta(minutes=15 * step)
        rows: Flush = []
        for m in range(meters):  # gateways publish meter by meter
            for c in CHANNELS:
                rows.append((m, c, ts, float(step), "good", "live", 1, BOOT, seq))
                seq += 1
        flushes.append(rows)
    return flushes


def label_dumper(type_oid: int) -> type[Dumper]:
    """Binary COPY of an enum column from a Python str (the label's bytes)."""

    class LabelDumper(Dumper):
        format = pq.Format.BINARY
        oid = type_oid

        def dump(self, obj: str) -> bytes:
            return obj.encode()

    return LabelDumper


def raw_copy(url: str, flushes: list[Flush]) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        oids: list[int | str] = []
        for enum in ("reading_quality", "reading_source"):
            row = conn.execute(f"SELECT '{enum}'::regtype::oid").fetchone()
            assert row is not None
            conn.adapters.register_dumper(None, label_dumper(int(row[0])))
            oids.append(int(row[0]))
        types: list[int | str] = [
            "int8",
            "text",
            "timestamptz",
            "float8",
            *oids,
            "int8",
            "uuid",
            "int8",
        ]
        elapsed = 0.0
        for rows in flushes:
            t0 = time.perf_counter()
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY readings ({COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(types)
                for r in rows:
                    copy.write_row(r)
            elapsed += time.perf_counter() - t0
    return sum(map(len, flushes)) / elapsed


def raw_copy_bulk(url: str, flushes: list[Flush]) -> float:
    """The same raw COPY, each flush encoded in bulk (ingest.copybin) instead of `write_row`:
    what the store itself takes when client-side encoding is cheap."""
    encoder = CopyEncoder()
    columns = ", ".join(COPY_COLUMNS)
    with psycopg.connect(url, autocommit=True) as conn:
        elapsed = 0.0
        for rows in flushes:
            t0 = time.perf_counter()
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY readings ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.write(encoder.encode(rows))
            elapsed += time.perf_counter() - t0
    return sum(map(len, flushes)) / elapsed


def sink(url: str, flushes: list[Flush], *, twice: bool = False) -> float:
    pool = open_pool(url, min_size=1, max_size=1, name="bench")
    try:
        s = Sink(pool)
        elapsed = 0.0
        for rows in flushes:
            messages = [Parsed("v1/gw/g/readings", "g", 1, rows=rows)]
            t0 = time.perf_counter()
            s.write(messages * 2 if twice else messages)
            elapsed += time.perf_counter() - t0
    finally:
        pool.close()
    return sum(map(len, flushes)) * (2 if twice else 1) / elapsed


def always_on_conflict(url: str, flushes: list[Flush], key: str) -> float:
    """The textbook staging upsert: INSERT ... ON CONFLICT DO NOTHING on every flush."""
    with psycopg.connect(url, autocommit=True) as conn:
        if key != "meter_id, channel, ts":
            conn.execute("ALTER TABLE readings DROP CONSTRAINT readings_key")
            conn.execute(f"CREATE UNIQUE INDEX readings_key ON readings ({key})")
        conn.execute(_CREATE_STAGING)
        columns = ", ".join(COPY_COLUMNS)
        insert = (
            f"INSERT INTO readings ({columns}) SELECT meter_id, ts, seq, value, channel,"
            " quality::reading_quality, source::reading_source, gateway_id, boot_id"
            f" FROM mw_staging ON CONFLICT ({key}) DO NOTHING"
        )
        encoder = CopyEncoder()
        elapsed = 0.0
        for rows in flushes:
            t0 = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY mw_staging ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(encoder.encode(rows))
                cur.execute(insert)
            elapsed += time.perf_counter() - t0
    return sum(map(len, flushes)) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=30, help="15-minute steps (one flush each)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every variant this many times, interleaved"
    )
    args = parser.parse_args()
    admin = os.environ.get("MW_TEST_DATABASE_URL")
    if not admin:
        raise SystemExit("set MW_TEST_DATABASE_URL (scripts/bootstrap.sh writes .state/test.env)")
    flushes = workload(args.meters, args.steps)
    total = sum(map(len, flushes))
    print(
        f"{args.meters} meters x {len(CHANNELS)} channels x {args.steps} flushes = {total:,} rows"
    )
    variants: dict[str, Callable[[str], float]] = {
        "raw binary COPY into readings [baseline]": lambda u: raw_copy(u, flushes),
        "raw binary COPY, bulk-encoded (ingest.copybin)": lambda u: raw_copy_bulk(u, flushes),
        "meterward Sink (optimistic COPY into readings)": lambda u: sink(u, flushes),
        "meterward Sink, every flush delivered twice": lambda u: sink(u, flushes, twice=True),
        "staging + ON CONFLICT always, key (meter, channel, ts)": lambda u: always_on_conflict(
            u, flushes, "meter_id, channel, ts"
        ),
        "staging + ON CONFLICT always, key (ts, meter, channel)": lambda u: always_on_conflict(
            u, flushes, "ts, meter_id, channel"
        ),
    }
    # Rounds interleave the variants, so that a burst of load from elsewhere on the machine
    # hits all of them rather than one; the median of each is reported.
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for round_no in range(args.rounds):
        if args.rounds > 1:
            print(f"round {round_no + 1}/{args.rounds}")
        for name, run in variants.items():
            with fresh_database(admin) as url:
                runs[name].append(run(url))
            print(f"  {name:56} {runs[name][-1]:>10,.0f} rows/s", flush=True)
    results = {name: statistics.median(rates) for name, rates in runs.items()}
    base = results["raw binary COPY into readings [baseline]"]
    print(f"median of {args.rounds} round(s), and ratio to the raw COPY baseline:")
    for name, rate in results.items():
        spread = f"  ({min(runs[name]):,.0f}-{max(runs[name]):,.0f})" if args.rounds > 1 else ""
        print(f"  {name:56} {rate:>10,.0f} rows/s {rate / base:5.2f}{spread}")


if __name__ == "__main__":
    main()
