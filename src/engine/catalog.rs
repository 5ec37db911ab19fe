//! The model catalogue: one folder per model in `models_dir` (diffusers/optimum ONNX layout, named by the folder),
//! LoRA files in `models_dir/loras/NAME.safetensors`, the default model, and the models this node paints. It reads
//! the disk each time it is asked, so a model or LoRA copied in is seen without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::lora::merge::check_fit;
use super::lora::targets::LayerIndex;
use super::lora::{Lora, LoraFormat, Part};
use super::model::{Architecture, ModelFolder};
use super::onnx::{DataType, OnnxModel};
use super::safety::{SafetyConfig, SafetyMode};
use super::{EngineConfig, EngineError, LoraChoice};

/// Where the models are and which this node paints.
#[derive(Debug, Clone)]
pub struct ModelCatalog {
    models_dir: PathBuf,
    default_name: String,
    default_dir: PathBuf,
    allow: Vec<String>,
    safety: SafetyConfig,
}

/// One model as `huabi models` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Its name.
    pub name: String,
    /// Its folder.
    pub path: PathBuf,
    /// SD or SDXL (when the layout could be read).
    pub architecture: Option<Architecture>,
    /// The UNet's weight type (`fp32`, `fp16`, …).
    pub precision: Option<String>,
    /// Bytes on disk per component (`model.onnx` plus external data).
    pub files: Vec<(String, u64)>,
    /// Whether it is the default model.
    pub default: bool,
    /// Whether this node paints it (`HUABI__ENGINE__MODELS`).
    pub painted_here: bool,
    /// Whether it paints from photos (has `vae_encoder/`).
    pub img2img: bool,
    /// Whether it has a safety checker, and the `[safety]` mode for it: `checked`, `unchecked` (mode on, no
    /// checker), `off`, or `refused` (required, no checker).
    pub safety: &'static str,
    /// Whether its text encoder reads Chinese (its prompts are not translated).
    pub reads_chinese: bool,
    /// Why it cannot be used, if it cannot (`None` = it loads).
    pub problem: Option<String>,
}

/// One LoRA as `huabi models` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LoraInfo {
    /// Its name.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// kohya, peft or diffusers.
    pub format: Option<LoraFormat>,
    /// Its highest rank.
    pub rank: usize,
    /// Layers it changes.
    pub layers: usize,
    /// Parts it changes (`unet`, `text_encoder`, `text_encoder_2`).
    pub parts: Vec<String>,
    /// Models every key of it fits.
    pub fits: Vec<String>,
    /// Why it cannot be read, if it cannot.
    pub problem: Option<String>,
}

/// Whether `name` is a plain folder or file name (no path tricks).
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Bytes of every file directly in `dir` (for a component, its weights).
pub(crate) fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn precision(dtype: DataType) -> String {
    match dtype {
        DataType::F32 => "fp32".into(),
        DataType::F16 => "fp16".into(),
        DataType::Bf16 => "bf16".into(),
        DataType::Other(code) => format!("onnx type {code}"),
    }
}

