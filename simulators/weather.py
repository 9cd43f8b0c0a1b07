"""Outdoor weather of a project: seasonal cycle + diurnal cycle + autoregressive noise.

Pure and vectorised. Temperature is built on the absolute UTC hour grid and interpolated
linearly in between, so any instant has one value however the time axis is cut:

    T(h) = mean + A_season cos(2 pi (doy - warmest_day) / 365.25)     seasonal
             + A_day d(local hour)                                   diurnal, peak ~15:00 local
             + a_synoptic(h)                                         AR(1) over days (fronts)
             + a_hourly(h)                                           AR(1) over hours

The AR(1) terms are computed as their truncated moving-average form
x_h = sigma_e * sum_j phi^j e_{h-j}, whose innovations e are counter-based random numbers of the
absolute hour (or day), so no state has to be carried from an origin. Relative humidity moves
against the diurnal temperature swing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulators.physics import F64, I64, day_of_year, normal, stable_key, utc_offsets

_PHI_HOUR = 0.92
_PHI_DAY = 0.75
_TRUNCATE = 1e-4


@dataclass(frozen=True, slots=True)
class Climate:
    """Parameters of a project's climate (defaults: a humid subtropical city like Shanghai)."""

    mean_c: float = 17.0
    seasonal_amplitude_c: float = 11.5
    warmest_day: int = 205
    diurnal_amplitude_c: float = 3.5
    noise_c: float = 2.0
    humidity_pct: float = 72.0


def _ar1(key: int, first: int, last: int, phi: float, sigma: float) -> F64:
    """Stationary AR(1) with std `sigma` at absolute indices first..last inclusive."""
    lags = math.ceil(math.log(_TRUNCATE) / math.log(phi))
    e = normal(np.uint64(key), np.arange(first - lags + 1, last + 1, dtype=np.int64))
    kernel = phi ** np.arange(lags, dtype=np.float64)
    return sigma * math.sqrt(1.0 - phi * phi) * np.convolve(e, kernel, mode="valid")


def hourly_weather(climate: Climate, key: int, tz: str, h0: int, h1: int) -> tuple[F64, F64]:
    """(temperature degC, relative humidity %) at absolute UTC hours h0..h1 inclusive."""
    hours = np.arange(h0, h1 + 1, dtype=np.int64)
    t = hours * 3600
    day = hours // 24
    doy = day_of_year(day) + (hours - day * 24) / 24.0
    seasonal = climate.mean_c + climate.seasonal_amplitude_c * np.cos(
        2.0 * np.pi * (doy - climate.warmest_day) / 365.25
    )
    local_hour = ((t + utc_offsets(tz, t)) % 86400) / 3600.0
    phase = 2.0 * np.pi * (local_hour - 15.0) / 24.0
    diurnal = np.cos(phase) + 0.22 * np.cos(2.0 * phase)
    # Synoptic anomaly: daily AR(1) at noon UTC of each day, interpolated between days.
    d0, d1 = int(day[0]) - 1, int(day[-1]) + 1
    daily = _ar1(key ^ 0xDA, d0, d1, _PHI_DAY, climate.noise_c)
    centres = (np.arange(d0, d1 + 1, dtype=np.float64) * 24.0) + 12.0
    synoptic = np.interp(hours.astype(np.float64), centres, daily)
    quick = _ar1(key ^ 0x40, h0, h1, _PHI_HOUR, 0.45 * climate.noise_c)
    temperature = seasonal + climate.diurnal_amplitude_c * diurnal + synoptic + quick
    wet = _ar1(key ^ 0x77, h0, h1, 0.95, 7.0)
    humidity = climate.humidity_pct - 4.0 * climate.diurnal_amplitude_c * diurnal / 3.5
    humidity = np.clip(humidity - 0.8 * synoptic + wet, 15.0, 100.0)
    return temperature, humidity


def weather_at(climate: Climate, key: int, tz: str, t: F64 | I64) -> tuple[F64, F64]:
    """(temperature, humidity) at unix seconds `t` (any shape-1 array), hourly-interpolated."""
    h = np.floor_divide(t, 3600).astype(np.int64)
    h0, h1 = int(h.min()), int(h.max()) + 1
    temp, rh = hourly_weather(climate, key, tz, h0, h1)
    x = (t - h0 * 3600) / 3600.0
    grid = np.arange(h1 - h0 + 1, dtype=np.float64)
    return np.interp(x, grid, temp), np.interp(x, grid, rh)


def weather_key(seed: int, project_id: str) -> int:
    return stable_key(seed, "weather", project_id)
