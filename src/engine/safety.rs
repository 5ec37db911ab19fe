//! The safety checker of a model folder (diffusers' ONNX layout: `safety_checker/model.onnx` taking `clip_input` and
//! `images`, returning `has_nsfw_concepts`; `feature_extractor/preprocessor_config.json` for its CLIP image
//! preprocessing, done here as transformers' `CLIPImageProcessor` does it). Besides the flags, huabi reads the
//! concept scores diffusers computes inside (cosine distance to each concept minus its threshold, plus the special
//! care adjustment): the graph is opened with those values added as outputs.

use std::collections::HashMap;
use std::path::Path;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType};
use serde::Deserialize;
use serde_json::Value;

use super::onnx::{GraphEdit, OnnxModel};
use super::pipeline::{SharedSession, float_values, lock};
use super::resample::{self, Filter};
use super::runtime::{self, Device};
use super::{EngineError, Picture};

/// Whether a model's pictures are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SafetyMode {
    /// Checked when the model folder has a checker (a warning when it has none).
    #[default]
    On,
    /// Checked; a model without a checker is refused.
    Required,
    /// Never checked.
    Off,
}

/// `[safety]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SafetyConfig {
    /// The mode of models `models` does not name.
    #[serde(default)]
    pub default: SafetyMode,
    /// The mode per model name.
    #[serde(default)]
    pub models: HashMap<String, SafetyMode>,
    /// Keep a flagged picture's bytes in the database for review (it is never delivered either way).
    #[serde(default)]
    pub keep_flagged: bool,
}

impl SafetyConfig {
    /// The mode for `model`.
    pub fn mode(&self, model: &str) -> SafetyMode {
        self.models.get(model).copied().unwrap_or(self.default)
    }
}

/// What the checker says of one picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Whether any concept scored above 0 (the picture must not be delivered).
    pub flagged: bool,
    /// Per concept: its cosine similarity minus its threshold (plus 0.01 when a special-care concept matched);
    /// empty when the graph does not expose them.
    pub concept_scores: Vec<f32>,
    /// Per special-care concept: similarity minus threshold.
    pub special_scores: Vec<f32>,
}

impl Verdict {
    /// The highest concept score (−∞ when none is known).
    pub fn worst(&self) -> f32 {
        self.concept_scores
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
    }
}

