"""Reading values out of meters' own JSON: paths to values, and the timestamps meters send.

Shared by ingest (meters that publish straight to the central broker) and the gateway agent
(meters that publish to the site's broker), so both read a payload the same way.

A path is keys separated by dots, with `[n]` for a list element (`[-1]` is the last):

    >>> doc = {"ENERGY": {"Total": 12.5}, "sensors": [{"t": 20.1}, {"t": 20.4}]}
    >>> lookup(doc, "ENERGY.Total"), lookup(doc, "sensors[1].t"), lookup(doc, "sensors[-1].t")
    (12.5, 20.4, 20.4)

Timestamps are ISO 8601 strings, with an offset or in the meter's local time (Tasmota sends
`"2026-03-01T12:00:00"`), or unix epoch numbers in seconds or milliseconds:

    >>> timestamp("2026-03-01T12:00:00", "Asia/Shanghai").isoformat()
    '2026-03-01T04:00:00+00:00'
    >>> timestamp(1772337600000, "UTC").isoformat()
    '2026-03-01T04:00:00+00:00'
"""

from __future__ import annotations

import datetime as dt
import math
import re
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo

PathStep = str | int

_SEGMENT: Final = re.compile(r"([^.\[\]]+)?((?:\[-?\d+\])*)")
_INDEX: Final = re.compile(r"\[(-?\d+)\]")
# An epoch number at or above this is milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
_MS_THRESHOLD: Final = 1e11


@lru_cache(maxsize=1024)
def parse_path(path: str) -> tuple[PathStep, ...]:
    """The steps of `path`: keys as str, list indices as int; raises ValueError when malformed.

    >>> parse_path("data.items[2].value")
    ('data', 'items', 2, 'value')
    """
    if not path:
        raise ValueError("empty JSON path")
    steps: list[PathStep] = []
    for segment in path.split("."):
        match = _SEGMENT.fullmatch(segment)
        if not segment or match is None:
            raise ValueError(f"malformed JSON path {path!r} (keys.with.dots and [n] indices)")
        if match.group(1) is not None:
            steps.append(match.group(1))
        steps.extend(int(i) for i in _INDEX.findall(match.group(2)))
    return tuple(steps)


def lookup(doc: Any, path: str | tuple[PathStep, ...]) -> Any:
    """The value at `path` in a decoded JSON document; KeyError when it is not there.

    A malformed path string raises ValueError (validate configured paths with `parse_path`).
    """
    steps = parse_path(path) if isinstance(path, str) else path
    for step in steps:
        if isinstance(step, int):
            if not isinstance(doc, list) or not -len(doc) <= step < len(doc):
                raise KeyError(path)
        elif not isinstance(doc, dict) or step not in doc:
            raise KeyError(path)
        doc = doc[step]
    return doc


def timestamp(raw: Any, zone: str, near: dt.datetime | None = None) -> dt.datetime:
    """An aware UTC datetime from a meter's timestamp; ValueError or TypeError if unreadable.

    `zone` (IANA) places timestamps sent without an offset. A local time that occurs twice
    (the hour repeated when daylight saving ends) is taken as the occurrence nearer to `near`
    (the instant the message arrived) when given, else as the first.
    """
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise TypeError(f"timestamp {raw!r} is neither an ISO 8601 string nor an epoch number")
    if not isinstance(raw, str):
        if not math.isfinite(raw):
            raise ValueError(f"timestamp {raw!r} is not finite")
        seconds = raw / 1000 if abs(raw) >= _MS_THRESHOLD else raw
        try:
            return dt.datetime.fromtimestamp(seconds, dt.UTC)
        except (OverflowError, OSError) as exc:
            raise ValueError(f"epoch timestamp {raw!r} is out of range") from exc
    ts = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if ts.tzinfo is not None:
        return ts.astimezone(dt.UTC)
    tz = ZoneInfo(zone)
    first = ts.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)
    second = ts.replace(tzinfo=tz, fold=1).astimezone(dt.UTC)
    if near is None or first == second:
        return first
    return min((first, second), key=lambda t: abs(t - near))
