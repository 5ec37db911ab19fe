-- What was painted and why a job ended (issue 11): the English a Chinese prompt was painted from, the photo an img2img
-- job paints from, and failures the follower is told about in their own words (a flagged picture, a refused photo).
ALTER TABLE jobs ADD COLUMN painted_prompt TEXT;             -- the prompt as painted, when translation changed it
ALTER TABLE jobs ADD COLUMN painted_negative TEXT;           -- the negative prompt as painted, when changed
ALTER TABLE jobs ADD COLUMN translate_ms DOUBLE PRECISION;   -- time the translation took
ALTER TABLE jobs ADD COLUMN photo_media_id TEXT;             -- img2img: the follower's photo on the platform
ALTER TABLE jobs ADD COLUMN strength DOUBLE PRECISION NOT NULL DEFAULT 0;  -- img2img strength; 0 = from text
ALTER TABLE jobs ADD COLUMN fail_reason TEXT;                -- unsafe, photo_too_large, photo_unreadable, photo_missing
ALTER TABLE jobs ADD COLUMN notice TEXT;                     -- what the follower is told instead of the picture

-- Usage gains the pictures the safety check stopped.
DROP VIEW usage_daily;
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
       count(j.id) FILTER (WHERE j.fail_reason = 'unsafe') AS flagged,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.delivered_at - j.created_at))
           FILTER (WHERE j.delivered_at IS NOT NULL) AS p50_secs,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM j.delivered_at - j.created_at))
           FILTER (WHERE j.delivered_at IS NOT NULL) AS p95_secs
FROM inbound_messages m LEFT JOIN jobs j ON j.inbound_id = m.id
GROUP BY 1, 2, 3;
