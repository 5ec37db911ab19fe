//! The worker: lease a batch of compatible jobs, make each ready (the follower's photo fetched and prepared, the
//! Chinese of a prompt translated for models that read only English), keep the leases alive while the engine
//! paints, store each labelled JPEG the safety check passed, and give failed jobs back. Woken at once in-process,
//! with a poll tick as the safety net.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::channel::{MediaError, MediaSource};
use crate::config::{JobSettings, ReplySettings};
use crate::engine::label::AigcRecord;
use crate::engine::photo::{self, PhotoError, PhotoLimits};
use crate::engine::translate::{Translator, has_chinese};
use crate::engine::{
    Batch, BatchKey, EngineError, EngineHandle, Item, Picture, SchedulerKind, Strength,
};
use crate::store::{Capabilities, JobFate, JobRefusal, LeasedJob, Painted, Store, StoreError};

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
    translator: Option<Arc<Translator>>,
    media: Option<Arc<dyn MediaSource>>,
    replies: Option<ReplySettings>,
    keep_flagged: bool,
}

/// A leased job made ready to paint.
#[derive(Debug, Clone)]
struct Ready {
    job: LeasedJob,
    /// The prompt to paint (translated when it had to be).
    prompt: String,
    /// The negative prompt to paint.
    negative: String,
    /// img2img: the prepared photo.
    photo: Option<Arc<Picture>>,
}

impl Ready {
    /// A job painted as it is stored.
    fn as_stored(job: LeasedJob) -> Self {
        Self {
            prompt: job
                .painted_prompt
                .clone()
                .unwrap_or_else(|| job.prompt.clone()),
            negative: job
                .painted_negative
                .clone()
                .unwrap_or_else(|| job.negative_prompt.clone()),
            photo: None,
            job,
        }
    }
}

/// Why a job cannot be painted, as far as its photo goes.
enum PhotoProblem {
    /// Refuse it for good, telling the follower why.
    Refuse { reason: &'static str, error: String },
    /// Give it back for another attempt.
    Retry(String),
}

fn batch_of(jobs: &[Ready]) -> Result<Batch, String> {
    let first = &jobs.first().ok_or("empty batch")?.job;
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
            strength: (first.strength > 0.0)
                .then(|| Strength::new(first.strength))
                .transpose()
                .map_err(|e| e.to_string())?,
        },
        items: jobs
            .iter()
            .map(|r| Item {
                prompt: r.prompt.clone(),
                negative_prompt: r.negative.clone(),
                seed: r.job.seed as u64,
                guidance: r.job.guidance,
                init_latents: None,
                init_image: r.photo.clone(),
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
            translator: None,
            media: None,
            replies: None,
            keep_flagged: false,
        }
    }

    /// Translates the Chinese of prompts (for models whose text encoder reads only English) with `translator`.
    pub fn with_translator(mut self, translator: Option<Arc<Translator>>) -> Self {
        self.translator = translator;
        self
    }

    /// Fetches followers' photos for img2img jobs through `media`.
    pub fn with_media(mut self, media: Option<Arc<dyn MediaSource>>) -> Self {
        self.media = media;
        self
    }

