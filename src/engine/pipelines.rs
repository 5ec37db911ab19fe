//! The engine: every model of the catalogue, opened on first use and kept within a memory budget. A pipeline is
//! one (model, LoRA set); its sessions are shared with other pipelines of the same model wherever the LoRAs do not
//! change them (the VAE always, a text encoder a LoRA leaves alone), so a second LoRA set costs only the parts it
//! changes. Least recently used pipelines are closed when the budget would be exceeded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ort::environment::Environment;
use ort::session::Session;
use serde::Serialize;

use super::catalog::{GraphCache, ModelCatalog, folder_bytes};
use super::lora::merge::plan;
use super::lora::{Lora, Part};
use super::model::ModelFolder;
use super::pipeline::{Sessions, SharedSession};
use super::runtime::{self, Device};
use super::safety;
use super::{Batch, EngineConfig, EngineError, Generated, LoraChoice, Progress, StableDiffusion};
use crate::model::canonical_loras as canonical;

/// What opening one (model, LoRA set) took.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The model.
    pub model: String,
    /// The LoRAs.
    pub loras: Vec<LoraChoice>,
    /// Whether it was open already.
    pub cached: bool,
    /// Reading LoRA files and computing merged weights.
    pub merge_secs: f64,
    /// Creating the sessions that were not open yet.
    pub load_secs: f64,
    /// Layers changed by the LoRAs.
    pub merged_layers: usize,
    /// Estimated bytes of the sessions this pipeline added.
    pub added_bytes: u64,
}

/// A session's identity: the model, the component, and the LoRAs that change it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    model: String,
    component: &'static str,
    loras: Vec<LoraChoice>,
}

struct OpenPipeline {
    model: String,
    loras: Vec<LoraChoice>,
    pipeline: StableDiffusion,
    last_used: u64,
}

/// Paints batches with whichever (model, LoRA set) they ask for.
pub struct Engine {
    config: EngineConfig,
    catalog: ModelCatalog,
    env: Environment,
    device: Device,
    budget_bytes: u64,
    pipelines: Vec<OpenPipeline>,
    sessions: HashMap<SessionKey, (Weak<Mutex<Session>>, u64)>,
    clock: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("catalog", &self.catalog)
            .field("open", &self.loaded())
            .finish_non_exhaustive()
    }
}

/// Half the machine's memory, from `/proc/meminfo` (8 GiB when it cannot be read).
fn default_budget_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024 / 2)
        })
        .unwrap_or(8 << 30)
}

/// The LoRA part a component is.
fn part_of(component: &str) -> Option<Part> {
    match component {
        "unet" => Some(Part::Unet),
        "text_encoder" => Some(Part::TextEncoder),
        "text_encoder_2" => Some(Part::TextEncoder2),
        _ => None,
    }
}

impl Engine {
    /// Loads ONNX Runtime for `config`; models open on first use.
    pub fn new(config: &EngineConfig) -> Result<Self, EngineError> {
        let device: Device = config.device.parse()?;
        let env = runtime::environment(config, device)?;
        let budget_bytes = match config.memory_budget_mb {
            0 => default_budget_bytes(),
            mb => mb.saturating_mul(1 << 20),
        };
        Ok(Self {
            config: config.clone(),
            catalog: ModelCatalog::new(config),
            env,
            device,
            budget_bytes,
            pipelines: Vec::new(),
            sessions: HashMap::new(),
            clock: 0,
        })
    }

    /// The catalogue.
    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    /// The open (model, LoRA set) pairs, most recently used first.
    pub fn loaded(&self) -> Vec<(String, Vec<LoraChoice>)> {
        let mut open: Vec<&OpenPipeline> = self.pipelines.iter().collect();
        open.sort_by_key(|p| std::cmp::Reverse(p.last_used));
        open.iter()
            .map(|p| (p.model.clone(), p.loras.clone()))
            .collect()
    }

    /// Estimated bytes of every open session.
    pub fn open_bytes(&self) -> u64 {
        self.sessions
            .values()
            .filter(|(weak, _)| weak.strong_count() > 0)
            .map(|(_, bytes)| bytes)
            .sum()
    }

