-- Delivery. A deliverer leases a finished job with the same leased_by / leased_until columns a worker used while
-- painting it (status 'done', or 'failed' for the notice that tells the follower).
ALTER TABLE jobs ADD COLUMN deliver_after TEXT;        -- not before (fast-path window, backoff)
ALTER TABLE jobs ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN media_id TEXT;                    -- uploaded temporary media, reused by a retried send
ALTER TABLE jobs ADD COLUMN held TEXT;                        -- why it waits for the fetch flow instead of a send
ALTER TABLE jobs ADD COLUMN delivered_via TEXT;               -- send, passive (fast path) or fetch
ALTER TABLE jobs ADD COLUMN notified_at TEXT;          -- when the follower was told a failed job failed
ALTER TABLE jobs ADD COLUMN delivery_error TEXT;
ALTER TABLE jobs ADD COLUMN batch_size INTEGER;               -- jobs painted in the same engine pass

CREATE INDEX jobs_to_deliver ON jobs (finished_at)
    WHERE held IS NULL AND (status = 'done' OR (status = 'failed' AND notified_at IS NULL));
CREATE INDEX jobs_waiting_by_user ON jobs (channel, account, user_id, finished_at)
    WHERE status = 'done' OR (status = 'failed' AND notified_at IS NULL);

-- One row per WeChat account (AppID): the one shared access_token and who is refreshing it.
CREATE TABLE wechat_accounts (
    app_id           TEXT PRIMARY KEY,
    access_token     TEXT,
    token_expires_ms INTEGER,
    refresh_holder   TEXT,
    refresh_until_ms INTEGER,
    passive_only     INTEGER NOT NULL DEFAULT 0
);
