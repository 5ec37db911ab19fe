//! Durable state behind one [`Store`] trait with a PostgreSQL and an SQLite implementation, chosen by the URL
//! scheme. All SQL lives in this module.

mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::channel::{Inbound, Reply};
use crate::config::DatabaseSettings;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported database URL (expected postgres://… or sqlite://…): {0}")]
    UnsupportedUrl(String),
    /// The database could not be reached or a query failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The SQLite file's folder could not be created.
    #[error("cannot create the database folder: {0}")]
    Io(#[from] std::io::Error),
}

/// One inbound message to admit: recorded once under its dedup key, with its reply and optional job,
/// in a single transaction.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// The message.
    pub inbound: &'a Inbound,
    /// The job to create, if the message asks for a painting.
    pub job: Option<NewJob>,
    /// The reply to store, so retries of the message get the same answer.
    pub reply: Reply,
}

/// A painting request to admit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: String,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Denoising steps.
    pub steps: u32,
    /// Scheduler name.
    pub scheduler: String,
    /// Guidance scale.
    pub guidance: f32,
}

impl NewJob {
    /// A job for `prompt` with the configured painting parameters.
    pub fn new(prompt: impl Into<String>, settings: &crate::config::JobSettings) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: settings.negative_prompt.clone(),
            width: settings.width,
            height: settings.height,
            steps: settings.steps,
            scheduler: settings.scheduler.clone(),
            guidance: settings.guidance,
        }
    }
}

/// The result of [`Store::submit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// First time this message was seen; `job_id` is set when a job was created.
    Accepted {
        /// The new job.
        job_id: Option<i64>,
    },
    /// A retry of a message already admitted; nothing was created.
    Duplicate {
        /// The reply given the first time.
        reply: Reply,
    },
}

/// A painting job as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobRow {
    /// Job id.
    pub id: i64,
    /// Channel name.
    pub channel: String,
    /// Account the request came to.
    pub account: String,
    /// Follower id.
    pub user_id: String,
    /// The platform message id (or dedup key) of the request.
    pub source_msg_id: String,
    /// The prompt.
    pub prompt: String,
    /// `queued`, `running`, `done`, `delivered` or `failed`.
    pub status: String,
    /// When the job was admitted.
    pub created_at: OffsetDateTime,
}

/// A job leased to a worker, with everything needed to paint it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LeasedJob {
    /// Job id.
    pub id: i64,
    /// The prompt.
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: String,
    /// Picture width.
    pub width: i32,
    /// Picture height.
    pub height: i32,
    /// Denoising steps.
    pub steps: i32,
    /// Scheduler name.
    pub scheduler: String,
    /// Guidance scale.
    pub guidance: f32,
    /// The seed, chosen at the first lease and kept on retries.
    pub seed: i64,
    /// Leases taken so far, this one included.
    pub attempts: i32,
}

/// What happened to a job a worker gave up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFate {
    /// Back in the queue for another attempt.
    Requeued,
    /// Out of attempts: failed for good.
    Failed,
    /// The worker no longer held the lease (another worker took the job over); nothing changed.
    LeaseLost,
}

/// Counts of what is stored, for tests and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Rows in `inbound_messages`.
    pub inbound: i64,
    /// Rows in `jobs`.
    pub jobs: i64,
}

/// Everything huabi persists.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Records the message under its dedup key and creates its job, atomically; a retry gets `Duplicate`.
    async fn submit(&self, submission: &Submission<'_>) -> Result<Admission, StoreError>;
    /// The most recent jobs, newest first.
    async fn recent_jobs(&self, limit: i64) -> Result<Vec<JobRow>, StoreError>;
    /// Row counts.
    async fn counts(&self) -> Result<Counts, StoreError>;
    /// Leases up to `max` jobs sharing the oldest eligible job's painting parameters (queued ones, or running ones
    /// whose lease expired, with attempts left), oldest first, for `lease_secs`.
    async fn lease_jobs(
        &self,
        worker: &str,
        max: i64,
        lease_secs: f64,
        max_attempts: i32,
    ) -> Result<Vec<LeasedJob>, StoreError>;
    /// Extends every lease `worker` holds; returns how many.
    async fn heartbeat(&self, worker: &str, lease_secs: f64) -> Result<u64, StoreError>;
    /// Stores the finished picture and marks the job `done`, if `worker` still holds it; returns whether it did.
    async fn complete_job(&self, id: i64, worker: &str, jpeg: &[u8]) -> Result<bool, StoreError>;
    /// Gives a job back after an error: requeued while attempts remain, else failed with `error`.
    async fn fail_job(
        &self,
        id: i64,
        worker: &str,
        error: &str,
        max_attempts: i32,
    ) -> Result<JobFate, StoreError>;
    /// Fails running jobs whose lease expired with no attempts left; returns their ids.
    async fn fail_exhausted(&self, max_attempts: i32) -> Result<Vec<i64>, StoreError>;
    /// Puts the jobs `worker` holds back in the queue without counting the attempt (graceful shutdown).
    async fn release_leases(&self, worker: &str) -> Result<u64, StoreError>;
    /// The status of a job, if it exists.
    async fn job_status(&self, id: i64) -> Result<Option<String>, StoreError>;
    /// The finished picture of a job, if stored.
    async fn job_image(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Calls `wake.notify_one()` whenever any node announces new jobs (PostgreSQL LISTEN; a no-op on SQLite,
    /// where only this process submits).
    async fn subscribe_jobs(&self, wake: Arc<tokio::sync::Notify>) -> Result<(), StoreError>;
    /// Tells every node's workers that jobs were admitted (PostgreSQL NOTIFY; a no-op on SQLite). Sent outside the
    /// admission transaction: NOTIFY serialises commits, which cut the admission rate by half when it ran inside.
    async fn announce_jobs(&self) -> Result<(), StoreError>;
}

/// Connects to the database the URL names (without migrating).
pub async fn connect(settings: &DatabaseSettings) -> Result<Arc<dyn Store>, StoreError> {
    let url = settings.url.as_str();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(settings).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(settings).await?))
    } else {
        Err(StoreError::UnsupportedUrl(crate::config::redact_url(url)))
    }
}

/// The `source_msg_id` recorded for a job: the platform's message id, or the dedup key for id-less messages.
fn source_msg_id(inbound: &Inbound) -> &str {
    inbound.message_id.as_deref().unwrap_or(&inbound.dedup_key)
}

/// The fate of a job from the status `fail_job` left it in (no row: the lease was lost).
fn fate(status: Option<(String,)>) -> JobFate {
    match status.as_ref().map(|(s,)| s.as_str()) {
        Some("failed") => JobFate::Failed,
        Some(_) => JobFate::Requeued,
        None => JobFate::LeaseLost,
    }
}

fn encode_reply(reply: &Reply) -> String {
    serde_json::to_string(reply).expect("a Reply always serialises; this is a bug")
}

fn decode_reply(stored: &str) -> Result<Reply, StoreError> {
    serde_json::from_str(stored).map_err(|e| StoreError::Corrupt(format!("reply: {e}")))
}
