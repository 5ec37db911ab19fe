//! LoRA files as the community makes them: kohya (`lora_unet_…`, `lora_te_…`, `.lora_down` / `.lora_up` /
//! `.alpha`) and diffusers/PEFT (`unet.….lora_A` / `.lora_B`, alpha in the `lora_adapter_metadata` header), read
//! into layers, mapped onto an exported graph's weights ([`targets`]) and merged into them ([`merge`]).

pub mod merge;
mod safetensors;
pub mod sgm;
pub mod targets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use safetensors::{SafetensorsError, SafetensorsFile};

/// Why a LoRA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// The file is not a readable safetensors file.
    #[error(transparent)]
    File(#[from] SafetensorsError),
    /// A key the file holds cannot be used.
    #[error("LoRA {path}: key {key}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A layer does not fit the model it is merged into.
    #[error("LoRA {path}: key {key}: {reason}")]
    Fit {
        /// The file.
        path: PathBuf,
        /// The layer's key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The model's graph could not be read.
    #[error(transparent)]
    Model(#[from] crate::engine::onnx::OnnxError),
    /// The file holds no LoRA layers.
    #[error(
        "LoRA {0}: holds no LoRA layers (expected kohya lora_down/lora_up or PEFT lora_A/lora_B keys)"
    )]
    Empty(PathBuf),
}

/// How a file names its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraFormat {
    /// kohya-ss sd-scripts: `lora_unet_down_blocks_0_…_to_q.lora_down.weight`, `.alpha`.
    Kohya,
    /// diffusers with PEFT: `unet.down_blocks.0.….to_q.lora_A.weight`, alpha in the metadata.
    Peft,
    /// diffusers before PEFT: `unet.….to_q.lora.down.weight` (or attention-processor keys).
    Diffusers,
}

impl std::fmt::Display for LoraFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoraFormat::Kohya => "kohya",
            LoraFormat::Peft => "peft",
            LoraFormat::Diffusers => "diffusers",
        })
    }
}

/// The pipeline part a layer changes; its value is the component folder's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Part {
    /// `unet`.
    Unet,
    /// `text_encoder` (SD 1.x/2.x's only one, SDXL's CLIP-L).
    TextEncoder,
    /// `text_encoder_2` (SDXL's OpenCLIP bigG).
    TextEncoder2,
}

impl Part {
    /// The component folder.
    pub fn component(self) -> &'static str {
        match self {
            Part::Unet => "unet",
            Part::TextEncoder => "text_encoder",
            Part::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// How a layer names the module it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleName {
    /// The module path with `_` for every `.` (kohya), maybe in SGM block names (`input_blocks_4_1_…`).
    Underscored(String),
    /// The module path (`down_blocks.0.attentions.0.…`).
    Dotted(String),
}

/// One low-rank update: `Δ = up @ down · alpha / rank`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraLayer {
    /// The key prefix in the file (what error messages name).
    pub key: String,
    /// The part it changes.
    pub part: Part,
    /// The module it changes.
    pub module: ModuleName,
    /// The tensor holding `down` (`[rank, in]` or `[rank, in, kh, kw]`).
    pub down: String,
    /// The tensor holding `up` (`[out, rank]` or `[out, rank, 1, 1]`).
    pub up: String,
    /// Shape of `down`.
    pub down_shape: Vec<usize>,
    /// Shape of `up`.
    pub up_shape: Vec<usize>,
    /// Its alpha (the rank when the file gives none).
    pub alpha: f32,
}

impl LoraLayer {
    /// The rank.
    pub fn rank(&self) -> usize {
        self.down_shape.first().copied().unwrap_or(0)
    }
}

/// A LoRA file, read and checked.
#[derive(Debug)]
pub struct Lora {
    /// Its name (file stem).
    pub name: String,
    /// Its format.
    pub format: LoraFormat,
    /// Its layers, sorted by key.
    pub layers: Vec<LoraLayer>,
    /// The mapped file.
    pub file: SafetensorsFile,
}

