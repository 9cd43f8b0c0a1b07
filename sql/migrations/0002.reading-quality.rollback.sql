-- Enum values cannot be dropped in PostgreSQL; the rollback restores the value rule only.
ALTER TABLE readings DROP CONSTRAINT IF EXISTS readings_value_present;
DELETE FROM readings WHERE value IS NULL;
ALTER TABLE readings ALTER COLUMN value SET NOT NULL;
