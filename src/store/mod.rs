//! Durable state behind one [`Store`] trait with a PostgreSQL and an SQLite implementation, chosen by the URL
//! scheme. All SQL lives in this module.

#[macro_use]
pub mod admin;
mod postgres;
mod presence;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::config::DatabaseSettings;
use crate::limits::{self, Limits, Listing, Refused, Usage};
use crate::model::{Inbound, JobStatus, NewJob, PhotoJob, Refusal, RefusalReason, Reply};

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

impl StoreError {
    /// Whether the database was out of reach (restarting, failing over, cut off) rather than refusing the
    /// operation: trying again later may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => true,
                // Class 57 (operator intervention: shutdown, crash), 08 (connection exception), 53 (resources).
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("57") || c.starts_with("08") || c.starts_with("53")
                }),
                _ => false,
            },
            StoreError::Io(_) => true,
            _ => false,
        }
    }
}

/// Runs `op` again while the database is out of reach, for up to `patience`, so an outcome already achieved (a
/// picture painted, a picture sent) is recorded once the database is back instead of being done a second time.
pub async fn persist<T, F, Fut>(patience: std::time::Duration, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = std::time::Instant::now() + patience;
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match op().await {
            Err(e) if e.is_unavailable() && std::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %e, "the database is out of reach; recording the outcome again shortly");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            done => return done,
        }
    }
}

/// What `huabi doctor` reads off the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbHealth {
    /// The newest migration applied (`None`: never migrated).
    pub applied: Option<i64>,
    /// The newest migration this build carries.
    pub known: i64,
    /// The database's clock.
    pub now: OffsetDateTime,
}

/// What retention keeps, as of `now`: picture bytes for `picture_days` after delivery (or failure), held pictures
/// for `held_days` after they were painted (then they expire and can no longer be fetched), and messages and
/// finished jobs for `history_days` whole Shanghai days (their daily usage is rolled up first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The time the policy is applied at.
    pub now: OffsetDateTime,
    /// Days picture bytes are kept after delivery.
    pub picture_days: u32,
    /// Days a held picture waits for `取图`.
    pub held_days: u32,
    /// Days messages and finished jobs are kept.
    pub history_days: u32,
    /// The most rows of each kind one pruning step removes.
    pub batch: i64,
}

impl Retention {
    /// Pictures delivered (or jobs failed) before this lose their bytes.
    pub fn picture_cutoff(&self) -> OffsetDateTime {
        self.now - time::Duration::days(i64::from(self.picture_days))
    }

    /// Held pictures painted before this expire.
    pub fn held_cutoff(&self) -> OffsetDateTime {
        self.now - time::Duration::days(i64::from(self.held_days))
    }

    /// The first Shanghai day whose messages and jobs are kept; earlier days are rolled up and pruned.
    pub fn history_day(&self) -> time::Date {
        limits::shanghai_day(self.now) - time::Duration::days(i64::from(self.history_days))
    }

    /// When [`Retention::history_day`] began, as an instant.
    pub fn history_cutoff(&self) -> OffsetDateTime {
        self.history_day()
            .midnight()
            .assume_offset(time::macros::offset!(+8))
    }
}

/// What one pruning step removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Pictures whose bytes were deleted.
    pub pictures: u64,
    /// Held pictures that expired unfetched.
    pub expired: u64,
    /// Rows of daily usage copied into `usage_rollup`.
    pub usage_rows: u64,
    /// Finished jobs deleted.
    pub jobs: u64,
    /// Inbound messages deleted.
    pub messages: u64,
}

impl Pruned {
    /// Whether some kind hit the batch size (another step has more to do).
    pub fn more(&self, batch: i64) -> bool {
        let full = |n: u64| n >= batch.max(1) as u64;
        full(self.pictures) || full(self.expired) || full(self.jobs) || full(self.messages)
    }
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
    /// Why a painting request was refused, when it was (recorded for operators).
    pub refusal: Option<Refusal>,
    /// The limits a job must pass, decided inside the admission transaction.
    pub limits: Option<LimitCheck>,
}

/// The limits one request must pass and what to answer when it does not.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitCheck {
    /// The limits.
    pub limits: Limits,
    /// Allow or deny listing of the follower.
    pub listing: Listing,
    /// The time the request is counted at.
    pub now: OffsetDateTime,
    /// Jobs queued, as this node last counted them (backpressure is approximate by design; counting the queue
    /// inside every admission would make admission cost grow with the queue).
    pub queued: i64,
    /// The answer for each refusal.
    pub replies: RefusalTexts,
}

