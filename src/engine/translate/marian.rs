//! A Marian encoder–decoder (the public zh→en ONNX exports' layout) on ONNX Runtime: `encoder_model.onnx`, then
//! `decoder_model.onnx` for the first step and `decoder_with_past_model.onnx` after it, or one
//! `decoder_model_merged.onnx` switched by `use_cache_branch`; greedy decoding with the key/value cache, several
//! sources at once (right-padded, rows decoded in lockstep).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType};
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::generation::{GenerationConfig, argmax};
use crate::engine::EngineError;
use crate::engine::pipeline::float_values;
use crate::engine::runtime::{self, Device};

/// Most source tokens when the config gives no `max_position_embeddings`.
const DEFAULT_MAX_SOURCE: usize = 512;
/// The prefix of the cache an exported decoder takes…
const PAST: &str = "past_key_values.";
/// …and of the cache it returns.
const PRESENT: &str = "present.";

enum Decoder {
    /// `decoder_model.onnx` (first step) and `decoder_with_past_model.onnx` (the rest).
    Split { first: Session, with_past: Session },
    /// `decoder_model_merged.onnx`.
    Merged(Session),
}

/// One loaded translation model.
pub struct Marian {
    dir: PathBuf,
    encoder: Session,
    decoder: Decoder,
    tokenizer: Tokenizer,
    /// How it decodes (`generation_config.json`).
    pub generation: GenerationConfig,
    heads: usize,
    head_dim: usize,
}

