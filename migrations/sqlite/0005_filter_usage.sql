-- What huabi decided about each message (admitted, answered, blocked, invalid, outside_window), for which campaign,
-- and what matched.
ALTER TABLE inbound_messages ADD COLUMN decision TEXT NOT NULL DEFAULT 'answered';
ALTER TABLE inbound_messages ADD COLUMN campaign TEXT;
ALTER TABLE inbound_messages ADD COLUMN decision_detail TEXT;

-- Content filter entries added per deployment, on top of config/filter-words.txt.
CREATE TABLE filter_words (
    word     TEXT PRIMARY KEY,
    added_by TEXT NOT NULL DEFAULT 'admin',
    added_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Seconds from ack to delivery of each delivered job, ranked within its day, campaign and channel (for percentiles).
CREATE VIEW usage_waits AS
SELECT date(m.received_at, '+8 hours') AS day, coalesce(m.campaign, '') AS campaign, m.channel,
       (julianday(j.delivered_at) - julianday(j.created_at)) * 86400.0 AS secs,
       row_number() OVER (PARTITION BY date(m.received_at, '+8 hours'), coalesce(m.campaign, ''), m.channel
                          ORDER BY (julianday(j.delivered_at) - julianday(j.created_at))) AS rank,
       count(*) OVER (PARTITION BY date(m.received_at, '+8 hours'), coalesce(m.campaign, ''), m.channel) AS total
FROM inbound_messages m JOIN jobs j ON j.inbound_id = m.id
WHERE j.delivered_at IS NOT NULL;

-- Usage per day (Asia/Shanghai), campaign ('' = free prompts) and channel. requests = painting requests (admitted or
-- refused); limited = refused by a limit; p50/p95 = seconds from ack to delivery (nearest rank).
CREATE VIEW usage_daily AS
SELECT u.*,
       (SELECT w.secs FROM usage_waits w WHERE w.day = u.day AND w.campaign = u.campaign AND w.channel = u.channel
          AND w.rank = (w.total * 50 + 99) / 100) AS p50_secs,
       (SELECT w.secs FROM usage_waits w WHERE w.day = u.day AND w.campaign = u.campaign AND w.channel = u.channel
          AND w.rank = (w.total * 95 + 99) / 100) AS p95_secs
FROM (
    SELECT date(m.received_at, '+8 hours') AS day,
           coalesce(m.campaign, '') AS campaign,
           m.channel,
           sum(m.decision <> 'answered') AS requests,
           count(j.id) AS admitted,
           sum(m.decision IN ('limited', 'busy') OR (m.decision = 'admitted' AND j.id IS NULL)) AS limited,
           sum(m.decision = 'blocked') AS blocked,
           sum(coalesce(j.status IN ('done', 'delivered'), 0)) AS painted,
           sum(coalesce(j.status = 'delivered', 0)) AS delivered,
           sum(coalesce(j.status = 'failed', 0)) AS failed
    FROM inbound_messages m LEFT JOIN jobs j ON j.inbound_id = m.id
    GROUP BY 1, 2, 3
) u;

-- Usage per follower and day (Asia/Shanghai).
CREATE VIEW usage_by_user AS
SELECT date(m.received_at, '+8 hours') AS day,
       m.channel, m.account, m.user_id,
       sum(m.decision <> 'answered') AS requests,
       count(j.id) AS admitted,
       sum(m.decision IN ('limited', 'busy') OR (m.decision = 'admitted' AND j.id IS NULL)) AS limited,
       sum(m.decision = 'blocked') AS blocked,
       sum(coalesce(j.status = 'delivered', 0)) AS delivered
FROM inbound_messages m LEFT JOIN jobs j ON j.inbound_id = m.id
GROUP BY 1, 2, 3, 4;
