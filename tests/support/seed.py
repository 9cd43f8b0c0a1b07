"""Seed a migrated test database with the registry the golden payloads expect."""

from __future__ import annotations

import datetime as dt

import psycopg

from contracts.fixtures import golden_registry


def seed_golden_registry(url: str) -> None:
    """Projects P001/P002, their gateways and meters, exactly as contracts/fixtures says."""
    doc = golden_registry()
    with psycopg.connect(url, autocommit=True) as conn:
        org = conn.execute(
            "INSERT INTO organisations (code, name) VALUES ('hq', 'HQ') RETURNING id"
        ).fetchone()
        assert org is not None
        projects: dict[str, int] = {}
        for code in sorted({*doc["gateways"].values(), *doc["meters"].values()}):
            row = conn.execute(
                "INSERT INTO projects (organisation_id, code, name) VALUES (%s, %s, %s)"
                " RETURNING id",
                (org[0], code, f"Project {code}"),
            ).fetchone()
            assert row is not None
            projects[code] = int(row[0])
        for gateway, project in doc["gateways"].items():
            conn.execute(
                "INSERT INTO gateways (project_id, code, name) VALUES (%s, %s, %s)",
                (projects[project], gateway, gateway),
            )
        for meter, project in doc["meters"].items():
            conn.execute(
                "INSERT INTO meters (project_id, code, kind, profile) VALUES (%s, %s, %s, %s)",
                (projects[project], meter, "water" if "-W-" in meter else "electricity", "test"),
            )


def seed_fleet(url: str, gateway: str, meters: list[str], project: str = "PF") -> None:
    """One project with one gateway and the given meters."""
    with psycopg.connect(url, autocommit=True) as conn:
        org = conn.execute(
            "INSERT INTO organisations (code, name) VALUES (%s, %s)"
            " ON CONFLICT (code) DO UPDATE SET name = excluded.name RETURNING id",
            ("hq", "HQ"),
        ).fetchone()
        assert org is not None
        row = conn.execute(
            "INSERT INTO projects (organisation_id, code, name) VALUES (%s, %s, %s) RETURNING id",
            (org[0], project, project),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO gateways (project_id, code, name) VALUES (%s, %s, %s)",
            (row[0], gateway, gateway),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO meters (project_id, code, kind, profile)"
                " VALUES (%s, %s, 'electricity', 'test')",
                [(row[0], m) for m in meters],
            )


def stored_rows(url: str) -> list[tuple[str, str, dt.datetime]]:
    """Every stored reading's key (meter code, channel, ts), one entry per row."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT m.code, r.channel, r.ts FROM readings r JOIN meters m ON m.id = r.meter_id"
        ).fetchall()
    return [(str(a), str(b), c) for a, b, c in rows]
