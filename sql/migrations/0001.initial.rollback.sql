DROP TABLE IF EXISTS audit_log, memberships, users, dead_letters, gateway_progress, readings,
    meter_installations, meters, gateways, units, buildings, projects, organisations CASCADE;
DROP TYPE IF EXISTS member_role, member_tier, reading_source, reading_quality, meter_kind;
DROP FUNCTION IF EXISTS mw_is_valid_time_zone(text);
