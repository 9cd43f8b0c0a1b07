"""Pure, vectorised physics of simulated meters: load shapes, phases, voltage, frequency.

Time is an absolute grid of one-minute *fine steps* (`k = unix_seconds // 60`). Power is
constant over a fine step, so a counter is the exact sum of `power x 60 s` over the steps it has
seen; that sum is kept in integer quanta (1 mWh, 1 mvarh, 1 mL), which makes counters identical
however the time axis is cut into blocks (a live `Fleet` and a history run agree to the quantum).

Randomness is counter-based: every random number is a hash of (stream key, absolute index), so a
value at time t never depends on where a block started. Stream keys come from a stable hash of
(scenario seed, meter id, stream name), never from Python's `hash()`.

Load shapes follow LOCAL clock time of the project's IANA zone (23- and 25-hour days included);
dusk-to-dawn lighting follows the sun at the project's latitude/longitude.

No I/O and no adapter imports here (tests/unit/test_purity.py).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]

FINE_S: Final = 60  # seconds per fine step
MWH_PER_KWH: Final = 1_000_000  # counter quanta: 1 mWh (and 1 mvarh)
ML_PER_M3: Final = 1_000_000  # 1 mL
# Power (W) held for one fine step, in counter quanta: W * 60 s / 3600 s/h * 1000 mWh/Wh.
QUANTA_PER_W: Final = FINE_S / 3600 * 1000
# Flow (m3/h) held for one fine step, in mL.
QUANTA_PER_M3H: Final = FINE_S / 3600 * ML_PER_M3

# ---------------------------------------------------------------------------------------------
# Counter-based randomness (splitmix64)
# ---------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_S32, _LOW32 = np.uint64(32), np.uint64(0xFFFFFFFF)


def stable_key(*parts: object) -> int:
    """A 64-bit key from the text of `parts`; the same on every machine and Python run."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def derive(key: int, stream: str) -> int:
    """A sub-stream key (e.g. "noise", "events") of a meter's key."""
    return stable_key(key, stream)


def _mix(x: U64) -> U64:
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> _S30)) * _M1
        x = (x ^ (x >> _S27)) * _M2
        return x ^ (x >> _S31)


def _as_u64(a: npt.ArrayLike) -> U64:
    arr = np.asarray(a)
    if arr.dtype == np.uint64:
        return arr
    return np.ascontiguousarray(arr, dtype=np.int64).view(np.uint64)


def uniform(key: npt.ArrayLike, index: npt.ArrayLike) -> F64:
    """Uniform [0, 1) numbers, one per (key, index) pair (broadcast)."""
    h = _mix(_as_u64(key) ^ _mix(_as_u64(index)))
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def normal(key: npt.ArrayLike, index: npt.ArrayLike) -> F64:
    """Standard normal numbers, one per (key, index) pair: Box-Muller on the two 32-bit halves
    of one hash (|z| < 6.7, plenty for noise)."""
    h = _mix(_as_u64(key) ^ _mix(_as_u64(index)))
    u1 = (h >> _S32).astype(np.float64) * (1.0 / 4294967296.0)
    u2 = (h & _LOW32).astype(np.float64) * (1.0 / 4294967296.0)
    out: F64 = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return out


def knot_noise(keys: U64, t: F64 | I64, knot_s: int) -> F64:
    """Smooth noise: standard normal values at absolute knots every `knot_s` seconds, linearly
    interpolated. keys (N,), t (n,) unix seconds -> (N, n)."""
    i = np.floor_divide(t, knot_s).astype(np.int64)
    f = (t - i * knot_s) / knot_s
    i0, i1 = int(i.min()), int(i.max()) + 1
    if i1 - i0 + 1 > 2 * i.size:  # sparse instants: draw only the knots around each
        a = normal(keys[:, None], i[None, :])
        return a + (normal(keys[:, None], i[None, :] + 1) - a) * f
    knots = normal(keys[:, None], np.arange(i0, i1 + 1, dtype=np.int64)[None, :])
    j = i - i0
    a = knots[:, j]
    out: F64 = a + (knots[:, j + 1] - a) * f
    return out


