"""The gateway's MBAP framing: requests as the standard spells them, frames split from any
chunking of the stream, answers checked against their request, and random bytes raising only
the declared errors."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_agent.framing import (
    AnswerError,
    ExceptionAnswer,
    FrameError,
    read_request,
    read_words,
    take_frames,
)


def answer(tid: int, unit: int, function: int, words: list[int]) -> bytes:
    pdu = struct.pack(f">BB{len(words)}H", function, 2 * len(words), *words)
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def test_request_bytes() -> None:
    # Modbus Messaging on TCP/IP v1.0b, 4.1: MBAP + "read input registers 0x0048, 2"
    assert read_request(1, 0x11, 4, 0x0048, 2) == bytes.fromhex("0001 0000 0006 11 04 0048 0002")


@given(
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 255),
                       st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125)),
             min_size=1, max_size=5),
    st.integers(1, 40),
)  # fmt: skip
def test_frames_survive_any_chunking(frames: list[tuple[int, int, list[int]]], chunk: int) -> None:
    stream = b"".join(answer(tid, unit, 3, words) for tid, unit, words in frames)
    buf = bytearray()
    got = []
    for i in range(0, len(stream), chunk):
        buf += stream[i : i + chunk]
        got += take_frames(buf)
    assert not buf
    assert [(t, u, read_words(pdu, 3, len(w))) for (t, u, pdu), (_, _, w) in
            zip(got, frames, strict=True)] == [(t, u, tuple(w)) for t, u, w in frames]  # fmt: skip


def test_answers_are_checked_against_the_request() -> None:
    ok = answer(1, 1, 4, [1, 2])[7:]
    assert read_words(ok, 4, 2) == (1, 2)
    with pytest.raises(AnswerError):
        read_words(ok, 3, 2)  # another function's answer
    with pytest.raises(AnswerError):
        read_words(ok, 4, 3)  # short
    with pytest.raises(AnswerError):
        read_words(ok[:-1], 4, 2)  # truncated
    with pytest.raises(ExceptionAnswer) as exc:
        read_words(bytes((0x84, 0x02)), 4, 2)
    assert exc.value.code == 0x02
    with pytest.raises(AnswerError):
        read_words(b"", 4, 2)
    with pytest.raises(FrameError):
        take_frames(bytearray(b"\x00\x01\x00\x07\x00\x06\x01\x04\x00\x00"))  # protocol 7


@pytest.mark.fuzz
@given(st.binary(max_size=300), st.sampled_from([3, 4]), st.integers(1, 125))
def test_random_bytes_raise_only_declared_errors(data: bytes, function: int, count: int) -> None:
    buf = bytearray(data)
    try:
        frames = take_frames(buf)
    except FrameError:
        return
    for _, _, pdu in frames:
        try:
            words = read_words(pdu, function, count)
        except (AnswerError, ExceptionAnswer):
            continue
        assert len(words) == count
        assert all(0 <= w <= 0xFFFF for w in words)
