//! The message use case: a follower's [`Inbound`] becomes a plan (command, campaign, limits), the reads the plan
//! needs (quota, queue status, the last request), and an admission that stores the message, its reply and its job
//! exactly once. The webhook and the console's test chat both call it; how a picture travels back (a passive reply,
//! a page) stays with the caller.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::command::{self, Catalog, Plan};
use crate::config::Settings;
use crate::model::{Inbound, Reply};
use crate::model::{NewJob, Refusal};
use crate::store::{Admission, Store, StoreError, Submission};

/// What a message asks for, once planned.
#[derive(Debug)]
pub enum Step<'a> {
    /// 取图: the caller answers with the follower's waiting picture, as its platform can.
    Fetch,
    /// Store this (message, reply and maybe a job) through [`Inbox::admit`].
    Admit(Box<Submission<'a>>),
}

/// Plans and admits messages.
#[derive(Clone)]
pub struct Inbox {
    store: Arc<dyn Store>,
    settings: Arc<Settings>,
    catalog: Arc<RwLock<Arc<Catalog>>>,
    queue_depth: Arc<AtomicI64>,
    wake_workers: Arc<Notify>,
    announce_jobs: Arc<Notify>,
}

impl Inbox {
    /// An inbox over the store; `catalog` is replaced when campaigns change, `queue_depth` counted elsewhere.
    pub fn new(
        store: Arc<dyn Store>,
        settings: Arc<Settings>,
        catalog: Arc<RwLock<Arc<Catalog>>>,
        queue_depth: Arc<AtomicI64>,
        wake_workers: Arc<Notify>,
        announce_jobs: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            settings,
            catalog,
            queue_depth,
            wake_workers,
            announce_jobs,
        }
    }

    /// The grammar and campaigns in use now.
    pub fn catalog(&self) -> Arc<Catalog> {
        // A panic while holding the lock cannot leave a half-written Arc behind.
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Jobs queued, as this node last counted them.
    pub fn queue_depth(&self) -> i64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// Plans `inbound` as of `now` (campaign windows and limits use it). `can_fetch` says whether the caller can
    /// answer 取图 itself; without it, 取图 is answered with "try again".
    pub async fn prepare<'a>(
        &self,
        inbound: &'a Inbound,
        now: OffsetDateTime,
        can_fetch: bool,
    ) -> Result<Step<'a>, StoreError> {
        let settings = &*self.settings;
        let catalog = self.catalog();
        let plan = command::plan(&inbound.kind, settings, &catalog, now);
        let answer = |job: Option<NewJob>, reply: Reply, refusal: Option<Refusal>| Submission {
            inbound,
            limits: job.as_ref().and_then(|job| {
                command::limit_check(
                    settings,
                    &catalog,
                    job,
                    (inbound.channel, &inbound.account, &inbound.user_id),
                    (now, self.queue_depth()),
                )
            }),
            job,
            reply,
            refusal,
        };
        let text = |text: &str| Reply::Text {
            text: text.to_string(),
        };
        let (channel, account, user) = (inbound.channel, &inbound.account, &inbound.user_id);
        Ok(Step::Admit(Box::new(match plan {
            Plan::Fetch if can_fetch => return Ok(Step::Fetch),
            Plan::Fetch => answer(None, text(&settings.replies.fetch_retry), None),
            Plan::Reply(reply) => answer(None, reply, None),
            Plan::Refuse { reply, refusal } => answer(None, reply, Some(refusal)),
            Plan::Paint { job, reply } => answer(Some(job), reply, None),
            Plan::Quota => {
                let used = self
                    .store
                    .requests_today(channel, account, user, now)
                    .await?;
                answer(None, command::quota_reply(used, settings), None)
            }
            Plan::Status => {
                let status = self.store.queue_status(channel, account, user).await?;
                answer(None, command::status_reply(status, &settings.replies), None)
            }
            Plan::Again => {
                let last = self.store.last_request(channel, account, user).await?;
                match command::plan_again(last, settings, &catalog, now) {
                    Plan::Paint { job, reply } => answer(Some(job), reply, None),
                    Plan::Refuse { reply, refusal } => answer(None, reply, Some(refusal)),
                    _ => answer(None, text(&settings.replies.again_nothing), None),
                }
            }
        })))
    }

    /// Stores the message, its reply and its job exactly once (limits decided inside), and wakes the workers of
    /// this node and of the others when a job was created.
    pub async fn admit(&self, submission: &Submission<'_>) -> Result<Admission, StoreError> {
        let admission = self.store.submit(submission).await?;
        match &admission {
            Admission::Accepted { job_id } => {
                metrics::counter!("huabi_webhook_admitted_total", "job" => if job_id.is_some() { "yes" } else { "no" })
                    .increment(1);
                tracing::debug!(dedup_key = %submission.inbound.dedup_key, kind = submission.inbound.kind.name(), ?job_id, "admitted");
                if job_id.is_some() {
                    self.wake_workers.notify_one();
                    self.announce_jobs.notify_one();
                }
            }
            Admission::Refused { .. } => {
                metrics::counter!("huabi_webhook_limited_total").increment(1);
            }
            Admission::Duplicate { .. } => {
                metrics::counter!("huabi_webhook_duplicates_total").increment(1);
                tracing::info!(dedup_key = %submission.inbound.dedup_key, "retry of an admitted message");
            }
        }
        Ok(admission)
    }
}
