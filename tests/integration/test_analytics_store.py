"""The analytics store adapter on real PostgreSQL, with and without TimescaleDB: frames go in and
come back equal, re-writes change nothing, late rows are found, and a tick's episodes, outbox
events and watermark commit together."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psycopg
import pytest

from analytics import store
from analytics.consumption import consumption
from analytics.episodes import EPISODES_SCHEMA, EpisodeParams, advance, carry
from analytics.frames import (
    CONSUMPTION_SCHEMA,
    FINDINGS_SCHEMA,
    READINGS_SCHEMA,
    evidence,
)
from analytics.rollups import ROLLUP_SCHEMA, dirty_buckets, refresh, rollup
from store.migrations import TimescaleMode, migrate
from tests.conftest import DatabaseFactory

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 3, 28, tzinfo=dt.UTC)  # Europe/Berlin springs forward on the 29th
Q = dt.timedelta(minutes=15)
HOUR = dt.timedelta(hours=1)
Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Store:
    url: str
    project: int
    meters: dict[str, int]


def seed(url: str) -> Store:
    """One project in Europe/Berlin: a main meter (a CT-fed, replaced once, two counters), a
    sub-meter under it, a water meter, and another project's meter that must never show up."""
    with psycopg.connect(url, autocommit=True) as conn:
        org = one(conn, "INSERT INTO organisations (code, name) VALUES ('hq', 'HQ') RETURNING id")
        project = one(
            conn,
            "INSERT INTO projects (organisation_id, code, name, time_zone)"
            " VALUES (%s, 'P1', 'Estate', 'Europe/Berlin') RETURNING id",
            (org,),
        )
        other = one(
            conn,
            "INSERT INTO projects (organisation_id, code, name) VALUES (%s, 'P2', 'Other')"
            " RETURNING id",
            (org,),
        )
        building = one(
            conn,
            "INSERT INTO buildings (project_id, code, name) VALUES (%s, 'B1', 'Tower')"
            " RETURNING id",
            (project,),
        )
        ids: dict[str, int] = {}
        for code, kind, channels, extra in (
            ("E-MAIN", "electricity", ["energy_import_kwh", "energy_export_kwh", "power_w"],
             {"ct_ratio": 40, "register_modulus": 100000, "load": "landlord"}),
            ("E-SUB", "electricity", ["energy_import_kwh", "power_w"], {"load": "pump"}),
            ("W-1", "water", ["water_volume_m3", "water_flow_m3h"], {"load": "residential"}),
        ):  # fmt: skip
            ids[code] = one(
                conn,
                "INSERT INTO meters (project_id, building_id, code, kind, profile, channels,"
                " ct_ratio, register_modulus, load)"
                " VALUES (%s, %s, %s, %s, 'test', %s, %s, %s, %s) RETURNING id",
                (project, building, code, kind, channels, extra.get("ct_ratio", 1),
                 extra.get("register_modulus"), extra["load"]),
            )  # fmt: skip
        conn.execute(
            "UPDATE meters SET parent_meter_id = %s WHERE id = %s", (ids["E-MAIN"], ids["E-SUB"])
        )
        ids["X-OTHER"] = one(
            conn,
            "INSERT INTO meters (project_id, code, kind, profile, channels)"
            " VALUES (%s, 'X-OTHER', 'electricity', 'test', '{energy_import_kwh}') RETURNING id",
            (other,),
        )
        # E-MAIN: the first device, replaced at T0 + 2 h by one with its own register.
        conn.execute(
            "INSERT INTO meter_installations (meter_id, serial, installed_at, removed_at,"
            " opening_readings, closing_readings, register_modulus)"
            " VALUES (%s, 'SN-1', %s, %s, %s, %s, 100000),"
            " (%s, 'SN-2', %s, NULL, %s, '{}', 1000000)",
            (ids["E-MAIN"], T0 - dt.timedelta(days=30), T0 + 2 * HOUR,
             json.dumps({"energy_import_kwh": 10.0, "energy_export_kwh": 0.0}),
             json.dumps({"energy_import_kwh": 512.5, "energy_export_kwh": 3.25}),
             ids["E-MAIN"], T0 + 2 * HOUR,
             json.dumps({"energy_import_kwh": 0.5, "energy_export_kwh": 0.0})),
        )  # fmt: skip
        # W-1: single counter; the scalar columns serve.
        conn.execute(
            "INSERT INTO meter_installations (meter_id, serial, installed_at, opening_reading)"
            " VALUES (%s, 'W-SN', %s, 7.0)",
            (ids["W-1"], T0 - dt.timedelta(days=30)),
        )
    return Store(url, project, ids)


