"""A simulated Modbus meter: a device profile plus a source of engineering values.

Registers are encoded on every read with the profile's own formats (the same code the gateway
decodes with), so a simulator cannot disagree with the map it claims to implement. Counters
wrap at the register's modulus, as the hardware does; NaN values encode the channel's
sentinel. Reads of addresses the profile does not answer get exception 0x02 (also when only
part of the read is unmapped). No I/O here: transports.py carries the replies.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Literal, Protocol, runtime_checkable

from gateway_agent.profiles import ChannelSpec, IdentitySpec, Profile
from gateway_agent.registers import (
    EncodeError,
    Format,
    encode_raw,
    encode_sentinel,
    raw_bounds,
    to_raw,
)
from simulators.modbus.frames import ExceptionCode


class FaultRecord(Protocol):
    """A fault as an object (simulators.faults.DeviceFault has this shape)."""

    @property
    def kind(self) -> str: ...
    @property
    def delay_s(self) -> float: ...
    @property
    def exception_code(self) -> int | None: ...


Fault = Literal["no_response", "busy"] | tuple[Literal["slow"], float] | FaultRecord | None
Clock = Callable[[], datetime]


class ValueSource(Protocol):
    """Engineering values per channel for one meter at one instant."""

    def values(self, meter_id: str, t: datetime) -> Mapping[str, float]: ...


@runtime_checkable
class FaultSource(Protocol):
    """Optional hook: how the device misbehaves at instant `t` (None: it does not)."""

    def device_fault(self, meter_id: str, t: datetime) -> Fault: ...


@runtime_checkable
class SerialSource(Protocol):
    """Optional hook: the serial number in service at `t` (changes at a meter replacement)."""

    def serial(self, meter_id: str, t: datetime) -> int: ...


def _fault_parts(fault: Fault) -> tuple[str, float, int | None]:
    """(kind, extra delay, exception code) of a fault in either form."""
    if isinstance(fault, str):
        return fault, 0.0, None
    if isinstance(fault, tuple):
        return fault[0], float(fault[1]), None
    assert fault is not None
    return fault.kind, float(fault.delay_s), fault.exception_code


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Reply:
    """What a device answers: register words, an exception code, or nothing; after `delay` s."""

    words: tuple[int, ...] | None = None
    exception: int | None = None
    delay: float = 0.0

    @property
    def silent(self) -> bool:
        return self.words is None and self.exception is None


SILENT = Reply()


@dataclass(frozen=True, slots=True)
class StaticValues:
    """A value source that always reports the same values (tests, benchmarks)."""

    table: Mapping[str, float]

    def values(self, meter_id: str, t: datetime) -> Mapping[str, float]:
        return self.table


def _encode_value(value: float, fmt: Format, raw_modulus: int | None) -> tuple[int, ...]:
    """Encode as the device would store it: wrap counters, saturate what does not fit."""
    if math.isnan(value):
        return encode_sentinel(fmt)
    low, high = raw_bounds(fmt.dtype)
    try:
        raw = to_raw(value, fmt)
    except EncodeError:  # +-inf
        raw = high if value > 0 else low
    if raw_modulus is not None and not fmt.dtype.is_float:
        raw = int(raw) % raw_modulus
    raw = min(max(raw, low), high)
    if not fmt.dtype.is_float:
        raw = int(raw)
    return encode_raw(raw, fmt)


@dataclass(frozen=True, slots=True)
class _Slot:
    start: int
    count: int
    key: str
    fmt: Format
    raw_modulus: int | None
    identity: bool


class RegisterImage:
    """Where each channel and identity register sits, per function code, for fast rendering."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        slots: dict[int, list[_Slot]] = {3: [], 4: []}
        for spec in profile.registers():
            if isinstance(spec, ChannelSpec):
                slot = _Slot(
                    spec.address, spec.count, spec.channel, spec.fmt, spec.raw_modulus, False
                )
            else:
                assert isinstance(spec, IdentitySpec)
                slot = _Slot(spec.address, spec.count, spec.name, spec.fmt, None, True)
            slots[spec.function].append(slot)
        self._slots = {fc: sorted(s, key=lambda x: x.start) for fc, s in slots.items()}
        self._starts = {fc: [s.start for s in self._slots[fc]] for fc in self._slots}

    def render(
        self,
        function: int,
        address: int,
        count: int,
        values: Mapping[str, float],
        identity: Mapping[str, float],
    ) -> tuple[int, ...]:
        """The words of [address, address+count); unmapped readable words are 0."""
        words = [0] * count
        slots, starts = self._slots[function], self._starts[function]
        end = address + count
        i = max(bisect.bisect_right(starts, address) - 1, 0)
        while i < len(slots) and slots[i].start < end:
            slot = slots[i]
            i += 1
            if slot.start + slot.count <= address:
                continue
            if slot.identity:
                value = values.get(slot.key, identity.get(slot.key, 0.0))
            else:
                value = values.get(slot.key, 0.0)
            encoded = _encode_value(value, slot.fmt, slot.raw_modulus)
            lo = max(slot.start, address)
            hi = min(slot.start + slot.count, end)
            words[lo - address : hi - address] = encoded[lo - slot.start : hi - slot.start]
        return tuple(words)


@cache
def register_image(profile: Profile) -> RegisterImage:
    """One image per profile, shared by every device of that model."""
    return RegisterImage(profile)


class SimulatedDevice:
    """One meter behind a unit id: answers reads from its value source at the clock's time."""

    def __init__(
        self,
        profile: Profile,
        meter_id: str,
        source: ValueSource,
        *,
        clock: Clock = utc_now,
        serial_number: int = 0,
        identity: Mapping[str, float] | None = None,
        faults: FaultSource | None = None,
        latency: float = 0.0,
    ) -> None:
        self.profile = profile
        self.meter_id = meter_id
        self.source = source
        self.clock = clock
        self.latency = latency
        self.faults = (
            faults if faults is not None else (source if isinstance(source, FaultSource) else None)
        )
        self.identity: dict[str, float] = {n: s.default for n, s in profile.identity.items()}
        if "serial_number" in profile.identity:
            self.identity["serial_number"] = float(serial_number)
        self.identity.update(identity or {})
        self._image = register_image(profile)
        serial = profile.identity.get("serial_number")
        self._serial_at = (serial.function, serial.address, serial.count) if serial else None
        self._serials = source if isinstance(source, SerialSource) else None

    def read(self, function: int, address: int, count: int) -> Reply:
        t = self.clock()
        delay = self.latency
        if self.faults is not None:
            fault = self.faults.device_fault(self.meter_id, t)
            if fault is not None:
                kind, extra, code = _fault_parts(fault)
                if kind == "no_response":
                    return SILENT
                if kind == "busy":
                    return Reply(exception=code or ExceptionCode.DEVICE_BUSY, delay=delay)
                delay += extra
        if not self.profile.answers(function, address, count):
            return Reply(exception=ExceptionCode.ILLEGAL_DATA_ADDRESS, delay=delay)
        values = self.source.values(self.meter_id, t)
        identity: Mapping[str, float] = self.identity
        if self._serials is not None and self._touches_serial(function, address, count):
            identity = {**identity, "serial_number": float(self._serials.serial(self.meter_id, t))}
        words = self._image.render(function, address, count, values, identity)
        return Reply(words=words, delay=delay)

    def _touches_serial(self, function: int, address: int, count: int) -> bool:
        if self._serial_at is None:
            return False
        fc, start, n = self._serial_at
        return fc == function and address < start + n and start < address + count