/// The answer to each kind of limit refusal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RefusalTexts {
    /// Deny-listed.
    pub denied: String,
    /// Daily quota used.
    pub per_day: String,
    /// Too many this minute.
    pub per_minute: String,
    /// Too many in flight.
    pub in_flight: String,
    /// Campaign cap reached.
    pub campaign_cap: String,
    /// Queue too deep.
    pub busy: String,
}

impl RefusalTexts {
    /// The text for `refused`.
    pub fn text(&self, refused: Refused) -> &str {
        match refused {
            Refused::Denied => &self.denied,
            Refused::PerDay(_) => &self.per_day,
            Refused::PerMinute(_) => &self.per_minute,
            Refused::InFlight(_) => &self.in_flight,
            Refused::CampaignCap(_) => &self.campaign_cap,
            Refused::Busy => &self.busy,
        }
    }
}

/// A follower's usage row as read (and locked) by an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
struct LockedUsage {
    day: i64,
    day_count: i32,
    minute: i64,
    minute_count: i32,
    in_flight: i32,
}

impl LockedUsage {
    /// The usage as seen by `check`: counts of an earlier day or minute are zero.
    fn usage(&self, check: &LimitCheck, campaign_today: i64) -> Usage {
        let current = |stored: i64, now: i64, count: i32| {
            if stored == now { i64::from(count) } else { 0 }
        };
        Usage {
            today: current(self.day, limits::day_number(check.now), self.day_count),
            this_minute: current(self.minute, limits::minute(check.now), self.minute_count),
            in_flight: i64::from(self.in_flight),
            campaign_today,
            queued: check.queued,
        }
    }
}

/// The submission to store after the limits refused `s`: no job, the refusal's text, the reason recorded.
fn refused_submission<'a>(
    s: &Submission<'a>,
    check: &LimitCheck,
    refused: Refused,
) -> Submission<'a> {
    Submission {
        inbound: s.inbound,
        job: None,
        reply: Reply::Text {
            text: check.replies.text(refused).to_string(),
        },
        refusal: Some(Refusal {
            reason: if refused == Refused::Busy {
                RefusalReason::Busy
            } else {
                RefusalReason::Limited
            },
            campaign: s.job.as_ref().and_then(|j| j.campaign.clone()),
            detail: refused.name().to_string(),
        }),
        limits: None,
    }
}

impl Submission<'_> {
    /// `admitted`, `answered` (no painting asked) or the refusal's reason, for `inbound_messages.decision`.
    pub fn decision(&self) -> &'static str {
        match (&self.job, &self.refusal) {
            (Some(_), _) => "admitted",
            (None, Some(refusal)) => refusal.reason.as_str(),
            (None, None) => "answered",
        }
    }

    /// The campaign of the job or the refused request.
    pub fn campaign(&self) -> Option<&str> {
        match (&self.job, &self.refusal) {
            (Some(job), _) => job.campaign.as_deref(),
            (None, Some(refusal)) => refusal.campaign.as_deref(),
            (None, None) => None,
        }
    }

    /// What the refusal matched, if anything.
    pub fn detail(&self) -> Option<&str> {
        self.refusal.as_ref().map(|r| r.detail.as_str())
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
    /// First time this message was seen, but a limit refused its job; `reply` says why (and is stored).
    Refused {
        /// The refusal's reply.
        reply: Reply,
    },
    /// A retry of a message already admitted; nothing was created.
    Duplicate {
        /// The reply given the first time (or the picture that replaced it).
        reply: Reply,
        /// The job the first delivery created, if any.
        job_id: Option<i64>,
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
    /// Where it stands.
    pub status: JobStatus,
    /// When the job was admitted.
    pub created_at: OffsetDateTime,
    /// Its campaign, if any.
    pub campaign: Option<String>,
    /// The model (`""` = the default).
    pub model: String,
    /// The LoRA set (canonical JSON).
    pub loras: String,
    /// Jobs painted in the same engine pass (once painted).
    pub batch_size: Option<i32>,
    /// A failed job's follower was told.
    pub notified: bool,
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
    /// The model (`""` = this worker's default).
    pub model: String,
    /// The LoRA set, canonical JSON (`[{"name":…,"scale":…}]`).
    pub loras: String,
    /// The channel the request came from.
    pub channel: String,
    /// The account it came to.
    pub account: String,
    /// The prompt as an earlier attempt translated it.
    pub painted_prompt: Option<String>,
    /// The negative prompt as an earlier attempt translated it.
    pub painted_negative: Option<String>,
    /// img2img: the photo's media id.
    pub photo_media_id: Option<String>,
    /// img2img strength (0 for text to image).
    pub strength: f64,
    /// The holder whose lease this one took over (its node died, or its lease expired), if any (PostgreSQL; SQLite,
    /// a single node, does not say).
    pub taken_from: Option<String>,
}

/// The lease a result is stored under: every result and state change of a leased job names the lease it holds,
/// and the store refuses it when the job was taken over since (another holder, or a later lease of the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease<'a> {
    /// The job.
    pub job: i64,
    /// Who took the lease.
    pub holder: &'a str,
    /// Which lease of the job it is (`attempts` for painting, `delivery_attempts` for delivery).
    pub attempt: i32,
}

