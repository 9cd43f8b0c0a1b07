"""The durable outbox: every accepted reading, in SQLite, until ingest's application ack.

A reading is *accepted* once the transaction that appends its poll cycle commits (WAL,
`synchronous=FULL`). Rows are numbered by a global `seq` (AUTOINCREMENT: monotonic across
restarts and never reused) and tagged with the boot that wrote them. Only `ack` deletes
delivered rows, and only the policies below delete undelivered ones, each action logged and
counted.

**Bytes.** The budget bounds the on-disk footprint, database plus WAL:

- `wal_reserve = clamp(budget / 8, 128 KiB, 16 MiB)` is kept for the WAL. After every write
  the WAL is checkpointed and truncated once it passes half the reserve, and
  `journal_size_limit` backs that up, so the WAL stays under the reserve unless a single
  transaction is bigger than half of it (one poll cycle or one ack of a batch).
- `capacity = budget - wal_reserve` bounds the pages in use, `(page_count - freelist_count)
  * page_size`. SQLite reuses free pages before it grows the file, and room is made *before*
  a cycle is inserted (from an estimate of its size), so the database file stays under the
  capacity plus at most one cycle's pages when the estimate is short.
- The documented slack is therefore one poll cycle's rows (about 100 bytes each) plus the
  32 KiB `-shm` index file, which is not counted.

**When full** (`OutboxConfig`): counter rows are thinned oldest first (`thinning.Thinner`:
one per series per `thin_keep_s`, totals stay recoverable); if that is not enough,
instantaneous rows follow `instant_policy`: `reject_new` refuses the cycle's instantaneous
samples as soon as the outbox is full (the room thinning makes goes to counters),
`overwrite_oldest` deletes the oldest instantaneous rows. Counters outrank stored
instantaneous values: when thinning cannot make room for a cycle's counters, the oldest
instantaneous rows go under either policy (`overwritten_total`). If nothing is left to give
up, the cycle's remaining samples are refused (`rejected_total`, logged as an error). Fill
warnings fire at 80 % and 95 % of the capacity. Policy deletions commit in their own small
transactions so the WAL stays bounded; the cycle itself is still one transaction.

Thinned and overwritten rows leave holes in the per-boot seq ranges ingest accounts for
(`ingest/accounting.py`) when they fall between batches; `dropped_total` and its parts, which
the status heartbeat carries, are what explains such a hole.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import msgspec

from contracts.wire import Reading
from gateway_agent.clock import Clock, SystemClock
from gateway_agent.sample import Sample
from gateway_agent.site import OutboxConfig
from gateway_agent.thinning import CounterPoint, CounterRow, FillAlarm, Thinner

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 4096
WAL_RESERVE_MIN: Final = 128 * 1024
WAL_RESERVE_MAX: Final = 16 * 1024 * 1024
MIN_CAPACITY: Final = 64 * 1024
# When the policies act, they aim this far below full so they do not run on every cycle.
ROOM_TARGET: Final = 0.97
THIN_CHUNK: Final = 5000  # counter rows examined per thinning transaction, at most
OVERWRITE_CHUNK: Final = 2000  # instantaneous rows deleted per transaction, at most
INITIAL_ROW_BYTES: Final = 128.0
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS boots (
    boot_no INTEGER PRIMARY KEY,
    boot_id BLOB NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    boot_no INTEGER NOT NULL,
    cumulative INTEGER NOT NULL,
    meter_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    value REAL,
    unit TEXT NOT NULL,
    quality TEXT,
    raw BLOB
);
"""
_INSERT: Final = (
    "INSERT INTO readings (seq, boot_no, cumulative, meter_id, channel, ts_us, value, unit,"
    " quality, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT: Final = (
    "SELECT r.seq, b.boot_id, r.meter_id, r.channel, r.ts_us, r.value, r.unit, r.quality,"
    " r.raw FROM readings r JOIN boots b ON b.boot_no = r.boot_no"
)

