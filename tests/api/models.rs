//! Campaigns with their own models and LoRAs, end to end on both databases: each campaign's jobs carry its model
//! and LoRA set, a worker paints them in batches that never mix two sets, a job whose model no worker paints waits
//! (and `进度` says so) until one does; `huabi models`, `huabi generate --model --lora` and the import check.

use std::path::Path;

use huabi::campaign::Campaign;
use huabi::engine::{EngineHandle, LoraChoice};
use huabi::queue::{Outcome, Worker};
use huabi::store::{JobRow, Store};

use crate::campaigns::shifted;
use crate::helpers::*;

fn models_dir() -> String {
    format!("{}/models", env!("CARGO_MANIFEST_DIR"))
}

fn lora(name: &str, scale: f32) -> LoraChoice {
    LoraChoice {
        name: name.into(),
        scale,
    }
}

/// Writes campaigns into a fresh seed folder.
fn seed_folder(campaigns: &[Campaign]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for c in campaigns {
        std::fs::write(dir.path().join(format!("{}.toml", c.name)), c.to_toml()).expect("write");
    }
    dir
}

/// Small, quick paintings, limits out of the way, the catalogue in models/.
fn env_for<'a>(seed_dir: &'a str, allow: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("HUABI__CAMPAIGNS__SEED_DIR", seed_dir),
        ("HUABI__ENGINE__MODELS", allow),
        ("HUABI__ENGINE__THREADS", "2"),
        ("HUABI__JOBS__WIDTH", "64"),
        ("HUABI__JOBS__HEIGHT", "64"),
        ("HUABI__JOBS__STEPS", "2"),
        ("HUABI__DELIVERY__FAST_PATH_SECS", "0"),
    ]
}

/// A worker on the app's database with `allow` as its model allow-list.
fn worker(
    store: std::sync::Arc<dyn Store>,
    db_url: &str,
    extra: &[(&str, &str)],
    name: &str,
) -> Worker {
    let mut env = extra.to_vec();
    let models = models_dir();
    env.push(("HUABI__ENGINE__MODELS_DIR", &models));
    let s = settings(db_url, &env);
    let engine = EngineHandle::spawn(s.engine.clone()).expect("engine");
    Worker::new(
        store,
        engine,
        name.into(),
        s.jobs.clone(),
        4,
        "huabi-test".into(),
        tokio::sync::broadcast::channel(16).0,
    )
}

async fn jobs_of(store: &dyn Store, campaign: Option<&str>) -> Vec<JobRow> {
    store
        .recent_jobs(100)
        .await
        .expect("jobs")
        .into_iter()
        .filter(|j| j.campaign.as_deref() == campaign)
        .collect()
}

