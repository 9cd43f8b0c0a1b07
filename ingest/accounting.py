"""Sequence accounting per gateway boot: which readings have arrived, where the holes are.

Pure. A gateway numbers its readings 0, 1, 2, ... within one boot; live batches run ahead of
backfill after an outage, so ranges arrive out of order. Keeping them merged makes a hole
(an open gap) visible until the backfill closes it.

    >>> merge_ranges([(0, 9), (20, 29)], [(10, 14), (30, 31)])
    [(0, 14), (20, 31)]
    >>> gaps([(0, 14), (20, 31)])
    [(15, 19)]
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

SeqRange = tuple[int, int]  # inclusive


def merge_ranges(existing: Iterable[SeqRange], new: Iterable[SeqRange]) -> list[SeqRange]:
    """Union of inclusive ranges; touching ranges (9 and 10) merge too."""
    merged: list[SeqRange] = []
    for lo, hi in sorted([*existing, *new]):
        if merged and lo <= merged[-1][1] + 1:
            last_lo, last_hi = merged[-1]
            merged[-1] = (last_lo, max(last_hi, hi))
        else:
            merged.append((lo, hi))
    return merged


def gaps(ranges: list[SeqRange]) -> list[SeqRange]:
    """The holes between merged ranges (not before the first: a boot may start mid-way)."""
    return [(a_hi + 1, b_lo - 1) for (_, a_hi), (b_lo, _) in pairwise(ranges)]
