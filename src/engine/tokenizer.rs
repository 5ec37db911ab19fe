//! The CLIP tokenizer (the `tokenizers` crate) from `tokenizer/`: 77 tokens, truncation, the model's own padding
//! token, and huabi's normalisation of Chinese input.

use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};
use unicode_normalization::UnicodeNormalization;

use super::EngineError;

/// CLIP's context length.
pub const MAX_TOKENS: usize = 77;
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// OpenAI CLIP's pre-tokenisation pattern.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Tokenizes prompts into exactly [`MAX_TOKENS`] ids.
pub struct ClipTokenizer {
    inner: Tokenizer,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer").finish_non_exhaustive()
    }
}

fn error(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Model {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The padding token the folder's tokenizer config names (SD 1.x pads with `<|endoftext|>`, SD 2.x with `!`).
fn pad_token(dir: &Path) -> String {
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match json.get("pad_token") {
            Some(Value::String(s)) => return s.clone(),
            Some(Value::Object(o)) => {
                if let Some(Value::String(s)) = o.get("content") {
                    return s.clone();
                }
            }
            _ => {}
        }
    }
    EOS.to_string()
}

impl ClipTokenizer {
    /// Loads `tokenizer.json`, or builds CLIP's pipeline from `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        let json = dir.join("tokenizer.json");
        let mut inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| error(&json, e))?
        } else {
            Self::build_from_vocab(dir)?
        };
        let pad = pad_token(dir);
        let pad_id = inner.token_to_id(&pad).ok_or_else(|| {
            error(
                dir,
                format!("padding token {pad:?} is not in the vocabulary"),
            )
        })?;
        for special in [BOS, EOS] {
            if inner.token_to_id(special).is_none() {
                return Err(error(dir, format!("{special} is not in the vocabulary")));
            }
        }
        inner
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| error(dir, e))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(MAX_TOKENS),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad,
        }));
        Ok(Self { inner })
    }

    fn build_from_vocab(dir: &Path) -> Result<Tokenizer, EngineError> {
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .end_of_word_suffix("</w>".into())
            .unk_token(EOS.into())
            .build()
            .map_err(|e| error(&vocab, e))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let whitespace = Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| error(dir, e))?;
        tokenizer
            .with_normalizer(Some(NormalizerSequence::new(vec![
                NFC.into(),
                whitespace.into(),
                Lowercase.into(),
            ])))
            .map_err(|e| error(dir, e))?;
        let split = Split::new(
            SplitPattern::Regex(CLIP_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| error(dir, e))?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])));
        let bos = tokenizer
            .token_to_id(BOS)
            .ok_or_else(|| error(&vocab, "no <|startoftext|>"))?;
        let eos = tokenizer
            .token_to_id(EOS)
            .ok_or_else(|| error(&vocab, "no <|endoftext|>"))?;
        tokenizer.with_post_processor(Some(
            RobertaProcessing::new((EOS.into(), eos), (BOS.into(), bos))
                .trim_offsets(false)
                .add_prefix_space(false),
        ));
        tokenizer.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        Ok(tokenizer)
    }

    /// The 77 token ids of `prompt` after [`normalize_prompt`]; text past 75 tokens is dropped.
    pub fn encode(&self, prompt: &str) -> Result<Vec<i64>, EngineError> {
        let encoding = self
            .inner
            .encode(normalize_prompt(prompt), true)
            .map_err(|e| EngineError::Invalid(format!("cannot tokenize the prompt: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
    }
}

/// Whether the tokenizer in `dir` reads Chinese: at least a tenth of its vocabulary (or 1000 tokens) holds Chinese
/// characters. CLIP's byte-level vocabulary holds none (it spells Chinese as bytes it was never trained on); the BERT
/// and XLM-R vocabularies of Chinese and multilingual encoders hold thousands. Remembered per folder.
pub fn reads_chinese(dir: &Path) -> bool {
    static SEEN: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, bool>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    *seen.entry(dir.to_path_buf()).or_insert_with(|| {
        let tokens: Vec<String> =
            if let Ok(tokenizer) = Tokenizer::from_file(dir.join("tokenizer.json")) {
                tokenizer.get_vocab(true).into_keys().collect()
            } else if let Ok(text) = std::fs::read_to_string(dir.join("vocab.txt")) {
                text.lines().map(str::to_string).collect()
            } else if let Ok(text) = std::fs::read_to_string(dir.join("vocab.json")) {
                serde_json::from_str::<std::collections::HashMap<String, u32>>(&text)
                    .map(|v| v.into_keys().collect())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
        let chinese = tokens
            .iter()
            .filter(|t| t.chars().any(crate::engine::translate::is_han))
            .count();
        !tokens.is_empty() && (chinese >= 1000 || chinese * 10 >= tokens.len())
    })
}

/// huabi's normalisation before CLIP's own: full-width forms become half-width (NFKC: ，！？：；（） and Ａ１ become
/// ,!?:;() and A1), CJK punctuation NFKC keeps becomes its ASCII counterpart (。、「」『』【】《》〈〉～), zero-width
/// characters vanish, and whitespace runs collapse. Chinese characters themselves are kept: CLIP's byte-level
/// vocabulary encodes them, and translation into English is the campaign glossary's job.
pub fn normalize_prompt(prompt: &str) -> String {
    let mut out = String::with_capacity(prompt.len());
    for c in prompt.nfkc() {
        match c {
            '。' | '｡' => out.push('.'),
            '、' | '､' => out.push(','),
            '「' | '」' | '『' | '』' | '“' | '”' => out.push('"'),
            '‘' | '’' => out.push('\''),
            '【' | '〔' => out.push('['),
            '】' | '〕' => out.push(']'),
            '《' | '〈' => out.push('<'),
            '》' | '〉' => out.push('>'),
            '～' | '〜' => out.push('~'),
            '·' | '・' => out.push(' '),
            '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' => {}
            c if c.is_whitespace() || c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ClipTokenizer {
        ClipTokenizer::from_dir(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/tiny-sd/tokenizer"
        )))
        .expect("tokenizer")
    }

    #[test]
    fn matches_openai_clip_ids() {
        let ids = tiny()
            .encode("a photo of the moon, mid-autumn festival")
            .expect("ids");
        assert_eq!(ids.len(), 77);
        assert_eq!(
            &ids[..12],
            &[
                49406, 320, 1125, 539, 518, 3293, 267, 4734, 268, 6110, 2240, 49407
            ]
        );
        assert!(
            ids[12..].iter().all(|&id| id == 49407),
            "padded with <|endoftext|>"
        );
    }

    #[test]
    fn long_prompts_are_truncated_with_eos_last() {
        let ids = tiny().encode(&"moon ".repeat(500)).expect("ids");
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], 49406);
        assert_eq!(ids[76], 49407);
        assert!(ids[1..76].iter().all(|&id| id != 49407));
    }

    #[test]
    fn full_width_and_half_width_prompts_tokenize_alike() {
        let t = tiny();
        assert_eq!(
            t.encode("嫦娥，玉兔！月饼？").expect("ids"),
            t.encode("嫦娥, 玉兔! 月饼?").expect("ids")
        );
        assert_eq!(
            t.encode("ＭＯＯＮ　１２３").expect("ids"),
            t.encode("moon 123").expect("ids")
        );
        assert_eq!(
            t.encode("月\u{200B}亮。").expect("ids"),
            t.encode("月亮.").expect("ids")
        );
        assert_ne!(
            t.encode("嫦娥").expect("ids"),
            t.encode("").expect("ids"),
            "CJK is encoded, not dropped"
        );
    }

    #[test]
    fn normalisation_table() {
        for (input, want) in [
            ("嫦娥，玉兔！", "嫦娥,玉兔!"),
            ("（中秋）：赏月；", "(中秋):赏月;"),
            ("「月亮」、【灯笼】《桂花》", "\"月亮\",[灯笼]<桂花>"),
            ("  a\tb\n\nc  ", "a b c"),
            ("Ａ　Ｂ", "A B"),
            ("z\u{FEFF}w\u{200D}", "zw"),
        ] {
            assert_eq!(normalize_prompt(input), want, "{input:?}");
        }
    }

    #[test]
    fn broken_tokenizer_folders_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(ClipTokenizer::from_dir(dir.path()).is_err());
        std::fs::write(dir.path().join("vocab.json"), "{\"a\": 0}").expect("write");
        std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\n").expect("write");
        let err = ClipTokenizer::from_dir(dir.path()).expect_err("no special tokens");
        assert!(err.to_string().contains("<|"), "{err}");
    }
}