async fn campaigns_paint_with_their_own_loras_and_batches_never_mix(backend: Backend) {
    let a = Campaign {
        loras: vec![lora("tiny-sd-kohya", 0.8)],
        ..shifted("lora-a", "甲", -1, 1)
    };
    let b = Campaign {
        loras: vec![lora("tiny-sd-peft", 1.0), lora("tiny-sd-kohya", 0.3)],
        ..shifted("lora-b", "乙", -1, 1)
    };
    let seeds = seed_folder(&[a, b]);
    let seed_dir = seeds.path().display().to_string();
    let models = models_dir();
    let mut extra = env_for(&seed_dir, "");
    extra.push(("HUABI__ENGINE__MODELS_DIR", &models));
    let app = spawn_app_with(backend, &extra).await;
    // Interleaved: A, B, free, A, B, free, A, B, free — nine followers, nine jobs.
    let mut msg_id = 100;
    for n in 0..3 {
        for (who, text) in [("a", "甲 月亮"), ("b", "乙 月亮"), ("f", "月亮")] {
            msg_id += 1;
            let (status, body) = app
                .post_plain(&text_xml(&format!("o_{who}{n}"), msg_id, text))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    assert_eq!(app.counts().await.jobs, 9);
    let w = worker(app.store.clone(), &app._db.url, &extra, "w-loras");
    let mut batches = 0;
    while let Outcome::Painted { done, failed } = w.run_once().await.expect("run") {
        assert_eq!(
            (done, failed),
            (3, 0),
            "each batch is one LoRA set's three jobs"
        );
        batches += 1;
    }
    assert_eq!(batches, 3, "three LoRA sets, three batches");
    for (campaign, loras) in [
        (Some("lora-a"), r#"[{"name":"tiny-sd-kohya","scale":0.8}]"#),
        (
            Some("lora-b"),
            r#"[{"name":"tiny-sd-kohya","scale":0.3},{"name":"tiny-sd-peft","scale":1.0}]"#,
        ),
        (None, "[]"),
    ] {
        let jobs = jobs_of(&*app.store, campaign).await;
        assert_eq!(jobs.len(), 3, "{campaign:?}");
        for job in jobs {
            assert_eq!(job.model, "tiny-sd");
            assert_eq!(job.loras, loras, "{campaign:?}");
            assert_eq!(job.status, "done");
            assert_eq!(job.batch_size, Some(3), "{campaign:?} was painted alone");
            let jpeg = app
                .store
                .job_image(job.id)
                .await
                .expect("image")
                .expect("stored");
            assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        }
    }
}

async fn a_job_whose_model_no_worker_paints_waits_and_says_so(backend: Backend) {
    let xl = Campaign {
        model: "tiny-sdxl".into(),
        loras: vec![lora("tiny-sdxl-kohya", 1.0)],
        ..shifted("xl", "丙", -1, 1)
    };
    let seeds = seed_folder(&[xl]);
    let seed_dir = seeds.path().display().to_string();
    let models = models_dir();
    let mut extra = env_for(&seed_dir, "tiny-sd");
    extra.push(("HUABI__ENGINE__MODELS_DIR", &models));
    let app = spawn_app_with(backend, &extra).await;
    let (_, _) = app.post_plain(&text_xml("o_x", 1, "丙 月亮")).await;
    let (_, _) = app.post_plain(&text_xml("o_y", 2, "月亮")).await;
    let sd_only = worker(app.store.clone(), &app._db.url, &extra, "w-sd");
    assert_eq!(
        sd_only.run_once().await.expect("run"),
        Outcome::Painted { done: 1, failed: 0 }
    );
    assert_eq!(
        sd_only.run_once().await.expect("run"),
        Outcome::Empty,
        "it never leases the SDXL job"
    );
    let xl_job = jobs_of(&*app.store, Some("xl")).await.remove(0);
    assert_eq!(
        (xl_job.model.as_str(), xl_job.status.as_str()),
        ("tiny-sdxl", "queued")
    );

    let reply = |body: &str| {
        huabi::channel::wechat::xml::parse(body.as_bytes())
            .expect("xml")
            .get("Content")
            .unwrap_or_default()
            .to_string()
    };
    let (_, body) = app.post_plain(&text_xml("o_x", 3, "进度")).await;
    let status = reply(&body);
    assert!(
        status.contains("你有 1 张") && status.contains("tiny-sdxl"),
        "{status}"
    );
    let queue = app.store.queue_by_model().await.expect("queue");
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(
        (queue[0].model.as_str(), queue[0].queued, queue[0].workers),
        ("tiny-sdxl", 1, 0)
    );

    // A node that paints SDXL comes up: the job is painted, never failed for the wait.
    let mut all = extra.clone();
    all.retain(|(k, _)| *k != "HUABI__ENGINE__MODELS");
    let any = worker(app.store.clone(), &app._db.url, &all, "w-all");
    assert_eq!(
        any.run_once().await.expect("run"),
        Outcome::Painted { done: 1, failed: 0 }
    );
    let (_, body) = app.post_plain(&text_xml("o_x", 4, "进度")).await;
    assert!(!reply(&body).contains("tiny-sdxl"), "{}", reply(&body));
    assert!(app.store.queue_by_model().await.expect("queue").is_empty());
}

on_both_databases!(
    campaigns_paint_with_their_own_loras_and_batches_never_mix,
    a_job_whose_model_no_worker_paints_waits_and_says_so
);

fn huabi(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_huabi"));
    cmd.args(args)
        .env("HUABI__ENGINE__MODELS_DIR", models_dir())
        .env("HUABI__ENGINE__THREADS", "2")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run huabi")
}

#[tokio::test]
async fn import_refuses_a_lora_that_does_not_fit_naming_file_and_key() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = Campaign {
        loras: vec![lora("tiny-sdxl-peft", 1.0)],
        ..shifted("misfit", "错", -1, 1)
    };
    let file = dir.path().join("misfit.toml");
    std::fs::write(&file, bad.to_toml()).expect("write");
    let out = huabi(
        &["campaign", "import", file.to_str().expect("path")],
        &[("HUABI__DATABASE__URL", &db.url)],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("misfit")
            && err.contains("tiny-sdxl-peft.safetensors")
            && err.contains("key "),
        "{err}"
    );
    let missing = Campaign {
        model: "no-such-model".into(),
        ..shifted("nomodel", "无", -1, 1)
    };
    std::fs::write(&file, missing.to_toml()).expect("write");
    let out = huabi(
        &["campaign", "import", file.to_str().expect("path")],
        &[("HUABI__DATABASE__URL", &db.url)],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model"));
    let out = huabi(
        &[
            "campaign",
            "import",
            file.to_str().expect("path"),
            "--skip-model-check",
        ],
        &[("HUABI__DATABASE__URL", &db.url)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A fitting one is stored, and `huabi models` shows who uses what.
    let good = Campaign {
        loras: vec![lora("tiny-sd-kohya", 0.8)],
        ..shifted("fits", "好", -1, 1)
    };
    std::fs::write(&file, good.to_toml()).expect("write");
    let out = huabi(
        &["campaign", "import", file.to_str().expect("path")],
        &[("HUABI__DATABASE__URL", &db.url)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = huabi(
        &["models", "--format", "json"],
        &[("HUABI__DATABASE__URL", &db.url)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let model = |name: &str| {
        report["models"]
            .as_array()
            .expect("models")
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .expect(name)
    };
    let sd = model("tiny-sd");
    assert_eq!(sd["architecture"], "sd");
    assert_eq!(sd["precision"], "fp32");
    assert_eq!(sd["problem"], serde_json::Value::Null, "it loads");
    assert!(
        sd["campaigns"]
            .as_array()
            .expect("campaigns")
            .iter()
            .any(|c| c == "fits")
    );
    assert_eq!(model("tiny-sdxl")["architecture"], "sdxl");
    let kohya = report["loras"]
        .as_array()
        .expect("loras")
        .iter()
        .find(|l| l["name"] == "tiny-sd-kohya")
        .cloned()
        .expect("kohya");
    assert_eq!(kohya["format"], "kohya");
    assert_eq!(kohya["rank"], 4);
    assert_eq!(kohya["fits"], serde_json::json!(["tiny-sd"]));
    assert_eq!(kohya["campaigns"], serde_json::json!(["fits"]));
    let table = huabi(
        &["models", "--no-load"],
        &[("HUABI__DATABASE__URL", &db.url)],
    );
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("tiny-sd (default)") && table.contains("tiny-sdxl-kohya"),
        "{table}"
    );
}

#[test]
fn generate_paints_with_a_model_and_stacked_loras() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("moon.png");
    let lora_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/loras/tiny-sdxl-peft.safetensors");
    let out = huabi(
        &[
            "generate",
            "--prompt",
            "the moon",
            "--out",
            out_file.to_str().expect("path"),
            "--model",
            "tiny-sdxl",
            "--lora",
            "tiny-sdxl-kohya:0.5",
            "--lora",
            lora_path.to_str().expect("path"),
            "--steps",
            "2",
            "--width",
            "64",
            "--height",
            "64",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("LoRAs:") && stdout.contains("layers merged"),
        "{stdout}"
    );
    assert_eq!(&std::fs::read(&out_file).expect("png")[1..4], b"PNG");
    let bad = huabi(
        &[
            "generate",
            "--prompt",
            "x",
            "--out",
            out_file.to_str().expect("path"),
            "--lora",
            "tiny-sd-kohya:lots",
        ],
        &[],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("scale"));
    let misfit = huabi(
        &[
            "generate",
            "--prompt",
            "x",
            "--out",
            out_file.to_str().expect("path"),
            "--model",
            "tiny-sdxl",
            "--lora",
            "tiny-sd-peft",
            "--steps",
            "1",
            "--width",
            "64",
            "--height",
            "64",
        ],
        &[],
    );
    assert!(!misfit.status.success());
    assert!(String::from_utf8_lossy(&misfit.stderr).contains("tiny-sd-peft.safetensors"));
}
