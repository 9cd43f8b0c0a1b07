"""Device profiles: a meter model's register map as TOML, validated when it is loaded.

A profile says, per channel of the closed vocabulary (`contracts.channels`), where the value
lives (function code 3 or 4 and an address with its numbering made explicit), how it is
encoded (`registers.Format`), its unit after scaling, plausible range, counter modulus and
poll group; and per model the largest read, the address ranges the device answers, serial
defaults, default unit id and identity registers (serial number). Golden vectors from the
public register maps are embedded and checked at load: a profile whose vectors do not decode
(or do not encode back to the same words) is rejected, so a map and its decoder cannot drift.

Errors name the file, the line (best effort: the table or key) and the field. Pure: the
gateway and the simulators both read profiles through this module.

Address numbering, made explicit because manuals differ:
    protocol-0based  the address on the wire (0x0048)
    manual-1based    register numbers counted from 1 (Schneider Reg 3000 -> 2999)
    modicon          5/6-digit numbers with a table prefix (Eastron 30073 -> input 0x0048,
                     40001 -> holding 0x0000); only for FC04 (3xxxx) and FC03 (4xxxx)
"""

from __future__ import annotations

import bisect
import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from contracts.channels import CHANNELS, COUNTERS
from gateway_agent.registers import (
    Decoded,
    DecodeError,
    DType,
    EncodeError,
    Format,
    Order,
    decode,
    encode,
    raw_bounds,
)

FUNCTIONS: Final = (3, 4)
NUMBERINGS: Final = ("protocol-0based", "manual-1based", "modicon")
KINDS: Final = ("electricity", "water", "heat", "gas")
MODBUS_MAX_READ: Final = 125


class LocatedError(ValueError):
    """A configuration file problem and where it is: file, line (best effort) and field."""

    def __init__(self, file: str, line: int | None, field: str, message: str) -> None:
        self.file, self.line, self.field, self.message = file, line, field, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {message}")


class ProfileError(LocatedError):
    """A profile that cannot be used, with where the problem is."""


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """Where and how one channel is read."""

    channel: str
    function: int
    address: int  # 0-based wire address
    fmt: Format
    unit: str
    poll_group: str
    plausible: tuple[float, float] | None = None
    raw_modulus: int | None = None  # counters: the raw number wraps to 0 here
    note: str = ""

    @property
    def count(self) -> int:
        return self.fmt.count

    @property
    def modulus(self) -> float | None:
        """The engineering value at which the counter wraps back to zero."""
        return None if self.raw_modulus is None else self.raw_modulus * self.fmt.scale

    @property
    def cumulative(self) -> bool:
        return self.channel in COUNTERS

    def decode(self, words: Sequence[int]) -> Decoded:
        return decode(words, self.fmt)

    def is_plausible(self, value: float) -> bool:
        if self.plausible is None:
            return math.isfinite(value)
        return self.plausible[0] <= value <= self.plausible[1]


@dataclass(frozen=True, slots=True)
class IdentitySpec:
    """A register that identifies or configures the device (serial number, CT ratio)."""

    name: str
    function: int
    address: int
    fmt: Format
    default: float = 0.0

    @property
    def count(self) -> int:
        return self.fmt.count


@dataclass(frozen=True, slots=True)
class Golden:
    """Raw registers from a public source and the value they must decode to."""

    channel: str
    registers: tuple[int, ...]
    value: float | None  # None: the registers are a NaN sentinel
    source: str = ""


@dataclass(frozen=True, slots=True)
class SerialDefaults:
    baud: int
    parity: Literal["N", "E", "O"]
    stop_bits: int
    data_bits: int = 8


@dataclass(frozen=True, slots=True)
class Span:
    """Wire addresses [first, last] of one function code."""

    function: int
    first: int
    last: int


