"""Scenario files: which projects, meters and faults a simulation has (TOML, validated).

A scenario names projects (each with an IANA time zone, a location for the sun and a climate),
groups of meters in them, and faults. Fault times are absolute (`2026-01-03T08:00:00+08:00`, or
naive = the meter's project local time) or relative to the run start (`"+1d6h30m"`), so a
scenario can be replayed from any start date. `load_scenario` reports every problem at once, each
with its place in the file:

    residential.toml: projects[0].meters[2].profile: unknown profile 'sdm630' (known: ...)

`plan()` resolves a scenario for one run (start instant, seed) into `Plan`: one `MeterSpec` per
meter and one `FaultSpec` per (fault, meter), all in unix seconds.

File layout (see scenarios/*.toml):

    [scenario]         name, seed, start, time_zone, gateway_timeout_ms, clock_tolerance_s
    [[projects]]       id, name, time_zone, latitude, longitude, climate = {...}
    [[projects.meters]] id, count, building, kind, profile, load, occupancy, scale, bus,
                       per_bus, unit_id_start, serial, opening = {counter = v}, modulus = {...}
    [[faults]]         kind, meter | meters (ids or globs), start, end, note, and per kind:

    leak         flow_m3h (water)             spike        factor | extra (W or m3/h), end
    stuck        channels, resume, end        zero_read    channels, probability, end
    nan_read     channels, probability, end   rollover     channel, modulus, start_value
    reset        channels, downtime           replacement  new_serial, opening, downtime
    no_response  end                          busy         probability, end
    slow         delay_ms, end                clock_drift  drift_s_per_day
    degradation  ramp_days, energy_per_cycle_pct, short_cycling_factor (pumps)
    ct_reversal  phases                       phase_loss   phase (three-phase meters)
    retrofit     savings_pct
"""

from __future__ import annotations

import fnmatch
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from simulators.catalogue import LOADS_BY_KIND, PROFILES, MeterKind, Occupancy
from simulators.faults import FaultKind, FaultSpec
from simulators.physics import stable_key
from simulators.weather import Climate

DEFAULT_TIME_ZONE = "Asia/Shanghai"
MAX_SERIAL = 2**32 - 1
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class ScenarioError(ValueError):
    """A scenario that cannot be used, with one line per problem."""

    SHOWN = 20

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {p}" for p in problems[: self.SHOWN]]
        if len(problems) > self.SHOWN:
            lines.append(f"{source}: ... and {len(problems) - self.SHOWN} more problems")
        super().__init__("\n".join(lines))


def parse_duration(text: str) -> int:
    """Seconds in "1d6h30m15s" (any subset, in that order); "0" and "0m" are zero."""
    text = text.strip()
    if text == "0":
        return 0
    match = _DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"bad duration {text!r} (expected like '2d', '6h30m', '90s')")
    d, h, m, s = (int(g) if g else 0 for g in match.groups())
    return ((d * 24 + h) * 60 + m) * 60 + s


TimeRef = str | datetime | date
Duration = Annotated[str, Field(pattern=r"^(0|(\d+d)?(\d+h)?(\d+m)?(\d+s)?)$", min_length=1)]


def _check_time_ref(value: TimeRef | None) -> TimeRef | None:
    if isinstance(value, str):
        if value.startswith("+"):
            parse_duration(value[1:])
        else:
            try:
                datetime.fromisoformat(value)
            except ValueError as exc:
                raise ValueError(
                    f"bad time {value!r}: use an ISO date/time or '+<duration>' from the run start"
                ) from exc
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClimateModel(_Model):
    mean_c: float = 17.0
    seasonal_amplitude_c: float = Field(11.5, ge=0)
    warmest_day: int = Field(205, ge=1, le=366)
    diurnal_amplitude_c: float = Field(3.5, ge=0)
    noise_c: float = Field(2.0, ge=0)
    humidity_pct: float = Field(72.0, ge=0, le=100)