/// Suffixes of LoRA variants huabi does not merge, with their names for the error.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("dora_scale", "DoRA"),
    ("lora_mid.weight", "LoCon with a Tucker middle"),
    ("hada_w1_a", "LoHa"),
    ("hada_w1_b", "LoHa"),
    ("hada_w2_a", "LoHa"),
    ("hada_w2_b", "LoHa"),
    ("hada_t1", "LoHa"),
    ("hada_t2", "LoHa"),
    ("lokr_w1", "LoKr"),
    ("lokr_w2", "LoKr"),
    ("lokr_w1_a", "LoKr"),
    ("lokr_w1_b", "LoKr"),
    ("lokr_w2_a", "LoKr"),
    ("lokr_w2_b", "LoKr"),
    ("lokr_t2", "LoKr"),
    ("diff", "full weight difference"),
    ("diff_b", "bias difference"),
    ("on_input", "GLoRA"),
    ("a1.weight", "GLoRA"),
];

/// The two tensors and the alpha of one layer while a file is read.
#[derive(Default)]
struct Pair {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<f32>,
}

impl Lora {
    /// Reads `path` (named `name`).
    pub fn open(name: &str, path: &Path) -> Result<Self, LoraError> {
        let file = SafetensorsFile::open(path)?;
        let key_error = |key: &str, reason: String| LoraError::Key {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let peft_alpha = PeftAlpha::from_metadata(&file.metadata)
            .map_err(|reason| key_error("__metadata__.lora_adapter_metadata", reason))?;
        let mut pairs: BTreeMap<(Part, String, bool), Pair> = BTreeMap::new();
        let mut formats = Vec::new();
        for key in file.tensors.keys() {
            let parsed = parse_key(key).map_err(|reason| key_error(key, reason))?;
            let alpha_only = parsed.role == Role::Alpha && parsed.format != LoraFormat::Kohya;
            if !alpha_only && !formats.contains(&parsed.format) {
                formats.push(parsed.format);
            }
            let pair = pairs
                .entry((parsed.part, parsed.module.clone(), parsed.underscored))
                .or_default();
            match parsed.role {
                Role::Down => pair.down = Some(key.clone()),
                Role::Up => pair.up = Some(key.clone()),
                Role::Alpha => {
                    let values = file.f32(key).unwrap_or_default();
                    let [alpha] = values[..] else {
                        return Err(key_error(key, "alpha must hold one value".into()));
                    };
                    pair.alpha = Some(alpha);
                }
            }
        }
        let format = match formats[..] {
            [] => return Err(LoraError::Empty(path.to_path_buf())),
            [one] => one,
            _ => {
                return Err(key_error(
                    file.tensors.keys().next().map_or("", |k| k.as_str()),
                    format!("mixes key formats ({formats:?}); huabi reads one format per file"),
                ));
            }
        };
        let mut layers = Vec::with_capacity(pairs.len());
        for ((part, module, underscored), pair) in pairs {
            let any = pair
                .down
                .as_deref()
                .or(pair.up.as_deref())
                .unwrap_or(&module)
                .to_string();
            let (Some(down), Some(up)) = (pair.down, pair.up) else {
                return Err(key_error(
                    &any,
                    "has only one of the two LoRA matrices (down/A and up/B)".into(),
                ));
            };
            let down_shape = file.tensors[&down].shape.clone();
            let up_shape = file.tensors[&up].shape.clone();
            let rank = down_shape.first().copied().unwrap_or(0);
            let shapes_fit = matches!(down_shape.len(), 2 | 4)
                && up_shape.len() == down_shape.len()
                && rank > 0
                && up_shape.get(1) == Some(&rank)
                && up_shape.iter().skip(2).all(|&d| d == 1);
            if !shapes_fit {
                return Err(key_error(
                    &down,
                    format!(
                        "down {down_shape:?} and up {up_shape:?} are not a LoRA pair ([r, in(, kh, kw)] and [out, r(, 1, 1)])"
                    ),
                ));
            }
            let key = down
                .rsplit_once(if format == LoraFormat::Kohya {
                    ".lora_down"
                } else if down.contains(".lora_A") {
                    ".lora_A"
                } else {
                    ".lora"
                })
                .map_or(down.clone(), |(prefix, _)| prefix.to_string());
            let alpha = match pair.alpha {
                Some(alpha) => alpha,
                None if format == LoraFormat::Kohya => rank as f32,
                None => peft_alpha.alpha(part, &module, rank),
            };
            if !alpha.is_finite() {
                return Err(key_error(&key, format!("alpha {alpha} is not a number")));
            }
            layers.push(LoraLayer {
                key,
                part,
                module: if underscored {
                    ModuleName::Underscored(module)
                } else {
                    ModuleName::Dotted(module)
                },
                down,
                up,
                down_shape,
                up_shape,
                alpha,
            });
        }
        Ok(Self {
            name: name.to_string(),
            format,
            layers,
            file,
        })
    }

    /// The highest rank of its layers.
    pub fn rank(&self) -> usize {
        self.layers.iter().map(LoraLayer::rank).max().unwrap_or(0)
    }

    /// The parts it changes.
    pub fn parts(&self) -> Vec<Part> {
        let mut parts: Vec<Part> = self.layers.iter().map(|l| l.part).collect();
        parts.sort();
        parts.dedup();
        parts
    }
}

/// What a tensor of a LoRA file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Down,
    Up,
    Alpha,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ParsedKey {
    format: LoraFormat,
    part: Part,
    module: String,
    underscored: bool,
    role: Role,
}

/// Reads one key of a LoRA file.
fn parse_key(key: &str) -> Result<ParsedKey, String> {
    if let Some(rest) = key.strip_prefix("lora_") {
        let (part, rest) = if let Some(r) = rest.strip_prefix("unet_") {
            (Part::Unet, r)
        } else if let Some(r) = rest.strip_prefix("te1_") {
            (Part::TextEncoder, r)
        } else if let Some(r) = rest.strip_prefix("te2_") {
            (Part::TextEncoder2, r)
        } else if let Some(r) = rest.strip_prefix("te_") {
            (Part::TextEncoder, r)
        } else {
            return Err(
                "a kohya key must start with lora_unet_, lora_te_, lora_te1_ or lora_te2_".into(),
            );
        };
        let (module, suffix) = rest
            .split_once('.')
            .ok_or("a kohya key needs a suffix (.lora_down.weight, .lora_up.weight or .alpha)")?;
        let role = match suffix {
            "lora_down.weight" => Role::Down,
            "lora_up.weight" => Role::Up,
            "alpha" => Role::Alpha,
            other => return Err(unsupported(other)),
        };
        return Ok(ParsedKey {
            format: LoraFormat::Kohya,
            part,
            module: module.to_string(),
            underscored: true,
            role,
        });
    }
    let (part, rest) = if let Some(r) = key.strip_prefix("unet.") {
        (Part::Unet, r)
    } else if let Some(r) = key.strip_prefix("text_encoder_2.") {
        (Part::TextEncoder2, r)
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        (Part::TextEncoder, r)
    } else {
        return Err(
            "names no part huabi knows (kohya lora_unet_/lora_te*_ or diffusers unet./text_encoder./text_encoder_2.)"
                .into(),
        );
    };
    for (suffix, format, role) in [
        (".lora_A.weight", LoraFormat::Peft, Role::Down),
        (".lora_B.weight", LoraFormat::Peft, Role::Up),
        (".lora_A.default.weight", LoraFormat::Peft, Role::Down),
        (".lora_B.default.weight", LoraFormat::Peft, Role::Up),
        (".lora.down.weight", LoraFormat::Diffusers, Role::Down),
        (".lora.up.weight", LoraFormat::Diffusers, Role::Up),
        (
            ".lora_linear_layer.down.weight",
            LoraFormat::Diffusers,
            Role::Down,
        ),
        (
            ".lora_linear_layer.up.weight",
            LoraFormat::Diffusers,
            Role::Up,
        ),
        ("_lora.down.weight", LoraFormat::Diffusers, Role::Down),
        ("_lora.up.weight", LoraFormat::Diffusers, Role::Up),
        (".alpha", LoraFormat::Diffusers, Role::Alpha),
    ] {
        if let Some(module) = rest.strip_suffix(suffix) {
            return Ok(ParsedKey {
                format,
                part,
                module: attention_processor_module(module),
                underscored: false,
                role,
            });
        }
    }
    Err(unsupported(rest.rsplit('.').next().unwrap_or(rest)))
}

/// diffusers' old attention-processor keys (`….attn1.processor.to_q_lora.down.weight`) name the projection they
/// change.
fn attention_processor_module(module: &str) -> String {
    for (processor, projection) in [
        (".processor.to_q", ".to_q"),
        (".processor.to_k", ".to_k"),
        (".processor.to_v", ".to_v"),
        (".processor.to_out", ".to_out.0"),
    ] {
        if let Some(attention) = module.strip_suffix(processor) {
            return format!("{attention}{projection}");
        }
    }
    module.to_string()
}

fn unsupported(suffix: &str) -> String {
    match UNSUPPORTED
        .iter()
        .find(|(s, _)| suffix == *s || suffix.ends_with(&format!(".{s}")))
    {
        Some((_, kind)) => {
            format!("{kind} layers are not supported; huabi merges plain LoRA (down/up and alpha)")
        }
        None => format!(
            "unknown LoRA tensor {suffix:?} (expected lora_down/lora_up/alpha or lora_A/lora_B)"
        ),
    }
}

/// The alphas a PEFT file gives in `lora_adapter_metadata` (diffusers' `save_lora_weights`):
/// `{"unet.lora_alpha": 8, "unet.r": 4, "unet.alpha_pattern": {…}, "text_encoder.lora_alpha": …}`.
#[derive(Debug, Default)]
struct PeftAlpha {
    by_part: BTreeMap<Part, f32>,
    patterns: BTreeMap<Part, Vec<(String, f32)>>,
}

impl PeftAlpha {
    fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut out = Self::default();
        let Some(text) = metadata.get("lora_adapter_metadata") else {
            return Ok(out);
        };
        let json: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(entries) = json else {
            return Err("not a JSON object".into());
        };
        for part in [Part::Unet, Part::TextEncoder, Part::TextEncoder2] {
            let prefix = part.component();
            if let Some(alpha) = entries.get(&format!("{prefix}.lora_alpha")) {
                let alpha = alpha
                    .as_f64()
                    .ok_or(format!("{prefix}.lora_alpha is not a number"))?;
                out.by_part.insert(part, alpha as f32);
            }
            if let Some(Value::Object(pattern)) = entries.get(&format!("{prefix}.alpha_pattern")) {
                let mut list = Vec::new();
                for (module, alpha) in pattern {
                    let alpha = alpha
                        .as_f64()
                        .ok_or(format!("{prefix}.alpha_pattern[{module}] is not a number"))?;
                    list.push((module.clone(), alpha as f32));
                }
                out.patterns.insert(part, list);
            }
        }
        Ok(out)
    }

    /// The alpha of `module` in `part`: a pattern that names it, else the part's alpha, else the rank.
    fn alpha(&self, part: Part, module: &str, rank: usize) -> f32 {
        if let Some(pattern) = self.patterns.get(&part)
            && let Some((_, alpha)) = pattern
                .iter()
                .filter(|(p, _)| module == p || module.ends_with(&format!(".{p}")))
                .max_by_key(|(p, _)| p.len())
        {
            return *alpha;
        }
        self.by_part.get(&part).copied().unwrap_or(rank as f32)
    }
}

#[cfg(test)]
mod tests;
