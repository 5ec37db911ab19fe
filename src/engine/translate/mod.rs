//! Chinese prompts into English for text encoders that read only English: an offline zh→en Marian model on ONNX
//! Runtime. Only the Chinese of a prompt is translated: the prompt is cut into clauses at its separators, and in each
//! clause the stretch from the first Chinese character to the last goes to the model (English around it, such as a
//! template's words or a LoRA's trigger word, stays as written). The stretches of one prompt are decoded together, as
//! one batch, and every stretch's translation is cached.

mod generation;
mod marian;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

pub use generation::GenerationConfig;
pub use marian::Marian;

use super::runtime::{self, Device};
use super::{EngineConfig, EngineError};

/// `[translate]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct TranslateConfig {
    /// The translation model's folder (Marian ONNX layout); empty = translation off.
    #[serde(default)]
    pub model_dir: PathBuf,
    /// Most tokens decoded for one stretch of Chinese (the model's own `max_length` caps it too).
    pub max_tokens: usize,
    /// Stretches whose translations are kept in memory.
    pub cache_entries: usize,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::new(),
            max_tokens: 64,
            cache_entries: 4096,
        }
    }
}

/// A prompt after translation.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// The prompt to paint: the input with each stretch of Chinese replaced by its English.
    pub text: String,
    /// Stretches of Chinese the prompt had.
    pub stretches: usize,
    /// Of those, how many came from the cache.
    pub cached: usize,
    /// Time spent, cache lookups included.
    pub elapsed: Duration,
}

impl Translation {
    /// Whether anything was translated.
    pub fn changed(&self) -> bool {
        self.stretches > 0
    }
}

/// Whether `c` is a Chinese (Han) character.
pub fn is_han(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2A6DF | 0x2A700..=0x2EBEF | 0x30000..=0x3134F)
}

/// Whether `text` has any Chinese character.
pub fn has_chinese(text: &str) -> bool {
    text.chars().any(is_han)
}

/// Characters that end a clause; CJK ones become their ASCII counterparts in a translated prompt.
fn separator(c: char) -> Option<&'static str> {
    Some(match c {
        ',' | '，' | '、' => ", ",
        ';' | '；' => "; ",
        '.' | '。' => ". ",
        '!' | '！' => "! ",
        '?' | '？' => "? ",
        '|' => " | ",
        '\n' => "\n",
        _ => return None,
    })
}

/// A part of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    /// Kept as written.
    Keep(&'a str),
    /// A clause separator.
    Separator(char),
    /// Chinese to translate.
    Chinese(&'a str),
}

/// Cuts `prompt` into what stays and what is translated.
fn pieces(prompt: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = prompt.char_indices().peekable();
    let mut previous = None;
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|(_, n)| *n);
        // "1.2" and "1,000" are numbers, not two clauses.
        let in_number = matches!(c, '.' | ',')
            && previous.is_some_and(|p: char| p.is_ascii_digit())
            && next.is_some_and(|n| n.is_ascii_digit());
        previous = Some(c);
        if separator(c).is_some() && !in_number {
            split_clause(&prompt[start..i], &mut out);
            out.push(Piece::Separator(c));
            start = i + c.len_utf8();
        }
    }
    split_clause(&prompt[start..], &mut out);
    out
}

/// One clause: its Chinese stretch (from the first Chinese character, with the digits just before it, to the last)
/// and the text around it.
fn split_clause<'a>(clause: &'a str, out: &mut Vec<Piece<'a>>) {
    let (Some(first), Some(last)) = (
        clause.find(is_han),
        clause.char_indices().rev().find(|(_, c)| is_han(*c)),
    ) else {
        if !clause.is_empty() {
            out.push(Piece::Keep(clause));
        }
        return;
    };
    let end = last.0 + last.1.len_utf8();
    let start = clause[..first]
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_numeric())
        .last()
        .map_or(first, |(i, _)| i);
    if start > 0 {
        out.push(Piece::Keep(&clause[..start]));
    }
    out.push(Piece::Chinese(&clause[start..end]));
    if end < clause.len() {
        out.push(Piece::Keep(&clause[end..]));
    }
}

/// A translation as a prompt wants it: trimmed, without the sentence's final full stop.
fn tidy(english: &str) -> String {
    english
        .trim()
        .trim_end_matches(['.', '。'])
        .trim()
        .to_string()
}

