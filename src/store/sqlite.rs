//! The SQLite store: the embedded single-node default. One writer connection serialises writes in-process;
//! readers use their own pool.

use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{Notify, broadcast};

use super::{
    ACCOUNT_STATE, AccountState, Admission, CAMPAIGN_TODAY, CLAIM_TOKEN_REFRESH, COUNT_USAGE,
    CampaignRevision, Capabilities, Counts, DbHealth, DeliveryEnd, DeliveryTask, DeliveryWait,
    EXPIRE_TOKEN, INSERT_CAMPAIGN, INSERT_REVISION, JobFate, JobRefusal, JobRow, JobTiming,
    LAST_REQUEST, LOCK_USAGE, Lease, LeasedJob, LockedUsage, ModelQueue, NewJob, Painted, Pruned,
    QueueStatus, RELEASE_IN_FLIGHT, RELEASE_TOKEN_REFRESH, REQUESTS_TODAY, RequestRow, Retention,
    SAVE_TOKEN, SET_PASSIVE_ONLY, Store, StoreError, StoredCampaign, Submission, UsageRow, Waiting,
    account_state, campaign_changes, decode_reply, encode_reply, fate, limits, new_job,
    refused_submission, source_msg_id, waiting,
};
use crate::config::DatabaseSettings;
use crate::model::loras_json;
use crate::model::{Inbound, Reply};

/// The current time in the format every SQLite timestamp column uses (so text comparison orders them).
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
/// Now plus `?3` seconds.
const UNTIL: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', ?3))";
/// Now plus the seconds in parameter `?n`.
fn now_plus(n: usize) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', ?{n}))")
}
/// A job the follower is owed something for: a picture, or word that it failed (held ones included).
const OWED: &str = "(status = 'done' OR (status = 'failed' AND notified_at IS NULL))";
/// Not leased, or the lease expired.
const FREE: &str = "(leased_until IS NULL OR leased_until < strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))";
/// The SET list that marks a leased job delivered (the parameter `via` says how) or, for a failed job, its
/// failure told.
fn sent(via: &str) -> String {
    format!(
        "leased_by = NULL, leased_until = NULL, delivery_error = NULL,
         status = CASE WHEN status = 'done' THEN 'delivered' ELSE status END,
         delivered_at = CASE WHEN status = 'done' THEN {NOW} END,
         delivered_via = CASE WHEN status = 'done' THEN {via} END,
         notified_at = CASE WHEN status = 'failed' THEN {NOW} END"
    )
}
/// The painting lease `?1` (job), `?2` (holder), `?3` (attempt) still holds the job.
const PAINT_LEASE: &str = "id = ?1 AND leased_by = ?2 AND attempts = ?3 AND status = 'running'";
/// The delivery lease `?1` (job), `?2` (holder), `?3` (delivery attempt) still holds the job.
const DELIVERY_LEASE: &str = "id = ?1 AND leased_by = ?2 AND delivery_attempts = ?3";
/// `at` in the format every SQLite timestamp column uses.
fn timestamp(at: time::OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.millisecond()
    )
}

/// The shared PostgreSQL-style statements with SQLite's explicitly numbered parameters.
fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}
/// A job a worker may lease: queued, or running with an expired lease, with attempts left (`?4`).
const ELIGIBLE: &str = "(status = 'queued' OR (status = 'running' AND leased_until < strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))) AND attempts < ?4";
/// [`ELIGIBLE`] for the alias `j`.
const ELIGIBLE_J: &str = "(j.status = 'queued' OR (j.status = 'running' AND j.leased_until < strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))) AND j.attempts < ?4";

