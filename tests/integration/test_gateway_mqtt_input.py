"""The gateway reads MQTT-native meters from a real broker: the simulated Tasmota plug's and
weather station's own payloads become samples equal to what they published; a bad payload is
counted, not fatal; a sink failure leaves the message unacknowledged and the broker
redelivers it; an unreachable broker is retried until stop."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import aiomqtt
import pytest

from gateway_agent.clock import SystemClock
from gateway_agent.mqtt_input import MqttInput
from gateway_agent.sample import Sample
from gateway_agent.site import MqttMeter
from ingest.mappings import TASMOTA_CHANNELS
from simulators import mqtt_meters as sim

pytestmark = pytest.mark.integration

WEATHER_PATHS = {"temperature_c": "temperature", "relative_humidity_pct": "humidity"}


def site_meter(meter: sim.MqttMeter) -> MqttMeter:
    """The site-file entry a technician would write for a simulated meter."""
    if meter.format == "tasmota":
        return MqttMeter(meter.meter_id, meter.topic(), TASMOTA_CHANNELS, "Time", meter.time_zone)
    return MqttMeter(meter.meter_id, meter.topic(), WEATHER_PATHS, "ts")


def values_at(step: int) -> dict[str, float]:
    """Distinct values per message, so every sample is traceable to its publication."""
    return {
        "energy_import_kwh": 1000 + step * 0.125, "power_w": 900.0 + step * 10,
        "power_factor": 0.93, "voltage_l1_v": 229.0 + step, "current_l1_a": 4.25 + step / 8,
        "temperature_c": -3.5 + step / 10, "relative_humidity_pct": 40.0 + step,
    }  # fmt: skip


def broker(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def forget_session(url: str, client_id: str, mqtt5: bool) -> None:
    """Drop the persistent session a test left in the shared broker."""
    host, port = broker(url)
    version = aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311
    flags: dict[str, object] = {"clean_start": True} if mqtt5 else {"clean_session": True}
    async with aiomqtt.Client(host, port, identifier=client_id, protocol=version, **flags):  # type: ignore[arg-type]
        pass


async def running(
    inputs: MqttInput, scenario: Callable[[], Awaitable[None]], url: str, mqtt5: bool
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(inputs.run(stop))
    try:
        await asyncio.wait_for(inputs.subscribed.wait(), 10)
        await scenario()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await forget_session(url, inputs._client_id, mqtt5)


@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5", "mqtt311"])
def test_simulated_meters_payloads_become_the_published_values(mqtt_url: str, mqtt5: bool) -> None:
    run = uuid.uuid4().hex[:8]
    plug = sim.MqttMeter(f"T-PLUG-{run}", f"plug-{run}", "tasmota", "Asia/Shanghai")
    station = sim.MqttMeter(f"T-WX-{run}", f"wx-{run}", "weather-json")
    received: list[Sample] = []

    async def sink(samples: list[Sample]) -> None:
        received.extend(samples)

    # Published at whole seconds in the last minutes, as the devices would.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    published: dict[tuple[str, dt.datetime], Mapping[str, float]] = {}
    messages: list[tuple[str, bytes]] = []
    for step in range(5):
        t = now - dt.timedelta(minutes=5 - step)
        for meter in (plug, station):
            topic, payload = sim.render(meter, values_at(step), t)
            messages.append((topic, payload))
            published[(meter.meter_id, t)] = sim.reported(meter, values_at(step))
    messages.insert(3, (plug.topic(), b'{"Time": "not a time", "ENERGY": {"Total": 1}}'))
    messages.insert(6, (station.topic(), b"\x00garbage"))

    async def main() -> MqttInput:
        inputs = MqttInput(
            mqtt_url, [site_meter(plug), site_meter(station)], sink, mqtt5=mqtt5,
            client_id=f"test-in-{run}", clock=SystemClock(), session_expiry_s=60,
        )  # fmt: skip

        async def publish() -> None:
            async with aiomqtt.Client(*broker(mqtt_url)) as pub:
                for topic, payload in messages:
                    await pub.publish(topic, payload, qos=1)
            expected = sum(len(v) for v in published.values())
            await wait_for(lambda: len(received) >= expected and inputs.stats.messages == 12)

        await running(inputs, publish, mqtt_url, mqtt5)
        return inputs

    inputs = asyncio.run(main())
    got: dict[tuple[str, dt.datetime], dict[str, float]] = {}
    for s in received:
        assert s.value is not None
        got.setdefault((s.meter_id, s.ts), {})[s.channel] = s.value
        assert s.quality == "good"
    assert got == published
    assert len(received) == sum(len(v) for v in published.values())  # nothing twice
    assert inputs.stats.messages == 12
    assert inputs.stats.payload_errors == 2
    assert inputs.stats.samples == len(received)
    assert inputs.stats.connects == 1


@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5", "mqtt311"])
def test_a_failing_sink_gets_the_message_again(mqtt_url: str, mqtt5: bool) -> None:
    """The PUBACK waits for the sink: a message it did not store is redelivered."""
    run = uuid.uuid4().hex[:8]
    plug = sim.MqttMeter(f"T-PLUG-{run}", f"plug-{run}", "tasmota", "Asia/Shanghai")
    calls: list[list[Sample]] = []

    async def sink(samples: list[Sample]) -> None:
        calls.append(samples)
        if len(calls) == 1:
            raise OSError("disk full")

    t = dt.datetime.now(dt.UTC).replace(microsecond=0)
    topic, payload = sim.render(plug, values_at(1), t)

    async def main() -> MqttInput:
        inputs = MqttInput(
            mqtt_url, [site_meter(plug)], sink, mqtt5=mqtt5, client_id=f"test-in-{run}",
            clock=SystemClock(), session_expiry_s=60, backoff_base_s=0.05, backoff_max_s=0.1,
        )  # fmt: skip

        async def publish() -> None:
            async with aiomqtt.Client(*broker(mqtt_url)) as pub:
                await pub.publish(topic, payload, qos=1)
            await wait_for(lambda: len(calls) >= 2)
            await asyncio.sleep(0.3)  # no third delivery once stored and acknowledged

        await running(inputs, publish, mqtt_url, mqtt5)
        return inputs

    inputs = asyncio.run(main())
    assert len(calls) == 2
    assert calls[0] == calls[1]
    assert {s.channel: s.value for s in calls[1]} == sim.reported(plug, values_at(1))
    assert inputs.stats.sink_errors == 1
    assert inputs.stats.connects == 2
    assert inputs.stats.samples == len(calls[1])


def test_unreachable_broker_is_retried_until_stop() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    meter = MqttMeter("T-X", "t/x", {"power_w": "p"})

    async def sink(samples: list[Sample]) -> None:
        raise AssertionError("no broker, no samples")

    async def main() -> tuple[MqttInput, float]:
        inputs = MqttInput(
            f"mqtt://127.0.0.1:{port}", [meter], sink, mqtt5=True, client_id="test-in-x",
            clock=SystemClock(), backoff_base_s=0.01, backoff_max_s=0.05,
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(inputs.run(stop))
        await wait_for(lambda: inputs.stats.connection_losses >= 3)
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 5)
        return inputs, time.monotonic() - started

    inputs, stopping = asyncio.run(main())
    assert inputs.stats.connects == 0
    assert inputs.stats.connection_losses >= 3
    assert stopping < 1.0