impl LeasedJob {
    /// The lease `holder` painted this job under.
    pub fn lease<'a>(&self, holder: &'a str) -> Lease<'a> {
        Lease {
            job: self.id,
            holder,
            attempt: self.attempts,
        }
    }
}

/// What one worker can paint, as it last said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Model names (`""` for the default model when the worker paints it).
    pub models: Vec<String>,
    /// LoRA names.
    pub loras: Vec<String>,
}

impl Capabilities {
    /// `models` as the JSON array stored in `workers.models` and bound to lease queries.
    pub fn models_json(&self) -> String {
        serde_json::to_string(&self.models).unwrap_or_else(|_| "[]".into())
    }

    /// `loras` as a JSON array.
    pub fn loras_json(&self) -> String {
        serde_json::to_string(&self.loras).unwrap_or_else(|_| "[]".into())
    }
}

/// Queued jobs that share a model and LoRA set, and whether any live worker paints them.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct ModelQueue {
    /// The model (`""` = the default).
    pub model: String,
    /// The LoRA set (canonical JSON).
    pub loras: String,
    /// Jobs queued.
    pub queued: i64,
    /// Minutes the oldest has waited.
    pub oldest_minutes: f64,
    /// Live workers that paint this model with these LoRAs.
    pub workers: i64,
}

/// A job's prompts as painted after translation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Painted<'a> {
    /// The prompt painted, when translation changed it.
    pub prompt: Option<&'a str>,
    /// The negative prompt painted, when translation changed it.
    pub negative: Option<&'a str>,
    /// Milliseconds translating took.
    pub translate_ms: f64,
}

/// Why a worker ends a job for good, and what the follower is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobRefusal<'a> {
    /// `unsafe`, `photo_too_large`, `photo_unreadable` or `photo_missing`.
    pub reason: &'a str,
    /// The text the follower gets instead of a picture.
    pub notice: &'a str,
    /// Details for operators.
    pub error: &'a str,
    /// A flagged picture kept for review.
    pub jpeg: Option<&'a [u8]>,
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

/// A finished job leased to a deliverer.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryTask {
    /// Job id.
    pub job_id: i64,
    /// Channel name.
    pub channel: String,
    /// Account the request came to.
    pub account: String,
    /// Follower id.
    pub user_id: String,
    /// `done` (send the picture) or `failed` (tell the follower).
    pub status: JobStatus,
    /// The picture's media id from an earlier attempt's upload.
    pub media_id: Option<String>,
    /// Delivery leases taken so far, this one included.
    pub delivery_attempts: i32,
    /// What to tell the follower of a failed job, when the job says (else the generic failure text).
    pub notice: Option<String>,
}

impl DeliveryTask {
    /// The lease `holder` delivers this job under.
    pub fn lease<'a>(&self, holder: &'a str) -> Lease<'a> {
        Lease {
            job: self.job_id,
            holder,
            attempt: self.delivery_attempts,
        }
    }

    /// Whether the follower is owed a picture (else a failure notice).
    pub fn is_picture(&self) -> bool {
        self.status == JobStatus::Done
    }
}

/// Why a finished job waits for the follower to fetch it instead of being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The 48-hour customer-service window is closed (45015).
    WindowClosed,
    /// The follower's customer-service message quota is used up (45047).
    QuotaUsed,
    /// The account has no customer-service API (48001, or configured so).
    PassiveOnly,
    /// The platform refused the send for good (another error code).
    Rejected,
    /// Transient errors outlasted every retry.
    GaveUp,
    /// The follower blocked the bot (Telegram 403): nothing more is sent to them for this job.
    Blocked,
}

impl Hold {
    /// The name stored in `jobs.held`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hold::WindowClosed => "window_closed",
            Hold::QuotaUsed => "quota_used",
            Hold::PassiveOnly => "passive_only",
            Hold::Rejected => "rejected",
            Hold::GaveUp => "gave_up",
            Hold::Blocked => "blocked",
        }
    }
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeliveryEnd<'a> {
    /// Sent: the picture is delivered, or the failure notice given.
    Sent,
    /// A transient error: try again after `after_secs`.
    Retry {
        /// Backoff before the next attempt.
        after_secs: f64,
        /// What went wrong.
        error: &'a str,
    },
    /// Keep it for the fetch flow.
    Held {
        /// Why.
        hold: Hold,
        /// What the platform said.
        error: &'a str,
    },
}

