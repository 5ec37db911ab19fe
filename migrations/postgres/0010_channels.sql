-- Platforms as plug-ins, several accounts per deployment.

-- One row per platform account credential (WeChat: the AppID): the shared access token, who is refreshing it, and
-- flags. Replaces wechat_accounts, every row kept.
CREATE TABLE channel_accounts (
    channel          TEXT NOT NULL,
    account          TEXT NOT NULL,
    access_token     TEXT,
    token_expires_ms BIGINT,
    refresh_holder   TEXT,
    refresh_until_ms BIGINT,
    passive_only     BOOLEAN NOT NULL DEFAULT false,
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
CREATE VIEW usage_daily AS
SELECT (m.received_at AT TIME ZONE 'Asia/Shanghai')::date AS day,
       coalesce(m.campaign, '') AS campaign,
       m.channel,
       m.account,
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
GROUP BY 1, 2, 3, 4;
