//! `huabi doctor` against a real database and the WeChat API stand-in: a healthy deployment passes; an unmigrated
//! database and refused credentials fail with what to fix, and the exit status says so.

use crate::delivery::{APP_SECRET, start_standin};
use crate::helpers::*;

/// Runs `huabi doctor --json --no-load` with `env`; its exit success and checks.
async fn doctor(db_url: &str, env: &[(&str, &str)]) -> (bool, Vec<serde_json::Value>) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_huabi"));
    cmd.args(["doctor", "--json", "--no-load"])
        .env("HUABI__DATABASE__URL", db_url)
        .env("HUABI__WECHAT__TOKEN", TOKEN)
        .env("HUABI__WECHAT__APP_ID", APP_ID)
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("run huabi doctor");
    let checks: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("doctor prints JSON");
    (out.status.success(), checks)
}

fn verdict<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a str {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["verdict"].as_str())
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

#[tokio::test]
async fn doctor_passes_a_healthy_deployment_and_names_what_is_broken() {
    let db = TestDb::new(Backend::Postgres).await;
    let (_stand_in, base) = start_standin(Default::default()).await;
    let api = [
        ("HUABI__WECHAT__API_BASE", base.as_str()),
        ("HUABI__WECHAT__APP_SECRET", APP_SECRET),
    ];
    let (ok, checks) = doctor(&db.url, &api).await;
    assert!(!ok, "a fresh database is not migrated");
    assert_eq!(verdict(&checks, "database"), "ok");
    assert_eq!(verdict(&checks, "migrations"), "fail");

    let migrate = tokio::process::Command::new(env!("CARGO_BIN_EXE_huabi"))
        .arg("migrate")
        .env("HUABI__DATABASE__URL", &db.url)
        .output()
        .await
        .expect("migrate");
    assert!(migrate.status.success());
    let (ok, checks) = doctor(&db.url, &api).await;
    assert!(ok, "{checks:#?}");
    for name in ["migrations", "clock", "wechat/default", "model tiny-sd"] {
        assert_eq!(verdict(&checks, name), "ok", "{checks:#?}");
    }

    let wrong = [
        ("HUABI__WECHAT__API_BASE", base.as_str()),
        ("HUABI__WECHAT__APP_SECRET", "not-the-secret"),
    ];
    let (ok, checks) = doctor(&db.url, &wrong).await;
    assert!(!ok);
    let wechat = checks
        .iter()
        .find(|c| c["name"] == "wechat/default" && c["verdict"] == "fail")
        .expect("the refused credentials fail");
    assert!(
        wechat["fix"]
            .as_str()
            .is_some_and(|f| f.contains("APP_SECRET"))
    );

    let (ok, checks) = doctor("postgres://postgres@127.0.0.1:1/nowhere", &api).await;
    assert!(!ok);
    assert_eq!(verdict(&checks, "database"), "fail");
}

/// Every metric the shipped Grafana dashboard queries is one huabi exports (named in the source).
#[test]
fn the_dashboard_queries_only_metrics_huabi_exports() {
    let dashboard =
        std::fs::read_to_string("deploy/grafana/huabi.json").expect("deploy/grafana/huabi.json");
    let mut source = String::new();
    let mut dirs = vec![std::path::PathBuf::from("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(&path).expect("source"));
            }
        }
    }
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("huabi_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let base = name.strip_suffix("_count").unwrap_or(name);
        assert!(
            source.contains(&format!("\"{base}\"")),
            "the dashboard queries {name}, which huabi does not export"
        );
    }
}