/// What a follower who asks for their picture has waiting, claimed for the asking request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// A finished picture, now leased to the caller.
    Picture {
        /// The job.
        job_id: i64,
    },
    /// A job that failed and the follower was not told yet, now leased to the caller.
    Failed {
        /// The job.
        job_id: i64,
    },
    /// Nothing finished, but a job is queued, painting or being sent.
    InProgress,
    /// Nothing at all.
    Nothing,
}

/// The shared access token of a platform account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// The token.
    pub token: String,
    /// When it stops being used, unix milliseconds (0 after a compare-and-swap expiry).
    pub expires_ms: i64,
}

/// What is shared about a WeChat account between nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountState {
    /// The current access token, if one was fetched.
    pub token: Option<StoredToken>,
    /// Set after a 48001: the account cannot use the customer-service API.
    pub passive_only: bool,
}

/// A campaign as stored: its name and definition (JSON).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredCampaign {
    /// Campaign name.
    pub name: String,
    /// The definition, JSON.
    pub definition: String,
}

/// One change to a campaign.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CampaignRevision {
    /// Revision id, increasing.
    pub id: i64,
    /// Campaign name.
    pub name: String,
    /// The definition after the change, JSON.
    pub definition: String,
    /// Who made the change.
    pub changed_by: String,
    /// When.
    pub changed_at: OffsetDateTime,
}

// Job statuses are stored as their names in a TEXT column on both databases.
impl<DB: sqlx::Database> sqlx::Type<DB> for JobStatus
where
    String: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <String as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <String as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for JobStatus
where
    String: sqlx::Decode<'r, DB>,
{
    fn decode(
        value: <DB as sqlx::Database>::ValueRef<'r>,
    ) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(<String as sqlx::Decode<DB>>::decode(value)?.parse()?)
    }
}

/// One delivered picture's wait, for [`Store::delivery_waits`].
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeliveryWait {
    /// Day of the request in Asia/Shanghai, `YYYY-MM-DD`.
    pub day: String,
    /// Campaign name, `''` for free prompts.
    pub campaign: String,
    /// Channel.
    pub channel: String,
    /// Account.
    pub account: String,
    /// Seconds from acknowledgement to delivery.
    pub secs: f64,
}

/// One row of the `usage_daily` view.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct UsageRow {
    /// Day in Asia/Shanghai, `YYYY-MM-DD`.
    pub day: String,
    /// Campaign name, `''` for free prompts.
    pub campaign: String,
    /// Channel.
    pub channel: String,
    /// The account on the channel.
    pub account: String,
    /// Painting requests (admitted or refused).
    pub requests: i64,
    /// Jobs created.
    pub admitted: i64,
    /// Refused by a limit.
    pub limited: i64,
    /// Refused by the content filter.
    pub blocked: i64,
    /// Painted (done or delivered).
    pub painted: i64,
    /// Delivered.
    pub delivered: i64,
    /// Failed for good.
    pub failed: i64,
    /// Pictures the safety check stopped (failed with reason `unsafe`).
    pub flagged: i64,
    /// Median seconds from ack to delivery.
    pub p50_secs: Option<f64>,
    /// 95th percentile of the same.
    pub p95_secs: Option<f64>,
}

/// Where a follower's paintings stand in the queue.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct QueueStatus {
    /// The follower's jobs queued or painting.
    pub open: i64,
    /// Jobs of anyone queued or painting ahead of the follower's oldest open job.
    pub ahead: i64,
    /// Jobs finished (anyone's) in the last ten minutes: the recent throughput.
    pub finished_recently: i64,
    /// The model of the follower's oldest open job when no live worker paints it (with its LoRAs), else `None`.
    pub waiting_for_model: Option<String>,
    /// The English the follower's latest job was painted from, when its prompt was translated.
    pub painted_prompt: Option<String>,
}

/// The timeline of one job, for benchmarks and operators.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobTiming {
    /// Job status.
    pub status: JobStatus,
    /// Admission time, unix seconds.
    pub created_s: f64,
    /// Delivery time, unix seconds.
    pub delivered_s: Option<f64>,
    /// Jobs painted in the same engine pass.
    pub batch_size: Option<i32>,
}

/// Counts of what is stored, for tests and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Rows in `inbound_messages`.
    pub inbound: i64,
    /// Rows in `jobs`.
    pub jobs: i64,
}