def hourly_noise(keys: U64, hours: I64) -> F64:
    """Piecewise-constant noise: one standard normal per (key, absolute hour). (N,) x (n,)."""
    h0 = int(hours.min())
    table = normal(keys[:, None], np.arange(h0, int(hours.max()) + 1, dtype=np.int64)[None, :])
    return table[:, hours - h0]


# ---------------------------------------------------------------------------------------------
# Local time
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _zone_table(tz: str, year0: int, year1: int) -> tuple[I64, I64]:
    """(starts, offsets): UTC second at which each UTC offset (seconds) begins, for the years
    year0..year1 inclusive (plus a margin). Transitions are found by sampling every 3 hours and
    bisecting each change to the second."""
    zone = ZoneInfo(tz)

    def offset(ts: int) -> int:
        delta = datetime.fromtimestamp(ts, tz=zone).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    lo = int(datetime(year0, 1, 1, tzinfo=UTC).timestamp()) - 2 * 86400
    hi = int(datetime(year1 + 1, 1, 1, tzinfo=UTC).timestamp()) + 2 * 86400
    starts, offsets = [lo - 10 * 86400], [offset(lo)]
    prev_t, prev = lo, offsets[0]
    for ts in range(lo + 10800, hi + 10800, 10800):
        cur = offset(ts)
        if cur != prev:
            a, b = prev_t, ts  # offset(a) == prev, offset(b) == cur
            while b - a > 1:
                m = (a + b) // 2
                if offset(m) == prev:
                    a = m
                else:
                    b = m
            starts.append(b)
            offsets.append(cur)
        prev_t, prev = ts, cur
    return np.asarray(starts, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def _year(ts: int) -> int:
    return datetime.fromtimestamp(ts, tz=UTC).year


def utc_offsets(tz: str, t: I64) -> I64:
    """UTC offset in seconds of zone `tz` at each unix second in `t`."""
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts, offsets = _zone_table(tz, _year(int(t.min())), _year(int(t.max())))
    return offsets[np.searchsorted(starts, t, side="right") - 1]


@dataclass(frozen=True, slots=True)
class LocalClock:
    """Local wall-clock features of instants: hour of day (float), weekday (Mon=0), local day
    number since 1970-01-01 and the day of the year."""

    hour: F64
    weekday: I64
    day: I64

    @property
    def weekend(self) -> B:
        return self.weekday >= 5


def local_clock(tz: str, t: I64) -> LocalClock:
    """Local wall-clock features of unix seconds `t` (integers) in zone `tz`."""
    local = t + utc_offsets(tz, t)
    day = local // 86400
    hour = (local - day * 86400) / 3600.0
    return LocalClock(hour=hour, weekday=(day + 3) % 7, day=day)


def day_of_year(day: I64) -> I64:
    """Day of the year (1-based) of days since 1970-01-01."""
    d = day.astype("datetime64[D]")
    out: I64 = (d - d.astype("datetime64[Y]")).astype(np.int64) + 1
    return out


# ---------------------------------------------------------------------------------------------
# The sun (NOAA general solar position approximations)
# ---------------------------------------------------------------------------------------------


def _solar_terms(doy: F64) -> tuple[F64, F64]:
    """(equation of time in minutes, declination in radians) for fractional days of year."""
    g = 2.0 * np.pi / 365.0 * (doy - 1.0)
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * np.cos(g)
        - 0.032077 * np.sin(g)
        - 0.014615 * np.cos(2 * g)
        - 0.040849 * np.sin(2 * g)
    )
    decl = (
        0.006918
        - 0.399912 * np.cos(g)
        + 0.070257 * np.sin(g)
        - 0.006758 * np.cos(2 * g)
        + 0.000907 * np.sin(2 * g)
        - 0.002697 * np.cos(3 * g)
        + 0.00148 * np.sin(3 * g)
    )
    return eqtime, decl


def sun_times(latitude: float, longitude: float, day: I64) -> tuple[F64, F64]:
    """(sunrise, sunset) as unix seconds for UTC-dated days `day` (days since epoch), at the
    standard -0.833 degree altitude. Polar night gives sunrise == sunset == solar noon; polar
    day gives a 24-hour span."""
    eqtime, decl = _solar_terms(day_of_year(day).astype(np.float64))
    lat = math.radians(latitude)
    cos_ha = (math.cos(math.radians(90.833)) / (math.cos(lat) * np.cos(decl))) - math.tan(
        lat
    ) * np.tan(decl)
    ha = np.degrees(np.arccos(np.clip(cos_ha, -1.0, 1.0)))
    noon_min = 720.0 - 4.0 * longitude - eqtime
    base = day.astype(np.float64) * 86400.0
    return base + (noon_min - 4.0 * ha) * 60.0, base + (noon_min + 4.0 * ha) * 60.0


