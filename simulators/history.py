"""Readings history of a planned fleet over days or years, vectorised, with its ledger.

    run = History(plan, days=7, interval_s=900)
    run.write("readings.parquet", progress=print)     # + .faults/.meters/.weather files

Meters are evaluated in batches (see `simulators.fleet`) over week-long blocks of one-minute
steps; each (batch, week) becomes one frame of readings, streamed to Parquet. A `Fleet` built
from the same plan reports the same values at the same instants.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Full, Queue
from typing import Any, Final

import numpy as np
import polars as pl

from contracts.channels import CHANNELS
from simulators import physics as ph
from simulators.catalogue import PROFILES
from simulators.faults import Q_COMM, params_json
from simulators.fleet import BATCH_SIZE, Sample, _Batch, make_batches
from simulators.ledger import (
    FAULTS_SCHEMA,
    METERS_SCHEMA,
    UNIT_NAMES,
    WEATHER_SCHEMA,
    LedgerPaths,
    readings_schema,
    write_frame,
    write_readings,
)
from simulators.scenario import Plan
from simulators.weather import weather_at, weather_key

CHUNK_MINUTES: Final = 7 * 1440
WORKERS: Final = min(2, os.cpu_count() or 1)  # generator threads; the writer has its own
_CHANNEL_CODE: Final = {name: i for i, name in enumerate(CHANNELS)}
_UNIT_CODE: Final = {name: i for i, name in enumerate(UNIT_NAMES)}

Progress = Callable[[int, int], None]  # (readings done, readings total)


@dataclass(frozen=True, slots=True)
class Summary:
    readings: int
    meters: int
    faults: int
    paths: LedgerPaths


def _put(queue: Queue[object], item: object, stop: threading.Event) -> bool:
    """Put unless the consumer has gone away; False when it has."""
    while not stop.is_set():
        try:
            queue.put(item, timeout=0.1)
        except Full:
            continue
        return True
    return False


class History:
    """A history run: `plan` from its start for `days` days, one reading per channel every
    `interval_s` seconds."""

    def __init__(
        self,
        plan: Plan,
        days: float,
        interval_s: int,
        chunk_minutes: int = CHUNK_MINUTES,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval must be positive")
        if days <= 0:
            raise ValueError("days must be positive")
        self.plan = plan
        self.interval_s = interval_s
        self.end = plan.start + round(days * 86400)
        count = math.ceil((self.end - plan.start) / interval_s)
        self.times = plan.start + np.arange(count, dtype=np.int64) * interval_s
        self.chunk_minutes = chunk_minutes
        self.batches = make_batches(plan, batch_size)
        self.meter_ids = [m.meter_id for m in plan.meters]
        self._meter_code = {m: i for i, m in enumerate(self.meter_ids)}
        self.schema = readings_schema(self.meter_ids)

    @property
    def total_readings(self) -> int:
        per_instant = sum(len(PROFILES[m.profile].channels) for m in self.plan.meters)
        return per_instant * int(self.times.size)

    # -- readings -----------------------------------------------------------------------------

    def samples(self) -> Iterator[tuple[_Batch, Sample]]:
        """(batch, sample) per (batch, block), in file order."""
        for batch in self.batches:
            yield from self._batch_samples(batch)

    def _batch_samples(self, batch: _Batch) -> Iterator[tuple[_Batch, Sample]]:
        span = self.chunk_minutes * ph.FINE_S
        blocks = math.ceil((self.end - self.plan.start) / span)
        for index in range(blocks):
            lo = self.plan.start + index * span
            hi = min(lo + span, self.end)
            i0, i1 = np.searchsorted(self.times, [lo, hi])
            if i0 == i1:
                continue
            t = self.times[i0:i1].astype(np.float64)
            blk = None
            if batch.kind != "weather":
                blk = batch.block(index, self.chunk_minutes)
            yield batch, batch.sample(blk, t)

    def frame(self, batch: _Batch, sample: Sample) -> pl.DataFrame:
        rows, channels, instants = sample.value.shape
        # Enum columns take their physical width (UInt16 up to 65,535 meters): no conversion.
        width = np.uint16 if len(self.meter_ids) < 65_536 else np.uint32
        meters = np.asarray([self._meter_code[m.meter_id] for m in batch.meters], width)
        chan = np.asarray([_CHANNEL_CODE[c] for c in sample.channels], dtype=np.uint8)
        unit = np.asarray([_UNIT_CODE[CHANNELS[c].unit] for c in sample.channels], np.uint8)
        ts = np.rint(sample.ts * 1e6).astype(np.int64)
        shape = (rows, channels, instants)
        value = sample.value.reshape(-1)
        quality = sample.quality.reshape(-1)
        schema = self.schema
        df = pl.DataFrame(
            {
                "meter_id": np.repeat(meters, channels * instants),
                "channel": np.tile(np.repeat(chan, instants), rows),
                "ts": pl.Series(np.broadcast_to(ts[:, None, :], shape).reshape(-1)).cast(
                    schema["ts"]
                ),
                "value": value,
                "unit": np.tile(np.repeat(unit, instants), rows),
                "quality": quality,
                "true_value": sample.true_value.reshape(-1),
            }
        ).with_columns(
            pl.col(name).cat.to(schema[name]) for name in ("meter_id", "channel", "unit", "quality")
        )
        silent = quality == Q_COMM
        if silent.any():
            df = df.with_columns(
                pl.when(pl.Series(silent)).then(None).otherwise(pl.col("value")).alias("value")
            )
        return df

    def frames(self, progress: Progress | None = None, workers: int = 1) -> Iterator[pl.DataFrame]:
        """Reading frames in file order. With workers > 1, batches are generated in that many
        threads (numpy and polars release the GIL for their array work); the order of the
        frames, and so the file, does not depend on it."""
        done, total = 0, self.total_readings
        source = self._frames_serial() if workers <= 1 else self._frames_threaded(workers)
        for df in source:
            done += df.height
            if progress is not None:
                progress(done, total)
            yield df

    def _frames_serial(self) -> Iterator[pl.DataFrame]:
        for batch, sample in self.samples():
            yield self.frame(batch, sample)

    def _frames_threaded(self, workers: int) -> Iterator[pl.DataFrame]:
        """Worker w builds batches w, w + workers, ...; frames are taken batch by batch."""
        end = object()
        queues: list[Queue[object]] = [Queue(maxsize=3) for _ in range(workers)]
        stop = threading.Event()

        def work(w: int) -> None:
            try:
                for batch in self.batches[w::workers]:
                    for b, sample in self._batch_samples(batch):
                        if not _put(queues[w], self.frame(b, sample), stop):
                            return
                    if not _put(queues[w], end, stop):
                        return
            except BaseException as exc:  # noqa: BLE001 - re-raised by the consumer
                _put(queues[w], exc, stop)

        threads = [
            threading.Thread(target=work, args=(w,), name=f"history-{w}", daemon=True)
            for w in range(workers)
        ]
        for thread in threads:
            thread.start()
        try:
            for i in range(len(self.batches)):
                queue = queues[i % workers]
                while (item := queue.get()) is not end:
                    if isinstance(item, BaseException):
                        raise item
                    assert isinstance(item, pl.DataFrame)
                    yield item
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    # -- the rest of the ledger ---------------------------------------------------------------

    def weather_frame(self) -> pl.DataFrame:
        parts = []
        ts = pl.Series(self.times * 1_000_000).cast(pl.Datetime("us", "UTC"))
        for project in self.plan.projects.values():
            key = weather_key(self.plan.seed, project.id)
            temp, rh = weather_at(project.climate, key, project.time_zone, self.times)
            parts.append(
                pl.DataFrame(
                    {
                        "project": [project.id] * self.times.size,
                        "ts": ts,
                        "temperature_c": temp,
                        "relative_humidity_pct": rh,
                    },
                    schema=WEATHER_SCHEMA,
                )
            )
        return pl.concat(parts)

    def _closing(self, meter_id: str, at: int) -> dict[str, float]:
        """Register readings just before a seam at `at` (as the meter displays them)."""
        for batch in self.batches:
            if (meter_id, at) in batch.closings:
                meter = self.plan.by_id[meter_id]
                profile = PROFILES[meter.profile]
                out = {}
                for channel, value in batch.closings[(meter_id, at)].items():
                    modulus = meter.modulus.get(channel)
                    v = value % modulus if modulus else value
                    res = profile.resolution.get(channel, "f32")
                    out[channel] = float(ph.quantise(np.asarray([v]), res)[0])
                return out
        return {}

    def fault_rows(self) -> list[dict[str, Any]]:
        """Ledger rows of the run (complete once the readings have been generated)."""
        rows: list[dict[str, Any]] = []
        for f in self.plan.faults:
            if f.kind == "rollover" or not f.overlaps(self.plan.start, self.end):
                continue
            params = dict(f.params)
            if f.kind in ("reset", "replacement"):
                seam = f.start if f.kind == "reset" else f.downtime_end
                params["closing"] = self._closing(f.meter_id, seam)
            if f.kind == "slow":
                params["times_out"] = float(params["delay_ms"]) / 1000.0 >= (
                    self.plan.gateway_timeout_s
                )
            rows.append(
                {
                    "meter_id": f.meter_id,
                    "kind": f.kind,
                    "start": f.start * 1_000_000,
                    "end": None if f.end is None else f.end * 1_000_000,
                    "params": params_json(params),
                }
            )
        rollover = {
            (f.meter_id, str(f.params["channel"])): f
            for f in self.plan.faults
            if f.kind == "rollover"
        }
        for batch in self.batches:
            for wrap in batch.wraps.values():
                if not self.plan.start <= wrap.at < self.end:
                    continue
                wrap_params: dict[str, Any] = {"channel": wrap.channel, "modulus": wrap.modulus}
                configured = rollover.get((wrap.meter_id, wrap.channel))
                wrap_params["configured"] = configured is not None
                if configured is not None:
                    wrap_params["start_value"] = configured.params["start_value"]
                at = round(wrap.at * 1e6)
                rows.append(
                    {
                        "meter_id": wrap.meter_id,
                        "kind": "rollover",
                        "start": at,
                        "end": at,
                        "params": params_json(wrap_params),
                    }
                )
        rows.sort(key=lambda r: (r["start"], r["meter_id"], r["kind"]))
        return rows

    def faults_frame(self) -> pl.DataFrame:
        rows = self.fault_rows()
        df = pl.DataFrame(
            {
                "meter_id": [r["meter_id"] for r in rows],
                "kind": [r["kind"] for r in rows],
                "start": pl.Series([r["start"] for r in rows], dtype=pl.Int64),
                "end": pl.Series([r["end"] for r in rows], dtype=pl.Int64),
                "params": [r["params"] for r in rows],
            },
            schema_overrides={"meter_id": pl.String, "kind": pl.String, "params": pl.String},
        )
        return df.with_columns(
            pl.col("start").cast(FAULTS_SCHEMA["start"]), pl.col("end").cast(FAULTS_SCHEMA["end"])
        ).select(list(FAULTS_SCHEMA))

    def meters_frame(self) -> pl.DataFrame:
        statics = {}
        for batch in self.batches:
            for row, m in enumerate(batch.meters):
                statics[m.meter_id] = {c: float(v[row]) for c, v in batch.static.openings.items()}
        records = []
        for m in self.plan.meters:
            profile = PROFILES[m.profile]
            replacements = []
            for f in self.plan.faults_of(m.meter_id):
                if f.kind != "replacement" or not f.overlaps(self.plan.start, self.end):
                    continue
                closing = self._closing(m.meter_id, f.downtime_end)
                for channel in profile.counters:
                    replacements.append(
                        {
                            "at": f.downtime_end * 1_000_000,
                            "old_serial": int(f.params["old_serial"]),
                            "new_serial": int(f.params["new_serial"]),
                            "channel": channel,
                            "closing": closing.get(channel),
                            "opening": float(f.params["opening"][channel]),
                        }
                    )
            records.append(
                {
                    "meter_id": m.meter_id,
                    "project": m.project,
                    "building": m.building,
                    "kind": m.kind,
                    "profile": m.profile,
                    "load": m.load,
                    "occupancy": m.occupancy,
                    "time_zone": self.plan.projects[m.project].time_zone,
                    "transport": m.transport,
                    "bus": m.bus,
                    "unit_id": m.unit_id,
                    "serial": m.serial,
                    "channels": list(profile.channels),
                    "counters": [
                        {
                            "channel": c,
                            "opening": statics[m.meter_id][c],
                            "modulus": m.modulus.get(c),
                        }
                        for c in profile.counters
                    ],
                    "replacements": replacements,
                }
            )
        raw_schema = dict(METERS_SCHEMA)
        raw_schema["replacements"] = pl.List(
            pl.Struct(
                {
                    "at": pl.Int64,
                    "old_serial": pl.Int64,
                    "new_serial": pl.Int64,
                    "channel": pl.String,
                    "closing": pl.Float64,
                    "opening": pl.Float64,
                }
            )
        )
        df = pl.DataFrame(records, schema=raw_schema)
        return df.with_columns(pl.col("replacements").cast(METERS_SCHEMA["replacements"]))

    def write(
        self, out: str | Path, progress: Progress | None = None, workers: int = WORKERS
    ) -> Summary:
        """Write readings (streamed) and the ledger files beside them."""
        paths = LedgerPaths.beside(out)
        paths.readings.parent.mkdir(parents=True, exist_ok=True)
        write_readings(lambda: self.frames(progress, workers), self.schema, paths.readings)
        faults = self.faults_frame()
        write_frame(faults, paths.faults)
        write_frame(self.meters_frame(), paths.meters)
        write_frame(self.weather_frame(), paths.weather)
        return Summary(self.total_readings, len(self.meter_ids), faults.height, paths)

    def collect(self) -> pl.DataFrame:
        """All readings in memory (tests and small runs)."""
        frames = list(self.frames())
        return pl.concat(frames) if frames else pl.DataFrame(schema=self.schema)