def one(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(params=["require", "off"], ids=["timescaledb", "postgresql"])
def db(request: pytest.FixtureRequest, make_database: DatabaseFactory) -> Store:
    mode: TimescaleMode = request.param
    url = make_database()
    _, caps = migrate(url, mode)
    assert caps.backend == ("timescaledb" if mode == "require" else "postgresql")
    return seed(url)


def connect(db: Store) -> Conn:
    return psycopg.connect(db.url, autocommit=True)


def readings_frame(db: Store, hours: int = 6) -> pl.DataFrame:
    """Counter and power readings every 15 minutes: E-MAIN's import register replaced at
    +2 h (new device starts at 0.5), a NaN-sentinel read, water with a comm error."""
    rows: list[tuple[str, str, dt.datetime, float | None, str]] = []
    for i in range(hours * 4):
        ts = T0 + i * Q
        main = 500.0 + i * 1.5 if ts < T0 + 2 * HOUR else 0.5 + (i - 8) * 1.5
        rows += [
            ("E-MAIN", "energy_import_kwh", ts, main, "good"),
            ("E-MAIN", "energy_export_kwh", ts, 3.0 if ts < T0 + 2 * HOUR else 0.0, "good"),
            ("E-MAIN", "power_w", ts, 6000.0 + i, "good"),
            ("E-SUB", "energy_import_kwh", ts, 100.0 + i * 0.75, "good"),
            ("W-1", "water_volume_m3", ts, 7.0 + i * 0.01, "good"),
        ]
    rows.append(("E-SUB", "power_w", T0 + Q, float("nan"), "nan_sentinel"))
    rows.append(("W-1", "water_flow_m3h", T0 + Q, None, "comm_error"))
    df = pl.DataFrame(rows, schema=list(READINGS_SCHEMA), orient="row")
    return df.cast(READINGS_SCHEMA)


def insert_readings(
    conn: Conn, db: Store, df: pl.DataFrame, received_at: dt.datetime | None = None
) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO readings (meter_id, channel, ts, value, quality, received_at)"
            " VALUES (%s, %s, %s, %s, %s, coalesce(%s, now()))",
            [
                (db.meters[m], c, t, None if v is None or math.isnan(v) else v, q, received_at)
                for m, c, t, v, q in df.iter_rows()
            ],
        )


def table_rows(conn: Conn, table: str, order: str) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()


# --- loading -----------------------------------------------------------------------------------


def test_meters_frame_from_the_ledger(db: Store) -> None:
    with connect(db) as conn:
        meters = store.load_meters(conn, db.project)
    assert meters.schema == store.METERS_SCHEMA
    assert meters.get_column("meter_id").to_list() == ["E-MAIN", "E-SUB", "W-1"]
    by_id = {r["meter_id"]: r for r in meters.iter_rows(named=True)}
    main, sub, water = by_id["E-MAIN"], by_id["E-SUB"], by_id["W-1"]
    assert (main["project"], main["building"], main["time_zone"]) == ("P1", "B1", "Europe/Berlin")
    assert (main["multiplier"], sub["multiplier"]) == (40.0, 1.0)
    assert (sub["parent_meter_id"], main["parent_meter_id"]) == ("E-MAIN", None)
    assert (main["load"], sub["load"]) == ("landlord", "pump")
    # Counters: the first installation's opening, the current installation's modulus.
    assert main["counters"] == [
        {"channel": "energy_import_kwh", "opening": 10.0, "modulus": 1000000.0},
        {"channel": "energy_export_kwh", "opening": 0.0, "modulus": 1000000.0},
    ]
    assert water["counters"] == [{"channel": "water_volume_m3", "opening": 7.0, "modulus": None}]
    assert main["replacements"] == [
        {"at": T0 + 2 * HOUR, "old_serial": "SN-1", "new_serial": "SN-2",
         "channel": "energy_import_kwh", "closing": 512.5, "opening": 0.5},
        {"at": T0 + 2 * HOUR, "old_serial": "SN-1", "new_serial": "SN-2",
         "channel": "energy_export_kwh", "closing": 3.25, "opening": 0.0},
    ]  # fmt: skip
    assert sub["replacements"] == []
    assert sub["counters"][0]["opening"] is None