/// Everything huabi persists (the console's part in [`admin::AdminStore`]).
#[async_trait]
pub trait Store: admin::AdminStore + Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// The schema version applied, the newest this build knows, and the database's clock.
    async fn health(&self) -> Result<DbHealth, StoreError>;
    /// Records the message under its dedup key and creates its job, atomically; a retry gets `Duplicate`.
    async fn submit(&self, submission: &Submission<'_>) -> Result<Admission, StoreError>;
    /// The most recent jobs, newest first.
    async fn recent_jobs(&self, limit: i64) -> Result<Vec<JobRow>, StoreError>;
    /// Row counts.
    async fn counts(&self) -> Result<Counts, StoreError>;
    /// Jobs queued now.
    async fn queued_jobs(&self) -> Result<i64, StoreError>;
    /// The follower's admitted requests on the Shanghai day of `now`.
    async fn requests_today(
        &self,
        channel: &str,
        account: &str,
        user_id: &str,
        now: OffsetDateTime,
    ) -> Result<i64, StoreError>;
    /// Where the follower's paintings stand.
    async fn queue_status(
        &self,
        channel: &str,
        account: &str,
        user_id: &str,
    ) -> Result<QueueStatus, StoreError>;
    /// The follower's most recent painting request (for 重画), without its seed.
    async fn last_request(
        &self,
        channel: &str,
        account: &str,
        user_id: &str,
    ) -> Result<Option<NewJob>, StoreError>;
    /// The content filter's entries added in the database.
    async fn filter_words(&self) -> Result<Vec<String>, StoreError>;
    /// Seconds from acknowledgement to delivery of every picture delivered for a request from `since` on, with the
    /// request's day, campaign, channel and account (for percentiles over any grouping).
    async fn delivery_waits(&self, since: &str) -> Result<Vec<DeliveryWait>, StoreError>;
    /// Rows of `usage_daily` from `since` (`YYYY-MM-DD`, Asia/Shanghai) on, newest first.
    async fn usage(&self, since: &str) -> Result<Vec<UsageRow>, StoreError>;
    /// Every campaign in use.
    async fn campaigns(&self) -> Result<Vec<StoredCampaign>, StoreError>;
    /// Stores a campaign definition and a revision naming `changed_by`, unless it is unchanged (or, with
    /// `only_if_missing`, unless a campaign of that name exists); returns whether it stored anything.
    async fn save_campaign(
        &self,
        name: &str,
        definition: &str,
        changed_by: &str,
        only_if_missing: bool,
    ) -> Result<bool, StoreError>;
    /// The revisions of a campaign, oldest first.
    async fn campaign_revisions(&self, name: &str) -> Result<Vec<CampaignRevision>, StoreError>;
    /// The timelines of the jobs of followers whose id starts with `user_prefix`.
    async fn job_timings(&self, user_prefix: &str) -> Result<Vec<JobTiming>, StoreError>;
    /// Leases up to `max` jobs sharing the oldest eligible job's painting parameters (model, LoRA set, size,
    /// steps, scheduler) among those `can` paint (queued ones, or running ones whose lease expired, with attempts
    /// left), oldest first, for `lease_secs`.
    async fn lease_jobs(
        &self,
        worker: &str,
        can: &Capabilities,
        max: i64,
        lease_secs: f64,
        max_attempts: i32,
    ) -> Result<Vec<LeasedJob>, StoreError>;
    /// Records what `worker` paints, now (workers call it every few seconds).
    async fn worker_seen(&self, worker: &str, can: &Capabilities) -> Result<(), StoreError>;
    /// Forgets a worker that stops.
    async fn worker_gone(&self, worker: &str) -> Result<(), StoreError>;
    /// Queued jobs per model and LoRA set, with how many live workers paint each.
    async fn queue_by_model(&self) -> Result<Vec<ModelQueue>, StoreError>;
    /// Extends every lease `worker` holds; returns how many.
    async fn heartbeat(&self, worker: &str, lease_secs: f64) -> Result<u64, StoreError>;
    /// Stores the finished picture and marks the job `done`, if `lease` still holds it; returns whether it did.
    /// `batch_size` is how many jobs were painted in the same pass.
    async fn complete_job(
        &self,
        lease: Lease<'_>,
        jpeg: &[u8],
        batch_size: i32,
    ) -> Result<bool, StoreError>;
    /// Gives a job back after an error: requeued while attempts remain, else failed with `error`.
    async fn fail_job(
        &self,
        lease: Lease<'_>,
        error: &str,
        max_attempts: i32,
    ) -> Result<JobFate, StoreError>;
    /// Fails running jobs whose lease expired with no attempts left; returns their ids.
    async fn fail_exhausted(&self, max_attempts: i32) -> Result<Vec<i64>, StoreError>;
    /// Records, under `lease`, the English a job's Chinese was painted from and the milliseconds the translation
    /// took; false when the lease is gone.
    async fn save_translation(
        &self,
        lease: Lease<'_>,
        painted: &Painted<'_>,
    ) -> Result<bool, StoreError>;
    /// Ends a leased job as failed for good for a reason no retry changes (a flagged picture, a refused photo):
    /// `reason` is stored for usage, `notice` is what the follower is told, `jpeg` (a flagged picture kept for
    /// review) is stored when given. False when the lease is gone.
    async fn refuse_job(
        &self,
        lease: Lease<'_>,
        refusal: &JobRefusal<'_>,
    ) -> Result<bool, StoreError>;
    /// What a failed job's follower is told, when the job says (else the generic failure text applies).
    async fn failure_notice(&self, id: i64) -> Result<Option<String>, StoreError>;
    /// Puts the jobs `worker` holds back in the queue without counting the attempt, and lets go of the finished
    /// jobs it was delivering (graceful shutdown).
    async fn release_leases(&self, worker: &str) -> Result<u64, StoreError>;
    /// The status of a job, if it exists.
    async fn job_status(&self, id: i64) -> Result<Option<String>, StoreError>;
    /// The finished picture of a job, if stored.
    async fn job_image(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Leases up to `max` finished jobs to deliver (pictures, and failure notices) of the `accounts` given as
    /// `platform/name` keys, oldest first, skipping held ones and those not due yet (`deliver_after`).
    async fn lease_deliveries(
        &self,
        holder: &str,
        max: i64,
        lease_secs: f64,
        accounts: &[String],
    ) -> Result<Vec<DeliveryTask>, StoreError>;
    /// Extends a delivery lease for `lease_secs` if `lease` still holds the job; false when it was taken over.
    async fn renew_delivery(&self, lease: Lease<'_>, lease_secs: f64) -> Result<bool, StoreError>;
    /// Remembers the media id of an uploaded picture so a retried send does not upload again.
    async fn save_media_id(&self, lease: Lease<'_>, media_id: &str) -> Result<(), StoreError>;
    /// Records how a delivery attempt ended and lets go of the lease; false if `lease` no longer held the job.
    async fn finish_delivery(
        &self,
        lease: Lease<'_>,
        end: DeliveryEnd<'_>,
    ) -> Result<bool, StoreError>;
    /// Leases a finished job to a webhook request that will answer with it; the job's status if it could.
    async fn claim_for_reply(
        &self,
        id: i64,
        holder: &str,
        lease_secs: f64,
    ) -> Result<Option<String>, StoreError>;
    /// Finds and leases the oldest finished job of a follower (the fetch flow).
    async fn claim_waiting(
        &self,
        channel: &str,
        account: &str,
        user_id: &str,
        holder: &str,
        lease_secs: f64,
    ) -> Result<Waiting, StoreError>;
    /// In one transaction: marks a claimed job delivered `via` a passive reply (or its failure told) and stores
    /// `reply` as the answer to the message `(channel, account, dedup_key)`, so its retries repeat it.
    async fn finish_reply(
        &self,
        id: i64,
        holder: &str,
        inbound: &Inbound,
        reply: &Reply,
        via: &str,
    ) -> Result<bool, StoreError>;
    /// Lets go of a claim without delivering.
    async fn release_claim(&self, id: i64, holder: &str) -> Result<(), StoreError>;
    /// The shared token and flags of a platform account (`account`: the platform's credential id, e.g. the AppID).
    async fn account_state(&self, channel: &str, account: &str)
    -> Result<AccountState, StoreError>;
    /// Becomes the one node refreshing the account's token for `hold_ms`, unless another node is already at it.
    async fn claim_token_refresh(
        &self,
        channel: &str,
        account: &str,
        holder: &str,
        now_ms: i64,
        hold_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Ends `holder`'s refresh claim without a token (the refresh failed), so another node may try at once.
    async fn release_token_refresh(
        &self,
        channel: &str,
        account: &str,
        holder: &str,
    ) -> Result<(), StoreError>;
    /// Stores a fresh token and ends the refresh claim.
    async fn save_token(
        &self,
        channel: &str,
        account: &str,
        token: &str,
        expires_ms: i64,
    ) -> Result<(), StoreError>;
    /// Marks the token expired only if it is still `token` (compare-and-swap); returns whether it was.
    async fn expire_token(
        &self,
        channel: &str,
        account: &str,
        token: &str,
    ) -> Result<bool, StoreError>;
    /// Records whether the account can use the customer-service API.
    async fn set_passive_only(
        &self,
        channel: &str,
        account: &str,
        passive_only: bool,
    ) -> Result<(), StoreError>;
    /// Remembers to delete permanent material `media_id` of account (`channel`, `account`: the platform
    /// credential) `due_in_secs` from now.
    async fn schedule_material_cleanup(
        &self,
        channel: &str,
        account: &str,
        media_id: &str,
        due_in_secs: f64,
    ) -> Result<(), StoreError>;
    /// Takes up to `max` due material deletions of the account with the attempts made so far (this one included),
    /// putting each off by `retry_secs` so no other node takes it meanwhile.
    async fn due_material_cleanups(
        &self,
        channel: &str,
        account: &str,
        max: i64,
        retry_secs: f64,
    ) -> Result<Vec<(String, i32)>, StoreError>;
    /// Forgets a material deletion (done, or given up).
    async fn material_cleaned(
        &self,
        channel: &str,
        account: &str,
        media_id: &str,
    ) -> Result<(), StoreError>;
    /// One step of retention: deletes at most `retention.batch` picture bytes, expired held pictures, finished jobs
    /// and messages each, rolling up the daily usage of days about to be pruned first.
    async fn prune(&self, retention: &Retention) -> Result<Pruned, StoreError>;
    /// Sends the ids of jobs that finished (done or failed) to `finished` whenever any node announces them
    /// (PostgreSQL LISTEN; a no-op on SQLite, where only this process paints).
    async fn subscribe_finished(
        &self,
        finished: tokio::sync::broadcast::Sender<i64>,
    ) -> Result<(), StoreError>;
    /// Tells every node that these jobs finished (PostgreSQL NOTIFY; a no-op on SQLite).
    async fn announce_finished(&self, ids: &[i64]) -> Result<(), StoreError>;
    /// Calls `wake.notify_one()` whenever any node announces new jobs (PostgreSQL LISTEN; a no-op on SQLite,
    /// where only this process submits).
    async fn subscribe_jobs(&self, wake: Arc<tokio::sync::Notify>) -> Result<(), StoreError>;
    /// Tells every node's workers that jobs were admitted (PostgreSQL NOTIFY; a no-op on SQLite). Sent outside the
    /// admission transaction: NOTIFY serialises commits, which cut the admission rate by half when it ran inside.
    async fn announce_jobs(&self) -> Result<(), StoreError>;
    /// Calls `changed.notify_one()` whenever any node announces changed campaigns, filter words or follower lists
    /// (PostgreSQL LISTEN; a no-op on SQLite).
    async fn subscribe_catalog(&self, changed: Arc<tokio::sync::Notify>) -> Result<(), StoreError>;
    /// Tells every node to re-read campaigns, filter words and follower lists now (PostgreSQL NOTIFY; a no-op on
    /// SQLite).
    async fn announce_catalog(&self) -> Result<(), StoreError>;
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

/// Takes account (`$1`, `$2`)'s token refresh for `$3` until `$5` unless another holder's claim is still running at
/// `$4` (both DBs).
const CLAIM_TOKEN_REFRESH: &str = "
INSERT INTO channel_accounts (channel, account, refresh_holder, refresh_until_ms) VALUES ($1, $2, $3, $5)
ON CONFLICT (channel, account) DO UPDATE SET refresh_holder = excluded.refresh_holder,
    refresh_until_ms = excluded.refresh_until_ms
WHERE channel_accounts.refresh_until_ms IS NULL OR channel_accounts.refresh_until_ms < $4
RETURNING account";

/// Stores a fresh token and ends any refresh claim (both DBs).
const SAVE_TOKEN: &str = "
INSERT INTO channel_accounts (channel, account, access_token, token_expires_ms) VALUES ($1, $2, $3, $4)
ON CONFLICT (channel, account) DO UPDATE SET access_token = excluded.access_token,
    token_expires_ms = excluded.token_expires_ms, refresh_holder = NULL, refresh_until_ms = NULL";

/// Ends a refresh claim that produced no token (both DBs).
const RELEASE_TOKEN_REFRESH: &str = "
UPDATE channel_accounts SET refresh_holder = NULL, refresh_until_ms = NULL
WHERE channel = $1 AND account = $2 AND refresh_holder = $3";

/// Expires the token only if it is still the failing one (both DBs).
const EXPIRE_TOKEN: &str = "
UPDATE channel_accounts SET token_expires_ms = 0
WHERE channel = $1 AND account = $2 AND access_token = $3 AND token_expires_ms > 0";

/// An account's token and flags (both DBs).
const ACCOUNT_STATE: &str = "SELECT access_token, token_expires_ms, passive_only FROM channel_accounts WHERE channel = $1 AND account = $2";

/// Sets an account's passive-only flag (both DBs).
const SET_PASSIVE_ONLY: &str = "
INSERT INTO channel_accounts (channel, account, passive_only) VALUES ($1, $2, $3)
ON CONFLICT (channel, account) DO UPDATE SET passive_only = excluded.passive_only";

/// An [`AccountState`] from its row, if any.
fn account_state(row: Option<(Option<String>, Option<i64>, bool)>) -> AccountState {
    let Some((token, expires_ms, passive_only)) = row else {
        return AccountState::default();
    };
    AccountState {
        token: token.map(|token| StoredToken {
            token,
            expires_ms: expires_ms.unwrap_or(0),
        }),
        passive_only,
    }
}

/// A stored request's parameters as a fresh [`NewJob`] (new seed, no fast-path window).
type RequestRow = (
    String,
    String,
    i32,
    i32,
    i32,
    String,
    f32,
    Option<String>,
    String,
    String,
    Option<String>,
    f64,
);

fn new_job(
    (
        prompt,
        negative_prompt,
        width,
        height,
        steps,
        scheduler,
        guidance,
        campaign,
        model,
        loras,
        photo,
        strength,
    ): RequestRow,
) -> NewJob {
    let positive = |v: i32| u32::try_from(v).unwrap_or(0);
    NewJob {
        model,
        loras: serde_json::from_str(&loras).unwrap_or_default(),
        prompt,
        negative_prompt,
        width: positive(width),
        height: positive(height),
        steps: positive(steps),
        scheduler,
        guidance,
        campaign,
        seed: None,
        deliver_after_secs: 0.0,
        photo: photo.map(|media_id| PhotoJob { media_id, strength }),
    }
}

/// The follower's most recent request (both DBs).
const LAST_REQUEST: &str = "
SELECT prompt, negative_prompt, width, height, steps, scheduler, guidance, campaign, model, loras, photo_media_id,
    strength FROM jobs
WHERE channel = $1 AND account = $2 AND user_id = $3 ORDER BY id DESC LIMIT 1";

/// Inserts a campaign unless it exists (`$1` name, `$2` definition; both DBs).
const INSERT_CAMPAIGN: &str =
    "INSERT INTO campaigns (name, definition) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";

/// Records a revision (`$1` name, `$2` definition, `$3` who; both DBs).
const INSERT_REVISION: &str =
    "INSERT INTO campaign_revisions (name, definition, changed_by) VALUES ($1, $2, $3)";

/// Whether a save should write, given what is stored now.
fn campaign_changes(existing: Option<&str>, definition: &str, only_if_missing: bool) -> bool {
    match existing {
        None => true,
        Some(existing) => !only_if_missing && existing != definition,
    }
}

/// Reads and locks (creating it when missing) a follower's usage row. Both DBs.
const LOCK_USAGE: &str = "
INSERT INTO follower_usage (channel, account, user_id) VALUES ($1, $2, $3)
ON CONFLICT (channel, account, user_id) DO UPDATE SET in_flight = follower_usage.in_flight
RETURNING day, day_count, minute, minute_count, in_flight";

/// Requests admitted for campaign `$1` since `$2`. Both DBs.
const CAMPAIGN_TODAY: &str = "SELECT count(*) FROM jobs WHERE campaign = $1 AND created_at >= $2";

/// Counts an admitted job in the follower's usage row (`$1`-`$3` follower, `$4` day, `$5` minute). Both DBs.
const COUNT_USAGE: &str = "
UPDATE follower_usage SET
    day_count = CASE WHEN day = $4 THEN day_count + 1 ELSE 1 END, day = $4,
    minute_count = CASE WHEN minute = $5 THEN minute_count + 1 ELSE 1 END, minute = $5,
    in_flight = in_flight + 1
WHERE channel = $1 AND account = $2 AND user_id = $3";

/// Frees the in-flight slot of job `$1`'s follower when the job is done or failed for good. Both DBs.
const RELEASE_IN_FLIGHT: &str = "
UPDATE follower_usage SET in_flight = CASE WHEN in_flight > 0 THEN in_flight - 1 ELSE 0 END
WHERE (channel, account, user_id) = (SELECT channel, account, user_id FROM jobs WHERE id = $1)";

/// The follower's requests on day `$4`. Both DBs.
const REQUESTS_TODAY: &str = "
SELECT CASE WHEN day = $4 THEN day_count ELSE 0 END FROM follower_usage
WHERE channel = $1 AND account = $2 AND user_id = $3";

/// A claimed `(id, status)` as [`Waiting`].
fn waiting((job_id, status): (i64, String)) -> Waiting {
    if status == "failed" {
        Waiting::Failed { job_id }
    } else {
        Waiting::Picture { job_id }
    }
}

fn encode_reply(reply: &Reply) -> String {
    serde_json::to_string(reply).expect("a Reply always serialises; this is a bug")
}

fn decode_reply(stored: &str) -> Result<Reply, StoreError> {
    serde_json::from_str(stored).map_err(|e| StoreError::Corrupt(format!("reply: {e}")))
}
