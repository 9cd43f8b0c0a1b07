"""End-to-end ingest: gateways publishing realistic batches -> Mosquitto -> `meterward ingest
run` worker processes -> `readings` (TimescaleDB hypertable with its unique index).

Measured in one run, each on a fresh database:
  * raw binary COPY of the same rows into an identical table (the baseline), interleaved with
    the 1-worker run for `--rounds` rounds, medians compared;
  * sustained throughput with 1 and with 2 workers (shared subscription);
  * publish -> application-ack latency (the ack leaves after COMMIT) at half the 1-worker rate;
  * worker RSS under load.

    set -a; . .state/test.env; set +a
    .venv/bin/python -m bench.ingest_e2e [--readings 400000] [--gateways 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psutil
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.ingest_sink import fresh_database, raw_copy, raw_copy_bulk
from contracts.topics import ack_topic, readings_topic
from contracts.wire import Batch, Reading, decode_ack, encode
from ingest.parse import Row

CHANNELS = ("energy_import_kwh", "power_w", "voltage_l1_v", "current_l1_a", "power_factor")
UNITS = {
    "energy_import_kwh": "kWh",
    "power_w": "W",
    "voltage_l1_v": "V",
    "current_l1_a": "A",
    "power_factor": "1",
}
METERS_PER_GATEWAY = 100  # one batch = 100 meters x 5 channels = 500 readings


class Gateway:
    """Pre-encoded batches for one gateway, and when each was published / acked."""

    def __init__(self, code: str, batches: int, start: dt.datetime) -> None:
        self.code = code
        self.boot = uuid.uuid4()
        self.meters = [f"{code}-M{i:03d}" for i in range(METERS_PER_GATEWAY)]
        self.payloads: list[tuple[int, bytes]] = []
        self.rows: list[Row] = []
        seq = 0
        for b in range(batches):
            ts = start + dt.timedelta(seconds=b)
            readings = []
            for m in self.meters:
                for c in CHANNELS:
                    readings.append(Reading(m, c, ts, float(b), UNITS[c], seq))  # type: ignore[arg-type]
                    seq += 1
            batch = Batch(
                1, code, self.boot, "live", start, readings[0].seq, readings[-1].seq, readings
            )
            self.payloads.append((batch.seq_first, encode(batch)))
        self.published: dict[int, float] = {}
        self.acked: dict[int, float] = {}


def mqtt_client(url: str, name: str) -> mqtt.Client:
    parts = urlsplit(url)
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    c.loop_start()
    return c


def publish(url: str, gw: Gateway, rate_per_s: float | None) -> None:
    """Publish every batch of one gateway, as fast as possible or at `rate_per_s` batches/s."""
    client = mqtt_client(url, f"bench-{gw.code}")

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        ack = decode_ack(bytes(msg.payload))
        gw.acked[ack.from_seq] = time.perf_counter()

    client.on_message = on_message
    client.subscribe(ack_topic(gw.code), qos=1)
    time.sleep(0.2)
    topic = readings_topic(gw.code)
    start = time.perf_counter()
    for i, (first, payload) in enumerate(gw.payloads):
        if rate_per_s:
            delay = start + i / rate_per_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        gw.published[first] = time.perf_counter()
        client.publish(topic, payload, qos=1)
    deadline = time.perf_counter() + 120
    while len(gw.acked) < len(gw.payloads) and time.perf_counter() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()


def seed(url: str, gateways: list[Gateway]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        org = conn.execute("INSERT INTO organisations (code, name) VALUES ('hq','HQ') RETURNING id")
        org_id = org.fetchone()[0]  # type: ignore[index]
        project = conn.execute(
            "INSERT INTO projects (organisation_id, code, name) VALUES (%s,'B','B') RETURNING id",
            (org_id,),
        ).fetchone()[0]  # type: ignore[index]
        with conn.cursor() as cur:
            for gw in gateways:
                cur.execute(
                    "INSERT INTO gateways (project_id, code, name) VALUES (%s, %s, %s)",
                    (project, gw.code, gw.code),
                )
                cur.executemany(
                    "INSERT INTO meters (project_id, code, kind, profile)"
                    " VALUES (%s, %s, 'electricity', 'bench')",
                    [(project, m) for m in gw.meters],
                )


def start_workers(db_url: str, mqtt_url: str, count: int) -> list[subprocess.Popen[bytes]]:
    group = f"bench{uuid.uuid4().hex[:6]}"
    procs = []
    for i in range(count):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
        env |= {
            "MW_DATABASE_URL": db_url,
            "MW_MQTT_URL": mqtt_url,
            "MW_INGEST__CLIENT_ID": f"{group}-{i}",
            "MW_INGEST__SHARE_GROUP": group,
            "MW_INGEST__END_SESSION_ON_EXIT": "true",
            "MW_INGEST__RECEIVE_MAXIMUM": "400",
            "MW_LOG_LEVEL": "WARNING",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", "from meterward.cli import main; main()", "ingest", "run"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(3)  # workers connect and subscribe
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def run(
    admin: str, mqtt_url: str, gateways: list[Gateway], workers: int, rate: float | None
) -> tuple[float, list[float], int]:
    """(readings/s from first publish to last COMMIT, ack latencies in s, peak worker RSS)."""
    total = sum(len(g.payloads) for g in gateways) * METERS_PER_GATEWAY * len(CHANNELS)
    with fresh_database(admin) as url:
        seed(url, gateways)
        procs = start_workers(url, mqtt_url, workers)
        peak_rss = 0
        try:
            threads = [threading.Thread(target=publish, args=(mqtt_url, g, rate)) for g in gateways]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            with psycopg.connect(url, autocommit=True) as conn:
                while True:
                    stored = conn.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
                    for p in procs:
                        peak_rss = max(peak_rss, psutil.Process(p.pid).memory_info().rss)
                    if stored >= total or time.perf_counter() - t0 > 600:
                        break
                    time.sleep(0.1)
            elapsed = time.perf_counter() - t0
            for t in threads:
                t.join()
        finally:
            stop_workers(procs)
    latencies = [g.acked[s] - g.published[s] for g in gateways for s in g.acked]
    if stored < total:
        raise SystemExit(f"only {stored} of {total} readings stored")
    return total / elapsed, latencies, peak_rss


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=400_000)
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved baseline / 1-worker rounds"
    )
    args = parser.parse_args()
    admin = os.environ.get("MW_TEST_DATABASE_URL")
    mqtt_url = os.environ.get("MW_TEST_MQTT_URL")
    if not admin or not mqtt_url:
        raise SystemExit("set MW_TEST_DATABASE_URL and MW_TEST_MQTT_URL (.state/test.env)")
    per_batch = METERS_PER_GATEWAY * len(CHANNELS)
    batches = max(1, args.readings // per_batch // args.gateways)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=6)

    def fleet() -> list[Gateway]:
        return [Gateway(f"gwb{g}", batches, start) for g in range(args.gateways)]

    total = batches * args.gateways * per_batch
    print(f"{args.gateways} gateways x {batches} batches x {per_batch} readings = {total:,}")
    rows = [r for g in fleet() for r in _rows(g)]
    chunks = [rows[i : i + 50_000] for i in range(0, len(rows), 50_000)]
    # The baseline and the pipeline are interleaved round by round and compared by their
    # medians: on this shared 2-core machine either one alone swings by 1.5x between minutes.
    baselines: list[float] = []
    bulks: list[float] = []
    ones: list[float] = []
    rss1 = 0
    for r in range(1, args.rounds + 1):
        with fresh_database(admin) as url:
            baselines.append(raw_copy(url, chunks))
        with fresh_database(admin) as url:
            bulks.append(raw_copy_bulk(url, chunks))
        rate, _, rss = run(admin, mqtt_url, fleet(), 1, None)
        ones.append(rate)
        rss1 = max(rss1, rss)
        print(
            f"  round {r}: raw COPY {baselines[-1]:,.0f}, bulk-encoded {bulks[-1]:,.0f},"
            f" 1 worker {rate:,.0f} readings/s (ratio {rate / baselines[-1]:.2f})"
        )
    baseline = statistics.median(baselines)
    bulk = statistics.median(bulks)
    one = statistics.median(ones)
    print(f"  medians of {args.rounds} round(s):")
    print(f"  raw binary COPY      {baseline:>10,.0f} readings/s  (baseline)")
    # The same COPY with the rows encoded the way the worker encodes them (ingest.copybin):
    # the store's own ceiling once client-side encoding is cheap, for an honest comparison.
    print(f"  raw COPY, bulk-encoded {bulk:>8,.0f} readings/s  ({bulk / baseline:.2f} of baseline)")
    mib = 2**20
    print(f"  1 worker, sustained  {one:>10,.0f} readings/s  ratio {one / baseline:.2f}", end="")
    print(f" ({one / bulk:.2f} of bulk)", end="")
    print(f"  peak RSS {rss1 / mib:.0f} MiB")
    two, _, rss2 = run(admin, mqtt_url, fleet(), 2, None)
    print(f"  2 workers, sustained {two:>10,.0f} readings/s  ratio {two / baseline:.2f}", end="")
    print(f" ({two / bulk:.2f} of bulk)", end="")
    print(f"  peak RSS {rss2 / mib:.0f} MiB (largest worker)")
    half_rate = one / 2 / per_batch / args.gateways  # batches/s per gateway
    _, lat, _ = run(admin, mqtt_url, fleet(), 1, half_rate)
    p50, p95, p99 = (pct(lat, q) * 1000 for q in (50, 95, 99))
    print(f"  latency publish->ack at {one / 2:,.0f} readings/s:", end="")
    print(f" p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms ({len(lat)} batches)")


def _rows(gw: Gateway) -> Iterator[Row]:
    """The same readings as rows, for the raw COPY baseline (meter ids as small integers)."""
    index = {m: i for i, m in enumerate(gw.meters)}
    offset = int(gw.code.removeprefix("gwb")) * METERS_PER_GATEWAY
    from contracts.wire import decode_batch  # noqa: PLC0415

    for _, payload in gw.payloads:
        batch = decode_batch(payload, topic_gateway_id=gw.code, now=dt.datetime.now(dt.UTC)).batch
        for r in batch.readings:
            yield (
                offset + index[r.meter_id],
                r.channel,
                r.ts,
                r.value,
                "good",
                "live",
                1,
                batch.boot_id,
                r.seq,
            )


if __name__ == "__main__":
    main()
