//! The PostgreSQL store: the coordination backbone for several nodes.

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use std::sync::Arc;
use tokio::sync::{Notify, broadcast};

use super::presence::{LIVE_NODES, ORPHANED, Presence};
use super::{
    ACCOUNT_STATE, AccountState, Admission, CAMPAIGN_TODAY, CLAIM_TOKEN_REFRESH, COUNT_USAGE,
    CampaignRevision, Capabilities, Counts, DbHealth, DeliveryEnd, DeliveryTask, DeliveryWait,
    EXPIRE_TOKEN, INSERT_CAMPAIGN, INSERT_REVISION, JobFate, JobRefusal, JobRow, JobTiming,
    LAST_REQUEST, LOCK_USAGE, Lease, LeasedJob, LimitCheck, LockedUsage, ModelQueue, NewJob,
    Painted, Pruned, QueueStatus, RELEASE_IN_FLIGHT, RELEASE_TOKEN_REFRESH, REQUESTS_TODAY,
    RequestRow, Retention, SAVE_TOKEN, SET_PASSIVE_ONLY, Store, StoreError, StoredCampaign,
    Submission, UsageRow, Waiting, account_state, campaign_changes, decode_reply, encode_reply,
    fate, limits, new_job, refused_submission, source_msg_id, waiting,
};
use crate::config::DatabaseSettings;
use crate::limits::{Limits, Refused, Usage};
use crate::model::loras_json;
use crate::model::{Inbound, Reply};

/// Dedup insert and job insert in one statement (one transaction, one round trip). A concurrent insert of the
/// same key waits for the other transaction and then does nothing, so exactly one caller creates the job.
const SUBMIT: &str = "
WITH inbound AS (
    INSERT INTO inbound_messages (channel, account, dedup_key, user_id, msg_id, kind, reply,
                                  decision, campaign, decision_detail)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $19, $20, $21)
    ON CONFLICT (channel, account, dedup_key) DO NOTHING
    RETURNING id
), job AS (
    INSERT INTO jobs (channel, account, user_id, source_msg_id, prompt, inbound_id,
                      negative_prompt, width, height, steps, scheduler, guidance, deliver_after, seed, campaign,
                      model, loras, photo_media_id, strength)
    SELECT $1, $2, $4, $8, $9, inbound.id, $10, $11, $12, $13, $14, $15, now() + make_interval(secs => $16), $17, $18,
           $22, $23, $24, $25
    FROM inbound WHERE $9::text IS NOT NULL
    RETURNING id
)
SELECT (SELECT id FROM inbound) AS inbound_id, (SELECT id FROM job) AS job_id";

/// [`SUBMIT`] with the per-follower limits decided inside it (`$26` day, `$27` minute, `$28`-`$30` per day, per
/// minute and in flight, 0 = unlimited; `$31` the refusal's reply, provisionally).
const SUBMIT_LIMITED: &str = "
WITH inbound AS (
    INSERT INTO inbound_messages (channel, account, dedup_key, user_id, msg_id, kind, reply,
                                  decision, campaign, decision_detail, refusal_reply)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $19, $20, $21, $31)
    ON CONFLICT (channel, account, dedup_key) DO NOTHING
    RETURNING id
), quota AS (
    INSERT INTO follower_usage AS u (channel, account, user_id, day, day_count, minute, minute_count, in_flight)
    SELECT $1, $2, $4, $26, 1, $27, 1, 1 FROM inbound
    ON CONFLICT (channel, account, user_id) DO UPDATE SET
        day_count = CASE WHEN u.day = excluded.day THEN u.day_count + 1 ELSE 1 END, day = excluded.day,
        minute_count = CASE WHEN u.minute = excluded.minute THEN u.minute_count + 1 ELSE 1 END,
        minute = excluded.minute, in_flight = u.in_flight + 1
    WHERE ($28 = 0 OR u.day <> excluded.day OR u.day_count < $28)
      AND ($29 = 0 OR u.minute <> excluded.minute OR u.minute_count < $29)
      AND ($30 = 0 OR u.in_flight < $30)
    RETURNING 1
), job AS (
    INSERT INTO jobs (channel, account, user_id, source_msg_id, prompt, inbound_id,
                      negative_prompt, width, height, steps, scheduler, guidance, deliver_after, seed, campaign,
                      model, loras, photo_media_id, strength)
    SELECT $1, $2, $4, $8, $9, inbound.id, $10, $11, $12, $13, $14, $15, now() + make_interval(secs => $16), $17, $18,
           $22, $23, $24, $25
    FROM inbound, quota
    RETURNING id
)
SELECT (SELECT id FROM inbound), (SELECT id FROM job)";

