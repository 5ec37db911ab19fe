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
