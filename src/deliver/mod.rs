//! Delivery: lease the finished jobs of the accounts this node sends through, upload each picture and send it
//! through the job's own platform and account (or tell the follower a painting failed), retry transient errors
//! with backoff and jitter, and keep what cannot be sent for the fetch flow. [`passive`] answers a WeChat webhook
//! request with the picture itself; [`wechat`] is a WeChat account behind the neutral [`Outbound`].

pub mod passive;
pub mod token;
pub mod wechat;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channel::registry::Channels;
use crate::channel::wechat::api::ApiError;
use crate::channel::{ErrorClass, Outbound, Picture, SendError};
use crate::config::DeliverySettings;
use crate::store::{DeliveryEnd, DeliveryTask, Hold, Store, StoreError};

/// Why a delivery step failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// WeChat's API refused or did not answer.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A platform refused or did not answer.
    #[error(transparent)]
    Send(#[from] SendError),
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

/// What to record after a failed attempt: retry later (not sooner than the platform asked), or keep the picture
/// for the fetch flow.
pub fn end_for<'a>(
    error: &'a SendError,
    message: &'a str,
    attempt: i32,
    settings: &DeliverySettings,
    jitter: f64,
) -> DeliveryEnd<'a> {
    let held = |hold| DeliveryEnd::Held {
        hold,
        error: message,
    };
    match error.class {
        ErrorClass::Transient | ErrorClass::TokenInvalid if attempt >= settings.max_attempts => {
            held(Hold::GaveUp)
        }
        ErrorClass::Transient | ErrorClass::TokenInvalid => DeliveryEnd::Retry {
            after_secs: backoff_secs(settings, attempt, jitter)
                .max(error.retry_after_secs.unwrap_or(0.0)),
            error: message,
        },
        ErrorClass::WindowClosed => held(Hold::WindowClosed),
        ErrorClass::QuotaUsed => held(Hold::QuotaUsed),
        ErrorClass::Unauthorized => held(Hold::PassiveOnly),
        ErrorClass::Blocked => held(Hold::Blocked),
        ErrorClass::Permanent => held(Hold::Rejected),
    }
}

/// One deliverer: leases finished jobs of the accounts in its registry and sends each through its own account.
pub struct Deliverer {
    store: Arc<dyn Store>,
    channels: Arc<Channels>,
    id: String,
    settings: DeliverySettings,
    failed_text: String,
}

