//! The SQLite store: the embedded single-node default. One writer connection serialises writes in-process;
//! readers use their own pool.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{
    Admission, Counts, JobRow, Store, StoreError, Submission, decode_reply, encode_reply,
    source_msg_id,
};
use crate::config::DatabaseSettings;

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (and creates, with `mode=rwc`) the database file, creating its folder when missing.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(&settings.url)?
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged message survives power loss, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(parent) = options.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.acquire_timeout())
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(settings.max_connections.clamp(1, 8))
            .acquire_timeout(settings.acquire_timeout())
            .connect_with(options)
            .await?;
        Ok(Self { writer, reader })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn submit(&self, s: &Submission<'_>) -> Result<Admission, StoreError> {
        let m = s.inbound;
        let mut tx = self.writer.begin().await?;
        let inserted: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO inbound_messages (channel, account, dedup_key, user_id, msg_id, kind, reply)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (channel, account, dedup_key) DO NOTHING
             RETURNING id",
        )
        .bind(m.channel)
        .bind(&m.account)
        .bind(&m.dedup_key)
        .bind(&m.user_id)
        .bind(&m.message_id)
        .bind(m.kind.name())
        .bind(encode_reply(&s.reply))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((inbound_id,)) = inserted else {
            let (reply,): (String,) = sqlx::query_as(
                "SELECT reply FROM inbound_messages WHERE channel = ?1 AND account = ?2 AND dedup_key = ?3",
            )
            .bind(m.channel)
            .bind(&m.account)
            .bind(&m.dedup_key)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Admission::Duplicate {
                reply: decode_reply(&reply)?,
            });
        };
        let job_id = match &s.job {
            Some(job) => {
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO jobs (channel, account, user_id, source_msg_id, prompt, inbound_id,
                                       negative_prompt, width, height, steps, scheduler, guidance)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING id",
                )
                .bind(m.channel)
                .bind(&m.account)
                .bind(&m.user_id)
                .bind(source_msg_id(m))
                .bind(&job.prompt)
                .bind(inbound_id)
                .bind(&job.negative_prompt)
                .bind(job.width as i64)
                .bind(job.height as i64)
                .bind(job.steps as i64)
                .bind(&job.scheduler)
                .bind(job.guidance)
                .fetch_one(&mut *tx)
                .await?;
                Some(id)
            }
            None => None,
        };
        tx.commit().await?;
        Ok(Admission::Accepted { job_id })
    }

    async fn recent_jobs(&self, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, channel, account, user_id, source_msg_id, prompt, status, created_at
             FROM jobs ORDER BY id DESC LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let (inbound, jobs): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM inbound_messages), (SELECT count(*) FROM jobs)",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(Counts { inbound, jobs })
    }
}
