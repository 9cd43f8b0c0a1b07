"""The Modbus adapter: one `Line` per configured `Bus`, reading registers one transaction at a
time, with every failure turned into one declared error, `ModbusError`.

Modbus TCP runs on the gateway's own asyncio client (`MbapLine`, framing in
`gateway_agent.framing`; why: see its docstring). RTU on a serial port (through pyserial) and
RTU framing over TCP (RS-485-to-Ethernet converters in transparent mode) run on pymodbus
3.16's async clients (`PymodbusLine`). Around both (`_LineBase`):

* The line connects on demand (pymodbus' background reconnect task is off), and after a
  failed connect it refuses reads until an exponentially growing wait has passed, so a
  converter that is down costs one connect attempt per wait instead of one per device.
* Retries are applied here (pymodbus' own are off), so every attempt is visible and the
  poller can skip retries for a device that is already failing. A Modbus exception is an
  answer: it is never retried.
* On a local serial line the master keeps the 3.5-character silence between frames
  (`inter_frame_silence`), which pymodbus does not.
* The answer is checked against the request (function code, register count): a short or
  mismatched answer is an `io` failure, never words that decode into a wrong value.
* pymodbus closes a TCP connection after `retries + 3` unanswered requests in a row (each
  answer resets that count, so a dead device among live ones does not trigger it); MbapLine
  does the same after `MbapLine.MAX_SILENT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Final, Literal, Protocol

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gateway_agent.framing import (
    AnswerError,
    ExceptionAnswer,
    FrameError,
    read_request,
    read_words,
    take_frames,
)
from gateway_agent.site import Bus

FailureKind = Literal["timeout", "exception", "io"]
FAILURE_KINDS: Final[tuple[FailureKind, ...]] = ("timeout", "exception", "io")
READ_FUNCTIONS: Final = (3, 4)
MAX_READ: Final = 125
_CONNECT_BACKOFF_MIN_S: Final = 0.5

log = logging.getLogger(__name__)


class ModbusError(Exception):
    """A read that produced no usable words.

    kind: `timeout` (no answer within the bus's timeout), `exception` (the device answered
    with Modbus exception `code`), `io` (no connection, or an answer that does not fit the
    request: short, garbled, wrong function).
    """

    def __init__(self, kind: FailureKind, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.code = code

    @property
    def label(self) -> str:
        """A counter label: `timeout`, `io`, or `exception_0x06` and the like."""
        return f"exception_{self.code:#04x}" if self.kind == "exception" else self.kind


class Line(Protocol):
    """One Modbus bus: one transaction at a time."""

    @property
    def bus(self) -> Bus: ...

    async def read(
        self, unit_id: int, function: int, address: int, count: int, *, retries: int | None = None
    ) -> tuple[int, ...]:
        """`count` registers from `address` with function 3 or 4; every failure on the line or
        from the device raises ModbusError (a request that is not a register read of 1..125
        registers is the caller's bug: ValueError).

        `retries` overrides the bus's extra attempts for this read (0: one attempt)."""
        ...

    async def close(self) -> None: ...


Client = AsyncModbusTcpClient | AsyncModbusSerialClient


def make_client(bus: Bus) -> Client:
    """The pymodbus client for a bus, not yet connected."""
    common = {"timeout": bus.timeout_s, "retries": 0, "reconnect_delay": 0.0}
    if bus.transport == "rtu":
        if bus.serial is None:
            raise ValueError(f"bus {bus.name}: rtu needs a serial port")
        s = bus.serial
        return AsyncModbusSerialClient(
            s.path,
            framer=FramerType.RTU,
            baudrate=s.baud,
            bytesize=s.data_bits,
            parity=s.parity,
            stopbits=s.stop_bits,
            **common,  # type: ignore[arg-type]
        )
    if bus.host is None or bus.port is None:
        raise ValueError(f"bus {bus.name}: {bus.transport} needs host and port")
    framer = FramerType.RTU if bus.transport == "rtu-over-tcp" else FramerType.SOCKET
    return AsyncModbusTcpClient(
        bus.host,
        port=bus.port,
        framer=framer,
        **common,  # type: ignore[arg-type]
    )


class _LineBase(ABC):
    """What every line does around one transaction: the lock (one at a time), retries, the
    RTU inter-frame silence, and connecting on demand with a growing wait after a refusal.

    `monotonic` times those waits (real time: sockets live in real time even when the poller
    runs on a simulated clock).
    """

    def __init__(self, bus: Bus, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._bus = bus
        self._monotonic = monotonic
        self._lock = asyncio.Lock()  # one transaction at a time, whoever calls
        self._next_connect = 0.0
        self._connect_wait = 0.0
        self._silence = inter_frame_silence(bus)
        self._quiet_until = 0.0
        self.connects = 0
        self.connect_failures = 0

    @property
    def bus(self) -> Bus:
        return self._bus

    async def read(
        self, unit_id: int, function: int, address: int, count: int, *, retries: int | None = None
    ) -> tuple[int, ...]:
        if function not in READ_FUNCTIONS:
            raise ValueError(f"function {function} is not a register read (3 or 4)")
        if not 1 <= count <= MAX_READ:
            raise ValueError(f"count {count} is outside 1..{MAX_READ}")
        attempts = 1 + (self._bus.retries if retries is None else retries)
        async with self._lock:
            failure: ModbusError | None = None
            for _ in range(attempts):
                if self._silence:
                    wait = self._quiet_until - self._monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                try:
                    if not self._connected():
                        await self._ensure_connected()
                    return await self._attempt(unit_id, function, address, count)
                except ModbusError as exc:
                    failure = exc
                    if exc.kind == "exception":  # the device answered: asking again won't help
                        break
                finally:
                    if self._silence:
                        self._quiet_until = self._monotonic() + self._silence
            assert failure is not None
            raise failure

    async def _ensure_connected(self) -> None:
        now = self._monotonic()
        if now < self._next_connect:
            raise ModbusError(
                "io", f"bus {self._bus.name}: not connected (next attempt in"
                f" {self._next_connect - now:.1f} s)"
            )  # fmt: skip
        if not await self._connect():
            self.connect_failures += 1
            self._connect_wait = min(
                max(2 * self._connect_wait, _CONNECT_BACKOFF_MIN_S), self._bus.backoff_max_s
            )
            self._next_connect = self._monotonic() + self._connect_wait
            raise ModbusError("io", f"bus {self._bus.name}: cannot connect")
        self.connects += 1
        self._connect_wait = 0.0

    @abstractmethod
    def _connected(self) -> bool:
        """Whether the transport is up."""

    @abstractmethod
    async def _connect(self) -> bool:
        """Open the transport; False when it cannot be opened now."""

    @abstractmethod
    async def _attempt(
        self, unit_id: int, function: int, address: int, count: int
    ) -> tuple[int, ...]:
        """One request and its answer; raises only `ModbusError`."""


class PymodbusLine(_LineBase):
    """A `Line` over a pymodbus async client (RTU on a serial port, RTU over TCP)."""

    def __init__(self, bus: Bus, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(bus, monotonic=monotonic)
        self._client = make_client(bus)

    def _connected(self) -> bool:
        return bool(self._client.connected)

    async def _connect(self) -> bool:
        try:
            return bool(await self._client.connect())
        except (OSError, ModbusException) as exc:  # pragma: no cover - pymodbus reports False
            log.debug("bus %s: connect raised %r", self._bus.name, exc)
            return False

    async def _attempt(
        self, unit_id: int, function: int, address: int, count: int
    ) -> tuple[int, ...]:
        client = self._client
        try:
            if function == 3:
                reply = await client.read_holding_registers(address, count=count, device_id=unit_id)
            else:
                reply = await client.read_input_registers(address, count=count, device_id=unit_id)
        except ModbusIOException as exc:
            # pymodbus raises the same type for "no answer" and for an answer that does not
            # belong to the request; only its message tells them apart.
            kind: FailureKind = "timeout" if "No response" in str(exc) else "io"
            raise ModbusError(kind, f"unit {unit_id}: {exc}") from exc
        except ConnectionException as exc:
            raise ModbusError("io", f"unit {unit_id}: {exc}") from exc
        except (ModbusException, ValueError, IndexError, OSError) as exc:
            # a garbled frame that pymodbus' decoder trips over
            raise ModbusError("io", f"unit {unit_id}: {exc!r}") from exc
        if reply.isError():
            code = int(getattr(reply, "exception_code", 0))
            raise ModbusError("exception", f"unit {unit_id}: exception {code:#04x}", code)
        words = reply.registers
        if reply.function_code != function or len(words) != count:
            raise ModbusError(
                "io", f"unit {unit_id}: answer of function {reply.function_code} with"
                f" {len(words)} registers to a read of {count} with function {function}"
            )  # fmt: skip
        return tuple(words)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
        await asyncio.sleep(0)  # let the transport's connection_lost run


class _MbapProtocol(asyncio.Protocol):
    def __init__(self, line: MbapLine) -> None:
        self.line = line
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            frames = take_frames(self.buf)
        except FrameError as exc:
            self.line._desync(str(exc))
            return
        for tid, unit, pdu in frames:
            self.line._frame(tid, unit, pdu)

    def connection_lost(self, exc: Exception | None) -> None:
        self.line._lost(exc)


class MbapLine(_LineBase):
    """A `Line` for Modbus TCP, on asyncio directly (framing in `gateway_agent.framing`).

    Why not pymodbus here (measured 2026-12-04 on the 2-core dev machine): one read of 18
    registers costs 99.5 us of client CPU through pymodbus 3.16 (PDU objects, transaction
    manager, `wait_for` per request) and 62.7 us through this line (sequential reads, same
    simulator process). The poller adds ~15 us per block of its own (decoding into samples,
    health), so on pymodbus it cannot beat a bare pymodbus loop's cost, and the issue's goal
    (>= 0.7 of bare, decode and outbox included) was missed: bench/gateway_poll.py gave
    0.46-0.78 with the pymodbus line. Modbus TCP needs no timing tricks: a request is one
    `write`, an answer is matched by transaction id (late answers to timed-out requests are
    dropped, counted in `stale_answers`). RTU framing and serial timing stay with pymodbus
    (`PymodbusLine`), where the wire, not the CPU, is the limit.

    After `MAX_SILENT` consecutive timeouts without any answer the connection is closed and
    opened again (a converter that rebooted without a reset leaves a socket that never answers).
    """

    MAX_SILENT: Final = 3

    def __init__(self, bus: Bus, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(bus, monotonic=monotonic)
        if bus.host is None or bus.port is None:
            raise ValueError(f"bus {bus.name}: tcp needs host and port")
        self._host, self._port = bus.host, bus.port
        self._transport: asyncio.Transport | None = None
        self._tid = 0
        self._pending: tuple[int, int, asyncio.Future[bytes]] | None = None
        self._silent = 0
        self.stale_answers = 0

    def _connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def _connect(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _MbapProtocol(self), self._host, self._port),
                self._bus.timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            log.debug("bus %s: connect failed: %r", self._bus.name, exc)
            return False
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._silent = 0
        return True

    async def _attempt(
        self, unit_id: int, function: int, address: int, count: int
    ) -> tuple[int, ...]:
        transport = self._transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        self._tid = self._tid % 0xFFFF + 1
        future: asyncio.Future[bytes] = loop.create_future()
        self._pending = (self._tid, unit_id, future)
        transport.write(read_request(self._tid, unit_id, function, address, count))
        timer = loop.call_later(self._bus.timeout_s, _expire, future, unit_id)
        try:
            pdu = await future
        except ModbusError as exc:
            if exc.kind == "timeout":
                self._silent += 1
                if self._silent >= self.MAX_SILENT:
                    self._drop(f"{self._silent} requests in a row unanswered")
            raise
        finally:
            timer.cancel()
            self._pending = None
        self._silent = 0
        try:
            return read_words(pdu, function, count)
        except ExceptionAnswer as exc:
            raise ModbusError("exception", f"unit {unit_id}: {exc}", exc.code) from None
        except AnswerError as exc:
            raise ModbusError("io", f"unit {unit_id}: {exc}") from None

    def _frame(self, tid: int, unit: int, pdu: bytes) -> None:
        pending = self._pending
        if pending is None or pending[0] != tid or pending[2].done():
            self.stale_answers += 1  # the answer to a request that already timed out
            return
        if unit != pending[1]:
            pending[2].set_exception(
                ModbusError("io", f"answer from unit {unit} to a request to unit {pending[1]}")
            )
            return
        pending[2].set_result(pdu)

    def _fail_pending(self, message: str) -> None:
        pending = self._pending
        if pending is not None and not pending[2].done():
            pending[2].set_exception(ModbusError("io", message))

    def _desync(self, message: str) -> None:
        """Garbage on the stream: nothing after it can be trusted; start a new connection."""
        self._fail_pending(f"bus {self._bus.name}: {message}")
        self._drop(message)

    def _drop(self, reason: str) -> None:
        log.debug("bus %s: closing the connection: %s", self._bus.name, reason)
        if self._transport is not None:
            self._transport.close()
        self._transport = None

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail_pending(f"bus {self._bus.name}: connection lost ({exc or 'closed'})")

    async def close(self) -> None:
        self._drop("closed by the agent")
        await asyncio.sleep(0)  # let connection_lost run


def _expire(future: asyncio.Future[bytes], unit_id: int) -> None:
    if not future.done():
        future.set_exception(ModbusError("timeout", f"unit {unit_id}: no answer in time"))


def inter_frame_silence(bus: Bus) -> float:
    """Seconds the master keeps a local RS-485 line quiet between frames: 3.5 characters, fixed
    at 1.75 ms above 19200 baud (Modbus over Serial Line v1.02, 2.5.1.1). pymodbus sends the
    next request as soon as an answer is complete; slow slaves then miss its first bytes. A
    converter (`rtu-over-tcp`) keeps its own serial timing, so only `rtu` waits."""
    if bus.transport != "rtu" or bus.serial is None:
        return 0.0
    s = bus.serial
    bits = 1 + s.data_bits + (s.parity != "N") + s.stop_bits
    return 3.5 * bits / s.baud if s.baud <= 19200 else 0.00175


def open_line(bus: Bus) -> Line:
    """The default line factory: Modbus TCP on `MbapLine`, RTU (serial or over TCP) on
    pymodbus."""
    if bus.transport == "tcp":
        return MbapLine(bus)
    return PymodbusLine(bus)
