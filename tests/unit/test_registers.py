"""Register decoding: public vectors, every type x order round-trips, input never mutated,
and random garbage raises nothing but DecodeError."""

from __future__ import annotations

import array
import contextlib
import math
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_agent.registers import (
    DecodeError,
    DType,
    EncodeError,
    Format,
    Order,
    decode,
    encode,
    encode_raw,
    encode_sentinel,
    raw_bounds,
)

ALL = [(d, o) for d in DType for o in Order]


def ids(case: tuple[DType, Order]) -> str:
    return f"{case[0]}-{case[1]}"


# --- public vectors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (Order.ABCD, 16909060),  # Home Assistant test_wrap_sensor: swap none
        (Order.BADC, 33620995),  # byte swap
        (Order.CDAB, 50594050),  # word swap
        (Order.DCBA, 67305985),  # word and byte swap
    ],
)
def test_home_assistant_uint32_vectors(order: Order, expected: int) -> None:
    decoded = decode([0x0102, 0x0304], Format(DType.U32, order))
    assert decoded.raw == expected
    assert decoded.value == float(expected)
    assert encode(float(expected), Format(DType.U32, order)) == (0x0102, 0x0304)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (Order.ABCD, 0x0102030405060708),
        (Order.CDAB, 0x0708050603040102),
        (Order.BADC, 0x0201040306050807),
        (Order.DCBA, 0x0807060504030201),
    ],
)
def test_64_bit_orders_extend_the_32_bit_rule(order: Order, expected: int) -> None:
    assert decode([0x0102, 0x0304, 0x0506, 0x0708], Format(DType.U64, order)).raw == expected


def test_reference_map_vectors() -> None:
    # meter-register-maps.md: float32 230.0 -> 43 66 00 00.
    assert decode([0x4366, 0x0000], Format(DType.F32)).value == 230.0
    # ADL400: energy raw 123456 (00 01 E2 40) x0.01 -> 1234.56 kWh, exactly.
    assert decode([0x0001, 0xE240], Format(DType.I32, scale=0.01)).value == 1234.56
    assert decode([1600], Format(DType.U16, scale=0.01)).value == 16.0
    assert decode([0xFFFF, 0xF1A0], Format(DType.I32)).value == -3680.0
    # DL/T 645 voltage block (npm dlt645 README): bytes 14 23 low byte first -> 231.4 V (XXX.X).
    assert decode([0x1423], Format(DType.BCD16, Order.BADC, scale=0.1)).value == 231.4
    # DL/T 645 energy XXXXXX.XX in two registers.
    assert decode([0x0012, 0x3456], Format(DType.BCD32, scale=0.01)).value == 1234.56
    assert encode(1234.56, Format(DType.BCD32, scale=0.01)) == (0x0012, 0x3456)


def test_scale_and_offset() -> None:
    fmt = Format(DType.I16, scale=0.1, offset=-40.0)
    assert decode([650], fmt).value == pytest.approx(25.0)
    assert encode(25.0, fmt) == (650,)
    assert decode([0x3FC0, 0x0000], Format(DType.F32, scale=1000.0)).value == 1500.0


# --- sentinels -----------------------------------------------------------------------------


def test_declared_sentinels_are_flagged_in_any_order() -> None:
    assert decode([0xFFFF], Format(DType.U16, sentinels=frozenset({0xFFFF}))).sentinel
    cdab = Format(DType.I32, Order.CDAB, sentinels=frozenset({0x80000000}))
    flagged = decode([0x0000, 0x8000], cdab)
    assert flagged.sentinel
    assert math.isnan(flagged.value)
    assert encode_sentinel(cdab) == (0x0000, 0x8000)
    assert encode(math.nan, cdab) == (0x0000, 0x8000)
    assert not decode([0x8000, 0x0000], cdab).sentinel


@pytest.mark.parametrize("words", [[0x7FC0, 0x0000], [0xFFC0, 0x0000], [0x7F80, 0x0000]])
def test_float_nan_and_infinity_are_sentinels(words: list[int]) -> None:
    assert decode(words, Format(DType.F32)).sentinel


def test_sentinel_checked_before_bcd_digits() -> None:
    fmt = Format(DType.BCD32, sentinels=frozenset({0xFFFFFFFF}))
    assert decode([0xFFFF, 0xFFFF], fmt).sentinel
    with pytest.raises(DecodeError, match="BCD"):
        decode([0xFFFF, 0xFFFE], fmt)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "fmt"),
    [
        ([0x4366], Format(DType.F32)),  # too few
        ([1, 2, 3], Format(DType.U32)),  # too many
        ([0x10000], Format(DType.U16)),  # out of range
        ([-1], Format(DType.I16)),
        ([1.5], Format(DType.U16)),
        (["12"], Format(DType.U16)),
        ([None, 0], Format(DType.U32)),
        ([0x00A0], Format(DType.BCD16)),  # nibble A
        ([0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF], Format(DType.F64, scale=10.0)),  # overflows
        (None, Format(DType.U16)),
        (5, Format(DType.U16)),
    ],
)
def test_bad_input_raises_decode_error(words: object, fmt: Format) -> None:
    with pytest.raises(DecodeError):
        decode(words, fmt)  # type: ignore[arg-type]


def test_encode_rejects_what_does_not_fit() -> None:
    with pytest.raises(EncodeError):
        encode(70000.0, Format(DType.U16))
    with pytest.raises(EncodeError):
        encode(-1.0, Format(DType.BCD16))
    with pytest.raises(EncodeError):
        encode(1e39, Format(DType.F32))
    with pytest.raises(EncodeError):
        encode(math.inf, Format(DType.U32))


