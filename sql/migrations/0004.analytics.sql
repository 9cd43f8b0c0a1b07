-- Analytics results: interval consumption, counter events, rollups, findings, alarm episodes and
-- the alarm-event outbox the work-order module consumes, plus the watermarks that make the jobs
-- incremental. Everything here is derived from `readings` and the meter ledger and can be
-- recomputed; the jobs write it with idempotent upserts (analytics/store.py).
--
-- Like `readings`, the two per-interval tables become TimescaleDB hypertables when the extension
-- is installed in this database, and plain BRIN-indexed tables otherwise.
-- depends: 0003.ingest-accounting

-- The main meter a sub-meter hangs under (main vs sum of sub-meters), and what a meter feeds
-- (its load: residential, office, pump, lift, hvac, ...), by which detectors pick peers and
-- equipment rules.
ALTER TABLE meters
    ADD COLUMN parent_meter_id bigint REFERENCES meters (id),
    ADD COLUMN load text,
    ADD CONSTRAINT meters_parent_not_self CHECK (parent_meter_id <> id);
CREATE INDEX meters_parent_idx ON meters (parent_meter_id) WHERE parent_meter_id IS NOT NULL;

-- A multi-register device (import and export energy, reactive energy) has one opening and one
-- closing reading per counter channel: {"energy_import_kwh": 1234.5, ...}. The scalar columns of
-- 0001 stay for single-register devices.
ALTER TABLE meter_installations
    ADD COLUMN opening_readings jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN closing_readings jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN multiplier numeric NOT NULL DEFAULT 1 CHECK (multiplier > 0);

CREATE TYPE consumption_quality AS ENUM ('measured', 'estimated', 'backfilled', 'manual');
CREATE TYPE counter_event AS ENUM (
    'rollover', 'reset', 'replacement', 'bad_read', 'gap', 'unexplained_drop'
);
CREATE TYPE rollup_level AS ENUM ('meter', 'building', 'project');
CREATE TYPE rollup_period AS ENUM ('15min', 'hour', 'day', 'month');
CREATE TYPE alarm_severity AS ENUM ('info', 'warning', 'critical');
CREATE TYPE alarm_episode_state AS ENUM ('pending', 'open', 'closed');
CREATE TYPE alarm_event_kind AS ENUM ('opened', 'escalated', 'closed', 'reopened');

-- Consumption per (meter, channel, interval), derived from the counters. `consumption` is null
-- exactly when the interval has no trustworthy value (an unexplained drop), never negative.
-- meter_id carries no foreign key, as in `readings`: the writer resolves meter codes by joining
-- `meters`, so an unknown meter cannot be written, and a per-row probe buys nothing.
CREATE TABLE consumption_intervals (
    meter_id     bigint NOT NULL,
    channel      text NOT NULL,
    start_at     timestamptz NOT NULL,
    end_at       timestamptz NOT NULL,
    consumption  double precision CHECK (consumption >= 0),
    quality      consumption_quality,
    computed_at  timestamptz NOT NULL,
    CHECK (end_at > start_at),
    CHECK ((consumption IS NULL) = (quality IS NULL)),
    CONSTRAINT consumption_intervals_key UNIQUE (meter_id, channel, start_at)
);