    /// Tells followers why a picture was not delivered in these words (else the generic failure text), and keeps
    /// flagged pictures' bytes when `keep_flagged`.
    pub fn with_replies(mut self, replies: ReplySettings, keep_flagged: bool) -> Self {
        self.replies = Some(replies);
        self.keep_flagged = keep_flagged;
        self
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

    /// How long a lease lasts.
    fn lease_time(&self) -> Duration {
        Duration::from_secs_f64(self.jobs.lease_secs)
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
        for job in &jobs {
            if let Some(from) = &job.taken_from {
                metrics::counter!("huabi_leases_taken_over_total").increment(1);
                tracing::info!(job = job.id, from = %from, attempt = job.attempts, "job taken over");
            }
        }
        tracing::info!(worker = %self.id, ?ids, "painting a batch");
        let heartbeat = self.keep_leases_alive();
        let outcome = match self.make_ready(jobs).await {
            Ok((ready, refused)) => self.paint_and_store(&ready, refused).await,
            Err(e) => Err(e),
        };
        heartbeat.cancel();
        outcome
    }

    /// Makes leased jobs ready: photos fetched and prepared, prompts translated. Jobs whose photo is refused end
    /// here (counted in the second value); jobs whose photo cannot be fetched now go back to the queue.
    async fn make_ready(&self, jobs: Vec<LeasedJob>) -> Result<(Vec<Ready>, Vec<i64>), StoreError> {
        let mut ready = Vec::with_capacity(jobs.len());
        let mut ended = Vec::new();
        for job in jobs {
            let mut item = Ready::as_stored(job);
            if let Some(media_id) = item.job.photo_media_id.clone() {
                match self.photo(&item.job, &media_id).await {
                    Ok(picture) => item.photo = Some(Arc::new(picture)),
                    Err(PhotoProblem::Refuse { reason, error }) => {
                        tracing::warn!(job = item.job.id, reason, %error, "photo refused");
                        metrics::counter!("huabi_photos_refused_total", "reason" => reason)
                            .increment(1);
                        let notice = self.notice(reason);
                        let refusal = JobRefusal {
                            reason,
                            notice: &notice,
                            error: &error,
                            jpeg: None,
                        };
                        if self
                            .store
                            .refuse_job(item.job.lease(&self.id), &refusal)
                            .await?
                        {
                            ended.push(item.job.id);
                        }
                        continue;
                    }
                    Err(PhotoProblem::Retry(error)) => {
                        tracing::warn!(job = item.job.id, %error, "photo not fetched; the job goes back to the queue");
                        let fate = self
                            .store
                            .fail_job(item.job.lease(&self.id), &error, self.jobs.max_attempts)
                            .await?;
                        if fate == JobFate::Failed {
                            ended.push(item.job.id);
                        }
                        continue;
                    }
                }
            }
            self.translate(&mut item).await?;
            ready.push(item);
        }
        Ok((ready, ended))
    }

    /// The follower's photo for `job`, fetched within the size limit and prepared at the job's size.
    async fn photo(&self, job: &LeasedJob, media_id: &str) -> Result<Picture, PhotoProblem> {
        let media = self.media.as_ref().ok_or_else(|| {
            PhotoProblem::Retry("this node cannot fetch photos (no platform API configured)".into())
        })?;
        let limits = PhotoLimits {
            max_bytes: self.jobs.max_photo_bytes,
            max_pixels: self.jobs.max_photo_pixels,
        };
        let bytes = media
            .fetch(&job.channel, &job.account, media_id, limits.max_bytes)
            .await
            .map_err(|e| match e {
                MediaError::TooLarge { .. } => PhotoProblem::Refuse {
                    reason: "photo_too_large",
                    error: e.to_string(),
                },
                MediaError::Gone(_) => PhotoProblem::Refuse {
                    reason: "photo_missing",
                    error: e.to_string(),
                },
                MediaError::Unavailable(_) => PhotoProblem::Retry(e.to_string()),
            })?;
        let size = (
            u32::try_from(job.width).unwrap_or(0),
            u32::try_from(job.height).unwrap_or(0),
        );
        tokio::task::spawn_blocking(move || photo::prepare(&bytes, &limits, size))
            .await
            .map_err(|e| PhotoProblem::Retry(format!("preparing the photo: {e}")))?
            .map_err(|e: PhotoError| PhotoProblem::Refuse {
                reason: if e.is_size() {
                    "photo_too_large"
                } else {
                    "photo_unreadable"
                },
                error: e.to_string(),
            })
    }

    /// Translates the job's Chinese when its model reads only English (once: a retried job keeps its translation).
    async fn translate(&self, item: &mut Ready) -> Result<(), StoreError> {
        let job = &item.job;
        let Some(translator) = self.translator.clone() else {
            return Ok(());
        };
        if job.painted_prompt.is_some()
            || !(has_chinese(&job.prompt) || has_chinese(&job.negative_prompt))
            || self.engine.catalog().reads_chinese(&job.model)
        {
            return Ok(());
        }
        let (prompt, negative) = (job.prompt.clone(), job.negative_prompt.clone());
        let translated = tokio::task::spawn_blocking(move || {
            Ok::<_, EngineError>((
                translator.translate(&prompt)?,
                translator.translate(&negative)?,
            ))
        })
        .await;
        let (prompt, negative) = match translated {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::warn!(job = job.id, error = %e, "translation failed; painting the prompt as written");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(job = job.id, error = %e, "translation task failed; painting the prompt as written");
                return Ok(());
            }
        };
        let ms = (prompt.elapsed + negative.elapsed).as_secs_f64() * 1000.0;
        let painted = Painted {
            prompt: prompt.changed().then_some(prompt.text.as_str()),
            negative: negative.changed().then_some(negative.text.as_str()),
            translate_ms: ms,
        };
        tracing::info!(job = job.id, english = %prompt.text, ms, "prompt translated");
        self.store
            .save_translation(job.lease(&self.id), &painted)
            .await?;
        if prompt.changed() {
            item.prompt = prompt.text;
        }
        if negative.changed() {
            item.negative = negative.text;
        }
        Ok(())
    }

    /// What the follower is told when their job ends for `reason`.
    fn notice(&self, reason: &str) -> String {
        let Some(replies) = &self.replies else {
            return String::new();
        };
        match reason {
            "unsafe" => replies.unsafe_picture.clone(),
            "photo_too_large" => replies
                .photo_too_large
                .replace(
                    "{max_mb}",
                    &format!("{:.0}", self.jobs.max_photo_bytes as f64 / 1048576.0),
                )
                .replace(
                    "{max_megapixels}",
                    &format!("{:.0}", self.jobs.max_photo_pixels as f64 / 1e6),
                ),
            "photo_unreadable" => replies.photo_unreadable.clone(),
            "photo_missing" => replies.photo_missing.clone(),
            _ => replies.failed.clone(),
        }
    }

