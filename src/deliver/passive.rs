//! Answering a webhook request with the picture itself, inside WeChat's 5-second window: the fast path (the
//! request's own job finished within a few seconds) and the fetch flow (取图, for accounts without the
//! customer-service API and for pictures that could not be sent). The job is claimed with a short lease, uploaded,
//! and marked delivered together with the stored reply, so WeChat's retries of the message get the same picture.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::token::TokenService;
use super::{DeliverError, upload_name};
use crate::channel::ErrorClass;
use crate::channel::wechat::api::ApiError;
use crate::config::{DeliverySettings, ReplySettings};
use crate::model::{Inbound, Reply};
use crate::store::{Store, StoreError, Waiting};

/// A claim outlives the request that took it by this much at most.
const CLAIM_SECS: f64 = 10.0;
/// Permanent material uploaded for a passive reply is deleted this long after the reply (WeChat fetches the
/// picture when it relays the reply; the material library is capped).
const MATERIAL_LIFETIME: Duration = Duration::from_secs(30);
/// How often due material deletions are looked for.
const MATERIAL_SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long a failed material deletion waits before it is tried again.
const MATERIAL_RETRY: Duration = Duration::from_secs(60);
/// Attempts at deleting one piece of material before giving up.
pub const MATERIAL_ATTEMPTS: i32 = 10;

/// Passive picture replies for one node.
pub struct PassiveReplies {
    store: Arc<dyn Store>,
    tokens: Arc<TokenService>,
    holder: String,
    settings: DeliverySettings,
    replies: ReplySettings,
    finished: broadcast::Sender<i64>,
}

impl PassiveReplies {
    /// Passive replies through `tokens`' account; `holder` names this node on claims; `finished` carries the ids
    /// of jobs that finished anywhere.
    pub fn new(
        store: Arc<dyn Store>,
        tokens: Arc<TokenService>,
        holder: String,
        settings: DeliverySettings,
        replies: ReplySettings,
        finished: broadcast::Sender<i64>,
    ) -> Self {
        Self {
            store,
            tokens,
            holder,
            settings,
            replies,
            finished,
        }
    }

    /// Whether the account's API can be called at all (AppID and AppSecret set).
    pub fn is_enabled(&self) -> bool {
        self.tokens.api().is_configured()
    }

