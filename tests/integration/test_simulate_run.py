"""`simulate run`: a scenario's fleet served over Modbus TCP and MQTT, read by real clients."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway_agent.profiles import builtin_profile
from gateway_agent.registers import decode
from simulators.clock import ManualClock
from simulators.fleet import Fleet
from simulators.mqtt_meters import MqttMeter, render
from simulators.scenario import load_scenario, plan
from simulators.serve import GATEWAY_PROFILE, serve_fleet

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "residential-small.toml"


def test_served_registers_are_the_fleets_values() -> None:
    fleet = Fleet(plan(load_scenario(SCENARIO), start="2026-01-05T12:00:00+08:00"))
    clock = ManualClock(fleet.start + 3 * 3600)  # 15:00 local on the first day
    t = dt.datetime.fromtimestamp(clock.now(), dt.UTC)

    async def scenario() -> list[tuple[str, str, float, float]]:
        served = await serve_fleet(fleet, clock, line_timing=False)
        checked = []
        try:
            wanted = {"b1-flat-03", "b2-water-04", "b1-lift-1", "plant-pump-2", "b1-lighting"}
            for loc in served.locations:
                if loc.meter_id not in wanted or loc.transport != "modbus-tcp":
                    continue
                host, port = loc.address.rsplit(":", 1)
                profile = builtin_profile(GATEWAY_PROFILE[loc.profile])
                truth = fleet.values(loc.meter_id, t)
                client = AsyncModbusTcpClient(host, port=int(port), timeout=3)
                await client.connect()
                try:
                    for name, spec in profile.channels.items():
                        if name not in truth or not math.isfinite(truth[name]):
                            continue
                        reader = (
                            client.read_input_registers
                            if spec.function == 4
                            else client.read_holding_registers
                        )
                        reply = await reader(
                            spec.address, count=spec.count, device_id=loc.unit_id or 1
                        )
                        assert not reply.isError(), (loc.meter_id, name, reply)
                        value = decode(reply.registers, spec.fmt).value
                        checked.append((loc.meter_id, name, value, truth[name]))
                finally:
                    client.close()
        finally:
            await served.stop()
        return checked

    checked = asyncio.run(scenario())
    assert {m for m, *_ in checked} >= {"b1-flat-03", "plant-pump-2"}
    for meter, channel, got, want in checked:
        # What the register can hold: float32, or the profile's integer resolution.
        assert got == pytest.approx(want, rel=1e-6, abs=0.011), (meter, channel)


def test_mqtt_meters_publish_through_a_real_broker(mqtt_url: str) -> None:
    fleet = Fleet(plan(load_scenario(SCENARIO), start="2026-01-05T12:00:00+08:00"))
    clock = ManualClock(fleet.start)
    parts = urlsplit(mqtt_url)

    async def scenario() -> tuple[str, bytes]:
        async with aiomqtt.Client(
            parts.hostname or "127.0.0.1",
            parts.port or 1883,
            identifier=f"t-{uuid.uuid4().hex[:6]}",
        ) as sub:
            await sub.subscribe("tele/clubhouse-plug/SENSOR", qos=1)
            served = await serve_fleet(fleet, clock, line_timing=False, mqtt_url=mqtt_url)
            try:
                async with asyncio.timeout(10):
                    async for message in sub.messages:
                        return str(message.topic), bytes(message.payload)
            finally:
                await served.stop()
        raise AssertionError("no message")

    topic, payload = asyncio.run(scenario())
    t = dt.datetime.fromtimestamp(clock.now(), dt.UTC)
    plug = MqttMeter("clubhouse-plug", "clubhouse-plug", "tasmota", "Asia/Shanghai")
    assert (topic, payload) == render(plug, fleet.values("clubhouse-plug", t), t)


def test_simulate_run_cli_prints_every_meter(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    result = subprocess.run(
        [sys.executable, "-c", "from meterward.cli import main; main()", "simulate", "run",
         "-s", str(SCENARIO), "--base-port", "0", "--duration", "1", "--map",
         str(tmp_path / "map.json")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    fleet = load_scenario(SCENARIO)
    assert len(lines) == len(plan(fleet).meters) - 2  # the two MQTT meters need a broker
    assert "MQTT meters are not served" in result.stderr
    assert (tmp_path / "map.json").read_text().count('"meter_id"') == len(lines)
