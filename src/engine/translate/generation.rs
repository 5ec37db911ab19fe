//! Greedy decoding as transformers' `generate(num_beams=1, do_sample=False)` does it: the `generation_config.json`
//! options a Marian export carries, applied to each step's logits in transformers' order, then the first maximum.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::engine::EngineError;

/// transformers' default `max_length` when a config gives none.
const DEFAULT_MAX_LENGTH: usize = 20;

/// The decoding options of a model folder (`generation_config.json`, falling back to `config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// The first decoder token.
    pub decoder_start_token_id: i64,
    /// Tokens that end a sequence.
    pub eos_token_ids: Vec<i64>,
    /// The token finished rows are filled with (and the encoder's padding).
    pub pad_token_id: i64,
    /// Token sequences never produced (Marian bans its padding token).
    pub bad_words_ids: Vec<Vec<i64>>,
    /// Forced as the last token when the length limit is reached.
    pub forced_eos_token_ids: Vec<i64>,
    /// Most decoder tokens, the start token included.
    pub max_length: usize,
    /// Fewest decoder tokens (the start token included) before an end-of-sequence token is allowed.
    pub min_length: usize,
    /// Fewest new tokens before an end-of-sequence token is allowed.
    pub min_new_tokens: usize,
    /// Penalty for tokens already in the sequence (1 = none).
    pub repetition_penalty: f32,
    /// No n-gram of this size appears twice (0 = off).
    pub no_repeat_ngram_size: usize,
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    decoder_start_token_id: Option<i64>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<i64>,
    bad_words_ids: Option<Vec<Vec<i64>>>,
    forced_eos_token_id: Option<Value>,
    max_length: Option<usize>,
    max_new_tokens: Option<usize>,
    min_length: Option<usize>,
    min_new_tokens: Option<usize>,
    repetition_penalty: Option<f32>,
    no_repeat_ngram_size: Option<usize>,
    num_beams: Option<usize>,
    do_sample: Option<bool>,
}

