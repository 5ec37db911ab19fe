-- Daily usage outlives the rows it is counted from: before the janitor prunes a day's messages and jobs
-- (retention.history_days), it copies that day's usage here, and usage_daily reads both.
CREATE TABLE usage_rollup (
    day       DATE NOT NULL,
    campaign  TEXT NOT NULL,
    channel   TEXT NOT NULL,
    account   TEXT NOT NULL,
    requests  BIGINT NOT NULL,
    admitted  BIGINT NOT NULL,
    limited   BIGINT NOT NULL,
    blocked   BIGINT NOT NULL,
    painted   BIGINT NOT NULL,
    delivered BIGINT NOT NULL,
    failed    BIGINT NOT NULL,
    flagged   BIGINT NOT NULL,
    p50_secs  DOUBLE PRECISION,
    p95_secs  DOUBLE PRECISION,
    PRIMARY KEY (day, campaign, channel, account)
);

ALTER VIEW usage_daily RENAME TO usage_live;
CREATE VIEW usage_daily AS
SELECT * FROM usage_live WHERE day NOT IN (SELECT day FROM usage_rollup)
UNION ALL
SELECT * FROM usage_rollup;

-- Permanent material uploaded for a passive reply, deleted once due: a row, so a node that dies before the
-- deletion leaves it to another.
CREATE TABLE material_cleanup (
    channel  TEXT NOT NULL,
    account  TEXT NOT NULL,
    media_id TEXT NOT NULL,
    due_at   TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, account, media_id)
);
CREATE INDEX material_cleanup_due ON material_cleanup (due_at);
