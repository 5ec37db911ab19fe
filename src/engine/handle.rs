//! The engine on its own OS thread: it owns the sessions (and the GPU); async callers send batches and await
//! pictures. Labelling and JPEG encoding run on Tokio's blocking pool, so the engine never waits on compression.

use tokio::sync::{mpsc, oneshot};

use super::encode::{self, WECHAT_JPEG_BUDGET};
use super::label::{AigcRecord, draw_visible_label};
use super::safety::Verdict;
use super::{Batch, Engine, EngineConfig, EngineError, Generated, ModelCatalog, StageTimings};

struct Job {
    batch: Batch,
    reply: oneshot::Sender<Result<Generated, EngineError>>,
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Job>,
    catalog: ModelCatalog,
}

/// A finished, labelled picture ready for delivery.
#[derive(Debug, Clone)]
pub struct LabelledJpeg {
    /// JPEG bytes (≤ 2 MB) with the visible mark and the AIGC record.
    pub jpeg: Vec<u8>,
    /// The safety checker's verdict (`None` when the model's pictures are not checked).
    pub verdict: Option<Verdict>,
}

impl EngineHandle {
    /// Starts the engine on a new thread and opens the default model there (when this node paints it); returns
    /// once it is open (or failed to open). Other models open when a batch first asks for them.
    pub fn spawn(config: EngineConfig) -> Result<Self, EngineError> {
        let catalog = ModelCatalog::new(&config);
        // Capacity 1: the next batch waits here while one runs, so the caller can keep batching.
        let (jobs, mut inbox) = mpsc::channel::<Job>(1);
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("huabi-engine".into())
            .spawn(move || {
                let opened = Engine::new(&config).and_then(|mut engine| {
                    let default = engine.catalog().default_model().to_string();
                    if engine.catalog().allows(&default) {
                        engine.open(&default, &[])?;
                    }
                    Ok(engine)
                });
                let mut engine = match opened {
                    Ok(engine) => {
                        let _ = loaded_tx.send(Ok(()));
                        engine
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = inbox.blocking_recv() {
                    let result = engine.generate(&job.batch, &mut |_| {});
                    // The caller may have gone away; the result is then simply dropped.
                    let _ = job.reply.send(result);
                }
            })
            .map_err(|e| EngineError::Runtime(format!("cannot start the engine thread: {e}")))?;
        loaded_rx
            .recv()
            .map_err(|_| EngineError::Runtime("the engine thread ended while loading".into()))??;
        Ok(Self { jobs, catalog })
    }

    /// The catalogue this engine paints from.
    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    /// Paints a batch on the engine thread.
    pub async fn generate(&self, batch: Batch) -> Result<Generated, EngineError> {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(Job { batch, reply })
            .await
            .map_err(|_| EngineError::Runtime("the engine thread has stopped".into()))?;
        result
            .await
            .map_err(|_| EngineError::Runtime("the engine thread dropped the batch".into()))?
    }

    /// Paints a batch, then labels and encodes each picture (one AIGC record per item) off the engine thread.
    pub async fn paint(
        &self,
        batch: Batch,
        records: Vec<AigcRecord>,
    ) -> Result<(Vec<LabelledJpeg>, StageTimings), EngineError> {
        if records.len() != batch.items.len() {
            return Err(EngineError::Invalid(format!(
                "{} AIGC records for {} items",
                records.len(),
                batch.items.len()
            )));
        }
        let generated = self.generate(batch).await?;
        let timings = generated.timings;
        let files = tokio::task::spawn_blocking(move || {
            generated
                .pictures
                .into_iter()
                .zip(generated.verdicts)
                .zip(records)
                .map(|((mut picture, verdict), record)| {
                    draw_visible_label(&mut picture);
                    encode::jpeg(&picture, &record, WECHAT_JPEG_BUDGET)
                        .map(|jpeg| LabelledJpeg { jpeg, verdict })
                        .map_err(|e| EngineError::Inference(format!("encoding: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| EngineError::Inference(format!("encoding task: {e}")))??;
        Ok((files, timings))
    }
}
