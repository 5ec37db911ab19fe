//! The worker: lease a batch of compatible jobs, keep the leases alive while the engine paints, store each
//! labelled JPEG, and give failed jobs back. Woken at once in-process, with a poll tick as the safety net.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::config::JobSettings;
use crate::engine::label::AigcRecord;
use crate::engine::{Batch, BatchKey, EngineError, EngineHandle, Item, SchedulerKind};
use crate::store::{Capabilities, JobFate, LeasedJob, Store, StoreError};

/// How often a worker tells the store what it paints (the store counts a worker live for 30 s).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// What one [`Worker::run_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was waiting.
    Empty,
    /// A batch ran: how many jobs finished and how many were given back.
    Painted {
        /// Jobs stored as done.
        done: usize,
        /// Jobs requeued or failed.
        failed: usize,
    },
}

/// One worker: a store, an engine and a name its leases carry.
pub struct Worker {
    store: Arc<dyn Store>,
    engine: EngineHandle,
    id: String,
    jobs: JobSettings,
    max_batch: i64,
    provider: String,
    finished: broadcast::Sender<i64>,
    announced: Mutex<Option<Instant>>,
}

fn batch_of(jobs: &[LeasedJob]) -> Result<Batch, String> {
    let first = jobs.first().ok_or("empty batch")?;
    let scheduler: SchedulerKind = first.scheduler.parse().map_err(|e| format!("{e}"))?;
    let size = |v: i32| u32::try_from(v).map_err(|_| format!("invalid size {v}"));
    Ok(Batch {
        key: BatchKey {
            model: first.model.clone(),
            loras: serde_json::from_str(&first.loras)
                .map_err(|e| format!("job {}: LoRAs {:?}: {e}", first.id, first.loras))?,
            width: size(first.width)?,
            height: size(first.height)?,
            steps: usize::try_from(first.steps)
                .map_err(|_| format!("invalid steps {}", first.steps))?,
            scheduler,
            strength: None,
        },
        items: jobs
            .iter()
            .map(|j| Item {
                prompt: j.prompt.clone(),
                negative_prompt: j.negative_prompt.clone(),
                seed: j.seed as u64,
                guidance: j.guidance,
                init_latents: None,
                init_image: None,
            })
            .collect(),
    })
}

impl Worker {
    /// A worker named `id` painting up to `max_batch` jobs at once.
    pub fn new(
        store: Arc<dyn Store>,
        engine: EngineHandle,
        id: String,
        jobs: JobSettings,
        max_batch: usize,
        provider: String,
        finished: broadcast::Sender<i64>,
    ) -> Self {
        Self {
            store,
            engine,
            id,
            jobs,
            max_batch: max_batch.max(1) as i64,
            provider,
            finished,
            announced: Mutex::new(None),
        }
    }

    /// What this worker paints: the models of its catalogue it is allowed, and the LoRA files it has (read from
    /// disk each time, so a model or LoRA copied in is painted without a restart).
    pub fn capabilities(&self) -> Capabilities {
        let catalog = self.engine.catalog();
        Capabilities {
            models: catalog.paintable(),
            loras: catalog.lora_names(),
        }
    }

