//! Text conditioning: prompts → per-token embeddings the UNet attends to (and, for SDXL, the pooled embedding).
//! SD runs one CLIP text encoder; SDXL runs two, joins their penultimate layers along the feature axis and takes the
//! pooled embedding from the second, as diffusers' pipelines do. Negative prompts repeat (campaign templates, the
//! empty one), so their rows are cached.

use std::collections::HashMap;

use ort::value::{DynValue, Tensor, TensorElementType};

use super::EngineError;
use super::model::{Port, TextEncoderIo};
use super::pipeline::{SharedSession, float_values, lock};
use super::tokenizer::PromptTokenizer;

/// Distinct negative prompts whose embeddings are kept.
const NEGATIVE_CACHE: usize = 64;

/// The embeddings of one text.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    tokens: Vec<f32>,
    pooled: Vec<f32>,
}

/// The conditioning of a batch: rows `[negatives…, prompts…]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditioning {
    /// `[rows, L, D]` (L = the tokenizer's context, 77 for CLIP), flattened.
    pub tokens: (Vec<i64>, Vec<f32>),
    /// `[rows, P]`, flattened (SDXL only; empty otherwise).
    pub pooled: (Vec<i64>, Vec<f32>),
}

/// One text encoder with its tokenizer.
pub struct Encoder {
    /// The tokenizer.
    pub tokenizer: PromptTokenizer,
    /// The session.
    pub session: SharedSession,
    /// Its inputs and outputs.
    pub io: TextEncoderIo,
}

/// Turns prompts into conditioning, caching negative prompts.
pub struct TextConditioner {
    encoders: Vec<Encoder>,
    zero_empty_negative: bool,
    cache: HashMap<String, Row>,
    tokens: usize,
}

impl TextConditioner {
    /// Conditioning from these encoders (one for SD, two for SDXL); with `zero_empty_negative`, an empty negative
    /// prompt is all zeros (SDXL's `force_zeros_for_empty_prompt`).
    pub fn new(encoders: Vec<Encoder>, zero_empty_negative: bool) -> Result<Self, EngineError> {
        let tokens = encoders.first().map_or(0, |e| e.tokenizer.max_len());
        if encoders.iter().any(|e| e.tokenizer.max_len() != tokens) {
            return Err(EngineError::Invalid(
                "the text encoders' tokenizers have different context lengths".into(),
            ));
        }
        Ok(Self {
            encoders,
            zero_empty_negative,
            cache: HashMap::new(),
            tokens,
        })
    }

