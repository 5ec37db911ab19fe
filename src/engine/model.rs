//! The model folder (diffusers/optimum ONNX layout): which files exist, what the configs say, and the input and
//! output names, element types and ranks each session declares.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorElementType;
use serde_json::Value;

use super::EngineError;
use super::scheduler::{SchedulerConfig, SchedulerKind};

/// What a model folder holds, checked before any session is opened.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// The folder.
    pub root: PathBuf,
    /// Pixels per latent cell: 2^(VAE blocks − 1).
    pub vae_scale_factor: u32,
    /// Latents are divided by this before decoding.
    pub latent_scaling: f32,
    /// The scheduler configuration.
    pub scheduler: SchedulerConfig,
    /// The scheduler class the folder names, when huabi implements it.
    pub default_scheduler: Option<SchedulerKind>,
}

fn model_error(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::Model {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json(path: &Path) -> Result<Value, EngineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| model_error(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| model_error(path, format!("not valid JSON: {e}")))
}

impl ModelFolder {
    /// Checks the layout and reads the configs.
    pub fn inspect(root: &Path) -> Result<Self, EngineError> {
        if !root.is_dir() {
            return Err(model_error(root, "is not a folder"));
        }
        for required in [
            "model_index.json",
            "text_encoder/model.onnx",
            "unet/model.onnx",
            "vae_decoder/model.onnx",
            "vae_decoder/config.json",
            "scheduler/scheduler_config.json",
        ] {
            if !root.join(required).is_file() {
                return Err(model_error(root, format!("{required} is missing")));
            }
        }
        let tokenizer = root.join("tokenizer");
        let has_tokenizer = tokenizer.join("tokenizer.json").is_file()
            || (tokenizer.join("vocab.json").is_file() && tokenizer.join("merges.txt").is_file());
        if !has_tokenizer {
            return Err(model_error(
                root,
                "tokenizer/ needs tokenizer.json or vocab.json + merges.txt",
            ));
        }
        let vae_path = root.join("vae_decoder/config.json");
        let vae = read_json(&vae_path)?;
        let blocks = vae
            .get("block_out_channels")
            .and_then(Value::as_array)
            .map(Vec::len)
            .filter(|n| (1..=6).contains(n))
            .ok_or_else(|| {
                model_error(&vae_path, "block_out_channels (1 to 6 entries) is missing")
            })?;
        let latent_scaling = vae
            .get("scaling_factor")
            .and_then(Value::as_f64)
            .unwrap_or(0.18215) as f32;
        if !(latent_scaling.is_finite() && latent_scaling > 0.0) {
            return Err(model_error(&vae_path, "scaling_factor must be positive"));
        }
        let sched_path = root.join("scheduler/scheduler_config.json");
        let scheduler: SchedulerConfig = serde_json::from_value(read_json(&sched_path)?)
            .map_err(|e| model_error(&sched_path, e.to_string()))?;
        let default_scheduler = scheduler
            .class_name
            .as_deref()
            .and_then(SchedulerKind::from_class_name);
        read_json(&root.join("model_index.json"))?;
        Ok(Self {
            root: root.to_path_buf(),
            vae_scale_factor: 1 << (blocks - 1),
            latent_scaling,
            scheduler,
            default_scheduler,
        })
    }

    /// Path of a component's `model.onnx`.
    pub fn onnx(&self, component: &str) -> PathBuf {
        self.root.join(component).join("model.onnx")
    }
}

/// An input or output the pipeline feeds or reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Its name in the graph.
    pub name: String,
    /// Its element type.
    pub dtype: TensorElementType,
    /// Its declared dimensions (−1 = dynamic).
    pub dims: Vec<i64>,
}