impl Deliverer {
    /// A deliverer named `id` (the name on its leases) sending through `channels`.
    pub fn new(
        store: Arc<dyn Store>,
        channels: Arc<Channels>,
        id: String,
        settings: DeliverySettings,
        failed_text: String,
    ) -> Self {
        Self {
            store,
            channels,
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
        // A deliverer that was paused past its lease must not send what another deliverer may have sent already.
        if !self
            .store
            .renew_delivery(task.lease(&self.id), self.settings.lease_secs)
            .await?
        {
            crate::telemetry::late_result("deliver", task.job_id, task.delivery_attempts);
            return Ok(());
        }
        let outbound = self
            .channels
            .get(&task.channel, &task.account)
            .map(|a| a.outbound.clone());
        let (outcome, passive_only) = match outbound {
            Some(outbound) => self.attempt(&*outbound, &task).await,
            // Leased by key, so only a registry changed under a running loop gets here.
            None => (
                Err(SendError::new(
                    ErrorClass::Transient,
                    format!("no account {}/{} on this node", task.channel, task.account),
                )
                .into()),
                false,
            ),
        };
        let message;
        let end = match &outcome {
            Ok(()) => DeliveryEnd::Sent,
            Err(DeliverError::Send(error)) => {
                message = error.to_string();
                if error.class == ErrorClass::Unauthorized && !passive_only {
                    tracing::warn!(%error, channel = task.channel, account = task.account, "the platform refused the sending API (WeChat 48001): switching the account to passive-only delivery (取图)");
                    if let Some(account) = self.channels.get(&task.channel, &task.account)
                        && let Err(e) = account.outbound.mark_passive_only().await
                    {
                        tracing::warn!(error = %e, "could not record the account as passive-only");
                    }
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
            Err(e) => {
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
        let class = match &outcome {
            Ok(()) => "none",
            Err(DeliverError::Send(error)) => error.class.as_str(),
            Err(DeliverError::Store(_)) => "store",
            Err(_) => "other",
        };
        metrics::counter!("huabi_deliveries_total", "outcome" => label, "class" => class, "channel" => task.channel.clone()).increment(1);
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
        // Recorded within the lease: a delivery sent but not recorded would be sent again by the next lease.
        let patience = Duration::from_secs_f64(self.settings.lease_secs);
        let lease = task.lease(&self.id);
        if !crate::store::persist(patience, || self.store.finish_delivery(lease, end)).await? {
            crate::telemetry::late_result("deliver", task.job_id, task.delivery_attempts);
        }
        Ok(())
    }

    /// Sends the task's picture or notice through `outbound`; also says whether the account was passive-only.
    async fn attempt(
        &self,
        outbound: &dyn Outbound,
        task: &DeliveryTask,
    ) -> (Result<(), DeliverError>, bool) {
        // `delivery.passive_only` describes WeChat accounts without the customer-service API.
        let configured =
            self.settings.passive_only && outbound.platform() == crate::channel::wechat::CHANNEL;
        let passive_only = match outbound.passive_only().await {
            Ok(flag) => configured || flag,
            Err(e) => return (Err(e.into()), false),
        };
        let outcome = if passive_only {
            Err(SendError::new(
                ErrorClass::Unauthorized,
                "account is passive-only: kept for the fetch flow",
            )
            .into())
        } else if task.is_picture() {
            self.send_picture(outbound, task).await
        } else {
            let text = task.notice.as_deref().unwrap_or(&self.failed_text);
            outbound
                .send_text(&task.user_id, text)
                .await
                .map_err(DeliverError::from)
        };
        (outcome, passive_only)
    }

    /// Uploads the picture (unless an earlier attempt did, or the platform uploads with the send) and sends it.
    async fn send_picture(
        &self,
        outbound: &dyn Outbound,
        task: &DeliveryTask,
    ) -> Result<(), DeliverError> {
        if let Some(media_id) = &task.media_id {
            outbound
                .send_picture(&task.user_id, Picture::Uploaded(media_id))
                .await?;
            return Ok(());
        }
        let jpeg = self
            .store
            .job_image(task.job_id)
            .await?
            .ok_or(DeliverError::MissingPicture(task.job_id))?;
        let limits = outbound.media_limits();
        if jpeg.len() > limits.max_bytes {
            return Err(SendError::new(
                ErrorClass::Permanent,
                format!(
                    "picture of {} bytes is over {}'s {} bytes",
                    jpeg.len(),
                    outbound.platform(),
                    limits.max_bytes
                ),
            )
            .into());
        }
        let name = upload_name(task.job_id);
        let picture = match outbound.upload_picture(&jpeg, &name).await? {
            Some(media_id) => {
                self.store
                    .save_media_id(task.lease(&self.id), &media_id)
                    .await?;
                outbound
                    .send_picture(&task.user_id, Picture::Uploaded(&media_id))
                    .await?;
                return Ok(());
            }
            None => Picture::Jpeg {
                bytes: &jpeg,
                name: &name,
            },
        };
        outbound.send_picture(&task.user_id, picture).await?;
        Ok(())
    }

    /// One step: leases up to `concurrency` due deliveries and makes each attempt, one after another, recording how
    /// each ended; returns how many were attempted. Tests step the deliverer with it.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let tasks = self
            .store
            .lease_deliveries(
                &self.id,
                self.settings.concurrency as i64,
                self.settings.lease_secs,
                &self.channels.keys(),
            )
            .await?;
        let attempted = tasks.len();
        for task in tasks {
            self.deliver(task).await?;
        }
        Ok(attempted)
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
        let accounts = this.channels.keys();
        let slots = Arc::new(Semaphore::new(this.settings.concurrency));
        let mut running = JoinSet::new();
        while !stop.is_cancelled() {
            let free = slots.available_permits();
            if free > 0 {
                let leased = this
                    .store
                    .lease_deliveries(&this.id, free as i64, this.settings.lease_secs, &accounts)
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
        let end = |e: &ApiError, attempt| match end_for(
            &SendError::new(e.class(), e.to_string()),
            "",
            attempt,
            &s,
            0.5,
        ) {
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

    #[test]
    fn a_blocked_follower_ends_delivery_and_retry_after_is_honoured() {
        let s = settings();
        let blocked = SendError::new(ErrorClass::Blocked, "bot was blocked by the user");
        assert!(matches!(
            end_for(&blocked, "", 1, &s, 0.5),
            DeliveryEnd::Held {
                hold: Hold::Blocked,
                ..
            }
        ));
        let slow = SendError {
            retry_after_secs: Some(30.0),
            ..SendError::new(ErrorClass::Transient, "Too Many Requests")
        };
        match end_for(&slow, "", 1, &s, 0.5) {
            DeliveryEnd::Retry { after_secs, .. } => assert_eq!(after_secs, 30.0),
            other => panic!("{other:?}"),
        }
    }
}
