//! The janitor: keeps storage bounded by pruning picture bytes, expired held pictures, old messages and finished
//! jobs (daily usage rolled up first), a bounded batch at a time so it never holds long locks.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;
use crate::store::{Pruned, Retention, Store, StoreError};

/// Prunes the store by the retention settings.
pub struct Janitor {
    store: Arc<dyn Store>,
    settings: RetentionSettings,
}

impl Janitor {
    /// A janitor for `store`.
    pub fn new(store: Arc<dyn Store>, settings: RetentionSettings) -> Self {
        Self { store, settings }
    }

    /// The retention policy as of `now`.
    fn policy(&self, now: OffsetDateTime) -> Retention {
        Retention {
            now,
            picture_days: self.settings.picture_days,
            held_days: self.settings.held_days,
            history_days: self.settings.history_days,
            batch: self.settings.batch,
        }
    }

    /// One whole pass as of `now`: steps until nothing is left to prune; returns the totals.
    pub async fn run_once(&self, now: OffsetDateTime) -> Result<Pruned, StoreError> {
        let policy = self.policy(now);
        let mut total = Pruned::default();
        loop {
            let step = self.store.prune(&policy).await?;
            total.pictures += step.pictures;
            total.expired += step.expired;
            total.usage_rows += step.usage_rows;
            total.jobs += step.jobs;
            total.messages += step.messages;
            if !step.more(policy.batch) {
                break;
            }
        }
        for (what, n) in [
            ("pictures", total.pictures),
            ("expired", total.expired),
            ("usage_rows", total.usage_rows),
            ("jobs", total.jobs),
            ("messages", total.messages),
        ] {
            metrics::counter!("huabi_pruned_total", "what" => what).increment(n);
        }
        Ok(total)
    }

    /// Runs a pass at start and then every `every_secs` until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let period = Duration::from_secs_f64(self.settings.every_secs);
        loop {
            match self.run_once(OffsetDateTime::now_utc()).await {
                Ok(pruned) if pruned != Pruned::default() => {
                    tracing::info!(?pruned, "retention pass")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention pass failed; trying again later"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }
}
