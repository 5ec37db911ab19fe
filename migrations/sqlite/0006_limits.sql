-- Per-follower usage, one row per follower, locked while an admission decides: the current day (Asia/Shanghai,
-- days since 1970-01-01) and its count, the current minute (since the epoch) and its count, and jobs in flight.
CREATE TABLE follower_usage (
    channel      TEXT NOT NULL,
    account      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    day          INTEGER NOT NULL DEFAULT 0,
    day_count    INTEGER NOT NULL DEFAULT 0,
    minute       INTEGER NOT NULL DEFAULT 0,
    minute_count INTEGER NOT NULL DEFAULT 0,
    in_flight    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, account, user_id)
);

CREATE INDEX jobs_by_campaign ON jobs (campaign, created_at) WHERE campaign IS NOT NULL;

-- PostgreSQL decides the limits inside the admission statement itself: a message that asked for a job is stored as
-- `admitted` with both answers, and when no job came of it, `refusal_reply` is its answer and it counts as limited.
ALTER TABLE inbound_messages ADD COLUMN refusal_reply TEXT;