/// Joins the pieces back, Chinese replaced by `english` (in order); a space goes between a translation and a word
/// touching it, and whitespace runs collapse.
fn assemble(pieces: &[Piece<'_>], english: &[String]) -> String {
    let mut out = String::new();
    let mut translations = english.iter();
    let mut after_translation = false;
    for piece in pieces {
        let translated = matches!(piece, Piece::Chinese(_));
        let text: &str = match piece {
            Piece::Keep(text) => text,
            Piece::Separator(c) => separator(*c).unwrap_or(""),
            Piece::Chinese(_) => translations.next().map(String::as_str).unwrap_or(""),
        };
        let touching = out.chars().last().is_some_and(char::is_alphanumeric)
            && text.chars().next().is_some_and(char::is_alphanumeric);
        if touching && (translated || after_translation) {
            out.push(' ');
        }
        out.push_str(text);
        after_translation = translated;
    }
    out.split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" \n", "\n")
        .replace("\n ", "\n")
        .trim()
        .to_string()
}

/// Translations kept in memory; the least recently used goes first.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<String, (String, u64)>,
    clock: u64,
}

impl Cache {
    fn get(&mut self, key: &str) -> Option<String> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(value, used)| {
            *used = clock;
            value.clone()
        })
    }

    fn put(&mut self, key: String, value: String, capacity: usize) {
        if capacity == 0 {
            return;
        }
        while self.entries.len() >= capacity {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        self.entries.insert(key, (value, self.clock));
    }
}