fn model_error(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Model {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A size in a preprocessor config: a number, `{"shortest_edge": n}` or `{"height": h, "width": w}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    ShortestEdge(u32),
    Exact { height: u32, width: u32 },
}

fn size(value: Option<&Value>, square: bool) -> Option<Size> {
    match value? {
        Value::Number(n) => {
            let n = u32::try_from(n.as_u64()?).ok()?;
            Some(if square {
                Size::Exact {
                    height: n,
                    width: n,
                }
            } else {
                Size::ShortestEdge(n)
            })
        }
        Value::Object(o) => {
            let get = |k: &str| {
                o.get(k)
                    .and_then(Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
            };
            match (get("shortest_edge"), get("height"), get("width")) {
                (Some(n), _, _) => Some(Size::ShortestEdge(n)),
                (None, Some(height), Some(width)) => Some(Size::Exact { height, width }),
                _ => None,
            }
        }
        _ => None,
    }
    .filter(|s| match *s {
        Size::ShortestEdge(n) => (1..=4096).contains(&n),
        Size::Exact { height, width } => {
            (1..=4096).contains(&height) && (1..=4096).contains(&width)
        }
    })
}

/// transformers' `CLIPImageProcessor` (the slow, Pillow-based one diffusers' pipelines load).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPreprocess {
    resize: Option<(Size, Filter)>,
    crop: Option<(u32, u32)>,
    rescale: Option<f64>,
    normalize: Option<([f32; 3], [f32; 3])>,
}

impl ClipPreprocess {
    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| model_error(path, format!("cannot read: {e}")))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| model_error(path, e))?;
        Self::from_json(&config).map_err(|reason| model_error(path, reason))
    }

    fn from_json(config: &Value) -> Result<Self, String> {
        let flag = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(true);
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], String> {
            match config.get(key) {
                None => Ok(default),
                Some(Value::Array(values)) if values.len() == 3 => {
                    let mut out = [0.0; 3];
                    for (slot, v) in out.iter_mut().zip(values) {
                        *slot = v.as_f64().ok_or(format!("{key} must hold numbers"))? as f32;
                    }
                    Ok(out)
                }
                Some(_) => Err(format!("{key} must be three numbers")),
            }
        };
        let resize = if flag("do_resize") {
            let size =
                size(config.get("size"), false).ok_or("size is missing or not understood")?;
            let number = config.get("resample").and_then(Value::as_u64).unwrap_or(3);
            let filter =
                Filter::from_pil(number).ok_or(format!("resample {number} is not supported"))?;
            Some((size, filter))
        } else {
            None
        };
        let crop = if flag("do_center_crop") {
            match size(config.get("crop_size"), true)
                .ok_or("crop_size is missing or not understood")?
            {
                Size::Exact { height, width } => Some((width, height)),
                Size::ShortestEdge(n) => Some((n, n)),
            }
        } else {
            None
        };
        let rescale = flag("do_rescale").then(|| {
            config
                .get("rescale_factor")
                .and_then(Value::as_f64)
                .unwrap_or(1.0 / 255.0)
        });
        let normalize = if flag("do_normalize") {
            let std = triple("image_std", [0.26862954, 0.261_302_6, 0.275_777_1])?;
            if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
                return Err("image_std must be non-zero".into());
            }
            Some((
                triple("image_mean", [0.481_454_66, 0.457_827_5, 0.408_210_73])?,
                std,
            ))
        } else {
            None
        };
        Ok(Self {
            resize,
            crop,
            rescale,
            normalize,
        })
    }

    /// The output size for a `width` × `height` picture.
    fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        let (mut w, mut h) = (width, height);
        if let Some((size, _)) = self.resize {
            (w, h) = resized((w, h), size);
        }
        if let Some((cw, ch)) = self.crop {
            (w, h) = (cw, ch);
        }
        (w, h)
    }

    /// `picture` as the checker's `clip_input`: CHW values.
    pub fn apply(&self, picture: &Picture) -> Vec<f32> {
        let mut rgb = picture.to_rgb8();
        let (mut w, mut h) = (picture.width, picture.height);
        if let Some((size, filter)) = self.resize {
            let (nw, nh) = resized((w, h), size);
            rgb = resample::resize(
                &rgb,
                (w as usize, h as usize),
                (nw as usize, nh as usize),
                filter,
            );
            (w, h) = (nw, nh);
        }
        if let Some((cw, ch)) = self.crop {
            rgb = centre_crop_or_pad(&rgb, (w, h), (cw, ch));
            (w, h) = (cw, ch);
        }
        let plane = (w * h) as usize;
        let mut chw = vec![0.0f32; 3 * plane];
        for p in 0..plane {
            for c in 0..3 {
                let v = f64::from(rgb[p * 3 + c]);
                let mut x = match self.rescale {
                    Some(factor) => (v * factor) as f32,
                    None => v as f32,
                };
                if let Some((mean, std)) = self.normalize {
                    x = (x - mean[c]) / std[c];
                }
                chw[c * plane + p] = x;
            }
        }
        chw
    }
}

/// transformers' `get_resize_output_image_size`.
fn resized((width, height): (u32, u32), size: Size) -> (u32, u32) {
    match size {
        Size::Exact { height, width } => (width, height),
        Size::ShortestEdge(n) => {
            let (short, long) = if width <= height {
                (width, height)
            } else {
                (height, width)
            };
            let new_long = (f64::from(n) * f64::from(long) / f64::from(short.max(1))) as u32;
            if width <= height {
                (n, new_long)
            } else {
                (new_long, n)
            }
        }
    }
}

/// transformers' `center_crop`: the centre, padded with black where the picture is smaller.
fn centre_crop_or_pad(rgb: &[u8], (w, h): (u32, u32), (cw, ch): (u32, u32)) -> Vec<u8> {
    let top = (i64::from(h) - i64::from(ch)).div_euclid(2);
    let left = (i64::from(w) - i64::from(cw)).div_euclid(2);
    let mut out = vec![0u8; (cw * ch * 3) as usize];
    for y in 0..i64::from(ch) {
        let sy = y + top;
        if !(0..i64::from(h)).contains(&sy) {
            continue;
        }
        for x in 0..i64::from(cw) {
            let sx = x + left;
            if !(0..i64::from(w)).contains(&sx) {
                continue;
            }
            let from = ((sy * i64::from(w) + sx) * 3) as usize;
            let to = ((y * i64::from(cw) + x) * 3) as usize;
            out[to..to + 3].copy_from_slice(&rgb[from..from + 3]);
        }
    }
    out
}

/// The values carrying the concept and special-care scores in a diffusers safety checker graph: the result of
/// subtracting `concept_embeds_weights` (plus the special-care adjustment added to it), and of subtracting
/// `special_care_embeds_weights`.
fn score_values(model: &OnnxModel) -> Option<(String, String)> {
    let after_subtracting = |weights: &str| -> Option<String> {
        let sub = model
            .nodes
            .iter()
            .find(|n| n.op_type == "Sub" && n.inputs.get(1).is_some_and(|i| i == weights))?;
        let value = sub.outputs.first()?.clone();
        let adjusted = model
            .nodes
            .iter()
            .find(|n| n.op_type == "Add" && n.inputs.first() == Some(&value))
            .and_then(|n| n.outputs.first().cloned());
        Some(adjusted.unwrap_or(value))
    };
    Some((
        after_subtracting("concept_embeds_weights")?,
        after_subtracting("special_care_embeds_weights")?,
    ))
}

/// Whether `folder`'s pictures are checked under `config`; an error when the model must be checked and has no
/// checker. A model that could be checked but has no checker is painted with a warning.
pub fn wanted(
    config: &super::EngineConfig,
    folder: &super::ModelFolder,
) -> Result<bool, EngineError> {
    let name = folder
        .root
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    match (config.safety.mode(&name), folder.has_safety_checker) {
        (SafetyMode::Off, _) => Ok(false),
        (_, true) => Ok(true),
        (SafetyMode::Required, false) => Err(model_error(
            &folder.root,
            "its pictures must be checked ([safety] says required) but it has no safety_checker/",
        )),
        (SafetyMode::On, false) => {
            tracing::warn!(model = %name, "the model has no safety_checker/; its pictures are delivered unchecked");
            Ok(false)
        }
    }
}

/// Opens `safety_checker/model.onnx` of `root`, with the score values added as outputs when the graph has them.
pub fn open_session(
    env: &Environment,
    root: &Path,
    device: Device,
) -> Result<Session, EngineError> {
    let path = root.join("safety_checker/model.onnx");
    let model = OnnxModel::open(&path).map_err(|e| model_error(&path, e))?;
    match score_values(&model) {
        Some((concept, special)) => {
            let edit = GraphEdit {
                outputs: vec![concept, special],
                ..GraphEdit::default()
            };
            runtime::open_edited_session(env, &path, device, &model, &edit, None)
        }
        None => {
            tracing::warn!(path = %path.display(), "the safety checker's graph does not show its concept scores; only its flags are read");
            runtime::open_session(env, &path, device)
        }
    }
}

/// A loaded checker: its session (shared between the pipelines of one model) and preprocessing.
pub struct SafetyChecker {
    session: SharedSession,
    preprocess: ClipPreprocess,
    clip_dtype: TensorElementType,
    images_dtype: TensorElementType,
    scores: Option<(String, String)>,
}

impl std::fmt::Debug for SafetyChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetyChecker")
            .field("preprocess", &self.preprocess)
            .finish_non_exhaustive()
    }
}

impl SafetyChecker {
    /// Opens the checker of the model folder `root` on the CPU, loading ONNX Runtime as `config` says.
    pub fn open(config: &super::EngineConfig, root: &Path) -> Result<Self, EngineError> {
        let env = runtime::environment(config, Device::Cpu)?;
        let session = open_session(&env, root, Device::Cpu)?;
        Self::new(std::sync::Arc::new(std::sync::Mutex::new(session)), root)
    }

    /// The preprocessing.
    pub fn preprocess(&self) -> &ClipPreprocess {
        &self.preprocess
    }

    /// A checker over `session` (opened by [`open_session`]) for the model in `root`.
    pub fn new(session: SharedSession, root: &Path) -> Result<Self, EngineError> {
        let path = root.join("safety_checker/model.onnx");
        let preprocess =
            ClipPreprocess::from_file(&root.join("feature_extractor/preprocessor_config.json"))?;
        let guard = lock(&session)?;
        let input_type = |name: &str| {
            guard
                .inputs()
                .iter()
                .find(|i| i.name() == name)
                .and_then(|i| i.dtype().tensor_type())
                .ok_or_else(|| model_error(&path, format!("has no tensor input {name:?}")))
        };
        let clip_dtype = input_type("clip_input")?;
        let images_dtype = input_type("images")?;
        if !guard
            .outputs()
            .iter()
            .any(|o| o.name() == "has_nsfw_concepts")
        {
            return Err(model_error(&path, "has no output has_nsfw_concepts"));
        }
        let extra: Vec<String> = guard
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .filter(|n| n != "out_images" && n != "has_nsfw_concepts")
            .collect();
        let scores = match extra.as_slice() {
            [concept, special] => Some((concept.clone(), special.clone())),
            _ => None,
        };
        drop(guard);
        Ok(Self {
            session,
            preprocess,
            clip_dtype,
            images_dtype,
            scores,
        })
    }

    /// Checks pictures (all of one size) in one call.
    pub fn check(&self, pictures: &[Picture]) -> Result<Vec<Verdict>, EngineError> {
        let Some(first) = pictures.first() else {
            return Ok(Vec::new());
        };
        let n = pictures.len();
        let (cw, ch) = self.preprocess.output_size(first.width, first.height);
        let mut clip = Vec::with_capacity(n * 3 * (cw * ch) as usize);
        let mut images = Vec::with_capacity(n * first.rgb.len());
        for picture in pictures {
            if (picture.width, picture.height) != (first.width, first.height) {
                return Err(EngineError::Invalid(
                    "pictures checked together must share a size".into(),
                ));
            }
            clip.extend(self.preprocess.apply(picture));
            images.extend_from_slice(&picture.rgb);
        }
        let float =
            |dtype: TensorElementType, shape: Vec<i64>, data: &[f32]| -> Result<_, EngineError> {
                Ok(match dtype {
                    TensorElementType::Float16 => {
                        let half: Vec<half::f16> =
                            data.iter().map(|&v| half::f16::from_f32(v)).collect();
                        Tensor::from_array((shape, half))?.into_dyn()
                    }
                    _ => Tensor::from_array((shape, data.to_vec()))?.into_dyn(),
                })
            };
        let inputs = vec![
            (
                "clip_input",
                float(
                    self.clip_dtype,
                    vec![n as i64, 3, i64::from(ch), i64::from(cw)],
                    &clip,
                )?,
            ),
            (
                "images",
                float(
                    self.images_dtype,
                    vec![n as i64, i64::from(first.height), i64::from(first.width), 3],
                    &images,
                )?,
            ),
        ];
        let mut session = lock(&self.session)?;
        let outputs = session.run(inputs)?;
        let flags = outputs
            .get("has_nsfw_concepts")
            .ok_or_else(|| EngineError::Inference("the safety checker returned no flags".into()))?;
        let (_, flags) = flags.try_extract_tensor::<bool>()?;
        if flags.len() != n {
            return Err(EngineError::Inference(format!(
                "the safety checker returned {} flags for {n} pictures",
                flags.len()
            )));
        }
        let rows = |name: &str| -> Result<Vec<Vec<f32>>, EngineError> {
            let value = outputs.get(name).ok_or_else(|| {
                EngineError::Inference(format!("the safety checker returned no {name}"))
            })?;
            let (_, values) = float_values(value)?;
            let width = values.len() / n;
            Ok(values.chunks(width.max(1)).map(<[f32]>::to_vec).collect())
        };
        let (concepts, specials) = match &self.scores {
            Some((concept, special)) => (rows(concept)?, rows(special)?),
            None => (vec![Vec::new(); n], vec![Vec::new(); n]),
        };
        Ok(flags
            .iter()
            .zip(concepts)
            .zip(specials)
            .map(|((&flagged, concept_scores), special_scores)| Verdict {
                flagged,
                concept_scores,
                special_scores,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preprocess(config: Value) -> Result<ClipPreprocess, String> {
        ClipPreprocess::from_json(&config)
    }

    #[test]
    fn sizes_follow_transformers() {
        assert_eq!(resized((512, 512), Size::ShortestEdge(224)), (224, 224));
        assert_eq!(resized((640, 480), Size::ShortestEdge(224)), (298, 224));
        assert_eq!(resized((480, 640), Size::ShortestEdge(224)), (224, 298));
        assert_eq!(
            resized(
                (64, 64),
                Size::Exact {
                    height: 30,
                    width: 20
                }
            ),
            (20, 30)
        );
    }

    #[test]
    fn crops_pad_small_pictures_with_black() {
        let rgb: Vec<u8> = (0..2 * 2 * 3).map(|v| v as u8 + 1).collect();
        let out = centre_crop_or_pad(&rgb, (2, 2), (4, 4));
        assert_eq!(out.len(), 4 * 4 * 3);
        assert_eq!(&out[(4 + 1) * 3..(4 + 1) * 3 + 3], &[1, 2, 3]);
        assert_eq!(&out[..3], &[0, 0, 0]);
        let big: Vec<u8> = (0..5 * 5 * 3).map(|v| v as u8).collect();
        assert_eq!(
            &centre_crop_or_pad(&big, (5, 5), (1, 1)),
            &big[(2 * 5 + 2) * 3..(2 * 5 + 2) * 3 + 3]
        );
    }

    #[test]
    fn configs_are_read_old_and_new_and_refused_when_odd() {
        let new = preprocess(serde_json::json!({
            "size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "resample": 3
        }))
        .expect("new style");
        let old =
            preprocess(serde_json::json!({"size": 224, "crop_size": 224})).expect("old style");
        assert_eq!(new, old);
        assert_eq!(new.output_size(512, 768), (224, 224));
        assert!(preprocess(serde_json::json!({"size": "big", "crop_size": 224})).is_err());
        assert!(
            preprocess(serde_json::json!({"size": 224, "crop_size": 224, "resample": 0})).is_err()
        );
        assert!(
            preprocess(serde_json::json!({"size": 224, "crop_size": 224, "image_std": [0, 1, 1]}))
                .is_err()
        );
        assert!(preprocess(serde_json::json!({"size": 99999, "crop_size": 224})).is_err());
        let none = preprocess(serde_json::json!({"do_resize": false, "do_center_crop": false}))
            .expect("none");
        assert_eq!(none.output_size(10, 20), (10, 20));
    }

    #[test]
    fn modes_fall_back_to_the_default() {
        let config = SafetyConfig {
            default: SafetyMode::Required,
            models: HashMap::from([("anime".to_string(), SafetyMode::Off)]),
            keep_flagged: false,
        };
        assert_eq!(config.mode("anime"), SafetyMode::Off);
        assert_eq!(config.mode("tiny-sd"), SafetyMode::Required);
    }
}