/// Leases the oldest eligible job's batch: same painting parameters, orphans first (running jobs whose lease
/// expired or whose node is gone), then oldest first, skipping rows other workers are locking right now. `$7` is
/// this node's presence key (NULL while it holds no presence lock).
static LEASE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {LIVE_NODES}, head AS (
    SELECT model, loras, width, height, steps, scheduler, strength FROM jobs
    WHERE (status = 'queued' OR (status = 'running' AND (leased_until < now() OR {ORPHANED}))) AND attempts < $4
      AND model IN (SELECT jsonb_array_elements_text($5::jsonb))
      AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(jobs.loras::jsonb) l
                      WHERE l->>'name' NOT IN (SELECT jsonb_array_elements_text($6::jsonb)))
    ORDER BY status = 'running' DESC, priority DESC, created_at, id LIMIT 1
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT j.id, j.leased_by AS was_holder FROM jobs j, head
    WHERE (j.status = 'queued' OR (j.status = 'running' AND (j.leased_until < now() OR {ORPHANED})))
      AND j.attempts < $4
      AND j.model = head.model AND j.loras = head.loras
      AND j.width = head.width AND j.height = head.height AND j.steps = head.steps AND j.scheduler = head.scheduler
      AND j.strength = head.strength
    ORDER BY j.status = 'running' DESC, j.priority DESC, j.created_at, j.id LIMIT $2
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs SET status = 'running', leased_by = $1, leased_until = now() + make_interval(secs => $3),
    lease_node = $7,
    attempts = attempts + 1, started_at = coalesce(started_at, now()), error = NULL,
    seed = coalesce(seed, floor(random() * 4503599627370496)::bigint)
FROM picked WHERE jobs.id = picked.id
RETURNING jobs.id, prompt, negative_prompt, width, height, steps, scheduler, guidance, seed, attempts,
    jobs.model, jobs.loras, channel, account, painted_prompt, painted_negative, photo_media_id, jobs.strength,
    picked.was_holder AS taken_from"
    )
});

/// Whether live worker `w` paints job `j`'s model with all its LoRAs.
const PAINTS: &str = "w.seen_at > now() - interval '30 seconds' AND w.models::jsonb ? j.model
    AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(j.loras::jsonb) l WHERE NOT (w.loras::jsonb ? (l->>'name')))";

/// The LISTEN/NOTIFY channel that announces new jobs.
const JOBS_CHANNEL: &str = "huabi_jobs";
/// The LISTEN/NOTIFY channel that announces changed campaigns, filter words or follower lists.
const CATALOG_CHANNEL: &str = "huabi_catalog";
/// The LISTEN/NOTIFY channel that announces finished jobs (payload: comma-separated ids).
const FINISHED_CHANNEL: &str = "huabi_finished";

/// A job the follower is owed something for: a picture, or word that it failed (held ones included).
const OWED: &str = "(status = 'done' OR (status = 'failed' AND notified_at IS NULL))";

/// The SET list that marks a leased job delivered (the parameter `via` says how) or, for a failed job, its
/// failure told.
fn sent(via: &str) -> String {
    format!(
        "leased_by = NULL, leased_until = NULL, delivery_error = NULL,
         status = CASE WHEN status = 'done' THEN 'delivered' ELSE status END,
         delivered_at = CASE WHEN status = 'done' THEN now() END,
         delivered_via = CASE WHEN status = 'done' THEN {via} END,
         notified_at = CASE WHEN status = 'failed' THEN now() END"
    )
}

/// The painting lease `$1` (job), `$2` (holder), `$3` (attempt) still holds the job.
const PAINT_LEASE: &str = "id = $1 AND leased_by = $2 AND attempts = $3 AND status = 'running'";

/// The delivery lease `$1` (job), `$2` (holder), `$3` (delivery attempt) still holds the job.
const DELIVERY_LEASE: &str = "id = $1 AND leased_by = $2 AND delivery_attempts = $3";

/// Leases finished jobs that are due, oldest first, of the accounts `$4` (`platform/name`) the deliverer sends
/// through. (The console's own jobs — test chat, previews — are on no account: shown on its pages, never sent.)
const LEASE_DELIVERIES: &str = "
WITH picked AS (
    SELECT id FROM jobs
    WHERE held IS NULL AND (channel || '/' || account) = ANY($4)
      AND (status = 'done' OR (status = 'failed' AND notified_at IS NULL))
      AND (leased_until IS NULL OR leased_until < now())
      AND (deliver_after IS NULL OR deliver_after <= now())
    ORDER BY finished_at, id LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET leased_by = $1, leased_until = now() + make_interval(secs => $3),
    delivery_attempts = delivery_attempts + 1
FROM picked WHERE jobs.id = picked.id
RETURNING jobs.id AS job_id, channel, account, user_id, status, media_id, delivery_attempts, notice";

/// PostgreSQL-backed [`Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    presence: Arc<Presence>,
}

