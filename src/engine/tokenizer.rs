//! The text encoders' tokenizers (the `tokenizers` crate) from `tokenizer/`: CLIP's (77 tokens, its own padding
//! token, huabi's normalisation of Chinese punctuation first), and any other a model folder brings — a BERT
//! WordPiece `vocab.txt` or a `tokenizer.json` of any kind, as the Chinese SD 1.5 variants have — padded and
//! truncated to the `model_max_length` its config names, the text given as it is (the vocabulary has the
//! punctuation CLIP lacks).

use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};
use unicode_normalization::UnicodeNormalization;

use super::EngineError;

/// CLIP's context length.
pub const MAX_TOKENS: usize = 77;
/// The longest context any text encoder is given.
const LONGEST: usize = 1024;
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// OpenAI CLIP's pre-tokenisation pattern.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Tokenizes prompts into exactly [`PromptTokenizer::max_len`] ids.
pub struct PromptTokenizer {
    inner: Tokenizer,
    max_len: usize,
    clip: bool,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("max_len", &self.max_len)
            .field("clip", &self.clip)
            .finish_non_exhaustive()
    }
}

fn error(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Model {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The folder's tokenizer config (`tokenizer_config.json`, with `special_tokens_map.json` over it for names).
fn config(dir: &Path, file: &str) -> Value {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// A special token's name as the configs give it (a string, or `{"content": …}`).
fn special(dir: &Path, key: &str) -> Option<String> {
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        match config(dir, file).get(key) {
            Some(Value::String(s)) => return Some(s.clone()),
            Some(Value::Object(o)) => {
                if let Some(Value::String(s)) = o.get("content") {
                    return Some(s.clone());
                }
            }
            _ => {}
        }
    }
    None
}

impl PromptTokenizer {
    /// Loads `tokenizer.json`, or builds CLIP's pipeline from `vocab.json` + `merges.txt`, or BERT's from
    /// `vocab.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        let json = dir.join("tokenizer.json");
        let mut inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| error(&json, e))?
        } else if dir.join("vocab.json").is_file() {
            Self::build_clip(dir)?
        } else if dir.join("vocab.txt").is_file() {
            Self::build_bert(dir)?
        } else {
            return Err(error(
                dir,
                "has no tokenizer.json, vocab.json + merges.txt or vocab.txt",
            ));
        };
        let clip = inner.token_to_id(BOS).is_some() && inner.token_to_id(EOS).is_some();
        let max_len = if clip {
            MAX_TOKENS
        } else {
            config(dir, "tokenizer_config.json")
                .get("model_max_length")
                .and_then(Value::as_u64)
                .map_or(MAX_TOKENS, |n| n as usize)
        };
        if !(2..=LONGEST).contains(&max_len) {
            return Err(error(
                dir,
                format!("model_max_length {max_len} must be between 2 and {LONGEST}"),
            ));
        }
        let default_pad = if clip { EOS } else { "[PAD]" };
        let pad = special(dir, "pad_token").unwrap_or_else(|| default_pad.to_string());
        let pad_id = inner.token_to_id(&pad).ok_or_else(|| {
            error(
                dir,
                format!("padding token {pad:?} is not in the vocabulary"),
            )
        })?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| error(dir, e))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad,
        }));
        Ok(Self {
            inner,
            max_len,
            clip,
        })
    }

    fn build_clip(dir: &Path) -> Result<Tokenizer, EngineError> {
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

    /// BERT's WordPiece pipeline (transformers' `BertTokenizer`): clean text, spaces around Chinese characters,
    /// lower case unless the config says otherwise, `[CLS] … [SEP]`.
    fn build_bert(dir: &Path) -> Result<Tokenizer, EngineError> {
        let vocab = dir.join("vocab.txt");
        let names = |key: &str, default: &str| special(dir, key).unwrap_or_else(|| default.into());
        let unk = names("unk_token", "[UNK]");
        let wordpiece = WordPiece::from_file(&vocab.to_string_lossy())
            .unk_token(unk)
            .build()
            .map_err(|e| error(&vocab, e))?;
        let mut tokenizer = Tokenizer::new(wordpiece);
        let settings = config(dir, "tokenizer_config.json");
        let flag = |key: &str, default: bool| {
            settings
                .get(key)
                .and_then(Value::as_bool)
                .unwrap_or(default)
        };
        let lowercase = flag("do_lower_case", true);
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(
                true,
                flag("tokenize_chinese_chars", true),
                settings.get("strip_accents").and_then(Value::as_bool),
                lowercase,
            )))
            .map_err(|e| error(dir, e))?;
        tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
        let (cls, sep) = (names("cls_token", "[CLS]"), names("sep_token", "[SEP]"));
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| error(&vocab, format!("{token} is not in the vocabulary")))
        };
        let (cls_id, sep_id) = (id(&cls)?, id(&sep)?);
        tokenizer.with_post_processor(Some(BertProcessing::new((sep, sep_id), (cls, cls_id))));
        Ok(tokenizer)
    }

    /// How many ids [`PromptTokenizer::encode`] returns.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The ids of `prompt` (after [`normalize_prompt`] for CLIP) and which of them are text rather than padding;
    /// text past the context is dropped.
    pub fn encode_with_mask(&self, prompt: &str) -> Result<(Vec<i64>, Vec<i64>), EngineError> {
        let text = if self.clip {
            normalize_prompt(prompt)
        } else {
            prompt.to_string()
        };
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| EngineError::Invalid(format!("cannot tokenize the prompt: {e}")))?;
        Ok((
            encoding.get_ids().iter().map(|&id| i64::from(id)).collect(),
            encoding
                .get_attention_mask()
                .iter()
                .map(|&m| i64::from(m))
                .collect(),
        ))
    }

    /// The ids of `prompt`, exactly [`PromptTokenizer::max_len`] of them.
    pub fn encode(&self, prompt: &str) -> Result<Vec<i64>, EngineError> {
        Ok(self.encode_with_mask(prompt)?.0)
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

    fn tiny() -> PromptTokenizer {
        PromptTokenizer::from_dir(Path::new(concat!(
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
        assert!(PromptTokenizer::from_dir(dir.path()).is_err());
        std::fs::write(dir.path().join("vocab.json"), "{\"a\": 0}").expect("write");
        std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\n").expect("write");
        let err = PromptTokenizer::from_dir(dir.path()).expect_err("no special tokens");
        assert!(err.to_string().contains("<|"), "{err}");
        let bert = tempfile::tempdir().expect("tempdir");
        std::fs::write(bert.path().join("vocab.txt"), "[PAD]\n[UNK]\n月\n").expect("write");
        let err = PromptTokenizer::from_dir(bert.path()).expect_err("no [CLS]");
        assert!(err.to_string().contains("[CLS]"), "{err}");
        std::fs::write(
            bert.path().join("vocab.txt"),
            "[PAD]\n[UNK]\n[CLS]\n[SEP]\n月\n",
        )
        .expect("write");
        std::fs::write(
            bert.path().join("tokenizer_config.json"),
            "{\"model_max_length\": 100000000}",
        )
        .expect("write");
        let err = PromptTokenizer::from_dir(bert.path()).expect_err("absurd length");
        assert!(err.to_string().contains("model_max_length"), "{err}");
    }

    #[test]
    fn bert_vocabularies_tokenize_chinese_as_transformers_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("vocab.txt"),
            "[PAD]\n[UNK]\n[CLS]\n[SEP]\n月\n下\n，\ncat\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            "{\"model_max_length\": 8}",
        )
        .expect("write");
        let bert = PromptTokenizer::from_dir(dir.path()).expect("bert");
        assert_eq!(bert.max_len(), 8);
        let (ids, mask) = bert.encode_with_mask("月下，Cat 狗").expect("ids");
        assert_eq!(
            ids,
            vec![2, 4, 5, 6, 7, 1, 3, 0],
            "full-width punctuation kept, lower case, [UNK]"
        );
        assert_eq!(mask, vec![1, 1, 1, 1, 1, 1, 1, 0]);
    }
}
