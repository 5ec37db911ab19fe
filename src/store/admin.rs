//! What the console stores and reads: its users, sessions, failed logins and audit log; filter words with who added
//! them; follower allow/deny lists; job lists and details; preview jobs; workers; hourly and per-follower usage.
//! The SQL is written once and run on both databases by [`impl_admin_store!`] (SQLite gets its parameters numbered
//! and its times as text; the few statements that need a dialect's date functions are passed in per backend).

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{NewJob, StoreError};

/// A console user.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AdminUser {
    /// Login name.
    pub name: String,
    /// `admin`, `editor` or `viewer`.
    pub role: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// A disabled user cannot log in and loses its sessions.
    pub disabled: bool,
    /// When the user was created.
    pub created_at: OffsetDateTime,
}

/// A live session: whose, with what role, and the CSRF token its forms carry.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AdminSession {
    /// The user.
    pub user_name: String,
    /// The user's role now.
    pub role: String,
    /// The token every form of this session must send back.
    pub csrf: String,
}

/// Failed logins in the throttling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct LoginFailures {
    /// For this user name.
    pub by_user: i64,
    /// From this address.
    pub by_address: i64,
    /// The oldest that counts (when the window frees a slot).
    pub oldest: Option<OffsetDateTime>,
}

/// A change to record in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit<'a> {
    /// Who.
    pub actor: &'a str,
    /// What kind of change (`campaign.save`, `word.add`, `user.save`, …).
    pub action: &'a str,
    /// What it changed (a campaign's name, a word, a user).
    pub target: &'a str,
    /// Before the change.
    pub before: Option<&'a str>,
    /// After the change.
    pub after: Option<&'a str>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: i64,
    /// When.
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// What kind of change.
    pub action: String,
    /// What it changed.
    pub target: String,
    /// Before.
    pub before: Option<String>,
    /// After.
    pub after: Option<String>,
}

/// A filter word added in the database.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WordEntry {
    /// The word.
    pub word: String,
    /// Who added it.
    pub added_by: String,
    /// When.
    pub added_at: OffsetDateTime,
}

/// A worker as it last said what it paints.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkerRow {
    /// Its lease name.
    pub id: String,
    /// Models (JSON array).
    pub models: String,
    /// LoRAs (JSON array).
    pub loras: String,
    /// When it last said so.
    pub seen_at: OffsetDateTime,
}

/// Requests and paintings in one hour of a day (Asia/Shanghai).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct HourRow {
    /// 0 to 23.
    pub hour: i64,
    /// Painting requests received.
    pub requests: i64,
    /// Pictures finished.
    pub painted: i64,
}

/// A follower's usage over a period.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FollowerUsage {
    /// Channel.
    pub channel: String,
    /// Account.
    pub account: String,
    /// Follower id.
    pub user_id: String,
    /// Painting requests.
    pub requests: i64,
    /// Admitted.
    pub admitted: i64,
    /// Delivered.
    pub delivered: i64,
}

/// A job with its timeline, for the console.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobDetail {
    /// Job id.
    pub id: i64,
    /// Channel.
    pub channel: String,
    /// Account.
    pub account: String,
    /// Follower (or, for a preview, the console user).
    pub user_id: String,
    /// Campaign.
    pub campaign: Option<String>,
    /// Prompt.
    pub prompt: String,
    /// Negative prompt.
    pub negative_prompt: String,
    /// Model.
    pub model: String,
    /// LoRAs (canonical JSON).
    pub loras: String,
    /// Size.
    pub width: i32,
    /// Size.
    pub height: i32,
    /// Steps.
    pub steps: i32,
    /// Seed (once leased).
    pub seed: Option<i64>,
    /// Status.
    pub status: crate::model::JobStatus,
    /// Leases taken.
    pub attempts: i32,
    /// Painting error.
    pub error: Option<String>,
    /// Why a finished picture waits for 取图.
    pub held: Option<String>,
    /// Last delivery error.
    pub delivery_error: Option<String>,
    /// How it was delivered.
    pub delivered_via: Option<String>,
    /// Admitted.
    pub created_at: OffsetDateTime,
    /// First leased.
    pub started_at: Option<OffsetDateTime>,
    /// Painted (or failed).
    pub finished_at: Option<OffsetDateTime>,
    /// Delivered.
    pub delivered_at: Option<OffsetDateTime>,
    /// Painted together with.
    pub batch_size: Option<i32>,
    /// Whether a picture is stored.
    pub has_image: bool,
    /// The English the prompt was painted from, when it was translated.
    pub painted_prompt: Option<String>,
    /// Milliseconds the translation took.
    pub translate_ms: Option<f64>,
    /// img2img: the photo's media id.
    pub photo_media_id: Option<String>,
    /// img2img strength (0 = from text).
    pub strength: f64,
    /// Why it failed for good, when a reason is known (`unsafe`, `photo_too_large`, …).
    pub fail_reason: Option<String>,
}

