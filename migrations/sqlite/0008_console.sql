-- The console: its users (argon2id PHC strings), their sessions (the cookie's token stored hashed, with the
-- session's CSRF token), failed logins (for throttling), and the audit log of every change made through it.
CREATE TABLE admin_users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    password_hash TEXT NOT NULL,
    disabled      BOOLEAN NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE admin_sessions (
    token_hash TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL REFERENCES admin_users (name) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at TEXT NOT NULL
);

CREATE TABLE admin_login_failures (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    user_name TEXT NOT NULL,
    address   TEXT NOT NULL,
    at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX admin_login_failures_by_time ON admin_login_failures (at);

CREATE TABLE admin_audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before TEXT,
    after  TEXT
);

-- Preview jobs (painted for the console, no follower) are leased before followers' jobs.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;

-- Followers allowed (no limits) or denied from the console, on top of the configured lists.
CREATE TABLE follower_lists (
    channel  TEXT NOT NULL,
    account  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    listing  TEXT NOT NULL CHECK (listing IN ('allow', 'deny')),
    set_by   TEXT NOT NULL,
    set_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (channel, account, user_id)
);
