"""A decoded value on its way into the outbox, before the outbox numbers it.

The poller and the MQTT-native meter reader produce `Sample`s; the outbox gives each one its
`(boot_id, seq)` and stores it; the forwarder turns stored rows into `contracts.wire.Reading`s.
Keeping the sequence number out of this type means nothing before the outbox can invent one.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2026, 3, 1, tzinfo=UTC)
    >>> s = Sample("P001-E-0001", "energy_import_kwh", t, 12.5, "kWh")
    >>> s.cumulative, s.to_reading(7).seq
    (True, 7)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from contracts.channels import COUNTERS, UNITS
from contracts.wire import Quality, Reading


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one channel of one meter at the instant it was polled (UTC)."""

    meter_id: str
    channel: str
    ts: dt.datetime
    value: float | None
    unit: str
    quality: Quality = "good"
    raw: tuple[int, ...] | None = None  # register words as read, for audit

    @property
    def cumulative(self) -> bool:
        """A counter (energy, volume): thinning keeps totals recoverable from it."""
        return self.channel in COUNTERS

    def to_reading(self, seq: int) -> Reading:
        return Reading(
            meter_id=self.meter_id,
            channel=self.channel,  # type: ignore[arg-type]  # profiles and site files validate channels
            ts=self.ts,
            value=self.value,
            unit=self.unit,
            seq=seq,
            quality=self.quality,
            raw=self.raw,
        )

    @staticmethod
    def comm_error(meter_id: str, channel: str, ts: dt.datetime) -> Sample:
        """The device did not answer: a null value that says so."""
        return Sample(meter_id, channel, ts, None, UNITS[channel], "comm_error")
