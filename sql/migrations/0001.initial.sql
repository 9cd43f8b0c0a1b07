-- meterward initial schema: the organisation, its projects and meters, readings, and access.
--
-- One migration for both stores. Whether `readings` becomes a TimescaleDB hypertable is decided
-- here, at migration time, by whether the `timescaledb` extension is installed in this database
-- (the migration runner installs it first when the server has it and settings allow).
-- depends:

CREATE FUNCTION mw_is_valid_time_zone(tz text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM now() AT TIME ZONE tz;
    RETURN tz <> '' AND tz !~* '^(utc|gmt)?[+-]';  -- IANA names only, not POSIX offsets
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;
END;
$$;

CREATE TABLE organisations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code        text NOT NULL UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id  bigint NOT NULL REFERENCES organisations (id),
    code             text NOT NULL UNIQUE,
    name             text NOT NULL,
    kind             text NOT NULL DEFAULT 'residential'
                     CHECK (kind IN ('residential', 'office', 'commercial', 'mixed', 'industrial')),
    time_zone        text NOT NULL DEFAULT 'Asia/Shanghai' CHECK (mw_is_valid_time_zone(time_zone)),
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE buildings (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id),
    code        text NOT NULL,
    name        text NOT NULL,
    UNIQUE (project_id, code)
);

CREATE TABLE units (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id   bigint NOT NULL REFERENCES projects (id),
    building_id  bigint REFERENCES buildings (id),
    code         text NOT NULL,
    floor        integer,
    area_m2      numeric(10, 2) CHECK (area_m2 IS NULL OR area_m2 > 0),
    UNIQUE (project_id, code)
);

CREATE TABLE gateways (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id    bigint NOT NULL REFERENCES projects (id),
    code          text NOT NULL UNIQUE,   -- the id in MQTT topics, bound to the broker credentials
    name          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz
);

CREATE TYPE meter_kind AS ENUM ('electricity', 'water', 'heat', 'gas', 'weather');