impl std::fmt::Debug for Marian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marian")
            .field("dir", &self.dir)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn model_error(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Model {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Token ids as the tensor type an input declares.
fn id_tensor(
    session: &Session,
    input: &str,
    shape: [usize; 2],
    ids: &[i64],
) -> Result<DynValue, EngineError> {
    let shape = vec![shape[0] as i64, shape[1] as i64];
    let int32 = session
        .inputs()
        .iter()
        .find(|i| i.name() == input)
        .and_then(|i| i.dtype().tensor_type())
        == Some(TensorElementType::Int32);
    Ok(if int32 {
        Tensor::from_array((shape, ids.iter().map(|&v| v as i32).collect::<Vec<_>>()))?.into_dyn()
    } else {
        Tensor::from_array((shape, ids.to_vec()))?.into_dyn()
    })
}

fn has_input(session: &Session, name: &str) -> bool {
    session.inputs().iter().any(|i| i.name() == name)
}

fn past_inputs(session: &Session) -> Vec<(String, TensorElementType)> {
    session
        .inputs()
        .iter()
        .filter(|i| i.name().starts_with(PAST))
        .map(|i| {
            let dtype = i
                .dtype()
                .tensor_type()
                .unwrap_or(TensorElementType::Float32);
            (i.name().to_string(), dtype)
        })
        .collect()
}

impl Marian {
    /// Opens the model in `dir` on the CPU (the decoder's one-token steps are faster there than on a GPU).
    pub fn open(env: &Environment, dir: &Path) -> Result<Self, EngineError> {
        let open = |file: &str| runtime::open_session(env, &dir.join(file), Device::Cpu);
        let encoder = open("encoder_model.onnx")?;
        let decoder = if dir.join("decoder_model.onnx").is_file()
            && dir.join("decoder_with_past_model.onnx").is_file()
        {
            Decoder::Split {
                first: open("decoder_model.onnx")?,
                with_past: open("decoder_with_past_model.onnx")?,
            }
        } else if dir.join("decoder_model_merged.onnx").is_file() {
            Decoder::Merged(open("decoder_model_merged.onnx")?)
        } else {
            return Err(model_error(
                dir,
                "needs decoder_model.onnx + decoder_with_past_model.onnx, or decoder_model_merged.onnx",
            ));
        };
        let config_path = dir.join("config.json");
        let config: Value = std::fs::read_to_string(&config_path)
            .map_err(|e| model_error(&config_path, format!("cannot read: {e}")))
            .and_then(|t| serde_json::from_str(&t).map_err(|e| model_error(&config_path, e)))?;
        let number = |key: &str| config.get(key).and_then(Value::as_u64).map(|v| v as usize);
        let d_model = number("d_model").ok_or_else(|| model_error(&config_path, "no d_model"))?;
        let heads = number("decoder_attention_heads")
            .filter(|h| *h > 0 && d_model % h == 0)
            .ok_or_else(|| {
                model_error(&config_path, "decoder_attention_heads must divide d_model")
            })?;
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| model_error(&tokenizer_path, e))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: number("max_position_embeddings").unwrap_or(DEFAULT_MAX_SOURCE),
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| model_error(&tokenizer_path, e))?;
        tokenizer.with_padding(None);
        let marian = Self {
            generation: GenerationConfig::from_dir(dir)?,
            dir: dir.to_path_buf(),
            encoder,
            decoder,
            tokenizer,
            heads,
            head_dim: d_model / heads,
        };
        marian.check_inputs()?;
        Ok(marian)
    }

    fn check_inputs(&self) -> Result<(), EngineError> {
        let need = |session: &Session, file: &str, names: &[&str]| {
            for name in names {
                if !has_input(session, name) {
                    return Err(model_error(
                        &self.dir.join(file),
                        format!("has no input {name:?}"),
                    ));
                }
            }
            Ok(())
        };
        need(&self.encoder, "encoder_model.onnx", &["input_ids"])?;
        match &self.decoder {
            Decoder::Split { first, with_past } => {
                need(
                    first,
                    "decoder_model.onnx",
                    &["input_ids", "encoder_hidden_states"],
                )?;
                need(with_past, "decoder_with_past_model.onnx", &["input_ids"])?;
                if past_inputs(with_past).is_empty() {
                    return Err(model_error(
                        &self.dir.join("decoder_with_past_model.onnx"),
                        "takes no past_key_values",
                    ));
                }
            }
            Decoder::Merged(merged) => need(
                merged,
                "decoder_model_merged.onnx",
                &["input_ids", "encoder_hidden_states", "use_cache_branch"],
            )?,
        }
        Ok(())
    }

    /// The source token ids of `text` (the tokenizer's end token appended; truncated to the model's positions).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, EngineError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Invalid(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// The text of generated ids, special tokens skipped.
    pub fn decode(&self, ids: &[i64]) -> Result<String, EngineError> {
        let ids: Vec<u32> = ids
            .iter()
            .filter_map(|&id| u32::try_from(id).ok())
            .collect();
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| EngineError::Inference(format!("cannot detokenize: {e}")))
    }

    /// Greedy decoding of several sources at once, as `generation` says (the model's own is [`Marian::generation`]);
    /// each result starts with the decoder start token and ends with its first end token (the forced one when
    /// `max_length` is reached).
    pub fn generate(
        &mut self,
        sources: &[Vec<i64>],
        generation: &GenerationConfig,
    ) -> Result<Vec<Vec<i64>>, EngineError> {
        let rows = sources.len();
        let width = sources.iter().map(Vec::len).max().unwrap_or(0);
        if rows == 0 {
            return Ok(Vec::new());
        }
        if width == 0 {
            return Err(EngineError::Invalid("an empty source to translate".into()));
        }
        let pad = generation.pad_token_id;
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for source in sources {
            ids.extend(
                source
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, width - source.len())),
            );
            mask.extend((0..width).map(|i| i64::from(i < source.len())));
        }
        let hidden = self.run_encoder(&ids, &mask, [rows, width])?;

        let mut sequences: Vec<Vec<i64>> = vec![vec![generation.decoder_start_token_id]; rows];
        let mut finished = vec![false; rows];
        let mut past: Vec<(String, DynValue)> = Vec::new();
        while sequences[0].len() < generation.max_length {
            let last: Vec<i64> = sequences.iter().map(|s| s[s.len() - 1]).collect();
            let (logits, vocab) = self.step(&last, &hidden, &mask, [rows, width], &mut past)?;
            for (row, sequence) in sequences.iter_mut().enumerate() {
                let next = if finished[row] {
                    pad
                } else {
                    let mut scores = logits[row * vocab..(row + 1) * vocab].to_vec();
                    generation.process(sequence, &mut scores);
                    argmax(&scores)
                };
                finished[row] |= generation.is_eos(next);
                sequence.push(next);
            }
            if finished.iter().all(|f| *f) {
                break;
            }
        }
        // Rows that ended early were filled with padding while the others went on.
        for sequence in &mut sequences {
            if let Some(end) = sequence.iter().skip(1).position(|&t| generation.is_eos(t)) {
                sequence.truncate(end + 2);
            }
        }
        Ok(sequences)
    }

    fn run_encoder(
        &mut self,
        ids: &[i64],
        mask: &[i64],
        shape: [usize; 2],
    ) -> Result<DynValue, EngineError> {
        let mut inputs: Vec<(Cow<'static, str>, DynValue)> = vec![(
            "input_ids".into(),
            id_tensor(&self.encoder, "input_ids", shape, ids)?,
        )];
        if has_input(&self.encoder, "attention_mask") {
            inputs.push((
                "attention_mask".into(),
                id_tensor(&self.encoder, "attention_mask", shape, mask)?,
            ));
        }
        let name = self
            .encoder
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .unwrap_or_default();
        let mut outputs = self.encoder.run(inputs)?;
        outputs
            .remove("last_hidden_state")
            .or_else(|| outputs.remove(&name))
            .ok_or_else(|| EngineError::Inference("the encoder returned nothing".into()))
    }

    /// One decoder step for every row: the logits of the next token (`[rows × vocab]`) and the vocabulary size;
    /// `past` is the cache, replaced by the one the step returns.
    fn step(
        &mut self,
        last: &[i64],
        hidden: &DynValue,
        mask: &[i64],
        [rows, width]: [usize; 2],
        past: &mut Vec<(String, DynValue)>,
    ) -> Result<(Vec<f32>, usize), EngineError> {
        let first_step = past.is_empty();
        let (session, merged) = match &mut self.decoder {
            Decoder::Split { first, .. } if first_step => (first, false),
            Decoder::Split { with_past, .. } => (with_past, false),
            Decoder::Merged(session) => (session, true),
        };
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'_>)> = vec![(
            "input_ids".into(),
            id_tensor(session, "input_ids", [rows, 1], last)?.into(),
        )];
        if has_input(session, "encoder_attention_mask") {
            inputs.push((
                "encoder_attention_mask".into(),
                id_tensor(session, "encoder_attention_mask", [rows, width], mask)?.into(),
            ));
        }
        if has_input(session, "encoder_hidden_states") {
            inputs.push(("encoder_hidden_states".into(), hidden.view().into()));
        }
        if merged {
            inputs.push((
                "use_cache_branch".into(),
                Tensor::from_array((vec![1i64], vec![!first_step]))?.into(),
            ));
            if first_step {
                for (name, dtype) in past_inputs(session) {
                    let shape = vec![rows as i64, self.heads as i64, 0, self.head_dim as i64];
                    let empty = match dtype {
                        TensorElementType::Float16 => {
                            Tensor::from_array((shape, Vec::<half::f16>::new()))?.into_dyn()
                        }
                        _ => Tensor::from_array((shape, Vec::<f32>::new()))?.into_dyn(),
                    };
                    inputs.push((name.into(), empty.into()));
                }
            }
        }
        if !first_step {
            for (name, value) in past.iter() {
                if has_input(session, name) {
                    inputs.push((name.clone().into(), value.view().into()));
                }
            }
        }
        let names: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .filter(|n| n.starts_with(PRESENT))
            .collect();
        let mut outputs = session.run(inputs)?;
        let logits = outputs
            .remove("logits")
            .ok_or_else(|| EngineError::Inference("the decoder returned no logits".into()))?;
        let (shape, values) = float_values(&logits)?;
        let [r, t, vocab] = shape[..] else {
            return Err(EngineError::Inference(format!(
                "the decoder returned logits of shape {shape:?}"
            )));
        };
        let (r, t, vocab) = (r as usize, t as usize, vocab as usize);
        if r != rows || t == 0 || vocab == 0 {
            return Err(EngineError::Inference(format!(
                "the decoder returned logits of shape {shape:?} for {rows} rows"
            )));
        }
        let last_position: Vec<f32> = (0..rows)
            .flat_map(|row| {
                let start = (row * t + t - 1) * vocab;
                values[start..start + vocab].iter().copied()
            })
            .collect();
        for name in names {
            // The cross-attention cache is computed once; later steps return placeholders for it.
            if !first_step && name.contains(".encoder.") {
                continue;
            }
            if let Some(value) = outputs.remove(&name) {
                let key = format!("{PAST}{}", &name[PRESENT.len()..]);
                match past.iter_mut().find(|(k, _)| *k == key) {
                    Some(slot) => slot.1 = value,
                    None => past.push((key, value)),
                }
            }
        }
        if past.is_empty() {
            return Err(EngineError::Inference(
                "the decoder returned no present.* cache".into(),
            ));
        }
        Ok((last_position, vocab))
    }
}
