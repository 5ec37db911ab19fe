//! The Stable Diffusion engine on ONNX Runtime. Knows nothing of users, jobs or channels: it turns a [`Batch`] of
//! prompts into pictures. The rest of huabi imports only the items re-exported here.

mod catalog;
mod conditioning;
pub mod encode;
mod handle;
pub mod label;
pub mod lora;
mod model;
pub mod noise;
pub mod npy;
pub mod onnx;
pub mod photo;
pub(crate) mod pipeline;
mod pipelines;
pub mod resample;
pub(crate) mod runtime;
pub mod safety;
pub mod scheduler;
mod tokenizer;
pub mod translate;

use std::path::PathBuf;

use serde::Deserialize;

pub use crate::model::LoraChoice;
pub use catalog::{LoraInfo, ModelCatalog, ModelInfo};
pub use handle::{EngineHandle, LabelledJpeg};
pub use model::{Architecture, ModelFolder, ModelIo, VaeEncoderIo};
pub use pipeline::{Generated, Progress, Sessions, SharedSession, StableDiffusion, StageTimings};
pub use pipelines::{Engine, LoadReport};
pub use runtime::{Device, default_library_candidates};
pub use scheduler::SchedulerKind;
pub use tokenizer::{PromptTokenizer, normalize_prompt};

/// Engine failures; each message says what is wrong and, where it can, what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The ONNX Runtime library could not be found or loaded.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The model folder is incomplete or has a layout huabi does not support.
    #[error("model {path}: {reason}")]
    Model {
        /// The folder or file.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// The request cannot be generated as asked.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// ONNX Runtime failed while running a model.
    #[error("inference: {0}")]
    Inference(String),
}

impl From<ort::Error> for EngineError {
    fn from(e: ort::Error) -> Self {
        EngineError::Inference(e.to_string())
    }
}

impl From<scheduler::SchedulerError> for EngineError {
    fn from(e: scheduler::SchedulerError) -> Self {
        EngineError::Invalid(e.to_string())
    }
}

/// `[engine]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct EngineConfig {
    /// The model catalogue: one folder per model (diffusers/optimum ONNX layout), LoRAs in `loras/`.
    pub models_dir: PathBuf,
    /// The default model's name (a folder of `models_dir`).
    pub model: String,
    /// A model folder anywhere; when set it is the default model (named after its folder) and wins over `model`.
    #[serde(default)]
    pub model_dir: PathBuf,
    /// Models this node paints; empty = every model in the catalogue.
    #[serde(default)]
    pub models: Vec<String>,
    /// Memory for open sessions in MiB (least recently used pipelines are closed beyond it); 0 = half the
    /// machine's memory.
    #[serde(default)]
    pub memory_budget_mb: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Intra-op threads per session; 0 = all cores.
    pub threads: usize,
    /// The ONNX Runtime library; empty = `ORT_DYLIB_PATH`, then what `scripts/fetch-ort` fetched.
    pub ort_dylib_path: String,
    /// ONNX Runtime CUDA provider options, `key=value,key=value` (e.g. `prefer_nhwc=1`); empty = its defaults.
    #[serde(default)]
    pub cuda_options: String,
    /// Widest image accepted.
    pub max_width: u32,
    /// Tallest image accepted.
    pub max_height: u32,
    /// Most items in one batch.
    pub max_batch: usize,
    /// Longest prompt accepted, in characters (CLIP reads 75 tokens; longer text is truncated).
    pub max_prompt_chars: usize,
    /// `ContentProducer` of the AIGC record in every picture.
    pub aigc_provider: String,
    /// Which models' pictures are checked (`[safety]`, copied here by [`crate::config::Settings::load`]).
    #[serde(skip)]
    pub safety: safety::SafetyConfig,
}

impl EngineConfig {
    /// The default model's folder: `model_dir` when set, else `models_dir/model`.
    pub fn default_model_dir(&self) -> PathBuf {
        if self.model_dir.as_os_str().is_empty() {
            self.models_dir.join(&self.model)
        } else {
            self.model_dir.clone()
        }
    }

    /// The default model's name: `model_dir`'s folder name when set, else `model`.
    pub fn default_model(&self) -> String {
        if self.model_dir.as_os_str().is_empty() {
            self.model.clone()
        } else {
            self.model_dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| self.model.clone())
        }
    }
}

/// What every item of a batch shares: one UNet call per step serves them all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchKey {
    /// The model's name in the catalogue.
    pub model: String,
    /// The LoRAs merged into it, in a canonical order (by name).
    pub loras: Vec<LoraChoice>,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Denoising steps.
    pub steps: usize,
    /// The scheduler.
    pub scheduler: SchedulerKind,
    /// img2img: how much of each item's starting picture is repainted; `None` paints from text alone.
    pub strength: Option<Strength>,
}

/// How strongly img2img repaints a picture: like diffusers' `strength`, the share of the denoising steps run on it
/// (the rest are skipped), in (0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Strength(f64);

impl Strength {
    /// `value` if it is in (0, 1].
    pub fn new(value: f64) -> Result<Self, EngineError> {
        if value.is_finite() && value > 0.0 && value <= 1.0 {
            Ok(Self(value))
        } else {
            Err(EngineError::Invalid(format!(
                "strength {value} must be above 0 and at most 1"
            )))
        }
    }

    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }

    /// The first of `steps` steps run (diffusers' `t_start`), or an error when the strength runs none.
    pub fn first_step(self, steps: usize) -> Result<usize, EngineError> {
        let run = ((steps as f64 * self.0) as usize).min(steps);
        if run == 0 {
            return Err(EngineError::Invalid(format!(
                "strength {} runs none of {steps} steps; raise it or the steps",
                self.0
            )));
        }
        Ok(steps - run)
    }
}

impl Eq for Strength {}

impl std::hash::Hash for Strength {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

/// One picture to paint.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// What to paint.
    pub prompt: String,
    /// What to avoid ("" for none).
    pub negative_prompt: String,
    /// The seed of this item's noise.
    pub seed: u64,
    /// Classifier-free guidance scale (≤ 1 disables guidance for this item).
    pub guidance: f32,
    /// Initial latents (unit-variance noise, shape [4, H/f, W/f]) instead of the seed's; for img2img, the noise
    /// added to the encoded picture.
    pub init_latents: Option<Vec<f32>>,
    /// img2img: the picture to start from, at the batch's size (needs [`BatchKey::strength`]).
    pub init_image: Option<std::sync::Arc<Picture>>,
}

/// Items painted together.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// What the items share.
    pub key: BatchKey,
    /// The items, in order; the output images follow the same order.
    pub items: Vec<Item>,
}

/// An RGB picture with channel values in [0, 1], row-major, 3 values a pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `height * width * 3` values.
    pub rgb: Vec<f32>,
}

impl Picture {
    /// 8-bit RGB bytes (rounded).
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.rgb
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }
}