/// Binds a submission to [`SUBMIT`]'s parameters (`$1`-`$25`).
fn bind_submission<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    s: &'q Submission<'_>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    let m = s.inbound;
    let job = s.job.as_ref();
    query
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
        .bind(job.map(|j| j.deliver_after_secs).unwrap_or(0.0))
        .bind(job.and_then(|j| j.seed))
        .bind(job.and_then(|j| j.campaign.as_deref()))
        .bind(s.decision())
        .bind(s.campaign())
        .bind(s.detail())
        .bind(job.map_or("", |j| j.model.as_str()))
        .bind(job.map_or_else(|| "[]".to_string(), |j| loras_json(&j.loras)))
        .bind(
            job.and_then(|j| j.photo.as_ref())
                .map(|p| p.media_id.as_str()),
        )
        .bind(
            job.and_then(|j| j.photo.as_ref())
                .map_or(0.0, |p| p.strength),
        )
}

impl PgStore {
    /// Admission without limits: one statement.
    async fn submit_plain(&self, s: &Submission<'_>) -> Result<Admission, StoreError> {
        let (inbound_id, job_id): (Option<i64>, Option<i64>) =
            bind_submission(sqlx::query_as(SUBMIT), s)
                .fetch_one(&self.pool)
                .await?;
        match inbound_id {
            Some(_) => Ok(Admission::Accepted { job_id }),
            None => self.duplicate(s.inbound).await,
        }
    }

    /// Admission with the per-follower limits decided inside the one statement: the follower's usage row is
    /// counted up only if it is still under every limit when its lock is obtained (PostgreSQL re-checks an
    /// `ON CONFLICT DO UPDATE … WHERE` against the row's latest version), so concurrent messages admit exactly
    /// the quota. The message is stored with both answers; no job means the refusal's answer applies.
    async fn submit_limited(
        &self,
        s: &Submission<'_>,
        check: &LimitCheck,
    ) -> Result<Admission, StoreError> {
        let limit = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        let l = &check.limits;
        let provisional = Reply::Text {
            text: check.replies.text(Refused::PerDay(l.per_day)).to_string(),
        };
        let (inbound_id, job_id): (Option<i64>, Option<i64>) =
            bind_submission(sqlx::query_as(SUBMIT_LIMITED), s)
                .bind(limits::day_number(check.now))
                .bind(limits::minute(check.now))
                .bind(limit(l.per_day))
                .bind(limit(l.per_minute))
                .bind(limit(l.in_flight))
                .bind(encode_reply(&provisional))
                .fetch_one(&self.pool)
                .await?;
        let Some(inbound_id) = inbound_id else {
            return self.duplicate(s.inbound).await;
        };
        if job_id.is_some() {
            return Ok(Admission::Accepted { job_id });
        }
        // Refused: name the limit from the row as it is now, and keep that answer for retries.
        let m = s.inbound;
        let usage: Option<LockedUsage> = sqlx::query_as(
            "SELECT day, day_count, minute, minute_count, in_flight FROM follower_usage
             WHERE channel = $1 AND account = $2 AND user_id = $3",
        )
        .bind(m.channel)
        .bind(&m.account)
        .bind(&m.user_id)
        .fetch_optional(&self.pool)
        .await?;
        let refused = usage
            .and_then(|u| limits::decide(l, &u.usage(check, 0), check.listing).err())
            .unwrap_or(Refused::PerDay(l.per_day));
        let reply = Reply::Text {
            text: check.replies.text(refused).to_string(),
        };
        sqlx::query(
            "UPDATE inbound_messages SET refusal_reply = $2, decision_detail = $3 WHERE id = $1",
        )
        .bind(inbound_id)
        .bind(encode_reply(&reply))
        .bind(refused.name())
        .execute(&self.pool)
        .await?;
        Ok(Admission::Refused { reply })
    }

