"""The agent as a technician runs it: `meterward gateway check` and `meterward gateway run`
against simulated meters behind a Modbus TCP converter, with a private broker; the heartbeat
on the status topic, the Prometheus endpoint, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from contracts.topics import status_topic
from gateway_agent.outbox import Outbox, iter_rows
from gateway_agent.profiles import builtin_profile
from gateway_agent.site import OutboxConfig
from tests.support.broker import PrivateBroker, _free_port
from tests.support.mqtt import client as mqtt_client
from tests.support.served_meters import ServedMeters

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENTRY = [sys.executable, "-c", "from meterward.cli import main; main()"]
PROFILE = builtin_profile("eastron_sdm120")
METERS = ["AG-E-001", "AG-E-002"]


@pytest.fixture
def meters() -> Iterator[ServedMeters]:
    served = ServedMeters(PROFILE, METERS)
    yield served
    served.close()


def write_site(
    folder: Path,
    *,
    gateway: str,
    broker_url: str,
    modbus_port: int,
    extra_unit: int | None = None,
    metrics_port: int | None = None,
) -> Path:
    lines = ["[gateway]", f'id = "{gateway}"', 'env = "dev"']
    if metrics_port is not None:
        lines.append(f"metrics_port = {metrics_port}")
    lines += [
        "[forward]",
        f'mqtt_url = "{broker_url}"',
        "status_interval_s = 1",
        "[outbox]",
        'path = "outbox.sqlite"',
        "[[buses]]",
        'name = "conv-1"',
        'transport = "tcp"',
        'host = "127.0.0.1"',
        f"port = {modbus_port}",
        "timeout = 0.3",
    ]
    units = [(m, i + 1) for i, m in enumerate(METERS)]
    if extra_unit is not None:
        units.append(("AG-E-DEAD", extra_unit))
    for meter, unit in units:
        lines += [
            "[[devices]]",
            f'meter_id = "{meter}"',
            'bus = "conv-1"',
            f"unit_id = {unit}",
            'profile = "eastron_sdm120"',
            "poll = { fast = 1, energy = 1 }",
        ]
    path = folder / "site.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_check_prints_every_channel_and_fails_on_a_silent_device(
    meters: ServedMeters, tmp_path: Path
) -> None:
    site = write_site(
        tmp_path, gateway="gw-check", broker_url="mqtt://127.0.0.1:1", modbus_port=meters.port
    )
    ok = subprocess.run(
        [*ENTRY, "gateway", "check", "-c", str(site)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for meter in METERS:
        assert meter in ok.stdout
    for name, spec in PROFILE.channels.items():
        assert name in ok.stdout
        assert spec.unit in ok.stdout
    assert f"all {len(METERS) * len(PROFILE.channels)} channels of 2 devices" in ok.stdout

    site = write_site(
        tmp_path,
        gateway="gw-check",
        broker_url="mqtt://127.0.0.1:1",
        modbus_port=meters.port,
        extra_unit=9,
    )
    bad = subprocess.run(
        [*ENTRY, "gateway", "check", "-c", str(site)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "AG-E-DEAD" in bad.stdout
    assert "need attention on 1 device(s): AG-E-DEAD" in bad.stdout


def test_check_refuses_a_bad_site_file_in_one_line(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[gateway]\nid = "gw-x"\nenv = "dev"\ncolour = "blue"\n', encoding="utf-8")
    result = subprocess.run(
        [*ENTRY, "gateway", "check", "-c", str(site)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(site) in lines[0]
    assert "Traceback" not in result.stderr


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("meterward_gateway_") and "{" in line:
            name = line.split("{", 1)[0]
            values[name] = float(line.rsplit(" ", 1)[1])
    return values


def test_run_heartbeat_metrics_and_sigterm(meters: ServedMeters, tmp_path: Path) -> None:
    gateway = f"gw-run-{uuid.uuid4().hex[:6]}"
    metrics_port = _free_port()
    with PrivateBroker(tmp_path / "broker") as broker:
        statuses: list[dict[str, object]] = []
        got = threading.Event()
        watcher = mqtt_client(broker.url, "status-watch")

        def on_message(c: mqtt.Client, u: object, message: mqtt.MQTTMessage) -> None:
            statuses.append(json.loads(message.payload))
            got.set()

        watcher.on_message = on_message
        watcher.subscribe(status_topic(gateway), qos=1)
        site = write_site(
            tmp_path,
            gateway=gateway,
            broker_url=broker.url,
            modbus_port=meters.port,
            metrics_port=metrics_port,
        )
        proc = subprocess.Popen(
            [*ENTRY, "gateway", "run", "-c", str(site)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            metrics: dict[str, float] = {}
            while metrics.get("meterward_gateway_poller_cycles_total", 0) < 3:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, f"no cycles: {metrics}"
                time.sleep(0.3)
                try:
                    metrics = scrape(metrics_port)
                except OSError:
                    continue
            assert metrics["meterward_gateway_forwarder_connected"] == 1.0
            assert metrics["meterward_gateway_outbox_rows"] > 0  # no ingest: nothing acked
            assert metrics["meterward_gateway_outbox_dropped_total"] == 0
            assert metrics["meterward_gateway_devices_failing"] == 0
            assert got.wait(10), "no heartbeat on the status topic"
            online = [s for s in statuses if s.get("state") == "online"]
            assert online, statuses
            beat = online[-1]
            assert beat["gateway_id"] == gateway
            devices = beat["devices"]
            assert isinstance(devices, dict)
            assert set(devices) == set(METERS)
            assert isinstance(beat["outbox"], dict)
            assert beat["outbox"]["rows"] > 0
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            time.sleep(0.5)
            assert statuses[-1].get("state") == "offline"  # said goodbye
        finally:
            if proc.poll() is None:
                proc.kill()
            watcher.disconnect()
            watcher.loop_stop()
    with Outbox(OutboxConfig(path=str(tmp_path / "outbox.sqlite")), boot_id=uuid.uuid4()) as box:
        rows = list(iter_rows(box))
    assert {r.reading.meter_id for r in rows} == set(METERS)
    assert all(r.reading.quality == "good" for r in rows)
