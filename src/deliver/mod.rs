//! Delivery: lease finished jobs, upload each picture as temporary media and send it as a customer-service
//! message (or tell the follower a painting failed), retry transient errors with backoff and jitter, and keep what
//! cannot be sent for the fetch flow. [`passive`] answers a webhook request with the picture itself.

pub mod media;
pub mod passive;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channel::wechat::api::{ApiError, ErrorClass};
use crate::config::DeliverySettings;
use crate::store::{DeliveryEnd, DeliveryTask, Hold, Store, StoreError};
use token::TokenService;

/// Why a delivery step failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// WeChat's API refused or did not answer.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The finished job has no stored picture.
    #[error("job {0} has no stored picture")]
    MissingPicture(i64),
}

/// The file name a picture is uploaded under (WeChat wants an extension).
pub fn upload_name(job_id: i64) -> String {
    format!("huabi-{job_id}.jpg")
}

/// Seconds to wait before delivery attempt `attempt + 1`: base·2^(attempt−1), capped, with ±50 % jitter.
pub fn backoff_secs(settings: &DeliverySettings, attempt: i32, jitter: f64) -> f64 {
    let exponent = attempt.clamp(1, 30) - 1;
    let plain = (settings.backoff_base_secs * 2f64.powi(exponent)).min(settings.backoff_max_secs);
    plain * (0.5 + jitter.clamp(0.0, 1.0))
}

/// What to record after a failed attempt: retry later, or keep the picture for the fetch flow.
pub fn end_for<'a>(
    error: &'a ApiError,
    message: &'a str,
    attempt: i32,
    settings: &DeliverySettings,
    jitter: f64,
) -> DeliveryEnd<'a> {
    let held = |hold| DeliveryEnd::Held {
        hold,
        error: message,
    };
    match error.class() {
        ErrorClass::Transient | ErrorClass::TokenInvalid if attempt >= settings.max_attempts => {
            held(Hold::GaveUp)
        }
        ErrorClass::Transient | ErrorClass::TokenInvalid => DeliveryEnd::Retry {
            after_secs: backoff_secs(settings, attempt, jitter),
            error: message,
        },
        ErrorClass::WindowClosed => held(Hold::WindowClosed),
        ErrorClass::QuotaUsed => held(Hold::QuotaUsed),
        ErrorClass::Unauthorized => held(Hold::PassiveOnly),
        ErrorClass::Permanent => held(Hold::Rejected),
    }
}

/// One deliverer: leases finished jobs and sends them through WeChat's API.
pub struct Deliverer {
    store: Arc<dyn Store>,
    tokens: Arc<TokenService>,
    id: String,
    settings: DeliverySettings,
    failed_text: String,
}

impl Deliverer {
    /// A deliverer named `id` (the name on its leases).
    pub fn new(
        store: Arc<dyn Store>,
        tokens: Arc<TokenService>,
        id: String,
        settings: DeliverySettings,
        failed_text: String,
    ) -> Self {
        Self {
            store,
            tokens,
            id,
            settings,
            failed_text,
        }
    }

    /// The name on this deliverer's leases.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// One delivery attempt, recorded in the store whatever happens.
    async fn deliver(&self, task: DeliveryTask) -> Result<(), StoreError> {
        let passive_only = self.settings.passive_only || self.tokens.passive_only().await?;
        let outcome = if passive_only {
            Err(DeliverError::Api(ApiError::Platform {
                code: 48001,
                message: "account is passive-only: kept for the fetch flow".into(),
            }))
        } else if task.is_picture() {
            self.send_picture(&task).await
        } else {
            let text = task.notice.as_deref().unwrap_or(&self.failed_text);
            let user = task.user_id.as_str();
            let api = self.tokens.api();
            self.tokens
                .call(|t| async move { api.send_text(&t, user, text).await })
                .await
        };
        let message;
        let end = match &outcome {
            Ok(()) => DeliveryEnd::Sent,
            Err(DeliverError::Api(error)) => {
                message = error.to_string();
                if error.class() == ErrorClass::Unauthorized && !passive_only {
                    tracing::warn!(%error, "WeChat refused the customer-service API (48001): switching the account to passive-only delivery (取图)");
                    self.tokens.mark_passive_only().await?;
                }
                end_for(
                    error,
                    &message,
                    task.delivery_attempts,
                    &self.settings,
                    rand::random(),
                )
            }
            Err(DeliverError::Store(e)) => {
                message = e.to_string();
                DeliveryEnd::Retry {
                    after_secs: backoff_secs(
                        &self.settings,
                        task.delivery_attempts,
                        rand::random(),
                    ),
                    error: &message,
                }
            }
            Err(e @ DeliverError::MissingPicture(_)) => {
                message = e.to_string();
                DeliveryEnd::Held {
                    hold: Hold::Rejected,
                    error: &message,
                }
            }
        };
        let label = match end {
            DeliveryEnd::Sent => "sent",
            DeliveryEnd::Retry { .. } => "retry",
            DeliveryEnd::Held { hold, .. } => hold.as_str(),
        };
        metrics::counter!("huabi_deliveries_total", "outcome" => label).increment(1);
        match end {
            DeliveryEnd::Sent => {
                tracing::debug!(job = task.job_id, picture = task.is_picture(), "delivered")
            }
            _ => {
                tracing::warn!(
                    job = task.job_id,
                    attempt = task.delivery_attempts,
                    ?end,
                    "not delivered"
                )
            }
        }
        if !self
            .store
            .finish_delivery(task.job_id, &self.id, end)
            .await?
        {
            tracing::warn!(
                job = task.job_id,
                "delivery lease lost; another deliverer owns the job"
            );
        }
        Ok(())
    }

