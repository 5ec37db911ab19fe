-- The node whose painting lease a running job is under: each node holds a session-level advisory lock
-- (class 26725, key lease_node) while it is connected, so when a node dies its connection ends, the lock goes,
-- and the other nodes take its jobs over at once instead of waiting for the lease to expire.
ALTER TABLE jobs ADD COLUMN lease_node INTEGER;