def test_readings_round_trip(db: Store) -> None:
    df = readings_frame(db)
    with connect(db) as conn:
        insert_readings(conn, db, df)
        conn.execute(  # another project's reading in the same window
            "INSERT INTO readings (meter_id, channel, ts, value) VALUES (%s, 'energy_import_kwh',"
            " %s, 1)",
            (db.meters["X-OTHER"], T0),
        )
        loaded = store.load_readings(conn, db.project, (T0, T0 + 6 * HOUR))
        only = store.load_readings(conn, db.project, (T0, T0 + HOUR), channels=["power_w"])
    assert loaded.schema == READINGS_SCHEMA
    key = ["meter_id", "channel", "ts"]
    assert loaded.sort(key).equals(df.sort(key))
    nan = loaded.filter(pl.col("quality") == "nan_sentinel").get_column("value")
    assert nan.is_nan().to_list() == [True]  # as the file mode has it
    assert set(only.get_column("channel")) == {"power_w"}
    assert only.get_column("ts").max() < T0 + HOUR  # type: ignore[operator]


def test_late_readings_are_found_by_arrival(db: Store) -> None:
    df = readings_frame(db)
    early = T0 + 7 * HOUR
    with connect(db) as conn:
        insert_readings(conn, db, df, received_at=early)
        mark = store.Watermark("consumption", T0 + 6 * HOUR, early)
        store.advance_watermark(conn, db.project, mark, now=early)
        # Two days later, a gateway's backlog: E-SUB readings from before the watermark, and
        # one from after it (not late, just new).
        late = pl.DataFrame(
            [("E-SUB", "energy_import_kwh", T0 - 2 * HOUR, 98.0, "good"),
             ("E-SUB", "energy_import_kwh", T0 - HOUR, 99.0, "good"),
             ("E-SUB", "energy_import_kwh", T0 + 7 * HOUR, 121.0, "good")],
            schema=list(READINGS_SCHEMA), orient="row",
        ).cast(READINGS_SCHEMA)  # fmt: skip
        insert_readings(conn, db, late, received_at=early + dt.timedelta(days=2))
        got = store.load_watermark(conn, db.project, "consumption")
        assert got == mark
        horizon = store.received_horizon(conn)
        found = store.late_readings(
            conn, db.project, received_after=got.received_upto, received_upto=horizon,
            before=got.watermark,
        )  # fmt: skip
        # A watermark never moves back.
        store.advance_watermark(conn, db.project, store.Watermark("consumption", T0, T0), now=early)
        assert store.load_watermark(conn, db.project, "consumption") == mark
    assert found.schema == store.LATE_SCHEMA
    assert found.rows() == [("E-SUB", "energy_import_kwh", T0 - 2 * HOUR, T0 - HOUR, 2)]


def test_received_horizon_stays_before_open_writers(db: Store) -> None:
    """A reading's received_at is its transaction's start: while an ingest transaction is
    open, the horizon must not pass its start, or its rows would be missed when it commits."""
    with connect(db) as writer, connect(db) as reader:
        with writer.transaction():
            writer.execute(
                "INSERT INTO readings (meter_id, channel, ts, value) VALUES (%s, 'power_w', %s, 1)",
                (db.meters["E-SUB"], T0),
            )
            started = writer.execute("SELECT now()").fetchone()
            assert started is not None
            during = store.received_horizon(reader, margin=dt.timedelta(0))
            assert during < started[0]
        with writer.transaction():  # begun, nothing written yet: no xid, same stamp to come
            begun = writer.execute("SELECT now()").fetchone()
            assert begun is not None
            assert store.received_horizon(reader, margin=dt.timedelta(0)) < begun[0]
        after = store.received_horizon(reader, margin=dt.timedelta(0))
        assert after > started[0]
        row = reader.execute("SELECT received_at FROM readings").fetchone()
        assert row is not None
        assert during < row[0] <= after  # the next scan, (during, after], sees it


# --- results: round trips, idempotent re-writes, replaced windows --------------------------------


