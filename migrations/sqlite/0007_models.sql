-- The model and LoRAs a job is painted with ('' = the default model), and what each worker can paint.
ALTER TABLE jobs ADD COLUMN model TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN loras TEXT NOT NULL DEFAULT '[]';

-- Workers say which models and LoRAs they paint (JSON arrays of names) every few seconds, so a job whose model
-- no live worker has can be shown as waiting for one.
CREATE TABLE workers (
    id      TEXT PRIMARY KEY,
    models  TEXT NOT NULL,
    loras   TEXT NOT NULL,
    seen_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