/// Graphs read for fit checks, by (model folder, component), so each is parsed once.
#[derive(Default)]
pub(crate) struct GraphCache {
    graphs: HashMap<(PathBuf, &'static str), (OnnxModel, LayerIndex)>,
}

impl GraphCache {
    /// The graph and layer index of a component.
    pub(crate) fn get(
        &mut self,
        folder: &ModelFolder,
        component: &'static str,
    ) -> Result<&(OnnxModel, LayerIndex), EngineError> {
        let key = (folder.root.clone(), component);
        if !self.graphs.contains_key(&key) {
            let path = folder.onnx(component);
            if !path.is_file() {
                return Err(EngineError::Invalid(format!(
                    "model {} has no {component} (a LoRA for it needs {})",
                    folder.root.display(),
                    path.display()
                )));
            }
            let model = OnnxModel::open(&path).map_err(|e| EngineError::Model {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let index = LayerIndex::build(&model);
            self.graphs.insert(key.clone(), (model, index));
        }
        self.graphs
            .get(&key)
            .ok_or_else(|| EngineError::Runtime("graph cache".into()))
    }
}

/// Checks every layer of `lora` against `folder`; returns the number of layers.
pub(crate) fn lora_fits(
    folder: &ModelFolder,
    lora: &Lora,
    graphs: &mut GraphCache,
) -> Result<usize, EngineError> {
    let mut layers = 0;
    for part in lora.parts() {
        let (model, index) = graphs.get(folder, part.component())?;
        let layout = (part == Part::Unet)
            .then_some(folder.unet_layout.as_ref())
            .flatten();
        layers += check_fit(model, index, part, lora, layout)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
    }
    Ok(layers)
}

impl ModelCatalog {
    /// The catalogue `config` describes.
    pub fn new(config: &EngineConfig) -> Self {
        Self {
            models_dir: config.models_dir.clone(),
            default_name: config.default_model(),
            default_dir: config.default_model_dir(),
            safety: config.safety.clone(),
            allow: config
                .models
                .iter()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect(),
        }
    }

    /// The default model's name.
    pub fn default_model(&self) -> &str {
        &self.default_name
    }

    /// Whether `model`'s text encoder reads Chinese itself (its vocabulary is largely Chinese, as in the Chinese
    /// SD 1.5 variants' BERT encoders), so its prompts are not translated. `""` is the default model.
    pub fn reads_chinese(&self, model: &str) -> bool {
        let model = if model.is_empty() {
            self.default_model()
        } else {
            model
        };
        self.model_dir(model)
            .map(|dir| super::tokenizer::reads_chinese(&dir.join("tokenizer")))
            .unwrap_or(false)
    }

    /// The folder holding the LoRAs.
    pub fn loras_dir(&self) -> PathBuf {
        self.models_dir.join("loras")
    }

    /// Every model: folders of `models_dir` with a `model_index.json`, and the default model; sorted by name.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.models_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().join("model_index.json").is_file())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| plain_name(n))
                    .collect()
            })
            .unwrap_or_default();
        if self.default_dir.join("model_index.json").is_file() {
            names.push(self.default_name.clone());
        }
        names.sort();
        names.dedup();
        names
    }

    /// The folder of model `name`.
    pub fn model_dir(&self, name: &str) -> Result<PathBuf, EngineError> {
        if name.is_empty() || name == self.default_name {
            return Ok(self.default_dir.clone());
        }
        if !plain_name(name) {
            return Err(EngineError::Invalid(format!(
                "model name {name:?} must be a plain folder name"
            )));
        }
        let dir = self.models_dir.join(name);
        if dir.join("model_index.json").is_file() {
            Ok(dir)
        } else {
            Err(EngineError::Invalid(format!(
                "no model {name:?} in {} (models: {})",
                self.models_dir.display(),
                self.model_names().join(", ")
            )))
        }
    }