/// Whether live worker `w` (seen in the last 30 s) paints job `j`'s model with all its LoRAs.
const PAINTS: &str = "w.seen_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 seconds')
    AND EXISTS (SELECT 1 FROM json_each(w.models) m WHERE m.value = j.model)
    AND NOT EXISTS (SELECT 1 FROM json_each(j.loras) l
                    WHERE json_extract(l.value, '$.name') NOT IN (SELECT value FROM json_each(w.loras)))";

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

    async fn health(&self) -> Result<DbHealth, StoreError> {
        let known = sqlx::migrate!("migrations/sqlite")
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        let table: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.writer)
        .await?;
        let applied = match table {
            Some(_) => {
                sqlx::query_as::<_, (Option<i64>,)>(
                    "SELECT max(version) FROM _sqlx_migrations WHERE success",
                )
                .fetch_one(&self.writer)
                .await?
                .0
            }
            None => None,
        };
        let (secs,): (f64,) = sqlx::query_as("SELECT (julianday('now') - 2440587.5) * 86400.0")
            .fetch_one(&self.writer)
            .await?;
        let now = time::OffsetDateTime::from_unix_timestamp_nanos((secs * 1e9) as i128)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(DbHealth {
            applied,
            known,
            now,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn submit(&self, original: &Submission<'_>) -> Result<Admission, StoreError> {
        let m = original.inbound;
        let mut tx = self.writer.begin().await?;
        // The one writer connection serialises admissions, so deciding the limits here is atomic.
        let check = original.job.as_ref().and(original.limits.as_ref());
        let refused = match check {
            Some(check) => {
                let usage: LockedUsage = sqlx::query_as(&numbered(LOCK_USAGE))
                    .bind(m.channel)
                    .bind(&m.account)
                    .bind(&m.user_id)
                    .fetch_one(&mut *tx)
                    .await?;
                let campaign = original.job.as_ref().and_then(|j| j.campaign.as_deref());
                let campaign_today = match campaign {
                    Some(campaign) if check.limits.campaign_per_day > 0 => {
                        let (n,): (i64,) = sqlx::query_as(&numbered(CAMPAIGN_TODAY))
                            .bind(campaign)
                            .bind(timestamp(limits::day_start(check.now)))
                            .fetch_one(&mut *tx)
                            .await?;
                        n
                    }
                    _ => 0,
                };
                limits::decide(
                    &check.limits,
                    &usage.usage(check, campaign_today),
                    check.listing,
                )
                .err()
                .map(|r| refused_submission(original, check, r))
            }
            None => None,
        };
        let s = refused.as_ref().unwrap_or(original);
        let inserted: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO inbound_messages (channel, account, dedup_key, user_id, msg_id, kind, reply,
                                           decision, campaign, decision_detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
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
        .bind(s.decision())
        .bind(s.campaign())
        .bind(s.detail())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((inbound_id,)) = inserted else {
            let (reply, job_id): (String, Option<i64>) = sqlx::query_as(
                "SELECT CASE WHEN m.decision = 'admitted' AND j.id IS NULL AND m.refusal_reply IS NOT NULL
                             THEN m.refusal_reply ELSE m.reply END, j.id
                 FROM inbound_messages m LEFT JOIN jobs j ON j.inbound_id = m.id
                 WHERE m.channel = ?1 AND m.account = ?2 AND m.dedup_key = ?3",
            )
            .bind(m.channel)
            .bind(&m.account)
            .bind(&m.dedup_key)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Admission::Duplicate {
                reply: decode_reply(&reply)?,
                job_id,
            });
        };
        let job_id = match &s.job {
            Some(job) => {
                let (id,): (i64,) = sqlx::query_as(
                    &format!("INSERT INTO jobs (channel, account, user_id, source_msg_id, prompt, inbound_id,
                                       negative_prompt, width, height, steps, scheduler, guidance, deliver_after, seed, campaign,
                                       model, loras, photo_media_id, strength)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, {}, ?14, ?15, ?16, ?17, ?18, ?19) RETURNING id", now_plus(13)),
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
                .bind(job.deliver_after_secs)
                .bind(job.seed)
                .bind(&job.campaign)
                .bind(&job.model)
                .bind(loras_json(&job.loras))
                .bind(job.photo.as_ref().map(|p| p.media_id.as_str()))
                .bind(job.photo.as_ref().map_or(0.0, |p| p.strength))
                .fetch_one(&mut *tx)
                .await?;
                Some(id)
            }
            None => None,
        };
        if let (Some(check), Some(_)) = (check, job_id) {
            sqlx::query(&numbered(COUNT_USAGE))
                .bind(m.channel)
                .bind(&m.account)
                .bind(&m.user_id)
                .bind(limits::day_number(check.now))
                .bind(limits::minute(check.now))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(match refused {
            Some(refused) => Admission::Refused {
                reply: refused.reply,
            },
            None => Admission::Accepted { job_id },
        })
    }

    async fn recent_jobs(&self, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, channel, account, user_id, source_msg_id, prompt, status, created_at, campaign, model,
                 loras, batch_size, notified_at IS NOT NULL AS notified
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

    async fn requests_today(
        &self,
        channel: &str,
        account: &str,
        user_id: &str,
        now: time::OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let row: Option<(i32,)> = sqlx::query_as(&numbered(REQUESTS_TODAY))
            .bind(channel)
            .bind(account)
            .bind(user_id)
            .bind(limits::day_number(now))
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map_or(0, |(n,)| i64::from(n)))
    }

    async fn queue_status(
        &self,
        channel: &str,
        account: &str,
        user_id: &str,
    ) -> Result<QueueStatus, StoreError> {
        Ok(sqlx::query_as(&format!(
            "WITH mine AS (
                 SELECT min(id) AS first, count(*) AS open FROM jobs
                 WHERE channel = ?1 AND account = ?2 AND user_id = ?3 AND status IN ('queued', 'running'))
             SELECT mine.open AS open,
                 (SELECT count(*) FROM jobs WHERE status IN ('queued', 'running') AND id < mine.first) AS ahead,
                 (SELECT count(*) FROM jobs WHERE finished_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 minutes')) AS finished_recently,
                 (SELECT j.model FROM jobs j
                  WHERE j.channel = ?1 AND j.account = ?2 AND j.user_id = ?3 AND j.status = 'queued'
                    AND NOT EXISTS (SELECT 1 FROM workers w WHERE {PAINTS})
                  ORDER BY j.id LIMIT 1) AS waiting_for_model,
                 (SELECT painted_prompt FROM jobs
                  WHERE channel = ?1 AND account = ?2 AND user_id = ?3 ORDER BY id DESC LIMIT 1) AS painted_prompt
             FROM mine",
        ))
        .bind(channel)
        .bind(account)
        .bind(user_id)
        .fetch_one(&self.reader)
        .await?)
    }

    async fn last_request(
        &self,
        channel: &str,
        account: &str,
        user_id: &str,
    ) -> Result<Option<NewJob>, StoreError> {
        let row: Option<RequestRow> = sqlx::query_as(&numbered(LAST_REQUEST))
            .bind(channel)
            .bind(account)
            .bind(user_id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(new_job))
    }

    async fn filter_words(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT word FROM filter_words ORDER BY word")
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.into_iter().map(|(w,)| w).collect())
    }

    async fn usage(&self, since: &str) -> Result<Vec<UsageRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT day AS day, campaign, channel, account, requests, admitted, limited, blocked, painted,
                    delivered, failed, flagged, p50_secs, p95_secs
             FROM usage_daily WHERE day >= ?1 ORDER BY day DESC, campaign, channel, account",
        )
        .bind(since)
        .fetch_all(&self.reader)
        .await?)
    }

    async fn delivery_waits(&self, since: &str) -> Result<Vec<DeliveryWait>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT day, campaign, channel, account, secs FROM usage_waits WHERE day >= ?1",
        )
        .bind(since)
        .fetch_all(&self.reader)
        .await?)
    }

    async fn campaigns(&self) -> Result<Vec<StoredCampaign>, StoreError> {
        Ok(
            sqlx::query_as("SELECT name, definition FROM campaigns ORDER BY name")
                .fetch_all(&self.reader)
                .await?,
        )
    }

    async fn save_campaign(
        &self,
        name: &str,
        definition: &str,
        changed_by: &str,
        only_if_missing: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let existing: Option<(String,)> =
            sqlx::query_as("SELECT definition FROM campaigns WHERE name = ?1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if !campaign_changes(
            existing.as_ref().map(|(d,)| d.as_str()),
            definition,
            only_if_missing,
        ) {
            return Ok(false);
        }
        let sql = if existing.is_some() {
            "UPDATE campaigns SET definition = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE name = ?1".to_string()
        } else {
            numbered(INSERT_CAMPAIGN)
        };
        let stored = sqlx::query(&sql)
            .bind(name)
            .bind(definition)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if stored == 0 {
            return Ok(false);
        }
        sqlx::query(&numbered(INSERT_REVISION))
            .bind(name)
            .bind(definition)
            .bind(changed_by)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn campaign_revisions(&self, name: &str) -> Result<Vec<CampaignRevision>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, name, definition, changed_by, changed_at FROM campaign_revisions
             WHERE name = ?1 ORDER BY id",
        )
        .bind(name)
        .fetch_all(&self.reader)
        .await?)
    }

    async fn job_timings(&self, user_prefix: &str) -> Result<Vec<JobTiming>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT status, (julianday(created_at) - 2440587.5) * 86400.0 AS created_s,
                    (julianday(delivered_at) - 2440587.5) * 86400.0 AS delivered_s, batch_size
             FROM jobs WHERE substr(user_id, 1, length(?1)) = ?1",
        )
        .bind(user_prefix)
        .fetch_all(&self.reader)
        .await?)
    }

    async fn queued_jobs(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE status = 'queued'")
            .fetch_one(&self.reader)
            .await?;
        Ok(n)
    }

    async fn lease_jobs(
        &self,
        worker: &str,
        can: &Capabilities,
        max: i64,
        lease_secs: f64,
        max_attempts: i32,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        // One statement: atomic, and SQLite admits one writer at a time.
        let mut jobs: Vec<LeasedJob> = sqlx::query_as(&format!(
            "UPDATE jobs SET status = 'running', leased_by = ?1, leased_until = {UNTIL},
                 attempts = attempts + 1, started_at = coalesce(started_at, {NOW}), error = NULL,
                 seed = coalesce(seed, abs(random()) % 4503599627370496)
             WHERE id IN (
                 SELECT j.id FROM jobs j,
                     (SELECT model, loras, width, height, steps, scheduler, strength FROM jobs WHERE {ELIGIBLE}
                        AND model IN (SELECT value FROM json_each(?5))
                        AND NOT EXISTS (SELECT 1 FROM json_each(jobs.loras) l
                                        WHERE json_extract(l.value, '$.name') NOT IN (SELECT value FROM json_each(?6)))
                      ORDER BY priority DESC, created_at, id LIMIT 1) head
                 WHERE {ELIGIBLE_J}
                   AND j.model = head.model AND j.loras = head.loras
                   AND j.width = head.width AND j.height = head.height AND j.steps = head.steps
                   AND j.scheduler = head.scheduler AND j.strength = head.strength
                 ORDER BY j.priority DESC, j.created_at, j.id LIMIT ?2)
             RETURNING id, prompt, negative_prompt, width, height, steps, scheduler, guidance, seed, attempts,
                 model, loras, channel, account, painted_prompt, painted_negative, photo_media_id, strength,
                 NULL AS taken_from"
        ))
        .bind(worker)
        .bind(max)
        .bind(lease_secs)
        .bind(max_attempts)
        .bind(can.models_json())
        .bind(can.loras_json())
        .fetch_all(&self.writer)
        .await?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn worker_seen(&self, worker: &str, can: &Capabilities) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO workers (id, models, loras, seen_at) VALUES (?1, ?2, ?3, {NOW})
             ON CONFLICT (id) DO UPDATE SET models = excluded.models, loras = excluded.loras, seen_at = excluded.seen_at"
        ))
        .bind(worker)
        .bind(can.models_json())
        .bind(can.loras_json())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn worker_gone(&self, worker: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE id = ?1")
            .bind(worker)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn queue_by_model(&self) -> Result<Vec<ModelQueue>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT j.model AS model, j.loras AS loras, count(*) AS queued,
                 (julianday('now') - julianday(min(j.created_at))) * 1440.0 AS oldest_minutes,
                 (SELECT count(*) FROM workers w WHERE {PAINTS}) AS workers
             FROM jobs j WHERE j.status = 'queued' GROUP BY j.model, j.loras ORDER BY queued DESC, j.model"
        ))
        .fetch_all(&self.reader)
        .await?)
    }

    async fn heartbeat(&self, worker: &str, lease_secs: f64) -> Result<u64, StoreError> {
        Ok(sqlx::query(&format!(
            "UPDATE jobs SET leased_until = {UNTIL} WHERE leased_by = ?1 AND status = 'running'"
        ))
        .bind(worker)
        .bind(0i64)
        .bind(lease_secs)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn complete_job(
        &self,
        lease: Lease<'_>,
        jpeg: &[u8],
        batch_size: i32,
    ) -> Result<bool, StoreError> {
        let id = lease.job;
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(&format!(
            "UPDATE jobs SET status = 'done', finished_at = {NOW}, leased_by = NULL, leased_until = NULL,
                 batch_size = ?4
             WHERE {PAINT_LEASE}"
        ))
        .bind(id)
        .bind(lease.holder)
        .bind(lease.attempt)
        .bind(batch_size)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Ok(false);
        }
        sqlx::query(&numbered(RELEASE_IN_FLIGHT))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO job_images (job_id, jpeg) VALUES (?1, ?2)")
            .bind(id)
            .bind(jpeg)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn fail_job(
        &self,
        lease: Lease<'_>,
        error: &str,
        max_attempts: i32,
    ) -> Result<JobFate, StoreError> {
        let id = lease.job;
        let status: Option<(String,)> = sqlx::query_as(&format!(
            "UPDATE jobs SET status = CASE WHEN attempts >= ?5 THEN 'failed' ELSE 'queued' END,
                 finished_at = CASE WHEN attempts >= ?5 THEN {NOW} END,
                 leased_by = NULL, leased_until = NULL, error = ?4
             WHERE {PAINT_LEASE}
             RETURNING status"
        ))
        .bind(id)
        .bind(lease.holder)
        .bind(lease.attempt)
        .bind(error)
        .bind(max_attempts)
        .fetch_optional(&self.writer)
        .await?;
        if matches!(status.as_ref(), Some((s,)) if s == "failed") {
            sqlx::query(&numbered(RELEASE_IN_FLIGHT))
                .bind(id)
                .execute(&self.writer)
                .await?;
        }
        Ok(fate(status))
    }

    async fn save_translation(
        &self,
        lease: Lease<'_>,
        painted: &Painted<'_>,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(&format!(
            "UPDATE jobs SET painted_prompt = ?4, painted_negative = ?5, translate_ms = ?6
             WHERE {PAINT_LEASE}"
        ))
        .bind(lease.job)
        .bind(lease.holder)
        .bind(lease.attempt)
        .bind(painted.prompt)
        .bind(painted.negative)
        .bind(painted.translate_ms)
        .execute(&self.writer)
        .await?
        .rows_affected()
            > 0)
    }

    async fn refuse_job(
        &self,
        lease: Lease<'_>,
        refusal: &JobRefusal<'_>,
    ) -> Result<bool, StoreError> {
        let id = lease.job;
        let mut tx = self.writer.begin().await?;
        let ended = sqlx::query(&format!(
            "UPDATE jobs SET status = 'failed', finished_at = {NOW}, leased_by = NULL, leased_until = NULL,
                 fail_reason = ?4, notice = ?5, error = ?6
             WHERE {PAINT_LEASE}"
        ))
        .bind(id)
        .bind(lease.holder)
        .bind(lease.attempt)
        .bind(refusal.reason)
        .bind(refusal.notice)
        .bind(refusal.error)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if ended == 0 {
            return Ok(false);
        }
        sqlx::query(&numbered(RELEASE_IN_FLIGHT))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if let Some(jpeg) = refusal.jpeg {
            sqlx::query("INSERT INTO job_images (job_id, jpeg) VALUES (?1, ?2)")
                .bind(id)
                .bind(jpeg)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn failure_notice(&self, id: i64) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT notice FROM jobs WHERE id = ?1")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.and_then(|(notice,)| notice))
    }

    async fn fail_exhausted(&self, max_attempts: i32) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(&format!(
            "UPDATE jobs SET status = 'failed', finished_at = {NOW}, leased_by = NULL, leased_until = NULL,
                 error = coalesce(error, 'the worker stopped answering on every attempt')
             WHERE status = 'running' AND leased_until < {NOW} AND attempts >= ?1
             RETURNING id"
        ))
        .bind(max_attempts)
        .fetch_all(&self.writer)
        .await?;
        let ids: Vec<i64> = rows.into_iter().map(|(id,)| id).collect();
        for id in &ids {
            sqlx::query(&numbered(RELEASE_IN_FLIGHT))
                .bind(id)
                .execute(&self.writer)
                .await?;
        }
        Ok(ids)
    }

    async fn release_leases(&self, worker: &str) -> Result<u64, StoreError> {
        let painting = sqlx::query(
            "UPDATE jobs SET status = 'queued', leased_by = NULL, leased_until = NULL, attempts = attempts - 1
             WHERE leased_by = ?1 AND status = 'running'",
        )
        .bind(worker)
        .execute(&self.writer)
        .await?
        .rows_affected();
        let delivering = sqlx::query(
            "UPDATE jobs SET leased_by = NULL, leased_until = NULL, delivery_attempts = delivery_attempts - 1
             WHERE leased_by = ?1 AND status IN ('done', 'failed')",
        )
        .bind(worker)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(painting + delivering)
    }

    async fn job_status(&self, id: i64) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT status FROM jobs WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|(s,)| s))
    }

    async fn job_image(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT jpeg FROM job_images WHERE job_id = ?1")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map(|(j,)| j))
    }

    async fn lease_deliveries(
        &self,
        holder: &str,
        max: i64,
        lease_secs: f64,
        accounts: &[String],
    ) -> Result<Vec<DeliveryTask>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE jobs SET leased_by = ?1, leased_until = {UNTIL}, delivery_attempts = delivery_attempts + 1
             WHERE id IN (
                 SELECT id FROM jobs WHERE held IS NULL AND {OWED} AND {FREE}
                   AND (channel || '/' || account) IN (SELECT value FROM json_each(?4))
                   AND (deliver_after IS NULL OR deliver_after <= {NOW})
                 ORDER BY finished_at, id LIMIT ?2)
             RETURNING id AS job_id, channel, account, user_id, status, media_id, delivery_attempts, notice"
        ))
        .bind(holder)
        .bind(max)
        .bind(lease_secs)
        .bind(serde_json::to_string(accounts).unwrap_or_default())
        .fetch_all(&self.writer)
        .await?)
    }

    async fn renew_delivery(&self, lease: Lease<'_>, lease_secs: f64) -> Result<bool, StoreError> {
        Ok(sqlx::query(&format!(
            "UPDATE jobs SET leased_until = {} WHERE {DELIVERY_LEASE}",
            now_plus(4)
        ))
        .bind(lease.job)
        .bind(lease.holder)
        .bind(lease.attempt)
        .bind(lease_secs)
        .execute(&self.writer)
        .await?
        .rows_affected()
            == 1)
    }

    async fn save_media_id(&self, lease: Lease<'_>, media_id: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE jobs SET media_id = ?4 WHERE {DELIVERY_LEASE}"
        ))
        .bind(lease.job)
        .bind(lease.holder)
        .bind(lease.attempt)
        .bind(media_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn finish_delivery(
        &self,
        lease: Lease<'_>,
        end: DeliveryEnd<'_>,
    ) -> Result<bool, StoreError> {
        let sql = match end {
            DeliveryEnd::Sent => format!("UPDATE jobs SET {} WHERE {DELIVERY_LEASE}", sent("?4")),
            DeliveryEnd::Retry { .. } => format!(
                "UPDATE jobs SET leased_by = NULL, leased_until = NULL, delivery_error = ?4,
                     deliver_after = {}
                 WHERE {DELIVERY_LEASE}",
                now_plus(5)
            ),
            DeliveryEnd::Held { .. } => format!(
                "UPDATE jobs SET leased_by = NULL, leased_until = NULL, delivery_error = ?4, held = ?5
                 WHERE {DELIVERY_LEASE}"
            ),
        };
        let query = sqlx::query(&sql)
            .bind(lease.job)
            .bind(lease.holder)
            .bind(lease.attempt);
        let query = match end {
            DeliveryEnd::Sent => query.bind("send"),
            DeliveryEnd::Retry { after_secs, error } => query.bind(error).bind(after_secs),
            DeliveryEnd::Held { hold, error } => query.bind(error).bind(hold.as_str()),
        };
        Ok(query.execute(&self.writer).await?.rows_affected() == 1)
    }

    async fn claim_for_reply(
        &self,
        id: i64,
        holder: &str,
        lease_secs: f64,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(&format!(
            "UPDATE jobs SET leased_by = ?2, leased_until = {UNTIL}
             WHERE id = ?1 AND {OWED} AND {FREE}
             RETURNING status"
        ))
        .bind(id)
        .bind(holder)
        .bind(lease_secs)
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.map(|(s,)| s))
    }

    async fn claim_waiting(
        &self,
        channel: &str,
        account: &str,
        user_id: &str,
        holder: &str,
        lease_secs: f64,
    ) -> Result<Waiting, StoreError> {
        let claimed: Option<(i64, String)> = sqlx::query_as(&format!(
            "UPDATE jobs SET leased_by = ?4, leased_until = {}
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE channel = ?1 AND account = ?2 AND user_id = ?3 AND {OWED} AND {FREE}
                 ORDER BY finished_at, id LIMIT 1)
             RETURNING id, status",
            now_plus(5)
        ))
        .bind(channel)
        .bind(account)
        .bind(user_id)
        .bind(holder)
        .bind(lease_secs)
        .fetch_optional(&self.writer)
        .await?;
        if let Some(claimed) = claimed {
            return Ok(waiting(claimed));
        }
        let (busy,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE channel = ?1 AND account = ?2 AND user_id = ?3
                 AND status IN ('queued', 'running', 'done'))",
        )
        .bind(channel)
        .bind(account)
        .bind(user_id)
        .fetch_one(&self.reader)
        .await?;
        Ok(if busy {
            Waiting::InProgress
        } else {
            Waiting::Nothing
        })
    }

    async fn finish_reply(
        &self,
        id: i64,
        holder: &str,
        inbound: &Inbound,
        reply: &Reply,
        via: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let marked = sqlx::query(&format!(
            "UPDATE jobs SET {} WHERE id = ?1 AND leased_by = ?2",
            sent("?3")
        ))
        .bind(id)
        .bind(holder)
        .bind(via)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE inbound_messages SET reply = ?4 WHERE channel = ?1 AND account = ?2 AND dedup_key = ?3",
        )
        .bind(inbound.channel)
        .bind(&inbound.account)
        .bind(&inbound.dedup_key)
        .bind(encode_reply(reply))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn release_claim(&self, id: i64, holder: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET leased_by = NULL, leased_until = NULL WHERE id = ?1 AND leased_by = ?2",
        )
        .bind(id)
        .bind(holder)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn account_state(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<AccountState, StoreError> {
        let row: Option<(Option<String>, Option<i64>, bool)> =
            sqlx::query_as(&numbered(ACCOUNT_STATE))
                .bind(channel)
                .bind(account)
                .fetch_optional(&self.reader)
                .await?;
        Ok(account_state(row))
    }

    async fn claim_token_refresh(
        &self,
        channel: &str,
        account: &str,
        holder: &str,
        now_ms: i64,
        hold_ms: i64,
    ) -> Result<bool, StoreError> {
        let claimed: Option<(String,)> = sqlx::query_as(&numbered(CLAIM_TOKEN_REFRESH))
            .bind(channel)
            .bind(account)
            .bind(holder)
            .bind(now_ms)
            .bind(now_ms + hold_ms)
            .fetch_optional(&self.writer)
            .await?;
        Ok(claimed.is_some())
    }

    async fn release_token_refresh(
        &self,
        channel: &str,
        account: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(&numbered(RELEASE_TOKEN_REFRESH))
            .bind(channel)
            .bind(account)
            .bind(holder)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn save_token(
        &self,
        channel: &str,
        account: &str,
        token: &str,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(&numbered(SAVE_TOKEN))
            .bind(channel)
            .bind(account)
            .bind(token)
            .bind(expires_ms)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn expire_token(
        &self,
        channel: &str,
        account: &str,
        token: &str,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(&numbered(EXPIRE_TOKEN))
            .bind(channel)
            .bind(account)
            .bind(token)
            .execute(&self.writer)
            .await?
            .rows_affected()
            == 1)
    }

    async fn set_passive_only(
        &self,
        channel: &str,
        account: &str,
        passive_only: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(&numbered(SET_PASSIVE_ONLY))
            .bind(channel)
            .bind(account)
            .bind(passive_only)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn schedule_material_cleanup(
        &self,
        channel: &str,
        account: &str,
        media_id: &str,
        due_in_secs: f64,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO material_cleanup (channel, account, media_id, due_at)
             VALUES (?1, ?2, ?3, {}) ON CONFLICT DO NOTHING",
            now_plus(4)
        ))
        .bind(channel)
        .bind(account)
        .bind(media_id)
        .bind(due_in_secs)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn due_material_cleanups(
        &self,
        channel: &str,
        account: &str,
        max: i64,
        retry_secs: f64,
    ) -> Result<Vec<(String, i32)>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE material_cleanup SET due_at = {}, attempts = attempts + 1
             WHERE rowid IN (
                 SELECT rowid FROM material_cleanup
                 WHERE channel = ?1 AND account = ?2 AND due_at <= {NOW}
                 ORDER BY due_at LIMIT ?3)
             RETURNING media_id, attempts",
            now_plus(4)
        ))
        .bind(channel)
        .bind(account)
        .bind(max)
        .bind(retry_secs)
        .fetch_all(&self.writer)
        .await?)
    }

    async fn material_cleaned(
        &self,
        channel: &str,
        account: &str,
        media_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM material_cleanup WHERE channel = ?1 AND account = ?2 AND media_id = ?3",
        )
        .bind(channel)
        .bind(account)
        .bind(media_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn prune(&self, r: &Retention) -> Result<Pruned, StoreError> {
        let pictures = sqlx::query(
            "DELETE FROM job_images WHERE job_id IN (
                 SELECT i.job_id FROM job_images i JOIN jobs j ON j.id = i.job_id
                 WHERE (j.status = 'delivered' AND j.delivered_at < ?1)
                    OR (j.status = 'failed' AND j.finished_at < ?1)
                 LIMIT ?2)",
        )
        .bind(timestamp(r.picture_cutoff()))
        .bind(r.batch)
        .execute(&self.writer)
        .await?
        .rows_affected();
        let mut tx = self.writer.begin().await?;
        let expired: Vec<i64> = sqlx::query_scalar(&format!(
            "UPDATE jobs SET status = 'failed', fail_reason = 'expired', notified_at = ?2,
                 error = coalesce(error, 'the held picture was not fetched within retention.held_days')
             WHERE id IN (SELECT id FROM jobs
                          WHERE status = 'done' AND held IS NOT NULL AND finished_at < ?1 AND {FREE}
                          ORDER BY id LIMIT ?3)
             RETURNING id"
        ))
        .bind(timestamp(r.held_cutoff()))
        .bind(timestamp(r.now))
        .bind(r.batch)
        .fetch_all(&mut *tx)
        .await?;
        for id in &expired {
            sqlx::query("DELETE FROM job_images WHERE job_id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let usage_rows = sqlx::query(
            "INSERT INTO usage_rollup
             SELECT * FROM usage_live WHERE day < ?1 AND day NOT IN (SELECT day FROM usage_rollup)",
        )
        .bind(r.history_day().to_string())
        .execute(&self.writer)
        .await?
        .rows_affected();
        let cutoff = timestamp(r.history_cutoff());
        let mut tx = self.writer.begin().await?;
        let doomed =
            "SELECT id FROM jobs WHERE created_at < ?1 AND status IN ('delivered', 'failed')
                      ORDER BY id LIMIT ?2";
        sqlx::query(&format!(
            "DELETE FROM job_images WHERE job_id IN ({doomed})"
        ))
        .bind(&cutoff)
        .bind(r.batch)
        .execute(&mut *tx)
        .await?;
        let jobs = sqlx::query(&format!("DELETE FROM jobs WHERE id IN ({doomed})"))
            .bind(&cutoff)
            .bind(r.batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        let messages = sqlx::query(
            "DELETE FROM inbound_messages WHERE id IN (
                 SELECT m.id FROM inbound_messages m
                 WHERE m.received_at < ?1 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.inbound_id = m.id)
                 ORDER BY m.id LIMIT ?2)",
        )
        .bind(&cutoff)
        .bind(r.batch)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(Pruned {
            pictures,
            expired: expired.len() as u64,
            usage_rows,
            jobs,
            messages,
        })
    }

    async fn subscribe_finished(
        &self,
        _finished: broadcast::Sender<i64>,
    ) -> Result<(), StoreError> {
        // One node: the worker in this process reports its finished jobs directly.
        Ok(())
    }

    async fn announce_finished(&self, _ids: &[i64]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn subscribe_jobs(&self, _wake: Arc<Notify>) -> Result<(), StoreError> {
        // One node: submissions in this process wake the worker directly.
        Ok(())
    }

    async fn announce_jobs(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn subscribe_catalog(&self, _changed: Arc<Notify>) -> Result<(), StoreError> {
        // One node: a change made in this process reloads it directly.
        Ok(())
    }

    async fn announce_catalog(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Requests received and pictures finished per hour (Asia/Shanghai) of day `$1`.
const BY_HOUR: &str = "
SELECT hour, sum(requests) AS requests, sum(painted) AS painted FROM (
    SELECT CAST(strftime('%H', received_at, '+8 hours') AS INTEGER) AS hour, 1 AS requests, 0 AS painted
    FROM inbound_messages WHERE decision <> 'answered' AND date(received_at, '+8 hours') = $1
    UNION ALL
    SELECT CAST(strftime('%H', finished_at, '+8 hours') AS INTEGER), 0, 1 FROM jobs
    WHERE status IN ('done', 'delivered') AND date(finished_at, '+8 hours') = $1
) GROUP BY hour ORDER BY hour";

super::admin::impl_admin_store!(SqliteStore, reader, writer, numbered, timestamp, BY_HOUR);