def is_dark(latitude: float, longitude: float, t: I64, margin_s: float = 0.0) -> B:
    """True where the sun is below the horizon at unix second t, widened by `margin_s` on
    both sides of the night (lights switch on before sunset and off after sunrise)."""
    # The solar day around each instant: days whose solar noon is nearest to t.
    shift = longitude / 360.0 * 86400.0
    solar_day = np.floor((t + shift) / 86400.0).astype(np.int64)
    d0 = int(solar_day.min())
    days = np.arange(d0, int(solar_day.max()) + 1, dtype=np.int64)
    rise, set_ = sun_times(latitude, longitude, days)
    j = solar_day - d0
    ts = t.astype(np.float64)
    dark: B = (ts < rise[j] + margin_s) | (ts >= set_[j] - margin_s)
    return dark


# ---------------------------------------------------------------------------------------------
# Load shapes (relative, mean about 1), as functions of local time
# ---------------------------------------------------------------------------------------------

_H = np.arange(25, dtype=np.float64)
# Households that are out in the working day (weekday), at home (weekday), and everyone at
# the weekend: morning and evening peaks, deep night trough.
_HH_WORKER = np.array(
    [0.45, 0.38, 0.35, 0.34, 0.34, 0.40, 0.75, 1.35, 1.20, 0.70, 0.55, 0.55, 0.65,
     0.60, 0.50, 0.50, 0.60, 0.95, 1.60, 1.90, 1.85, 1.60, 1.15, 0.70, 0.45]
)  # fmt: skip
_HH_HOME = np.array(
    [0.48, 0.40, 0.36, 0.34, 0.34, 0.38, 0.60, 1.05, 1.15, 1.05, 1.00, 1.15, 1.35,
     1.10, 0.95, 0.95, 1.05, 1.30, 1.65, 1.85, 1.80, 1.55, 1.15, 0.75, 0.48]
)  # fmt: skip
_HH_WEEKEND = np.array(
    [0.50, 0.42, 0.36, 0.34, 0.34, 0.35, 0.45, 0.70, 1.00, 1.30, 1.35, 1.45, 1.55,
     1.30, 1.15, 1.10, 1.20, 1.45, 1.80, 1.95, 1.85, 1.60, 1.25, 0.80, 0.50]
)  # fmt: skip
# Water use: sharper morning peak (showers), evening peak, nothing at night.
_WATER_HH_WEEKDAY = np.array(
    [0.15, 0.05, 0.02, 0.02, 0.03, 0.25, 1.60, 2.60, 1.80, 0.90, 0.70, 0.80, 1.10,
     0.90, 0.60, 0.55, 0.70, 1.00, 1.50, 1.80, 2.00, 1.90, 1.40, 0.70, 0.15]
)  # fmt: skip
_WATER_HH_WEEKEND = np.array(
    [0.25, 0.08, 0.03, 0.02, 0.02, 0.08, 0.40, 1.00, 1.70, 2.10, 1.80, 1.40, 1.40,
     1.10, 0.90, 0.90, 1.00, 1.20, 1.60, 1.90, 2.00, 1.90, 1.50, 0.90, 0.25]
)  # fmt: skip
# Offices: base load at night (servers, emergency lighting), working hours on weekdays.
_OFFICE_X = np.array([0, 6, 7, 8, 9, 11.75, 12.25, 13.25, 13.75, 17.5, 18.5, 19.5, 21, 22, 24])
_OFFICE_WEEKDAY = np.array(
    [0.26, 0.27, 0.40, 0.75, 1.00, 1.00, 0.86, 0.86, 1.00, 1.00, 0.72, 0.50, 0.38, 0.30, 0.26]
)
_OFFICE_WEEKEND = np.array(
    [0.26, 0.26, 0.27, 0.29, 0.33, 0.35, 0.34, 0.34, 0.34, 0.32, 0.30, 0.28, 0.27, 0.26, 0.26]
)
# Lift trips per minute.
_LIFT_RES_WEEKDAY = np.array(
    [0.10, 0.05, 0.03, 0.03, 0.03, 0.08, 0.40, 1.20, 1.10, 0.50, 0.35, 0.40, 0.60,
     0.50, 0.35, 0.35, 0.45, 0.90, 1.30, 1.20, 0.90, 0.60, 0.35, 0.20, 0.10]
)  # fmt: skip
_LIFT_RES_WEEKEND = np.array(
    [0.15, 0.08, 0.04, 0.03, 0.03, 0.04, 0.10, 0.35, 0.70, 0.90, 0.95, 0.90, 0.85,
     0.75, 0.70, 0.75, 0.85, 0.95, 1.00, 0.90, 0.70, 0.50, 0.35, 0.25, 0.15]
)  # fmt: skip
_LIFT_OFFICE_X = np.array([0, 6.5, 7.5, 8.5, 9.25, 10.5, 11.75, 12.5, 13.5, 14.5, 17, 17.75,
                           18.75, 20, 22, 24])  # fmt: skip
