//! Models and LoRAs: the engine's pictures with kohya and PEFT LoRAs (stacked too), on SD and SDXL layouts, equal
//! diffusers' own torch pipelines with `load_lora_weights` (tests/fixtures/lora, made by scripts/make_models.py);
//! LoRAs that do not fit are refused naming their key; one engine keeps several (model, LoRA set) pipelines.

use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

use huabi::engine::{Batch, BatchKey, Engine, EngineConfig, Item, LoraChoice, SchedulerKind, npy};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn config() -> EngineConfig {
    EngineConfig {
        models_dir: root().join("models"),
        model: "tiny-sd".into(),
        model_dir: PathBuf::new(),
        ..crate::engine::config(&PathBuf::new())
    }
}

/// One engine for the parity tests (ONNX Runtime loads once per process anyway).
static ENGINE: LazyLock<Mutex<Engine>> =
    LazyLock::new(|| Mutex::new(Engine::new(&config()).expect("engine; run scripts/fetch-ort")));

fn lora(name: &str, scale: f32) -> LoraChoice {
    LoraChoice {
        name: name.into(),
        scale,
    }
}

/// The picture `model` with `loras` paints from the fixtures' latents.
fn paint(model: &str, loras: Vec<LoraChoice>, negative: &str, latents: &str) -> Vec<f32> {
    let spec = cases();
    let (_, latents) =
        npy::read_f32(&root().join("tests/fixtures/lora").join(latents)).expect("latents");
    let batch = Batch {
        key: BatchKey {
            model: model.into(),
            loras,
            width: 64,
            height: 64,
            steps: spec["steps"].as_u64().expect("steps") as usize,
            scheduler: SchedulerKind::Euler,
            strength: None,
        },
        items: vec![Item {
            prompt: spec["prompt"].as_str().expect("prompt").into(),
            negative_prompt: negative.into(),
            seed: 7,
            guidance: spec["guidance"].as_f64().expect("guidance") as f32,
            init_latents: Some(latents),
            init_image: None,
        }],
    };
    let mut engine = ENGINE.lock().expect("engine lock");
    engine
        .generate(&batch, &mut |_| {})
        .expect("generates")
        .pictures
        .remove(0)
        .rgb
}

fn cases() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/lora/cases.json")).expect("cases"),
    )
    .expect("json")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

#[test]
fn loras_and_sdxl_match_diffusers_torch_pipelines_within_1e_3() {
    let spec = cases();
    let list = spec["cases"].as_array().expect("cases");
    assert!(list.len() >= 7, "fixtures hold SD and SDXL cases");
    for case in list {
        let name = case["name"].as_str().expect("name");
        let loras = case["loras"]
            .as_array()
            .expect("loras")
            .iter()
            .map(|pair| {
                lora(
                    pair[0].as_str().expect("lora name"),
                    pair[1].as_f64().expect("scale") as f32,
                )
            })
            .collect();
        let got = paint(
            case["model"].as_str().expect("model"),
            loras,
            case["negative"].as_str().expect("negative"),
            case["latents"].as_str().expect("latents"),
        );
        let (shape, want) = npy::read_f32(&root().join(format!("tests/fixtures/lora/{name}.npy")))
            .expect("picture");
        assert_eq!(shape, vec![64, 64, 3]);
        let worst = max_diff(&got, &want);
        eprintln!("{name}: max |huabi - diffusers| = {worst:e}");
        assert!(worst <= 1e-3, "{name}: max |huabi - diffusers| = {worst}");
    }
}

#[test]
fn a_lora_changes_only_its_own_pipeline_and_scale_matters() {
    let base = paint("tiny-sd", vec![], "blurry", "init-tiny-sd.npy");
    let half = paint(
        "tiny-sd",
        vec![lora("tiny-sd-peft", 0.5)],
        "blurry",
        "init-tiny-sd.npy",
    );
    let full = paint(
        "tiny-sd",
        vec![lora("tiny-sd-peft", 1.0)],
        "blurry",
        "init-tiny-sd.npy",
    );
    assert!(
        max_diff(&base, &half) > 1e-2,
        "a LoRA at 0.5 changes the picture"
    );
    assert!(max_diff(&half, &full) > 1e-2, "the scale is applied");
    // The base pipeline still paints the base picture: merged weights went to the LoRA's own sessions.
    let again = paint("tiny-sd", vec![], "blurry", "init-tiny-sd.npy");
    assert_eq!(base, again);
    let engine = ENGINE.lock().expect("engine lock");
    let open = engine.loaded();
    assert!(open.len() >= 3, "{open:?}");
}

#[test]
fn loras_that_do_not_fit_are_refused_naming_the_file_and_key() {
    let catalog = huabi::engine::ModelCatalog::new(&config());
    catalog
        .check(
            "tiny-sd",
            &[lora("tiny-sd-kohya", 1.0), lora("tiny-sd-peft", 0.5)],
        )
        .expect("the SD LoRAs fit tiny-sd");
    catalog
        .check("tiny-sdxl", &[lora("tiny-sdxl-kohya", 1.0)])
        .expect("the SDXL LoRA fits tiny-sdxl");
    let err = catalog
        .check("tiny-sd", &[lora("tiny-sdxl-peft", 1.0)])
        .expect_err("an SDXL LoRA does not fit an SD model")
        .to_string();
    assert!(err.contains("tiny-sdxl-peft.safetensors"), "{err}");
    assert!(err.contains("key "), "{err}");
    let err = catalog
        .check("tiny-sdxl", &[lora("tiny-sd-kohya", 1.0)])
        .expect_err("an SD LoRA does not fit SDXL")
        .to_string();
    assert!(
        err.contains("tiny-sd-kohya.safetensors") && err.contains("lora_"),
        "{err}"
    );
    let err = catalog
        .check("tiny-sd", &[lora("no-such-lora", 1.0)])
        .expect_err("missing")
        .to_string();
    assert!(err.contains("no-such-lora"), "{err}");
    let err = catalog
        .check("no-such-model", &[])
        .expect_err("missing")
        .to_string();
    assert!(
        err.contains("no-such-model") && err.contains("tiny-sd"),
        "{err}"
    );
}