    /// Every LoRA in `models_dir/loras`, sorted.
    pub fn lora_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.loras_dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e
                            .file_name()
                            .to_str()?
                            .strip_suffix(".safetensors")?
                            .to_string();
                        plain_name(&name).then_some(name)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The file of a LoRA: `models_dir/loras/NAME.safetensors`, or a path given as such (containing `/` or ending
    /// in `.safetensors`; for `huabi generate --lora`).
    pub fn lora_path(&self, name_or_path: &str) -> Result<PathBuf, EngineError> {
        let path = if name_or_path.contains('/') || name_or_path.ends_with(".safetensors") {
            PathBuf::from(name_or_path)
        } else if plain_name(name_or_path) {
            self.loras_dir().join(format!("{name_or_path}.safetensors"))
        } else {
            return Err(EngineError::Invalid(format!(
                "LoRA name {name_or_path:?} must be a plain file name"
            )));
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(EngineError::Invalid(format!(
                "no LoRA {name_or_path:?} ({} does not exist)",
                path.display()
            )))
        }
    }

    /// Opens a LoRA by name or path.
    pub fn open_lora(&self, name_or_path: &str) -> Result<Lora, EngineError> {
        let path = self.lora_path(name_or_path)?;
        Lora::open(name_or_path, &path).map_err(|e| EngineError::Invalid(e.to_string()))
    }

    /// Whether this node paints `name` (the allow-list, when there is one).
    pub fn allows(&self, name: &str) -> bool {
        let name = if name.is_empty() {
            self.default_name.as_str()
        } else {
            name
        };
        self.allow.is_empty() || self.allow.iter().any(|m| m == name)
    }

    /// The models this node paints: in the catalogue and allowed. The default model also answers to `""` (jobs
    /// admitted before jobs named their model).
    pub fn paintable(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .model_names()
            .into_iter()
            .filter(|n| self.allows(n))
            .collect();
        if names.contains(&self.default_name) {
            names.push(String::new());
        }
        names
    }

    /// Checks a campaign's choice: the model exists, every LoRA exists and every key of it fits the model.
    pub fn check(&self, model: &str, loras: &[LoraChoice]) -> Result<(), EngineError> {
        let folder = ModelFolder::inspect(&self.model_dir(model)?)?;
        let mut graphs = GraphCache::default();
        for choice in loras {
            if !(choice.scale.is_finite() && (-10.0..=10.0).contains(&choice.scale)) {
                return Err(EngineError::Invalid(format!(
                    "LoRA {} scale {} must be between -10 and 10",
                    choice.name, choice.scale
                )));
            }
            let lora = self.open_lora(&choice.name)?;
            lora_fits(&folder, &lora, &mut graphs)?;
        }
        Ok(())
    }

    /// Every model, read from disk (layout and graphs; opening sessions is [`super::Engine::try_load`]'s job).
    pub fn describe_models(&self) -> Vec<ModelInfo> {
        self.model_names()
            .into_iter()
            .map(|name| {
                let path = self.model_dir(&name).unwrap_or_default();
                let mut info = ModelInfo {
                    default: name == self.default_name,
                    painted_here: self.allows(&name),
                    name,
                    path: path.clone(),
                    architecture: None,
                    precision: None,
                    files: Vec::new(),
                    img2img: false,
                    safety: "-",
                    reads_chinese: false,
                    problem: None,
                };
                match ModelFolder::inspect(&path) {
                    Ok(folder) => {
                        info.architecture = Some(folder.architecture);
                        info.img2img = folder.has_vae_encoder;
                        info.reads_chinese = self.reads_chinese(&info.name);
                        info.safety =
                            match (self.safety.mode(&info.name), folder.has_safety_checker) {
                                (SafetyMode::Off, _) => "off",
                                (_, true) => "checked",
                                (SafetyMode::Required, false) => "refused",
                                (SafetyMode::On, false) => "unchecked",
                            };
                        let mut components: Vec<&str> = folder.text_encoders().to_vec();
                        components.extend(["unet", "vae_decoder", "vae_encoder", "safety_checker"]);
                        for c in components {
                            let dir = path.join(c);
                            if dir.is_dir() {
                                info.files.push((c.to_string(), folder_bytes(&dir)));
                            }
                        }
                        match OnnxModel::open(&folder.onnx("unet")) {
                            Ok(unet) => info.precision = unet.weight_dtype().map(precision),
                            Err(e) => info.problem = Some(e.to_string()),
                        }
                    }
                    Err(e) => info.problem = Some(e.to_string()),
                }
                info
            })
            .collect()
    }

    /// Every LoRA, with the models each fits.
    pub fn describe_loras(&self) -> Vec<LoraInfo> {
        let folders: Vec<(String, ModelFolder)> = self
            .model_names()
            .into_iter()
            .filter_map(|n| {
                let folder = ModelFolder::inspect(&self.model_dir(&n).ok()?).ok()?;
                Some((n, folder))
            })
            .collect();
        let mut graphs = GraphCache::default();
        self.lora_names()
            .into_iter()
            .map(|name| {
                let path = self.loras_dir().join(format!("{name}.safetensors"));
                let mut info = LoraInfo {
                    name: name.clone(),
                    path: path.clone(),
                    format: None,
                    rank: 0,
                    layers: 0,
                    parts: Vec::new(),
                    fits: Vec::new(),
                    problem: None,
                };
                match Lora::open(&name, &path) {
                    Ok(lora) => {
                        info.format = Some(lora.format);
                        info.rank = lora.rank();
                        info.layers = lora.layers.len();
                        info.parts = lora
                            .parts()
                            .iter()
                            .map(|p| p.component().to_string())
                            .collect();
                        info.fits = folders
                            .iter()
                            .filter(|(_, folder)| lora_fits(folder, &lora, &mut graphs).is_ok())
                            .map(|(n, _)| n.clone())
                            .collect();
                    }
                    Err(e) => info.problem = Some(e.to_string()),
                }
                info
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_catalogue() {
        for bad in ["", "../x", "a/b", ".hidden", "x y", "a\\b"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
        for good in ["tiny-sd", "sd_15.v2", "中秋"] {
            assert!(plain_name(good), "{good:?}");
        }
    }
}
