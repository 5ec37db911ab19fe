//! The real ONNX pipeline on the bundled small model: parity with diffusers (text to image and image to image),
//! determinism, batch independence and hostile requests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use huabi::engine::photo::{self, PhotoLimits};
use huabi::engine::{
    Batch, BatchKey, EngineConfig, EngineError, Item, Picture, SchedulerKind, StableDiffusion,
    Strength, npy,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn config(model_dir: &Path) -> EngineConfig {
    EngineConfig {
        models_dir: root().join("models"),
        model: "tiny-sd".into(),
        model_dir: model_dir.to_path_buf(),
        models: Vec::new(),
        memory_budget_mb: 0,
        device: "cpu".into(),
        threads: 2,
        ort_dylib_path: std::env::var("ORT_DYLIB_PATH").unwrap_or_default(),
        cuda_options: String::new(),
        max_width: 256,
        max_height: 256,
        max_batch: 4,
        max_prompt_chars: 1000,
        aigc_provider: "huabi-test".into(),
        safety: Default::default(),
    }
}

/// One engine for the tests that share the tiny model (loading ONNX Runtime happens once per process anyway).
static TINY: LazyLock<Mutex<StableDiffusion>> = LazyLock::new(|| {
    Mutex::new(
        StableDiffusion::load(&config(&root().join("models/tiny-sd")))
            .expect("tiny model loads; run scripts/fetch-ort"),
    )
});

fn item(prompt: &str, seed: u64) -> Item {
    Item {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        seed,
        guidance: 7.5,
        init_latents: None,
        init_image: None,
    }
}

fn key(scheduler: SchedulerKind, steps: usize) -> BatchKey {
    BatchKey {
        model: "tiny-sd".into(),
        loras: Vec::new(),
        width: 64,
        height: 64,
        steps,
        scheduler,
        strength: None,
    }
}

fn generate(batch: &Batch) -> Result<Vec<Vec<f32>>, EngineError> {
    let mut engine = TINY.lock().expect("engine lock");
    Ok(engine
        .generate(batch, &mut |_| {})?
        .pictures
        .into_iter()
        .map(|p| p.rgb)
        .collect())
}

#[test]
fn every_scheduler_matches_the_diffusers_pipeline_within_1e_3() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/diffusers/pipeline.json"))
            .expect("json"),
    )
    .expect("json");
    let (shape, latents) =
        npy::read_f32(&root().join("tests/fixtures/diffusers/init-latents.npy")).expect("latents");
    assert_eq!(shape, vec![1, 4, 8, 8]);
    for kind in SchedulerKind::ALL {
        let (shape, want) =
            npy::read_f32(&root().join(format!("tests/fixtures/diffusers/pipeline-{kind}.npy")))
                .expect("reference image");
        assert_eq!(shape, vec![64, 64, 3]);
        let batch = Batch {
            key: key(kind, reference["steps"].as_u64().expect("steps") as usize),
            items: vec![Item {
                prompt: reference["prompt"].as_str().expect("prompt").into(),
                negative_prompt: String::new(),
                seed: reference["seed"].as_u64().expect("seed"),
                guidance: 7.5,
                init_latents: Some(latents.clone()),
                init_image: None,
            }],
        };
        let got = generate(&batch).expect("generates").remove(0);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{kind}: max |huabi - diffusers| = {worst:e}");
        assert!(worst <= 1e-3, "{kind}: max |huabi - diffusers| = {worst}");
    }
}

