"""The Modbus adapter: one `Line` per configured `Bus`, reading registers one transaction at a
time, with every failure turned into one declared error, `ModbusError`.

Built on pymodbus 3.16's async clients (TCP; RTU on a serial port through pyserial; RTU framing
over TCP for RS-485-to-Ethernet converters in transparent mode). What this module adds:

* pymodbus' own background reconnect task is switched off (`reconnect_delay=0`): the line
  connects on demand, and after a failed connect it refuses reads until an exponentially
  growing wait has passed, so a converter that is down costs one connect attempt per wait
  instead of one per device and cycle.
* pymodbus retries are switched off; `Bus.retries` is applied here, so every attempt is
  counted and the poller can decide to skip retries for a device that is already failing.
* pymodbus closes a TCP connection after `retries + 3` unanswered requests in a row; on a
  converter a dead device times out while its neighbours answer (each answer resets that
  count), so the default stays: it re-establishes a wedged connection.
* On a local serial line the master keeps the 3.5-character silence between frames
  (`inter_frame_silence`), which pymodbus does not.
* The answer is checked against the request (function code, register count): a short or
  mismatched answer is an `io` failure, never words that decode into a wrong value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final, Literal, Protocol

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gateway_agent.site import Bus

FailureKind = Literal["timeout", "exception", "io"]
FAILURE_KINDS: Final[tuple[FailureKind, ...]] = ("timeout", "exception", "io")
READ_FUNCTIONS: Final = (3, 4)
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
        """`count` registers from `address` with function 3 or 4; raises only ModbusError.

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


class PymodbusLine:
    """A `Line` over a pymodbus async client; connects and reconnects on its own.

    `monotonic` times the reconnect waits (real time: sockets live in real time even when the
    poller runs on a simulated clock).
    """

    def __init__(self, bus: Bus, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._bus = bus
        self._client = make_client(bus)
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
        attempts = 1 + (self._bus.retries if retries is None else retries)
        async with self._lock:
            failure: ModbusError | None = None
            for _ in range(attempts):
                if self._silence:
                    wait = self._quiet_until - self._monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                try:
                    return await self._attempt(unit_id, function, address, count)
                except ModbusError as exc:
                    failure = exc
                    if exc.kind == "exception":  # the device answered: asking again won't help
                        break
                finally:
                    self._quiet_until = self._monotonic() + self._silence
            assert failure is not None
            raise failure

    async def _ensure_connected(self) -> None:
        if self._client.connected:
            return
        now = self._monotonic()
        if now < self._next_connect:
            raise ModbusError(
                "io", f"bus {self._bus.name}: not connected (next attempt in"
                f" {self._next_connect - now:.1f} s)"
            )  # fmt: skip
        try:
            ok = await self._client.connect()
        except (OSError, ModbusException) as exc:  # pragma: no cover - pymodbus reports False
            log.debug("bus %s: connect raised %r", self._bus.name, exc)
            ok = False
        if not ok:
            self.connect_failures += 1
            self._connect_wait = min(
                max(2 * self._connect_wait, _CONNECT_BACKOFF_MIN_S), self._bus.backoff_max_s
            )
            self._next_connect = self._monotonic() + self._connect_wait
            raise ModbusError("io", f"bus {self._bus.name}: cannot connect")
        self.connects += 1
        self._connect_wait = 0.0

    async def _attempt(
        self, unit_id: int, function: int, address: int, count: int
    ) -> tuple[int, ...]:
        await self._ensure_connected()
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
    """The default line factory: a pymodbus line for the bus."""
    return PymodbusLine(bus)