class MeterGroup(_Model):
    """`count` meters alike. `id`, `building`, `serial` and `bus` are templates: {n} is the
    1-based number in the group, {b} the 1-based bus number when the group spans buses of
    `per_bus` meters.
    Modbus unit ids count from `unit_id_start`, or by default continue after the last id
    given on the same bus (the default bus is `<project>-rs485-{b}`)."""

    id: str = Field(min_length=1)
    count: int = Field(1, ge=1, le=100_000)
    building: str | None = None
    kind: MeterKind
    profile: str
    load: str | None = None
    occupancy: Occupancy = "household"
    scale: float = Field(1.0, gt=0)
    bus: str | None = None
    per_bus: int = Field(32, ge=1, le=247)
    unit_id_start: int | None = Field(None, ge=1, le=247)
    serial: str | None = Field(None, description="template of a decimal uint32, e.g. '2401{n:04d}'")
    opening: dict[str, float] | None = None
    modulus: dict[str, float] | None = None

    @field_validator("id", "building", "serial", "bus")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return value
        names = {f[1] for f in string.Formatter().parse(value) if f[1] is not None}
        if not names <= {"n", "b"}:
            raise ValueError(f"template {value!r} may only use {{n}} and {{b}}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MeterGroup:
        profile = PROFILES.get(self.profile)
        if profile is None:
            raise ValueError(f"unknown profile {self.profile!r} (known: {', '.join(PROFILES)})")
        if profile.kind != self.kind:
            raise ValueError(f"profile {self.profile!r} is a {profile.kind} meter, not {self.kind}")
        load = self.load_shape
        if load not in LOADS_BY_KIND[self.kind]:
            allowed = ", ".join(sorted(LOADS_BY_KIND[self.kind]))
            raise ValueError(f"load {load!r} does not fit a {self.kind} meter (one of: {allowed})")
        if self.count > 1 and "{n}" not in self.id and "{n:" not in self.id:
            raise ValueError(f"id {self.id!r} needs {{n}} when count > 1")
        if self.serial is not None:
            for n in (1, self.count):
                text = self.serial.format(n=n, b=1 + (n - 1) // self.per_bus)
                if not text.isdigit() or not 0 < int(text) <= MAX_SERIAL:
                    raise ValueError(
                        f"serial {text!r} (from {self.serial!r}) is not a decimal number"
                        f" 1..{MAX_SERIAL} (serial registers are uint32)"
                    )
        for what, values in (("opening", self.opening), ("modulus", self.modulus)):
            for channel, v in (values or {}).items():
                if channel not in profile.counters:
                    raise ValueError(
                        f"{what}: {channel!r} is not a counter of {self.profile}"
                        f" (counters: {', '.join(profile.counters)})"
                    )
                if v < 0 or (what == "modulus" and v <= 0):
                    raise ValueError(f"{what}: {channel} must be positive")
        return self

    @property
    def load_shape(self) -> str:
        if self.load is not None:
            return self.load
        return {"electricity": "household", "water": "household", "weather": "weather"}[self.kind]


class ProjectModel(_Model):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str | None = None
    time_zone: str = DEFAULT_TIME_ZONE
    latitude: float = Field(31.23, ge=-66, le=66)
    longitude: float = Field(121.47, ge=-180, le=180)
    climate: ClimateModel = ClimateModel()
    meters: list[MeterGroup] = Field(min_length=1)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value


class _FaultBase(_Model):
    meter: str | None = None
    meters: list[str] | None = None
    start: TimeRef = "+0s"
    end: TimeRef | None = None
    note: str | None = None

    _needs_end = False
    _instant = False

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: TimeRef | None) -> TimeRef | None:
        return _check_time_ref(value)

    @model_validator(mode="after")
    def _target(self) -> _FaultBase:
        if (self.meter is None) == (self.meters is None):
            raise ValueError("give exactly one of `meter` (an id) or `meters` (ids or globs)")
        if self._needs_end and self.end is None:
            raise ValueError("this fault needs an `end`")
        if self._instant and self.end is not None:
            raise ValueError("this fault happens at an instant: give `start` only")
        return self

    def targets(self) -> list[str]:
        return [self.meter] if self.meter is not None else list(self.meters or [])

    def extra_params(self) -> dict[str, Any]:
        skip = {"kind", "meter", "meters", "start", "end", "note"}
        return {k: v for k, v in self.model_dump().items() if k not in skip and v is not None}


class LeakFault(_FaultBase):
    kind: Literal["leak"]
    flow_m3h: float = Field(0.03, gt=0)


class SpikeFault(_FaultBase):
    kind: Literal["spike"]
    factor: float = Field(4.0, gt=0)
    extra: float | None = Field(None, gt=0, description="added W or m3/h instead of a factor")
    _needs_end = True


class StuckFault(_FaultBase):
    kind: Literal["stuck"]
    channels: list[str] | None = None
    resume: bool = False
    _needs_end = True


class ZeroReadFault(_FaultBase):
    kind: Literal["zero_read"]
    channels: list[str] | None = None
    probability: float = Field(1.0, gt=0, le=1)
    _needs_end = True


class NanReadFault(_FaultBase):
    kind: Literal["nan_read"]
    channels: list[str] | None = None
    probability: float = Field(1.0, gt=0, le=1)
    _needs_end = True


class RolloverFault(_FaultBase):
    kind: Literal["rollover"]
    channel: str | None = None
    modulus: float = Field(gt=0)
    start_value: float = Field(ge=0)

    @model_validator(mode="after")
    def _below(self) -> RolloverFault:
        if self.start_value >= self.modulus:
            raise ValueError("start_value must be below modulus")
        if self.start != "+0s" or self.end is not None:
            raise ValueError("rollover has no start/end: the counter opens at start_value")
        return self


class ResetFault(_FaultBase):
    kind: Literal["reset"]
    channels: list[str] | None = None
    downtime: Duration = "0"
    _instant = True


class ReplacementFault(_FaultBase):
    kind: Literal["replacement"]
    new_serial: int | None = Field(None, ge=1, le=MAX_SERIAL)
    opening: dict[str, float] | None = None
    downtime: Duration = "30m"
    _instant = True


class NoResponseFault(_FaultBase):
    kind: Literal["no_response"]
    _needs_end = True


class BusyFault(_FaultBase):
    kind: Literal["busy"]
    probability: float = Field(1.0, gt=0, le=1)
    _needs_end = True


class SlowFault(_FaultBase):
    kind: Literal["slow"]
    delay_ms: float = Field(gt=0)
    _needs_end = True


class ClockDriftFault(_FaultBase):
    kind: Literal["clock_drift"]
    drift_s_per_day: float = 30.0


class DegradationFault(_FaultBase):
    kind: Literal["degradation"]
    ramp_days: float = Field(21.0, gt=0)
    energy_per_cycle_pct: float = Field(0.0, ge=0, le=300)
    short_cycling_factor: float = Field(1.0, ge=1, le=10)


class CtReversalFault(_FaultBase):
    kind: Literal["ct_reversal"]
    phases: list[Annotated[int, Field(ge=1, le=3)]] | None = None


class PhaseLossFault(_FaultBase):
    kind: Literal["phase_loss"]
    phase: int = Field(1, ge=1, le=3)


class RetrofitFault(_FaultBase):
    kind: Literal["retrofit"]
    savings_pct: float = Field(gt=0, lt=100)


FaultModel = Annotated[
    LeakFault
    | SpikeFault
    | StuckFault
    | ZeroReadFault
    | NanReadFault
    | RolloverFault
    | ResetFault
    | ReplacementFault
    | NoResponseFault
    | BusyFault
    | SlowFault
    | ClockDriftFault
    | DegradationFault
    | CtReversalFault
    | PhaseLossFault
    | RetrofitFault,
    Field(discriminator="kind"),
]


class ScenarioHeader(_Model):
    name: str = Field(min_length=1)
    description: str | None = None
    seed: int = 0
    start: TimeRef = "2026-01-01"
    time_zone: str = DEFAULT_TIME_ZONE
    gateway_timeout_ms: float = Field(1000.0, gt=0)
    clock_tolerance_s: float = Field(60.0, gt=0)

    @field_validator("start")
    @classmethod
    def _start(cls, value: TimeRef) -> TimeRef:
        if isinstance(value, str) and value.startswith("+"):
            raise ValueError("the scenario start must be absolute")
        return _check_time_ref(value) or value


class Scenario(_Model):
    scenario: ScenarioHeader
    projects: list[ProjectModel] = Field(min_length=1)
    faults: list[FaultModel] = []


# ---------------------------------------------------------------------------------------------
# Expanded, resolved form
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    id: str
    name: str
    time_zone: str
    latitude: float
    longitude: float
    climate: Climate


@dataclass(frozen=True, slots=True)
class MeterSpec:
    meter_id: str
    project: str
    building: str | None
    kind: MeterKind
    profile: str
    load: str
    occupancy: str
    scale: float
    bus: str | None
    unit_id: int | None
    serial: int
    opening: Mapping[str, float]
    modulus: Mapping[str, float]

    @property
    def transport(self) -> str:
        return PROFILES[self.profile].transport


@dataclass(frozen=True, slots=True)
class Plan:
    """A scenario resolved for one run: everything in unix seconds, meters expanded."""

    name: str
    seed: int
    start: int
    projects: Mapping[str, ProjectSpec]
    meters: tuple[MeterSpec, ...]
    faults: tuple[FaultSpec, ...]
    gateway_timeout_s: float = 1.0
    clock_tolerance_s: float = 60.0
    by_id: Mapping[str, MeterSpec] = field(default_factory=dict)

    def faults_of(self, meter_id: str) -> tuple[FaultSpec, ...]:
        return tuple(f for f in self.faults if f.meter_id == meter_id)


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.endswith("Fault") or p in {"function-after", "function-before"}:
            continue  # pydantic's union-member and validator tags
        else:
            out += f".{p}" if out else str(p)
    return out or "(top level)"


def _expand(
    group: MeterGroup, project: ProjectModel, seed: int, next_free: dict[str, int]
) -> list[MeterSpec]:
    """The meters of a group; `next_free` (bus -> next unit id) is shared across groups."""
    profile = PROFILES[group.profile]
    out = []
    for i in range(group.count):
        n = i + 1
        b = i // group.per_bus + 1
        meter_id = group.id.format(n=n, b=b)
        if profile.transport == "modbus":
            bus = (group.bus or f"{project.id}-rs485-{{b}}").format(n=n, b=b)
            if group.unit_id_start is not None:
                unit_id: int | None = group.unit_id_start + i % group.per_bus
            else:
                unit_id = next_free.get(bus, 1)
            next_free[bus] = max(next_free.get(bus, 1), (unit_id or 0) + 1)
        else:
            bus, unit_id = None, None
        serial = (
            int(group.serial.format(n=n, b=b)) if group.serial else _default_serial(seed, meter_id)
        )
        modulus = dict(profile.default_modulus)
        modulus.update(group.modulus or {})
        out.append(
            MeterSpec(
                meter_id=meter_id,
                project=project.id,
                building=None if group.building is None else group.building.format(n=n, b=b),
                kind=group.kind,
                profile=group.profile,
                load=group.load_shape,
                occupancy=group.occupancy,
                scale=group.scale,
                bus=bus,
                unit_id=unit_id,
                serial=serial,
                opening=dict(group.opening or {}),
                modulus=modulus,
            )
        )
    return out


def _default_serial(seed: int, *parts: object) -> int:
    """An 8-digit serial number, stable for (seed, parts)."""
    return 10_000_000 + stable_key(seed, "serial", *parts) % 90_000_000


def _match(pattern: str, ids: list[str]) -> list[str]:
    if any(ch in pattern for ch in "*?["):
        return [m for m in ids if fnmatch.fnmatchcase(m, pattern)]
    return [pattern] if pattern in ids else []


def _check_faults(scenario: Scenario, meters: dict[str, MeterSpec]) -> list[str]:
    problems = []
    ids = list(meters)
    for i, fault in enumerate(scenario.faults):
        where = f"faults[{i}] ({fault.kind})"
        targets: list[str] = []
        for pattern in fault.targets():
            found = _match(pattern, ids)
            if not found:
                problems.append(f"{where}: no meter matches {pattern!r}")
            targets += found
        for meter_id in targets:
            problems += [f"{where}: {p}" for p in _fits(fault, meters[meter_id])]
    return problems


def _fits(fault: FaultModel, meter: MeterSpec) -> list[str]:  # noqa: PLR0911, PLR0912
    profile = PROFILES[meter.profile]
    name = f"meter {meter.meter_id!r} ({meter.profile}, {meter.load})"
    kind = fault.kind
    if kind == "leak" and meter.kind != "water":
        return [f"{name}: a leak needs a water meter"]
    if kind in ("spike", "retrofit") and meter.kind == "weather":
        return [f"{name}: a weather station has no consumption"]
    if kind == "degradation" and meter.load != "pump":
        return [f"{name}: degradation models a pump's cycling; give it a pump"]
    if kind in ("ct_reversal", "phase_loss") and meter.kind != "electricity":
        return [f"{name}: {kind} needs an electricity meter"]
    if kind == "phase_loss" and profile.phases != 3:
        return [f"{name}: phase_loss needs a three-phase meter"]
    single = profile.phases == 1
    if isinstance(fault, CtReversalFault) and fault.phases and single and fault.phases != [1]:
        return [f"{name}: a single-phase meter only has phase 1"]
    if kind in ("stuck", "rollover", "reset", "replacement") and not profile.counters:
        return [f"{name}: {kind} needs a meter with a counter"]
    channels: list[str] = []
    if isinstance(fault, StuckFault | ZeroReadFault | NanReadFault):
        channels = fault.channels or []
        unknown = [c for c in channels if c not in profile.channels]
        if unknown:
            return [f"{name}: has no channel {', '.join(map(repr, unknown))}"]
    if isinstance(fault, ResetFault) and fault.channels:
        unknown = [c for c in fault.channels if c not in profile.counters]
        if unknown:
            return [f"{name}: {', '.join(map(repr, unknown))} is not one of its counters"]
    if isinstance(fault, RolloverFault):
        channel = fault.channel or profile.primary_counter
        if channel not in profile.counters:
            return [f"{name}: {channel!r} is not one of its counters"]
    if isinstance(fault, ReplacementFault) and fault.opening:
        unknown = [c for c in fault.opening if c not in profile.counters]
        if unknown:
            return [f"{name}: {', '.join(map(repr, unknown))} is not one of its counters"]
    return []


def parse_scenario(data: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a scenario given as a mapping (a parsed TOML document)."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{_loc(tuple(err['loc']))}: {msg}")
        raise ScenarioError(source, problems) from None
    try:
        ZoneInfo(scenario.scenario.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScenarioError(
            source, [f"scenario.time_zone: unknown IANA time zone {scenario.scenario.time_zone!r}"]
        ) from None
    problems = []
    meters: dict[str, MeterSpec] = {}
    buses: dict[tuple[str, int], str] = {}
    project_ids: set[str] = set()
    next_free: dict[str, int] = {}
    for pi, project in enumerate(scenario.projects):
        if project.id in project_ids:
            problems.append(f"projects[{pi}].id: duplicate project id {project.id!r}")
        project_ids.add(project.id)
        for gi, group in enumerate(project.meters):
            for spec in _expand(group, project, scenario.scenario.seed, next_free):
                where = f"projects[{pi}].meters[{gi}]"
                if spec.meter_id in meters:
                    problems.append(f"{where}: duplicate meter id {spec.meter_id!r}")
                    continue
                meters[spec.meter_id] = spec
                if spec.bus is not None and spec.unit_id is not None:
                    if spec.unit_id > 247:
                        problems.append(f"{where}: {spec.meter_id}: unit id {spec.unit_id} > 247")
                    other = buses.setdefault((spec.bus, spec.unit_id), spec.meter_id)
                    if other != spec.meter_id:
                        problems.append(
                            f"{where}: {spec.meter_id} and {other} share unit id"
                            f" {spec.unit_id} on bus {spec.bus!r}"
                        )
    problems += _check_faults(scenario, meters)
    if problems:
        raise ScenarioError(source, problems)
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file; ScenarioError lists every problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), [f"invalid TOML: {exc}"]) from None
    return parse_scenario(data, str(path))