/// The translator: a model and its cache, safe to share between threads (one translation runs at a time).
pub struct Translator {
    model: Mutex<Marian>,
    cache: Mutex<Cache>,
    config: TranslateConfig,
    fixed_length: Mutex<Option<usize>>,
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Translator {
    /// Opens the model `config` names, loading ONNX Runtime as `engine` says; `None` when translation is off.
    pub fn open(
        engine: &EngineConfig,
        config: &TranslateConfig,
    ) -> Result<Option<Self>, EngineError> {
        if config.model_dir.as_os_str().is_empty() {
            return Ok(None);
        }
        Self::open_dir(engine, &config.model_dir, config.clone()).map(Some)
    }

    /// Opens the model in `dir`.
    pub fn open_dir(
        engine: &EngineConfig,
        dir: &Path,
        config: TranslateConfig,
    ) -> Result<Self, EngineError> {
        let env = runtime::environment(engine, Device::Cpu)?;
        let model = Marian::open(&env, dir)?;
        tracing::info!(dir = %dir.display(), "translation model loaded");
        Ok(Self {
            model: Mutex::new(model),
            cache: Mutex::new(Cache::default()),
            config,
            fixed_length: Mutex::new(None),
        })
    }

    fn model(&self) -> Result<std::sync::MutexGuard<'_, Marian>, EngineError> {
        self.model
            .lock()
            .map_err(|_| EngineError::Runtime("the translation model's lock was poisoned".into()))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic inside a cache operation leaves at worst a missing entry.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every later decoding produce exactly `tokens` tokens and then the end token, whatever the model
    /// prefers (`None` undoes it): benchmarks on random weights, which never stop on their own, need it.
    pub fn fix_length(&self, tokens: Option<usize>) {
        *self.fixed_length.lock().unwrap_or_else(|e| e.into_inner()) = tokens;
    }

    /// How many source tokens `text` is (the end token included).
    pub fn source_tokens(&self, text: &str) -> Result<usize, EngineError> {
        Ok(self.model()?.encode(text)?.len())
    }

    /// Runs the model on `texts` as one batch, without the cache, decoding at most `max_tokens` tokens each (and
    /// no more than the model's `max_length`); the generated ids (start and end tokens included) and their text.
    pub fn translate_batch(
        &self,
        texts: &[&str],
        max_tokens: usize,
    ) -> Result<Vec<(Vec<i64>, String)>, EngineError> {
        let fixed = *self.fixed_length.lock().unwrap_or_else(|e| e.into_inner());
        let mut model = self.model()?;
        let sources = texts
            .iter()
            .map(|t| model.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut generation = model.generation.clone();
        generation.max_length = generation
            .max_length
            .min(max_tokens.saturating_add(1))
            .max(2);
        if let Some(tokens) = fixed {
            generation.min_length = 0;
            generation.min_new_tokens = tokens;
            generation.max_length = tokens + 2;
            if generation.forced_eos_token_ids.is_empty() {
                generation.forced_eos_token_ids = generation.eos_token_ids.clone();
            }
        }
        let generated = model.generate(&sources, &generation)?;
        generated
            .into_iter()
            .map(|ids| {
                let text = model.decode(&ids)?;
                Ok((ids, text))
            })
            .collect()
    }

    /// The stretches of Chinese in `prompt` that [`Translator::translate`] sends to the model.
    pub fn stretches(&self, prompt: &str) -> Vec<String> {
        pieces(prompt)
            .into_iter()
            .filter_map(|p| match p {
                Piece::Chinese(text) => Some(text.to_string()),
                _ => None,
            })
            .collect()
    }

    /// `prompt` with its Chinese in English (unchanged when it has none). A stretch the model turns into nothing
    /// stays in Chinese.
    pub fn translate(&self, prompt: &str) -> Result<Translation, EngineError> {
        let started = Instant::now();
        let pieces = pieces(prompt);
        let stretches: Vec<&str> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Chinese(text) => Some(*text),
                _ => None,
            })
            .collect();
        if stretches.is_empty() {
            return Ok(Translation {
                text: prompt.to_string(),
                stretches: 0,
                cached: 0,
                elapsed: started.elapsed(),
            });
        }
        let mut english: Vec<Option<String>> = {
            let mut cache = self.cache();
            stretches.iter().map(|s| cache.get(s)).collect()
        };
        let cached = english.iter().filter(|e| e.is_some()).count();
        let mut missing: Vec<&str> = stretches
            .iter()
            .zip(&english)
            .filter(|(_, e)| e.is_none())
            .map(|(s, _)| *s)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let translated = self.translate_batch(&missing, self.config.max_tokens)?;
            let mut cache = self.cache();
            for (source, (_, text)) in missing.iter().zip(translated) {
                let text = tidy(&text);
                let text = if text.is_empty() {
                    tracing::warn!(
                        source,
                        "the translation model returned nothing; kept in Chinese"
                    );
                    source.to_string()
                } else {
                    text
                };
                cache.put(source.to_string(), text, self.config.cache_entries);
            }
            for (slot, stretch) in english.iter_mut().zip(&stretches) {
                if slot.is_none() {
                    *slot = cache.get(stretch);
                }
            }
        }
        let english: Vec<String> = english
            .into_iter()
            .zip(&stretches)
            .map(|(e, s)| e.unwrap_or_else(|| s.to_string()))
            .collect();
        let elapsed = started.elapsed();
        metrics::histogram!("huabi_translate_seconds").record(elapsed.as_secs_f64());
        metrics::counter!("huabi_translate_stretches_total", "cached" => "yes")
            .increment(cached as u64);
        metrics::counter!("huabi_translate_stretches_total", "cached" => "no")
            .increment((stretches.len() - cached) as u64);
        Ok(Translation {
            text: assemble(&pieces, &english),
            stretches: stretches.len(),
            cached,
            elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chinese(prompt: &str) -> Vec<&str> {
        pieces(prompt)
            .into_iter()
            .filter_map(|p| match p {
                Piece::Chinese(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_the_chinese_of_each_clause_is_translated() {
        assert_eq!(chinese("月下的桂花树"), vec!["月下的桂花树"]);
        assert_eq!(
            chinese("masterpiece, 3只猫 in watercolor, mzstyle"),
            vec!["3只猫"]
        );
        assert_eq!(
            chinese("一只猫 wearing 帽子，月亮"),
            vec!["一只猫 wearing 帽子", "月亮"]
        );
        assert_eq!(chinese("(猫:1.2)"), vec!["猫"]);
        assert_eq!(chinese("猫 1,000 只"), vec!["猫 1,000 只"]);
        assert!(chinese("a cat on the moon").is_empty());
        assert!(chinese("").is_empty());
        assert!(chinese("，，。").is_empty());
    }

    #[test]
    fn translations_go_back_in_place_with_ascii_separators() {
        let p = pieces("masterpiece, 一只猫，月亮。oil painting");
        let english = vec!["a cat".to_string(), "the moon".to_string()];
        assert_eq!(
            assemble(&p, &english),
            "masterpiece, a cat, the moon. oil painting"
        );
        let p = pieces("3只猫wearing hats");
        assert_eq!(
            assemble(&p, &["three cats".into()]),
            "three cats wearing hats"
        );
        let p = pieces("(猫:1.2)");
        assert_eq!(assemble(&p, &["cat".into()]), "(cat:1.2)");
    }

    #[test]
    fn translations_are_tidied() {
        assert_eq!(tidy(" A cat on the moon. "), "A cat on the moon");
        assert_eq!(tidy("..."), "");
    }

    #[test]
    fn han_characters_are_recognised() {
        assert!(has_chinese("a 猫"));
        assert!(has_chinese("𠀀"));
        assert!(!has_chinese("ｃａｔ，！"));
        assert!(!has_chinese("こんにちは"));
    }

    #[test]
    fn the_cache_forgets_the_least_recently_used() {
        let mut cache = Cache::default();
        cache.put("a".into(), "A".into(), 2);
        cache.put("b".into(), "B".into(), 2);
        assert_eq!(cache.get("a").as_deref(), Some("A"));
        cache.put("c".into(), "C".into(), 2);
        assert_eq!(cache.get("b"), None);
        assert_eq!(cache.get("a").as_deref(), Some("A"));
        cache.put("d".into(), "D".into(), 0);
        assert_eq!(cache.get("d"), None);
    }
}