_LIFT_OFFICE_WEEKDAY = np.array(
    [0.02, 0.03, 0.60, 2.50, 1.60, 0.80, 1.40, 1.80, 1.50, 0.80, 1.20, 2.20, 1.00, 0.30, 0.05, 0.02]
)
_LIFT_OFFICE_WEEKEND = _LIFT_OFFICE_WEEKDAY * 0.12


def _by_day(lc: LocalClock, x: F64, weekday: F64, weekend: F64) -> F64:
    return np.where(lc.weekend, np.interp(lc.hour, x, weekend), np.interp(lc.hour, x, weekday))


def household_shapes(lc: LocalClock) -> tuple[F64, F64]:
    """(out-at-work household, at-home household) relative electricity use."""
    worker = _by_day(lc, _H, _HH_WORKER, _HH_WEEKEND)
    home = _by_day(lc, _H, _HH_HOME, _HH_WEEKEND)
    return worker, home


def water_shape(lc: LocalClock, occupancy: str) -> F64:
    if occupancy == "office":
        return office_shape(lc) ** 2 * 1.6
    return _by_day(lc, _H, _WATER_HH_WEEKDAY, _WATER_HH_WEEKEND)


def office_shape(lc: LocalClock) -> F64:
    return _by_day(lc, _OFFICE_X, _OFFICE_WEEKDAY, _OFFICE_WEEKEND)


def occupancy_shape(lc: LocalClock, occupancy: str) -> F64:
    """How busy a building is (0..~2): drives lifts, pumps and HVAC schedules."""
    if occupancy == "office":
        return office_shape(lc)
    worker, home = household_shapes(lc)
    return 0.5 * (worker + home)


def lift_traffic(lc: LocalClock, occupancy: str) -> F64:
    """Expected lift trips per minute."""
    if occupancy == "office":
        return _by_day(lc, _LIFT_OFFICE_X, _LIFT_OFFICE_WEEKDAY, _LIFT_OFFICE_WEEKEND)
    return _by_day(lc, _H, _LIFT_RES_WEEKDAY, _LIFT_RES_WEEKEND)


def hvac_schedule(lc: LocalClock, occupancy: str) -> F64:
    """Fraction of plant enabled: offices run 07:00-19:00 on weekdays with a night setback;
    residential central plant follows presence."""
    if occupancy == "office":
        on = (~lc.weekend) & (lc.hour >= 7.0) & (lc.hour < 19.0)
        return np.where(on, 1.0, np.where(lc.weekend & (lc.hour >= 9) & (lc.hour < 17), 0.3, 0.1))
    worker, home = household_shapes(lc)
    return np.clip(0.35 + 0.35 * (worker + home) / 2.0, 0.0, 1.0)


def thermal_demand(temperature_c: F64, cool_above: float = 24.0, heat_below: float = 14.0) -> F64:
    """HVAC load fraction 0..1 from outdoor temperature: cooling above ~24 degC (full at +8 K),
    heating below ~14 degC (full at -12 K, heat pumps at 80 % of cooling capacity)."""
    cool = np.clip((temperature_c - cool_above) / 8.0, 0.0, 1.0)
    heat = 0.8 * np.clip((heat_below - temperature_c) / 12.0, 0.0, 1.0)
    return np.maximum(cool, heat)