_raw_encoder: Final = msgspec.json.Encoder()
_raw_decoder: Final = msgspec.json.Decoder(tuple[int, ...])


class OutboxRow(NamedTuple):
    """A stored reading with the boot it belongs to (`reading.seq` is its outbox seq)."""

    boot_id: uuid.UUID
    reading: Reading


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """What became of one poll cycle: `accepted` rows committed (seqs `first_seq..last_seq`),
    `rejected` samples refused by a policy; `thinned`/`overwritten` rows deleted to make room."""

    accepted: int
    rejected: int = 0
    thinned: int = 0
    overwritten: int = 0
    first_seq: int | None = None
    last_seq: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A snapshot for metrics and the status heartbeat (plain numbers, no metrics library)."""

    rows: int
    used_bytes: int  # pages in use in the database
    disk_bytes: int  # database + WAL files on disk
    budget_bytes: int
    capacity_bytes: int  # budget minus the WAL reserve: what `used_bytes` may reach
    fill: float  # used_bytes / capacity_bytes
    oldest_ts: float | None  # unix seconds of the oldest stored reading
    max_seq: int
    appended_total: int
    acked_total: int
    thinned_total: int
    rejected_total: int
    overwritten_total: int
    dropped_total: int  # every undelivered row given up: thinned + rejected + overwritten
    warnings_total: int
    warning_levels: tuple[float, ...]  # fill levels currently reached (0.8, 0.95)
    policy_actions_total: int
    last_policy_action_at: float | None  # unix seconds (the outbox's clock)


class Outbox:
    """SQLite store-and-forward queue; synchronous, thread-safe (one connection, one lock)."""

    def __init__(
        self, config: OutboxConfig, *, boot_id: uuid.UUID, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.boot_id = boot_id
        self._clock = clock or SystemClock()
        self.budget_bytes = int(config.budget_bytes)
        self.wal_reserve = min(max(self.budget_bytes // 8, WAL_RESERVE_MIN), WAL_RESERVE_MAX)
        self.capacity_bytes = self.budget_bytes - self.wal_reserve
        if self.capacity_bytes < MIN_CAPACITY:
            raise ValueError(
                f"outbox budget {self.budget_bytes} B leaves {self.capacity_bytes} B after the"
                f" {self.wal_reserve} B WAL reserve; need at least {MIN_CAPACITY} B"
            )
        self.path = config.path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            config.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._init_db()
        self._thinner = Thinner(config.thin_keep_s)
        self._thin_cursor = 0  # counter rows up to here have been through the thinner
        self._alarm = FillAlarm()
        self._row_bytes = INITIAL_ROW_BYTES
        self.appended_total = 0
        self.acked_total = 0
        self.thinned_total = 0
        self.rejected_total = 0
        self.overwritten_total = 0
        self.warnings_total = 0
        self.policy_actions_total = 0
        self.last_policy_action_at: float | None = None
        with self._lock:
            self._rows = int(self._conn.execute("SELECT count(*) FROM readings").fetchone()[0])
            self._check_fill()  # a reopened outbox that is already filling up says so

    # -- setup ------------------------------------------------------------------------------

    def _init_db(self) -> None:
        c = self._conn
        c.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only takes effect on a new file
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"outbox {self.path}: cannot enable WAL (journal_mode={mode})")
        c.execute("PRAGMA synchronous = FULL")
        # Our own checkpoint after each write bounds the WAL; these are the backstops.
        c.execute(f"PRAGMA journal_size_limit = {self.wal_reserve // 2}")
        c.execute(f"PRAGMA wal_autocheckpoint = {max(self.wal_reserve // 2 // PAGE_SIZE, 8)}")
        c.executescript(_SCHEMA)
        page_size = int(c.execute("PRAGMA page_size").fetchone()[0])
        if page_size != PAGE_SIZE:
            raise RuntimeError(f"outbox {self.path}: page size {page_size}, want {PAGE_SIZE}")
        with self._write():
            c.execute("INSERT OR IGNORE INTO boots (boot_id) VALUES (?)", (self.boot_id.bytes,))
            row = c.execute(
                "SELECT boot_no FROM boots WHERE boot_id = ?", (self.boot_id.bytes,)
            ).fetchone()
        self._boot_no = int(row[0])
        found = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        self._max_seq = int(found[0]) if found else 0

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE, COMMIT, or ROLLBACK on any exception."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    # -- measuring --------------------------------------------------------------------------

    def _used_bytes(self) -> int:
        pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * PAGE_SIZE

    def _fill(self) -> float:
        return self._used_bytes() / self.capacity_bytes

    def _disk_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(self.path + suffix).st_size
        return total

    def _bound_wal(self) -> None:
        try:
            wal = os.stat(self.path + "-wal").st_size
        except FileNotFoundError:
            return
        if wal > self.wal_reserve // 2:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _after_write(self) -> None:
        self._bound_wal()
        self._check_fill()

    def _check_fill(self) -> None:
        fill = self._fill()
        for level in self._alarm.update(fill):
            self.warnings_total += 1
            log.warning(
                "outbox %.0f%% full (%d of %d bytes, %d rows): thinning and %s follow at 100%%",
                level * 100,
                int(fill * self.capacity_bytes),
                self.capacity_bytes,
                self._rows,
                self.config.instant_policy,
            )

    # -- writing ----------------------------------------------------------------------------

    def append(self, samples: Sequence[Sample]) -> AppendOutcome:
        """Store one poll cycle in one transaction; the samples are accepted once it commits.

        Makes room first when the cycle would not fit (see the module docstring); refused
        samples are counted in the outcome, never silently lost.
        """
        if not samples:
            return AppendOutcome(0)
        with self._lock:
            need = int(self._row_bytes * len(samples))
            keep: Sequence[Sample] = samples
            rejected = thinned = overwritten = 0
            before = self._used_bytes()
            if before + need > self.capacity_bytes:
                keep, thinned, overwritten = self._make_room(samples, need)
                rejected = len(samples) - len(keep)
                before = self._used_bytes()
            if not keep:
                self._after_write()
                return AppendOutcome(0, rejected, thinned, overwritten)
            first = self._max_seq + 1
            # A cycle shares one timestamp (or a few): convert each distinct one once.
            micros: dict[dt.datetime, int] = {}
            boot_no = self._boot_no
            rows = [
                (
                    first + i,
                    boot_no,
                    1 if s.cumulative else 0,
                    s.meter_id,
                    s.channel,
                    micros.get(s.ts) or micros.setdefault(s.ts, _micros(s.ts)),
                    s.value,
                    s.unit,
                    None if s.quality == "good" else s.quality,
                    None if s.raw is None else _raw_encoder.encode(s.raw),
                )
                for i, s in enumerate(keep)
            ]
            with self._write() as c:
                c.executemany(_INSERT, rows)
            self._max_seq = first + len(rows) - 1
            self._rows += len(rows)
            self.appended_total += len(rows)
            grown = self._used_bytes() - before
            if len(rows) >= 100 and grown > 0:
                # Learn the real cost per row (pages, not payload), never below the start.
                self._row_bytes = max(self._row_bytes * 0.8 + 0.2 * grown / len(rows), 64.0)
            self._after_write()
            return AppendOutcome(len(rows), rejected, thinned, overwritten, first, self._max_seq)

    def _make_room(self, samples: Sequence[Sample], need: int) -> tuple[Sequence[Sample], int, int]:
        """Apply the configured policies until `need` bytes fit; returns what may be stored."""
        target = int(self.capacity_bytes * ROOM_TARGET)
        overwritten = 0
        keep: Sequence[Sample] = samples
        if self.config.instant_policy == "reject_new":
            # Full: this cycle's instantaneous values are refused; room made by thinning goes
            # to its counters. Once thinning has brought the fill back under the target, the
            # next cycles are accepted whole again.
            keep = [s for s in samples if s.cumulative]
            refused = len(samples) - len(keep)
            if refused:
                self.rejected_total += refused
                self._policy_acted()
                log.warning(
                    "outbox full: policy reject_new refused %d instantaneous readings", refused
                )
            need = int(self._row_bytes * len(keep))
            if not keep:
                return keep, 0, 0
        thinned = self._thin_until(target - need)
        if self._used_bytes() + need > self.capacity_bytes:
            # overwrite_oldest: the oldest instantaneous rows make room for the cycle. Under
            # reject_new only counters are left in `keep`: they outrank stored instantaneous
            # values (billing depends on them), so those make room for them too.
            overwritten = self._overwrite_until(target - need)
        if keep and self._used_bytes() + need > self.capacity_bytes:
            # Nothing left to give up: refuse the cycle, loudly.
            self.rejected_total += len(keep)
            self._policy_acted()
            log.error(
                "outbox exhausted: %d bytes used of %d after thinning and %s; refused %d"
                " readings of this cycle",
                self._used_bytes(),
                self.capacity_bytes,
                self.config.instant_policy,
                len(keep),
            )
            keep = []
        return keep, thinned, overwritten

    def _policy_acted(self) -> None:
        self.policy_actions_total += 1
        self.last_policy_action_at = self._clock.now()

    def _delete(self, seqs: Sequence[int]) -> int:
        with self._write() as c:
            deleted = c.executemany(
                "DELETE FROM readings WHERE seq = ?", [(s,) for s in seqs]
            ).rowcount
        self._rows -= deleted
        self._bound_wal()
        return deleted

    def _thin_until(self, goal: int) -> int:
        """Thin counter rows oldest first, a chunk per transaction, until used <= goal."""
        total = 0
        while (used := self._used_bytes()) > goal:
            # Examine about as many rows as must go: most of them will (a few are kept per
            # bucket), and a small chunk keeps the fill from swinging far below the goal.
            size = min(max(int((used - goal) / self._row_bytes) + 1, 256), THIN_CHUNK)
            chunk = self._conn.execute(
                "SELECT seq, meter_id, channel, ts_us, value FROM readings"
                " WHERE cumulative = 1 AND seq > ? ORDER BY seq LIMIT ?",
                (self._thin_cursor, size),
            ).fetchall()
            if not chunk:
                break
            self._thin_cursor = int(chunk[-1][0])
            drop = self._thinner.thin(
                CounterRow(m, ch, CounterPoint(int(seq), ts / 1e6, v))
                for seq, m, ch, ts, v in chunk
            )
            if drop:
                deleted = self._delete(drop)
                total += deleted
        if total:
            self.thinned_total += total
            self._policy_acted()
            log.warning(
                "outbox full: thinned %d counter readings (one per series per %.0f s kept)",
                total,
                self.config.thin_keep_s,
            )
        return total

    def _overwrite_until(self, goal: int) -> int:
        """Delete the oldest instantaneous rows, a chunk per transaction, until used <= goal."""
        total = 0
        while self._used_bytes() > goal:
            # Roughly the rows that free the missing bytes, at least one page's worth.
            missing = self._used_bytes() - goal
            count = min(max(int(missing / self._row_bytes) + 1, 32), OVERWRITE_CHUNK)
            seqs = [
                int(r[0])
                for r in self._conn.execute(
                    "SELECT seq FROM readings WHERE cumulative = 0 ORDER BY seq LIMIT ?",
                    (count,),
                )
            ]
            if not seqs:
                break
            total += self._delete(seqs)
        if total:
            self.overwritten_total += total
            self._policy_acted()
            log.warning(
                "outbox full: policy %s deleted the %d oldest instantaneous readings%s",
                self.config.instant_policy,
                total,
                " to make room for counters" if self.config.instant_policy == "reject_new" else "",
            )
        return total

    # -- reading and acking -----------------------------------------------------------------

    def read(self, after_seq: int, limit: int, upto_seq: int | None = None) -> list[OutboxRow]:
        """Up to `limit` rows with `after_seq < seq (<= upto_seq)`, in seq order."""
        with self._lock:
            if upto_seq is None:
                cur = self._conn.execute(
                    f"{_SELECT} WHERE r.seq > ? ORDER BY r.seq LIMIT ?", (after_seq, limit)
                )
            else:
                cur = self._conn.execute(
                    f"{_SELECT} WHERE r.seq > ? AND r.seq <= ? ORDER BY r.seq LIMIT ?",
                    (after_seq, upto_seq, limit),
                )
            fetched = cur.fetchall()
        boots: dict[bytes, uuid.UUID] = {}
        out: list[OutboxRow] = []
        for seq, boot, meter, channel, ts_us, value, unit, quality, raw in fetched:
            boot_id = boots.get(boot)
            if boot_id is None:
                boot_id = boots[boot] = uuid.UUID(bytes=boot)
            reading = Reading(
                meter,
                channel,
                _EPOCH + dt.timedelta(microseconds=ts_us),
                value,
                unit,
                seq,
                quality or "good",
                None if raw is None else _raw_decoder.decode(raw),
            )
            out.append(OutboxRow(boot_id, reading))
        return out

    def ack(self, boot_id: uuid.UUID, from_seq: int, upto_seq: int) -> int:
        """Delete the rows of `boot_id` with `from_seq <= seq <= upto_seq`; returns how many."""
        with self._lock:
            row = self._conn.execute(
                "SELECT boot_no FROM boots WHERE boot_id = ?", (boot_id.bytes,)
            ).fetchone()
            if row is None:
                return 0
            with self._write() as c:
                cur = c.execute(
                    "DELETE FROM readings WHERE seq >= ? AND seq <= ? AND boot_no = ?",
                    (from_seq, upto_seq, int(row[0])),
                )
                deleted = cur.rowcount
            self._rows -= deleted
            self.acked_total += deleted
            self._after_write()
            return deleted

    # -- introspection ----------------------------------------------------------------------

    def max_seq(self) -> int:
        """The highest seq ever assigned (0 for a new outbox); survives restarts."""
        return self._max_seq

    def rows(self) -> int:
        return self._rows

    def stats(self) -> OutboxStats:
        with self._lock:
            used = self._used_bytes()
            oldest = self._conn.execute(
                "SELECT ts_us FROM readings ORDER BY seq LIMIT 1"
            ).fetchone()
            disk = self._disk_bytes()
            fill = used / self.capacity_bytes
            return OutboxStats(
                rows=self._rows,
                used_bytes=used,
                disk_bytes=disk,
                budget_bytes=self.budget_bytes,
                capacity_bytes=self.capacity_bytes,
                fill=fill,
                oldest_ts=None if oldest is None else oldest[0] / 1e6,
                max_seq=self._max_seq,
                appended_total=self.appended_total,
                acked_total=self.acked_total,
                thinned_total=self.thinned_total,
                rejected_total=self.rejected_total,
                overwritten_total=self.overwritten_total,
                dropped_total=self.thinned_total + self.rejected_total + self.overwritten_total,
                warnings_total=self.warnings_total,
                warning_levels=self._alarm.active(fill),
                policy_actions_total=self.policy_actions_total,
                last_policy_action_at=self.last_policy_action_at,
            )

    def close(self) -> None:
        """Checkpoint the WAL into the database and close."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _micros(ts: dt.datetime) -> int:
    """Exact microseconds since the epoch (float seconds would round)."""
    delta = ts - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def iter_rows(outbox: Outbox, batch: int = 10_000) -> Iterable[OutboxRow]:
    """Every stored row, in seq order (tests and tools)."""
    cursor = 0
    while rows := outbox.read(cursor, batch):
        yield from rows
        cursor = rows[-1].reading.seq
