-- Daily usage outlives the rows it is counted from: before the janitor prunes a day's messages and jobs
-- (retention.history_days), it copies that day's usage here, and usage_daily reads both.
CREATE TABLE usage_rollup (
    day       TEXT NOT NULL,
    campaign  TEXT NOT NULL,
    channel   TEXT NOT NULL,
    account   TEXT NOT NULL,
    requests  INTEGER NOT NULL,
    admitted  INTEGER NOT NULL,
    limited   INTEGER NOT NULL,
    blocked   INTEGER NOT NULL,
    painted   INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    failed    INTEGER NOT NULL,
    flagged   INTEGER NOT NULL,
    p50_secs  REAL,
    p95_secs  REAL,
    PRIMARY KEY (day, campaign, channel, account)
);

DROP VIEW usage_daily;
CREATE VIEW usage_live AS
SELECT u.*,
       (SELECT w.secs FROM usage_waits w WHERE w.day = u.day AND w.campaign = u.campaign AND w.channel = u.channel
          AND w.account = u.account AND w.rank = (w.total * 50 + 99) / 100) AS p50_secs,
       (SELECT w.secs FROM usage_waits w WHERE w.day = u.day AND w.campaign = u.campaign AND w.channel = u.channel
          AND w.account = u.account AND w.rank = (w.total * 95 + 99) / 100) AS p95_secs
FROM (
    SELECT date(m.received_at, '+8 hours') AS day,
           coalesce(m.campaign, '') AS campaign,
           m.channel,
           m.account,
           sum(m.decision <> 'answered') AS requests,
           count(j.id) AS admitted,
           sum(m.decision IN ('limited', 'busy') OR (m.decision = 'admitted' AND j.id IS NULL)) AS limited,
           sum(m.decision = 'blocked') AS blocked,
           sum(coalesce(j.status IN ('done', 'delivered'), 0)) AS painted,
           sum(coalesce(j.status = 'delivered', 0)) AS delivered,
           sum(coalesce(j.status = 'failed', 0)) AS failed,
           sum(coalesce(j.fail_reason = 'unsafe', 0)) AS flagged
    FROM inbound_messages m LEFT JOIN jobs j ON j.inbound_id = m.id
    GROUP BY 1, 2, 3, 4
) u;
CREATE VIEW usage_daily AS
SELECT * FROM usage_live WHERE day NOT IN (SELECT day FROM usage_rollup)
UNION ALL
SELECT * FROM usage_rollup;

-- Permanent material uploaded for a passive reply, deleted once due: a row, so a restart before the deletion
-- does not forget it.
CREATE TABLE material_cleanup (
    channel  TEXT NOT NULL,
    account  TEXT NOT NULL,
    media_id TEXT NOT NULL,
    due_at   TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, account, media_id)
);
CREATE INDEX material_cleanup_due ON material_cleanup (due_at);