    /// Opens (or finds) the pipeline of `model` with `loras`.
    pub fn open(&mut self, model: &str, loras: &[LoraChoice]) -> Result<LoadReport, EngineError> {
        let model = if model.is_empty() {
            self.catalog.default_model().to_string()
        } else {
            model.to_string()
        };
        let loras = canonical(loras);
        self.clock += 1;
        let now = self.clock;
        if let Some(open) = self
            .pipelines
            .iter_mut()
            .find(|p| p.model == model && p.loras == loras)
        {
            open.last_used = now;
            return Ok(LoadReport {
                model,
                loras,
                cached: true,
                merge_secs: 0.0,
                load_secs: 0.0,
                merged_layers: 0,
                added_bytes: 0,
            });
        }
        if !self.catalog.allows(&model) {
            return Err(EngineError::Invalid(format!(
                "model {model:?} is not in this node's HUABI__ENGINE__MODELS"
            )));
        }
        let folder = ModelFolder::inspect(&self.catalog.model_dir(&model)?)?;
        let opened: Vec<(LoraChoice, Lora)> = loras
            .iter()
            .map(|c| Ok((c.clone(), self.catalog.open_lora(&c.name)?)))
            .collect::<Result<_, EngineError>>()?;
        let mut components: Vec<&'static str> = folder.text_encoders().to_vec();
        components.extend(["unet", "vae_decoder"]);
        if folder.has_vae_encoder {
            components.push("vae_encoder");
        }
        if safety::wanted(&self.config, &folder)? {
            components.push("safety_checker");
        }

        // Sessions already open are held now, so closing other pipelines below cannot drop them.
        let mut held: HashMap<&'static str, SharedSession> = HashMap::new();
        let mut missing: Vec<(&'static str, SessionKey, u64)> = Vec::new();
        for &component in &components {
            let touching: Vec<LoraChoice> = opened
                .iter()
                .filter(|(_, lora)| part_of(component).is_some_and(|p| lora.parts().contains(&p)))
                .map(|(c, _)| c.clone())
                .collect();
            let key = SessionKey {
                model: model.clone(),
                component,
                loras: touching,
            };
            match self.sessions.get(&key).and_then(|(weak, _)| weak.upgrade()) {
                Some(session) => {
                    held.insert(component, session);
                }
                None => missing.push((component, key, folder_bytes(&folder.root.join(component)))),
            }
        }
        let added_bytes: u64 = missing.iter().map(|(_, _, bytes)| bytes).sum();
        self.make_room(added_bytes);

        let mut merge_time = Duration::ZERO;
        let load_started = Instant::now();
        let mut merged_layers = 0;
        let mut graphs = GraphCache::default();
        for (component, key, bytes) in missing {
            let path = folder.onnx(component);
            let part = part_of(component);
            let session = if component == "safety_checker" {
                safety::open_session(&self.env, &folder.root, self.device)?
            } else if key.loras.is_empty() {
                runtime::open_session(&self.env, &path, self.device)?
            } else {
                let merge_started = Instant::now();
                let part = part.ok_or_else(|| EngineError::Runtime("LoRA on a VAE".into()))?;
                let (graph, index) = graphs.get(&folder, component)?;
                let stack: Vec<(&Lora, f32)> = opened
                    .iter()
                    .filter(|(c, _)| key.loras.contains(c))
                    .map(|(c, lora)| (lora, c.scale))
                    .collect();
                let layout = (part == Part::Unet)
                    .then_some(folder.unet_layout.as_ref())
                    .flatten();
                let merged = plan(graph, index, part, &stack, layout)
                    .map_err(|e| EngineError::Invalid(e.to_string()))?;
                merged_layers += merged.layers;
                merge_time += merge_started.elapsed();
                runtime::open_merged_session(&self.env, &path, self.device, Some((graph, &merged)))?
            };
            let session = Arc::new(Mutex::new(session));
            self.sessions.insert(key, (Arc::downgrade(&session), bytes));
            held.insert(component, session);
        }
        let take = |c: &str| {
            held.get(c)
                .cloned()
                .ok_or_else(|| EngineError::Runtime(format!("session {c} was not opened")))
        };
        let mut sessions = Sessions::gather(&folder, take)?;
        sessions.safety_checker = held.get("safety_checker").cloned();
        let pipeline = StableDiffusion::new(folder, sessions, &self.config)?;
        let load_secs = (load_started.elapsed() - merge_time).as_secs_f64();
        tracing::info!(%model, loras = ?loras, merged_layers, merge_secs = merge_time.as_secs_f64(), load_secs, added_mb = added_bytes >> 20, "pipeline opened");
        metrics::histogram!("huabi_pipeline_open_seconds").record(load_secs);
        if merged_layers > 0 {
            metrics::histogram!("huabi_lora_merge_seconds").record(merge_time.as_secs_f64());
        }
        self.pipelines.push(OpenPipeline {
            model: model.clone(),
            loras: loras.clone(),
            pipeline,
            last_used: now,
        });
        self.report_open();
        Ok(LoadReport {
            model,
            loras,
            cached: false,
            merge_secs: merge_time.as_secs_f64(),
            load_secs,
            merged_layers,
            added_bytes,
        })
    }

    /// Publishes how many pipelines are open and their estimated bytes.
    fn report_open(&self) {
        metrics::gauge!("huabi_open_pipelines").set(self.pipelines.len() as f64);
        metrics::gauge!("huabi_open_session_bytes").set(self.open_bytes() as f64);
    }

    /// Closes least recently used pipelines until `needed` more bytes fit the budget (or none is left to close).
    fn make_room(&mut self, needed: u64) {
        while self.open_bytes() + needed > self.budget_bytes && !self.pipelines.is_empty() {
            let oldest = self
                .pipelines
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(i, _)| i)
                .unwrap_or(0);
            let closed = self.pipelines.swap_remove(oldest);
            metrics::counter!("huabi_pipelines_evicted_total").increment(1);
            tracing::info!(model = %closed.model, loras = ?closed.loras, "pipeline closed to stay within the memory budget");
        }
        self.sessions.retain(|_, (weak, _)| weak.strong_count() > 0);
        if self.open_bytes() + needed > self.budget_bytes {
            tracing::warn!(
                needed_mb = needed >> 20,
                budget_mb = self.budget_bytes >> 20,
                "a pipeline is larger than HUABI__ENGINE__MEMORY_BUDGET_MB; opening it anyway"
            );
        }
    }

