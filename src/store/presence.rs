//! A node's presence on PostgreSQL: a session-level advisory lock held on a connection of its own for as long as
//! the node lives. A process that dies (kill -9, a crash, a lost machine whose kernel closes its sockets) ends that
//! session at once, PostgreSQL drops the lock, and the other nodes take its running jobs over within a poll tick
//! instead of waiting for their leases to expire. Leases stay the fallback for a node that went silent without
//! closing its connections (a pause, a partition).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// The advisory-lock class every node's presence lock uses (its key is the node's own).
pub(super) const LOCK_CLASS: i32 = 26725;

/// Node keys whose presence lock is held now, in this database (a CTE named `live`, column `node`).
pub(super) const LIVE_NODES: &str = "live AS (
    SELECT objid::bigint AS node FROM pg_locks
    WHERE locktype = 'advisory' AND classid = 26725 AND objsubid = 2 AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
)";

/// A running job whose node is gone (use with [`LIVE_NODES`]).
pub(super) const ORPHANED: &str =
    "(lease_node IS NOT NULL AND lease_node NOT IN (SELECT node FROM live))";

/// How often the presence connection is checked (and re-made after it broke).
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// This process's presence: its key, and whether the lock is held right now.
#[derive(Debug)]
pub(super) struct Presence {
    key: i32,
    held: AtomicBool,
    started: AtomicBool,
}

impl Presence {
    /// A presence with a random positive key (two nodes sharing one would hide each other's death, no more).
    pub(super) fn new() -> Self {
        Self {
            key: (rand::random::<u32>() >> 1).max(1) as i32,
            held: AtomicBool::new(false),
            started: AtomicBool::new(false),
        }
    }

    /// The key to stamp on leases, while the lock is held (a lease taken without it waits for its expiry).
    pub(super) fn key_if_held(&self) -> Option<i32> {
        self.held.load(Ordering::Acquire).then_some(self.key)
    }

    /// Starts holding the lock on a connection of its own to `pool`'s database (once per process), reconnecting
    /// whenever the connection breaks.
    pub(super) fn start(self: &Arc<Self>, pool: &sqlx::PgPool) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let options: PgConnectOptions = (*pool.connect_options()).clone();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.hold(&options).await
                    && this.held.swap(false, Ordering::AcqRel)
                {
                    tracing::warn!(error = %e, "presence lock lost; leases taken meanwhile wait for their expiry");
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        });
    }

    /// Connects, takes the lock, and checks the connection until it fails.
    async fn hold(&self, options: &PgConnectOptions) -> Result<(), sqlx::Error> {
        let mut conn = PgConnection::connect_with(options).await?;
        sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(self.key)
            .execute(&mut conn)
            .await?;
        self.held.store(true, Ordering::Release);
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            sqlx::query("SELECT 1").execute(&mut conn).await?;
        }
    }
}
