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

fn encode_reply(reply: &Reply) -> String {
    serde_json::to_string(reply).expect("a Reply always serialises; this is a bug")
}

fn decode_reply(stored: &str) -> Result<Reply, StoreError> {
    serde_json::from_str(stored).map_err(|e| StoreError::Corrupt(format!("reply: {e}")))
}