# ---------------------------------------------------------------------------------------------
# Electrical quantities
# ---------------------------------------------------------------------------------------------

# Typical power factor by load.
POWER_FACTOR: Final[dict[str, float]] = {
    "household": 0.93,
    "office": 0.92,
    "lighting": 0.96,
    "lift": 0.80,
    "pump": 0.85,
    "hvac": 0.88,
}


def phase_weights(base: F64, keys: U64, hours: I64) -> F64:
    """Share of a meter's load on each phase per absolute hour: (N, P) base shares varying
    slowly hour by hour, normalised. Returns (N, P, n)."""
    n_meters, n_phases = base.shape
    if n_phases == 1:
        return np.ones((n_meters, 1, hours.size))
    out = np.empty((n_meters, n_phases, hours.size))
    for p in range(n_phases):
        z = hourly_noise(keys ^ np.uint64(0x51 + p), hours)
        out[:, p, :] = base[:, p, None] * np.exp(0.12 * z)
    out /= out.sum(axis=1, keepdims=True)
    return out


def phase_power_factor(base: F64, keys: U64, hours: I64) -> F64:
    """Per-phase power factor per absolute hour: (N, P) base -> (N, P, n), inductive."""
    n_meters, n_phases = base.shape
    out = np.empty((n_meters, n_phases, hours.size))
    for p in range(n_phases):
        z = hourly_noise(keys ^ np.uint64(0x71 + p), hours)
        out[:, p, :] = base[:, p, None] + 0.012 * z
    return np.clip(out, 0.55, 0.995)


def tan_phi(pf: F64) -> F64:
    return np.sqrt(1.0 - pf * pf) / pf


def feeder_voltage(project_key: int, t: F64, local_hour: F64) -> F64:
    """Supply voltage at the project's transformer: ~229 V, slow drift, evening dip. (n,)"""
    keys = np.asarray([project_key], dtype=np.uint64)
    slow = knot_noise(keys, t, 3600)[0]
    fast = knot_noise(keys ^ np.uint64(0x5A), t, 300)[0]  # neighbourhood load, tap changes
    dip = 3.0 * np.exp(-0.5 * ((local_hour - 19.5) / 1.8) ** 2)
    volts: F64 = 229.0 + 2.2 * slow + 0.5 * fast - dip
    return volts


def phase_voltages(feeder: F64, offsets: F64, keys: U64, t: F64) -> F64:
    """Per-phase L-N voltage at each meter: feeder + the meter's cable drop and phase offsets +
    a little fast variation. feeder (n,), offsets (N, P) -> (N, P, n), within 210..245 V."""
    n_meters, n_phases = offsets.shape
    out = np.empty((n_meters, n_phases, t.size))
    for p in range(n_phases):
        drift = knot_noise(keys ^ np.uint64(0x91 + p), t, 3600)
        out[:, p, :] = feeder[None, :] + offsets[:, p, None] + 0.6 * drift
    return np.clip(out, 210.0, 245.0)


def grid_frequency(project_key: int, t: F64) -> F64:
    """Grid frequency seen by a project: 50 Hz with slow wander of a few hundredths."""
    keys = np.asarray([project_key ^ 0xF5], dtype=np.uint64)
    slow = knot_noise(keys, t, 120)[0]
    fast = knot_noise(keys ^ np.uint64(1), t, 20)[0]
    f: F64 = np.clip(50.0 + 0.018 * slow + 0.006 * fast, 49.85, 50.15)
    return f


# ---------------------------------------------------------------------------------------------
# Reported resolution
# ---------------------------------------------------------------------------------------------


def quantise(values: F64, resolution: str | float) -> F64:
    """What a register of the given resolution holds for `values` (NaN stays NaN)."""
    if resolution == "f32":
        return values.astype(np.float32).astype(np.float64)
    if resolution == "f32k":
        return (values / 1000.0).astype(np.float32).astype(np.float64) * 1000.0
    step = float(resolution)
    return np.rint(values / step) * step