    /// Paints the jobs as one batch and stores the pictures. A batch the engine refuses as invalid is retried job by
    /// job, so one bad request (say, an over-long prompt) fails alone instead of sinking its neighbours; a job that is
    /// invalid on its own fails at once, since no retry can fix it.
    async fn paint_and_store(
        &self,
        jobs: &[Ready],
        refused: Vec<i64>,
    ) -> Result<Outcome, StoreError> {
        let (mut done, mut failed) = (0, refused.len());
        let mut finished = refused;
        let mut groups: Vec<&[Ready]> = if jobs.is_empty() {
            Vec::new()
        } else {
            vec![jobs]
        };
        while let Some(group) = groups.pop() {
            let painted = match batch_of(group) {
                Ok(batch) => {
                    let records = group
                        .iter()
                        .map(|r| AigcRecord::new(&self.provider, &r.job.id.to_string()))
                        .collect();
                    self.engine.paint(batch, records).await
                }
                Err(e) => Err(EngineError::Invalid(e)),
            };
            match painted {
                Ok((files, timings)) => {
                    metrics::histogram!("huabi_batch_size").record(group.len() as f64);
                    metrics::histogram!("huabi_paint_seconds").record(timings.total.as_secs_f64());
                    for (stage, time) in [
                        ("text", timings.text),
                        ("denoise", timings.denoise),
                        ("decode", timings.decode),
                        ("safety", timings.safety),
                    ] {
                        metrics::histogram!("huabi_engine_stage_seconds", "stage" => stage)
                            .record(time.as_secs_f64());
                    }
                    let batch_size = i32::try_from(group.len()).unwrap_or(i32::MAX);
                    for (ready, file) in group.iter().zip(files) {
                        let job = &ready.job;
                        let stored = match &file.verdict {
                            Some(verdict) if verdict.flagged => {
                                metrics::counter!("huabi_pictures_flagged_total").increment(1);
                                let error = format!(
                                    "the safety checker flagged the picture (highest concept score {:.4})",
                                    verdict.worst()
                                );
                                tracing::warn!(job = job.id, %error, "picture withheld");
                                let notice = self.notice("unsafe");
                                let refusal = JobRefusal {
                                    reason: "unsafe",
                                    notice: &notice,
                                    error: &error,
                                    jpeg: self.keep_flagged.then_some(file.jpeg.as_slice()),
                                };
                                let ended =
                                    self.store.refuse_job(job.lease(&self.id), &refusal).await?;
                                if ended {
                                    failed += 1;
                                }
                                ended
                            }
                            _ => {
                                // A painted picture outlives a database restart while the lease lasts.
                                let lease = job.lease(&self.id);
                                let completed = crate::store::persist(self.lease_time(), || {
                                    self.store.complete_job(lease, &file.jpeg, batch_size)
                                })
                                .await?;
                                if completed {
                                    done += 1;
                                }
                                completed
                            }
                        };
                        if stored {
                            finished.push(job.id);
                        } else {
                            crate::telemetry::late_result("worker", job.id, job.attempts);
                        }
                    }
                }
                Err(EngineError::Invalid(_)) if group.len() > 1 => {
                    groups.extend(group.chunks(1));
                }
                Err(error) => {
                    let permanent = matches!(error, EngineError::Invalid(_));
                    let ids: Vec<i64> = group.iter().map(|r| r.job.id).collect();
                    tracing::error!(worker = %self.id, ?ids, %error, permanent, "painting failed");
                    let attempts = if permanent { 0 } else { self.jobs.max_attempts };
                    for job in group.iter().map(|r| &r.job) {
                        match self
                            .store
                            .fail_job(job.lease(&self.id), &error.to_string(), attempts)
                            .await?
                        {
                            JobFate::Requeued => failed += 1,
                            JobFate::Failed => {
                                failed += 1;
                                finished.push(job.id);
                            }
                            JobFate::LeaseLost => {
                                crate::telemetry::late_result("worker", job.id, job.attempts)
                            }
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
            channel: "wechat".into(),
            account: "gh".into(),
            painted_prompt: (id == 2).then(|| "english".into()),
            painted_negative: None,
            photo_media_id: None,
            strength: 0.0,
            taken_from: None,
        }
    }

    fn ready(jobs: &[LeasedJob]) -> Vec<Ready> {
        jobs.iter().cloned().map(Ready::as_stored).collect()
    }

    #[test]
    fn batches_follow_the_leased_jobs() {
        let batch =
            batch_of(&ready(&[leased(1, "ddim", 64), leased(2, "ddim", 64)])).expect("batch");
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
        assert_eq!(batch.items[0].prompt, "p1");
        assert_eq!(
            batch.items[1].prompt, "english",
            "a stored translation is painted"
        );
        assert!(batch_of(&ready(&[leased(1, "pndm", 64)])).is_err());
        assert!(batch_of(&ready(&[leased(1, "euler", -64)])).is_err());
        assert!(batch_of(&[]).is_err());
        let mut photo = leased(3, "euler", 64);
        photo.strength = 0.6;
        let batch = batch_of(&ready(&[photo])).expect("img2img batch");
        assert_eq!(batch.key.strength.map(Strength::get), Some(0.6));
    }
}
