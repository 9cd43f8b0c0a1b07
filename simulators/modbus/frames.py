"""Modbus framing without I/O: CRC, request/response PDUs, MBAP (TCP) answers, RTU frame
splitting, and the wire timing of a serial line (MBAP requests split with the gateway's
`gateway_agent.framing`).

Written by hand rather than taken from pymodbus because the simulators must misbehave the way
field devices do (stay silent for an unknown unit id, answer 0x06, pace bytes at the baud
rate), which pymodbus' server framing does not expose; see transports.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

from gateway_agent.framing import MBAP

READ_HOLDING: Final = 3
READ_INPUT: Final = 4
MAX_READ: Final = 125


class ExceptionCode(IntEnum):
    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    DEVICE_FAILURE = 0x04
    DEVICE_BUSY = 0x06


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    return frame + crc16(frame).to_bytes(2, "little")


def crc_ok(frame: bytes | bytearray) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


@dataclass(frozen=True, slots=True)
class ReadRequest:
    function: int
    address: int
    count: int


def parse_request(pdu: bytes | bytearray) -> ReadRequest | ExceptionCode:
    """A request PDU -> what to read, or the exception a device answers to it.

    The simulated meters are read-only: any function other than 3 and 4 is illegal.
    """
    function = pdu[0]
    if function not in (READ_HOLDING, READ_INPUT):
        return ExceptionCode.ILLEGAL_FUNCTION
    if len(pdu) != 5:
        return ExceptionCode.ILLEGAL_DATA_VALUE
    address, count = struct.unpack_from(">HH", pdu, 1)
    if not 1 <= count <= MAX_READ:
        return ExceptionCode.ILLEGAL_DATA_VALUE
    if address + count > 0x10000:
        return ExceptionCode.ILLEGAL_DATA_ADDRESS
    return ReadRequest(function, address, count)


def read_response(function: int, words: tuple[int, ...] | list[int]) -> bytes:
    n = len(words)
    return struct.pack(f">BB{n}H", function, 2 * n, *words)


def exception_response(function: int, code: int) -> bytes:
    return bytes((function | 0x80, code))


# --- Modbus TCP (MBAP header) --------------------------------------------------------------
# Requests are split with the gateway's pure framing (`gateway_agent.framing.take_frames`; a
# header that is not MBAP raises its `FrameError` and the endpoint drops the connection, as
# devices do); answers are framed here.


def mbap_frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


# --- Modbus RTU ----------------------------------------------------------------------------

UNKNOWN: Final = -1


def rtu_request_length(buf: bytes | bytearray) -> int | None:
    """Length of the request frame at the front of `buf`; None: need more; UNKNOWN: cannot tell."""
    if len(buf) < 2:
        return None
    function = buf[1]
    if function in (1, 2, 3, 4, 5, 6):
        return 8
    if function in (15, 16):
        return None if len(buf) < 7 else 9 + buf[6]
    if function in (7, 11, 12, 17):
        return 4
    return UNKNOWN


def split_rtu(buf: bytearray) -> tuple[list[bytes], bool]:
    """Take whole RTU request frames (CRC checked) off `buf`.

    Returns the frames and whether garbage was dropped. Frames with a bad CRC are dropped
    silently (a slave never answers them). When the length cannot be told from the function
    code, the whole buffer is one frame if its CRC checks; otherwise the bytes wait for more
    data or for the inter-frame silence (`discard`).
    """
    frames: list[bytes] = []
    dropped = False
    while buf:
        length = rtu_request_length(buf)
        if length is None:
            break
        if length == UNKNOWN:
            if crc_ok(buf):
                frames.append(bytes(buf))
                buf.clear()
            break
        if len(buf) < length:
            break
        frame = bytes(buf[:length])
        del buf[:length]
        if crc_ok(frame):
            frames.append(frame)
        else:
            dropped = True
    return frames, dropped


# --- serial line timing --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SerialLine:
    """Timing of an RS-485 line: each character is start + data + parity + stop bits.

    Modbus RTU requires 11-bit characters (8E1, 8O1 or 8N2); 8N1 lines, common in the field,
    send 10. The inter-frame silence is 3.5 characters, fixed at 1.75 ms above 19200 baud
    (Modbus over Serial Line v1.02, 2.5.1.1).
    """

    baud: int
    parity: Literal["N", "E", "O"] = "E"
    stop_bits: int = 1
    data_bits: int = 8

    @property
    def bits_per_char(self) -> int:
        return 1 + self.data_bits + (self.parity != "N") + self.stop_bits

    @property
    def char_time(self) -> float:
        return self.bits_per_char / self.baud

    @property
    def silence(self) -> float:
        """The 3.5-character inter-frame gap."""
        return 3.5 * self.char_time if self.baud <= 19200 else 0.00175

    def wire_time(self, nbytes: int) -> float:
        return nbytes * self.char_time

    def transaction_time(
        self, request_bytes: int, response_bytes: int, latency: float = 0.0
    ) -> float:
        """Request on the wire, gap, device latency, response, gap: one poll's floor."""
        return self.wire_time(request_bytes + response_bytes) + 2 * self.silence + latency