/// The names, types and ranks the three sessions declare.
#[derive(Debug, Clone)]
pub struct ModelIo {
    /// text_encoder `input_ids` (int32 or int64).
    pub input_ids: Port,
    /// text_encoder per-token embeddings output.
    pub hidden_states: String,
    /// unet `sample` (float32 or float16).
    pub sample: Port,
    /// unet `timestep` (rank 0 or 1; float or int).
    pub timestep: Port,
    /// unet `encoder_hidden_states`.
    pub encoder_hidden_states: Port,
    /// unet output.
    pub noise_pred: String,
    /// vae_decoder `latent_sample`.
    pub latent_sample: Port,
    /// vae_decoder output.
    pub image: String,
}

fn port(
    session: &Session,
    path: &Path,
    name: &str,
    allowed: &[TensorElementType],
    ranks: &[usize],
) -> Result<Port, EngineError> {
    let input = session
        .inputs()
        .iter()
        .find(|i| i.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
            model_error(
                path,
                format!("has no input named {name:?} (inputs: {names:?})"),
            )
        })?;
    let dtype = input
        .dtype()
        .tensor_type()
        .ok_or_else(|| model_error(path, format!("input {name} is not a tensor")))?;
    if !allowed.contains(&dtype) {
        return Err(model_error(
            path,
            format!("input {name} has element type {dtype:?}; supported: {allowed:?}"),
        ));
    }
    let dims: Vec<i64> = input
        .dtype()
        .tensor_shape()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    if !ranks.contains(&dims.len()) {
        return Err(model_error(
            path,
            format!("input {name} has rank {}; supported: {ranks:?}", dims.len()),
        ));
    }
    Ok(Port {
        name: name.to_string(),
        dtype,
        dims,
    })
}

fn output(session: &Session, path: &Path, preferred: &str) -> Result<String, EngineError> {
    let outputs = session.outputs();
    outputs
        .iter()
        .find(|o| o.name() == preferred)
        .or_else(|| outputs.first())
        .map(|o| o.name().to_string())
        .ok_or_else(|| model_error(path, "declares no outputs"))
}

fn no_extra_inputs(session: &Session, path: &Path, known: &[&str]) -> Result<(), EngineError> {
    match session.inputs().iter().find(|i| !known.contains(&i.name())) {
        Some(extra) => Err(model_error(
            path,
            format!(
                "needs input {:?}, which this pipeline does not provide (SDXL/LCM-distilled UNets are not supported yet)",
                extra.name()
            ),
        )),
        None => Ok(()),
    }
}

impl ModelIo {
    /// Reads and checks the three sessions' declarations.
    pub fn read(
        folder: &ModelFolder,
        text_encoder: &Session,
        unet: &Session,
        vae: &Session,
    ) -> Result<Self, EngineError> {
        use TensorElementType::{Float16, Float32, Int32, Int64};
        let te = folder.onnx("text_encoder");
        let un = folder.onnx("unet");
        let vd = folder.onnx("vae_decoder");
        no_extra_inputs(text_encoder, &te, &["input_ids", "attention_mask"])?;
        no_extra_inputs(unet, &un, &["sample", "timestep", "encoder_hidden_states"])?;
        no_extra_inputs(vae, &vd, &["latent_sample"])?;
        if text_encoder
            .inputs()
            .iter()
            .any(|i| i.name() == "attention_mask")
        {
            return Err(model_error(
                &te,
                "needs attention_mask, which SD text encoders do not use",
            ));
        }
        Ok(Self {
            input_ids: port(text_encoder, &te, "input_ids", &[Int32, Int64], &[2])?,
            hidden_states: output(text_encoder, &te, "last_hidden_state")?,
            sample: port(unet, &un, "sample", &[Float32, Float16], &[4])?,
            timestep: port(
                unet,
                &un,
                "timestep",
                &[Float32, Float16, Int64, Int32],
                &[0, 1],
            )?,
            encoder_hidden_states: port(
                unet,
                &un,
                "encoder_hidden_states",
                &[Float32, Float16],
                &[3],
            )?,
            noise_pred: output(unet, &un, "out_sample")?,
            latent_sample: port(vae, &vd, "latent_sample", &[Float32, Float16], &[4])?,
            image: output(vae, &vd, "sample")?,
        })
    }
}
