-- The node whose painting lease a running job is under. PostgreSQL nodes stamp it to take a dead node's jobs over
-- at once (see the PostgreSQL migration); SQLite has one node, so the column stays NULL and only keeps the two
-- schemas alike.
ALTER TABLE jobs ADD COLUMN lease_node INTEGER;
