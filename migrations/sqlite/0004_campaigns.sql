-- Campaigns: the definition in use (JSON of the TOML fields) and every change as a revision.
CREATE TABLE campaigns (
    name       TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE campaign_revisions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    definition TEXT NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX campaign_revisions_by_name ON campaign_revisions (name, id);

-- The campaign a job was painted for (NULL = free prompt).
ALTER TABLE jobs ADD COLUMN campaign TEXT;
