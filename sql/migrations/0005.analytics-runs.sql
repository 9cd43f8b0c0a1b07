-- Scheduled analytics (analytics/jobs.py): how far each project's jobs have got, and a record
-- of every run, so several workers share the work without doing any window twice.
--
-- A job's cursor `done_until` says: every window before it is done, none after it. A worker
-- moves it only inside the transaction that writes the window's results, while holding the
-- advisory lock for (job kind, project); so the cursor, the results and the run record commit
-- together or not at all.
--
-- These cursors are the schedule's (which windows a job has done), apart from 0004's
-- `analytics_watermarks`, which say how far each stream's data has been processed and which
-- late readings to look for; a tick moves both in the same transaction.
-- depends: 0004.analytics

CREATE TABLE analytics_job_cursors (
    kind        text NOT NULL CHECK (kind IN ('intraday', 'daily')),
    project_id  bigint NOT NULL REFERENCES projects (id),
    done_until  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, project_id)
);

CREATE TABLE analytics_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('intraday', 'daily')),
    project_id    bigint NOT NULL REFERENCES projects (id),
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    units         integer NOT NULL CHECK (units > 0),  -- ticks (intraday) or days (daily)
    status        text NOT NULL CHECK (status IN ('done', 'failed')),
    worker        text NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail        jsonb NOT NULL DEFAULT '{}',  -- rows written per table, or the error
    CHECK (window_end > window_start)
);
-- Belt to the advisory lock's braces: a window is done at most once.
CREATE UNIQUE INDEX analytics_runs_done_once
    ON analytics_runs (kind, project_id, window_start) WHERE status = 'done';
CREATE INDEX analytics_runs_recent_idx ON analytics_runs (project_id, finished_at);