def test_consumption_round_trip_and_idempotent_rewrite(db: Store) -> None:
    """Readings from the store through `consumption` into the store and back: equal frames;
    writing the same window again changes no byte; a recomputed window replaces the old."""
    window = (T0, T0 + 6 * HOUR)
    with connect(db) as conn:
        insert_readings(conn, db, readings_frame(db))
        readings = store.load_readings(conn, db.project, window)
        meters = store.load_meters(conn, db.project)
        result = consumption(readings, meters)
        intervals, events = result.intervals, result.events
        assert intervals.height > 0
        assert events.filter(pl.col("event") == "replacement").height > 0
        w1 = store.write_consumption(conn, db.project, intervals, computed_at=T0, window=window)
        e1 = store.write_counter_events(conn, db.project, events, computed_at=T0, window=window)
        assert (w1.upserted, w1.deleted, e1.upserted) == (intervals.height, 0, events.height)
        assert store.load_consumption(conn, db.project, window).equals(intervals)
        assert store.load_counter_events(conn, db.project, window).equals(events)

        before = table_rows(conn, "consumption_intervals", "meter_id, channel, start_at")
        later = T0 + dt.timedelta(days=1)
        w2 = store.write_consumption(conn, db.project, intervals, computed_at=later, window=window)
        e2 = store.write_counter_events(conn, db.project, events, computed_at=later, window=window)
        assert (w2, e2) == (store.Written(0, 0), store.Written(0, 0))
        assert table_rows(conn, "consumption_intervals", "meter_id, channel, start_at") == before

        # A recomputation that dropped E-SUB's last hour and changed one W-1 interval.
        sub_end = intervals.filter(pl.col("meter_id") == "E-SUB").get_column("end").max()
        changed = intervals.filter(
            (pl.col("meter_id") != "E-SUB") | (pl.col("end") <= sub_end - HOUR)  # type: ignore[operator]
        ).with_columns(
            consumption=pl.when((pl.col("meter_id") == "W-1") & (pl.col("start") == T0))
            .then(pl.col("consumption") * 2)
            .otherwise(pl.col("consumption"))
        )
        w3 = store.write_consumption(conn, db.project, changed, computed_at=later, window=window)
        assert w3 == store.Written(upserted=1, deleted=4)
        assert store.load_consumption(conn, db.project, window).equals(changed)


def test_consumption_with_a_null_interval_and_an_unknown_meter(db: Store) -> None:
    df = pl.DataFrame(
        {"meter_id": ["W-1", "W-1"], "channel": ["water_volume_m3"] * 2,
         "start": [T0, T0 + Q], "end": [T0 + Q, T0 + 2 * Q], "consumption": [0.25, None],
         "quality": ["measured", None]},
    ).cast(CONSUMPTION_SCHEMA)  # fmt: skip
    window = (T0, T0 + HOUR)
    with connect(db) as conn:
        store.write_consumption(conn, db.project, df, computed_at=T0, window=window)
        assert store.load_consumption(conn, db.project, window).equals(df)
        with pytest.raises(store.StoreError, match="X-OTHER"):  # another project's meter
            store.write_consumption(
                conn, db.project, df.with_columns(meter_id=pl.lit("X-OTHER")), computed_at=T0
            )
        with pytest.raises(psycopg.errors.CheckViolation):
            store.write_consumption(
                conn, db.project, df.with_columns(consumption=pl.lit(-1.0)), computed_at=T0
            )