def resolve_instant(value: TimeRef, zone: str, run_start: int | None = None) -> int:
    """Unix seconds of a time reference: '+<duration>' after run_start, an aware datetime, or a
    naive date/datetime in `zone`. Sub-second parts are not allowed."""
    if isinstance(value, str) and value.startswith("+"):
        if run_start is None:
            raise ValueError("a relative time needs a run start")
        return run_start + parse_duration(value[1:])
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(zone))
    ts = value.timestamp()
    if ts != int(ts):
        raise ValueError(f"{value.isoformat()}: times must be whole seconds")
    return int(ts)


def _fault_params(fault: FaultModel, meter: MeterSpec, seed: int, index: int) -> dict[str, Any]:
    profile = PROFILES[meter.profile]
    params = fault.extra_params()
    if isinstance(fault, StuckFault):
        params["channels"] = fault.channels or list(profile.counters[:1])
    elif isinstance(fault, ZeroReadFault | NanReadFault):
        params["channels"] = fault.channels or list(profile.channels)
    elif isinstance(fault, ResetFault):
        params["channels"] = fault.channels or list(profile.counters)
        params["downtime_s"] = parse_duration(params.pop("downtime"))
    elif isinstance(fault, ReplacementFault):
        params["downtime_s"] = parse_duration(params.pop("downtime"))
        params["old_serial"] = meter.serial
        params["new_serial"] = fault.new_serial or _default_serial(
            seed, meter.meter_id, "replacement", index
        )
        params["opening"] = {c: float((fault.opening or {}).get(c, 0.0)) for c in profile.counters}
    elif isinstance(fault, RolloverFault):
        params["channel"] = fault.channel or profile.primary_counter
    elif isinstance(fault, CtReversalFault):
        params["phases"] = fault.phases or list(range(1, max(profile.phases, 1) + 1))
    elif isinstance(fault, SpikeFault) and fault.extra is not None:
        params.pop("factor", None)
    return params


