DROP INDEX IF EXISTS dead_letters_reason_idx;
ALTER TABLE dead_letters
    DROP COLUMN IF EXISTS scope, DROP COLUMN IF EXISTS payload_sha256,
    DROP COLUMN IF EXISTS boot_id, DROP COLUMN IF EXISTS seq,
    DROP COLUMN IF EXISTS replayed_at, DROP COLUMN IF EXISTS replay_result;
ALTER TABLE gateway_progress
    DROP COLUMN IF EXISTS dead_lettered,
    DROP COLUMN IF EXISTS last_skew_s;
DROP TABLE IF EXISTS gateway_seq_ranges;
