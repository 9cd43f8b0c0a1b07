"""Serve simulated devices over Modbus TCP, RTU-over-TCP and RTU on a pseudo-terminal.

Why not pymodbus' server (3.16): its request handler answers an unknown unit id with
exception 0x04 (SimCore raises KeyError) instead of staying silent as an RS-485 slave does,
it cannot drop a single request on the floor (the `no_response` fault), and its serial
transport writes a response in one burst, with no per-device latency and no pacing at the
baud rate. Framing is small and lives in frames.py; this module only moves bytes.

Each endpoint hosts a mapping unit id -> device: many ids behind one endpoint is an
RS-485-to-Ethernet converter, one id is a device with its own endpoint. Unknown unit ids (and
broadcast id 0) get no response. Values are timestamped by each device's injected clock; wire
pacing uses the event loop's monotonic time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections import deque
from collections.abc import Mapping
from typing import Literal, Self

from gateway_agent.framing import FrameError, take_frames
from simulators.modbus.device import Reply, SimulatedDevice
from simulators.modbus.frames import (
    ExceptionCode,
    ReadRequest,
    SerialLine,
    exception_response,
    mbap_frame,
    parse_request,
    read_response,
    split_rtu,
    with_crc,
)

Framing = Literal["mbap", "rtu"]
# Bytes of an incomplete or unparseable RTU frame are dropped after this much silence on TCP.
_TCP_RTU_SILENCE = 0.1


def answer(
    devices: Mapping[int, SimulatedDevice], unit: int, pdu: bytes
) -> tuple[bytes, float] | None:
    """The response PDU of `devices` to one request, and its delay; None: stay silent."""
    device = devices.get(unit) if unit else None
    if device is None or not pdu:
        return None
    request = parse_request(pdu)
    if isinstance(request, ExceptionCode):
        return exception_response(pdu[0], request), device.latency
    reply: Reply = device.read(request.function, request.address, request.count)
    if reply.silent:
        return None
    if reply.exception is not None:
        return exception_response(request.function, reply.exception), reply.delay
    assert reply.words is not None
    return read_response(request.function, reply.words), reply.delay


class _Connection(asyncio.Protocol):
    """One client connection; replies in request order, delayed ones on a task."""

    def __init__(self, endpoint: ModbusTcpEndpoint) -> None:
        self.endpoint = endpoint
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[bytes, float, int]] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.flush: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.endpoint.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.connections.discard(self)
        self.close()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        if self.flush is not None:
            self.flush.cancel()
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        devices = self.endpoint.devices
        if self.endpoint.framing == "mbap":
            try:
                frames = take_frames(self.buf)
            except FrameError:
                self.close()
                return
            for tid, unit, pdu in frames:
                result = answer(devices, unit, pdu)
                if result is not None:
                    self.send(mbap_frame(tid, unit, result[0]), result[1], len(pdu) + 7)
        else:
            rtu_frames, _ = split_rtu(self.buf)
            for frame in rtu_frames:
                result = answer(devices, frame[0], frame[1:-2])
                if result is not None:
                    self.send(with_crc(bytes((frame[0],)) + result[0]), result[1], len(frame))
            if self.flush is not None:
                self.flush.cancel()
            if self.buf:
                loop = asyncio.get_running_loop()
                self.flush = loop.call_later(_TCP_RTU_SILENCE, self.buf.clear)

    def send(self, frame: bytes, delay: float, request_bytes: int) -> None:
        if not delay and not self.pending and self.endpoint.line is None:
            assert self.transport is not None
            self.transport.write(frame)
            return
        self.pending.append((frame, delay, request_bytes))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        line = self.endpoint.line
        # On the converter's serial side a frame is 4 bytes shorter (CRC instead of MBAP).
        shrink = 4 if self.endpoint.framing == "mbap" else 0
        while self.pending:
            frame, delay, request_bytes = self.pending[0]
            if line is None:
                await asyncio.sleep(delay)
            else:  # one transaction at a time on the converter's serial side
                async with self.endpoint.bus_lock:
                    await asyncio.sleep(
                        line.transaction_time(request_bytes - shrink, len(frame) - shrink, delay)
                    )
            self.pending.popleft()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(frame)


class ModbusTcpEndpoint:
    """A TCP listener hosting unit ids; `framing="rtu"` for RTU-over-TCP.

    With `line` set, the endpoint behaves as an RS-485 converter: transactions are serialised
    and each takes its serial wire time.
    """

    def __init__(
        self,
        devices: Mapping[int, SimulatedDevice],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        framing: Framing = "mbap",
        line: SerialLine | None = None,
    ) -> None:
        self.devices = dict(devices)
        self.host, self.port = host, port
        self.framing: Framing = framing
        self.line = line
        self.connections: set[_Connection] = set()
        self.bus_lock = asyncio.Lock()
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port)
        sock = self._server.sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        return self.host, self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            await self._server.wait_closed()
            self._server = None
        await asyncio.sleep(0)  # let connection_lost callbacks run

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


class PtyRtuBus:
    """An RS-485 bus on a pseudo-terminal: clients open `path` as their serial port.

    Frames are paced as on the wire: a request counts as received when its last character
    would have arrived, the device answers after the 3.5-character silence plus its latency,
    and the response leaves one character time per byte. One transaction at a time; unknown
    unit ids, bad CRCs and `no_response` faults stay silent. `line=None` disables pacing.
    """

    def __init__(self, devices: Mapping[int, SimulatedDevice], line: SerialLine | None) -> None:
        self.devices = dict(devices)
        self.line = line
        self.path = ""
        self._master = self._slave = -1
        self._buf = bytearray()
        self._first_byte_at = 0.0
        self._requests: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._flush: asyncio.TimerHandle | None = None

    async def start(self) -> str:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: bytes pass unchanged
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._master, self._readable)
        self._worker = loop.create_task(self._serve())
        return self.path

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._master >= 0:
            loop.remove_reader(self._master)
        if self._flush is not None:
            self._flush.cancel()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no slave side open
            return
        loop = asyncio.get_running_loop()
        if not self._buf:
            self._first_byte_at = loop.time()
        self._buf += data
        frames, _ = split_rtu(self._buf)
        for frame in frames:
            self._requests.put_nowait((frame, self._first_byte_at))
            self._first_byte_at = loop.time()
        if self._flush is not None:
            self._flush.cancel()
        if self._buf:  # incomplete or garbled: dropped after the inter-frame silence
            silence = self.line.silence if self.line else _TCP_RTU_SILENCE
            self._flush = loop.call_later(max(silence, 0.005), self._buf.clear)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame, first_byte_at = await self._requests.get()
            result = answer(self.devices, frame[0], frame[1:-2])
            if result is None:
                continue
            response = with_crc(bytes((frame[0],)) + result[0])
            if self.line is None:
                await asyncio.sleep(result[1])
                await self._write(response)
                continue
            line = self.line
            ready = max(loop.time(), first_byte_at + line.wire_time(len(frame)))
            start = ready + line.silence + result[1]
            await self._paced_write(response, start, line)
            # the line stays quiet for 3.5 characters after a frame
            await asyncio.sleep(max(0.0, start + line.wire_time(len(response)) + line.silence
                                    - loop.time()))  # fmt: skip

    async def _paced_write(self, data: bytes, start: float, line: SerialLine) -> None:
        """Deliver each byte when its last bit would have arrived (chunks of >= 2 ms)."""
        loop = asyncio.get_running_loop()
        per_chunk = max(1, int(0.002 / line.char_time))
        sent = 0
        while sent < len(data):
            upto = min(len(data), sent + per_chunk)
            due = start + line.wire_time(upto)
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._write(data[sent:upto])
            sent = upto

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            view = view[written:]


__all__ = ["ModbusTcpEndpoint", "PtyRtuBus", "ReadRequest", "answer"]
