//! Usage end to end on both databases: a campaign request, a refused one outside its window, a blocked one and free
//! prompts go through `/webhook/wechat`, are painted and delivered to the API stand-in, and `usage_daily` (and
//! `huabi usage --format json`) counts each of them.

use std::time::{Duration, Instant};

use crate::campaigns::shifted;
use crate::delivery::{delivering, spawn_delivering, start_standin, wait_for};
use crate::helpers::*;

async fn usage_counts_every_decision(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    for c in [
        shifted("now", "中秋", -1, 1),
        shifted("later", "春节", 3, 5),
    ] {
        std::fs::write(dir.path().join(format!("{}.toml", c.name)), c.to_toml()).expect("write");
    }
    let seed_dir = dir.path().display().to_string();
    let (stand_in, base) = start_standin(Default::default()).await;
    let mut env = delivering(&base, "0");
    env.push(("HUABI__CAMPAIGNS__SEED_DIR", seed_dir));
    let app = spawn_delivering(backend, &env, &[]).await;
    for (n, text) in [
        "中秋 嫦娥抱玉兔",
        "中秋 月饼",
        "春节 灯笼",
        "中秋 暴 力",
        "桂花",
        "帮助",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, _) = app
            .post_plain(&text_xml(&format!("o_usage_{n}"), 9900 + n as u64, text))
            .await;
        assert_eq!(status, 200);
    }
    wait_for(&stand_in, 60, "3 pictures", |r| r.sends.len() >= 3).await;
    let today = huabi::limits::shanghai_day(time::OffsetDateTime::now_utc()).to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = app.store.usage(&today).await.expect("usage");
        if rows.iter().map(|r| r.delivered).sum::<i64>() == 3 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by = |campaign: &str| {
        rows.iter()
            .find(|r| r.campaign == campaign)
            .unwrap_or_else(|| panic!("{campaign}: {rows:?}"))
    };
    let now = by("now");
    assert_eq!(
        (
            now.requests,
            now.admitted,
            now.blocked,
            now.limited,
            now.painted,
            now.delivered,
            now.failed
        ),
        (3, 2, 1, 0, 2, 2, 0),
        "{now:?}"
    );
    assert!(
        now.p50_secs.is_some_and(|s| s > 0.0 && s < 60.0) && now.p95_secs >= now.p50_secs,
        "{now:?}"
    );
    let later = by("later");
    assert_eq!(
        (later.requests, later.admitted),
        (1, 0),
        "outside its window: asked, not admitted"
    );
    let free = by("");
    assert_eq!(
        (free.requests, free.admitted, free.delivered),
        (1, 1, 1),
        "帮助 is not a request: {free:?}"
    );
    assert!(rows.iter().all(|r| r.day == today && r.channel == "wechat"));
}

on_both_databases!(usage_counts_every_decision);

#[tokio::test]
async fn huabi_usage_prints_json_table_and_csv() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, _) = app.post_plain(&text_xml("o_cli", 1, "月亮")).await;
    assert_eq!(status, 200);
    let db_url = app._db.url.clone();
    let usage_by = |format: &str, by: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_huabi"))
            .args(["usage", "--since", "7d", "--format", format, "--by", by])
            .env("HUABI__DATABASE__URL", &db_url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let usage = |format: &str| usage_by(format, "campaign");
    let json: serde_json::Value = serde_json::from_str(&usage("json")).expect("json");
    assert_eq!(json[0]["requests"], 1);
    assert_eq!(json[0]["admitted"], 1);
    assert_eq!(
        (json[0]["channel"].as_str(), json[0]["account"].as_str()),
        (Some("wechat"), Some("default"))
    );
    assert!(usage("table").starts_with("day"));
    assert!(usage("csv").starts_with("day,campaign,channel,account,requests"));
    let by_channel: serde_json::Value =
        serde_json::from_str(&usage_by("json", "channel")).expect("json");
    assert_eq!(
        (
            by_channel[0]["campaign"].as_str(),
            by_channel[0]["account"].as_str(),
            by_channel[0]["requests"].as_i64()
        ),
        (Some("*"), Some("*"), Some(1))
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_huabi"))
        .args(["usage", "--since", "last week"])
        .env("HUABI__DATABASE__URL", &db_url)
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));
}
