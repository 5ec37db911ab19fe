-- What was painted and why a job ended (issue 11): the English a Chinese prompt was painted from, the photo an img2img
-- job paints from, and failures the follower is told about in their own words (a flagged picture, a refused photo).
ALTER TABLE jobs ADD COLUMN painted_prompt TEXT;             -- the prompt as painted, when translation changed it
ALTER TABLE jobs ADD COLUMN painted_negative TEXT;           -- the negative prompt as painted, when changed
ALTER TABLE jobs ADD COLUMN translate_ms REAL;               -- time the translation took
ALTER TABLE jobs ADD COLUMN photo_media_id TEXT;             -- img2img: the follower's photo on the platform
ALTER TABLE jobs ADD COLUMN strength REAL NOT NULL DEFAULT 0;  -- img2img strength; 0 = from text
ALTER TABLE jobs ADD COLUMN fail_reason TEXT;                -- unsafe, photo_too_large, photo_unreadable, photo_missing
ALTER TABLE jobs ADD COLUMN notice TEXT;                     -- what the follower is told instead of the picture

-- Usage gains the pictures the safety check stopped.
DROP VIEW usage_daily;
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
           sum(coalesce(j.status = 'failed', 0)) AS failed,
           sum(coalesce(j.fail_reason = 'unsafe', 0)) AS flagged
    FROM inbound_messages m LEFT JOIN jobs j ON j.inbound_id = m.id
    GROUP BY 1, 2, 3
) u;
