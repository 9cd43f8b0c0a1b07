"""The demo's gateway agents: one per simulated project, polling the fleet `serve_fleet`
serves, registered in the store so ingest accepts what they send.

A real deployment writes one site file per gateway (ops/gateway/site.example.toml); the demo
derives the same `Site` from where the simulated meters live.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from gateway_agent.profiles import builtin_profile
from gateway_agent.site import Bus, Device, ForwardConfig, MqttMeter, OutboxConfig, Site
from ingest.mappings import TASMOTA_CHANNELS
from simulators.serve import GATEWAY_PROFILE, Location

if TYPE_CHECKING:
    from simulators.fleet import Fleet

# JSON paths of the simulated weather stations' own payloads (simulators/mqtt_meters.py); the
# plugs speak Tasmota, whose paths ingest's mappings already know.
_WEATHER_PATHS: Mapping[str, str] = {
    "temperature_c": "temperature",
    "relative_humidity_pct": "humidity",
}


def gateway_id(project: str) -> str:
    """The demo gateway serving one simulated project."""
    return f"demo-gw-{project.lower()}"


def register_fleet(db_url: str, fleet: Fleet) -> None:
    """Projects, gateways and meters of the fleet in the registry (idempotent)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        org = conn.execute(
            "INSERT INTO organisations (code, name) VALUES ('demo', 'meterward demo')"
            " ON CONFLICT (code) DO UPDATE SET name = excluded.name RETURNING id"
        ).fetchone()
        assert org is not None
        for spec in fleet.plan.projects.values():
            project = conn.execute(
                "INSERT INTO projects (organisation_id, code, name, time_zone)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (code) DO UPDATE SET name = excluded.name"
                " RETURNING id",
                (org[0], spec.id, spec.name, spec.time_zone),
            ).fetchone()
            assert project is not None
            gateway = conn.execute(
                "INSERT INTO gateways (project_id, code, name) VALUES (%s, %s, %s)"
                " ON CONFLICT (code) DO UPDATE SET name = excluded.name RETURNING id",
                (project[0], gateway_id(spec.id), f"{spec.name} gateway"),
            ).fetchone()
            assert gateway is not None
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO meters (project_id, gateway_id, code, kind, profile)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (code) DO NOTHING",
                    [
                        (project[0], gateway[0], m.meter_id, m.kind, m.profile)
                        for m in fleet.meters.values()
                        if m.project == spec.id
                    ],
                )


def sites_for_fleet(
    locations: list[Location],
    fleet: Fleet,
    *,
    data_dir: Path,
    mqtt_url: str,
    mqtt5: bool,
) -> list[Site]:
    """One site per project: a bus per converter endpoint, every meter it hosts."""
    by_project: dict[str, list[Location]] = defaultdict(list)
    for loc in locations:
        by_project[fleet.meters[loc.meter_id].project].append(loc)
    sites = []
    for project, locs in sorted(by_project.items()):
        gw = gateway_id(project)
        buses: dict[str, Bus] = {}
        devices: list[Device] = []
        mqtt_meters: list[MqttMeter] = []
        for loc in sorted(locs, key=lambda x: (x.address, x.unit_id or 0)):
            if loc.transport == "mqtt":
                is_plug = loc.address.startswith("tele/")
                zone = fleet.plan.projects[project].time_zone
                mqtt_meters.append(
                    MqttMeter(
                        meter_id=loc.meter_id,
                        topic=loc.address,
                        channels=TASMOTA_CHANNELS if is_plug else _WEATHER_PATHS,
                        ts_path="Time" if is_plug else "ts",
                        time_zone=zone if is_plug else "UTC",
                    )
                )
                continue
            host, port = loc.address.rsplit(":", 1)
            name = loc.bus or loc.address
            buses.setdefault(
                name,
                Bus(
                    name=name,
                    transport="rtu-over-tcp" if loc.transport == "rtu-over-tcp" else "tcp",
                    host=host,
                    port=int(port),
                    timeout_s=1.0,
                ),
            )
            profile = builtin_profile(GATEWAY_PROFILE[loc.profile])
            assert loc.unit_id is not None
            devices.append(Device.of(loc.meter_id, name, loc.unit_id, profile))
        sites.append(
            Site(
                gateway_id=gw,
                env="dev",
                buses=buses,
                devices=tuple(devices),
                mqtt_meters=tuple(mqtt_meters),
                outbox=OutboxConfig(path=str(data_dir / "gateways" / f"{gw}.outbox.sqlite")),
                forward=ForwardConfig(mqtt_url=mqtt_url, client_id=gw, mqtt5=mqtt5),
                source="meterward demo",
            )
        )
    return sites
