"""Self-publishing meters: mappings recover exactly what the simulated devices publish."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given

from contracts.wire import Reason
from ingest.mappings import MeterMapping, map_message, topic_matches
from simulators.mqtt_meters import MqttMeter, render, reported
from tests.support.plug_values import PLUG_VALUES

PLUG = MqttMeter("P001-PLUG-01", "plug-01", "tasmota", "Asia/Shanghai")
TASMOTA = MeterMapping(
    name="plugs", topic="tele/+/SENSOR", format="tasmota", device_level=1,
    devices={"plug-01": "P001-PLUG-01"}, time_zone="Asia/Shanghai",
)  # fmt: skip
STATION = MqttMeter("P001-WX-01", "wx-01", "weather-json")
WEATHER = MeterMapping(
    name="weather", topic="weather/+/state", format="json", device_level=1,
    devices={"wx-01": "P001-WX-01"}, ts_path="ts",
    channels={"temperature_c": "temperature", "relative_humidity_pct": "humidity"},
)  # fmt: skip


@given(**PLUG_VALUES)
def test_tasmota_round_trip(
    energy: float, power: float, pf: float, voltage: float, current: float, t: dt.datetime
) -> None:
    when = t.replace(microsecond=0, tzinfo=dt.UTC)
    values = {
        "energy_import_kwh": energy, "power_w": power, "apparent_power_va": power * 1.05,
        "reactive_power_var": power * 0.3, "power_factor": pf, "voltage_l1_v": voltage,
        "current_l1_a": current,
    }  # fmt: skip
    topic, payload = render(PLUG, values, when)
    out = map_message(TASMOTA, topic, payload)
    assert out.refused == []
    assert {r.channel: r.value for r in out.readings} == reported(PLUG, values)
    assert {r.ts for r in out.readings} == {when}  # local time without offset, zone applied
    assert {r.meter_id for r in out.readings} == {"P001-PLUG-01"}


def test_weather_json_round_trip() -> None:
    t = dt.datetime(2026, 3, 1, 4, 0, 30, tzinfo=dt.UTC)
    values = {"temperature_c": 7.26, "relative_humidity_pct": 64.6}
    topic, payload = render(STATION, values, t)
    out = map_message(WEATHER, topic, payload)
    assert {r.channel: r.value for r in out.readings} == reported(STATION, values)
    assert {r.ts for r in out.readings} == {t}


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("tele/plug-99/SENSOR", b'{"Time": "2026-03-01T12:00:00"}', Reason.UNKNOWN_METER),
        ("tele/plug-01/SENSOR", b"{not json", Reason.INVALID_JSON),
        ("tele/plug-01/SENSOR", b'{"ENERGY": {"Total": 1}}', Reason.SCHEMA),
        ("tele/plug-01/SENSOR", b'{"Time": "yesterday", "ENERGY": {"Total": 1}}', Reason.SCHEMA),
        ("tele/plug-01/SENSOR", b'{"Time": "2026-03-01T12:00:00", "ENERGY": {"Total": "x"}}',
         Reason.SCHEMA),
        ("tele/plug-01/SENSOR", b'{"Time": "2026-03-01T12:00:00", "ENERGY": {"Total": 1e999}}',
         Reason.NON_FINITE),
        ("tele/plug-01/SENSOR", b'{"Time": "2026-03-01T12:00:00", "Other": 1}', Reason.SCHEMA),
    ],
)  # fmt: skip
def test_refusals_carry_reasons(topic: str, payload: bytes, reason: Reason) -> None:
    out = map_message(TASMOTA, topic, payload)
    assert out.readings == []
    assert [r for r, _ in out.refused] == [reason]


def test_mapping_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown channels"):
        MeterMapping("x", "a/+", "json", 1, {}, channels={"kwh": "kwh"})
    with pytest.raises(ValueError, match="unknown time zone"):
        MeterMapping("x", "a/+", "json", 1, {}, time_zone="Mars/Base")
    with pytest.raises(ValueError, match="device_level"):
        MeterMapping("x", "a/+", "json", 2, {})


@pytest.mark.parametrize(
    ("flt", "topic", "match"),
    [("tele/+/SENSOR", "tele/p1/SENSOR", True), ("tele/+/SENSOR", "tele/p1/STATE", False),
     ("site/#", "site/a/b/c", True), ("a/b", "a/b/c", False), ("a/+/c", "a/b", False)],
)  # fmt: skip
def test_topic_matching(flt: str, topic: str, match: bool) -> None:
    assert topic_matches(flt, topic) is match