#[test]
fn img2img_matches_diffusers_for_every_scheduler_within_1e_3() {
    let dir = root().join("tests/fixtures/diffusers");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("img2img.json")).expect("json"))
            .expect("json");
    let (_, noise) = npy::read_f32(&dir.join("img2img-noise.npy")).expect("noise");
    let photo = std::fs::read(dir.join("photo.png")).expect("photo");
    let limits = PhotoLimits {
        max_bytes: 1 << 20,
        max_pixels: 1 << 20,
    };
    let picture = Arc::new(photo::prepare(&photo, &limits, (64, 64)).expect("photo"));
    let strength =
        Strength::new(reference["strength"].as_f64().expect("strength")).expect("strength");
    for kind in SchedulerKind::ALL {
        let (_, want) = npy::read_f32(&dir.join(format!("img2img-{kind}.npy"))).expect("reference");
        let batch = Batch {
            key: BatchKey {
                strength: Some(strength),
                ..key(kind, reference["steps"].as_u64().expect("steps") as usize)
            },
            items: vec![Item {
                prompt: reference["prompt"].as_str().expect("prompt").into(),
                negative_prompt: String::new(),
                seed: reference["seed"].as_u64().expect("seed"),
                guidance: 7.5,
                init_latents: Some(noise.clone()),
                init_image: Some(picture.clone()),
            }],
        };
        let got = generate(&batch).expect("generates").remove(0);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        eprintln!("img2img {kind}: max |huabi - diffusers| = {worst:e}");
        assert!(
            worst <= 1e-3,
            "img2img {kind}: max |huabi - diffusers| = {worst}"
        );
    }
}

#[test]
fn img2img_needs_a_picture_of_the_batch_size_and_a_useful_strength() {
    let picture = Arc::new(Picture {
        width: 64,
        height: 64,
        rgb: vec![0.5; 64 * 64 * 3],
    });
    let with = |strength: Option<f64>, image: Option<Arc<Picture>>| Batch {
        key: BatchKey {
            strength: strength.map(|s| Strength::new(s).expect("strength")),
            ..key(SchedulerKind::Euler, 4)
        },
        items: vec![Item {
            init_image: image,
            ..item("a lantern", 1)
        }],
    };
    assert!(generate(&with(Some(0.5), Some(picture.clone()))).is_ok());
    let small = Arc::new(Picture {
        width: 32,
        height: 64,
        rgb: vec![0.5; 32 * 64 * 3],
    });
    for (strength, image) in [
        (Some(0.5), None),
        (None, Some(picture.clone())),
        (Some(0.5), Some(small)),
        (Some(0.1), Some(picture)),
    ] {
        let error = generate(&with(strength, image)).expect_err("refused");
        assert!(matches!(error, EngineError::Invalid(_)), "{error}");
    }
    assert!(
        Strength::new(0.0).is_err()
            && Strength::new(1.5).is_err()
            && Strength::new(f64::NAN).is_err()
    );
}

#[test]
fn seeds_are_deterministic_and_independent_of_batch_neighbours() {
    let a = item("a lantern by the river", 1);
    let b = item("mooncakes on a plate", 2);
    let c = Item {
        negative_prompt: "blurry".into(),
        guidance: 3.0,
        ..item("osmanthus flowers", 3)
    };
    let k = key(SchedulerKind::EulerA, 4);
    let alone = generate(&Batch {
        key: k.clone(),
        items: vec![a.clone()],
    })
    .expect("a");
    let again = generate(&Batch {
        key: k.clone(),
        items: vec![a.clone()],
    })
    .expect("a again");
    assert_eq!(alone, again, "same seed, same pixels");
    let trio = generate(&Batch {
        key: k.clone(),
        items: vec![b.clone(), a.clone(), c.clone()],
    })
    .expect("trio");
    let pair = generate(&Batch {
        key: k.clone(),
        items: vec![c.clone(), b.clone()],
    })
    .expect("pair");
    let diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(
        diff(&trio[1], &alone[0]) <= 1e-5,
        "a in a batch of three: {}",
        diff(&trio[1], &alone[0])
    );
    assert!(diff(&trio[0], &pair[1]) <= 1e-5, "b at positions 0 and 1");
    assert!(diff(&trio[2], &pair[0]) <= 1e-5, "c at positions 2 and 0");
    assert!(
        diff(&trio[0], &trio[1]) > 1e-2,
        "different seeds and prompts give different pictures"
    );
    let other_seed = generate(&Batch {
        key: k.clone(),
        items: vec![item("a lantern by the river", 99)],
    })
    .expect("seed 99");
    assert!(diff(&other_seed[0], &alone[0]) > 1e-2);
}