    /// Opens `model` without LoRAs to see that it loads, then closes it again (unless it was open already).
    pub fn try_load(&mut self, model: &str) -> Result<LoadReport, EngineError> {
        let report = self.open(model, &[])?;
        if !report.cached {
            self.pipelines
                .retain(|p| !(p.model == report.model && p.loras.is_empty()));
            self.sessions.retain(|_, (weak, _)| weak.strong_count() > 0);
            self.report_open();
        }
        Ok(report)
    }

    /// The pipeline of `model` with `loras`, opened if needed.
    pub fn pipeline(
        &mut self,
        model: &str,
        loras: &[LoraChoice],
    ) -> Result<&mut StableDiffusion, EngineError> {
        self.open(model, loras)?;
        let model = if model.is_empty() {
            self.catalog.default_model().to_string()
        } else {
            model.to_string()
        };
        let loras = canonical(loras);
        self.pipelines
            .iter_mut()
            .find(|p| p.model == model && p.loras == loras)
            .map(|p| &mut p.pipeline)
            .ok_or_else(|| EngineError::Runtime("the pipeline just opened is gone".into()))
    }

    /// Paints a batch with the model and LoRAs its key names.
    pub fn generate(
        &mut self,
        batch: &Batch,
        on_step: &mut dyn FnMut(Progress),
    ) -> Result<Generated, EngineError> {
        let (model, loras) = (batch.key.model.clone(), batch.key.loras.clone());
        self.pipeline(&model, &loras)?.generate(batch, on_step)
    }
}
