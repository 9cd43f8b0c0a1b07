"""JSON paths and meter timestamps shared by ingest and the gateway agent."""

from __future__ import annotations

import datetime as dt

import pytest

from contracts.meter_json import lookup, parse_path, timestamp

DOC = {"a": {"b": [10, {"c": 3.5}]}, "list": [[1, 2], [3]], "0": "zero", "flag": True}


@pytest.mark.parametrize(
    ("path", "value"),
    [("a.b[0]", 10), ("a.b[1].c", 3.5), ("a.b[-1].c", 3.5), ("list[1][0]", 3), ("0", "zero"),
     ("flag", True)],
)  # fmt: skip
def test_lookup_finds_values(path: str, value: object) -> None:
    assert lookup(DOC, path) == value


@pytest.mark.parametrize("path", ["a.x", "a.b[2]", "a.b[-3]", "a.b.c", "flag.x", "list[0][5]"])
def test_lookup_misses_raise_key_error(path: str) -> None:
    with pytest.raises(KeyError):
        lookup(DOC, path)


def test_top_level_list() -> None:
    assert lookup([{"v": 1}], "[0].v") == 1


@pytest.mark.parametrize("path", ["", ".a", "a.", "a..b", "a[x]", "a[0]b", "a[", "a]"])
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        parse_path(path)


@pytest.mark.parametrize(
    ("raw", "zone", "utc"),
    [
        ("2026-03-01T12:00:00", "Asia/Shanghai", dt.datetime(2026, 3, 1, 4, tzinfo=dt.UTC)),
        ("2026-03-01T12:00:00Z", "Asia/Shanghai", dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)),
        ("2026-03-01T12:00:00+01:00", "UTC", dt.datetime(2026, 3, 1, 11, tzinfo=dt.UTC)),
        (1772337600, "Asia/Shanghai", dt.datetime(2026, 3, 1, 4, tzinfo=dt.UTC)),
        (1772337600.5, "UTC", dt.datetime(2026, 3, 1, 4, 0, 0, 500000, tzinfo=dt.UTC)),
        (1772337600000, "UTC", dt.datetime(2026, 3, 1, 4, tzinfo=dt.UTC)),
    ],
)
def test_timestamps(raw: object, zone: str, utc: dt.datetime) -> None:
    assert timestamp(raw, zone) == utc


def test_repeated_local_hour_is_resolved_by_arrival() -> None:
    # Europe/Berlin, 2026-10-25: 02:30 local happens at 00:30 UTC (CEST) and 01:30 UTC (CET).
    first = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC)
    second = dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC)
    raw = "2026-10-25T02:30:00"
    assert timestamp(raw, "Europe/Berlin") == first
    assert timestamp(raw, "Europe/Berlin", near=first + dt.timedelta(seconds=2)) == first
    assert timestamp(raw, "Europe/Berlin", near=second + dt.timedelta(seconds=2)) == second


@pytest.mark.parametrize("raw", [None, True, [], {}, "yesterday", float("nan"), 1e300, ""])
def test_unreadable_timestamps_raise_value_or_type_error(raw: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        timestamp(raw, "UTC")