@dataclass(frozen=True, eq=False)
class Profile:
    """One meter model's register map."""

    id: str
    manufacturer: str
    model: str
    kind: str
    channels: Mapping[str, ChannelSpec]
    identity: Mapping[str, IdentitySpec]
    max_registers_per_read: int
    default_unit_id: int
    serial: SerialDefaults
    poll_groups: Mapping[str, float]
    readable: tuple[Span, ...] = ()
    forbidden: tuple[Span, ...] = ()
    golden: tuple[Golden, ...] = ()
    source: str = ""
    _answered: dict[int, tuple[list[int], list[int]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        spans = [Span(c.function, c.address, c.address + c.count - 1) for c in self.registers()]
        spans += list(self.readable)
        answered: dict[int, tuple[list[int], list[int]]] = {}
        for fc in FUNCTIONS:
            merged = _subtract(
                _merge([(s.first, s.last + 1) for s in spans if s.function == fc]),
                [(s.first, s.last + 1) for s in self.forbidden if s.function == fc],
            )
            answered[fc] = ([a for a, _ in merged], [b for _, b in merged])
        object.__setattr__(self, "_answered", answered)

    def registers(self) -> Iterator[ChannelSpec | IdentitySpec]:
        yield from self.channels.values()
        yield from self.identity.values()

    def answers(self, function: int, address: int, count: int) -> bool:
        """Whether the device answers a read of `count` registers at `address` (else 0x02)."""
        if function not in self._answered or count < 1:
            return False
        starts, ends = self._answered[function]
        i = bisect.bisect_right(starts, address) - 1
        return i >= 0 and address + count <= ends[i]

    def answered_spans(self, function: int) -> list[tuple[int, int]]:
        """Half-open [start, end) wire ranges the device answers, for a read planner."""
        starts, ends = self._answered.get(function, ([], []))
        return list(zip(starts, ends, strict=True))


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _subtract(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = ranges
    for h0, h1 in holes:
        nxt: list[tuple[int, int]] = []
        for a, b in out:
            if h1 <= a or h0 >= b:
                nxt.append((a, b))
                continue
            if a < h0:
                nxt.append((a, h0))
            if h1 < b:
                nxt.append((h1, b))
        out = nxt
    return out


# --- loading -------------------------------------------------------------------------------


class _Locator:
    """Best-effort line numbers for a table (and key) in TOML source."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def line(self, table: str, index: int | None = None, key: str | None = None) -> int | None:
        if not table:
            return None
        parts = [re.escape(p) for p in table.split(".")]
        dotted = r"\s*\.\s*".join(f"(?:{p}|\"{p}\"|'{p}')" for p in parts)
        header = re.compile(
            rf"^\s*\[\[\s*{dotted}\s*\]\]" if index is not None else rf"^\s*\[\s*{dotted}\s*\]"
        )
        seen = -1
        for i, text in enumerate(self.lines):
            if header.match(text):
                seen += 1
                if index is None or seen == index:
                    return self._key_line(i, key) if key else i + 1
        return None

    def _key_line(self, start: int, key: str) -> int:
        pattern = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
        for i in range(start + 1, len(self.lines)):
            if self.lines[i].lstrip().startswith("["):
                break
            if pattern.match(self.lines[i]):
                return i + 1
        return start + 1


class _Reader:
    """Typed access to one TOML table, raising `error` (`ProfileError` here) with file, line
    and field. The site loader subclasses it with its own error type."""

    error: type[LocatedError] = ProfileError

    def __init__(
        self, file: str, loc: _Locator, data: Mapping[str, Any], table: str, index: int | None
    ) -> None:
        self.file, self.loc, self.data, self.table, self.index = file, loc, data, table, index
        self.used: set[str] = set()

    def path(self, key: str | None = None) -> str:
        base = self.table if self.index is None else f"{self.table}[{self.index}]"
        return f"{base}.{key}" if key else base

    def fail(self, key: str | None, message: str) -> LocatedError:
        line = self.loc.line(self.table, self.index, key)
        return self.error(self.file, line, self.path(key), message)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.fail(None, f"missing required field {key!r}")
            return default
        value = self.data[key]
        bad_bool = isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,)
        )
        if bad_bool or not isinstance(value, kind):
            raise self.fail(key, f"expected {_kind_name(kind)}, got {value!r}")
        return value

    def number(self, key: str, default: Any = ...) -> Any:
        value = self.get(key, (int, float), default)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, f"must be finite, got {value!r}")
        return value

    def choice(self, key: str, options: Sequence[Any], default: Any = ...) -> Any:
        value = self.get(key, (str, int), default)
        if value not in options:
            raise self.fail(key, f"{value!r} is not one of {', '.join(map(str, options))}")
        return value

    def table_of(self, key: str) -> Mapping[str, Any]:
        value = self.get(key, dict, {})
        return value  # type: ignore[no-any-return]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], f"unknown field {unknown[0]!r}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "integer", float: "number", str: "string", list: "array", dict: "table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _wire_address(r: _Reader, function: int, key: str = "address") -> int:
    """The 0-based wire address of `key`, per the table's explicit `numbering`."""
    numbering = r.choice("numbering", NUMBERINGS)
    number: int = r.get(key, int)
    if numbering == "protocol-0based":
        wire = number
    elif numbering == "manual-1based":
        wire = number - 1
    else:
        base = {4: 30001, 3: 40001}[function]
        if base <= number <= base + 9998:
            wire = number - base
        elif base * 10 - 9 <= number <= base * 10 - 10 + 65536:
            wire = number - (base * 10 - 9)
        else:
            raise r.fail(key, f"modicon number {number} is not in the {base // 10000}xxxx table "
                         f"of function {function}")  # fmt: skip
    if not 0 <= wire <= 0xFFFF:
        raise r.fail(key, f"{number} ({numbering}) is outside the 0..65535 address space")
    return wire


def _format(r: _Reader, *, allow_sentinels: bool) -> Format:
    dtype = DType(r.choice("dtype", [d.value for d in DType]))
    order = Order(r.choice("order", [o.value for o in Order], "ABCD"))
    scale = r.number("scale", 1.0)
    offset = r.number("offset", 0.0)
    sentinels: frozenset[int] = frozenset()
    if allow_sentinels:
        items = r.get("nan_sentinels", list, [])
        top = (1 << (16 * dtype.words)) - 1
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= top:
                raise r.fail("nan_sentinels", f"{item!r} is not a raw {dtype} bit pattern")
        sentinels = frozenset(items)
    if scale == 0:
        raise r.fail("scale", "must not be zero")
    return Format(dtype, order, float(scale), float(offset), sentinels)


def _channel(r: _Reader, name: str, poll_groups: Mapping[str, float]) -> ChannelSpec:
    if name not in CHANNELS:
        raise r.fail(None, f"{name!r} is not a channel of contracts.channels.CHANNELS")
    function = r.choice("function", FUNCTIONS)
    address = _wire_address(r, function)
    fmt = _format(r, allow_sentinels=True)
    if address + fmt.count > 0x10000:
        raise r.fail("address", "value runs past register 65535")
    unit = r.get("unit", str)
    if unit != CHANNELS[name].unit:
        raise r.fail("unit", f"{unit!r} is not the unit of channel {name} "
                     f"({CHANNELS[name].unit!r}); scale the register to it")  # fmt: skip
    poll_group = r.get("poll_group", str)
    if poll_group not in poll_groups:
        raise r.fail("poll_group", f"{poll_group!r} is not in [profile.poll_groups]")
    plausible = None
    if "range" in r.data:
        bounds = r.get("range", list)
        ok = len(bounds) == 2 and all(
            isinstance(b, int | float) and not isinstance(b, bool) for b in bounds
        )
        if not ok or not bounds[0] < bounds[1]:
            raise r.fail("range", f"expected [low, high] with low < high, got {bounds!r}")
        plausible = (float(bounds[0]), float(bounds[1]))
    raw_modulus = _modulus(r, name, fmt)
    note = r.get("note", str, "")
    r.done()
    return ChannelSpec(name, function, address, fmt, unit, poll_group, plausible, raw_modulus, note)


def _modulus(r: _Reader, name: str, fmt: Format) -> int | None:
    """Counters wrap at the register width (or a declared decimal limit); floats do not."""
    low, high = raw_bounds(fmt.dtype)
    if name not in COUNTERS:
        if "modulus" in r.data:
            raise r.fail("modulus", f"{name} is not a cumulative channel")
        return None
    if "modulus" not in r.data:
        if fmt.dtype.is_float:
            return None
        return int(high) + 1 if low == 0 else int(-low)
    value: float = r.number("modulus")
    raw = value / fmt.scale
    if fmt.dtype.is_float or abs(raw - round(raw)) > 1e-6 * abs(raw) or not 1 < raw <= high + 1:
        raise r.fail("modulus", f"{value} is not a whole raw count within {fmt.dtype}")
    return round(raw)


def _identity(r: _Reader, name: str) -> IdentitySpec:
    function = r.choice("function", FUNCTIONS)
    address = _wire_address(r, function)
    fmt = _format(r, allow_sentinels=False)
    default = float(r.number("default", 0.0))
    r.done()
    return IdentitySpec(name, function, address, fmt, default)


def _span(r: _Reader) -> Span:
    function = r.choice("function", FUNCTIONS)
    first = _wire_address(r, function, "first")
    last = _wire_address(r, function, "last")
    if last < first:
        raise r.fail("last", "must not be below first")
    r.done()
    return Span(function, first, last)


def _golden(r: _Reader, channels: Mapping[str, ChannelSpec]) -> Golden:
    name = r.get("channel", str)
    if name not in channels:
        raise r.fail("channel", f"{name!r} is not a channel of this profile")
    spec = channels[name]
    words = r.get("registers", list)
    if len(words) != spec.count or not all(
        isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= 0xFFFF for w in words
    ):
        raise r.fail("registers", f"{spec.fmt.dtype} needs {spec.count} words 0..0xFFFF")
    sentinel = r.get("sentinel", bool, False)
    value = None if sentinel else float(r.number("value"))
    tolerance = float(r.number("tolerance", 0.0))
    encodes = r.get("encodes", bool, True)
    source = r.get("source", str, "")
    r.done()
    try:
        decoded = spec.decode(words)
    except DecodeError as exc:
        raise r.fail("registers", f"do not decode: {exc}") from exc
    if value is None:
        if not decoded.sentinel:
            raise r.fail("registers", f"expected a NaN sentinel, decoded {decoded.value!r}")
        return Golden(name, tuple(words), None, source)
    if decoded.sentinel or not _close(decoded.value, value, spec.fmt, tolerance):
        raise r.fail("value", f"registers {_hex(words)} decode to {decoded.value!r}, not {value!r}")
    if encodes:
        try:
            again = encode(value, spec.fmt)
        except EncodeError as exc:
            raise r.fail("value", f"does not encode: {exc}") from exc
        if list(again) != list(words):
            raise r.fail("value", f"{value!r} encodes to {_hex(again)}, not {_hex(words)}")
    return Golden(name, tuple(words), value, source)


def _close(got: float, want: float, fmt: Format, tolerance: float) -> bool:
    if tolerance:
        return abs(got - want) <= tolerance
    rel = 1e-6 if fmt.dtype is DType.F32 else 1e-12
    return math.isclose(got, want, rel_tol=rel, abs_tol=1e-12)


def _hex(words: Sequence[int]) -> str:
    return "[" + ", ".join(f"0x{w:04X}" for w in words) + "]"


def _check_layout(file: str, loc: _Locator, profile: Profile) -> None:
    """No two registers overlap, none sits in a forbidden span, each fits one read."""
    taken: dict[tuple[int, int], str] = {}
    for spec in profile.registers():
        table = ("channels." if isinstance(spec, ChannelSpec) else "profile.identity.") + (
            spec.channel if isinstance(spec, ChannelSpec) else spec.name
        )
        label = table.rsplit(".", 1)[1]
        for a in range(spec.address, spec.address + spec.count):
            other = taken.setdefault((spec.function, a), label)
            if other != label:
                raise ProfileError(file, loc.line(table, None, "address"), f"{table}.address",
                                   f"overlaps {other} at wire address {a:#06x}")  # fmt: skip
        if spec.count > profile.max_registers_per_read:
            raise ProfileError(file, loc.line(table), table, "longer than max_registers_per_read")
        for s in profile.forbidden:
            if (
                s.function == spec.function
                and s.first < spec.address + spec.count
                and (spec.address <= s.last)
            ):
                raise ProfileError(file, loc.line(table, None, "address"), f"{table}.address",
                                   "lies in a forbidden span")  # fmt: skip


def parse_profile(text: str, file: str = "<profile>") -> Profile:
    """Validate a profile's TOML source; raises `ProfileError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ProfileError(file, int(match.group(1)) if match else None, "toml", str(exc)) from exc
    loc = _Locator(text)
    top = _Reader(file, loc, data, "", None)
    head = _Reader(file, loc, top.get("profile", dict), "profile", None)
    channels_data = top.get("channels", dict)
    top.done()

    pid = head.get("id", str)
    if not re.fullmatch(r"[a-z0-9_]+", pid):
        raise head.fail("id", f"{pid!r}: use lowercase letters, digits and _")
    max_read = head.get("max_registers_per_read", int)
    if not 1 <= max_read <= MODBUS_MAX_READ:
        raise head.fail("max_registers_per_read", f"{max_read} is not within 1..125")
    unit_id = head.get("default_unit_id", int)
    if not 1 <= unit_id <= 247:
        raise head.fail("default_unit_id", f"{unit_id} is not within 1..247")

    sr = _Reader(file, loc, head.get("serial", dict), "profile.serial", None)
    serial = SerialDefaults(
        baud=sr.choice("baud", (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)),
        parity=sr.choice("parity", ("N", "E", "O")),
        stop_bits=sr.choice("stop_bits", (1, 2)),
        data_bits=sr.choice("data_bits", (7, 8), 8),
    )
    sr.done()

    pg = _Reader(file, loc, head.get("poll_groups", dict), "profile.poll_groups", None)
    poll_groups: dict[str, float] = {}
    for name in pg.data:
        seconds = pg.number(name)
        if seconds <= 0:
            raise pg.fail(name, "poll interval must be positive seconds")
        poll_groups[name] = float(seconds)
    if not poll_groups:
        raise pg.fail(None, "declare at least one poll group")

    def spans(key: str) -> tuple[Span, ...]:
        items = head.get(key, list, [])
        return tuple(
            _span(_Reader(file, loc, item, f"profile.{key}", i)) for i, item in enumerate(items)
        )

    readable, forbidden = spans("readable"), spans("forbidden")

    identity = {
        name: _identity(_Reader(file, loc, table, f"profile.identity.{name}", None), name)
        for name, table in head.get("identity", dict, {}).items()
    }
    channels = {
        name: _channel(_Reader(file, loc, table, f"channels.{name}", None), name, poll_groups)
        for name, table in channels_data.items()
    }
    if not channels:
        raise top.fail("channels", "a profile needs at least one channel")
    goldens = tuple(
        _golden(_Reader(file, loc, item, "profile.golden", i), channels)
        for i, item in enumerate(head.get("golden", list, []))
    )
    if not goldens:
        raise head.fail("golden", "embed at least one golden vector from a public source")
    sources = head.get("sources", list, [])
    profile = Profile(
        id=pid,
        manufacturer=head.get("manufacturer", str),
        model=head.get("model", str),
        kind=head.choice("kind", KINDS),
        channels=channels,
        identity=identity,
        max_registers_per_read=max_read,
        default_unit_id=unit_id,
        serial=serial,
        poll_groups=poll_groups,
        readable=readable,
        forbidden=forbidden,
        golden=goldens,
        source="; ".join(str(s) for s in sources),
    )
    head.done()
    _check_layout(file, loc, profile)
    return profile


def load_profile(path: str | Path) -> Profile:
    """Read and validate one profile file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(str(path), None, "file", str(exc)) from exc
    return parse_profile(text, str(path))


@cache
def builtin_profiles() -> Mapping[str, Profile]:
    """The profiles shipped in gateway_agent/profiles/, by id."""
    folder = resources.files("gateway_agent").joinpath("profiles")
    found: dict[str, Profile] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            profile = parse_profile(entry.read_text(encoding="utf-8"), f"profiles/{entry.name}")
            if profile.id in found:
                raise ProfileError(f"profiles/{entry.name}", None, "profile.id", "duplicate id")
            found[profile.id] = profile
    return found


def builtin_profile(profile_id: str) -> Profile:
    try:
        return builtin_profiles()[profile_id]
    except KeyError:
        known = ", ".join(sorted(builtin_profiles()))
        raise KeyError(f"no built-in profile {profile_id!r}; known: {known}") from None
