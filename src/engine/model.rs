//! The model folder (diffusers/optimum ONNX layout): which files exist, what the configs say, and the input and
//! output names, element types and ranks each session declares.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorElementType;
use serde_json::Value;

use super::EngineError;
use super::lora::sgm::UnetLayout;
use super::scheduler::{SchedulerConfig, SchedulerKind};

/// The pipeline layout a model folder has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Stable Diffusion 1.x/2.x: one text encoder.
    Sd,
    /// SDXL: two text encoders, pooled text embeddings and size conditioning.
    Sdxl,
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Architecture::Sd => "sd",
            Architecture::Sdxl => "sdxl",
        })
    }
}

/// What a model folder holds, checked before any session is opened.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// The folder.
    pub root: PathBuf,
    /// SD or SDXL.
    pub architecture: Architecture,
    /// Whether an empty negative prompt means zero embeddings (SDXL's `force_zeros_for_empty_prompt`).
    pub zero_empty_negative: bool,
    /// The UNet's block layout (for LoRAs named after the original SD blocks), when its config gives it.
    pub unet_layout: Option<UnetLayout>,
    /// The picture size the model was trained for (UNet `sample_size` × VAE scale factor).
    pub native_size: Option<u32>,
    /// Pixels per latent cell: 2^(VAE blocks − 1).
    pub vae_scale_factor: u32,
    /// Latents are divided by this before decoding.
    pub latent_scaling: f32,
    /// The scheduler configuration.
    pub scheduler: SchedulerConfig,
    /// The scheduler class the folder names, when huabi implements it.
    pub default_scheduler: Option<SchedulerKind>,
    /// Whether it has `vae_encoder/` (needed to paint from photos).
    pub has_vae_encoder: bool,
    /// Whether it has `safety_checker/` (the diffusers ONNX layout, with `feature_extractor/`).
    pub has_safety_checker: bool,
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
        let architecture = if root.join("text_encoder_2/model.onnx").is_file() {
            Architecture::Sdxl
        } else {
            Architecture::Sd
        };
        let tokenizers: &[&str] = match architecture {
            Architecture::Sd => &["tokenizer"],
            Architecture::Sdxl => &["tokenizer", "tokenizer_2"],
        };
        for name in tokenizers {
            let tokenizer = root.join(name);
            let has_tokenizer = tokenizer.join("tokenizer.json").is_file()
                || tokenizer.join("vocab.txt").is_file()
                || (tokenizer.join("vocab.json").is_file()
                    && tokenizer.join("merges.txt").is_file());
            if !has_tokenizer {
                return Err(model_error(
                    root,
                    format!("{name}/ needs tokenizer.json, vocab.txt or vocab.json + merges.txt"),
                ));
            }
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
        let index = read_json(&root.join("model_index.json"))?;
        let zero_empty_negative = index
            .get("force_zeros_for_empty_prompt")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let unet_config = read_json(&root.join("unet/config.json")).ok();
        let vae_scale_factor = 1 << (blocks - 1);
        let native_size = unet_config
            .as_ref()
            .and_then(|c| c.get("sample_size")?.as_u64())
            .and_then(|s| u32::try_from(s).ok())
            .map(|s| s.saturating_mul(vae_scale_factor));
        Ok(Self {
            root: root.to_path_buf(),
            architecture,
            zero_empty_negative,
            unet_layout: unet_config.as_ref().and_then(UnetLayout::from_config),
            native_size,
            vae_scale_factor,
            latent_scaling,
            scheduler,
            default_scheduler,
            has_vae_encoder: root.join("vae_encoder/model.onnx").is_file(),
            has_safety_checker: root.join("safety_checker/model.onnx").is_file(),
        })
    }

    /// The text encoder components, in order.
    pub fn text_encoders(&self) -> &'static [&'static str] {
        match self.architecture {
            Architecture::Sd => &["text_encoder"],
            Architecture::Sdxl => &["text_encoder", "text_encoder_2"],
        }
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

/// What the pipeline feeds a text encoder and reads from it.
#[derive(Debug, Clone)]
pub struct TextEncoderIo {
    /// `input_ids` (int32 or int64).
    pub input_ids: Port,
    /// `attention_mask`, when the export takes one (BERT encoders do).
    pub attention_mask: Option<Port>,
    /// `token_type_ids`, when the export takes them (all zeros).
    pub token_type_ids: Option<Port>,
    /// Whether the mask marks the padding (the encoder config's `use_attention_mask`); else it is all ones, as
    /// diffusers runs such encoders without a mask.
    pub use_attention_mask: bool,
    /// The per-token embeddings the UNet reads: `last_hidden_state` for SD, the penultimate layer's
    /// `hidden_states.N` for SDXL (as diffusers' SDXL pipeline does).
    pub hidden_states: String,
    /// SDXL's second encoder: the pooled, projected embedding (`text_embeds`).
    pub pooled: Option<String>,
}

/// The names, types and ranks the sessions declare.
#[derive(Debug, Clone)]
pub struct ModelIo {
    /// One text encoder (SD) or two (SDXL), in order.
    pub text_encoders: Vec<TextEncoderIo>,
    /// unet `sample` (float32 or float16).
    pub sample: Port,
    /// unet `timestep` (rank 0 or 1; float or int).
    pub timestep: Port,
    /// unet `encoder_hidden_states`.
    pub encoder_hidden_states: Port,
    /// SDXL unet `text_embeds` (the pooled embedding).
    pub text_embeds: Option<Port>,
    /// SDXL unet `time_ids` (original size, crop, target size).
    pub time_ids: Option<Port>,
    /// unet output.
    pub noise_pred: String,
    /// vae_decoder `latent_sample`.
    pub latent_sample: Port,
    /// vae_decoder output.
    pub image: String,
    /// vae_encoder, when the folder has one.
    pub vae_encoder: Option<VaeEncoderIo>,
}

/// What the pipeline feeds the VAE encoder and reads from it.
#[derive(Debug, Clone)]
pub struct VaeEncoderIo {
    /// `sample`: pictures in [-1, 1], NCHW.
    pub sample: Port,
    /// The output.
    pub output: String,
    /// Whether the output is the posterior's mean and log-variance (`latent_parameters`, optimum) rather than a
    /// sample the graph drew itself (older diffusers exports' `latent_sample`).
    pub parameters: bool,
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
                "needs input {:?}, which this pipeline does not provide (LCM-distilled, ControlNet or inpainting UNets are not supported yet)",
                extra.name()
            ),
        )),
        None => Ok(()),
    }
}