    /// Uploads the picture (unless an earlier attempt did) and sends it.
    async fn send_picture(&self, task: &DeliveryTask) -> Result<(), DeliverError> {
        let api = self.tokens.api();
        let media_id = match &task.media_id {
            Some(media_id) => media_id.clone(),
            None => {
                let jpeg = self
                    .store
                    .job_image(task.job_id)
                    .await?
                    .ok_or(DeliverError::MissingPicture(task.job_id))?;
                let name = upload_name(task.job_id);
                let media_id = self
                    .tokens
                    .call(|t| {
                        let (jpeg, name) = (jpeg.clone(), name.as_str());
                        async move { api.upload_image(&t, jpeg, name).await }
                    })
                    .await?;
                self.store
                    .save_media_id(task.job_id, &self.id, &media_id)
                    .await?;
                media_id
            }
        };
        let (media_id, user) = (media_id.as_str(), task.user_id.as_str());
        self.tokens
            .call(|t| async move { api.send_image(&t, user, media_id).await })
            .await
    }

    /// Delivers until `stop`: keeps up to `concurrency` deliveries running, leasing more as each one ends (a slow
    /// call holds one slot, not a whole round), and sleeps while nothing is due until a job finishes (`finished`)
    /// or the poll tick. On stop, deliveries in hand finish and the leases of the rest are given back.
    pub async fn run(
        self,
        mut finished: broadcast::Receiver<i64>,
        stop: CancellationToken,
        poll: Duration,
    ) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.settings.concurrency));
        let mut running = JoinSet::new();
        while !stop.is_cancelled() {
            let free = slots.available_permits();
            if free > 0 {
                let leased = this
                    .store
                    .lease_deliveries(&this.id, free as i64, this.settings.lease_secs)
                    .await;
                match leased {
                    Ok(tasks) if !tasks.is_empty() => {
                        for task in tasks {
                            let Ok(slot) = slots.clone().try_acquire_owned() else {
                                break;
                            };
                            let this = this.clone();
                            running.spawn(async move {
                                let _slot = slot;
                                this.deliver(task).await
                            });
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "deliverer could not reach the store"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = finished.recv() => {}
                _ = tokio::time::sleep(poll) => {}
                Some(ended) = running.join_next(), if !running.is_empty() => log_ended(ended),
            }
        }
        while let Some(ended) = running.join_next().await {
            log_ended(ended);
        }
        if let Err(e) = this.store.release_leases(&this.id).await {
            tracing::warn!(error = %e, "could not release delivery leases; they expire on their own");
        }
    }
}

/// Logs a delivery task that could not record its outcome (its lease expires and another attempt follows).
fn log_ended(ended: Result<Result<(), StoreError>, tokio::task::JoinError>) {
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "delivery outcome not recorded; it is retried after its lease")
        }
        Err(e) => tracing::error!(error = %e, "delivery task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings() -> DeliverySettings {
        Settings::load_from(Default::default())
            .expect("defaults")
            .delivery
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let s = settings();
        assert_eq!(backoff_secs(&s, 1, 0.5), 1.0);
        assert_eq!(backoff_secs(&s, 2, 0.5), 2.0);
        assert_eq!(backoff_secs(&s, 4, 0.5), 8.0);
        assert_eq!(backoff_secs(&s, 20, 0.5), 60.0);
        assert_eq!(backoff_secs(&s, 3, 0.0), 2.0);
        assert_eq!(backoff_secs(&s, 3, 1.0), 6.0);
        assert_eq!(backoff_secs(&s, -5, 0.5), 1.0);
    }

    #[test]
    fn errors_map_to_retry_or_hold() {
        let s = settings();
        let code = |code| ApiError::Platform {
            code,
            message: String::new(),
        };
        let end = |e: &ApiError, attempt| match end_for(e, "", attempt, &s, 0.5) {
            DeliveryEnd::Retry { .. } => "retry",
            DeliveryEnd::Held { hold, .. } => hold.as_str(),
            DeliveryEnd::Sent => "sent",
        };
        assert_eq!(end(&code(-1), 1), "retry");
        assert_eq!(end(&code(45009), 3), "retry");
        assert_eq!(end(&ApiError::Transport("timeout".into()), 2), "retry");
        assert_eq!(end(&ApiError::Status(503), 2), "retry");
        assert_eq!(end(&code(40001), 1), "retry");
        assert_eq!(end(&code(-1), s.max_attempts), "gave_up");
        assert_eq!(end(&code(45015), 1), "window_closed");
        assert_eq!(end(&code(45047), 1), "quota_used");
        assert_eq!(end(&code(48001), 1), "passive_only");
        assert_eq!(end(&code(40003), 1), "rejected");
    }
}
