-- Align stored qualities with the wire contract (contracts/wire.py `Quality`) and let a
-- reading record that a meter did not answer: value is null exactly for `comm_error` and
-- `nan_sentinel`, so a gap is kept as a fact instead of being dropped or zero-filled.
-- depends: 0001.initial

ALTER TYPE reading_quality ADD VALUE IF NOT EXISTS 'nan_sentinel';
ALTER TYPE reading_quality ADD VALUE IF NOT EXISTS 'comm_error';
ALTER TYPE reading_quality ADD VALUE IF NOT EXISTS 'clock_suspect';
ALTER TYPE reading_quality ADD VALUE IF NOT EXISTS 'out_of_range';

ALTER TABLE readings ALTER COLUMN value DROP NOT NULL;
ALTER TABLE readings ADD CONSTRAINT readings_value_present
    CHECK (value IS NOT NULL OR quality::text IN ('comm_error', 'nan_sentinel'));
