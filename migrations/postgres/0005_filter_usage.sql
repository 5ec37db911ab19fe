-- What huabi decided about each message (admitted, answered, blocked, invalid, outside_window), for which campaign,
-- and what matched.
ALTER TABLE inbound_messages ADD COLUMN decision TEXT NOT NULL DEFAULT 'answered';
ALTER TABLE inbound_messages ADD COLUMN campaign TEXT;
ALTER TABLE inbound_messages ADD COLUMN decision_detail TEXT;

-- Content filter entries added per deployment, on top of config/filter-words.txt.
CREATE TABLE filter_words (
    word     TEXT PRIMARY KEY,
    added_by TEXT NOT NULL DEFAULT 'admin',
    added_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Usage per day (Asia/Shanghai), campaign ('' = free prompts) and channel. requests = painting requests (admitted or
-- refused); limited = refused by a limit (an `admitted` message without a job was refused inside the admission
-- statement); p50/p95 = seconds from ack to delivery.
CREATE VIEW usage_daily AS
SELECT (m.received_at AT TIME ZONE 'Asia/Shanghai')::date AS day,
       coalesce(m.campaign, '') AS campaign,
       m.channel,
       count(*) FILTER (WHERE m.decision <> 'answered') AS requests,
       count(j.id) AS admitted,
       count(*) FILTER (WHERE m.decision IN ('limited', 'busy') OR (m.decision = 'admitted' AND j.id IS NULL)) AS limited,
       count(*) FILTER (WHERE m.decision = 'blocked') AS blocked,
       count(j.id) FILTER (WHERE j.status IN ('done', 'delivered')) AS painted,
       count(j.id) FILTER (WHERE j.status = 'delivered') AS delivered,
       count(j.id) FILTER (WHERE j.status = 'failed') AS failed,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.delivered_at - j.created_at))
           FILTER (WHERE j.delivered_at IS NOT NULL) AS p50_secs,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM j.delivered_at - j.created_at))
           FILTER (WHERE j.delivered_at IS NOT NULL) AS p95_secs
FROM inbound_messages m LEFT JOIN jobs j ON j.inbound_id = m.id
GROUP BY 1, 2, 3;

-- Usage per follower and day (Asia/Shanghai).
CREATE VIEW usage_by_user AS
SELECT (m.received_at AT TIME ZONE 'Asia/Shanghai')::date AS day,
       m.channel, m.account, m.user_id,
       count(*) FILTER (WHERE m.decision <> 'answered') AS requests,
       count(j.id) AS admitted,
       count(*) FILTER (WHERE m.decision IN ('limited', 'busy') OR (m.decision = 'admitted' AND j.id IS NULL)) AS limited,
       count(*) FILTER (WHERE m.decision = 'blocked') AS blocked,
       count(j.id) FILTER (WHERE j.status = 'delivered') AS delivered
FROM inbound_messages m LEFT JOIN jobs j ON j.inbound_id = m.id
GROUP BY 1, 2, 3, 4;
