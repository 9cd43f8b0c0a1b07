"""MQTT-native meters publish to a real broker on an accelerated clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiomqtt
import pytest

from simulators.mqtt_meters import MqttMeter, publish_forever, render

pytestmark = pytest.mark.integration


class Ramp:
    """Values that change with time, so each message is distinguishable."""

    def values(self, meter_id: str, t: dt.datetime) -> Mapping[str, float]:
        minutes = t.timestamp() / 60
        return {
            "energy_import_kwh": 100 + minutes / 60, "power_w": 1000.0,
            "apparent_power_va": 1050.0, "reactive_power_var": 300.0, "power_factor": 0.95,
            "voltage_l1_v": 230.0, "current_l1_a": 4.5, "temperature_c": 20.0,
            "relative_humidity_pct": 50.0,
        }  # fmt: skip


def test_fleet_publishes_every_period_of_simulated_time(mqtt_url: str) -> None:
    run = uuid.uuid4().hex[:8]
    meters = [
        MqttMeter(f"P9-PLUG-{run}", f"plug-{run}", "tasmota", period_s=60),
        MqttMeter(f"P9-WX-{run}", f"wx-{run}", "weather-json", period_s=300),
    ]
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    ticks = 0
    stop = asyncio.Event()

    def clock() -> dt.datetime:  # one simulated minute per wall tick
        return start + dt.timedelta(minutes=ticks)

    async def tick(_: float) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 60:  # one simulated hour
            stop.set()
        await asyncio.sleep(0)

    parts = urlsplit(mqtt_url)

    async def scenario() -> tuple[int, list[tuple[str, bytes]]]:
        received: list[tuple[str, bytes]] = []
        async with (
            aiomqtt.Client(parts.hostname or "127.0.0.1", parts.port or 1883) as sub,
            aiomqtt.Client(parts.hostname or "127.0.0.1", parts.port or 1883) as pub,
        ):
            await sub.subscribe(f"tele/plug-{run}/SENSOR", qos=1)
            await sub.subscribe(f"weather/wx-{run}/state", qos=1)
            sent = await publish_forever(pub, meters, Ramp(), clock, sleep=tick, stop=stop)
            async with asyncio.timeout(10):
                async for message in sub.messages:
                    received.append((str(message.topic), bytes(message.payload)))
                    if len(received) == sent:
                        break
        return sent, received

    sent, received = asyncio.run(scenario())
    plug = [p for t, p in received if t.startswith("tele/")]
    weather = [p for t, p in received if t.startswith("weather/")]
    assert len(plug) == 60  # every simulated minute of the hour
    assert len(weather) == 12  # every five minutes
    assert sent == len(received)
    # Byte for byte what `render` says the device publishes at that minute.
    first = render(meters[0], Ramp().values(meters[0].meter_id, start), start)
    assert first[1] == plug[0]