def test_rollups_round_trip_and_dirty_replacement(db: Store) -> None:
    window = (T0 - dt.timedelta(days=40), T0 + dt.timedelta(days=40))
    with connect(db) as conn:
        insert_readings(conn, db, readings_frame(db))
        meters = store.load_meters(conn, db.project)
        intervals = consumption(store.load_readings(conn, db.project, window), meters).intervals
        full = rollup(intervals, meters)
        assert set(full.get_column("level")) == {"meter", "building", "project"}
        w = store.write_rollups(conn, db.project, full, computed_at=T0)
        assert w == store.Written(full.height, 0)
        loaded = store.load_rollups(conn, db.project, window)
        assert loaded.schema == ROLLUP_SCHEMA
        assert loaded.equals(full)
        assert store.write_rollups(conn, db.project, full, computed_at=T0) == store.Written(0, 0)

        # Late data: W-1's first interval doubled. Refresh the dirty buckets and write them.
        late = intervals.filter(pl.col("meter_id") == "W-1", pl.col("start") == T0).with_columns(
            pl.col("consumption") * 2,
            quality=pl.lit("backfilled").cast(CONSUMPTION_SCHEMA["quality"]),
        )
        dirty = dirty_buckets(late, meters)
        updated = refresh(loaded, late, meters, dirty)
        key = list(
            dirty.select("level", "period", "key", "project", "channel", "bucket_start").columns
        )
        rows = updated.join(dirty.select(key), on=key, how="semi")
        w2 = store.write_rollups(conn, db.project, rows, computed_at=T0 + HOUR, dirty=dirty)
        assert w2.deleted == 0
        assert 0 < w2.upserted <= dirty.height
        assert store.load_rollups(conn, db.project, window).equals(updated)

        # A dirty bucket the result no longer has is deleted.
        gone = dirty.filter(pl.col("level") == "meter", pl.col("period") == "15min")
        w3 = store.write_rollups(conn, db.project, rows.clear(), computed_at=T0 + HOUR, dirty=gone)
        assert w3 == store.Written(0, gone.height)
        assert store.load_rollups(conn, db.project, window).height == updated.height - gone.height
        with pytest.raises(store.StoreError, match="other projects"):
            store.write_rollups(
                conn, db.project, full.with_columns(project=pl.lit("P2")), computed_at=T0
            )


