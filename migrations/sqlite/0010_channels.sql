-- Platforms as plug-ins, several accounts per deployment.

-- One row per platform account credential (WeChat: the AppID): the shared access token, who is refreshing it, and
-- flags. Replaces wechat_accounts, every row kept.
CREATE TABLE channel_accounts (
    channel          TEXT NOT NULL,
    account          TEXT NOT NULL,
    access_token     TEXT,
    token_expires_ms INTEGER,
    refresh_holder   TEXT,
    refresh_until_ms INTEGER,
    passive_only     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, account)
);
INSERT INTO channel_accounts (channel, account, access_token, token_expires_ms, refresh_holder, refresh_until_ms,
                              passive_only)
SELECT 'wechat', app_id, access_token, token_expires_ms, refresh_holder, refresh_until_ms, passive_only
FROM wechat_accounts;
DROP TABLE wechat_accounts;

-- Messages, jobs and follower rows name the configured account they came through. Until now a deployment served
-- one WeChat account, which becomes the account named `default` (rows held its original id, gh_…).
UPDATE inbound_messages SET account = 'default' WHERE channel = 'wechat';
UPDATE jobs SET account = 'default' WHERE channel = 'wechat';
UPDATE follower_usage SET account = 'default' WHERE channel = 'wechat';
UPDATE follower_lists SET account = 'default' WHERE channel = 'wechat';

-- Usage per day, campaign, platform and account.
DROP VIEW usage_daily;
DROP VIEW usage_waits;
CREATE VIEW usage_waits AS
SELECT date(m.received_at, '+8 hours') AS day, coalesce(m.campaign, '') AS campaign, m.channel, m.account,
       (julianday(j.delivered_at) - julianday(j.created_at)) * 86400.0 AS secs,
       row_number() OVER (PARTITION BY date(m.received_at, '+8 hours'), coalesce(m.campaign, ''), m.channel, m.account
                          ORDER BY (julianday(j.delivered_at) - julianday(j.created_at))) AS rank,
       count(*) OVER (PARTITION BY date(m.received_at, '+8 hours'), coalesce(m.campaign, ''), m.channel, m.account) AS total
FROM inbound_messages m JOIN jobs j ON j.inbound_id = m.id
WHERE j.delivered_at IS NOT NULL;

CREATE VIEW usage_daily AS
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
