"""The simulated fleet: every meter's physics, faults and registers, queryable at any instant.

`Fleet` is what live servers (Modbus, MQTT) call; `simulators.history` drives the same engine
over long spans. Both evaluate meters in *batches* (meters of one project with the same kind,
load, profile and occupancy) over *blocks* of one-minute fine steps:

1. `_Batch._fine(k0, n)`: load power (W) or flow (m3/h) per meter and fine step, with physical
   faults, turned into whole counter quanta (true and as measured by the meter);
2. running sums carried from block to block (sums of whole numbers, exact in any order, so any
   block size gives the same counters);
3. `_Batch.sample(block, t)`: every channel at instants t (per-phase voltage, current, power
   factor, frequency evaluated there), register faults (segments after reset/replacement, stuck,
   modulus), the profile's resolution, read/device/clock faults and the quality a correct gateway
   would assign.

The live API (times are unix seconds, floats allowed, or timezone-aware datetimes):

    fleet = Fleet(plan)                        # plan = simulators.scenario.plan(scenario, start)
    fleet.meters["b1-flat-01"]                 # MeterInfo: profile, transport, bus, unit id, ...
    fleet.values("b1-flat-01", t)              # {channel: engineering value after value faults}
    fleet.true_values("b1-flat-01", t)         # the physical truth (for scoring)
    fleet.device_fault("b1-flat-01", t)        # None | DeviceFault(kind, delay_s, exception_code)
    fleet.serial("b1-flat-01", t)              # uint32 serial number of the device in service
    fleet.clock_offset("b1-flat-01", t)        # seconds the meter's own clock is ahead
    fleet.snapshot(t)                          # {meter_id: values} for many meters, vectorised

`values`, `device_fault` and `serial` match the ValueSource / FaultSource / SerialSource hooks
of `simulators.modbus.device.SimulatedDevice`. Queries may come in any order; advancing t is
the cheap path (the current day's running sums are cached per batch; an earlier day restarts
from its checkpoint). Counters open at the plan's start. A Fleet is not thread-safe: serve it
from one thread or event loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import numpy as np
import numpy.typing as npt

from simulators import physics as ph
from simulators.catalogue import NOMINAL, PROFILES, Profile
from simulators.faults import (
    Q_CLOCK,
    Q_COMM,
    Q_GOOD,
    Q_NAN,
    DeviceFault,
    FaultSpec,
    clock_offset,
    device_fault_at,
    pump_degradation,
    read_fault_mask,
    silent_mask,
)
from simulators.physics import F64, I64, U64
from simulators.scenario import MeterSpec, Plan, ProjectSpec
from simulators.weather import weather_at, weather_key

U8 = npt.NDArray[np.uint8]

COUNTER_UNIT: Final = 1e-6  # kWh per mWh, kvarh per mvarh, m3 per mL
# Internal integrals behind each reported counter: (true, measured).
ELECTRIC_COUNTERS: Final = {
    "energy_import_kwh": ("e_true", "e_imp"),
    "energy_export_kwh": (None, "e_exp"),
    "reactive_import_kvarh": ("r_true", "r_imp"),
    "reactive_export_kvarh": (None, "r_exp"),
}
WATER_COUNTERS: Final = {"water_volume_m3": ("w_true", "w_meas")}
_SHIFT_MAX: Final = 60  # minutes a meter's habits may be shifted against its shape
BATCH_SIZE: Final = 128


def as_unix(t: float | datetime) -> float:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise ValueError("datetimes given to the fleet must be timezone-aware")
        return t.timestamp()
    return float(t)


# ---------------------------------------------------------------------------------------------
# Static per-meter parameters
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Static:
    keys: U64
    amp: F64
    shift: I64
    home_mix: F64
    sigma: F64
    event_amp: F64
    event_rate: F64
    fridge_w: F64
    fridge_period: I64
    fridge_on: I64
    fridge_phase: I64
    base_w: F64
    ac_w: F64
    heater_w: F64
    pump_rate: F64
    pump_phase: F64
    pump_duty: F64
    standby_w: F64
    setpoint_offset: F64
    pf_base: F64  # (N, P)
    w_base: F64  # (N, P)
    v_offset: F64  # (N, P)
    openings: dict[str, F64]


def _draw_static(seed: int, meters: Sequence[MeterSpec], profile: Profile) -> _Static:
    """Per-meter constants from a numpy Generator seeded by (seed, meter id)."""
    n = len(meters)
    phases = max(profile.phases, 1)
    z = np.empty((n, 24))
    u = np.empty((n, 24))
    keys = np.empty(n, dtype=np.uint64)
    for i, m in enumerate(meters):
        key = ph.stable_key(seed, m.meter_id)
        rng = np.random.default_rng(key)
        z[i] = rng.standard_normal(24)
        u[i] = rng.random(24)
        keys[i] = np.uint64(key)
    load = meters[0].load
    kind = meters[0].kind
    scale = np.asarray([m.scale for m in meters])
    spread = 0.3 if load == "household" else 0.15
    amp = scale * NOMINAL.get((kind, load), 1.0) * np.exp(spread * z[:, 0] - spread**2 / 2)
    shift_span = {"household": 25.0, "office": 12.0, "lighting": 6.0, "lift": 5.0}.get(load, 0.0)
    shift = np.clip(np.rint(shift_span * z[:, 1]), -_SHIFT_MAX, _SHIFT_MAX).astype(np.int64)
    sigma = {
        "household": 0.15 + 0.1 * u[:, 1],
        "office": np.full(n, 0.05),
        "lighting": np.full(n, 0.01),
        "hvac": np.full(n, 0.03),
        "pump": np.full(n, 0.15),
        "lift": np.full(n, 0.0),
    }.get(load, 0.25 + 0.1 * u[:, 1])
    if kind == "water":
        event_amp = 0.35 + 0.3 * u[:, 2]
        event_rate = 0.008 + 0.006 * u[:, 3]
        if load == "office":
            event_amp, event_rate = event_amp * 2.0, event_rate * 4.0
    else:
        event_amp = 900.0 + 1400.0 * u[:, 2]
        event_rate = 0.04 + 0.04 * u[:, 3]
    # Fridge compressor cycles; the periods divide 1440 so the pattern repeats every day.
    period = np.asarray([36, 40, 45, 48, 60], dtype=np.int64)[(u[:, 5] * 5).astype(np.int64)]
    pf0 = ph.POWER_FACTOR.get(load, 0.95)
    pf_base = np.clip(pf0 + 0.02 * z[:, [3]] + 0.01 * z[:, 4 : 4 + phases], 0.6, 0.99)
    w_base = np.clip(1.0 + 0.12 * z[:, 7 : 7 + phases], 0.5, 1.5)
    w_base /= w_base.sum(axis=1, keepdims=True)
    v_offset = -1.5 + 1.2 * z[:, [10]] + 0.8 * z[:, 11 : 11 + phases]
    openings: dict[str, F64] = {}
    big = load in ("office", "hvac", "lift", "pump", "lighting")
    for channel in profile.counters:
        if channel == "water_volume_m3":
            base = 20.0 + 1500.0 * u[:, 14]
        elif channel == "energy_import_kwh":
            base = (20_000.0 + 400_000.0 * u[:, 14]) if big else (2_000.0 + 30_000.0 * u[:, 14])
        elif channel == "reactive_import_kvarh":
            import_opening = (
                (20_000.0 + 400_000.0 * u[:, 14]) if big else (2_000.0 + 30_000.0 * u[:, 14])
            )
            base = 0.25 * import_opening * (0.5 + u[:, 15])
        else:
            base = np.zeros(n)
        base = np.rint(base * 100.0) / 100.0
        for i, m in enumerate(meters):
            if channel in m.opening:
                base[i] = m.opening[channel]
        openings[channel] = base
    return _Static(
        keys=keys,
        amp=amp,
        shift=shift,
        home_mix=0.6 * u[:, 0],
        sigma=sigma,
        event_amp=event_amp,
        event_rate=event_rate,
        fridge_w=60.0 + 80.0 * u[:, 4],
        fridge_period=period,
        fridge_on=np.rint(period * (0.35 + 0.15 * u[:, 6])).astype(np.int64),
        fridge_phase=np.rint(u[:, 7] * period).astype(np.int64),
        base_w=15.0 + 40.0 * u[:, 8],
        ac_w=600.0 + 1600.0 * u[:, 9],
        heater_w=300.0 + 1500.0 * u[:, 10],
        pump_rate=3.0 + 3.0 * u[:, 11],
        pump_phase=u[:, 12],
        pump_duty=0.3 + 0.2 * u[:, 13],
        standby_w=250.0 + 200.0 * u[:, 16],
        setpoint_offset=1.0 * z[:, 2],
        pf_base=pf_base,
        w_base=w_base,
        v_offset=v_offset,
        openings=openings,
    )


def _sub(keys: U64, stream: int) -> U64:
    """Per-meter keys of a numbered sub-stream."""
    return ph._mix(keys ^ np.uint64(stream * 0x9E37 + 0x1234567))


# ---------------------------------------------------------------------------------------------
# Registers: what a counter register reports, given the measured integral
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Segment:
    start: float
    base: float | None  # register value at `start`
    anchor: float | None = None  # measured integral at `start`


@dataclass(slots=True)
class _Stuck:
    start: float
    end: float
    frozen: float | None = None


@dataclass(slots=True)
class _Register:
    """A counter register with discontinuities (reset, replacement, stuck-and-resume)."""

    segments: list[_Segment]
    stucks: list[_Stuck] = field(default_factory=list)

    def events(self) -> list[tuple[float, int, object]]:
        out: list[tuple[float, int, object]] = []
        for s in self.segments[1:]:
            out.append((s.start, 1, s))
        for st in self.stucks:
            out.append((st.start, 0, st))
        out.sort(key=lambda e: (e[0], e[1]))
        return out

    def value(self, integral: F64, t: F64) -> F64:
        """Register (before modulus) at instants t, given the measured integral there."""
        starts = np.asarray([s.start for s in self.segments])
        idx = np.searchsorted(starts, t, side="right") - 1
        base = np.asarray([np.nan if s.base is None else s.base for s in self.segments])
        anchor = np.asarray([np.nan if s.anchor is None else s.anchor for s in self.segments])
        out: F64 = base[idx] + integral - anchor[idx]
        for st in self.stucks:
            if st.frozen is not None:
                out = np.where((t >= st.start) & (t < st.end), st.frozen, out)
        return out

    def boundaries(self) -> list[float]:
        return [s.start for s in self.segments[1:]]


@dataclass(frozen=True, slots=True)
class Wrap:
    """A counter register passing its modulus (a rollover) at instant `at`."""

    meter_id: str
    channel: str
    at: float
    modulus: float
    configured: bool


# ---------------------------------------------------------------------------------------------
# Blocks and samples
# ---------------------------------------------------------------------------------------------


class _Block:
    """Counter quanta of a batch over a block of fine steps. Quanta are integer-valued float64
    (exact below 2**53, i.e. for centuries of megawatts in mWh), so running sums are exact in
    any order. Running sums are formed only where asked: at sampled minutes (prefix sums) or,
    for the live fleet, over the whole block once."""

    def __init__(
        self,
        index: int,
        k0: int,
        n: int,
        *,
        q: dict[str, F64],
        carry: dict[str, F64],
        full: bool,
    ) -> None:
        self.index, self.k0, self.n = index, k0, n
        self.q = q
        self.carry = carry  # cumulative quanta at the block start, per integral (N,)
        self._full: dict[str, F64] | None = None
        self._prefixes: dict[tuple[int, bytes, bytes], F64] = {}
        self.hourly: tuple[int, F64, F64] | None = None  # (first hour, weights, power factors)
        if full:
            self._full = {}
            done: dict[int, F64] = {}
            for name, arr in q.items():
                if id(arr) not in done:
                    done[id(arr)] = np.cumsum(arr, axis=1) - arr  # exclusive
                self._full[name] = done[id(arr)]

    def end_carry(self) -> dict[str, F64]:
        done: dict[int, F64] = {}
        out = {}
        for name, arr in self.q.items():
            if id(arr) not in done:
                done[id(arr)] = arr.sum(axis=1)
            out[name] = self.carry[name] + done[id(arr)]
        return out

    def _prefix(self, name: str, rows: I64, j: I64) -> F64:
        """Quanta of `name` from the block start up to (excluding) fine step j: (R, len(j))."""
        if self._full is not None:
            return _take(self._full[name], rows, j)
        arr = self.q[name]
        if not arr.flags.writeable:  # the shared zeros of a counter that never moves
            return np.zeros((rows.size, j.size))
        key = (id(arr), rows.tobytes(), j.tobytes())
        cached = self._prefixes.get(key)
        if cached is None:
            q = arr if _all_rows(rows, arr) else arr[rows]
            cached = _prefix_sums(q, j)
            self._prefixes[key] = cached
        return cached

    def integral(self, name: str, rows: I64, t: F64) -> F64:
        """Cumulative quanta of `name` from the run start at instants t in the block."""
        kf = np.floor(t / ph.FINE_S).astype(np.int64)
        j = kf - self.k0
        frac = (t - kf * ph.FINE_S) / ph.FINE_S
        out = self._prefix(name, rows, j) + self.carry[name][rows][:, None]
        if frac.any():
            out = out + _take(self.q[name], rows, j) * frac[None, :]
        return out

    def edges(self, name: str, row: int) -> F64:
        """Cumulative quanta at the n+1 fine-step edges of the block, for one row."""
        q = self.q[name][row]
        out: F64 = self.carry[name][row] + np.concatenate(([0.0], np.cumsum(q)))
        return out


def _prefix_sums(q: F64, j: I64) -> F64:
    """Exclusive prefix sums of q (R, n) along axis 1 at columns j (sorted)."""
    uj, inverse = np.unique(j, return_inverse=True)
    rows = q.shape[0]
    if uj.size > 2:
        step = int(uj[1] - uj[0])
        if step > 0 and bool((np.diff(uj) == step).all()):
            # Evenly spaced (a history's sampling grid): sum whole intervals by reshaping.
            j0 = int(uj[0])
            head = q[:, :j0].sum(axis=1, keepdims=True)
            body = q[:, j0 : int(uj[-1])].reshape(rows, uj.size - 1, step).sum(axis=2)
            pre = np.cumsum(np.concatenate((head, body), axis=1), axis=1)
            return pre[:, inverse]
    lead = uj[0] == 0
    edges = uj if lead else np.concatenate(([0], uj))
    seg = np.add.reduceat(q, edges, axis=1)[:, :-1]
    pre = np.cumsum(seg, axis=1)
    if lead:
        pre = np.concatenate((np.zeros((rows, 1)), pre), axis=1)
    return pre[:, inverse]


def _all_rows(rows: I64, a: npt.NDArray[np.generic]) -> bool:
    return bool(rows.size == a.shape[0] and rows[0] == 0 and rows[-1] == rows.size - 1)


def _take(a: F64, rows: I64, cols: I64) -> F64:
    """a[rows][:, cols] without copying the whole of a[rows]."""
    if _all_rows(rows, a):
        return a[:, cols]
    return a[rows[:, None], cols[None, :]]


@dataclass(slots=True)
class Sample:
    """Channels of some meters at instants t. Arrays are (meters, channels, instants)."""

    channels: tuple[str, ...]
    value: F64
    true_value: F64
    quality: U8
    ts: F64  # (meters, instants): the instant each meter stamps (clock drift included)


SLOT: Final = 5  # fine steps per slot
_SLOT_MARGIN: Final = _SHIFT_MAX // SLOT


@dataclass(frozen=True, slots=True)
class _Slots:
    """The 5-minute slots covering a block of minutes, with local time around them."""

    index: I64  # absolute slot numbers (ns,)
    t: I64  # unix seconds at each slot's start (ns,)
    spread: I64  # slot of each minute of the block, relative (n,)
    clock: ph.LocalClock  # local time of the slots widened by the shift margin
    shifted: I64  # (N, ns) gather index into `clock`-length arrays applying each meter's shift
    unshifted: I64  # (ns,) the same without shift

    @classmethod
    def make(cls, batch: _Batch, k0: int, n: int) -> _Slots:
        s0, s1 = k0 // SLOT, (k0 + n - 1) // SLOT
        index = np.arange(s0, s1 + 1, dtype=np.int64)
        m = _SLOT_MARGIN
        ext = np.arange(s0 - m, s1 + 1 + m, dtype=np.int64) * SLOT * ph.FINE_S
        shift = np.rint(batch.static.shift / SLOT).astype(np.int64)
        base = np.arange(index.size, dtype=np.int64)
        return cls(
            index=index,
            t=index * SLOT * ph.FINE_S,
            spread=(k0 + np.arange(n, dtype=np.int64)) // SLOT - s0,
            clock=ph.local_clock(batch.project.time_zone, ext),
            shifted=base[None, :] + (m - shift)[:, None],
            unshifted=base + m,
        )


class _Batch:
    """Meters of one project with the same kind, load, profile and occupancy."""

    def __init__(
        self,
        plan: Plan,
        project: ProjectSpec,
        meters: Sequence[MeterSpec],
        shared: dict[tuple[str, int, float, float], tuple[F64, F64]] | None = None,
    ) -> None:
        self.plan = plan
        self.shared = {} if shared is None else shared  # project-level series, by instants
        self.project = project
        self.meters = tuple(meters)
        first = meters[0]
        self.kind = first.kind
        self.load = first.load
        self.occupancy = first.occupancy
        self.profile = PROFILES[first.profile]
        self.phases = max(self.profile.phases, 1)
        self.n = len(meters)
        self.static = _draw_static(plan.seed, meters, self.profile)
        self.k_start = plan.start // ph.FINE_S
        self.project_key = ph.stable_key(plan.seed, "project", project.id)
        self.weather_key = weather_key(plan.seed, project.id)
        self.faults: list[tuple[FaultSpec, ...]] = [plan.faults_of(m.meter_id) for m in meters]
        self.counters = WATER_COUNTERS if self.kind == "water" else ELECTRIC_COUNTERS
        self.internal = sorted({n for pair in self.counters.values() for n in pair if n})
        self.registers: dict[tuple[int, str], _Register] = {}
        self.wraps: dict[tuple[str, str, float], Wrap] = {}
        self.closings: dict[tuple[str, int], dict[str, float]] = {}
        self._rollover_channels = {
            (f.meter_id, str(f.params["channel"])) for fs in self.faults for f in fs
            if f.kind == "rollover"
        }  # fmt: skip
        self._build_registers()
        self._phase_rows = {
            row for row, fs in enumerate(self.faults)
            if any(f.kind in ("phase_loss", "ct_reversal") for f in fs)
        }  # fmt: skip
        self._physical_rows = [
            row for row, fs in enumerate(self.faults)
            if any(f.kind in ("spike", "leak", "retrofit", "replacement") for f in fs)
        ]  # fmt: skip
        self._carry: dict[int, dict[str, F64]] = {
            0: {name: np.zeros(self.n) for name in self.internal}
        }
        self.full_sums = False  # the live fleet sets this: many queries per block
        self._blocks: dict[int, _Block] = {}
        self._zero_block: F64 | None = None
        self._texture_table: F64 | None = None
        self._last_hourly: tuple[int, F64, F64] | None = None
        self._moduli: dict[str, F64] = {}  # per counter channel, NaN where a meter has none
        for channel in self.profile.counters:
            moduli = np.asarray([m.modulus.get(channel, np.nan) for m in self.meters])
            if not np.isnan(moduli).all():
                self._moduli[channel] = moduli

    # -- registers ----------------------------------------------------------------------------

    def _build_registers(self) -> None:
        for row, faults in enumerate(self.faults):
            for channel in self.profile.counters:
                opening = float(self.static.openings[channel][row])
                reg = _Register([_Segment(float(self.plan.start), opening, 0.0)])
                for f in faults:
                    if f.kind == "reset" and channel in f.params["channels"]:
                        reg.segments.append(_Segment(float(f.start), 0.0))
                    elif f.kind == "replacement":
                        opening_new = float(f.params["opening"].get(channel, 0.0))
                        reg.segments.append(_Segment(float(f.downtime_end), opening_new))
                    elif f.kind == "stuck" and channel in f.params["channels"]:
                        assert f.end is not None
                        reg.stucks.append(_Stuck(float(f.start), float(f.end)))
                        if f.params.get("resume"):
                            reg.segments.append(_Segment(float(f.end), None))
                if len(reg.segments) > 1 or reg.stucks:
                    reg.segments.sort(key=lambda s: s.start)
                    self.registers[(row, channel)] = reg

    def _register_values(self, row: int, channel: str, integral: F64, t: F64) -> F64:
        """Register value (before modulus) of (row, channel) at t, from its measured integral
        in channel units."""
        reg = self.registers.get((row, channel))
        if reg is None:
            return float(self.static.openings[channel][row]) + integral
        return reg.value(integral, t)

    def _process_events(self, block: _Block) -> None:
        lo = float(block.k0 * ph.FINE_S)
        hi = float((block.k0 + block.n) * ph.FINE_S)
        for (row, channel), reg in self.registers.items():
            name = self.counters[channel][1]
            assert name is not None
            rows = np.asarray([row])
            for at, _, event in reg.events():
                if not lo <= at < hi:
                    continue
                t = np.asarray([at])
                integral = block.integral(name, rows, t)[0] * COUNTER_UNIT
                if isinstance(event, _Stuck):
                    event.frozen = float(reg.value(integral, t)[0])
                    for seg in reg.segments:
                        if seg.start == event.end and seg.base is None:
                            seg.base = event.frozen
                else:
                    assert isinstance(event, _Segment)
                    # The closing reading of the register that this segment replaces.
                    closing = float(reg.value(integral, t - 1e-6)[0])
                    self.closings[(self.meters[row].meter_id, int(at))] = {
                        **self.closings.get((self.meters[row].meter_id, int(at)), {}),
                        channel: closing,
                    }
                    event.anchor = float(integral[0])

    def _detect_wraps(self, block: _Block, end_carry: dict[str, F64]) -> None:
        """Record every counter register passing its modulus inside the block (rollovers)."""
        k = block.k0 + np.arange(block.n + 1, dtype=np.int64)
        t_edges = (k * ph.FINE_S).astype(np.float64)
        for channel, moduli in self._moduli.items():
            name = self.counters[channel][1]
            assert name is not None
            # Without register seams the register is opening + integral: a wrap shows as a
            # change of turn between the block's two ends.
            opening = self.static.openings[channel]
            first = np.floor((opening + block.carry[name] * COUNTER_UNIT) / moduli)
            last = np.floor((opening + end_carry[name] * COUNTER_UNIT) / moduli)
            candidates = set(np.nonzero(first != last)[0].tolist())
            candidates |= {row for (row, c) in self.registers if c == channel}
            for row in sorted(candidates):
                if not np.isnan(moduli[row]):
                    self._wraps_of(block, row, channel, float(moduli[row]), t_edges)

    def _wraps_of(
        self, block: _Block, row: int, channel: str, modulus: float, t_edges: F64
    ) -> None:
        name = self.counters[channel][1]
        assert name is not None
        meter = self.meters[row]
        reg = self.registers.get((row, channel))
        seams = [] if reg is None else reg.boundaries()
        values = self._register_values(row, channel, block.edges(name, row) * COUNTER_UNIT, t_edges)
        turns = np.floor(values / modulus)
        for j in np.nonzero(turns[1:] > turns[:-1])[0]:
            if any(t_edges[j] < b <= t_edges[j + 1] for b in seams):
                continue  # a reset or replacement, not a wrap
            target = turns[j + 1] * modulus
            at = t_edges[j] + ph.FINE_S * (target - values[j]) / (values[j + 1] - values[j])
            at = math.floor(at * 1e6) / 1e6
            self.wraps[(meter.meter_id, channel, at)] = Wrap(
                meter.meter_id,
                channel,
                at,
                modulus,
                (meter.meter_id, channel) in self._rollover_channels,
            )

    def block(self, index: int, size: int) -> _Block:
        """Block `index` of `size` fine steps from the run start (computed or cached)."""
        cached = self._blocks.get(index)
        if cached is not None and cached.n == size:
            return cached
        known = max(i for i in self._carry if i <= index)
        blk: _Block | None = None
        for i in range(known, index + 1):
            blk = self._compute(i, size)
        assert blk is not None
        return blk

    def _compute(self, index: int, size: int) -> _Block:
        k0 = self.k_start + index * size
        q = self._fine(k0, size)
        self._last_hourly = None
        blk = _Block(index, k0, size, q=q, carry=self._carry[index], full=self.full_sums)
        blk.hourly = self._last_hourly
        self._carry[index + 1] = blk.end_carry()
        self._process_events(blk)
        self._detect_wraps(blk, self._carry[index + 1])
        self._blocks = {index: blk}
        return blk

    # Loads are built on two grids: 5-minute slots for what varies slowly or comes in bursts of
    # minutes (habits, noise, appliance use, thermal load, HVAC staging), spread to the minute
    # grid by one gather; and minute detail where it matters (fridge cycling, lift trips, pump
    # cycling, lights switching at dusk).

    def _fine(self, k0: int, n: int) -> dict[str, F64]:
        if self.kind == "weather":
            return {}
        k = k0 + np.arange(n, dtype=np.int64)
        t = k * ph.FINE_S
        slots = _Slots.make(self, k0, n)
        if self.kind == "water":
            flow = self._water(slots)
            flow = np.maximum(self._physical_faults(flow, t), 0.0)
            w_true = np.rint(flow * ph.QUANTA_PER_M3H, out=flow)
            if not self._has_downtime:
                return {"w_true": w_true, "w_meas": w_true}
            return {"w_true": w_true, "w_meas": self._measure_downtime(w_true.copy(), t)}
        power = self._electric(slots, k, t)
        power = np.maximum(self._physical_faults(power, t), 0.0)
        return self._electric_quanta(power, k, t)

    def _temperature(self, t: F64 | I64) -> F64:
        temp, _ = weather_at(self.project.climate, self.weather_key, self.project.time_zone, t)
        return temp

    def _slot_uniforms(self, stream: int, sl: _Slots) -> tuple[F64, F64]:
        """Two uniforms per (meter, absolute 5-minute slot): (N, ns) each."""
        keys = self.static.keys
        slots = sl.index[None, :]
        return (
            ph.uniform(_sub(keys, stream)[:, None], slots),
            ph.uniform(_sub(keys, stream + 1)[:, None], slots),
        )

    def _fine_clock(self, k0: int, n: int) -> tuple[ph.LocalClock, I64, I64]:
        """Local clock over the minute grid widened by the largest habit shift, its unix
        seconds, and the (N, n) gather index that applies each meter's shift."""
        s = _SHIFT_MAX
        t_ext = np.arange(k0 - s, k0 + n + s, dtype=np.int64) * ph.FINE_S
        idx = np.arange(n, dtype=np.int64)[None, :] + (s - self.static.shift)[:, None]
        return ph.local_clock(self.project.time_zone, t_ext), t_ext, idx

    def _texture(self) -> F64:
        """Minute detail of a household: standby + fridge compressor cycling, as a table over
        the minutes of a day (fridge periods divide 1440, so it is exact for any minute)."""
        if self._texture_table is None:
            st = self.static
            minute = np.arange(1440, dtype=np.int64)
            phase = (minute[None, :] + st.fridge_phase[:, None]) % st.fridge_period[:, None]
            on = phase < st.fridge_on[:, None]
            self._texture_table = st.base_w[:, None] + st.fridge_w[:, None] * on
        return self._texture_table

    def _electric(self, sl: _Slots, k: I64, t: I64) -> F64:
        load = self.load
        if load == "household":
            return self._household(sl, k)
        if load == "office":
            return self._office(sl)
        if load == "hvac":
            return self._hvac(sl)
        if load == "lighting":
            return self._lighting(sl, k)
        if load == "lift":
            return self._lift(k, t)
        if load == "pump":
            return self._pump(sl, k, t)
        raise ValueError(f"unknown load {load!r}")

    def _household(self, sl: _Slots, k: I64) -> F64:
        st = self.static
        worker, home = ph.household_shapes(sl.clock)
        shape = worker[sl.shifted] + (home - worker)[sl.shifted] * st.home_mix[:, None]
        noise = ph.knot_noise(_sub(st.keys, 1), sl.t, 3600)
        power = st.amp[:, None] * shape * np.clip(1.0 + st.sigma[:, None] * noise, 0.3, None)
        hit, size = self._slot_uniforms(2, sl)
        power += (hit < st.event_rate[:, None] * shape) * (
            st.event_amp[:, None] * (0.4 + 1.2 * size)
        )
        temp = self._temperature(sl.t + 150)[None, :]
        presence = np.clip(shape / 1.6, 0.15, 1.0)
        power += presence * (
            st.ac_w[:, None] * np.clip((temp - 26.0) / 6.0, 0.0, 1.0)
            + st.heater_w[:, None] * np.clip((8.0 - temp) / 10.0, 0.0, 1.0)
        )
        fine = power[:, sl.spread]
        fine += self._texture()[:, k % 1440]
        return fine

    def _office(self, sl: _Slots) -> F64:
        st = self.static
        shape = ph.office_shape(sl.clock)[sl.shifted]
        noise = 1.0 + st.sigma[:, None] * ph.knot_noise(_sub(st.keys, 1), sl.t, 1800)
        temp = self._temperature(sl.t + 150)[None, :]
        comfort = 0.12 * ph.thermal_demand(temp) * (shape > 0.6)
        power = st.amp[:, None] * (shape * noise + comfort)
        return power[:, sl.spread]

    def _hvac(self, sl: _Slots) -> F64:
        st = self.static
        temp = self._temperature(sl.t + 150)
        sched = ph.hvac_schedule(sl.clock, self.occupancy)[sl.unshifted]
        demand = ph.thermal_demand(temp[None, :] - st.setpoint_offset[:, None])
        level = np.floor(demand * sched[None, :] * 4.0 + 0.5) / 4.0  # 4 compressor stages
        noise = 1.0 + st.sigma[:, None] * ph.knot_noise(_sub(st.keys, 1), sl.t, 900)
        aux = np.where(sched > 0.2, 0.04, 0.01)[None, :]
        power = st.amp[:, None] * (aux + level * noise)
        return power[:, sl.spread]

    def _lighting(self, sl: _Slots, k: I64) -> F64:
        st = self.static
        clock, t_ext, idx = self._fine_clock(int(k[0]), k.size)
        dark = ph.is_dark(self.project.latitude, self.project.longitude, t_ext, 900.0)
        dim = np.where((clock.hour >= 23.5) | (clock.hour < 5.5), 0.6, 1.0)
        noise = 1.0 + st.sigma[:, None] * ph.knot_noise(_sub(st.keys, 1), sl.t, 600)
        power = (dark * dim)[idx] * (st.amp[:, None] * noise)[:, sl.spread]
        power += 4.0
        return power

    def _lift(self, k: I64, t: I64) -> F64:
        st = self.static
        clock, _, idx = self._fine_clock(int(k[0]), k.size)
        lam = ph.lift_traffic(clock, self.occupancy)[idx]
        u = ph.uniform(_sub(st.keys, 3)[:, None], k[None, :])
        a = ph.uniform(_sub(st.keys, 4)[:, None], k[None, :])
        e = np.exp(-lam)
        c2 = e * (1.0 + lam)
        c3 = c2 + e * lam * lam / 2.0
        trips = (u >= e).astype(np.float64) + (u >= c2) + (u >= c3)
        return st.standby_w[:, None] + trips * st.amp[:, None] * (40.0 / 60.0) * (0.7 + 0.6 * a)

    def _pump(self, sl: _Slots, k: I64, t: I64) -> F64:
        st = self.static
        demand = ph.water_shape(sl.clock, self.occupancy)[sl.shifted] / 1.2
        wobble = ph.hourly_noise(_sub(st.keys, 5), sl.t // 3600)
        duty = np.clip(st.pump_duty[:, None] * demand * (1.0 + 0.15 * wobble), 0.04, 0.9)
        duty = duty[:, sl.spread]
        cycles = st.pump_rate[:, None] * (t[None, :] / 3600.0) + st.pump_phase[:, None]
        tf = t.astype(np.float64)
        for row, faults in enumerate(self.faults):
            terms = pump_degradation(faults, tf)
            if terms is not None:
                extra, factor = terms
                cycles[row] += st.pump_rate[row] * extra
                duty[row] = np.minimum(duty[row] * factor, 0.98)
        on = (cycles - np.floor(cycles)) < duty
        noise = 1.0 + 0.02 * ph.knot_noise(_sub(st.keys, 1), sl.t, 600)
        return 20.0 + on * (st.amp[:, None] * noise)[:, sl.spread]

    def _water(self, sl: _Slots) -> F64:
        st = self.static
        shape = ph.water_shape(sl.clock, self.occupancy)[sl.shifted]
        noise = ph.knot_noise(_sub(st.keys, 1), sl.t, 1800)
        flow = st.amp[:, None] * shape * np.clip(1.0 + st.sigma[:, None] * noise, 0.0, None)
        hit, size = self._slot_uniforms(2, sl)
        flow += (hit < st.event_rate[:, None] * shape) * (st.event_amp[:, None] * (0.5 + size))
        return flow[:, sl.spread]

    def _physical_faults(self, value: F64, t: I64) -> F64:
        tf = t.astype(np.float64)
        for row in self._physical_rows:
            for f in self.faults[row]:
                if f.kind == "spike":
                    w = f.window(tf)
                    if "extra" in f.params:
                        value[row, w] += float(f.params["extra"])
                    else:
                        value[row, w] *= float(f.params["factor"])
                elif f.kind == "leak":
                    value[row, f.window(tf)] += float(f.params["flow_m3h"])
                elif f.kind == "retrofit":
                    value[row, f.window(tf)] *= 1.0 - float(f.params["savings_pct"]) / 100.0
                elif f.kind == "replacement":
                    value[row, (tf >= f.start) & (tf < f.downtime_end)] = 0.0
        return value

    @property
    def _has_downtime(self) -> bool:
        return any(f.kind == "reset" and f.downtime_end > f.start for fs in self.faults for f in fs)

    def _zeros(self, shape: tuple[int, ...]) -> F64:
        """A shared read-only block of zeros (an export counter that never moves)."""
        if self._zero_block is None or self._zero_block.shape != shape:
            self._zero_block = np.zeros(shape)
            self._zero_block.flags.writeable = False
        return self._zero_block

    def _measure_downtime(self, q: F64, t: I64) -> F64:
        """A rebooting meter (reset with downtime) counts nothing."""
        for row, faults in enumerate(self.faults):
            for f in faults:
                if f.kind == "reset" and f.downtime_end > f.start:
                    q[row, (t >= f.start) & (t < f.downtime_end)] = 0.0
        return q

    def _phase_state(self, row: int, t: F64) -> tuple[F64, F64] | None:
        """(alive, sign) per phase (P, n) for a meter with phase faults, else None."""
        faults = [f for f in self.faults[row] if f.kind in ("phase_loss", "ct_reversal")]
        if not faults:
            return None
        alive = np.ones((self.phases, t.size))
        sign = np.ones((self.phases, t.size))
        for f in faults:
            w = f.window(t)
            if f.kind == "phase_loss":
                alive[int(f.params["phase"]) - 1, w] = 0.0
            else:
                for p in f.params["phases"]:
                    sign[int(p) - 1, w] = -1.0
        return alive, sign

    def _hourly_phase(self, hours: I64) -> tuple[F64, F64]:
        """(weights, power factors) per meter, phase and absolute hour: (N, P, n). Blocks keep
        them (`_Block.hourly`) so sampling does not draw them again."""
        st = self.static
        w = ph.phase_weights(st.w_base, _sub(st.keys, 6), hours)
        pf = ph.phase_power_factor(st.pf_base, _sub(st.keys, 7), hours)
        return w, pf

    def _electric_quanta(self, power: F64, k: I64, t: I64) -> dict[str, F64]:
        hours = k // 60
        h0 = int(hours[0])
        span = np.arange(h0, int(hours[-1]) + 1, dtype=np.int64)
        w_h, pf_h = self._hourly_phase(span)
        self._last_hourly = (h0, w_h, pf_h)
        tan_h = ph.tan_phi(pf_h)
        hj = hours - h0
        tau = (w_h * tan_h).sum(axis=1)[:, hj]  # (N, n)
        e_true = np.rint(power * ph.QUANTA_PER_W)
        r_true = np.rint(np.multiply(e_true, tau, out=tau), out=tau)
        tf = t.astype(np.float64)
        states = {row: self._phase_state(row, tf) for row in sorted(self._phase_rows)}
        if not states and not self._has_downtime:
            zeros = self._zeros(e_true.shape)
            return {"e_true": e_true, "r_true": r_true, "e_imp": e_true, "e_exp": zeros,
                    "r_imp": r_true, "r_exp": zeros}  # fmt: skip
        e_imp, e_exp, r_imp = e_true.copy(), np.zeros_like(e_true), r_true.copy()
        r_exp = np.zeros_like(e_true)
        for row, state in states.items():
            if state is None:
                continue
            alive, sign = state
            w = w_h[row][:, hj]
            tn = tan_h[row][:, hj]
            live = (alive * w).sum(axis=0)
            safe = np.where(live > 0, live, 1.0)
            e_row = np.rint(power[row] * live * ph.QUANTA_PER_W)
            e_true[row] = e_row
            r_true[row] = np.rint(e_row * (alive * w * tn).sum(axis=0) / safe)
            net = np.rint(e_row * (sign * alive * w).sum(axis=0) / safe)
            r_net = np.rint(e_row * (sign * alive * w * tn).sum(axis=0) / safe)
            e_imp[row] = np.maximum(net, 0.0)
            e_exp[row] = np.maximum(-net, 0.0)
            r_imp[row] = np.maximum(r_net, 0.0)
            r_exp[row] = np.maximum(-r_net, 0.0)
        measured = {"e_imp": e_imp, "e_exp": e_exp, "r_imp": r_imp, "r_exp": r_exp}
        for name, arr in measured.items():
            measured[name] = self._measure_downtime(arr, t)
        return {"e_true": e_true, "r_true": r_true, **measured}

    # -- sampling -----------------------------------------------------------------------------

    def sample(self, blk: _Block | None, t: F64, rows: I64 | None = None) -> Sample:
        """Every channel of `rows` (default all) at instants t, all inside `blk`."""
        rows = np.arange(self.n, dtype=np.int64) if rows is None else rows
        true: dict[str, F64] = {}
        meas: dict[str, F64] = {}
        if self.kind == "weather":
            temp, rh = weather_at(self.project.climate, self.weather_key, self.project.time_zone, t)
            shape = (rows.size, t.size)
            true["temperature_c"] = np.broadcast_to(temp, shape)
            true["relative_humidity_pct"] = np.broadcast_to(rh, shape)
            meas = dict(true)
        else:
            assert blk is not None
            if self.kind == "water":
                self._sample_water(blk, t, rows, true, meas)
            else:
                self._sample_electric(blk, t, rows, true, meas)
        return self._finish(t, rows, true, meas)

    def _counter_values(
        self, blk: _Block, t: F64, rows: I64, true: dict[str, F64], meas: dict[str, F64]
    ) -> None:
        st = self.static
        for channel, (true_name, meas_name) in self.counters.items():
            if channel not in self.profile.channels:
                continue
            opening = st.openings[channel][rows][:, None]
            if true_name is None:
                true[channel] = np.broadcast_to(opening, (rows.size, t.size)).copy()
            else:
                true[channel] = opening + blk.integral(true_name, rows, t) * COUNTER_UNIT
            assert meas_name is not None
            integral = blk.integral(meas_name, rows, t) * COUNTER_UNIT
            out = opening + integral
            for i, row in enumerate(rows):
                if (int(row), channel) in self.registers:
                    out[i] = self._register_values(int(row), channel, integral[i], t)
            meas[channel] = out

    def _sample_water(
        self, blk: _Block, t: F64, rows: I64, true: dict[str, F64], meas: dict[str, F64]
    ) -> None:
        j = np.floor(t / ph.FINE_S).astype(np.int64) - blk.k0
        true["water_flow_m3h"] = blk.q["w_true"][rows][:, j] / ph.QUANTA_PER_M3H
        meas["water_flow_m3h"] = blk.q["w_meas"][rows][:, j] / ph.QUANTA_PER_M3H
        self._counter_values(blk, t, rows, true, meas)

    def _sample_electric(  # noqa: PLR0915 - one pass over every electrical channel
        self, blk: _Block, t: F64, rows: I64, true: dict[str, F64], meas: dict[str, F64]
    ) -> None:
        st = self.static
        kf = np.floor(t / ph.FINE_S).astype(np.int64)
        j = kf - blk.k0
        total = _take(blk.q["e_true"], rows, j) / ph.QUANTA_PER_W  # (R, n)
        hours = kf // 60
        keys = st.keys[rows]
        if blk.hourly is not None:
            h0, w_h, pf_h = blk.hourly
            hj = hours - h0
            w = w_h[:, :, hj] if _all_rows(rows, w_h) else w_h[rows][:, :, hj]
            pf = pf_h[:, :, hj] if _all_rows(rows, pf_h) else pf_h[rows][:, :, hj]
        else:
            w = ph.phase_weights(st.w_base[rows], _sub(keys, 6), hours)
            pf = ph.phase_power_factor(st.pf_base[rows], _sub(keys, 7), hours)
        feeder, frequency = self._grid(t)
        volts = ph.phase_voltages(feeder, st.v_offset[rows], _sub(keys, 8), t)
        p_phase = total[:, None, :] * w  # phase shares sum to one
        s_phase = p_phase / pf
        q_phase = p_phase * ph.tan_phi(pf)
        net, p_meas, q_meas = total, p_phase, q_phase
        faulted = [i for i, r in enumerate(rows) if int(r) in self._phase_rows]
        if faulted:  # only these rows take another path: healthy meters stay bit-identical
            net, p_meas, q_meas = total.copy(), p_phase.copy(), q_phase.copy()
            imported = _take(blk.q["e_imp"], rows, j) - _take(blk.q["e_exp"], rows, j)
            for i in faulted:
                state = self._phase_state(int(rows[i]), t)
                assert state is not None
                alive, sign = state
                live = (alive * w[i]).sum(axis=0)
                share = np.where(live > 0, alive * w[i] / np.where(live > 0, live, 1.0), 0.0)
                p_phase[i] = total[i] * share
                s_phase[i] = p_phase[i] / pf[i]
                q_phase[i] = p_phase[i] * ph.tan_phi(pf[i])
                volts[i] *= alive
                net[i] = imported[i] / ph.QUANTA_PER_W
                p_meas[i] = sign * p_phase[i]
                q_meas[i] = sign * q_phase[i]
        amps = s_phase / np.where(volts > 0, volts, np.inf)
        apparent = s_phase.sum(axis=1)
        reactive_true = q_phase.sum(axis=1)
        reactive_meas = q_meas.sum(axis=1) if faulted else reactive_true
        safe_s = np.where(apparent > 0, apparent, 1.0)
        true["power_w"] = total
        meas["power_w"] = net
        true["reactive_power_var"], meas["reactive_power_var"] = reactive_true, reactive_meas
        true["apparent_power_va"] = meas["apparent_power_va"] = apparent
        true["power_factor"] = np.where(apparent > 0, total / safe_s, 1.0)
        meas["power_factor"] = (
            np.where(apparent > 0, net / safe_s, 1.0) if faulted else true["power_factor"]
        )
        true["frequency_hz"] = meas["frequency_hz"] = np.broadcast_to(frequency, total.shape)
        for p in range(self.phases):
            n = p + 1
            true[f"voltage_l{n}_v"] = meas[f"voltage_l{n}_v"] = volts[:, p]
            true[f"current_l{n}_a"] = meas[f"current_l{n}_a"] = amps[:, p]
            true[f"power_l{n}_w"] = p_phase[:, p]
            meas[f"power_l{n}_w"] = p_meas[:, p]
        self._counter_values(blk, t, rows, true, meas)

    def _grid(self, t: F64) -> tuple[F64, F64]:
        """(feeder voltage, frequency) of the project at instants t, shared by its batches."""
        key = (self.project.id, t.size, float(t[0]), float(t[-1]))
        found = self.shared.get(key)
        if found is None:
            ts_int = np.floor(t).astype(np.int64)
            offsets = ph.utc_offsets(self.project.time_zone, ts_int)
            local_hour = ((ts_int + offsets) % 86400) / 3600.0
            found = (
                ph.feeder_voltage(self.project_key, t, local_hour),
                ph.grid_frequency(self.project_key, t),
            )
            if len(self.shared) > 64:
                self.shared.clear()
            self.shared[key] = found
        return found

    def _finish(self, t: F64, rows: I64, true: dict[str, F64], meas: dict[str, F64]) -> Sample:
        channels = self.profile.channels
        shape = (rows.size, len(channels), t.size)
        value = np.empty(shape)
        true_value = np.empty(shape)
        for c, channel in enumerate(channels):
            true_value[:, c] = true[channel]
            value[:, c] = self._reported(channel, rows, np.asarray(meas[channel]))
        quality = np.zeros(shape, dtype=np.uint8)
        ts = np.broadcast_to(t, (rows.size, t.size)).copy()
        for i, row in enumerate(rows):
            if self.faults[int(row)]:
                self._read_faults(int(row), t, value[i], quality[i], ts[i])
        return Sample(channels, value, true_value, quality, ts)

    def _reported(self, channel: str, rows: I64, measured: F64) -> F64:
        """What the registers hold: counters wrapped at their modulus, at profile resolution."""
        resolution = self.profile.resolution.get(channel, "f32")
        moduli = self._moduli.get(channel)
        if moduli is None:
            return ph.quantise(measured, resolution)
        modulus = moduli[rows][:, None]
        wrapped = np.where(np.isnan(modulus), measured, np.mod(measured, modulus))
        q = ph.quantise(wrapped, resolution)
        # Rounding must not show the modulus itself (99999.995 -> 100000.00 on a 1e5 register).
        top = np.nextafter(modulus, 0.0)
        out: F64 = np.where(q >= modulus, top, q)
        return out

    def _read_faults(self, row: int, t: F64, value: F64, quality: U8, ts: F64) -> None:
        """Read, clock and device faults of one meter on its (channels, instants) arrays."""
        faults = self.faults[row]
        key = int(self.static.keys[row])
        channels = self.profile.channels
        for f in faults:
            if f.kind not in ("zero_read", "nan_read"):
                continue
            hit = read_fault_mask(key, f, t)
            if not hit.any():
                continue
            for c, channel in enumerate(channels):
                if channel not in f.params["channels"]:
                    continue
                if f.kind == "zero_read":
                    value[c, hit] = 0.0
                else:
                    value[c, hit] = np.nan
                    quality[c, hit] = Q_NAN
        offset = clock_offset(faults, t)
        if offset.any():
            ts += offset
            suspect = np.abs(offset) >= self.plan.clock_tolerance_s
            quality[:, suspect] = np.where(
                quality[:, suspect] == Q_GOOD, Q_CLOCK, quality[:, suspect]
            )
        silent = silent_mask(key, faults, t, self.plan.gateway_timeout_s)
        if silent.any():
            quality[:, silent] = Q_COMM


# ---------------------------------------------------------------------------------------------
# The fleet
# ---------------------------------------------------------------------------------------------


def make_batches(plan: Plan, size: int = BATCH_SIZE) -> list[_Batch]:
    """Meters grouped by (project, kind, load, profile, occupancy), in scenario order."""
    groups: dict[tuple[str, ...], list[MeterSpec]] = {}
    for m in plan.meters:
        groups.setdefault((m.project, m.kind, m.load, m.profile, m.occupancy), []).append(m)
    batches = []
    shared: dict[tuple[str, int, float, float], tuple[F64, F64]] = {}
    for (project, *_), members in groups.items():
        for i in range(0, len(members), size):
            chunk = members[i : i + size]
            batches.append(_Batch(plan, plan.projects[project], chunk, shared))
    return batches


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """What a server needs to host a meter."""

    meter_id: str
    project: str
    kind: str
    profile: str
    load: str
    transport: str
    bus: str | None
    unit_id: int | None
    channels: tuple[str, ...]
    units: tuple[str, ...]


class Fleet:
    """Live view of a planned fleet. See the module docstring for the API.

    Registers refresh every `refresh_s` seconds, as a real meter's do (about once a second):
    a query at t reads the registers as of the last refresh, and one refresh samples the whole
    batch of the asked meter, so a server polling every device costs one vectorised sample per
    batch per refresh. `refresh_s=0` samples exactly at t."""

    def __init__(self, plan: Plan, block_minutes: int = 1440, refresh_s: float = 1.0) -> None:
        self.plan = plan
        self.block_minutes = block_minutes
        self.refresh_s = refresh_s
        self.batches = make_batches(plan)
        for batch in self.batches:
            batch.full_sums = True
        self._where: dict[str, tuple[_Batch, int]] = {}
        for b in self.batches:
            for row, m in enumerate(b.meters):
                self._where[m.meter_id] = (b, row)
        self._latest: dict[int, tuple[float, Sample]] = {}  # per batch: last refresh
        self.meters: Mapping[str, MeterInfo] = {
            m.meter_id: MeterInfo(
                m.meter_id,
                m.project,
                m.kind,
                m.profile,
                m.load,
                m.transport,
                m.bus,
                m.unit_id,
                PROFILES[m.profile].channels,
                PROFILES[m.profile].units(),
            )
            for m in plan.meters
        }

    @property
    def start(self) -> int:
        return self.plan.start

    def _locate(self, meter_id: str) -> tuple[_Batch, int]:
        try:
            return self._where[meter_id]
        except KeyError:
            raise KeyError(f"no meter {meter_id!r} in this fleet") from None

    def _block_for(self, batch: _Batch, t: float) -> _Block | None:
        if t < self.plan.start:
            raise ValueError(f"t={t} is before the fleet's start ({self.plan.start})")
        if batch.kind == "weather":
            return None
        index = (math.floor(t / ph.FINE_S) - batch.k_start) // self.block_minutes
        return batch.block(index, self.block_minutes)

    def _refreshed(self, batch: _Batch, t: float | datetime) -> Sample:
        """The whole batch as of the last register refresh at or before t."""
        ts = as_unix(t)
        if self.refresh_s > 0:
            ts = math.floor(ts / self.refresh_s) * self.refresh_s
        latest = self._latest.get(id(batch))
        if latest is not None and latest[0] == ts:
            return latest[1]
        sample = batch.sample(self._block_for(batch, ts), np.asarray([ts]))
        self._latest[id(batch)] = (ts, sample)
        return sample

    def values(self, meter_id: str, t: float | datetime) -> dict[str, float]:
        """Engineering value of every channel of the meter at t, after value faults (what its
        registers hold; a NaN-sentinel read gives NaN). Ask `device_fault` whether it answers."""
        batch, row = self._locate(meter_id)
        sample = self._refreshed(batch, t)
        return dict(zip(sample.channels, sample.value[row, :, 0].tolist(), strict=True))

    def true_values(self, meter_id: str, t: float | datetime) -> dict[str, float]:
        """The physical truth at t (virtual registers for counters), for scoring."""
        batch, row = self._locate(meter_id)
        sample = self._refreshed(batch, t)
        return dict(zip(sample.channels, sample.true_value[row, :, 0].tolist(), strict=True))

    def snapshot(
        self, t: float | datetime, meter_ids: Iterable[str] | None = None
    ) -> dict[str, dict[str, float]]:
        """`values` of many meters (default all) at one instant, batch-vectorised."""
        wanted = None if meter_ids is None else set(meter_ids)
        out: dict[str, dict[str, float]] = {}
        for batch in self.batches:
            rows = [r for r, m in enumerate(batch.meters) if wanted is None or m.meter_id in wanted]
            if not rows:
                continue
            sample = self._refreshed(batch, t)
            for r in rows:
                out[batch.meters[r].meter_id] = dict(
                    zip(sample.channels, sample.value[r, :, 0].tolist(), strict=True)
                )
        return out

    def device_fault(self, meter_id: str, t: float | datetime) -> DeviceFault | None:
        """How the device answers at t: None (normally), or a DeviceFault telling the server to
        stay silent, answer with a Modbus exception, or answer late."""
        batch, row = self._locate(meter_id)
        return device_fault_at(int(batch.static.keys[row]), batch.faults[row], as_unix(t))

    def clock_offset(self, meter_id: str, t: float | datetime) -> float:
        """Seconds the meter's own clock is ahead of true time at t (for meters that stamp
        their readings or expose a clock register)."""
        batch, row = self._locate(meter_id)
        return float(clock_offset(batch.faults[row], np.asarray([as_unix(t)]))[0])

    def serial(self, meter_id: str, t: float | datetime) -> int:
        """Serial number (uint32) of the device in service at t; changes at a replacement."""
        batch, row = self._locate(meter_id)
        ts = as_unix(t)
        serial = batch.meters[row].serial
        for f in sorted(batch.faults[row], key=lambda f: f.start):
            if f.kind == "replacement" and ts >= f.downtime_end:
                serial = int(f.params["new_serial"])
        return serial

    def faults(self, meter_id: str | None = None) -> tuple[FaultSpec, ...]:
        """Faults planned for a meter (or all)."""
        if meter_id is None:
            return self.plan.faults
        return self.plan.faults_of(meter_id)


__all__ = ["DeviceFault", "Fleet", "MeterInfo", "Sample", "Wrap", "make_batches"]