def findings_frame(spans: list[tuple[str, str, float, float, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subject": [s for s, *_ in spans],
            "rule": [r for _, r, *_ in spans],
            "kind": ["leak" if r.startswith("leak") else "stuck" for _, r, *_ in spans],
            "start": [T0 + a * HOUR for _, _, a, _, _ in spans],
            "end": [T0 + b * HOUR for _, _, _, b, _ in spans],
            "severity": [sev for *_, sev in spans],
            "evidence": [
                evidence({"night_min_m3h": 0.031 * (i + 1), "nights": [1, 2], "rule": r})
                for i, (_, r, *_) in enumerate(spans)
            ],
            "lead_time_days": [None if i % 2 else 12.5 for i in range(len(spans))],
        },
        schema=FINDINGS_SCHEMA,
    )


def test_findings_round_trip_and_rule_scoped_replacement(db: Store) -> None:
    found = findings_frame(
        [("W-1", "leak.night_minimum", 0, 4, "warning"),
         ("W-1", "leak.continuous_flow", 1, 5, "critical"),
         ("E-SUB", "stuck.flat_register", 0, 2, "info")]
    )  # fmt: skip
    window = (T0, T0 + dt.timedelta(days=1))
    with connect(db) as conn:
        w = store.write_findings(conn, db.project, found, computed_at=T0, window=window)
        assert w == store.Written(3, 0)
        assert store.load_findings(conn, db.project, window).equals(
            found.sort("subject", "rule", "start")
        )
        assert store.write_findings(conn, db.project, found, computed_at=T0, window=window) == (
            store.Written(0, 0)
        )
        # The leak job ran again and found nothing: its findings go, the stuck one stays.
        leak_rules = ["leak.night_minimum", "leak.continuous_flow"]
        w2 = store.write_findings(
            conn, db.project, found.clear(), computed_at=T0, window=window, rules=leak_rules
        )
        assert w2 == store.Written(0, 2)
        left = store.load_findings(conn, db.project, window)
        assert left.get_column("rule").to_list() == ["stuck.flat_register"]


def test_a_finding_whose_start_moves_replaces_its_stale_row(db: Store) -> None:
    # A condition older than the job's lookback is seen from the lookback's first reading:
    # tick by tick its start moves forward. The row with the old start must not pile up.
    first = findings_frame([("E-SUB", "comm_loss.silence", 0, 6, "critical")])
    moved = findings_frame([("E-SUB", "comm_loss.silence", 0.25, 6.25, "critical")])
    with connect(db) as conn:
        store.write_findings(conn, db.project, first, computed_at=T0, window=(T0, T0 + 6 * HOUR))
        window = (T0 + 6 * HOUR, T0 + 6.25 * HOUR)  # the next tick: only its own window
        w = store.write_findings(
            conn, db.project, moved, computed_at=T0, window=window, rules=["comm_loss.silence"]
        )
        assert w == store.Written(1, 1)
        left = store.load_findings(conn, db.project, (T0, T0 + dt.timedelta(days=1)))
        assert left.select("start", "end").rows() == [(T0 + 0.25 * HOUR, T0 + 6.25 * HOUR)]


# --- episodes, the outbox and the watermark ------------------------------------------------------

PARAMS = EpisodeParams(
    min_duration=15 * dt.timedelta(minutes=1), clear_after=HOUR, cooldown=2 * HOUR,
    escalate_after=None, flap_count=3, flap_window=dt.timedelta(days=1), flap_hold=4 * HOUR,
)  # fmt: skip


def events_table(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id::text, episode_id::text, event::text, occurred_at, subject, rule,"
        " severity::text, payload, consumed_at FROM alarm_events ORDER BY occurred_at, id"
    ).fetchall()


def test_episode_ticks_write_state_outbox_and_watermark_together(db: Store) -> None:
    state = pl.DataFrame(schema=EPISODES_SCHEMA)
    ticks = [
        # leak opens (and escalates); a stuck blip stays pending
        (findings_frame([("W-1", "leak.continuous_flow", 0, 1, "warning"),
                         ("W-1", "leak.continuous_flow", 1, 2, "critical"),
                         ("E-SUB", "stuck.flat_register", 1.9, 2, "info")]), 2.0),
        # nothing: the leak closes at 3 h, the blip is dropped
        (findings_frame([]), 4.0),
        # the leak comes back within the cooldown (reopened); later a new episode would begin
        (findings_frame([("W-1", "leak.continuous_flow", 4.5, 5, "warning")]), 5.0),
        # long after the cooldown: closes at 6 h, a new episode for the same key opens
        (findings_frame([("W-1", "leak.continuous_flow", 9, 10, "warning")]), 10.0),
    ]  # fmt: skip
    all_events = []
    with connect(db) as conn:
        for i, (found, hour) in enumerate(ticks):
            now = T0 + hour * HOUR
            loaded = store.load_episodes(conn, db.project, closed_since=now - PARAMS.cooldown)
            assert loaded.equals(state.filter(
                (pl.col("state") != "closed") | (pl.col("closed_at") >= now - PARAMS.cooldown)
            ))  # fmt: skip
            step = advance(loaded, found, now, PARAMS)
            mark = store.Watermark("episodes", now, now)
            written = store.write_episode_step(conn, db.project, step, now=now, watermark=mark)
            assert written.events == step.events.height
            again = store.write_episode_step(conn, db.project, step, now=now, watermark=mark)
            assert (again.events, again.episodes) == (0, 0), f"tick {i}: a re-write added rows"
            state = carry(state, step)
            all_events.append(step.events)
            assert store.load_watermark(conn, db.project, "episodes") == mark
        stored = events_table(conn)
        episodes = conn.execute(
            "SELECT subject, rule, state::text, reopen_count FROM alarm_episodes ORDER BY opened_at"
        ).fetchall()
    events = pl.concat(all_events)
    assert [(r[2], r[4]) for r in stored] == [
        ("opened", "W-1"), ("escalated", "W-1"), ("closed", "W-1"), ("reopened", "W-1"),
        ("closed", "W-1"), ("opened", "W-1"),
    ]  # fmt: skip
    assert [r[0] for r in stored] == events.sort("occurred_at", "event_id")["event_id"].to_list()
    assert all(r[8] is None for r in stored)  # unconsumed: the work-order module's to take
    payload = stored[0][7]
    assert payload["reason"] == "min_duration"
    assert payload["evidence"]["rule"] == ("leak.continuous_flow")
    # The dropped blip left nothing; the leak's two episodes are both there.
    assert episodes == [
        ("W-1", "leak.continuous_flow", "closed", 1),
        ("W-1", "leak.continuous_flow", "open", 0),
    ]


def test_one_open_episode_per_subject_and_rule(db: Store) -> None:
    found = findings_frame([("W-1", "leak.continuous_flow", 0, 1, "warning")])
    step = advance(pl.DataFrame(schema=EPISODES_SCHEMA), found, T0 + HOUR, PARAMS)
    with connect(db) as conn:
        store.write_episode_step(conn, db.project, step, now=T0 + HOUR)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO alarm_episodes (id, project_id, subject, rule, kind, state,"
                " opened_at, last_seen_at, severity, peak_severity, occurrences, evidence,"
                " updated_at) VALUES (gen_random_uuid(), %s, 'W-1', 'leak.continuous_flow',"
                " 'leak', 'open', %s, %s, 'info', 'info', 1, '{}', now())",
                (db.project, T0 + 3 * HOUR, T0 + 3 * HOUR),
            )
        # Closed ones do not count: any number may exist beside the open one.
        conn.execute("UPDATE alarm_episodes SET state = 'closed', closed_at = %s", (T0 + 2 * HOUR,))
        conn.execute(
            "INSERT INTO alarm_episodes (id, project_id, subject, rule, kind, state,"
            " opened_at, last_seen_at, severity, peak_severity, occurrences, evidence,"
            " updated_at) VALUES (gen_random_uuid(), %s, 'W-1', 'leak.continuous_flow',"
            " 'leak', 'open', %s, %s, 'info', 'info', 1, '{}', now())",
            (db.project, T0 + 3 * HOUR, T0 + 3 * HOUR),
        )


def test_a_failing_tick_leaves_no_event_and_no_watermark(db: Store) -> None:
    found = findings_frame([("W-1", "leak.continuous_flow", 0, 1, "warning")])
    step = advance(pl.DataFrame(schema=EPISODES_SCHEMA), found, T0 + HOUR, PARAMS)
    mark = store.Watermark("episodes", T0 + HOUR, T0 + HOUR)
    broken = step.events.with_columns(payload=pl.lit("{not json"))
    with connect(db) as conn:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            store.write_episode_step(
                conn, db.project, type(step)(step.episodes, broken), now=T0 + HOUR,
                watermark=mark,
            )  # fmt: skip
        assert events_table(conn) == []
        assert conn.execute("SELECT count(*) FROM alarm_episodes").fetchone() == (0,)
        assert store.load_watermark(conn, db.project, "episodes") is None


def test_staging_is_one_fixed_width_copy() -> None:
    """The binary COPY rows are what PostgreSQL's format says: field count, then per field a
    length word and the value (big-endian), nulls as a flag column."""
    df = pl.DataFrame({"a": [1, 2], "t": ["x", None], "f": [0.5, None]})
    cols = store._stage_columns(df, {"a": "int8", "t": "text?", "f": "float8?"})
    data = store._copy_data(cols, df.height)
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00")
    assert data.endswith(b"\xff\xff")
    body = data[19:-2]
    per_row = 2 + sum(4 + np.dtype(store._PG_TYPES[c.pg]).itemsize for c in cols)
    assert len(body) == 2 * per_row
    assert int.from_bytes(body[:2], "big") == len(cols)
    assert cols[1].dictionary == ["x"]


# --- a simulated estate, through the store and the whole pass ------------------------------------


def seed_estate(url: str, meters: pl.DataFrame, readings: pl.DataFrame) -> int:
    """The simulator's estate as the store holds it: project, buildings, meters with their
    installation ledger (a replacement's old and new device), and every reading."""
    (project_code,) = meters.get_column("project").unique().to_list()
    (zone,) = meters.get_column("time_zone").unique().to_list()
    start = readings.get_column("ts").min()
    assert isinstance(start, dt.datetime)
    with psycopg.connect(url, autocommit=True) as conn:
        org = one(conn, "INSERT INTO organisations (code, name) VALUES ('sim', 'Sim') RETURNING id")
        pid = one(
            conn,
            "INSERT INTO projects (organisation_id, code, name, time_zone) VALUES (%s, %s, %s, %s)"
            " RETURNING id",
            (org, project_code, project_code, zone),
        )
        buildings = {
            code: one(
                conn,
                "INSERT INTO buildings (project_id, code, name) VALUES (%s, %s, %s) RETURNING id",
                (pid, code, code),
            )
            for code in meters.get_column("building").drop_nulls().unique().sort()
        }
        ids: dict[str, int] = {}
        for m in meters.iter_rows(named=True):
            moduli = {c["modulus"] for c in m["counters"] if c["modulus"] is not None}
            assert len(moduli) <= 1  # the store keeps one register modulus per meter
            ids[m["meter_id"]] = one(
                conn,
                "INSERT INTO meters (project_id, building_id, code, kind, profile, load, channels,"
                " register_modulus) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (pid, buildings.get(m["building"]), m["meter_id"], m["kind"], m["profile"],
                 m["load"], m["channels"], next(iter(moduli), None)),
            )  # fmt: skip
            openings = {c["channel"]: c["opening"] for c in m["counters"]}
            seams = m["replacements"]
            serials = [str(m["serial"])]
            if seams:
                serials = [str(seams[0]["old_serial"]), str(seams[0]["new_serial"])]
            installed = [start - dt.timedelta(days=1), *(seams[0]["at"] for _ in seams[:1])]
            closings = {r["channel"]: r["closing"] for r in seams if r["closing"] is not None}
            news = {r["channel"]: r["opening"] for r in seams}
            for i, serial in enumerate(serials):
                last = i == len(serials) - 1
                conn.execute(
                    "INSERT INTO meter_installations (meter_id, serial, installed_at, removed_at,"
                    " opening_readings, closing_readings) VALUES (%s, %s, %s, %s, %s, %s)",
                    (ids[m["meter_id"]], serial, installed[i], None if last else installed[i + 1],
                     json.dumps(openings if i == 0 else news),
                     json.dumps({} if last else closings)),
                )  # fmt: skip
        rows = (
            readings.select(
                pl.col("meter_id").cast(pl.String).replace_strict(ids, return_dtype=pl.Int64),
                pl.col("channel").cast(pl.String),
                pl.col("ts").dt.to_string("%Y-%m-%d %H:%M:%S%.6f+00"),
                pl.col("value").fill_nan(None),
                pl.col("quality").cast(pl.String),
            )
            .write_csv(include_header=False)
            .encode()
        )
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY readings (meter_id, channel, ts, value, quality) FROM STDIN (FORMAT csv)"
            ) as copy,
        ):
            copy.write(rows)
    return pid


