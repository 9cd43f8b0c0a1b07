"""MQTT-native meters' JSON to samples: the simulated Tasmota plug and weather station are
read back exactly, local time is placed in the meter's zone (DST included), and bad messages
or values are refused with reasons that never quote the payload."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.channels import UNITS
from contracts.wire import Reason
from gateway_agent.site import MqttMeter
from gateway_agent.site_payloads import Extracted, PayloadError, Skipped, extract
from ingest.mappings import TASMOTA_CHANNELS
from simulators import mqtt_meters as sim
from tests.support.plug_values import PLUG_VALUES

SIM_PLUG = sim.MqttMeter("P001-PLUG-01", "plug-01", "tasmota", "Asia/Shanghai")
PLUG = MqttMeter("P001-PLUG-01", SIM_PLUG.topic(), TASMOTA_CHANNELS, "Time", "Asia/Shanghai")
SIM_STATION = sim.MqttMeter("P001-WX-01", "wx-01", "weather-json")
STATION = MqttMeter(
    "P001-WX-01",
    SIM_STATION.topic(),
    {"temperature_c": "temperature", "relative_humidity_pct": "humidity"},
    "ts",
)
NOW = dt.datetime(2026, 3, 1, 4, 0, 3, tzinfo=dt.UTC)


def samples(out: Extracted | PayloadError) -> Extracted:
    assert isinstance(out, Extracted), out
    return out


@given(**PLUG_VALUES)
def test_simulated_tasmota_plug_round_trip(
    energy: float, power: float, pf: float, voltage: float, current: float, t: dt.datetime
) -> None:
    when = t.replace(microsecond=0, tzinfo=dt.UTC)
    values = {"energy_import_kwh": energy, "power_w": power, "power_factor": pf,
              "voltage_l1_v": voltage, "current_l1_a": current}  # fmt: skip
    _, payload = sim.render(SIM_PLUG, values, when)
    out = samples(extract(payload, PLUG, when + dt.timedelta(seconds=2)))
    assert out.skipped == []
    assert {s.channel: s.value for s in out.samples} == sim.reported(SIM_PLUG, values)
    assert {s.ts for s in out.samples} == {when}  # local time without offset, zone applied
    assert {s.meter_id for s in out.samples} == {"P001-PLUG-01"}
    assert all(s.unit == UNITS[s.channel] and s.quality == "good" for s in out.samples)


def test_simulated_plug_leaves_out_what_it_could_not_read() -> None:
    values = {"energy_import_kwh": 12.5, "power_w": float("nan")}
    _, payload = sim.render(SIM_PLUG, values, NOW)
    out = samples(extract(payload, PLUG, NOW))
    assert [(s.channel, s.value) for s in out.samples] == [("energy_import_kwh", 12.5)]
    assert out.skipped == []


def test_simulated_weather_station_round_trip() -> None:
    t = dt.datetime(2026, 3, 1, 4, 0, 30, tzinfo=dt.UTC)
    values = {"temperature_c": -7.26, "relative_humidity_pct": 64.6}
    _, payload = sim.render(SIM_STATION, values, t)
    out = samples(extract(payload, STATION, t))
    assert {s.channel: s.value for s in out.samples} == sim.reported(SIM_STATION, values)
    assert {(s.ts, s.unit) for s in out.samples} == {(t, "degC"), (t, "%")}


def test_generic_json_with_lists_and_epoch_milliseconds() -> None:
    meter = MqttMeter(
        "P001-W-9",
        "site/water/9",
        {"water_volume_m3": "readings[0].volume", "water_flow_m3h": "readings[-1].flow"},
        ts_path="meta.epoch_ms",
    )
    payload = json.dumps(
        {"meta": {"epoch_ms": 1772337600000}, "readings": [{"volume": 1234}, {"flow": 0.5}]}
    ).encode()
    out = samples(extract(payload, meter, NOW))
    at = dt.datetime(2026, 3, 1, 4, tzinfo=dt.UTC)
    assert [(s.channel, s.value, s.ts) for s in out.samples] == [
        ("water_volume_m3", 1234.0, at),
        ("water_flow_m3h", 0.5, at),
    ]
    assert isinstance(out.samples[0].value, float)


def test_without_ts_path_the_arrival_stamps_the_message() -> None:
    meter = MqttMeter("M", "t", {"power_w": "p"})
    arrival = dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    out = samples(extract(b'{"p": 5}', meter, arrival))
    assert out.samples[0].ts == dt.datetime(2026, 3, 1, 4, tzinfo=dt.UTC)
    assert out.samples[0].ts.tzinfo is dt.UTC


def test_offsets_are_honoured() -> None:
    payload = b'{"Time": "2026-03-01T12:00:00+01:00", "ENERGY": {"Total": 1}}'
    out = samples(extract(payload, PLUG, NOW + dt.timedelta(hours=8)))
    assert out.samples[0].ts == dt.datetime(2026, 3, 1, 11, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("local", "arrival", "utc"),
    [
        # The repeated hour at the end of CEST: the occurrence nearer the arrival is meant.
        ("2026-10-25T02:30:00", "2026-10-25T00:30:05", "2026-10-25T00:30:00"),
        ("2026-10-25T02:30:00", "2026-10-25T01:30:05", "2026-10-25T01:30:00"),
        # Either side of the spring-forward gap.
        ("2026-03-29T01:59:00", "2026-03-29T00:59:02", "2026-03-29T00:59:00"),
        ("2026-03-29T03:00:00", "2026-03-29T01:00:02", "2026-03-29T01:00:00"),
        ("2026-07-01T12:00:00", "2026-07-01T10:00:02", "2026-07-01T10:00:00"),
        ("2026-01-01T12:00:00", "2026-01-01T11:00:02", "2026-01-01T11:00:00"),
    ],
)
def test_local_time_and_daylight_saving(local: str, arrival: str, utc: str) -> None:
    meter = MqttMeter("PLUG-DE", "tele/p/SENSOR", TASMOTA_CHANNELS, "Time", "Europe/Berlin")
    received = dt.datetime.fromisoformat(arrival).replace(tzinfo=dt.UTC)
    payload = json.dumps({"Time": local, "ENERGY": {"Total": 3.5}}).encode()
    out = samples(extract(payload, meter, received))
    assert out.samples[0].ts == dt.datetime.fromisoformat(utc).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", Reason.INVALID_JSON),
        (b"\xff\xfe\x00garbage", Reason.INVALID_JSON),
        (b"[" * 100_000, Reason.INVALID_JSON),
        (b"", Reason.INVALID_JSON),
        (b" " * (4 * 1024 * 1024 + 1), Reason.TOO_LARGE),
        (b'{"ENERGY": {"Total": 1}}', Reason.SCHEMA),  # no timestamp
        (b'{"Time": "yesterday", "ENERGY": {"Total": 1}}', Reason.SCHEMA),
        (b'{"Time": null, "ENERGY": {"Total": 1}}', Reason.SCHEMA),
        (b'{"Time": 1e400, "ENERGY": {"Total": 1}}', Reason.SCHEMA),
        (b'{"Time": "1970-01-01T08:00:12", "ENERGY": {"Total": 1}}', Reason.TS_TOO_OLD),
        (b'{"Time": "2026-03-03T12:00:00", "ENERGY": {"Total": 1}}', Reason.TS_FUTURE),
        (b'{"Time": "2026-03-01T12:00:00", "Other": 1}', Reason.SCHEMA),  # nothing mapped
        (b'[1, 2]', Reason.SCHEMA),
        (b'"text"', Reason.SCHEMA),
    ],
)  # fmt: skip
def test_refused_messages(payload: bytes, reason: Reason) -> None:
    out = extract(payload, PLUG, NOW)
    assert isinstance(out, PayloadError)
    assert out.reason == reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [("1e999", Reason.NON_FINITE), ("-1e999", Reason.NON_FINITE), ("NaN", Reason.NON_FINITE),
     ("Infinity", Reason.NON_FINITE), ("1e16", Reason.NON_FINITE), ('"12.5"', Reason.SCHEMA),
     ("null", Reason.SCHEMA), ("true", Reason.SCHEMA), ("[1]", Reason.SCHEMA),
     ("{}", Reason.SCHEMA)],
)  # fmt: skip
def test_unusable_values_are_skipped_with_reason(value: str, reason: Reason) -> None:
    payload = f'{{"Time": "2026-03-01T12:00:00", "ENERGY": {{"Total": 7, "Power": {value}}}}}'
    out = samples(extract(payload.encode(), PLUG, NOW))
    assert [(s.channel, s.value) for s in out.samples] == [("energy_import_kwh", 7.0)]
    assert [(k.channel, k.reason) for k in out.skipped] == [("power_w", reason)]


def test_all_values_unusable_is_not_a_payload_error() -> None:
    out = samples(extract(b'{"Time": "2026-03-01T12:00:00", "ENERGY": {"Total": NaN}}', PLUG, NOW))
    assert out.samples == []
    assert out.skipped == [Skipped("energy_import_kwh", Reason.NON_FINITE, "ENERGY.Total: "
                                   "non-finite number")]  # fmt: skip


def test_details_never_quote_the_payload() -> None:
    secret = "13800138000"  # a phone number must not reach the logs
    cases = [
        f'{{"Time": "{secret}", "ENERGY": {{"Total": 1}}}}',
        f'{{"Time": "2026-03-01T12:00:00", "ENERGY": {{"Total": "{secret}"}}}}',
        f'{{"Time": "2026-03-01T12:00:00", "ENERGY": {{"Total": {secret}e999}}}}',
        f'{{"Time": "2026-03-01T12:00:00", "{secret}": 1}}',
        f"{{{secret}",
    ]
    for payload in cases:
        out = extract(payload.encode(), PLUG, NOW)
        details = [out.detail] if isinstance(out, PayloadError) else [k.detail for k in out.skipped]
        assert details
        assert all(secret not in d for d in details), details


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(
    doc=st.fixed_dictionaries(
        {},
        optional={
            "Time": JSON | st.sampled_from(["2026-03-01T12:00:00", "2026-03-01T12:00:00Z"]),
            "ENERGY": st.dictionaries(st.sampled_from(list(TASMOTA_CHANNELS.values())), JSON)
            | JSON,
        },
    )
)
def test_any_json_gives_samples_or_a_payload_error(doc: object) -> None:
    out = extract(json.dumps(doc).encode(), PLUG, NOW)
    assert isinstance(out, Extracted | PayloadError)


@given(st.binary(max_size=300))
def test_any_bytes_give_samples_or_a_payload_error(payload: bytes) -> None:
    out = extract(payload, STATION, NOW)
    assert isinstance(out, Extracted | PayloadError)