-- Discontinuities consumption told apart (rollover, reset, replacement, bad read, gap,
-- unexplained drop), with the detail that explains each.
CREATE TABLE counter_events (
    meter_id     bigint NOT NULL,
    channel      text NOT NULL,
    ts           timestamptz NOT NULL,
    event        counter_event NOT NULL,
    detail       text NOT NULL DEFAULT '',
    computed_at  timestamptz NOT NULL,
    CONSTRAINT counter_events_key UNIQUE (meter_id, channel, ts, event)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        -- Month-long chunks: one row per 15 minutes per counter stream is a tenth of the
        -- readings' volume.
        PERFORM create_hypertable('consumption_intervals', by_range('start_at', INTERVAL '30 days'));
        PERFORM create_hypertable('counter_events', by_range('ts', INTERVAL '90 days'));
    ELSE
        CREATE INDEX consumption_intervals_start_brin ON consumption_intervals
            USING brin (start_at) WITH (pages_per_range = 32);
        CREATE INDEX counter_events_ts_idx ON counter_events (ts);
    END IF;
END;
$$;

-- 15-minute, hourly, local daily and local monthly consumption per meter, building and project
-- (analytics/rollups.py ROLLUP_SCHEMA). `key` is the meter code, building code or project code;
-- building codes are unique within a project only, hence project_id in the key. No foreign key
-- on project_id: the writer takes the id from `projects`, and the per-row check was half the
-- cost of writing a project's rollups (3 of 6.5 s for 255k rows, measured).
CREATE TABLE rollups (
    project_id       bigint NOT NULL,
    level            rollup_level NOT NULL,
    key              text NOT NULL,
    channel          text NOT NULL,
    period           rollup_period NOT NULL,
    bucket_start     timestamptz NOT NULL,
    bucket_end       timestamptz NOT NULL,
    consumption      double precision NOT NULL CHECK (consumption >= 0),
    estimated        double precision NOT NULL CHECK (estimated >= 0),
    estimated_share  double precision CHECK (estimated_share >= 0),
    quality          consumption_quality NOT NULL,
    meters           integer NOT NULL CHECK (meters >= 0),
    coverage         double precision,
    covered_us       bigint NOT NULL,
    computed_at      timestamptz NOT NULL,
    CHECK (bucket_end > bucket_start),
    CONSTRAINT rollups_key UNIQUE (project_id, level, period, key, channel, bucket_start)
);
CREATE INDEX rollups_bucket_idx ON rollups (project_id, period, bucket_start);

-- How far each job has got, per project and stream ('' = the whole project; a job may keep
-- finer streams, e.g. 'meter-code/channel'). `watermark` is the data time processed up to;
-- `received_upto` the ingest time up to which readings were seen, so rows that arrive later
-- (readings.received_at > received_upto) with ts before the watermark are found as late data.
CREATE TABLE analytics_watermarks (
    project_id     bigint NOT NULL REFERENCES projects (id),
    job            text NOT NULL,
    stream         text NOT NULL DEFAULT '',
    watermark      timestamptz NOT NULL,
    received_upto  timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (project_id, job, stream)
);
-- Finding late rows by ingest time. BRIN: received_at grows with insertion order.
CREATE INDEX readings_received_brin ON readings USING brin (received_at) WITH (pages_per_range = 32);

-- What the detectors found, each with the evidence that explains it (values, baseline, rule
-- parameters). `subject` is a meter code or an asset id.
CREATE TABLE findings (
    project_id      bigint NOT NULL REFERENCES projects (id),
    subject         text NOT NULL,
    rule            text NOT NULL,
    kind            text NOT NULL,
    start_at        timestamptz NOT NULL,
    end_at          timestamptz NOT NULL,
    severity        alarm_severity NOT NULL,
    evidence        jsonb NOT NULL,
    lead_time_days  double precision,
    computed_at     timestamptz NOT NULL,
    CHECK (end_at >= start_at),
    CONSTRAINT findings_key UNIQUE (project_id, subject, rule, start_at)
);
CREATE INDEX findings_time_idx ON findings (project_id, end_at);

-- Alarm episodes (analytics/episodes.py): at most one pending or open episode per (subject,
-- rule) in a project; a recurrence extends or reopens it. Ids are content-derived (uuid5 of
-- subject, rule and the instant the condition began).
CREATE TABLE alarm_episodes (
    id              uuid PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id),
    subject         text NOT NULL,
    rule            text NOT NULL,
    kind            text NOT NULL,
    state           alarm_episode_state NOT NULL,
    opened_at       timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL,
    closed_at       timestamptz,
    severity        alarm_severity NOT NULL,
    peak_severity   alarm_severity NOT NULL,
    occurrences     bigint NOT NULL CHECK (occurrences > 0),
    reopen_count    integer NOT NULL DEFAULT 0,
    flaps           integer NOT NULL DEFAULT 0,
    flap_since      timestamptz,
    flapping        boolean NOT NULL DEFAULT false,
    overdue         boolean NOT NULL DEFAULT false,
    evidence        jsonb NOT NULL,
    lead_time_days  double precision,
    updated_at      timestamptz NOT NULL,
    CHECK (last_seen_at >= opened_at),
    CHECK ((state = 'closed') = (closed_at IS NOT NULL))
);
CREATE UNIQUE INDEX alarm_episodes_one_open
    ON alarm_episodes (project_id, subject, rule) WHERE state IN ('pending', 'open');
CREATE INDEX alarm_episodes_recent_idx ON alarm_episodes (project_id, closed_at);

-- The outbox of alarm events: each opened, escalated, closed and reopened episode, written in
-- the transaction that changes the episode. The work-order module reads unconsumed rows and
-- sets consumed_at; ids are content-derived, so a re-run tick inserts nothing twice.
CREATE TABLE alarm_events (
    id           uuid PRIMARY KEY,
    episode_id   uuid NOT NULL REFERENCES alarm_episodes (id),
    event        alarm_event_kind NOT NULL,
    occurred_at  timestamptz NOT NULL,
    project_id   bigint NOT NULL REFERENCES projects (id),
    subject      text NOT NULL,
    rule         text NOT NULL,
    kind         text NOT NULL,
    severity     alarm_severity NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    consumed_at  timestamptz
);
CREATE INDEX alarm_events_unconsumed_idx ON alarm_events (occurred_at, id)
    WHERE consumed_at IS NULL;
CREATE INDEX alarm_events_episode_idx ON alarm_events (episode_id, occurred_at);
