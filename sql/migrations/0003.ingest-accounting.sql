-- Ingest accounting: what each gateway boot has delivered, as merged sequence ranges (holes
-- between them are gaps still open), and dead letters with what a replay needs.
-- depends: 0002.reading-quality

CREATE TABLE gateway_seq_ranges (
    gateway_id  bigint NOT NULL REFERENCES gateways (id),
    boot_id     uuid NOT NULL,
    seq_lo      bigint NOT NULL,
    seq_hi      bigint NOT NULL,
    CHECK (seq_lo <= seq_hi),
    PRIMARY KEY (gateway_id, boot_id, seq_lo)
);

ALTER TABLE gateway_progress
    ADD COLUMN dead_lettered bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_skew_s double precision;

ALTER TABLE dead_letters
    ADD COLUMN scope text NOT NULL DEFAULT 'batch' CHECK (scope IN ('batch', 'reading')),
    ADD COLUMN payload_sha256 text,
    ADD COLUMN boot_id uuid,
    ADD COLUMN seq bigint,
    ADD COLUMN replayed_at timestamptz,
    ADD COLUMN replay_result text;
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason_code, received_at);
