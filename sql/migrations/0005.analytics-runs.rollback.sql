DROP TABLE IF EXISTS analytics_runs;
DROP TABLE IF EXISTS analytics_job_cursors;