@pytest.mark.slow
def test_a_simulated_estate_gives_the_same_pass_from_the_store(db: Store) -> None:
    """Three days of the shipped residential estate: the readings and meters the store hands
    out give the same consumption, events and findings as the simulator's own files; every
    result goes in and comes back equal; the findings' episodes reach the outbox."""
    from analytics.pipeline import run_pass  # noqa: PLC0415 - heavy, this test only
    from simulators.history import History  # noqa: PLC0415
    from simulators.scenario import load_scenario, plan  # noqa: PLC0415

    root = Path(__file__).resolve().parents[2]
    run = History(plan(load_scenario(root / "scenarios" / "residential-small.toml")), 3, 900)
    sim_readings, sim_meters = run.collect(), run.meters_frame()
    pid = seed_estate(db.url, sim_meters, sim_readings)
    start, end = sim_readings["ts"].min(), sim_readings["ts"].max()
    assert isinstance(start, dt.datetime)
    assert isinstance(end, dt.datetime)
    window = (start, end + Q)
    with connect(db) as conn:
        readings = store.load_readings(conn, pid, window)
        meters = store.load_meters(conn, pid)
        key = ["meter_id", "channel", "ts"]
        expected = sim_readings.select(list(READINGS_SCHEMA)).cast(READINGS_SCHEMA)
        assert readings.sort(key).equals(expected.sort(key))
        assert meters.height == sim_meters.height

        ours = run_pass(readings, meters)
        theirs = run_pass(expected, sim_meters)
        assert ours.intervals.equals(theirs.intervals)
        assert ours.events.equals(theirs.events)
        assert ours.findings.equals(theirs.findings)
        assert ours.rollups.equals(theirs.rollups)
        assert ours.findings.height > 0

        at = end + HOUR
        store.write_consumption(conn, pid, ours.intervals, computed_at=at, window=window)
        store.write_counter_events(conn, pid, ours.events, computed_at=at, window=window)
        store.write_rollups(conn, pid, ours.rollups, computed_at=at)
        store.write_findings(conn, pid, ours.findings, computed_at=at, window=window)
        assert store.load_consumption(conn, pid, window).equals(ours.intervals)
        assert store.load_counter_events(conn, pid, window).equals(ours.events)
        wide = (start - dt.timedelta(days=40), end + dt.timedelta(days=40))
        assert store.load_rollups(conn, pid, wide).equals(ours.rollups)
        sort = ["subject", "rule", "start"]
        assert store.load_findings(conn, pid, window).equals(ours.findings.sort(sort))

        step = advance(store.load_episodes(conn, pid, closed_since=start), ours.findings, at)
        written = store.write_episode_step(conn, pid, step, now=at)
        assert written.events == step.events.height > 0
        assert store.load_episodes(conn, pid, closed_since=start).equals(
            carry(pl.DataFrame(schema=EPISODES_SCHEMA), step)
        )
