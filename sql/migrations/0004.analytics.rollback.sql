-- One table per DROP: TimescaleDB refuses to drop a hypertable along with other objects.
DROP TABLE IF EXISTS alarm_events;
DROP TABLE IF EXISTS alarm_episodes;
DROP TABLE IF EXISTS findings;
DROP TABLE IF EXISTS analytics_watermarks;
DROP TABLE IF EXISTS rollups;
DROP TABLE IF EXISTS counter_events;
DROP TABLE IF EXISTS consumption_intervals;
DROP INDEX IF EXISTS readings_received_brin;
DROP TYPE IF EXISTS alarm_event_kind, alarm_episode_state, alarm_severity, rollup_period,
    rollup_level, counter_event, consumption_quality;
ALTER TABLE meter_installations
    DROP COLUMN IF EXISTS multiplier,
    DROP COLUMN IF EXISTS closing_readings,
    DROP COLUMN IF EXISTS opening_readings;
DROP INDEX IF EXISTS meters_parent_idx;
ALTER TABLE meters
    DROP CONSTRAINT IF EXISTS meters_parent_not_self,
    DROP COLUMN IF EXISTS load,
    DROP COLUMN IF EXISTS parent_meter_id;
