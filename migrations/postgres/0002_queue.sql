-- What a worker needs to paint a job, its lease, and its timeline.
ALTER TABLE jobs ADD COLUMN negative_prompt TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN width INTEGER NOT NULL DEFAULT 512;
ALTER TABLE jobs ADD COLUMN height INTEGER NOT NULL DEFAULT 512;
ALTER TABLE jobs ADD COLUMN steps INTEGER NOT NULL DEFAULT 20;
ALTER TABLE jobs ADD COLUMN scheduler TEXT NOT NULL DEFAULT 'euler';
ALTER TABLE jobs ADD COLUMN guidance REAL NOT NULL DEFAULT 7.5;
ALTER TABLE jobs ADD COLUMN seed BIGINT;
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN leased_by TEXT;
ALTER TABLE jobs ADD COLUMN leased_until TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN started_at TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN finished_at TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN delivered_at TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN error TEXT;

CREATE INDEX jobs_running_by_lease ON jobs (leased_until) WHERE status = 'running';

-- The finished, labelled JPEG of a job, so any node can deliver it.
CREATE TABLE job_images (
    job_id     BIGINT PRIMARY KEY REFERENCES jobs (id),
    jpeg       BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
