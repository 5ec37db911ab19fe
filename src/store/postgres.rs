//! The PostgreSQL store: the coordination backbone for several nodes.

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::{
    Admission, Counts, JobRow, Store, StoreError, Submission, decode_reply, encode_reply,
    source_msg_id,
};
use crate::config::DatabaseSettings;

/// Dedup insert and job insert in one statement (one transaction, one round trip). A concurrent insert of the
/// same key waits for the other transaction and then does nothing, so exactly one caller creates the job.
const SUBMIT: &str = "
WITH inbound AS (
    INSERT INTO inbound_messages (channel, account, dedup_key, user_id, msg_id, kind, reply)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (channel, account, dedup_key) DO NOTHING
    RETURNING id
), job AS (
    INSERT INTO jobs (channel, account, user_id, source_msg_id, prompt, inbound_id,
                      negative_prompt, width, height, steps, scheduler, guidance)
    SELECT $1, $2, $4, $8, $9, inbound.id, $10, $11, $12, $13, $14, $15 FROM inbound WHERE $9::text IS NOT NULL
    RETURNING id
)
SELECT (SELECT id FROM inbound) AS inbound_id, (SELECT id FROM job) AS job_id";

/// PostgreSQL-backed [`Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Opens a pool to the database.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout())
            .connect(&settings.url)
            .await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn submit(&self, s: &Submission<'_>) -> Result<Admission, StoreError> {
        let m = s.inbound;
        let job = s.job.as_ref();
        let (inbound_id, job_id): (Option<i64>, Option<i64>) = sqlx::query_as(SUBMIT)
            .bind(m.channel)
            .bind(&m.account)
            .bind(&m.dedup_key)
            .bind(&m.user_id)
            .bind(&m.message_id)
            .bind(m.kind.name())
            .bind(encode_reply(&s.reply))
            .bind(source_msg_id(m))
            .bind(job.map(|j| &j.prompt))
            .bind(job.map(|j| &j.negative_prompt))
            .bind(job.map(|j| j.width as i32))
            .bind(job.map(|j| j.height as i32))
            .bind(job.map(|j| j.steps as i32))
            .bind(job.map(|j| &j.scheduler))
            .bind(job.map(|j| j.guidance))
            .fetch_one(&self.pool)
            .await?;
        if inbound_id.is_some() {
            return Ok(Admission::Accepted { job_id });
        }
        let (reply,): (String,) = sqlx::query_as(
            "SELECT reply FROM inbound_messages WHERE channel = $1 AND account = $2 AND dedup_key = $3",
        )
        .bind(m.channel)
        .bind(&m.account)
        .bind(&m.dedup_key)
        .fetch_one(&self.pool)
        .await?;
        Ok(Admission::Duplicate {
            reply: decode_reply(&reply)?,
        })
    }

    async fn recent_jobs(&self, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, channel, account, user_id, source_msg_id, prompt, status, created_at
             FROM jobs ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let (inbound, jobs): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM inbound_messages), (SELECT count(*) FROM jobs)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Counts { inbound, jobs })
    }
}
