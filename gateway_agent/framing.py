"""Modbus TCP (MBAP) framing for the gateway's reads, without I/O: build a read request, take
whole frames off a byte stream, and check an answer against its request. Pure.

Used by the gateway's own Modbus TCP line (see `modbus.MbapLine` for why it exists), and by
the simulators' Modbus TCP endpoint to split the requests it serves (`take_frames`).

    >>> read_request(7, 1, 4, 0x0048, 2).hex()
    '000700000006010400480002'
    >>> buf = bytearray.fromhex("00070000000701040444...".replace("...", "9a5000"))
    >>> frames = take_frames(buf)
    >>> [(tid, unit, pdu.hex()) for tid, unit, pdu in frames], len(buf)
    ([(7, 1, '0404449a5000')], 0)
    >>> read_words(frames[0][2], 4, 2)
    (17562, 20480)
"""

from __future__ import annotations

import struct
from typing import Final

MBAP: Final = struct.Struct(">HHHB")  # transaction id, protocol 0, length, unit id
_REQUEST: Final = struct.Struct(">HHHBBHH")
MAX_PDU: Final = 253


class FrameError(ValueError):
    """Bytes that are not MBAP framing: the stream cannot be trusted past this point."""


class AnswerError(ValueError):
    """A well-framed answer that does not answer the request (short, other function)."""


class ExceptionAnswer(Exception):  # noqa: N818 - it is an answer, not an error of ours
    """The device answered with a Modbus exception."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exception {code:#04x}")
        self.code = code


def read_request(tid: int, unit: int, function: int, address: int, count: int) -> bytes:
    """The MBAP frame of a register read (function 3 or 4)."""
    return _REQUEST.pack(tid, 0, 6, unit, function, address, count)


def take_frames(buf: bytearray) -> list[tuple[int, int, bytes]]:
    """Remove whole MBAP frames from the front of `buf`: (transaction id, unit id, PDU).

    An incomplete frame stays in `buf`; a header that cannot be MBAP raises FrameError.
    """
    frames = []
    while len(buf) >= 8:
        tid, protocol, length, unit = MBAP.unpack_from(buf)
        if protocol != 0 or not 2 <= length <= MAX_PDU + 1:
            raise FrameError(f"not an MBAP header: {bytes(buf[:8]).hex()}")
        end = 6 + length
        if len(buf) < end:
            break
        frames.append((tid, unit, bytes(buf[7:end])))
        del buf[:end]
    return frames


def read_words(pdu: bytes, function: int, count: int) -> tuple[int, ...]:
    """The registers in the answer `pdu` to a read of `count` registers with `function`.

    Raises ExceptionAnswer for an exception answer, AnswerError for anything else that does
    not fit the request.
    """
    if len(pdu) == 2 and pdu[0] == function | 0x80:
        raise ExceptionAnswer(pdu[1])
    if not pdu or pdu[0] != function:
        raise AnswerError(f"answer of function {pdu[:1].hex() or '-'} to function {function}")
    if len(pdu) < 2 or pdu[1] != 2 * count or len(pdu) != 2 + 2 * count:
        raise AnswerError(f"answer of {len(pdu)} bytes to a read of {count} registers")
    return struct.unpack_from(f">{count}H", pdu, 2)