/// Copies models/tiny-sd to `dir/name` with the UNet's weights moved to an external data file, the layout every
/// SD 1.5 UNet over 2 GB has.
fn external_data_copy(dir: &std::path::Path, name: &str) {
    use huabi::engine::onnx::{ExternalData, GraphEdit, OnnxModel};
    let source = root().join("models/tiny-sd");
    let target = dir.join(name);
    for entry in walk(&source) {
        let relative = entry.strip_prefix(&source).expect("inside");
        let to = target.join(relative);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&entry, &to).expect("copy");
    }
    let unet = OnnxModel::open(&source.join("unet/model.onnx")).expect("unet");
    let mut data = Vec::new();
    let mut edit = GraphEdit::default();
    for (i, init) in unet.initializers.iter().enumerate() {
        if init.dtype != huabi::engine::onnx::DataType::F32 || init.is_empty() {
            continue;
        }
        let offset = data.len() as u64;
        for v in unet.read_f32(init).expect("values") {
            data.extend_from_slice(&v.to_le_bytes());
        }
        let length = data.len() as u64 - offset;
        edit.revalue.push((
            i,
            ExternalData {
                location: "weights.pb".into(),
                offset,
                length,
            },
        ));
    }
    std::fs::write(target.join("unet/weights.pb"), data).expect("weights");
    std::fs::write(
        target.join("unet/model.onnx"),
        unet.edited(&edit).expect("edit"),
    )
    .expect("model");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_model_with_external_weights_takes_loras_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    external_data_copy(dir.path(), "tiny-sd-external");
    std::fs::create_dir_all(dir.path().join("loras")).expect("mkdir");
    std::fs::copy(
        root().join("models/loras/tiny-sd-peft.safetensors"),
        dir.path().join("loras/tiny-sd-peft.safetensors"),
    )
    .expect("copy");
    let unet =
        huabi::engine::onnx::OnnxModel::open(&dir.path().join("tiny-sd-external/unet/model.onnx"))
            .expect("unet");
    assert!(unet.has_external_data());
    let mut engine = Engine::new(&EngineConfig {
        models_dir: dir.path().to_path_buf(),
        ..config()
    })
    .expect("engine");
    let (_, latents) =
        npy::read_f32(&root().join("tests/fixtures/lora/init-tiny-sd.npy")).expect("latents");
    let batch = |loras| Batch {
        key: BatchKey {
            model: "tiny-sd-external".into(),
            loras,
            width: 64,
            height: 64,
            steps: 4,
            scheduler: SchedulerKind::Euler,
            strength: None,
        },
        items: vec![Item {
            prompt: "a photo of the moon, mid-autumn festival".into(),
            negative_prompt: "blurry".into(),
            seed: 7,
            guidance: 7.5,
            init_latents: Some(latents.clone()),
            init_image: None,
        }],
    };
    for (loras, reference) in [
        (vec![], "tiny-sd-base"),
        (vec![lora("tiny-sd-peft", 1.0)], "tiny-sd-peft"),
    ] {
        let got = engine
            .generate(&batch(loras), &mut |_| {})
            .expect("generates")
            .pictures
            .remove(0)
            .rgb;
        let (_, want) = npy::read_f32(&root().join(format!("tests/fixtures/lora/{reference}.npy")))
            .expect("reference");
        let worst = max_diff(&got, &want);
        assert!(worst <= 1e-3, "{reference} from external weights: {worst}");
    }
}

#[test]
fn pipelines_share_unchanged_sessions_and_stay_within_the_memory_budget() {
    let mut engine = Engine::new(&config()).expect("engine");
    engine.open("tiny-sd", &[]).expect("plain");
    let plain = engine.open_bytes();
    // tiny-sd-peft changes the UNet and the text encoder: the VAE decoder is shared.
    let report = engine
        .open("tiny-sd", &[lora("tiny-sd-peft", 1.0)])
        .expect("peft");
    let vae = std::fs::metadata(root().join("models/tiny-sd/vae_decoder/model.onnx"))
        .expect("vae")
        .len();
    assert!(report.added_bytes > 0 && report.merged_layers > 0);
    assert_eq!(engine.open_bytes(), plain + report.added_bytes);
    assert!(
        report.added_bytes + vae <= plain + 4096,
        "the VAE was not opened twice"
    );
    assert!(
        engine
            .open("tiny-sd", &[lora("tiny-sd-peft", 1.0)])
            .expect("again")
            .cached
    );
    assert_eq!(engine.loaded().len(), 2);

    // A budget of 1 MiB holds one pipeline at a time: the least recently used one is closed.
    let mut small = Engine::new(&EngineConfig {
        memory_budget_mb: 1,
        ..config()
    })
    .expect("engine");
    small.open("tiny-sd", &[]).expect("plain");
    small
        .open("tiny-sd", &[lora("tiny-sd-kohya", 0.5)])
        .expect("kohya");
    assert_eq!(
        small.loaded(),
        vec![("tiny-sd".to_string(), vec![lora("tiny-sd-kohya", 0.5)])]
    );
    small.open("tiny-sdxl", &[]).expect("sdxl");
    assert_eq!(small.loaded(), vec![("tiny-sdxl".to_string(), vec![])]);
}