impl JobDetail {
    /// The timeline in words: queue wait, painting, delivery (`"queued 1.2 s · painted 3.4 s · delivered 0.5 s"`).
    pub fn timeline(&self) -> String {
        let secs = |from: OffsetDateTime, to: OffsetDateTime| {
            format!("{:.1} s", (to - from).as_seconds_f64())
        };
        let mut parts = Vec::new();
        if let Some(started) = self.started_at {
            parts.push(format!("waited {}", secs(self.created_at, started)));
            if let Some(ms) = self.translate_ms {
                parts.push(format!("translated {ms:.0} ms"));
            }
            if let Some(finished) = self.finished_at {
                parts.push(format!("painted {}", secs(started, finished)));
                if let Some(delivered) = self.delivered_at {
                    parts.push(format!("delivered {}", secs(finished, delivered)));
                }
            }
        }
        parts.join(" · ")
    }

    /// The admission time, short (`MM-DD HH:MM:SS` UTC+8).
    pub fn when(&self) -> String {
        let at = self.created_at.to_offset(time::macros::offset!(+8));
        format!(
            "{:02}-{:02} {:02}:{:02}:{:02}",
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        )
    }
}

/// Which jobs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this campaign.
    pub campaign: Option<String>,
    /// Only this follower.
    pub user_id: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// A follower allowed or denied from the console.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Listing {
    /// Channel.
    pub channel: String,
    /// Account.
    pub account: String,
    /// Follower id.
    pub user_id: String,
    /// `allow` or `deny`.
    pub listing: String,
}