    /// Tells the store what this worker paints, at most every [`ANNOUNCE_EVERY`].
    async fn announce(&self, can: &Capabilities) -> Result<(), StoreError> {
        let due = self
            .announced
            .lock()
            .map(|last| last.is_none_or(|at| at.elapsed() >= ANNOUNCE_EVERY))
            .unwrap_or(true);
        if due {
            self.store.worker_seen(&self.id, can).await?;
            if let Ok(mut last) = self.announced.lock() {
                *last = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Tells this process (directly) and every other node (through the store) that jobs are done or failed for
    /// good, so deliverers and waiting webhook requests act at once.
    async fn announce_finished(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        for &id in ids {
            let _ = self.finished.send(id);
        }
        if let Err(e) = self.store.announce_finished(ids).await {
            tracing::warn!(error = %e, "could not announce finished jobs; deliverers find them on their poll tick");
        }
    }

    /// The name on this worker's leases.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Leases one batch and paints it.
    pub async fn run_once(&self) -> Result<Outcome, StoreError> {
        let exhausted = self.store.fail_exhausted(self.jobs.max_attempts).await?;
        if !exhausted.is_empty() {
            tracing::warn!(jobs = ?exhausted, "jobs failed after their last lease expired");
            self.announce_finished(&exhausted).await;
        }
        let can = self.capabilities();
        self.announce(&can).await?;
        let jobs = self
            .store
            .lease_jobs(
                &self.id,
                &can,
                self.max_batch,
                self.jobs.lease_secs,
                self.jobs.max_attempts,
            )
            .await?;
        if jobs.is_empty() {
            return Ok(Outcome::Empty);
        }
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        tracing::info!(worker = %self.id, ?ids, "painting a batch");
        let heartbeat = self.keep_leases_alive();
        let outcome = self.paint_and_store(&jobs).await;
        heartbeat.cancel();
        outcome
    }

    /// Paints the jobs as one batch and stores the pictures. A batch the engine refuses as invalid is retried job by
    /// job, so one bad request (say, an over-long prompt) fails alone instead of sinking its neighbours; a job that is
    /// invalid on its own fails at once, since no retry can fix it.
    async fn paint_and_store(&self, jobs: &[LeasedJob]) -> Result<Outcome, StoreError> {
        let (mut done, mut failed) = (0, 0);
        let mut finished = Vec::new();
        let mut groups: Vec<&[LeasedJob]> = vec![jobs];
        while let Some(group) = groups.pop() {
            let painted = match batch_of(group) {
                Ok(batch) => {
                    let records = group
                        .iter()
                        .map(|j| AigcRecord::new(&self.provider, &j.id.to_string()))
                        .collect();
                    self.engine.paint(batch, records).await
                }
                Err(e) => Err(EngineError::Invalid(e)),
            };
            match painted {
                Ok((files, timings)) => {
                    metrics::histogram!("huabi_batch_size").record(group.len() as f64);
                    metrics::histogram!("huabi_paint_seconds").record(timings.total.as_secs_f64());
                    let batch_size = i32::try_from(group.len()).unwrap_or(i32::MAX);
                    for (job, file) in group.iter().zip(files) {
                        if self
                            .store
                            .complete_job(job.id, &self.id, &file.jpeg, batch_size)
                            .await?
                        {
                            done += 1;
                            finished.push(job.id);
                        } else {
                            tracing::warn!(
                                job = job.id,
                                "lease lost while painting; another worker owns the job"
                            );
                        }
                    }
                }
                Err(EngineError::Invalid(_)) if group.len() > 1 => {
                    groups.extend(group.chunks(1));
                }
                Err(error) => {
                    let permanent = matches!(error, EngineError::Invalid(_));
                    let ids: Vec<i64> = group.iter().map(|j| j.id).collect();
                    tracing::error!(worker = %self.id, ?ids, %error, permanent, "painting failed");
                    let attempts = if permanent { 0 } else { self.jobs.max_attempts };
                    for job in group {
                        match self
                            .store
                            .fail_job(job.id, &self.id, &error.to_string(), attempts)
                            .await?
                        {
                            JobFate::Requeued => failed += 1,
                            JobFate::Failed => {
                                failed += 1;
                                finished.push(job.id);
                            }
                            JobFate::LeaseLost => {}
                        }
                    }
                }
            }
        }
        self.announce_finished(&finished).await;
        Ok(Outcome::Painted { done, failed })
    }

    /// Extends this worker's leases every third of the lease until the returned token is cancelled.
    fn keep_leases_alive(&self) -> CancellationToken {
        let stop = CancellationToken::new();
        let (store, id, lease) = (self.store.clone(), self.id.clone(), self.jobs.lease_secs);
        let token = stop.clone();
        tokio::spawn(async move {
            let period = Duration::from_secs_f64((lease / 3.0).max(0.05));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(period) => {
                        if let Err(e) = store.heartbeat(&id, lease).await {
                            tracing::warn!(error = %e, "lease heartbeat failed");
                        }
                    }
                }
            }
        });
        stop
    }

    /// Paints until `stop`; sleeps between batches until `wake` or the poll tick. On stop, the batch in hand
    /// finishes and whatever is still leased goes back to the queue.
    pub async fn run(self, wake: Arc<Notify>, stop: CancellationToken, poll: Duration) {
        while !stop.is_cancelled() {
            match self.run_once().await {
                Ok(Outcome::Painted { .. }) => continue,
                Ok(Outcome::Empty) => {}
                Err(e) => tracing::error!(error = %e, "worker could not reach the store"),
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        match self.store.release_leases(&self.id).await {
            Ok(n) if n > 0 => tracing::info!(released = n, "leases given back on shutdown"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not release leases; they expire on their own")
            }
        }
        if let Err(e) = self.store.worker_gone(&self.id).await {
            tracing::warn!(error = %e, "could not remove this worker from the workers table; it ages out in 30 s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased(id: i64, scheduler: &str, width: i32) -> LeasedJob {
        LeasedJob {
            id,
            prompt: format!("p{id}"),
            negative_prompt: String::new(),
            width,
            height: 64,
            steps: 2,
            scheduler: scheduler.into(),
            guidance: 7.5,
            seed: id * 10,
            attempts: 1,
            model: "tiny-sd".into(),
            loras: r#"[{"name":"b","scale":0.5}]"#.into(),
        }
    }

    #[test]
    fn batches_follow_the_leased_jobs() {
        let batch = batch_of(&[leased(1, "ddim", 64), leased(2, "ddim", 64)]).expect("batch");
        assert_eq!(
            batch.key,
            BatchKey {
                model: "tiny-sd".into(),
                loras: vec![crate::model::LoraChoice {
                    name: "b".into(),
                    scale: 0.5
                }],
                width: 64,
                height: 64,
                steps: 2,
                scheduler: SchedulerKind::Ddim,
                strength: None,
            }
        );
        assert_eq!(
            batch.items.iter().map(|i| i.seed).collect::<Vec<_>>(),
            vec![10, 20]
        );
        assert!(batch_of(&[leased(1, "pndm", 64)]).is_err());
        assert!(batch_of(&[leased(1, "euler", -64)]).is_err());
        assert!(batch_of(&[]).is_err());
    }
}