#[test]
fn guidance_off_still_paints() {
    let items = vec![Item {
        guidance: 1.0,
        ..item("full moon", 5)
    }];
    let out = generate(&Batch {
        key: key(SchedulerKind::Ddim, 3),
        items,
    })
    .expect("no CFG");
    assert_eq!(out[0].len(), 64 * 64 * 3);
    assert!(out[0].iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn hostile_requests_are_clear_errors() {
    let k = key(SchedulerKind::Euler, 2);
    let cases: Vec<(Batch, &str)> = vec![
        (
            Batch {
                key: k.clone(),
                items: vec![item(&"月".repeat(5000), 1)],
            },
            "characters",
        ),
        (
            Batch {
                key: k.clone(),
                items: vec![item("   ", 1)],
            },
            "prompt is empty",
        ),
        (
            Batch {
                key: BatchKey {
                    width: 68,
                    ..k.clone()
                },
                items: vec![item("x", 1)],
            },
            "multiple of 8",
        ),
        (
            Batch {
                key: BatchKey {
                    height: 0,
                    ..k.clone()
                },
                items: vec![item("x", 1)],
            },
            "multiple of 8",
        ),
        (
            Batch {
                key: BatchKey {
                    width: 512,
                    ..k.clone()
                },
                items: vec![item("x", 1)],
            },
            "exceeds the maximum",
        ),
        (
            Batch {
                key: k.clone(),
                items: vec![],
            },
            "no items",
        ),
        (
            Batch {
                key: k.clone(),
                items: vec![item("x", 1); 5],
            },
            "max_batch",
        ),
        (
            Batch {
                key: BatchKey {
                    steps: 0,
                    ..k.clone()
                },
                items: vec![item("x", 1)],
            },
            "steps",
        ),
        (
            Batch {
                key: k.clone(),
                items: vec![Item {
                    guidance: f32::NAN,
                    ..item("x", 1)
                }],
            },
            "guidance",
        ),
        (
            Batch {
                key: k.clone(),
                items: vec![Item {
                    init_latents: Some(vec![0.0; 7]),
                    init_image: None,
                    ..item("x", 1)
                }],
            },
            "initial latents",
        ),
    ];
    for (batch, expected) in cases {
        let err = generate(&batch).expect_err(expected);
        assert!(matches!(err, EngineError::Invalid(_)), "{err}");
        assert!(
            err.to_string().contains(expected),
            "{expected:?} not in {err}"
        );
    }
}

fn copy_model(to: &Path) {
    let from = root().join("models/tiny-sd");
    for entry in walk(&from) {
        let rel = entry.strip_prefix(&from).expect("prefix");
        std::fs::create_dir_all(to.join(rel).parent().expect("parent")).expect("mkdir");
        std::fs::copy(&entry, to.join(rel)).expect("copy");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

fn load_error(dir: &Path) -> String {
    match StableDiffusion::load(&config(dir)) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_model_folders_are_refused_with_what_is_missing() {
    let _serial = TINY.lock().expect("engine lock");
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("m");

    copy_model(&model);
    std::fs::remove_file(model.join("unet/model.onnx")).expect("rm");
    assert!(load_error(&model).contains("unet/model.onnx is missing"));

    copy_model(&model);
    std::fs::remove_file(model.join("tokenizer/merges.txt")).expect("rm");
    assert!(load_error(&model).contains("tokenizer"));

    copy_model(&model);
    let bytes = std::fs::read(model.join("unet/model.onnx")).expect("read");
    std::fs::write(model.join("unet/model.onnx"), &bytes[..bytes.len() / 3]).expect("truncate");
    let err = load_error(&model);
    assert!(err.contains("unet/model.onnx"), "{err}");

    copy_model(&model);
    std::fs::copy(
        model.join("text_encoder/model.onnx"),
        model.join("vae_decoder/model.onnx"),
    )
    .expect("swap");
    let err = load_error(&model);
    assert!(
        err.contains("latent_sample") || err.contains("input_ids"),
        "{err}"
    );

    copy_model(&model);
    std::fs::write(model.join("vae_decoder/config.json"), "{}").expect("write");
    assert!(load_error(&model).contains("block_out_channels"));

    assert!(load_error(&dir.path().join("nowhere")).contains("is not a folder"));
}

#[test]
fn generate_command_writes_labelled_png_and_jpeg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let latents = root().join("tests/fixtures/diffusers/init-latents.npy");
    let pixels = dir.path().join("pixels.npy");
    for (name, batch) in [("moon.png", "1"), ("moon.jpg", "2")] {
        let out = dir.path().join(name);
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_huabi"))
            .args([
                "generate",
                "--prompt",
                "中秋 嫦娥抱玉兔",
                "--steps",
                "3",
                "--width",
                "64",
                "--height",
                "64",
            ])
            .args([
                "--scheduler",
                "ddim",
                "--batch",
                batch,
                "--seed",
                "11",
                "--out",
            ])
            .arg(&out)
            .arg("--init-latents")
            .arg(&latents)
            .args(if batch == "1" {
                vec!["--pixels".into(), pixels.clone().into_os_string()]
            } else {
                vec![]
            })
            .env("HUABI__ENGINE__MODEL_DIR", root().join("models/tiny-sd"))
            .env("HUABI__ENGINE__AIGC_PROVIDER", "huabi-test")
            .env("RUST_LOG", "warn")
            .output()
            .expect("runs");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let stdout = String::from_utf8_lossy(&status.stdout);
        assert!(
            stdout.contains("timings:") && stdout.contains("denoise"),
            "{stdout}"
        );
        for path in huabi::generate::output_paths(&out, batch.parse().expect("n")) {
            let bytes = std::fs::read(&path).expect("written");
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                text.contains("huabi-test") && text.contains("ContentProducer"),
                "{}: AIGC record",
                path.display()
            );
            assert!(bytes.len() <= 2 * 1024 * 1024);
        }
    }
    // --pixels holds the picture before its label: the PNG differs from it only where the label was drawn.
    let (shape, values) = huabi::engine::npy::read_f32(&pixels).expect("pixels written");
    assert_eq!(shape, [1, 64, 64, 3]);
    assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
    let png = image::open(dir.path().join("moon.png"))
        .expect("png")
        .to_rgb8()
        .into_raw();
    let same = png
        .iter()
        .zip(&values)
        .filter(|(p, v)| (f32::from(**p) - **v * 255.0).abs() <= 1.0)
        .count();
    assert!(
        same > png.len() / 2 && same < png.len(),
        "{same} of {} values match",
        png.len()
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_huabi"))
        .args(["generate", "--prompt", "x", "--width", "60", "--out"])
        .arg(dir.path().join("bad.png"))
        .env("HUABI__ENGINE__MODEL_DIR", root().join("models/tiny-sd"))
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("multiple of 8"));
}

/// `huabi generate` of the test prompt from the fixtures' latents with the model in `model_dir`; the pixels.
fn paint_pixels(model_dir: &Path, out: &Path) -> Vec<f32> {
    let pixels = out.with_extension("npy");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_huabi"))
        .args([
            "generate",
            "--prompt",
            "a photo of the moon",
            "--negative",
            "blurry",
        ])
        .args(["--steps", "3", "--width", "64", "--height", "64", "--out"])
        .arg(out)
        .arg("--init-latents")
        .arg(root().join("tests/fixtures/diffusers/init-latents.npy"))
        .arg("--pixels")
        .arg(&pixels)
        .env("HUABI__ENGINE__MODEL_DIR", model_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    npy::read_f32(&pixels).expect("pixels").1
}

/// ONNX Runtime's fused float16 model (scripts/optimize_gpu.py; on the CPU without the fusions only the CUDA
/// provider runs) loads — float16 inputs, outputs and timesteps — and paints what the float32 model paints, within
/// float16's reach.
#[test]
fn fused_float16_model_paints_like_the_float32_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fused = dir.path().join("tiny-fused");
    let python = crate::helpers::test_python();
    let output = std::process::Command::new(&python)
        .arg(root().join("scripts/optimize_gpu.py"))
        .arg(root().join("models/tiny-sd"))
        .arg(&fused)
        .arg("--cpu-safe")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (run ./scripts/test): {e}", python.display()));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let unet = std::fs::read(fused.join("unet/model.onnx")).expect("fused unet");
    assert!(
        unet.windows(18).any(|w| w == b"MultiHeadAttention"),
        "attention is fused"
    );
    let plain = paint_pixels(
        &root().join("models/tiny-sd"),
        &dir.path().join("plain.png"),
    );
    let half = paint_pixels(&fused, &dir.path().join("fused.png"));
    assert_eq!(plain.len(), half.len());
    let mean = plain
        .iter()
        .zip(&half)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / plain.len() as f32;
    assert!(mean > 0.0, "float16 is not bit-equal to float32");
    assert!(mean < 2.0 / 255.0, "mean |difference| {mean}");
}

fn generate_error(envs: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_huabi"));
    cmd.args([
        "generate", "--prompt", "moon", "--width", "64", "--height", "64", "--steps", "1", "--out",
    ])
    .arg(dir.path().join("x.png"))
    .env("HUABI__ENGINE__MODEL_DIR", root().join("models/tiny-sd"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("runs");
    assert!(!out.status.success(), "should fail with {envs:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    stderr
}

#[test]
fn runtime_and_device_problems_are_clear_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a library").expect("write");
    let err = generate_error(&[("ORT_DYLIB_PATH", fake.to_str().expect("utf8"))]);
    assert!(
        err.contains("cannot load") && err.contains("scripts/fetch-ort"),
        "{err}"
    );
    let err = generate_error(&[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")]);
    assert!(err.contains("does not exist"), "{err}");
    let err = generate_error(&[("HUABI__ENGINE__DEVICE", "tpu")]);
    assert!(err.contains("use cpu, cuda or cuda:N"), "{err}");
    let err = generate_error(&[("HUABI__ENGINE__CUDA_OPTIONS", "prefer_nhwc")]);
    assert!(err.contains("engine.cuda_options \"prefer_nhwc\""), "{err}");
    // A CUDA request never silently runs on the CPU.
    let cpu_lib = root().join(".ort/cpu/libonnxruntime.so.1.31.1");
    let err = generate_error(&[
        ("HUABI__ENGINE__DEVICE", "cuda"),
        ("ORT_DYLIB_PATH", cpu_lib.to_str().expect("utf8")),
    ]);
    assert!(err.contains("CUDA") || err.contains("cuda"), "{err}");
}

#[tokio::test]
async fn engine_thread_serves_concurrent_callers_and_labels_off_thread() {
    use huabi::engine::EngineHandle;
    use huabi::engine::label::AigcRecord;
    let handle =
        EngineHandle::spawn(config(&root().join("models/tiny-sd"))).expect("engine thread");
    let mut tasks = Vec::new();
    for n in 0..3u64 {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let batch = Batch {
                key: key(SchedulerKind::Euler, 2),
                items: vec![item("moon", n), item("lantern", n + 10)],
            };
            let records = vec![
                AigcRecord::new("huabi-test", &format!("job-{n}")),
                AigcRecord::new("huabi-test", &format!("job-{}", n + 10)),
            ];
            handle.paint(batch, records).await
        }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let (files, timings) = task.await.expect("task").expect("painted");
        assert_eq!(files.len(), 2);
        assert!(timings.denoise > std::time::Duration::ZERO);
        for f in &files {
            assert_eq!(&f.jpeg[..2], &[0xFF, 0xD8]);
            assert!(f.jpeg.len() <= 2 * 1024 * 1024);
        }
        assert!(String::from_utf8_lossy(&files[0].jpeg).contains(&format!("job-{n}")));
    }
    let bad = handle
        .paint(
            Batch {
                key: key(SchedulerKind::Euler, 2),
                items: vec![item("x", 1)],
            },
            vec![],
        )
        .await;
    assert!(matches!(bad, Err(EngineError::Invalid(_))));
    let err =
        EngineHandle::spawn(config(&root().join("no-such-model"))).expect_err("missing model");
    assert!(err.to_string().contains("is not a folder"), "{err}");
}

/// models/tiny-sd with the Chinese BERT encoder and WordPiece tokenizer of tests/fixtures/chinese-encoder in place
/// of CLIP's (the Chinese SD 1.5 variants' layout).
pub fn chinese_model() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("tiny-sd-zh");
    copy(&root().join("models/tiny-sd"), &model);
    for part in ["text_encoder", "tokenizer"] {
        std::fs::remove_dir_all(model.join(part)).expect("rm");
        copy(
            &root().join("tests/fixtures/chinese-encoder").join(part),
            &model.join(part),
        );
    }
    dir
}

#[test]
fn a_chinese_bert_encoder_paints_as_diffusers_does() {
    let fixtures = root().join("tests/fixtures/chinese-encoder");
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("reference.json")).expect("json"),
    )
    .expect("json");
    let dir = chinese_model();
    let model = dir.path().join("tiny-sd-zh");
    let tokenizer =
        huabi::engine::PromptTokenizer::from_dir(&model.join("tokenizer")).expect("tokenizer");
    let prompt = reference["prompt"].as_str().expect("prompt");
    let want_ids: Vec<i64> = reference["input_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_i64().expect("id"))
        .collect();
    assert_eq!(tokenizer.encode(prompt).expect("ids"), want_ids);
    // Without tokenizer.json, BERT's pipeline is built from vocab.txt and gives the same ids.
    std::fs::remove_file(model.join("tokenizer/tokenizer.json")).expect("rm");
    let from_vocab =
        huabi::engine::PromptTokenizer::from_dir(&model.join("tokenizer")).expect("vocab.txt");
    assert_eq!(from_vocab.encode(prompt).expect("ids"), want_ids);
    let catalog = huabi::engine::ModelCatalog::new(&EngineConfig {
        models_dir: dir.path().to_path_buf(),
        model: "tiny-sd-zh".into(),
        ..config(Path::new(""))
    });
    assert!(
        catalog.reads_chinese("tiny-sd-zh"),
        "a Chinese vocabulary reads Chinese"
    );
    assert!(
        !huabi::engine::ModelCatalog::new(&config(Path::new(""))).reads_chinese("tiny-sd"),
        "CLIP's does not"
    );

    let mut pipeline = StableDiffusion::load(&config(&model)).expect("the Chinese model loads");
    let (_, latents) =
        npy::read_f32(&root().join("tests/fixtures/diffusers/init-latents.npy")).expect("latents");
    let batch = Batch {
        key: key(SchedulerKind::Euler, 6),
        items: vec![Item {
            prompt: prompt.into(),
            negative_prompt: reference["negative"].as_str().expect("negative").into(),
            seed: 1,
            guidance: 7.5,
            init_latents: Some(latents),
            init_image: None,
        }],
    };
    let got = pipeline
        .generate(&batch, &mut |_| {})
        .expect("paints")
        .pictures
        .remove(0)
        .rgb;
    let (_, want) = npy::read_f32(&fixtures.join("picture.npy")).expect("reference");
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    eprintln!("Chinese BERT encoder: max |huabi - diffusers| = {worst:e}");
    assert!(worst <= 1e-3, "{worst}");
}
