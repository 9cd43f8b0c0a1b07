"""Random fault scenarios for accuracy evaluation: a shipped fleet, faults of every kind placed
at random meters, times and parameters by a seed.

A seed alone only changes the simulators' noise; the shipped scenarios place each fault by
hand, once. To measure detectors on more than a handful of cases, `random_scenario` takes a
scenario's projects and meters, drops its faults, and places `per_kind` faults of every kind
(`simulators.faults.FAULT_KINDS`) by the rules `simulators.scenario` enforces (a leak on a
water meter, degradation on a pump, phase loss on a three-phase meter, register faults on a
meter with a counter ...):

    doc = random_scenario(base_document, seed=7, days=14)
    Path("random-7.toml").write_text(to_toml(doc))
    plan(load_scenario("random-7.toml"))

Decisions:

- **One fault per meter**, so the ledger's ground truth is unambiguous (a leak and a stuck
  register on one water meter would make "which finding is right" a matter of opinion).
  Scarce kinds (degradation on the few pumps, phase loss and CT reversal on three-phase meters)
  pick their meters first.
- **Times leave room to detect**: faults start after `warmup_days` (detectors need a baseline)
  and end at least a day before the run ends; a degradation's failure date (start +
  `ramp_days`) falls inside the run, so "detected before failure" is measurable.
- **Spikes add** a load (`extra`) rather than multiply it: a factor on a load that happens to
  be idle (lighting by day, water at night) adds nothing, and an anomaly that changes nothing
  cannot be expected of anyone. The added load is what a maintenance team wants to hear
  about: 4-8 times the meter's nominal mean for electricity (a heater and a dryer left on) and
  20-40 times for water (a running hose), for 2-4 hours. Ordinary variation - a busy evening,
  a shower - is smaller, and no detector should report it.
- **Rollover** opens the primary counter a few hours to a day and a half of nominal load below
  a modulus, so it wraps inside the run on a typical meter.
- Device faults (`busy`, `slow`) go on Modbus meters, where they exist on the wire; half of the
  `slow` faults exceed the gateway timeout (`times_out` in the ledger), half stay within it.
- The scenario's own `seed` becomes a function of the seed too, so the noise differs as well.

Deterministic: the same base and seed give the same document, and `to_toml` the same bytes.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from simulators.catalogue import NOMINAL, PROFILES
from simulators.faults import FAULT_KINDS
from simulators.scenario import MeterSpec, parse_scenario, plan

DEFAULT_DAYS: Final = 14.0
DEFAULT_WARMUP_DAYS: Final = 3.0
# Shortest run with the default warm-up: a baseline before the faults, room after them.
MIN_RANDOM_DAYS: Final = DEFAULT_WARMUP_DAYS + 4.0

# Allocation order: kinds with the scarcest eligible meters first.
_ORDER: Final = (
    "degradation", "phase_loss", "ct_reversal", "leak", "retrofit", "rollover", "replacement",
    "reset", "stuck", "spike", "no_response", "busy", "slow", "zero_read", "nan_read",
    "clock_drift",
)  # fmt: skip
assert sorted(_ORDER) == sorted(FAULT_KINDS), "every fault kind has a place in the order"


def _eligible(kind: str, m: MeterSpec) -> bool:  # noqa: PLR0911 - one rule per kind
    """Whether a fault of `kind` may go on meter `m` (mirrors `simulators.scenario._fits`,
    plus the choices in the module docstring)."""
    profile = PROFILES[m.profile]
    if m.kind == "weather":
        return kind in ("no_response", "clock_drift")
    if kind == "leak":
        return m.kind == "water"
    if kind == "degradation":
        return m.load == "pump"
    if kind == "phase_loss":
        return m.kind == "electricity" and profile.phases == 3
    if kind == "ct_reversal":
        return m.kind == "electricity"
    if kind == "retrofit":
        return m.kind == "electricity" and m.load in ("lighting", "office", "household", "hvac")
    if kind in ("busy", "slow"):
        return m.transport == "modbus"
    if kind in ("stuck", "rollover", "reset", "replacement"):
        return bool(profile.counters)
    return True


@dataclass(frozen=True, slots=True)
class _Clock:
    """Relative times inside a run of `days`, in whole minutes."""

    days: float
    warmup_days: float

    def start(self, rng: random.Random, room_days: float) -> int:
        """A start minute after the warm-up leaving `room_days` (and a day) before the end."""
        lo = round(self.warmup_days * 1440)
        hi = max(lo, round((self.days - room_days - 1.0) * 1440))
        # Whole quarter hours: faults land on poll instants as often as between them.
        return rng.randrange(lo, hi + 1, 5)


def _rel(minutes: int) -> str:
    d, rest = divmod(minutes, 1440)
    h, m = divmod(rest, 60)
    return f"+{d}d{h}h{m}m"


def _dur(minutes: int) -> str:
    h, m = divmod(minutes, 60)
    return f"{h}h{m}m" if h else f"{m}m"


# Faults with a window: its length in minutes, (shortest, longest).
_WINDOWS: Final[dict[str, tuple[int, int]]] = {
    "leak": (2 * 1440, 4 * 1440),  # detectors count nights
    "spike": (120, 240),
    "stuck": (6 * 60, 24 * 60),
    "zero_read": (15, 60),
    "nan_read": (15, 60),
    "no_response": (60, 8 * 60),
    "busy": (60, 3 * 60),
    "slow": (60, 4 * 60),
    "phase_loss": (60, 12 * 60),
}
_Params = Callable[[MeterSpec, random.Random, _Clock, float], dict[str, Any]]


def _rollover(m: MeterSpec, rng: random.Random, clock: _Clock, timeout_ms: float) -> dict[str, Any]:
    # kWh (W / 1000) or m3 an hour at the meter's nominal load
    hourly = m.scale * NOMINAL.get((m.kind, m.load), 1.0) / (1.0 if m.kind == "water" else 1e3)
    modulus = rng.choice((10_000.0, 100_000.0))
    return {
        "channel": PROFILES[m.profile].primary_counter,
        "modulus": modulus,
        "start_value": round(modulus - hourly * rng.uniform(4.0, 36.0), 2),
    }


def _spike(m: MeterSpec, rng: random.Random, clock: _Clock, timeout_ms: float) -> dict[str, Any]:
    # Added load in multiples of the meter's nominal mean (W, or m3/h): see the docstring.
    low, high = (20.0, 40.0) if m.kind == "water" else (4.0, 8.0)
    nominal = m.scale * NOMINAL.get((m.kind, m.load), 1.0)
    return {"extra": float(f"{nominal * rng.uniform(low, high):.4g}")}


def _replacement(
    m: MeterSpec, rng: random.Random, clock: _Clock, timeout_ms: float
) -> dict[str, Any]:
    opening = float(rng.choice((0, 0, rng.randrange(1, 500))))
    return {
        "start": _rel(clock.start(rng, 0.1)),
        "downtime": rng.choice(("15m", "30m", "1h")),
        "opening": {PROFILES[m.profile].primary_counter: opening},
    }


def _slow(m: MeterSpec, rng: random.Random, clock: _Clock, timeout_ms: float) -> dict[str, Any]:
    # Half beyond the gateway timeout (the meter goes silent), half slow but answered.
    low, high = (1.2, 3.0) if rng.random() < 0.5 else (0.1, 0.8)
    return {"delay_ms": float(round(rng.uniform(low, high) * timeout_ms))}


def _degradation(
    m: MeterSpec, rng: random.Random, clock: _Clock, timeout_ms: float
) -> dict[str, Any]:
    ramp = round(rng.uniform(3.0, max(3.0, clock.days - clock.warmup_days - 2.0)), 1)
    out: dict[str, Any] = {"start": _rel(clock.start(rng, ramp)), "ramp_days": ramp}
    mode = rng.choice(("energy", "cycling", "both"))
    if mode in ("energy", "both"):
        out["energy_per_cycle_pct"] = round(rng.uniform(25.0, 80.0), 1)
    if mode in ("cycling", "both"):
        out["short_cycling_factor"] = round(rng.uniform(2.0, 4.0), 2)
    return out


def _ct_reversal(
    m: MeterSpec, rng: random.Random, clock: _Clock, timeout_ms: float
) -> dict[str, Any]:
    length = rng.randrange(12 * 60, 3 * 1440, 5)
    begin = clock.start(rng, length / 1440)
    out: dict[str, Any] = {"start": _rel(begin)}
    if rng.random() < 0.5:  # else never put right within the run
        out["end"] = _rel(begin + length)
    if PROFILES[m.profile].phases == 3:
        out["phases"] = sorted(rng.sample((1, 2, 3), rng.choice((1, 3))))
    return out


_PARAMS: Final[dict[str, _Params]] = {
    "leak": lambda m, rng, c, t: {"flow_m3h": round(rng.uniform(0.02, 0.08), 3)},
    "spike": _spike,
    "stuck": lambda m, rng, c, t: {"resume": rng.random() < 0.25},
    "zero_read": lambda m, rng, c, t: {"probability": rng.choice((1.0, 1.0, 0.5))},
    "nan_read": lambda m, rng, c, t: {"probability": rng.choice((1.0, 1.0, 0.5))},
    "rollover": _rollover,
    "reset": lambda m, rng, c, t: {
        "start": _rel(c.start(rng, 0.1)),
        "downtime": rng.choice(("0", "5m", "15m", "30m")),
    },
    "replacement": _replacement,
    "no_response": lambda m, rng, c, t: {},
    "busy": lambda m, rng, c, t: {"probability": round(rng.uniform(0.3, 0.9), 2)},
    "slow": _slow,
    "clock_drift": lambda m, rng, c, t: {
        "start": "+0s",
        "end": _rel(round(rng.uniform(2.0, c.days - 1.0) * 1440)),
        "drift_s_per_day": round(rng.choice((-1, 1)) * rng.uniform(30.0, 300.0), 1),
    },
    "degradation": _degradation,
    "ct_reversal": _ct_reversal,
    "phase_loss": lambda m, rng, c, t: {"phase": rng.randint(1, 3)},
    "retrofit": lambda m, rng, c, t: {
        "start": _rel(c.start(rng, 2.0)),
        "savings_pct": round(rng.uniform(20.0, 50.0), 1),
    },
}
assert sorted(_PARAMS) == sorted(FAULT_KINDS), "every fault kind has parameters"


def _fault(
    kind: str, m: MeterSpec, rng: random.Random, clock: _Clock, timeout_ms: float
) -> dict[str, Any]:
    """One fault of `kind` on meter `m` with random times and parameters."""
    out: dict[str, Any] = {"kind": kind, "meter": m.meter_id}
    if kind in _WINDOWS:
        length = rng.randrange(_WINDOWS[kind][0], _WINDOWS[kind][1] + 1, 5)
        begin = clock.start(rng, length / 1440)
        out["start"] = _rel(begin)
        out["end"] = _rel(begin + length)
    out.update(_PARAMS[kind](m, rng, clock, timeout_ms))
    return out


def random_scenario(
    base: Mapping[str, Any],
    seed: int,
    *,
    days: float = DEFAULT_DAYS,
    per_kind: int | tuple[int, int] = (1, 2),
    warmup_days: float = DEFAULT_WARMUP_DAYS,
) -> dict[str, Any]:
    """A scenario document: `base`'s header and projects, with random faults of every kind.

    `per_kind` is a count, or a (low, high) range drawn per kind; a kind gets fewer when too
    few eligible meters are left. Raises ValueError when the fleet has no eligible meter at all
    for some kind (the evaluation is meant to cover every kind) or the run is too short.

    >>> import tomllib
    >>> from pathlib import Path
    >>> base = tomllib.loads(Path("scenarios/residential-small.toml").read_text())
    >>> doc = random_scenario(base, seed=3, days=10)
    >>> sorted({f["kind"] for f in doc["faults"]}) == sorted(FAULT_KINDS)
    True
    >>> random_scenario(base, seed=3, days=10) == doc
    True
    """
    if days < warmup_days + 4.0:
        raise ValueError(f"days must be at least warmup + 4 ({warmup_days + 4.0:g})")
    doc: dict[str, Any] = json.loads(json.dumps(dict(base), default=_jsonable))  # a plain copy
    doc["faults"] = []
    scenario = parse_scenario(doc, "<base>")
    meters = plan(scenario).meters
    rng = random.Random(f"random-scenario:{seed}")  # noqa: S311 - reproducible, not secret
    head = doc["scenario"]
    head["name"] = f"{head['name']}-random-{seed}"
    head["description"] = f"{head['name']}: faults of every kind placed at random (seed {seed})"
    head["seed"] = rng.randrange(1, 2**31)
    timeout_ms = float(head.get("gateway_timeout_ms", 1000.0))
    clock = _Clock(days, warmup_days)
    taken: set[str] = set()
    faults: list[dict[str, Any]] = []
    for kind in _ORDER:
        pool = [m for m in meters if m.meter_id not in taken and _eligible(kind, m)]
        if not pool:
            raise ValueError(f"no meter left for a {kind} fault in {head['name']}")
        want = per_kind if isinstance(per_kind, int) else rng.randint(*per_kind)
        for m in rng.sample(pool, min(want, len(pool))):
            taken.add(m.meter_id)
            faults.append(_fault(kind, m, rng, clock, timeout_ms))
    doc["faults"] = faults
    return doc


def _jsonable(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot copy {type(value).__name__} from a scenario")


# -- TOML --------------------------------------------------------------------------------------

_BARE_KEY: Final = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        # A JSON string is a valid TOML basic string (same escapes).
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Sequence):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_table_array(v: object) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _is_table(v: object) -> bool:
    # An empty list is written as an empty array: `faults = []` reads back the same.
    return isinstance(v, Mapping) or _is_table_array(v)


def _table(path: str, table: Mapping[str, Any], array: bool, lines: list[str]) -> None:
    lines.append(f"[[{path}]]" if array else f"[{path}]")
    nested = []
    for k, v in table.items():
        if _is_table_array(v):
            nested.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    lines.append("")
    for k, rows in nested:
        for row in rows:
            _table(f"{path}.{_key(k)}", row, True, lines)


def to_toml(doc: Mapping[str, Any]) -> str:
    """A scenario document as TOML (the subset scenarios use: tables, arrays of tables, inline
    tables for nested mappings, scalars and lists).

    >>> print(to_toml({"scenario": {"name": "x", "seed": 1},
    ...     "projects": [{"id": "p", "climate": {"mean_c": 17.0},
    ...                   "meters": [{"id": "m", "kind": "water"}]}]}))
    [scenario]
    name = "x"
    seed = 1
    <BLANKLINE>
    [[projects]]
    id = "p"
    climate = { mean_c = 17.0 }
    <BLANKLINE>
    [[projects.meters]]
    id = "m"
    kind = "water"
    <BLANKLINE>
    """
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not _is_table(v)]
    for k, v in doc.items():
        if isinstance(v, Mapping):
            _table(_key(k), v, False, lines)
        elif _is_table_array(v):
            for row in v:
                _table(_key(k), row, True, lines)
    return "\n".join(lines)


__all__ = ["MIN_RANDOM_DAYS", "random_scenario", "to_toml"]