/// An id or a list of ids.
fn ids(value: &Option<Value>) -> Vec<i64> {
    match value {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

fn read(path: &Path) -> Result<Option<RawConfig>, EngineError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(EngineError::Model {
                path: path.to_path_buf(),
                reason: format!("cannot read: {e}"),
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::Model {
            path: path.to_path_buf(),
            reason: format!("not a generation config: {e}"),
        })
}

impl GenerationConfig {
    /// Reads `generation_config.json` over `config.json` in `dir`. Beam search and sampling settings are noted and
    /// ignored: huabi decodes greedily.
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        let model = read(&dir.join("config.json"))?.unwrap_or_default();
        let generation = read(&dir.join("generation_config.json"))?.unwrap_or_default();
        let missing = |what: &str| EngineError::Model {
            path: dir.to_path_buf(),
            reason: format!("neither generation_config.json nor config.json gives {what}"),
        };
        let pick = |a: Option<i64>, b: Option<i64>| a.or(b);
        let pad_token_id = pick(generation.pad_token_id, model.pad_token_id)
            .ok_or_else(|| missing("pad_token_id"))?;
        let mut eos_token_ids = ids(&generation.eos_token_id);
        if eos_token_ids.is_empty() {
            eos_token_ids = ids(&model.eos_token_id);
        }
        if eos_token_ids.is_empty() {
            return Err(missing("eos_token_id"));
        }
        let mut forced_eos_token_ids = ids(&generation.forced_eos_token_id);
        if forced_eos_token_ids.is_empty() {
            forced_eos_token_ids = ids(&model.forced_eos_token_id);
        }
        if generation.num_beams.or(model.num_beams).unwrap_or(1) > 1
            || generation.do_sample.unwrap_or(false)
        {
            tracing::info!(dir = %dir.display(), "the model's generation config asks for beam search or sampling; huabi decodes greedily");
        }
        let max_length = match generation.max_new_tokens.or(model.max_new_tokens) {
            Some(new) => new + 1,
            None => generation
                .max_length
                .or(model.max_length)
                .unwrap_or(DEFAULT_MAX_LENGTH),
        };
        Ok(Self {
            decoder_start_token_id: pick(
                generation.decoder_start_token_id,
                model.decoder_start_token_id,
            )
            .unwrap_or(pad_token_id),
            eos_token_ids,
            pad_token_id,
            bad_words_ids: generation
                .bad_words_ids
                .or(model.bad_words_ids)
                .unwrap_or_default()
                .into_iter()
                .filter(|w| !w.is_empty())
                .collect(),
            forced_eos_token_ids,
            max_length: max_length.max(2),
            min_length: generation.min_length.or(model.min_length).unwrap_or(0),
            min_new_tokens: generation
                .min_new_tokens
                .or(model.min_new_tokens)
                .unwrap_or(0),
            repetition_penalty: generation
                .repetition_penalty
                .or(model.repetition_penalty)
                .filter(|p| p.is_finite() && *p > 0.0)
                .unwrap_or(1.0),
            no_repeat_ngram_size: generation
                .no_repeat_ngram_size
                .or(model.no_repeat_ngram_size)
                .unwrap_or(0),
        })
    }

    /// Whether `token` ends a sequence.
    pub fn is_eos(&self, token: i64) -> bool {
        self.eos_token_ids.contains(&token)
    }

    /// Applies the processors to one row's `logits`, given the decoder tokens so far (`sequence`, start token
    /// included), in transformers' order: repetition penalty, no-repeat n-grams, bad words, minimum lengths,
    /// forced end.
    pub fn process(&self, sequence: &[i64], logits: &mut [f32]) {
        let vocab = logits.len();
        let slot = |token: i64| usize::try_from(token).ok().filter(|&t| t < vocab);
        let cur_len = sequence.len();
        if self.repetition_penalty != 1.0 {
            let seen: HashSet<i64> = sequence.iter().copied().collect();
            for token in seen.into_iter().filter_map(slot) {
                let v = logits[token];
                logits[token] = if v < 0.0 {
                    v * self.repetition_penalty
                } else {
                    v / self.repetition_penalty
                };
            }
        }
        let n = self.no_repeat_ngram_size;
        if n > 0 && cur_len + 1 >= n {
            let prefix = &sequence[cur_len + 1 - n..];
            for window in sequence.windows(n) {
                if window[..n - 1] == *prefix
                    && let Some(t) = slot(window[n - 1])
                {
                    logits[t] = f32::NEG_INFINITY;
                }
            }
        }
        for word in &self.bad_words_ids {
            let (last, prefix) = word.split_last().expect("bad words are non-empty");
            if sequence.ends_with(prefix)
                && let Some(t) = slot(*last)
            {
                logits[t] = f32::NEG_INFINITY;
            }
        }
        if cur_len < self.min_length || cur_len.saturating_sub(1) < self.min_new_tokens {
            for t in self.eos_token_ids.iter().copied().filter_map(slot) {
                logits[t] = f32::NEG_INFINITY;
            }
        }
        if cur_len + 1 == self.max_length && !self.forced_eos_token_ids.is_empty() {
            logits.fill(f32::NEG_INFINITY);
            for t in self.forced_eos_token_ids.iter().copied().filter_map(slot) {
                logits[t] = 0.0;
            }
        }
    }
}

/// The index of the first maximum, as `torch.argmax` picks it.
pub fn argmax(logits: &[f32]) -> i64 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || (logits[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GenerationConfig {
        GenerationConfig {
            decoder_start_token_id: 9,
            eos_token_ids: vec![0],
            pad_token_id: 9,
            bad_words_ids: vec![vec![9], vec![3, 4]],
            forced_eos_token_ids: vec![0],
            max_length: 6,
            min_length: 0,
            min_new_tokens: 0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
        }
    }

    #[test]
    fn bad_words_ban_single_tokens_always_and_sequences_after_their_prefix() {
        let c = config();
        let mut logits = vec![1.0; 10];
        c.process(&[9, 1], &mut logits);
        assert_eq!(logits[9], f32::NEG_INFINITY);
        assert_eq!(logits[4], 1.0);
        let mut logits = vec![1.0; 10];
        c.process(&[9, 3], &mut logits);
        assert_eq!(logits[4], f32::NEG_INFINITY);
    }

    #[test]
    fn the_last_token_is_forced_to_end() {
        let c = config();
        let mut logits = vec![1.0; 10];
        c.process(&[9, 1, 2, 3, 5], &mut logits);
        assert_eq!(argmax(&logits), 0);
        assert!(logits[1..].iter().all(|v| *v == f32::NEG_INFINITY));
        let mut logits = vec![1.0; 10];
        c.process(&[9, 1, 2, 3], &mut logits);
        assert_eq!(logits[1], 1.0);
    }

    #[test]
    fn minimum_lengths_hold_the_end_back() {
        let c = GenerationConfig {
            min_new_tokens: 2,
            ..config()
        };
        let mut logits = vec![0.0; 10];
        logits[0] = 5.0;
        c.process(&[9, 1], &mut logits);
        assert_eq!(logits[0], f32::NEG_INFINITY);
        let mut logits = vec![0.0; 10];
        c.process(&[9, 1, 2], &mut logits);
        assert_eq!(logits[0], 0.0);
    }

    #[test]
    fn repeated_ngrams_and_repetitions_are_penalised() {
        let c = GenerationConfig {
            no_repeat_ngram_size: 2,
            repetition_penalty: 2.0,
            ..config()
        };
        let mut logits = vec![1.0; 10];
        logits[2] = -1.0;
        c.process(&[9, 1, 2, 1], &mut logits);
        // (1, 2) was seen: after 1, 2 is banned; 1 is penalised.
        assert_eq!(logits[2], f32::NEG_INFINITY);
        assert_eq!(logits[1], 0.5);
        assert_eq!(logits[5], 1.0);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn configs_are_read_with_fallbacks_and_refused_when_incomplete() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"pad_token_id": 7, "eos_token_id": 0, "max_length": 512, "num_beams": 4}"#,
        )
        .expect("write");
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"bad_words_ids": [[7]], "forced_eos_token_id": 0, "max_new_tokens": 30}"#,
        )
        .expect("write");
        let c = GenerationConfig::from_dir(dir.path()).expect("config");
        assert_eq!(c.decoder_start_token_id, 7);
        assert_eq!(c.max_length, 31);
        assert_eq!(c.bad_words_ids, vec![vec![7]]);
        std::fs::write(dir.path().join("config.json"), r#"{"eos_token_id": 0}"#).expect("write");
        assert!(GenerationConfig::from_dir(dir.path()).is_err());
        std::fs::write(dir.path().join("config.json"), "[1, 2").expect("write");
        assert!(GenerationConfig::from_dir(dir.path()).is_err());
    }
}