/// The console's storage.
#[async_trait]
pub trait AdminStore: Send + Sync {
    /// Users that can log in.
    async fn admin_user_count(&self) -> Result<i64, StoreError>;
    /// One user.
    async fn admin_user(&self, name: &str) -> Result<Option<AdminUser>, StoreError>;
    /// Every user, by name.
    async fn admin_users(&self) -> Result<Vec<AdminUser>, StoreError>;
    /// Creates or changes a user; `password_hash` `None` keeps the current one. Changing a user ends its sessions.
    async fn save_admin_user(
        &self,
        name: &str,
        role: &str,
        password_hash: Option<&str>,
        disabled: bool,
    ) -> Result<(), StoreError>;
    /// Starts a session (the cookie's token stored hashed).
    async fn create_session(
        &self,
        token_hash: &str,
        user: &str,
        csrf: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// The session of a token, if it is live and its user enabled.
    async fn session(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<AdminSession>, StoreError>;
    /// Ends a session.
    async fn end_session(&self, token_hash: &str) -> Result<(), StoreError>;
    /// Forgets sessions expired by `now` and failed logins from before `failures_before`.
    async fn prune_admin(
        &self,
        now: OffsetDateTime,
        failures_before: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Records a failed login.
    async fn record_login_failure(
        &self,
        user: &str,
        address: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Failed logins for `user` and from `address` since `since`.
    async fn login_failures(
        &self,
        user: &str,
        address: &str,
        since: OffsetDateTime,
    ) -> Result<LoginFailures, StoreError>;
    /// Records a change.
    async fn audit(&self, entry: &NewAudit<'_>) -> Result<(), StoreError>;
    /// The newest audit entries.
    async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError>;
    /// Filter words of the table, with who added them.
    async fn filter_word_entries(&self) -> Result<Vec<WordEntry>, StoreError>;
    /// Adds a filter word; false if it was there.
    async fn add_filter_word(&self, word: &str, by: &str) -> Result<bool, StoreError>;
    /// Removes a filter word; false if it was not there.
    async fn remove_filter_word(&self, word: &str) -> Result<bool, StoreError>;
    /// Every worker that said what it paints.
    async fn workers(&self) -> Result<Vec<WorkerRow>, StoreError>;
    /// Requests and paintings per hour of `day` (`YYYY-MM-DD`, Asia/Shanghai).
    async fn usage_by_hour(&self, day: &str) -> Result<Vec<HourRow>, StoreError>;
    /// The followers with the most admitted requests since `since` (`YYYY-MM-DD`).
    async fn top_followers(
        &self,
        since: &str,
        limit: i64,
    ) -> Result<Vec<FollowerUsage>, StoreError>;
    /// Jobs, newest first.
    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobDetail>, StoreError>;
    /// One job.
    async fn job(&self, id: i64) -> Result<Option<JobDetail>, StoreError>;
    /// Lets a held picture be delivered again; false if it was not held.
    async fn release_hold(&self, id: i64) -> Result<bool, StoreError>;
    /// Queues a preview job for the console (leased before followers' jobs); returns its id.
    async fn submit_preview(&self, job: &NewJob, by: &str) -> Result<i64, StoreError>;
    /// Every follower allowed or denied from the console.
    async fn follower_lists(&self) -> Result<Vec<Listing>, StoreError>;
    /// Allows (`Some("allow")`), denies (`Some("deny")`) or unlists (`None`) a follower.
    async fn set_follower_listing(
        &self,
        follower: (&str, &str, &str),
        listing: Option<&str>,
        by: &str,
    ) -> Result<(), StoreError>;
}

/// The channel and account preview jobs (and their message rows, kind `preview`) are filed under; previews are
/// held (`held = 'preview'`), so no deliverer ever takes them.
pub const PREVIEW_CHANNEL: &str = "console";
/// See [`PREVIEW_CHANNEL`].
pub const PREVIEW_ACCOUNT: &str = "preview";

/// Columns of [`JobDetail`] from `jobs j`.
pub(super) const JOB_DETAIL: &str = "j.id, j.channel, j.account, j.user_id, j.campaign, j.prompt, j.negative_prompt,
    j.model, j.loras, j.width, j.height, j.steps, j.seed, j.status, j.attempts, j.error, j.held, j.delivery_error,
    j.delivered_via, j.created_at, j.started_at, j.finished_at, j.delivered_at, j.batch_size,
    EXISTS (SELECT 1 FROM job_images i WHERE i.job_id = j.id) AS has_image, j.painted_prompt, j.translate_ms,
    j.photo_media_id, j.strength, j.fail_reason";

/// Implements [`AdminStore`] for a store type: `$read`/`$write` are its pool fields, `$sql` prepares a statement
/// for its dialect, `$time` turns an `OffsetDateTime` into what it binds, `$by_hour` is its hourly usage query.
macro_rules! impl_admin_store {
    ($store:ty, $read:ident, $write:ident, $sql:expr, $time:expr, $by_hour:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::admin::AdminStore for $store {
            async fn admin_user_count(&self) -> Result<i64, StoreError> {
                let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM admin_users WHERE NOT disabled")
                    .fetch_one(&self.$read)
                    .await?;
                Ok(n)
            }

            async fn admin_user(&self, name: &str) -> Result<Option<$crate::store::admin::AdminUser>, StoreError> {
                Ok(sqlx::query_as(&($sql)(
                    "SELECT name, role, password_hash, disabled, created_at FROM admin_users WHERE name = $1",
                ))
                .bind(name)
                .fetch_optional(&self.$read)
                .await?)
            }

            async fn admin_users(&self) -> Result<Vec<$crate::store::admin::AdminUser>, StoreError> {
                Ok(sqlx::query_as(
                    "SELECT name, role, password_hash, disabled, created_at FROM admin_users ORDER BY name",
                )
                .fetch_all(&self.$read)
                .await?)
            }

            async fn save_admin_user(
                &self,
                name: &str,
                role: &str,
                password_hash: Option<&str>,
                disabled: bool,
            ) -> Result<(), StoreError> {
                let mut tx = self.$write.begin().await?;
                sqlx::query(&($sql)(
                    "INSERT INTO admin_users (name, role, password_hash, disabled) VALUES ($1, $2, coalesce($3, ''), $4)
                     ON CONFLICT (name) DO UPDATE SET role = excluded.role, disabled = excluded.disabled,
                         password_hash = CASE WHEN $3 IS NULL THEN admin_users.password_hash ELSE excluded.password_hash END",
                ))
                .bind(name)
                .bind(role)
                .bind(password_hash)
                .bind(disabled)
                .execute(&mut *tx)
                .await?;
                sqlx::query(&($sql)("DELETE FROM admin_sessions WHERE user_name = $1"))
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_session(
                &self,
                token_hash: &str,
                user: &str,
                csrf: &str,
                expires_at: time::OffsetDateTime,
            ) -> Result<(), StoreError> {
                sqlx::query(&($sql)(
                    "INSERT INTO admin_sessions (token_hash, user_name, csrf, expires_at) VALUES ($1, $2, $3, $4)",
                ))
                .bind(token_hash)
                .bind(user)
                .bind(csrf)
                .bind(($time)(expires_at))
                .execute(&self.$write)
                .await?;
                Ok(())
            }

            async fn session(
                &self,
                token_hash: &str,
                now: time::OffsetDateTime,
            ) -> Result<Option<$crate::store::admin::AdminSession>, StoreError> {
                Ok(sqlx::query_as(&($sql)(
                    "SELECT u.name AS user_name, u.role, s.csrf FROM admin_sessions s
                     JOIN admin_users u ON u.name = s.user_name
                     WHERE s.token_hash = $1 AND s.expires_at > $2 AND NOT u.disabled",
                ))
                .bind(token_hash)
                .bind(($time)(now))
                .fetch_optional(&self.$read)
                .await?)
            }

            async fn end_session(&self, token_hash: &str) -> Result<(), StoreError> {
                sqlx::query(&($sql)("DELETE FROM admin_sessions WHERE token_hash = $1"))
                    .bind(token_hash)
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn prune_admin(
                &self,
                now: time::OffsetDateTime,
                failures_before: time::OffsetDateTime,
            ) -> Result<(), StoreError> {
                sqlx::query(&($sql)("DELETE FROM admin_sessions WHERE expires_at < $1"))
                    .bind(($time)(now))
                    .execute(&self.$write)
                    .await?;
                sqlx::query(&($sql)("DELETE FROM admin_login_failures WHERE at < $1"))
                    .bind(($time)(failures_before))
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn record_login_failure(
                &self,
                user: &str,
                address: &str,
                at: time::OffsetDateTime,
            ) -> Result<(), StoreError> {
                sqlx::query(&($sql)(
                    "INSERT INTO admin_login_failures (user_name, address, at) VALUES ($1, $2, $3)",
                ))
                .bind(user)
                .bind(address)
                .bind(($time)(at))
                .execute(&self.$write)
                .await?;
                Ok(())
            }

            async fn login_failures(
                &self,
                user: &str,
                address: &str,
                since: time::OffsetDateTime,
            ) -> Result<$crate::store::admin::LoginFailures, StoreError> {
                Ok(sqlx::query_as(&($sql)(
                    "SELECT (SELECT count(*) FROM admin_login_failures WHERE user_name = $1 AND at > $3) AS by_user,
                            (SELECT count(*) FROM admin_login_failures WHERE address = $2 AND at > $3) AS by_address,
                            (SELECT min(at) FROM admin_login_failures
                             WHERE (user_name = $1 OR address = $2) AND at > $3) AS oldest",
                ))
                .bind(user)
                .bind(address)
                .bind(($time)(since))
                .fetch_one(&self.$read)
                .await?)
            }

            async fn audit(&self, entry: &$crate::store::admin::NewAudit<'_>) -> Result<(), StoreError> {
                sqlx::query(&($sql)(
                    "INSERT INTO admin_audit (actor, action, target, before, after) VALUES ($1, $2, $3, $4, $5)",
                ))
                .bind(entry.actor)
                .bind(entry.action)
                .bind(entry.target)
                .bind(entry.before)
                .bind(entry.after)
                .execute(&self.$write)
                .await?;
                Ok(())
            }

            async fn audit_log(&self, limit: i64) -> Result<Vec<$crate::store::admin::AuditEntry>, StoreError> {
                Ok(sqlx::query_as(&($sql)(
                    "SELECT id, at, actor, action, target, before, after FROM admin_audit ORDER BY id DESC LIMIT $1",
                ))
                .bind(limit)
                .fetch_all(&self.$read)
                .await?)
            }

            async fn filter_word_entries(&self) -> Result<Vec<$crate::store::admin::WordEntry>, StoreError> {
                Ok(sqlx::query_as("SELECT word, added_by, added_at FROM filter_words ORDER BY word")
                    .fetch_all(&self.$read)
                    .await?)
            }

            async fn add_filter_word(&self, word: &str, by: &str) -> Result<bool, StoreError> {
                Ok(sqlx::query(&($sql)(
                    "INSERT INTO filter_words (word, added_by) VALUES ($1, $2) ON CONFLICT (word) DO NOTHING",
                ))
                .bind(word)
                .bind(by)
                .execute(&self.$write)
                .await?
                .rows_affected()
                    > 0)
            }

            async fn remove_filter_word(&self, word: &str) -> Result<bool, StoreError> {
                Ok(sqlx::query(&($sql)("DELETE FROM filter_words WHERE word = $1"))
                    .bind(word)
                    .execute(&self.$write)
                    .await?
                    .rows_affected()
                    > 0)
            }

            async fn workers(&self) -> Result<Vec<$crate::store::admin::WorkerRow>, StoreError> {
                Ok(sqlx::query_as("SELECT id, models, loras, seen_at FROM workers ORDER BY id")
                    .fetch_all(&self.$read)
                    .await?)
            }

            async fn usage_by_hour(&self, day: &str) -> Result<Vec<$crate::store::admin::HourRow>, StoreError> {
                Ok(sqlx::query_as(&($sql)($by_hour))
                    .bind(day)
                    .fetch_all(&self.$read)
                    .await?)
            }

            async fn top_followers(
                &self,
                since: &str,
                limit: i64,
            ) -> Result<Vec<$crate::store::admin::FollowerUsage>, StoreError> {
                Ok(sqlx::query_as(&($sql)(
                    "SELECT channel, account, user_id, CAST(sum(requests) AS BIGINT) AS requests,
                            CAST(sum(admitted) AS BIGINT) AS admitted, CAST(sum(delivered) AS BIGINT) AS delivered
                     FROM usage_by_user WHERE CAST(day AS TEXT) >= $1 AND channel <> 'console'
                     GROUP BY channel, account, user_id ORDER BY admitted DESC, requests DESC LIMIT $2",
                ))
                .bind(since)
                .bind(limit)
                .fetch_all(&self.$read)
                .await?)
            }

            async fn jobs(
                &self,
                filter: &$crate::store::admin::JobFilter,
            ) -> Result<Vec<$crate::store::admin::JobDetail>, StoreError> {
                Ok(sqlx::query_as(&($sql)(&format!(
                    "SELECT {} FROM jobs j
                     WHERE ($1 IS NULL OR j.status = $1) AND ($2 IS NULL OR j.campaign = $2)
                       AND ($3 IS NULL OR j.user_id = $3)
                     ORDER BY j.id DESC LIMIT $4",
                    $crate::store::admin::JOB_DETAIL
                )))
                .bind(filter.status.as_deref())
                .bind(filter.campaign.as_deref())
                .bind(filter.user_id.as_deref())
                .bind(filter.limit)
                .fetch_all(&self.$read)
                .await?)
            }

            async fn job(&self, id: i64) -> Result<Option<$crate::store::admin::JobDetail>, StoreError> {
                Ok(sqlx::query_as(&($sql)(&format!(
                    "SELECT {} FROM jobs j WHERE j.id = $1",
                    $crate::store::admin::JOB_DETAIL
                )))
                .bind(id)
                .fetch_optional(&self.$read)
                .await?)
            }

            async fn release_hold(&self, id: i64) -> Result<bool, StoreError> {
                Ok(sqlx::query(&($sql)(
                    "UPDATE jobs SET held = NULL, delivery_attempts = 0, deliver_after = NULL, delivery_error = NULL
                     WHERE id = $1 AND status = 'done' AND held IS NOT NULL",
                ))
                .bind(id)
                .execute(&self.$write)
                .await?
                .rows_affected()
                    > 0)
            }

            async fn submit_preview(&self, job: &$crate::model::NewJob, by: &str) -> Result<i64, StoreError> {
                let mut tx = self.$write.begin().await?;
                let dedup_key = format!(
                    "preview:{by}:{}:{:08x}",
                    time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
                    rand::random::<u32>()
                );
                let (inbound_id,): (i64,) = sqlx::query_as(&($sql)(
                    "INSERT INTO inbound_messages (channel, account, dedup_key, user_id, kind, reply, decision, campaign)
                     VALUES ($1, $2, $3, $4, 'preview', $5, 'admitted', $6) RETURNING id",
                ))
                .bind($crate::store::admin::PREVIEW_CHANNEL)
                .bind($crate::store::admin::PREVIEW_ACCOUNT)
                .bind(&dedup_key)
                .bind(by)
                .bind(super::encode_reply(&$crate::model::Reply::None))
                .bind(job.campaign.as_deref())
                .fetch_one(&mut *tx)
                .await?;
                let (id,): (i64,) = sqlx::query_as(&($sql)(
                    "INSERT INTO jobs (channel, account, user_id, source_msg_id, prompt, inbound_id, negative_prompt,
                                       width, height, steps, scheduler, guidance, seed, campaign, model, loras,
                                       priority, held)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 1, 'preview')
                     RETURNING id",
                ))
                .bind($crate::store::admin::PREVIEW_CHANNEL)
                .bind($crate::store::admin::PREVIEW_ACCOUNT)
                .bind(by)
                .bind(&dedup_key)
                .bind(&job.prompt)
                .bind(inbound_id)
                .bind(&job.negative_prompt)
                .bind(job.width as i32)
                .bind(job.height as i32)
                .bind(job.steps as i32)
                .bind(&job.scheduler)
                .bind(job.guidance)
                .bind(job.seed)
                .bind(job.campaign.as_deref())
                .bind(&job.model)
                .bind($crate::model::loras_json(&job.loras))
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(id)
            }

            async fn follower_lists(&self) -> Result<Vec<$crate::store::admin::Listing>, StoreError> {
                Ok(sqlx::query_as("SELECT channel, account, user_id, listing FROM follower_lists")
                    .fetch_all(&self.$read)
                    .await?)
            }

            async fn set_follower_listing(
                &self,
                (channel, account, user_id): (&str, &str, &str),
                listing: Option<&str>,
                by: &str,
            ) -> Result<(), StoreError> {
                let insert = ($sql)(
                    "INSERT INTO follower_lists (channel, account, user_id, listing, set_by) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (channel, account, user_id) DO UPDATE SET listing = excluded.listing,
                         set_by = excluded.set_by",
                );
                let delete = ($sql)("DELETE FROM follower_lists WHERE channel = $1 AND account = $2 AND user_id = $3");
                let query = match listing {
                    Some(listing) => sqlx::query(&insert)
                        .bind(channel)
                        .bind(account)
                        .bind(user_id)
                        .bind(listing)
                        .bind(by),
                    None => sqlx::query(&delete).bind(channel).bind(account).bind(user_id),
                };
                query.execute(&self.$write).await?;
                Ok(())
            }
        }
    };
}

pub(super) use impl_admin_store;