/// The penultimate `hidden_states.N` output, which SDXL conditions on.
fn penultimate_hidden_states(session: &Session, path: &Path) -> Result<String, EngineError> {
    let layers = session
        .outputs()
        .iter()
        .filter_map(|o| o.name().strip_prefix("hidden_states.")?.parse::<usize>().ok())
        .max()
        .ok_or_else(|| {
            model_error(
                path,
                "an SDXL text encoder must output hidden_states.N (export it with output_hidden_states)",
            )
        })?;
    if layers == 0 {
        return Err(model_error(path, "has no layer before the last"));
    }
    Ok(format!("hidden_states.{}", layers - 1))
}

fn text_encoder_io(
    session: &Session,
    path: &Path,
    architecture: Architecture,
    second: bool,
) -> Result<TextEncoderIo, EngineError> {
    use TensorElementType::{Int32, Int64};
    no_extra_inputs(
        session,
        path,
        &["input_ids", "attention_mask", "token_type_ids"],
    )?;
    let optional = |name: &str| {
        session
            .inputs()
            .iter()
            .any(|i| i.name() == name)
            .then(|| port(session, path, name, &[Int32, Int64], &[2]))
            .transpose()
    };
    let use_attention_mask = path
        .parent()
        .and_then(|dir| std::fs::read_to_string(dir.join("config.json")).ok())
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|config| config.get("use_attention_mask")?.as_bool())
        .unwrap_or(false);
    let (hidden_states, pooled) = match architecture {
        Architecture::Sd => (output(session, path, "last_hidden_state")?, None),
        Architecture::Sdxl => {
            let pooled = if second {
                let name = "text_embeds";
                if !session.outputs().iter().any(|o| o.name() == name) {
                    return Err(model_error(
                        path,
                        "SDXL's second text encoder must output text_embeds",
                    ));
                }
                Some(name.to_string())
            } else {
                None
            };
            (penultimate_hidden_states(session, path)?, pooled)
        }
    };
    Ok(TextEncoderIo {
        input_ids: port(session, path, "input_ids", &[Int32, Int64], &[2])?,
        attention_mask: optional("attention_mask")?,
        token_type_ids: optional("token_type_ids")?,
        use_attention_mask,
        hidden_states,
        pooled,
    })
}

impl ModelIo {
    /// Reads and checks the sessions' declarations.
    pub fn read(
        folder: &ModelFolder,
        text_encoders: &[&Session],
        unet: &Session,
        vae: &Session,
        vae_encoder: Option<&Session>,
    ) -> Result<Self, EngineError> {
        use TensorElementType::{Float16, Float32, Int32, Int64};
        let un = folder.onnx("unet");
        let vd = folder.onnx("vae_decoder");
        let text_encoders = text_encoders
            .iter()
            .enumerate()
            .map(|(i, session)| {
                let component = if i == 0 {
                    "text_encoder"
                } else {
                    "text_encoder_2"
                };
                text_encoder_io(
                    session,
                    &folder.onnx(component),
                    folder.architecture,
                    i == 1,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sdxl = folder.architecture == Architecture::Sdxl;
        let unet_inputs: &[&str] = if sdxl {
            &[
                "sample",
                "timestep",
                "encoder_hidden_states",
                "text_embeds",
                "time_ids",
            ]
        } else {
            &["sample", "timestep", "encoder_hidden_states"]
        };
        no_extra_inputs(unet, &un, unet_inputs)?;
        no_extra_inputs(vae, &vd, &["latent_sample"])?;
        let floats = [Float32, Float16];
        Ok(Self {
            text_encoders,
            sample: port(unet, &un, "sample", &floats, &[4])?,
            timestep: port(
                unet,
                &un,
                "timestep",
                &[Float32, Float16, Int64, Int32],
                &[0, 1],
            )?,
            encoder_hidden_states: port(unet, &un, "encoder_hidden_states", &floats, &[3])?,
            text_embeds: sdxl
                .then(|| port(unet, &un, "text_embeds", &floats, &[2]))
                .transpose()?,
            time_ids: sdxl
                .then(|| port(unet, &un, "time_ids", &floats, &[2]))
                .transpose()?,
            noise_pred: output(unet, &un, "out_sample")?,
            latent_sample: port(vae, &vd, "latent_sample", &floats, &[4])?,
            image: output(vae, &vd, "sample")?,
            vae_encoder: vae_encoder
                .map(|session| {
                    let path = folder.onnx("vae_encoder");
                    no_extra_inputs(session, &path, &["sample"])?;
                    let output = output(session, &path, "latent_parameters")?;
                    Ok::<_, EngineError>(VaeEncoderIo {
                        sample: port(session, &path, "sample", &floats, &[4])?,
                        parameters: output == "latent_parameters",
                        output,
                    })
                })
                .transpose()?,
        })
    }
}