def test_format_rejects_zero_scale() -> None:
    with pytest.raises(ValueError, match="scale"):
        Format(DType.U16, scale=0.0)


# --- properties ----------------------------------------------------------------------------


def raws(dtype: DType) -> st.SearchStrategy[int | float]:
    if dtype is DType.F32:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if dtype is DType.F64:
        return st.floats(allow_nan=False, allow_infinity=False)
    low, high = raw_bounds(dtype)
    return st.integers(int(low), int(high))


@pytest.mark.parametrize("case", ALL, ids=ids)
@given(data=st.data())
def test_raw_round_trip(case: tuple[DType, Order], data: st.DataObject) -> None:
    dtype, order = case
    fmt = Format(dtype, order)
    raw = data.draw(raws(dtype))
    words = encode_raw(raw, fmt)
    assert len(words) == dtype.words
    assert all(0 <= w <= 0xFFFF for w in words)
    decoded = decode(list(words), fmt)
    assert decoded.raw == raw
    assert not decoded.sentinel


SCALES = [1.0, 0.1, 0.01, 0.001, 10.0, 1000.0, 0.5]


def words_of(dtype: DType) -> st.SearchStrategy[list[int]]:
    """Register words whose raw value is a finite number a scale cannot push out of range."""
    if dtype.is_bcd:
        digits = 4 * dtype.words
        return st.integers(0, min(10**digits - 1, 2**50)).map(
            lambda n: list(encode_raw(n, Format(dtype)))
        )
    if dtype is DType.F32:
        return st.floats(width=32, min_value=-(2.0**100), max_value=2.0**100).map(
            lambda x: list(encode_raw(x, Format(dtype)))
        )
    low, high = raw_bounds(dtype)
    bound = 2**50
    return st.integers(max(int(low), -bound), min(int(high), bound)).map(
        lambda n: list(encode_raw(n, Format(dtype)))
    )


@pytest.mark.parametrize("case", [c for c in ALL if c[0] is not DType.F64], ids=ids)
@given(data=st.data())
def test_words_survive_decode_then_encode(case: tuple[DType, Order], data: st.DataObject) -> None:
    """What the gateway decodes, the simulator encodes back to the same words (any scale)."""
    dtype, order = case
    scale = data.draw(st.sampled_from(SCALES))
    offset = data.draw(st.sampled_from([0.0, -40.0, 100.0])) if not dtype.is_float else 0.0
    canonical = data.draw(words_of(dtype))
    fmt = Format(dtype, order, scale, offset)
    ordered = list(encode_raw(decode(canonical, Format(dtype)).raw, fmt))
    value = decode(ordered, fmt).value
    assert list(encode(value, fmt)) == ordered


@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(list(Order)))
def test_f64_value_round_trip(x: float, order: Order) -> None:
    fmt = Format(DType.F64, order)
    assert decode(encode(x, fmt), fmt).value == x


@pytest.mark.parametrize("case", ALL, ids=ids)
@given(data=st.data())
def test_decode_never_mutates_its_input(case: tuple[DType, Order], data: st.DataObject) -> None:
    dtype, order = case
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=dtype.words, max_size=dtype.words))
    snapshot = list(words)
    fmt = Format(dtype, order)
    with contextlib.suppress(DecodeError):  # invalid BCD nibbles
        decode(words, fmt)
    assert words == snapshot
    typed = array.array("H", snapshot)
    with contextlib.suppress(DecodeError):
        decode(typed, fmt)
    assert typed.tolist() == snapshot


# --- fuzz ----------------------------------------------------------------------------------


def random_word(rng: random.Random) -> object:
    roll = rng.random()
    if roll < 0.9:
        return rng.choice([0, 0xFFFF, 0x7FFF, 0x8000, rng.randrange(0x10000)])
    return rng.choice([-1, 0x10000, 2**70, 1.5, math.nan, None, "1", b"\x00", [], True])


def random_format(rng: random.Random) -> Format:
    dtype = rng.choice(list(DType))
    scale = rng.choice([1.0, 0.01, 1e-300, 1e300, -2.5, 1000.0])
    offset = rng.choice([0.0, -1e308, 1e308, 3.5])
    top = (1 << (16 * dtype.words)) - 1
    picks = range(rng.randrange(3))
    sentinels = frozenset(rng.choice([0, top, rng.randrange(top + 1)]) for _ in picks)
    return Format(dtype, rng.choice(list(Order)), scale, offset, sentinels)


@pytest.mark.fuzz
def test_random_registers_raise_only_decode_error() -> None:
    rng = random.Random(20261127)
    formats = [random_format(rng) for _ in range(500)]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1_000_000):  # R13: one million random register arrays
        fmt = rng.choice(formats)
        n = fmt.count if rng.random() < 0.8 else rng.randrange(0, 6)
        words = [random_word(rng) for _ in range(n)]
        container = rng.choice([list, tuple])(words)
        try:
            decoded = decode(container, fmt)
        except DecodeError:
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
            assert decoded.sentinel or math.isfinite(decoded.value)
    assert outcomes["ok"] > 100_000
    assert outcomes["error"] > 100_000


def test_struct_layout_matches_manual_byte_names() -> None:
    """ABCD names bytes of the big-endian value: A is the most significant byte."""
    value = struct.unpack(">I", bytes([0xA, 0xB, 0xC, 0xD]))[0]
    assert encode_raw(value, Format(DType.U32, Order.CDAB)) == (0x0C0D, 0x0A0B)
    assert encode_raw(value, Format(DType.U32, Order.BADC)) == (0x0B0A, 0x0D0C)
    assert encode_raw(value, Format(DType.U32, Order.DCBA)) == (0x0D0C, 0x0B0A)
