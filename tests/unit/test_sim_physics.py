"""Physics primitives of the simulators: randomness, local time, the sun, weather, resolution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from simulators import physics as ph
from simulators.weather import Climate, hourly_weather, weather_at


def unix(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


# -- randomness ---------------------------------------------------------------------------------


def test_stable_key_is_pinned() -> None:
    # Not Python's hash(): the same on every machine and run. Changing it changes every ledger.
    assert ph.stable_key(1, "a") == 0xF772F95215CA350D
    assert ph.stable_key(20260101, "b1-flat-01") == 0x1B87E54689821542
    assert ph.stable_key(20260101, "b1-flat-01") == ph.stable_key("20260101", "b1-flat-01")
    assert ph.stable_key(1, "a") != ph.stable_key(2, "a")


def test_random_numbers_depend_only_on_key_and_index() -> None:
    key = np.uint64(ph.stable_key(7, "m"))
    idx = np.arange(1_000, 2_000, dtype=np.int64)
    whole = ph.uniform(key, idx)
    np.testing.assert_array_equal(ph.uniform(key, idx[300:400]), whole[300:400])
    assert ((whole >= 0) & (whole < 1)).all()
    z = ph.normal(key, np.arange(200_000, dtype=np.int64))
    assert abs(z.mean()) < 0.01
    assert abs(z.std() - 1.0) < 0.01
    # Negative indices (instants before 1970) hash too.
    assert np.isfinite(ph.normal(key, np.asarray([-5, -1]))).all()


def test_knot_noise_is_window_independent() -> None:
    keys = np.asarray([1, 2, 3], dtype=np.uint64)
    t = np.arange(0, 86_400, 60, dtype=np.int64) + 1_767_225_600
    whole = ph.knot_noise(keys, t, 3600)
    np.testing.assert_allclose(ph.knot_noise(keys, t[500:900], 3600), whole[:, 500:900])
    assert np.abs(np.diff(whole, axis=1)).max() < 0.5  # smooth


# -- local time ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "instant", "before", "after"),
    [
        ("Europe/Berlin", "2026-03-29T01:00:00+00:00", 3600, 7200),
        ("Europe/Berlin", "2026-10-25T01:00:00+00:00", 7200, 3600),
        ("America/New_York", "2026-03-08T07:00:00+00:00", -5 * 3600, -4 * 3600),
        ("America/New_York", "2026-11-01T06:00:00+00:00", -4 * 3600, -5 * 3600),
    ],
)
def test_utc_offsets_follow_dst_to_the_second(
    zone: str, instant: str, before: int, after: int
) -> None:
    t = unix(instant)
    offsets = ph.utc_offsets(zone, np.asarray([t - 1, t, t + 1], dtype=np.int64))
    assert offsets.tolist() == [before, after, after]


def test_utc_offsets_agree_with_zoneinfo_over_a_year() -> None:
    t = np.arange(unix("2026-01-01T00:00:00+00:00"), unix("2027-01-01T00:00:00+00:00"), 3607)
    for zone in ("Asia/Shanghai", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"):
        got = ph.utc_offsets(zone, t)
        tz = ZoneInfo(zone)
        want = [datetime.fromtimestamp(int(x), tz).utcoffset() for x in t[::97]]
        assert got[::97].tolist() == [int(w.total_seconds()) for w in want if w is not None]


def test_local_clock() -> None:
    # 2026-01-05 00:30 in Shanghai is a Monday.
    t = np.asarray([unix("2026-01-05T00:30:00+08:00")], dtype=np.int64)
    lc = ph.local_clock("Asia/Shanghai", t)
    assert lc.weekday.tolist() == [0]
    assert lc.hour.tolist() == [0.5]
    # Spring forward in Berlin: local 01:59 is followed by 03:00.
    t0 = unix("2026-03-29T00:59:00+00:00")
    lc = ph.local_clock("Europe/Berlin", np.asarray([t0, t0 + 60], dtype=np.int64))
    assert lc.hour.tolist() == pytest.approx([1 + 59 / 60, 3.0])


def test_day_of_year() -> None:
    days = np.asarray([unix("2026-01-01T00:00:00+00:00") // 86400], dtype=np.int64)
    assert ph.day_of_year(days).tolist() == [1]
    assert ph.day_of_year(days + 364).tolist() == [365]


# -- the sun ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("date", "sunrise", "sunset"),
    [
        ("2026-06-21", "04:50", "19:01"),  # Shanghai, summer solstice (published tables)
        ("2026-12-21", "06:50", "16:54"),  # winter solstice
    ],
)
def test_sunrise_sunset_in_shanghai(date: str, sunrise: str, sunset: str) -> None:
    tz = ZoneInfo("Asia/Shanghai")
    noon = datetime.fromisoformat(f"{date}T12:00:00").replace(tzinfo=tz)
    day = np.asarray([int(noon.timestamp()) // 86400], dtype=np.int64)
    rise, set_ = ph.sun_times(31.23, 121.47, day)
    got_rise = datetime.fromtimestamp(float(rise[0]), tz)
    got_set = datetime.fromtimestamp(float(set_[0]), tz)
    for got, want in ((got_rise, sunrise), (got_set, sunset)):
        expected = datetime.fromisoformat(f"{date}T{want}:00").replace(tzinfo=tz)
        assert abs(got - expected) < timedelta(minutes=5), (got, expected)


def test_is_dark_follows_the_sun_with_a_margin() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    day = datetime(2026, 1, 5, tzinfo=tz)
    t = np.asarray(
        [int((day + timedelta(hours=h)).timestamp()) for h in (0, 6, 7.5, 12, 16.5, 18, 23)]
    )
    assert ph.is_dark(31.23, 121.47, t).tolist() == [True, True, False, False, False, True, True]
    # A 15-minute margin switches lights on before sunset (~17:05 in early January).
    at = np.asarray([int((day + timedelta(hours=16, minutes=55)).timestamp())])
    assert not ph.is_dark(31.23, 121.47, at)[0]
    assert ph.is_dark(31.23, 121.47, at, margin_s=900)[0]


def test_lights_in_polar_summer_latitudes_do_not_crash() -> None:
    t = np.arange(unix("2026-06-21T00:00:00+00:00"), unix("2026-06-22T00:00:00+00:00"), 600)
    dark = ph.is_dark(65.9, 25.0, t)
    assert dark.mean() < 0.15


# -- weather ------------------------------------------------------------------------------------


def test_weather_has_seasons_days_and_persistence() -> None:
    climate = Climate()
    start = unix("2026-01-01T00:00:00+00:00") // 3600
    temp, rh = hourly_weather(climate, 42, "Asia/Shanghai", start, start + 365 * 24)
    january, july = temp[: 31 * 24].mean(), temp[181 * 24 : 212 * 24].mean()
    assert 1 < january < 9
    assert 24 < july < 33
    daily = temp[: 364 * 24].reshape(364, 24)
    # Warmest around 14:00-16:00 local (06:00-08:00 UTC), coldest before dawn.
    assert 5 <= int(np.argmax(daily.mean(axis=0))) <= 8
    anomaly = temp - np.convolve(temp, np.ones(24 * 15) / (24 * 15), mode="same")
    assert np.corrcoef(anomaly[:-24], anomaly[24:])[0, 1] > 0.3  # a cold snap lasts days
    assert ((rh >= 15) & (rh <= 100)).all()


def test_weather_is_the_same_however_it_is_asked() -> None:
    climate = Climate()
    t = np.arange(unix("2026-02-01T00:00:00+00:00"), unix("2026-02-03T00:00:00+00:00"), 900)
    whole, _ = weather_at(climate, 9, "Asia/Shanghai", t)
    part, _ = weather_at(climate, 9, "Asia/Shanghai", t[100:110])
    np.testing.assert_allclose(part, whole[100:110], rtol=1e-12)


# -- load shapes and resolution -----------------------------------------------------------------


def test_thermal_demand() -> None:
    demand = ph.thermal_demand(np.asarray([-5.0, 14.0, 20.0, 24.0, 28.0, 40.0]))
    assert demand.tolist() == pytest.approx([0.8, 0.0, 0.0, 0.0, 0.5, 1.0])


def test_shapes_peak_where_people_are() -> None:
    hours = np.arange(0, 24, 0.25)
    base = datetime(2026, 1, 5, tzinfo=UTC)  # Monday
    t = np.asarray([int((base + timedelta(hours=float(h))).timestamp()) for h in hours])
    lc = ph.local_clock("UTC", t)
    worker, _home = ph.household_shapes(lc)
    assert 18 <= hours[np.argmax(worker)] <= 21
    assert worker[hours == 3.0][0] < 0.5 * worker.max()
    office = ph.office_shape(lc)
    assert office[hours == 10.0][0] == pytest.approx(1.0)
    assert office[hours == 3.0][0] < 0.3


@pytest.mark.parametrize(
    ("resolution", "value", "want"),
    [
        ("f32", 230.1, float(np.float32(230.1))),
        ("f32k", 1234.5, float(np.float32(1.2345)) * 1000.0),
        (0.01, 1234.567, 1234.57),
        (0.1, 229.96, 230.0),
    ],
)
def test_quantise(resolution: str | float, value: float, want: float) -> None:
    assert ph.quantise(np.asarray([value]), resolution)[0] == pytest.approx(want, rel=1e-12)
    assert np.isnan(ph.quantise(np.asarray([np.nan]), resolution)[0])