CREATE TABLE meters (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id        bigint NOT NULL REFERENCES projects (id),
    building_id       bigint REFERENCES buildings (id),
    unit_id           bigint REFERENCES units (id),
    gateway_id        bigint REFERENCES gateways (id),
    code              text NOT NULL UNIQUE,   -- the meter id on the wire
    name              text NOT NULL DEFAULT '',
    kind              meter_kind NOT NULL,
    profile           text NOT NULL,          -- device profile (register map), e.g. eastron-sdm630
    channels          text[] NOT NULL DEFAULT '{}',
    -- Applied to raw register values: CT and PT ratios for transformer-fed electricity meters,
    -- a pulse/scale multiplier for everything else. The installation ledger keeps the history.
    multiplier        numeric NOT NULL DEFAULT 1 CHECK (multiplier > 0),
    ct_ratio          numeric NOT NULL DEFAULT 1 CHECK (ct_ratio > 0),
    pt_ratio          numeric NOT NULL DEFAULT 1 CHECK (pt_ratio > 0),
    register_modulus  numeric CHECK (register_modulus IS NULL OR register_modulus > 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    retired_at        timestamptz
);
CREATE INDEX meters_project_idx ON meters (project_id);

-- Which physical device stood behind a meter position when, with the readings needed to join
-- counters across a replacement (closing of the old, opening of the new).
CREATE TABLE meter_installations (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id          bigint NOT NULL REFERENCES meters (id),
    serial            text NOT NULL,
    installed_at      timestamptz NOT NULL,
    removed_at        timestamptz,
    opening_reading   double precision,
    closing_reading   double precision,
    ct_ratio          numeric NOT NULL DEFAULT 1 CHECK (ct_ratio > 0),
    pt_ratio          numeric NOT NULL DEFAULT 1 CHECK (pt_ratio > 0),
    register_modulus  numeric CHECK (register_modulus IS NULL OR register_modulus > 0),
    note              text NOT NULL DEFAULT '',
    CHECK (removed_at IS NULL OR removed_at > installed_at)
);
-- At most one device in place per meter position at a time.
CREATE UNIQUE INDEX meter_installations_current_idx
    ON meter_installations (meter_id) WHERE removed_at IS NULL;

CREATE TYPE reading_quality AS ENUM ('good', 'uncertain', 'bad');
CREATE TYPE reading_source AS ENUM ('live', 'backfill', 'estimated', 'manual');

-- Every reading exactly once. The idempotency key is (meter_id, channel, ts); the accounting
-- key (gateway_id, boot_id, seq) lets ingest detect gaps. meter_id has no foreign key on
-- purpose: ingest resolves meter codes against `meters` and dead-letters unknown ones, and a
-- per-row FK probe on the hottest insert path buys nothing on top of that.
CREATE TABLE readings (
    meter_id     bigint NOT NULL,
    channel      text NOT NULL,
    ts           timestamptz NOT NULL,
    value        double precision NOT NULL,
    quality      reading_quality NOT NULL DEFAULT 'good',
    source       reading_source NOT NULL DEFAULT 'live',
    gateway_id   bigint,
    boot_id      uuid,
    seq          bigint,
    received_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT readings_key UNIQUE (meter_id, channel, ts)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        -- Week-long chunks: ~35k rows per meter-channel at 15 min, a few GB per chunk at
        -- 10^5 meters, which keeps the working set in memory.
        PERFORM create_hypertable('readings', by_range('ts', INTERVAL '7 days'));
    ELSE
        -- Plain PostgreSQL: readings arrive roughly in time order, so a BRIN index serves
        -- time-range scans at a tiny fraction of a B-tree's size.
        CREATE INDEX readings_ts_brin ON readings USING brin (ts) WITH (pages_per_range = 32);
    END IF;
END;
$$;

-- What each gateway boot has delivered so far; written in the same transaction as its readings.
CREATE TABLE gateway_progress (
    gateway_id  bigint NOT NULL REFERENCES gateways (id),
    boot_id     uuid NOT NULL,
    upto_seq    bigint NOT NULL CHECK (upto_seq >= 0),
    readings    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, boot_id)
);

-- Payloads ingest could not accept, kept whole with the reason, never silently dropped.
CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text NOT NULL,
    gateway_code text,
    reason_code  text NOT NULL,
    detail       text NOT NULL DEFAULT '',
    payload      bytea NOT NULL
);
CREATE INDEX dead_letters_received_idx ON dead_letters (received_at);

CREATE TYPE member_tier AS ENUM ('hq', 'project', 'execution', 'owner');
CREATE TYPE member_role AS ENUM (
    'hq_admin', 'hq_analyst', 'project_manager', 'energy_manager', 'staff', 'owner'
);

-- Login identities only. Personal data (names, phones, ID numbers) lives apart, with its own
-- access rules, masking and retention; nothing personal is stored here.
CREATE TABLE users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username       text NOT NULL UNIQUE,
    password_hash  text,
    is_active      boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          bigint NOT NULL REFERENCES users (id),
    organisation_id  bigint NOT NULL REFERENCES organisations (id),
    tier             member_tier NOT NULL,
    role             member_role NOT NULL,
    project_id       bigint REFERENCES projects (id),
    unit_id          bigint REFERENCES units (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- The tier decides the role family and what the membership must be scoped to.
    CONSTRAINT memberships_role_fits_tier CHECK (
        (tier = 'hq' AND role IN ('hq_admin', 'hq_analyst') AND project_id IS NULL AND unit_id IS NULL)
        OR (tier = 'project' AND role IN ('project_manager', 'energy_manager')
            AND project_id IS NOT NULL AND unit_id IS NULL)
        OR (tier = 'execution' AND role = 'staff' AND project_id IS NOT NULL AND unit_id IS NULL)
        OR (tier = 'owner' AND role = 'owner' AND project_id IS NOT NULL AND unit_id IS NOT NULL)
    )
);
CREATE UNIQUE INDEX memberships_unique_idx
    ON memberships (user_id, role, COALESCE(project_id, 0), COALESCE(unit_id, 0));

CREATE TABLE audit_log (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor_user_id bigint REFERENCES users (id),
    action        text NOT NULL,
    object_type   text NOT NULL,
    object_id     text,
    project_id    bigint REFERENCES projects (id),
    detail        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