    /// The rows of `texts`: each encoder runs once over all of them.
    fn encode(&self, texts: &[&str]) -> Result<Vec<Row>, EngineError> {
        let mut rows: Vec<Row> = texts
            .iter()
            .map(|_| Row {
                tokens: Vec::new(),
                pooled: Vec::new(),
            })
            .collect();
        if texts.is_empty() {
            return Ok(rows);
        }
        let mut width = 0;
        let tokens = self.tokens;
        for encoder in &self.encoders {
            let mut ids: Vec<i64> = Vec::with_capacity(texts.len() * tokens);
            let mut mask: Vec<i64> = Vec::with_capacity(texts.len() * tokens);
            for text in texts {
                let (text_ids, text_mask) = encoder.tokenizer.encode_with_mask(text)?;
                ids.extend(text_ids);
                mask.extend(text_mask);
            }
            // diffusers passes the attention mask only to encoders whose config asks for it; the others attend
            // to the padding too (BERT's default mask is all ones).
            if !encoder.io.use_attention_mask {
                mask.iter_mut().for_each(|m| *m = 1);
            }
            let shape = vec![texts.len() as i64, tokens as i64];
            let int_tensor = |port: &Port, values: Vec<i64>| -> Result<DynValue, EngineError> {
                Ok(match port.dtype {
                    TensorElementType::Int32 => Tensor::from_array((
                        shape.clone(),
                        values.iter().map(|&v| v as i32).collect::<Vec<_>>(),
                    ))?
                    .into_dyn(),
                    _ => Tensor::from_array((shape.clone(), values))?.into_dyn(),
                })
            };
            let mut inputs = vec![(
                encoder.io.input_ids.name.as_str(),
                int_tensor(&encoder.io.input_ids, ids)?,
            )];
            if let Some(port) = &encoder.io.attention_mask {
                inputs.push((port.name.as_str(), int_tensor(port, mask)?));
            }
            if let Some(port) = &encoder.io.token_type_ids {
                inputs.push((
                    port.name.as_str(),
                    int_tensor(port, vec![0; texts.len() * tokens])?,
                ));
            }
            let mut session = lock(&encoder.session)?;
            let outputs = session.run(inputs)?;
            let read = |name: &str| {
                outputs
                    .get(name)
                    .ok_or_else(|| {
                        EngineError::Inference(format!("text encoder returned no {name}"))
                    })
                    .and_then(float_values)
            };
            let (shape, hidden) = read(&encoder.io.hidden_states)?;
            let d = *shape.last().unwrap_or(&0) as usize;
            if shape.len() != 3 || hidden.len() != texts.len() * tokens * d {
                return Err(EngineError::Inference(format!(
                    "text encoder returned {} of shape {shape:?} for {} texts",
                    encoder.io.hidden_states,
                    texts.len()
                )));
            }
            // Join the encoders' features token by token: [77, D1] ++ [77, D2] → [77, D1 + D2].
            for (row, chunk) in rows.iter_mut().zip(hidden.chunks_exact(tokens * d)) {
                let mut joined = Vec::with_capacity(tokens * (width + d));
                for t in 0..tokens {
                    joined.extend_from_slice(&row.tokens[t * width..(t + 1) * width]);
                    joined.extend_from_slice(&chunk[t * d..(t + 1) * d]);
                }
                row.tokens = joined;
            }
            width += d;
            if let Some(pooled) = &encoder.io.pooled {
                let (_, values) = read(pooled)?;
                let p = values.len() / texts.len();
                for (row, chunk) in rows.iter_mut().zip(values.chunks_exact(p.max(1))) {
                    row.pooled = chunk.to_vec();
                }
            }
        }
        Ok(rows)
    }

    /// Conditioning rows `[negatives…, prompts…]` in one call per encoder.
    pub fn condition(
        &mut self,
        negatives: &[&str],
        prompts: &[&str],
    ) -> Result<Conditioning, EngineError> {
        let mut missing: Vec<&str> = negatives
            .iter()
            .copied()
            .filter(|n| !self.cache.contains_key(*n))
            .filter(|n| !(self.zero_empty_negative && n.is_empty()))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let texts: Vec<&str> = missing.iter().chain(prompts).copied().collect();
        let encoded = self.encode(&texts)?;
        let (token_len, pooled_len) = encoded
            .first()
            .map(|r| (r.tokens.len(), r.pooled.len()))
            .unwrap_or_default();
        if self.cache.len() + missing.len() > NEGATIVE_CACHE {
            self.cache.clear();
        }
        for (text, row) in missing.iter().zip(&encoded) {
            self.cache.insert(text.to_string(), row.clone());
        }
        let zeros = Row {
            tokens: vec![0.0; token_len],
            pooled: vec![0.0; pooled_len],
        };
        let rows = negatives.len() + prompts.len();
        let mut tokens = Vec::with_capacity(rows * token_len);
        let mut pooled = Vec::with_capacity(rows * pooled_len);
        for negative in negatives {
            let row = if self.zero_empty_negative && negative.is_empty() {
                &zeros
            } else {
                self.cache
                    .get(*negative)
                    .ok_or_else(|| EngineError::Inference("negative prompt cache miss".into()))?
            };
            tokens.extend_from_slice(&row.tokens);
            pooled.extend_from_slice(&row.pooled);
        }
        for row in &encoded[missing.len()..] {
            tokens.extend_from_slice(&row.tokens);
            pooled.extend_from_slice(&row.pooled);
        }
        let d = (token_len / self.tokens.max(1)) as i64;
        Ok(Conditioning {
            tokens: (vec![rows as i64, self.tokens as i64, d], tokens),
            pooled: (vec![rows as i64, pooled_len as i64], pooled),
        })
    }
}
