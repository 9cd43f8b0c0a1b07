"""PostgreSQL binary COPY encoding of parsed rows, in bulk.

psycopg's `Copy.write_row` calls a dumper per field (the UUID dumper is Python), about 2 µs a
reading here. A flush's rows repeat a handful of values: one boot, gateway and source per
message, a few channel names and qualities, one timestamp per poll cycle. This module packs
each row with one `struct` call for its fixed-width fields and reuses the encoded bytes of the
repeated ones, so the whole flush becomes one buffer for `Copy.write`.

The column order (`COPY_COLUMNS`) puts the fixed-width fields first so that one struct packs
them; it is the same for the staging table and for `readings`, so one buffer serves both.
Binary COPY of an enum column takes the label's bytes, exactly like text, which is why the
staging table can keep `quality` and `source` as text.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from collections.abc import Iterable
from typing import Final

from ingest.parse import Row

COPY_COLUMNS: Final = (
    "meter_id", "ts", "seq", "value", "channel", "quality", "source", "gateway_id", "boot_id",
)  # fmt: skip

SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER: Final = struct.pack(">h", -1)
_NULL: Final = struct.pack(">i", -1)
_PG_EPOCH: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_ONE_US: Final = dt.timedelta(microseconds=1)

# Field count, then meter_id, ts (µs since 2000), seq and value, each with its length word.
_FIXED: Final = struct.Struct(">hiqiqiqid").pack
_FIXED_NULL_VALUE: Final = struct.Struct(">hiqiqiqi").pack  # value NULL (length -1)
_INT8: Final = struct.Struct(">iq").pack
_HEAD: Final = struct.Struct(">hiqiq").pack  # field count, meter_id, ts


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">i", len(data)) + data


def _int8(value: int | None) -> bytes:
    return _NULL if value is None else _INT8(8, value)


def _uuid(value: uuid.UUID | None) -> bytes:
    return _NULL if value is None else struct.pack(">i", 16) + value.bytes


def _micros(ts: dt.datetime) -> int:
    """timestamptz on the wire: microseconds since 2000-01-01 UTC."""
    if ts.tzinfo is None:
        raise ValueError(f"naive timestamp {ts!r}: readings carry UTC instants")
    return (ts - _PG_EPOCH) // _ONE_US


class CopyEncoder:
    """Encodes rows into one binary COPY stream (`COPY_COLUMNS` order).

    Keeps small caches of encoded repeated values across calls (channel names, qualities,
    timestamps); they are bounded so a long-lived worker does not grow.
    """

    _CACHE_LIMIT: Final = 4096

    def __init__(self) -> None:
        self._texts: dict[str, bytes] = {}
        self._micros: dict[dt.datetime, int] = {}

    def encode(self, rows: Iterable[Row]) -> bytes:
        """The complete COPY data, signature and trailer included."""
        out = bytearray(SIGNATURE)
        texts = self._texts
        micros = self._micros
        if len(texts) > self._CACHE_LIMIT:
            texts.clear()
        if len(micros) > self._CACHE_LIMIT:
            micros.clear()
        fixed, fixed_null = _FIXED, _FIXED_NULL_VALUE
        # The last (source, gateway, boot) seen and its encoding: constant within a message,
        # so an identity check per row replaces three encodings.
        last_source: str | None = None
        last_gateway: int | None = None
        last_boot: uuid.UUID | None = None
        tail = b""
        for meter, channel, ts, value, quality, source, gateway, boot, seq in rows:
            us = micros.get(ts)
            if us is None:
                us = micros[ts] = _micros(ts)
            if source is not last_source or gateway != last_gateway or boot is not last_boot:
                last_source, last_gateway, last_boot = source, gateway, boot
                tail = self._cached_text(source) + _int8(gateway) + _uuid(boot)
            if seq is None:  # self-publishing meters: no accounting key
                out += _HEAD(9, 8, meter, 8, us) + _NULL
                out += _NULL if value is None else struct.pack(">id", 8, value)
            elif value is None:
                out += fixed_null(9, 8, meter, 8, us, 8, seq, -1)
            else:
                out += fixed(9, 8, meter, 8, us, 8, seq, 8, value)
            chan = texts.get(channel)
            if chan is None:
                chan = texts[channel] = _text(channel)
            qual = texts.get(quality)
            if qual is None:
                qual = texts[quality] = _text(quality)
            out += chan
            out += qual
            out += tail
        out += TRAILER
        return bytes(out)

    def _cached_text(self, value: str) -> bytes:
        data = self._texts.get(value)
        if data is None:
            data = self._texts[value] = _text(value)
        return data