    /// Waits until `wait_until` for job `job_id` to finish; if it does, answers `inbound` with its picture (or the
    /// failure text), uploaded by `answer_by`. `None`: keep the reply already stored.
    pub async fn fast_path(
        &self,
        inbound: &Inbound,
        job_id: i64,
        wait_until: Instant,
        answer_by: Instant,
    ) -> Option<Reply> {
        let mut finished = self.finished.subscribe();
        loop {
            match self.store.job_status(job_id).await {
                Ok(Some(status)) if status == "done" || status == "failed" => break,
                Ok(Some(status)) if status == "queued" || status == "running" => {}
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "fast path: cannot read the job");
                    return None;
                }
            }
            loop {
                tokio::select! {
                    got = finished.recv() => match got {
                        Ok(id) if id != job_id => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = tokio::time::sleep_until(wait_until) => return None,
                }
            }
        }
        let status = match self
            .store
            .claim_for_reply(job_id, &self.holder, CLAIM_SECS)
            .await
        {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "fast path: cannot claim the job");
                return None;
            }
        };
        let answer = self
            .answer_claimed(inbound, job_id, &status, "passive", answer_by)
            .await;
        metrics::counter!("huabi_fast_path_total", "answered" => if answer.is_some() { "yes" } else { "no" })
            .increment(1);
        answer
    }

    /// Claims the follower's oldest finished job for a fetch.
    pub async fn claim_waiting(&self, inbound: &Inbound) -> Result<Waiting, StoreError> {
        self.store
            .claim_waiting(
                inbound.channel,
                &inbound.account,
                &inbound.user_id,
                &self.holder,
                CLAIM_SECS,
            )
            .await
    }

    /// The text a fetch answers with when it cannot (or need not) give a picture.
    pub fn fetch_text(&self, waiting: Waiting) -> Reply {
        let text = match waiting {
            Waiting::Picture { .. } | Waiting::Failed { .. } => &self.replies.fetch_retry,
            Waiting::InProgress => &self.replies.fetch_pending,
            Waiting::Nothing => &self.replies.fetch_nothing,
        };
        Reply::Text { text: text.clone() }
    }

    /// Answers `inbound` with the job `waiting` claimed (the message itself is already stored). `None`: nothing
    /// was claimed, or the picture could not be prepared by `answer_by`; the claim is then given back.
    pub async fn answer_fetch(
        &self,
        inbound: &Inbound,
        waiting: Waiting,
        answer_by: Instant,
    ) -> Option<Reply> {
        let (job_id, status) = match waiting {
            Waiting::Picture { job_id } => (job_id, "done"),
            Waiting::Failed { job_id } => (job_id, "failed"),
            Waiting::InProgress | Waiting::Nothing => return None,
        };
        self.answer_claimed(inbound, job_id, status, "fetch", answer_by)
            .await
    }

    /// Gives back a claim taken by [`PassiveReplies::claim_waiting`] that will not be answered.
    pub async fn release(&self, waiting: Waiting) {
        if let Waiting::Picture { job_id } | Waiting::Failed { job_id } = waiting
            && let Err(e) = self.store.release_claim(job_id, &self.holder).await
        {
            tracing::warn!(error = %e, job = job_id, "could not release a claim; it expires on its own");
        }
    }

    async fn answer_claimed(
        &self,
        inbound: &Inbound,
        job_id: i64,
        status: &str,
        via: &str,
        answer_by: Instant,
    ) -> Option<Reply> {
        let reply = if status == "failed" {
            let notice = self.store.failure_notice(job_id).await.ok().flatten();
            Ok(Reply::Text {
                text: notice.unwrap_or_else(|| self.replies.failed.clone()),
            })
        } else {
            tokio::time::timeout_at(answer_by, self.upload(job_id))
                .await
                .unwrap_or_else(|_| {
                    Err(DeliverError::Api(ApiError::Transport(
                        "upload did not finish inside the reply window".into(),
                    )))
                })
                .map(|media_id| Reply::Image { media_id })
        };
        let stored = match reply {
            Ok(reply) => self
                .store
                .finish_reply(job_id, &self.holder, inbound, &reply, via)
                .await
                .map(|marked| marked.then_some(reply)),
            Err(e) => {
                tracing::warn!(error = %e, job = job_id, via, "cannot answer with the picture; it is delivered later");
                Ok(None)
            }
        };
        match stored {
            Ok(Some(reply)) => Some(reply),
            Ok(None) => {
                self.release(Waiting::Picture { job_id }).await;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, job = job_id, "cannot record the passive reply");
                self.release(Waiting::Picture { job_id }).await;
                None
            }
        }
    }

    /// Uploads the job's picture: temporary media, or permanent material (deleted again shortly) on accounts
    /// without the customer-service API, whose temporary uploads WeChat refuses with 48001.
    async fn upload(&self, job_id: i64) -> Result<String, DeliverError> {
        let jpeg = self
            .store
            .job_image(job_id)
            .await?
            .ok_or(DeliverError::MissingPicture(job_id))?;
        let api = self.tokens.api();
        let name = upload_name(job_id);
        let passive_only = self.settings.passive_only || self.tokens.passive_only().await?;
        if !passive_only {
            let temporary = self
                .tokens
                .call(|t| {
                    let (jpeg, name) = (jpeg.clone(), name.as_str());
                    async move { api.upload_image(&t, jpeg, name).await }
                })
                .await;
            match temporary {
                Err(DeliverError::Api(e)) if e.class() == ErrorClass::Unauthorized => {
                    tracing::warn!(error = %e, "temporary media refused (48001): switching the account to passive-only delivery");
                    self.tokens.mark_passive_only().await?;
                }
                other => return other,
            }
        }
        let media_id = self
            .tokens
            .call(|t| {
                let (jpeg, name) = (jpeg.clone(), name.as_str());
                async move { api.add_material_image(&t, jpeg, name).await }
            })
            .await?;
        let api = self.tokens.api();
        self.store
            .schedule_material_cleanup(
                api.platform(),
                &api.credential(),
                &media_id,
                MATERIAL_LIFETIME.as_secs_f64(),
            )
            .await?;
        Ok(media_id)
    }

    /// Deletes the account's permanent material that is due (any node's uploads: the rows are shared); returns
    /// how many were deleted. A deletion that fails is tried again later, up to [`MATERIAL_ATTEMPTS`] times.
    pub async fn sweep_materials(&self) -> Result<usize, StoreError> {
        let api = self.tokens.api();
        let (platform, credential) = (api.platform(), api.credential());
        let due = self
            .store
            .due_material_cleanups(platform, &credential, 50, MATERIAL_RETRY.as_secs_f64())
            .await?;
        let mut deleted = 0;
        for (media_id, attempts) in due {
            let outcome = self
                .tokens
                .call(|t| {
                    let media_id = media_id.clone();
                    async move { api.delete_material(&t, &media_id).await }
                })
                .await;
            match outcome {
                // 40007: already gone (an earlier attempt deleted it and its answer was lost).
                Ok(()) | Err(DeliverError::Api(ApiError::Platform { code: 40007, .. })) => {
                    deleted += 1
                }
                Err(e) if attempts < MATERIAL_ATTEMPTS => {
                    tracing::warn!(error = %e, %media_id, attempts, "could not delete permanent material; trying again later");
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, %media_id, attempts, "giving up deleting permanent material (delete it in the WeChat admin)");
                }
            }
            self.store
                .material_cleaned(platform, &credential, &media_id)
                .await?;
        }
        Ok(deleted)
    }

    /// Sweeps due material every [`MATERIAL_SWEEP_EVERY`] until `stop`.
    pub async fn sweep_materials_until(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(MATERIAL_SWEEP_EVERY) => {}
            }
            if let Err(e) = self.sweep_materials().await {
                tracing::warn!(error = %e, "could not sweep permanent material; trying again later");
            }
        }
    }
}