def plan(
    scenario: Scenario,
    start: TimeRef | None = None,
    seed: int | None = None,
) -> Plan:
    """Resolve `scenario` for a run starting at `start` (default: the scenario's start; naive
    values are in the scenario's time zone) with `seed` (default: the scenario's)."""
    head = scenario.scenario
    seed = head.seed if seed is None else seed
    run_start = resolve_instant(head.start if start is None else start, head.time_zone)
    if run_start % 60:
        raise ScenarioError("run", [f"start must be on a whole minute (got {run_start})"])
    projects: dict[str, ProjectSpec] = {}
    meters: list[MeterSpec] = []
    next_free: dict[str, int] = {}
    for project in scenario.projects:
        projects[project.id] = ProjectSpec(
            id=project.id,
            name=project.name or project.id,
            time_zone=project.time_zone,
            latitude=project.latitude,
            longitude=project.longitude,
            climate=Climate(**project.climate.model_dump()),
        )
        for group in project.meters:
            meters.extend(_expand(group, project, seed, next_free))
    by_id = {m.meter_id: m for m in meters}
    ids = list(by_id)
    faults: list[FaultSpec] = []
    for index, fault in enumerate(scenario.faults):
        targets = [m for pattern in fault.targets() for m in _match(pattern, ids)]
        for meter_id in dict.fromkeys(targets):
            meter = by_id[meter_id]
            zone = projects[meter.project].time_zone
            begin = resolve_instant(fault.start, zone, run_start)
            end = None if fault.end is None else resolve_instant(fault.end, zone, run_start)
            if isinstance(fault, RolloverFault):
                begin = run_start
            if end is not None and end <= begin:
                raise ScenarioError(
                    "run", [f"faults[{index}] ({fault.kind}) on {meter_id}: end is not after start"]
                )
            kind: FaultKind = fault.kind
            params = _fault_params(fault, meter, seed, index)
            if kind in ("reset", "replacement"):
                end = begin + int(params["downtime_s"])
            faults.append(FaultSpec(meter_id, kind, begin, end, params, index))
    # Rollover faults set the opening reading and modulus of their counter.
    for f in faults:
        if f.kind == "rollover":
            m = by_id[f.meter_id]
            channel = str(f.params["channel"])
            by_id[f.meter_id] = _with(
                m,
                opening={**m.opening, channel: float(f.params["start_value"])},
                modulus={**m.modulus, channel: float(f.params["modulus"])},
            )
    meters = [by_id[m.meter_id] for m in meters]
    return Plan(
        name=head.name,
        seed=seed,
        start=run_start,
        projects=projects,
        meters=tuple(meters),
        faults=tuple(faults),
        gateway_timeout_s=head.gateway_timeout_ms / 1000.0,
        clock_tolerance_s=head.clock_tolerance_s,
        by_id=by_id,
    )


def _with(meter: MeterSpec, **changes: Any) -> MeterSpec:
    return replace(meter, **changes)


def utc_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


__all__ = [
    "MeterSpec",
    "Plan",
    "ProjectSpec",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
    "plan",
    "resolve_instant",
]
