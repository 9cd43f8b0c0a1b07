"""Pure encoding and decoding of Modbus register words into engineering values.

A value occupies 1, 2 or 4 sixteen-bit registers. Its bytes are named A (most significant)
to D; the `Order` says how they sit on the wire, as meter manuals and Home Assistant name it:

    ABCD  big-endian, high word first (the Modbus default)
    CDAB  word swap (low word first, bytes within each word big-endian)
    BADC  byte swap within each word
    DCBA  both (fully little-endian)

For 64-bit values the same rule extends: CDAB reverses the word order, BADC swaps the bytes of
each word. `decode` never mutates its input and raises only `DecodeError`; `encode` is its
inverse (used by the simulators) and raises only `EncodeError`. A declared NaN sentinel, or an
IEEE NaN/Inf, decodes to a `Decoded` with `sentinel=True` so the gateway can set quality
`nan_sentinel` instead of storing garbage.

    >>> decode([0x0102, 0x0304], Format(DType.U32, Order.BADC)).value
    33620995.0
    >>> encode(230.0, Format(DType.F32))
    (17254, 0)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import Final


class DecodeError(ValueError):
    """Registers that cannot be turned into a value (count, word range, BCD digit, overflow)."""


class EncodeError(ValueError):
    """A value that the register format cannot hold."""


class DType(StrEnum):
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"
    BCD16 = "bcd16"  # packed BCD, 4 digits in 1 register
    BCD32 = "bcd32"  # 8 digits in 2 registers (DL/T 645 XXXXXX.XX)
    BCD64 = "bcd64"  # 16 digits in 4 registers

    @property
    def words(self) -> int:
        """Registers this type occupies."""
        return _COUNT[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.F32, DType.F64)

    @property
    def is_bcd(self) -> bool:
        return self in (DType.BCD16, DType.BCD32, DType.BCD64)


class Order(StrEnum):
    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


_COUNT: Final = {
    DType.U16: 1, DType.I16: 1, DType.U32: 2, DType.I32: 2, DType.U64: 4, DType.I64: 4,
    DType.F32: 2, DType.F64: 4, DType.BCD16: 1, DType.BCD32: 2, DType.BCD64: 4,
}  # fmt: skip
# struct codes: the value itself, and the unsigned integer of the same width (its bit pattern).
_CODE: Final = {
    DType.U16: "H", DType.I16: "h", DType.U32: "I", DType.I32: "i", DType.U64: "Q",
    DType.I64: "q", DType.F32: "f", DType.F64: "d", DType.BCD16: "H", DType.BCD32: "I",
    DType.BCD64: "Q",
}  # fmt: skip
_BITS_CODE: Final = {1: "H", 2: "I", 4: "Q"}
# (endianness of each packed word, endianness of the value): see the module docstring.
_ENDIAN: Final = {
    Order.ABCD: (">", ">"),
    Order.CDAB: ("<", "<"),
    Order.BADC: ("<", ">"),
    Order.DCBA: (">", "<"),
}


def raw_bounds(dtype: DType) -> tuple[float, float]:
    """Smallest and largest raw number the type holds (floats: the finite range)."""
    if dtype is DType.F32:
        return (-3.4028234663852886e38, 3.4028234663852886e38)
    if dtype is DType.F64:
        return (-math.inf, math.inf)
    if dtype.is_bcd:
        return (0, 10 ** (4 * dtype.words) - 1)
    bits = 16 * dtype.words
    if dtype in (DType.I16, DType.I32, DType.I64):
        return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return (0, (1 << bits) - 1)


@dataclass(frozen=True, slots=True)
class _Codec:
    """Precompiled structs for one (dtype, order): words <-> value and words <-> bit pattern."""

    words: struct.Struct
    value: struct.Struct
    bits: struct.Struct


@cache
def _codec(dtype: DType, order: Order) -> _Codec:
    word_end, value_end = _ENDIAN[order]
    n = dtype.words
    return _Codec(
        words=struct.Struct(f"{word_end}{n}H"),
        value=struct.Struct(f"{value_end}{_CODE[dtype]}"),
        bits=struct.Struct(f"{value_end}{_BITS_CODE[n]}"),
    )


def _divisor(scale: float) -> int | None:
    """10 for scale 0.1 and so on: dividing by an integer rounds exactly once (1234.56, not
    1234.5600000000002)."""
    if 0 < abs(scale) < 1:
        inverse = 1 / scale
        nearest = round(inverse)
        if nearest != 0 and abs(inverse - nearest) <= 1e-9 * abs(inverse):
            return nearest
    return None


@dataclass(frozen=True, slots=True)
class Format:
    """How one value sits in registers: type, order, `value = raw * scale + offset`, sentinels.

    `sentinels` are raw bit patterns in canonical (ABCD) form, e.g. 0xFFFF for a u16 that means
    "not available". IEEE NaN and infinities are always sentinels for float types.
    """

    dtype: DType
    order: Order = Order.ABCD
    scale: float = 1.0
    offset: float = 0.0
    sentinels: frozenset[int] = frozenset()
    _divisor: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, DType) or not isinstance(self.order, Order):
            raise TypeError("dtype and order must be DType and Order members")
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"scale must be finite and non-zero, not {self.scale!r}")
        if not math.isfinite(self.offset):
            raise ValueError(f"offset must be finite, not {self.offset!r}")
        top = (1 << (16 * self.dtype.words)) - 1
        for s in self.sentinels:
            if not 0 <= s <= top:
                raise ValueError(f"sentinel {s:#x} does not fit {self.dtype.words} registers")
        object.__setattr__(self, "_divisor", _divisor(self.scale))

    @property
    def count(self) -> int:
        """Registers this value occupies."""
        return self.dtype.words


@dataclass(frozen=True, slots=True)
class Decoded:
    """An engineering value, the raw number it came from, and whether it was a NaN sentinel."""

    value: float
    raw: int | float
    sentinel: bool = False


def _bcd_to_int(bits: int, digits: int) -> int:
    result = 0
    for shift in range(4 * (digits - 1), -4, -4):
        nibble = (bits >> shift) & 0xF
        if nibble > 9:
            raise DecodeError(f"invalid BCD digit {nibble:#x} in {bits:#x}")
        result = result * 10 + nibble
    return result


def _int_to_bcd(number: int) -> int:
    bits = 0
    shift = 0
    while number:
        number, digit = divmod(number, 10)
        bits |= digit << shift
        shift += 4
    return bits


def decode(registers: Sequence[int], fmt: Format) -> Decoded:
    """Registers as read from the wire -> value. Raises only `DecodeError`."""
    try:
        n = len(registers)
    except TypeError as exc:
        raise DecodeError(f"registers must be a sequence, not {type(registers).__name__}") from exc
    if n != fmt.dtype.words:
        raise DecodeError(f"{fmt.dtype} needs {fmt.dtype.words} registers, got {n}")
    codec = _codec(fmt.dtype, fmt.order)
    try:
        data = codec.words.pack(*registers)
    except (struct.error, TypeError, OverflowError) as exc:
        raise DecodeError(f"register words must be integers 0..65535: {list(registers)!r}") from exc
    if fmt.sentinels and codec.bits.unpack(data)[0] in fmt.sentinels:
        return Decoded(math.nan, codec.bits.unpack(data)[0], sentinel=True)
    raw: int | float
    if fmt.dtype.is_bcd:
        raw = _bcd_to_int(codec.bits.unpack(data)[0], 4 * fmt.dtype.words)
    else:
        raw = codec.value.unpack(data)[0]
        if fmt.dtype.is_float and not math.isfinite(raw):
            return Decoded(math.nan, raw, sentinel=True)
    value = raw / fmt._divisor if fmt._divisor else raw * fmt.scale
    value = value + fmt.offset if fmt.offset else float(value)
    if not math.isfinite(value):
        raise DecodeError(f"raw {raw!r} scaled by {fmt.scale} overflows")
    return Decoded(value, raw)


def to_raw(value: float, fmt: Format) -> int | float:
    """Engineering value -> raw number (rounded to an integer for integer types), unchecked."""
    if not math.isfinite(value):
        raise EncodeError(f"cannot encode {value!r} as a number; encode a sentinel instead")
    raw = (value - fmt.offset) * fmt._divisor if fmt._divisor else (value - fmt.offset) / fmt.scale
    if fmt.dtype.is_float:
        return raw
    if not math.isfinite(raw):
        raise EncodeError(f"{value!r} overflows at scale {fmt.scale}")
    return round(raw)


def encode_raw(raw: int | float, fmt: Format) -> tuple[int, ...]:
    """Raw number -> register words in the format's order. Raises only `EncodeError`."""
    codec = _codec(fmt.dtype, fmt.order)
    try:
        if fmt.dtype.is_bcd:
            low, high = raw_bounds(fmt.dtype)
            if not isinstance(raw, int) or not low <= raw <= high:
                raise EncodeError(f"{raw!r} does not fit {fmt.dtype}")
            data = codec.bits.pack(_int_to_bcd(raw))
        else:
            data = codec.value.pack(raw)
    except (struct.error, OverflowError, TypeError) as exc:
        raise EncodeError(f"{raw!r} does not fit {fmt.dtype}") from exc
    return tuple(codec.words.unpack(data))


def encode(value: float, fmt: Format) -> tuple[int, ...]:
    """Engineering value -> register words; NaN encodes the format's sentinel."""
    if math.isnan(value):
        return encode_sentinel(fmt)
    return encode_raw(to_raw(value, fmt), fmt)


def encode_sentinel(fmt: Format) -> tuple[int, ...]:
    """The words of the first declared sentinel; else quiet NaN (floats) or all ones."""
    codec = _codec(fmt.dtype, fmt.order)
    if fmt.sentinels:
        bits = min(fmt.sentinels)
    elif fmt.dtype is DType.F32:
        bits = 0x7FC00000
    elif fmt.dtype is DType.F64:
        bits = 0x7FF8000000000000
    else:
        bits = (1 << (16 * fmt.dtype.words)) - 1
    return tuple(codec.words.unpack(codec.bits.pack(bits)))
