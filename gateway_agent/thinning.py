"""What to give up when the outbox is full: pure decisions, no storage.

Cumulative counters (energy, volume) are *thinned*: within a run of one meter's channel, keep
the first sample of every `keep_s` time bucket, the first and the last sample of the run, and
both samples around every decrease (a reset or a modulus wrap). Deleting the others loses
resolution only: consumption over any kept span is still the difference of the counter, so
the sum of consecutive deltas over the kept rows equals last - first of the original run, and
the reset-aware sum is unchanged too because every decrease stays as an adjacent pair.

Buckets are aligned to absolute time (not to the run's start), so thinning an already thinned
run again drops nothing more: a policy that re-scans the outbox after a restart is idempotent.

    >>> pts = [CounterPoint(seq=i, ts=60.0 * i, value=float(i)) for i in range(31)]
    >>> dropped = thin_series(pts, keep_s=900.0)
    >>> len(dropped), sorted(set(range(31)) - dropped)  # one per 15 min kept
    (28, [0, 15, 30])

Fill warnings are edge-triggered with hysteresis (`FillAlarm`): a level is reported once when
the fill crosses it upwards and re-armed only after the fill falls clearly below it again, so
an outbox hovering at 95 % logs one warning, not one per poll cycle.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

WARN_LEVELS: Final = (0.80, 0.95)
# A level re-arms when the fill drops this far below it (fractions of the capacity).
REARM_MARGIN: Final = 0.05


@dataclass(frozen=True, slots=True)
class CounterPoint:
    """One stored counter sample: its outbox seq, time (unix seconds) and value (None: no
    value, e.g. comm_error; such a row never anchors a total)."""

    seq: int
    ts: float
    value: float | None


@dataclass(frozen=True, slots=True)
class CounterRow:
    """A counter sample with the series it belongs to."""

    meter_id: str
    channel: str
    point: CounterPoint


def thin_series(
    points: Sequence[CounterPoint],
    keep_s: float,
    before: CounterPoint | None = None,
    before_valued: CounterPoint | None = None,
) -> set[int]:
    """The seqs to drop from one (meter, channel) run, given in seq (= time) order.

    `before` is the last row of the series kept by an earlier pass (None: `points` starts the
    series, so its first row anchors the total and stays), `before_valued` the last kept row
    with a value (a decrease is detected across passes against it). The newest point always
    stays: it may be the series' latest, which anchors the total at the other end.
    """
    if keep_s <= 0:
        raise ValueError("keep_s must be positive")
    if not points:
        return set()
    keep: set[int] = {points[-1].seq}
    valued = [p for p in points if p.value is not None]
    if valued:
        keep.add(valued[-1].seq)
    if before is None:
        keep.add(points[0].seq)
    if before_valued is None and valued:
        keep.add(valued[0].seq)  # the series' first value anchors its total
    previous = before_valued
    for p in valued:
        if previous is not None and p.value < previous.value:  # type: ignore[operator]
            keep.add(previous.seq)  # a no-op when `previous` is `before` (kept already)
            keep.add(p.seq)
        previous = p
    last_bucket = math.floor(before.ts / keep_s) if before is not None else None
    for p in points:
        bucket = math.floor(p.ts / keep_s)
        if bucket != last_bucket:
            keep.add(p.seq)
            last_bucket = bucket
    return {p.seq for p in points} - keep


class Thinner:
    """Thins counter rows pass by pass, oldest first, remembering where each series stands.

    A pass sees the rows appended since the previous one. Each series' newest row is kept
    provisionally (it may be the latest) and reconsidered in the next pass as an ordinary
    row, so passes of any size end with the same density as one pass over everything. The
    state is two points per series; after a restart it is empty and the first pass treats
    each series' oldest row as its start, which only keeps one row more.
    """

    def __init__(self, keep_s: float) -> None:
        if keep_s <= 0:
            raise ValueError("keep_s must be positive")
        self.keep_s = keep_s
        # (meter, channel) -> (last settled kept row, last settled kept row with a value,
        # provisional newest row)
        self._state: dict[
            tuple[str, str], tuple[CounterPoint | None, CounterPoint | None, CounterPoint]
        ] = {}

    def thin(self, rows: Iterable[CounterRow]) -> list[int]:
        """The seqs to drop among `rows` (in seq order) and earlier provisional rows."""
        series: dict[tuple[str, str], list[CounterPoint]] = defaultdict(list)
        for row in rows:
            series[(row.meter_id, row.channel)].append(row.point)
        drop: set[int] = set()
        for key, new in series.items():
            state = self._state.get(key)
            before, before_valued = (state[0], state[1]) if state else (None, None)
            points = [state[2], *new] if state else new
            dropped = thin_series(points, self.keep_s, before, before_valued)
            drop |= dropped
            kept = [p for p in points if p.seq not in dropped]
            # Settled = kept and older than the tail; the tail is looked at again next pass.
            valued = [p for p in kept[:-1] if p.value is not None]
            self._state[key] = (
                kept[-2] if len(kept) >= 2 else before,
                valued[-1] if valued else before_valued,
                kept[-1],
            )
        return sorted(drop)


def plan_thinning(rows: Iterable[CounterRow], keep_s: float) -> list[int]:
    """The seqs to drop from a slice of the outbox (any mix of series) in one pass, ascending."""
    return Thinner(keep_s).thin(rows)


def counter_delta_sum(values: Sequence[float]) -> float:
    """Sum of consecutive differences (what a consumption query adds up)."""
    return math.fsum(b - a for a, b in itertools.pairwise(values))


def reset_aware_consumption(values: Sequence[float]) -> float:
    """Consumption across resets: a decrease means the counter restarted from zero."""
    return math.fsum((b - a) if b >= a else b for a, b in itertools.pairwise(values))


@dataclass
class FillAlarm:
    """Edge-triggered fill warnings with hysteresis; `update` returns the newly crossed levels."""

    levels: tuple[float, ...] = WARN_LEVELS
    margin: float = REARM_MARGIN
    armed: dict[float, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for level in self.levels:
            self.armed.setdefault(level, True)

    def update(self, fill: float) -> list[float]:
        crossed: list[float] = []
        for level in self.levels:
            if self.armed[level] and fill >= level:
                self.armed[level] = False
                crossed.append(level)
            elif not self.armed[level] and fill < level - self.margin:
                self.armed[level] = True
        return crossed

    def active(self, fill: float) -> tuple[float, ...]:
        """The levels the fill is at or above right now."""
        return tuple(level for level in self.levels if fill >= level)