    /// Admission for a campaign with a daily cap: a transaction holding the follower's usage row and the
    /// campaign's lock while counting, deciding and inserting.
    async fn submit_capped(
        &self,
        s: &Submission<'_>,
        check: &LimitCheck,
    ) -> Result<Admission, StoreError> {
        let m = s.inbound;
        let mut tx = self.pool.begin().await?;
        let usage: LockedUsage = sqlx::query_as(LOCK_USAGE)
            .bind(m.channel)
            .bind(&m.account)
            .bind(&m.user_id)
            .fetch_one(&mut *tx)
            .await?;
        let campaign = s.campaign().unwrap_or_default();
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
            .bind(campaign)
            .execute(&mut *tx)
            .await?;
        let (campaign_today,): (i64,) = sqlx::query_as(CAMPAIGN_TODAY)
            .bind(campaign)
            .bind(limits::day_start(check.now))
            .fetch_one(&mut *tx)
            .await?;
        let verdict = limits::decide(
            &check.limits,
            &usage.usage(check, campaign_today),
            check.listing,
        );
        let refused = verdict.err().map(|r| refused_submission(s, check, r));
        let stored = refused.as_ref().unwrap_or(s);
        let (inbound_id, job_id): (Option<i64>, Option<i64>) =
            bind_submission(sqlx::query_as(SUBMIT), stored)
                .fetch_one(&mut *tx)
                .await?;
        if inbound_id.is_none() {
            tx.rollback().await?;
            return self.duplicate(m).await;
        }
        if job_id.is_some() {
            sqlx::query(COUNT_USAGE)
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

    /// The stored reply (and job) of a message seen before.
    async fn duplicate(&self, m: &Inbound) -> Result<Admission, StoreError> {
        let (reply, job_id): (String, Option<i64>) = sqlx::query_as(
            "SELECT CASE WHEN m.decision = 'admitted' AND j.id IS NULL AND m.refusal_reply IS NOT NULL
                         THEN m.refusal_reply ELSE m.reply END, j.id
             FROM inbound_messages m LEFT JOIN jobs j ON j.inbound_id = m.id
             WHERE m.channel = $1 AND m.account = $2 AND m.dedup_key = $3",
        )
        .bind(m.channel)
        .bind(&m.account)
        .bind(&m.dedup_key)
        .fetch_one(&self.pool)
        .await?;
        Ok(Admission::Duplicate {
            reply: decode_reply(&reply)?,
            job_id,
        })
    }

    /// Opens a pool to the database.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout())
            .connect(&settings.url)
            .await?;
        Ok(Self {
            pool,
            presence: Arc::new(Presence::new()),
        })
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

    async fn health(&self) -> Result<DbHealth, StoreError> {
        let known = sqlx::migrate!("migrations/postgres")
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        let table: Option<(String,)> = sqlx::query_as("SELECT table_name::text FROM information_schema.tables WHERE table_name = '_sqlx_migrations'")
            .fetch_optional(&self.pool)
            .await?;
        let applied = match table {
            Some(_) => {
                sqlx::query_as::<_, (Option<i64>,)>(
                    "SELECT max(version) FROM _sqlx_migrations WHERE success",
                )
                .fetch_one(&self.pool)
                .await?
                .0
            }
            None => None,
        };
        let (now,): (time::OffsetDateTime,) =
            sqlx::query_as("SELECT now()").fetch_one(&self.pool).await?;
        Ok(DbHealth {
            applied,
            known,
            now,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn submit(&self, s: &Submission<'_>) -> Result<Admission, StoreError> {
        let Some(check) = s.job.as_ref().and(s.limits.as_ref()) else {
            return self.submit_plain(s).await;
        };
        // What needs no usage row first: the lists and backpressure.
        let pre = Limits {
            busy_queue: check.limits.busy_queue,
            ..Limits::default()
        };
        let queued = Usage {
            queued: check.queued,
            ..Usage::default()
        };
        match limits::decide(&pre, &queued, check.listing) {
            Err(refused) => {
                let refused = refused_submission(s, check, refused);
                match self.submit_plain(&refused).await? {
                    Admission::Accepted { .. } => Ok(Admission::Refused {
                        reply: refused.reply,
                    }),
                    other => Ok(other),
                }
            }
            Ok(()) if check.limits.campaign_per_day > 0 && s.campaign().is_some() => {
                self.submit_capped(s, check).await
            }
            Ok(()) => self.submit_limited(s, check).await,
        }
    }

    async fn recent_jobs(&self, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, channel, account, user_id, source_msg_id, prompt, status, created_at, campaign, model,
                 loras, batch_size, notified_at IS NOT NULL AS notified
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

    async fn requests_today(
        &self,
        channel: &str,
        account: &str,
        user_id: &str,
        now: time::OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let row: Option<(i32,)> = sqlx::query_as(REQUESTS_TODAY)
            .bind(channel)
            .bind(account)
            .bind(user_id)
            .bind(limits::day_number(now))
            .fetch_optional(&self.pool)
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
                 WHERE channel = $1 AND account = $2 AND user_id = $3 AND status IN ('queued', 'running'))
             SELECT mine.open AS open,
                 (SELECT count(*) FROM jobs WHERE status IN ('queued', 'running') AND id < mine.first) AS ahead,
                 (SELECT count(*) FROM jobs WHERE finished_at > now() - interval '10 minutes') AS finished_recently,
                 (SELECT j.model FROM jobs j
                  WHERE j.channel = $1 AND j.account = $2 AND j.user_id = $3 AND j.status = 'queued'
                    AND NOT EXISTS (SELECT 1 FROM workers w WHERE {PAINTS})
                  ORDER BY j.id LIMIT 1) AS waiting_for_model,
                 (SELECT painted_prompt FROM jobs
                  WHERE channel = $1 AND account = $2 AND user_id = $3 ORDER BY id DESC LIMIT 1) AS painted_prompt
             FROM mine",
        ))
        .bind(channel)
        .bind(account)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn last_request(
        &self,
        channel: &str,
        account: &str,
        user_id: &str,
    ) -> Result<Option<NewJob>, StoreError> {
        let row: Option<RequestRow> = sqlx::query_as(LAST_REQUEST)
            .bind(channel)
            .bind(account)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(new_job))
    }

    async fn filter_words(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT word FROM filter_words ORDER BY word")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(w,)| w).collect())
    }

    async fn usage(&self, since: &str) -> Result<Vec<UsageRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT day::text AS day, campaign, channel, account, requests, admitted, limited, blocked, painted,
                    delivered, failed, flagged, p50_secs, p95_secs
             FROM usage_daily WHERE day::text >= $1 ORDER BY day DESC, campaign, channel, account",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delivery_waits(&self, since: &str) -> Result<Vec<DeliveryWait>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT day::text AS day, campaign, channel, account, secs FROM (
                 SELECT (m.received_at AT TIME ZONE 'Asia/Shanghai')::date AS day,
                        coalesce(m.campaign, '') AS campaign, m.channel, m.account,
                        extract(epoch FROM j.delivered_at - j.created_at)::float8 AS secs
                 FROM inbound_messages m JOIN jobs j ON j.inbound_id = m.id
                 WHERE j.delivered_at IS NOT NULL) w
             WHERE day::text >= $1",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn campaigns(&self) -> Result<Vec<StoredCampaign>, StoreError> {
        Ok(
            sqlx::query_as("SELECT name, definition FROM campaigns ORDER BY name")
                .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let existing: Option<(String,)> =
            sqlx::query_as("SELECT definition FROM campaigns WHERE name = $1 FOR UPDATE")
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
            "UPDATE campaigns SET definition = $2, updated_at = now() WHERE name = $1".to_string()
        } else {
            INSERT_CAMPAIGN.to_string()
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
        sqlx::query(INSERT_REVISION)
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
             WHERE name = $1 ORDER BY id",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn job_timings(&self, user_prefix: &str) -> Result<Vec<JobTiming>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT status, extract(epoch FROM created_at)::float8 AS created_s,
                    extract(epoch FROM delivered_at)::float8 AS delivered_s, batch_size
             FROM jobs WHERE left(user_id, length($1)) = $1",
        )
        .bind(user_prefix)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn queued_jobs(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE status = 'queued'")
            .fetch_one(&self.pool)
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
        self.presence.start(&self.pool);
        let mut jobs: Vec<LeasedJob> = sqlx::query_as(LEASE.as_str())
            .bind(worker)
            .bind(max)
            .bind(lease_secs)
            .bind(max_attempts)
            .bind(can.models_json())
            .bind(can.loras_json())
            .bind(self.presence.key_if_held())
            .fetch_all(&self.pool)
            .await?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn worker_seen(&self, worker: &str, can: &Capabilities) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (id, models, loras, seen_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (id) DO UPDATE SET models = excluded.models, loras = excluded.loras, seen_at = now()",
        )
        .bind(worker)
        .bind(can.models_json())
        .bind(can.loras_json())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn worker_gone(&self, worker: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn queue_by_model(&self) -> Result<Vec<ModelQueue>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT j.model, j.loras, count(*) AS queued,
                 (EXTRACT(EPOCH FROM now() - min(j.created_at)) / 60.0)::float8 AS oldest_minutes,
                 (SELECT count(*) FROM workers w WHERE {PAINTS}) AS workers
             FROM jobs j WHERE j.status = 'queued' GROUP BY j.model, j.loras ORDER BY queued DESC, j.model"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn heartbeat(&self, worker: &str, lease_secs: f64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE jobs SET leased_until = now() + make_interval(secs => $2)
             WHERE leased_by = $1 AND status = 'running'",
        )
        .bind(worker)
        .bind(lease_secs)
        .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&format!(
            "UPDATE jobs SET status = 'done', finished_at = now(), leased_by = NULL, leased_until = NULL,
                 batch_size = $4
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
        sqlx::query(RELEASE_IN_FLIGHT)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO job_images (job_id, jpeg) VALUES ($1, $2)")
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
            "UPDATE jobs SET status = CASE WHEN attempts >= $5 THEN 'failed' ELSE 'queued' END,
                 finished_at = CASE WHEN attempts >= $5 THEN now() END,
                 leased_by = NULL, leased_until = NULL, error = $4
             WHERE {PAINT_LEASE}
             RETURNING status"
        ))
        .bind(id)
        .bind(lease.holder)
        .bind(lease.attempt)
        .bind(error)
        .bind(max_attempts)
        .fetch_optional(&self.pool)
        .await?;
        if matches!(status.as_ref(), Some((s,)) if s == "failed") {
            sqlx::query(RELEASE_IN_FLIGHT)
                .bind(id)
                .execute(&self.pool)
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
            "UPDATE jobs SET painted_prompt = $4, painted_negative = $5, translate_ms = $6
             WHERE {PAINT_LEASE}"
        ))
        .bind(lease.job)
        .bind(lease.holder)
        .bind(lease.attempt)
        .bind(painted.prompt)
        .bind(painted.negative)
        .bind(painted.translate_ms)
        .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let ended = sqlx::query(&format!(
            "UPDATE jobs SET status = 'failed', finished_at = now(), leased_by = NULL, leased_until = NULL,
                 fail_reason = $4, notice = $5, error = $6
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
        sqlx::query(RELEASE_IN_FLIGHT)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if let Some(jpeg) = refusal.jpeg {
            sqlx::query("INSERT INTO job_images (job_id, jpeg) VALUES ($1, $2)")
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
            sqlx::query_as("SELECT notice FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(notice,)| notice))
    }

    async fn fail_exhausted(&self, max_attempts: i32) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE jobs SET status = 'failed', finished_at = now(), leased_by = NULL, leased_until = NULL,
                 error = coalesce(error, 'the worker stopped answering on every attempt')
             WHERE status = 'running' AND leased_until < now() AND attempts >= $1
             RETURNING id",
        )
        .bind(max_attempts)
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<i64> = rows.into_iter().map(|(id,)| id).collect();
        for id in &ids {
            sqlx::query(RELEASE_IN_FLIGHT)
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(ids)
    }

    async fn release_leases(&self, worker: &str) -> Result<u64, StoreError> {
        let painting = sqlx::query(
            "UPDATE jobs SET status = 'queued', leased_by = NULL, leased_until = NULL, attempts = attempts - 1
             WHERE leased_by = $1 AND status = 'running'",
        )
        .bind(worker)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let delivering = sqlx::query(
            "UPDATE jobs SET leased_by = NULL, leased_until = NULL, delivery_attempts = delivery_attempts - 1
             WHERE leased_by = $1 AND status IN ('done', 'failed')",
        )
        .bind(worker)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(painting + delivering)
    }

    async fn job_status(&self, id: i64) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT status FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(s,)| s))
    }

