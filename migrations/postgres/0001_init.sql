-- Every message or event received, once per dedup key, with the passive reply it got.
CREATE TABLE inbound_messages (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel     TEXT NOT NULL,
    account     TEXT NOT NULL,
    dedup_key   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    msg_id      TEXT,
    kind        TEXT NOT NULL,
    reply       TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT inbound_messages_dedup UNIQUE (channel, account, dedup_key)
);

-- One row per admitted painting request.
CREATE TABLE jobs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel       TEXT NOT NULL,
    account       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    source_msg_id TEXT NOT NULL,
    prompt        TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'running', 'done', 'delivered', 'failed')),
    inbound_id    BIGINT NOT NULL UNIQUE REFERENCES inbound_messages (id),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX jobs_queued_by_age ON jobs (created_at) WHERE status = 'queued';
CREATE INDEX jobs_by_user ON jobs (channel, account, user_id, created_at);
