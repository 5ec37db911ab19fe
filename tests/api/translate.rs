//! Translation: huabi's greedy decoding of a random-weight Marian (models/translate/tiny-zh-en, made with the cases
//! by scripts/make_translator.py) gives the token ids transformers' `generate(num_beams=1, do_sample=False)` gives,
//! with the split decoders and with the merged one, one at a time and batched, under other generation options too.

use std::path::{Path, PathBuf};

use huabi::engine::translate::{TranslateConfig, Translator};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny_dir() -> PathBuf {
    root().join("models/translate/tiny-zh-en")
}

fn fixtures() -> Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures/translate/cases.json"))
        .expect("cases; run scripts/make_translator.py");
    serde_json::from_str(&text).expect("json")
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_i64().expect("id"))
        .collect()
}

pub fn open(dir: &Path) -> Translator {
    Translator::open_dir(
        &crate::engine::config(Path::new("")),
        dir,
        TranslateConfig::default(),
    )
    .expect("translator opens")
}

/// A copy of the tiny model's files in a temporary folder, `generation_config.json` given `options` on top.
fn copy_with(options: &Value, merged: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    for file in [
        "encoder_model.onnx",
        "tokenizer.json",
        "config.json",
        "generation_config.json",
    ] {
        std::fs::copy(tiny_dir().join(file), dir.path().join(file)).expect("copy");
    }
    if merged {
        std::fs::copy(
            root().join("tests/fixtures/translate/decoder_model_merged.onnx"),
            dir.path().join("decoder_model_merged.onnx"),
        )
        .expect("copy merged");
    } else {
        for file in ["decoder_model.onnx", "decoder_with_past_model.onnx"] {
            std::fs::copy(tiny_dir().join(file), dir.path().join(file)).expect("copy");
        }
    }
    let path = dir.path().join("generation_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    for (key, value) in options.as_object().expect("options") {
        config[key] = value.clone();
    }
    if options.get("max_new_tokens").is_some() {
        config.as_object_mut().expect("object").remove("max_length");
    }
    std::fs::write(&path, config.to_string()).expect("write");
    dir
}

/// Every case's ids, one at a time and all in one batch, equal the fixture's.
fn check(translator: &Translator, cases: &[Value]) {
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let got = translator.translate_batch(&[text], 64).expect("translates");
        assert_eq!(got[0].0, ids(&case["output_ids"]), "{text}");
        assert_eq!(
            got[0].1,
            case["translation"].as_str().expect("translation"),
            "{text}"
        );
    }
    let texts: Vec<&str> = cases
        .iter()
        .map(|c| c["text"].as_str().expect("text"))
        .collect();
    let batched = translator.translate_batch(&texts, 64).expect("batch");
    for (case, (got, _)) in cases.iter().zip(batched) {
        assert_eq!(got, ids(&case["output_ids"]), "batched {}", case["text"]);
    }
}

#[test]
fn greedy_decoding_equals_transformers_with_split_and_merged_decoders() {
    let fixtures = fixtures();
    let cases = fixtures["cases"].as_array().expect("cases");
    let lengths: Vec<usize> = cases.iter().map(|c| ids(&c["output_ids"]).len()).collect();
    assert!(lengths.iter().any(|&n| n > 2 && n < 24) && lengths.contains(&24));
    check(&open(&tiny_dir()), cases);
    let merged = copy_with(&serde_json::json!({}), true);
    check(&open(merged.path()), cases);
}

#[test]
fn other_generation_options_equal_transformers() {
    let fixtures = fixtures();
    for variant in fixtures["variants"].as_array().expect("variants") {
        let dir = copy_with(&variant["options"], false);
        check(
            &open(dir.path()),
            variant["cases"].as_array().expect("cases"),
        );
    }
}

#[test]
fn prompts_keep_their_english_and_translations_are_cached() {
    let fixtures = fixtures();
    let case = &fixtures["cases"][0];
    let source = case["text"].as_str().expect("text");
    let english = case["translation"].as_str().expect("translation").trim();
    let translator = open(&tiny_dir());
    let prompt = format!("masterpiece, {source}, mzstyle");
    let first = translator.translate(&prompt).expect("translates");
    assert_eq!(first.text, format!("masterpiece, {english}, mzstyle"));
    assert_eq!((first.stretches, first.cached), (1, 0));
    let again = translator.translate(&prompt).expect("translates");
    assert_eq!(again.text, first.text);
    assert_eq!((again.stretches, again.cached), (1, 1));
    let english_only = translator
        .translate("a cat on the moon")
        .expect("translates");
    assert_eq!(english_only.text, "a cat on the moon");
    assert!(!english_only.changed());
}

#[test]
fn broken_model_folders_are_refused_with_reasons() {
    let engine = crate::engine::config(Path::new(""));
    let open = |dir: &Path| {
        Translator::open_dir(&engine, dir, TranslateConfig::default())
            .expect_err("refused")
            .to_string()
    };
    let dir = copy_with(&serde_json::json!({}), false);
    std::fs::remove_file(dir.path().join("decoder_with_past_model.onnx")).expect("rm");
    assert!(open(dir.path()).contains("decoder_model_merged.onnx"));

    let dir = copy_with(&serde_json::json!({}), false);
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 5}").expect("write");
    assert!(open(dir.path()).contains("tokenizer.json"));

    let dir = copy_with(&serde_json::json!({}), false);
    std::fs::write(
        dir.path().join("config.json"),
        "{\"d_model\": 64, \"decoder_attention_heads\": 3}",
    )
    .expect("write");
    assert!(open(dir.path()).contains("decoder_attention_heads"));

    let dir = copy_with(&serde_json::json!({}), false);
    std::fs::write(dir.path().join("encoder_model.onnx"), b"not a model").expect("write");
    assert!(open(dir.path()).contains("encoder_model.onnx"));
}