    async fn job_image(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT jpeg FROM job_images WHERE job_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
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
        Ok(sqlx::query_as(LEASE_DELIVERIES)
            .bind(holder)
            .bind(max)
            .bind(lease_secs)
            .bind(accounts)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn renew_delivery(&self, lease: Lease<'_>, lease_secs: f64) -> Result<bool, StoreError> {
        Ok(sqlx::query(&format!(
            "UPDATE jobs SET leased_until = now() + make_interval(secs => $4) WHERE {DELIVERY_LEASE}"
        ))
        .bind(lease.job)
        .bind(lease.holder)
        .bind(lease.attempt)
        .bind(lease_secs)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    async fn save_media_id(&self, lease: Lease<'_>, media_id: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE jobs SET media_id = $4 WHERE {DELIVERY_LEASE}"
        ))
        .bind(lease.job)
        .bind(lease.holder)
        .bind(lease.attempt)
        .bind(media_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn finish_delivery(
        &self,
        lease: Lease<'_>,
        end: DeliveryEnd<'_>,
    ) -> Result<bool, StoreError> {
        let sql = match end {
            DeliveryEnd::Sent => format!(
                "UPDATE jobs SET {} WHERE {DELIVERY_LEASE}",
                sent("$4")
            ),
            DeliveryEnd::Retry { .. } => format!(
                "UPDATE jobs SET leased_by = NULL, leased_until = NULL, delivery_error = $4,
                     deliver_after = now() + make_interval(secs => $5)
                 WHERE {DELIVERY_LEASE}"
            ),
            DeliveryEnd::Held { .. } => format!(
                "UPDATE jobs SET leased_by = NULL, leased_until = NULL, delivery_error = $4, held = $5
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
        Ok(query.execute(&self.pool).await?.rows_affected() == 1)
    }

    async fn claim_for_reply(
        &self,
        id: i64,
        holder: &str,
        lease_secs: f64,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(&format!(
            "UPDATE jobs SET leased_by = $2, leased_until = now() + make_interval(secs => $3)
             WHERE id = $1 AND {OWED} AND (leased_until IS NULL OR leased_until < now())
             RETURNING status"
        ))
        .bind(id)
        .bind(holder)
        .bind(lease_secs)
        .fetch_optional(&self.pool)
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
            "UPDATE jobs SET leased_by = $4, leased_until = now() + make_interval(secs => $5)
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE channel = $1 AND account = $2 AND user_id = $3 AND {OWED}
                   AND (leased_until IS NULL OR leased_until < now())
                 ORDER BY finished_at, id LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, status"
        ))
        .bind(channel)
        .bind(account)
        .bind(user_id)
        .bind(holder)
        .bind(lease_secs)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(claimed) = claimed {
            return Ok(waiting(claimed));
        }
        let (busy,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE channel = $1 AND account = $2 AND user_id = $3
                 AND status IN ('queued', 'running', 'done'))",
        )
        .bind(channel)
        .bind(account)
        .bind(user_id)
        .fetch_one(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let marked = sqlx::query(&format!(
            "UPDATE jobs SET {} WHERE id = $1 AND leased_by = $2",
            sent("$3")
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
            "UPDATE inbound_messages SET reply = $4 WHERE channel = $1 AND account = $2 AND dedup_key = $3",
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
            "UPDATE jobs SET leased_by = NULL, leased_until = NULL WHERE id = $1 AND leased_by = $2",
        )
        .bind(id)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn account_state(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<AccountState, StoreError> {
        let row: Option<(Option<String>, Option<i64>, bool)> = sqlx::query_as(ACCOUNT_STATE)
            .bind(channel)
            .bind(account)
            .fetch_optional(&self.pool)
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
        let claimed: Option<(String,)> = sqlx::query_as(CLAIM_TOKEN_REFRESH)
            .bind(channel)
            .bind(account)
            .bind(holder)
            .bind(now_ms)
            .bind(now_ms + hold_ms)
            .fetch_optional(&self.pool)
            .await?;
        Ok(claimed.is_some())
    }

    async fn release_token_refresh(
        &self,
        channel: &str,
        account: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(RELEASE_TOKEN_REFRESH)
            .bind(channel)
            .bind(account)
            .bind(holder)
            .execute(&self.pool)
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
        sqlx::query(SAVE_TOKEN)
            .bind(channel)
            .bind(account)
            .bind(token)
            .bind(expires_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn expire_token(
        &self,
        channel: &str,
        account: &str,
        token: &str,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(EXPIRE_TOKEN)
            .bind(channel)
            .bind(account)
            .bind(token)
            .execute(&self.pool)
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
        sqlx::query(SET_PASSIVE_ONLY)
            .bind(channel)
            .bind(account)
            .bind(passive_only)
            .execute(&self.pool)
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
        sqlx::query(
            "INSERT INTO material_cleanup (channel, account, media_id, due_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4)) ON CONFLICT DO NOTHING",
        )
        .bind(channel)
        .bind(account)
        .bind(media_id)
        .bind(due_in_secs)
        .execute(&self.pool)
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
        Ok(sqlx::query_as(
            "UPDATE material_cleanup SET due_at = now() + make_interval(secs => $4), attempts = attempts + 1
             WHERE (channel, account, media_id) IN (
                 SELECT channel, account, media_id FROM material_cleanup
                 WHERE channel = $1 AND account = $2 AND due_at <= now()
                 ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING media_id, attempts",
        )
        .bind(channel)
        .bind(account)
        .bind(max)
        .bind(retry_secs)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn material_cleaned(
        &self,
        channel: &str,
        account: &str,
        media_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM material_cleanup WHERE channel = $1 AND account = $2 AND media_id = $3",
        )
        .bind(channel)
        .bind(account)
        .bind(media_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn prune(&self, r: &Retention) -> Result<Pruned, StoreError> {
        let pictures = sqlx::query(
            "DELETE FROM job_images WHERE job_id IN (
                 SELECT i.job_id FROM job_images i JOIN jobs j ON j.id = i.job_id
                 WHERE (j.status = 'delivered' AND j.delivered_at < $1)
                    OR (j.status = 'failed' AND j.finished_at < $1)
                 LIMIT $2)",
        )
        .bind(r.picture_cutoff())
        .bind(r.batch)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let mut tx = self.pool.begin().await?;
        let expired: Vec<i64> = sqlx::query_scalar(
            "UPDATE jobs SET status = 'failed', fail_reason = 'expired', notified_at = $2,
                 error = coalesce(error, 'the held picture was not fetched within retention.held_days')
             WHERE id IN (SELECT id FROM jobs
                          WHERE status = 'done' AND held IS NOT NULL AND finished_at < $1
                            AND (leased_until IS NULL OR leased_until < now())
                          ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind(r.held_cutoff())
        .bind(r.now)
        .bind(r.batch)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM job_images WHERE job_id = ANY($1)")
            .bind(&expired)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let usage_rows = sqlx::query(
            "INSERT INTO usage_rollup
             SELECT * FROM usage_live WHERE day < $1 AND day NOT IN (SELECT day FROM usage_rollup)",
        )
        .bind(r.history_day())
        .execute(&self.pool)
        .await?
        .rows_affected();
        let mut tx = self.pool.begin().await?;
        let doomed: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE created_at < $1 AND status IN ('delivered', 'failed')
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(r.history_cutoff())
        .bind(r.batch)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM job_images WHERE job_id = ANY($1)")
            .bind(&doomed)
            .execute(&mut *tx)
            .await?;
        let jobs = sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
            .bind(&doomed)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        let messages = sqlx::query(
            "DELETE FROM inbound_messages WHERE id IN (
                 SELECT m.id FROM inbound_messages m
                 WHERE m.received_at < $1 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.inbound_id = m.id)
                 ORDER BY m.id LIMIT $2)",
        )
        .bind(r.history_cutoff())
        .bind(r.batch)
        .execute(&self.pool)
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

    async fn subscribe_finished(&self, finished: broadcast::Sender<i64>) -> Result<(), StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(FINISHED_CHANNEL).await?;
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(note) => {
                        for id in note.payload().split(',').filter_map(|id| id.parse().ok()) {
                            let _ = finished.send(id);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "finished-job notifications interrupted; the poll tick covers the gap");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(())
    }

    async fn announce_finished(&self, ids: &[i64]) -> Result<(), StoreError> {
        let payload = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(FINISHED_CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn subscribe_jobs(&self, wake: Arc<Notify>) -> Result<(), StoreError> {
        self.presence.start(&self.pool);
        self.listen(JOBS_CHANNEL, wake.clone()).await?;
        tokio::spawn(watch_orphans(self.pool.clone(), wake));
        Ok(())
    }

    async fn announce_jobs(&self) -> Result<(), StoreError> {
        self.notify(JOBS_CHANNEL).await
    }

    async fn subscribe_catalog(&self, changed: Arc<Notify>) -> Result<(), StoreError> {
        self.listen(CATALOG_CHANNEL, changed).await
    }

    async fn announce_catalog(&self) -> Result<(), StoreError> {
        self.notify(CATALOG_CHANNEL).await
    }
}

impl PgStore {
    /// Calls `wake.notify_one()` on every notification of `channel` (and after a lost connection, since
    /// notifications may have been missed; the listener reconnects by itself).
    async fn listen(&self, channel: &'static str, wake: Arc<Notify>) -> Result<(), StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(channel).await?;
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(_) => wake.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, channel, "notifications interrupted; the poll tick covers the gap");
                        wake.notify_one();
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(())
    }

    /// Notifies every listener of `channel`.
    async fn notify(&self, channel: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// How often a worker node looks for running jobs whose node is gone.
const ORPHAN_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Wakes this node's worker whenever a running job's node is gone (its presence lock vanished), so a free worker
/// takes the job over within a tick of the death instead of at the lease's expiry.
async fn watch_orphans(pool: PgPool, wake: Arc<Notify>) {
    let sql = format!(
        "WITH {LIVE_NODES} SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'running' AND {ORPHANED})"
    );
    loop {
        tokio::time::sleep(ORPHAN_CHECK_EVERY).await;
        match sqlx::query_as::<_, (bool,)>(&sql).fetch_one(&pool).await {
            Ok((true,)) => wake.notify_one(),
            Ok((false,)) => {}
            Err(e) => tracing::debug!(error = %e, "orphan check failed"),
        }
    }
}

/// Requests received and pictures finished per hour (Asia/Shanghai) of day `$1`.
const BY_HOUR: &str = "
SELECT hour, sum(requests)::bigint AS requests, sum(painted)::bigint AS painted FROM (
    SELECT extract(hour FROM received_at AT TIME ZONE 'Asia/Shanghai')::bigint AS hour, 1 AS requests, 0 AS painted
    FROM inbound_messages
    WHERE decision <> 'answered' AND (received_at AT TIME ZONE 'Asia/Shanghai')::date::text = $1
    UNION ALL
    SELECT extract(hour FROM finished_at AT TIME ZONE 'Asia/Shanghai')::bigint, 0, 1 FROM jobs
    WHERE status IN ('done', 'delivered') AND (finished_at AT TIME ZONE 'Asia/Shanghai')::date::text = $1
) t GROUP BY hour ORDER BY hour";

super::admin::impl_admin_store!(
    PgStore,
    pool,
    pool,
    |sql: &str| sql.to_string(),
    |t: time::OffsetDateTime| t,
    BY_HOUR
);
