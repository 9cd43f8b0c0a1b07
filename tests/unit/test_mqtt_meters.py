"""MQTT-native meters: the vendors' payloads, byte for byte."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

from simulators.mqtt_meters import FORMAT_CHANNELS, MqttMeter, render, reported

PLUG = MqttMeter("P001-PLUG-01", "plug-01", "tasmota", "Asia/Shanghai")
STATION = MqttMeter("P001-WX-01", "wx-01", "weather-json")
T = dt.datetime(2026, 3, 1, 4, 0, 30, 123456, tzinfo=dt.UTC)
PLUG_VALUES = {
    "energy_import_kwh": 12.34567, "power_w": 1200.4, "apparent_power_va": 1250.2,
    "reactive_power_var": 349.6, "power_factor": 0.9603, "voltage_l1_v": 229.6,
    "current_l1_a": 5.4567,
}  # fmt: skip


def test_tasmota_sensor_message() -> None:
    topic, payload = render(PLUG, PLUG_VALUES, T)
    assert topic == "tele/plug-01/SENSOR"
    assert json.loads(payload) == {
        "Time": "2026-03-01T12:00:30",  # local (UTC+8), no offset, whole seconds
        "ENERGY": {
            "Total": 12.346, "Power": 1200, "ApparentPower": 1250, "ReactivePower": 350,
            "Factor": 0.96, "Voltage": 230, "Current": 5.457,
        },
    }  # fmt: skip


def test_weather_message() -> None:
    topic, payload = render(STATION, {"temperature_c": 7.26, "relative_humidity_pct": 64.6}, T)
    assert topic == "weather/wx-01/state"
    assert json.loads(payload) == {
        "ts": "2026-03-01T04:00:30.123456Z",
        "temperature": 7.3,
        "humidity": 65,
    }


def test_reported_values_are_what_the_payload_says() -> None:
    _, payload = render(PLUG, PLUG_VALUES, T)
    energy: Mapping[str, float] = json.loads(payload)["ENERGY"]
    got = reported(PLUG, PLUG_VALUES)
    assert set(got) == set(FORMAT_CHANNELS["tasmota"])
    assert got["energy_import_kwh"] == energy["Total"]
    assert got["power_w"] == energy["Power"]
    assert got["current_l1_a"] == energy["Current"]


def test_local_time_follows_the_device_zone_across_dst() -> None:
    berlin = MqttMeter("m", "plug-de", "tasmota", "Europe/Berlin")
    before = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)  # 01:30 CET
    after = dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC)  # 03:30 CEST
    assert json.loads(render(berlin, PLUG_VALUES, before)[1])["Time"] == "2026-03-29T01:30:00"
    assert json.loads(render(berlin, PLUG_VALUES, after)[1])["Time"] == "2026-03-29T03:30:00"


def test_tasmota_derives_what_the_meter_chip_does_not_give_and_omits_nan() -> None:
    values = {"energy_import_kwh": 1.0, "power_w": 600.0, "power_factor": 0.8,
              "voltage_l1_v": 230.0, "current_l1_a": 3.26}  # fmt: skip
    energy = json.loads(render(PLUG, values, T)[1])["ENERGY"]
    assert energy["ApparentPower"] == round(230.0 * 3.26)
    assert energy["ReactivePower"] == round((750.0**2 - 600.0**2) ** 0.5)
    broken = {**values, "power_w": float("nan")}
    energy = json.loads(render(PLUG, broken, T)[1])["ENERGY"]
    assert "Power" not in energy
    assert "ReactivePower" not in energy
    assert reported(PLUG, broken).keys() == {
        "energy_import_kwh", "apparent_power_va", "power_factor", "voltage_l1_v", "current_l1_a"
    }  # fmt: skip
