//! The safety check: Pillow's resizing and transformers' CLIPImageProcessor reproduced exactly, and diffusers'
//! StableDiffusionSafetyChecker's flags and concept scores on random weights (tests/fixtures/safety, made by
//! scripts/make_safety.py); a concept embedding built from one picture flags it and passes another.

use std::path::{Path, PathBuf};

use huabi::engine::Picture;
use huabi::engine::resample::{self, Filter};
use huabi::engine::safety::SafetyChecker;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures(dir: &str) -> PathBuf {
    root().join("tests/fixtures").join(dir)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).expect("fixture; run scripts/make_safety.py"),
    )
    .expect("json")
}

fn rgb8(path: &Path) -> image::RgbImage {
    image::open(path).expect("png").to_rgb8()
}

/// A picture as the engine hands it over (values in [0, 1]) from a PNG.
pub fn picture(path: &Path) -> Picture {
    let rgb = rgb8(path);
    Picture {
        width: rgb.width(),
        height: rgb.height(),
        rgb: rgb.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect(),
    }
}

fn checker(dir: &str) -> SafetyChecker {
    SafetyChecker::open(
        &crate::engine::config(Path::new("")),
        &fixtures("safety").join(dir),
    )
    .expect("checker opens")
}

#[test]
fn resizing_equals_pillow_byte_for_byte() {
    let dir = fixtures("resample");
    let spec = json(&dir.join("cases.json"));
    let source = rgb8(&dir.join(spec["source"].as_str().expect("source")));
    let cases = spec["cases"].as_array().expect("cases");
    assert!(cases.len() >= 12);
    for case in cases {
        let filter = match case["filter"].as_str().expect("filter") {
            "bilinear" => Filter::Bilinear,
            "bicubic" => Filter::Bicubic,
            _ => Filter::Lanczos,
        };
        let size = (
            case["width"].as_u64().expect("w") as usize,
            case["height"].as_u64().expect("h") as usize,
        );
        let want = rgb8(&dir.join(case["file"].as_str().expect("file")));
        let got = resample::resize(
            source.as_raw(),
            (source.width() as usize, source.height() as usize),
            size,
            filter,
        );
        assert_eq!(&got, want.as_raw(), "{case}");
    }
}

#[test]
fn preprocessing_equals_clip_image_processor() {
    let spec = json(&fixtures("safety").join("cases.json"));
    let checker = checker("random");
    for (i, name) in spec["pictures"]
        .as_array()
        .expect("pictures")
        .iter()
        .enumerate()
    {
        let got = checker.preprocess().apply(&picture(
            &fixtures("safety/pictures").join(name.as_str().expect("name")),
        ));
        let want: Vec<f32> = spec["pixel_values"][i]
            .as_array()
            .expect("channels")
            .iter()
            .flat_map(|c| c.as_array().expect("rows").iter())
            .flat_map(|r| r.as_array().expect("values").iter())
            .map(|v| v.as_f64().expect("value") as f32)
            .collect();
        assert_eq!(got.len(), want.len());
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "{name}: {diff}");
    }
}

#[test]
fn flags_and_scores_equal_diffusers() {
    let spec = json(&fixtures("safety").join("cases.json"));
    let pictures: Vec<Picture> = spec["pictures"]
        .as_array()
        .expect("pictures")
        .iter()
        .map(|n| picture(&fixtures("safety/pictures").join(n.as_str().expect("name"))))
        .collect();
    let verdicts = checker("random").check(&pictures).expect("checks");
    let flags: Vec<bool> = verdicts.iter().map(|v| v.flagged).collect();
    let want: Vec<bool> = spec["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| f.as_bool().expect("bool"))
        .collect();
    assert_eq!(flags, want);
    assert!(want.contains(&true) && want.contains(&false));
    let mut worst = 0.0f32;
    for (i, verdict) in verdicts.iter().enumerate() {
        for (key, got) in [
            ("concept_scores", &verdict.concept_scores),
            ("special_scores", &verdict.special_scores),
        ] {
            let want: Vec<f32> = spec[key][i]
                .as_array()
                .expect("scores")
                .iter()
                .map(|v| v.as_f64().expect("score") as f32)
                .collect();
            assert_eq!(got.len(), want.len(), "{key}");
            worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(worst, f32::max);
        }
    }
    println!("safety scores: max |huabi - diffusers| = {worst:e}");
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn a_concept_built_from_a_picture_flags_it_and_passes_another() {
    let pictures = [
        picture(&fixtures("safety/pictures/a.png")),
        picture(&fixtures("safety/pictures/b.png")),
    ];
    let verdicts = checker("flag-a").check(&pictures).expect("checks");
    assert!(verdicts[0].flagged, "{:?}", verdicts[0]);
    assert!(!verdicts[1].flagged, "{:?}", verdicts[1]);
    assert!(verdicts[0].worst() > 0.0 && verdicts[1].worst() < 0.0);
}

#[test]
fn each_model_is_checked_required_or_left_alone_as_operators_decide() {
    use huabi::engine::safety::{SafetyConfig, SafetyMode};
    use huabi::engine::{Batch, BatchKey, Engine, EngineConfig, Item, SchedulerKind};
    let with = |default: SafetyMode, models: &[(&str, SafetyMode)]| EngineConfig {
        models_dir: root().join("models"),
        model: "tiny-sd".into(),
        safety: SafetyConfig {
            default,
            models: models.iter().map(|(m, s)| (m.to_string(), *s)).collect(),
            keep_flagged: false,
        },
        ..crate::engine::config(Path::new(""))
    };
    let paint = |engine: &mut Engine, model: &str| {
        let batch = Batch {
            key: BatchKey {
                model: model.into(),
                loras: Vec::new(),
                width: 64,
                height: 64,
                steps: 2,
                scheduler: SchedulerKind::Euler,
                strength: None,
            },
            items: vec![Item {
                prompt: "a lantern".into(),
                negative_prompt: String::new(),
                seed: 3,
                guidance: 7.5,
                init_latents: None,
                init_image: None,
            }],
        };
        engine.generate(&batch, &mut |_| {})
    };
    let mut engine = Engine::new(&with(SafetyMode::On, &[])).expect("engine");
    let checked = paint(&mut engine, "tiny-sd").expect("paints");
    assert!(
        matches!(&checked.verdicts[..], [Some(v)] if !v.flagged && !v.concept_scores.is_empty())
    );
    assert_eq!(
        paint(&mut engine, "tiny-sdxl").expect("paints").verdicts,
        vec![None],
        "no checker: unchecked"
    );

    let mut strict = Engine::new(&with(SafetyMode::Required, &[])).expect("engine");
    let refused = paint(&mut strict, "tiny-sdxl").expect_err("refused without a checker");
    assert!(refused.to_string().contains("safety_checker"), "{refused}");

    let mut off =
        Engine::new(&with(SafetyMode::Required, &[("tiny-sd", SafetyMode::Off)])).expect("engine");
    assert_eq!(
        paint(&mut off, "tiny-sd").expect("paints").verdicts,
        vec![None]
    );
}
