//! Campaigns on both databases: stored with revisions, seeded at start, rendered into English prompts inside their
//! window and refused politely outside it; `huabi campaign import|list|export`.

use std::path::Path;

use huabi::campaign::{self, Campaign};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::*;

fn shipped() -> Campaign {
    campaign::load_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("config/campaigns/mid-autumn.toml"),
    )
    .expect("shipped campaign")
}

/// The shipped campaign, renamed, shrunk to 64² in 2 steps, and moved to a window `from_days`..`to_days` around now, with its own keyword.
pub fn shifted(name: &str, keyword: &str, from_days: i64, to_days: i64) -> Campaign {
    let now = OffsetDateTime::now_utc();
    let at = |days| {
        (now + time::Duration::days(days))
            .format(&Rfc3339)
            .expect("format")
    };
    Campaign {
        name: name.into(),
        keywords: vec![keyword.into()],
        starts_at: at(from_days),
        ends_at: at(to_days),
        // Small and quick, for the tests that paint.
        width: 64,
        height: 64,
        steps: 2,
        ..shipped()
    }
}

async fn campaigns_are_stored_with_revisions(backend: Backend) {
    let app = spawn_app(backend).await;
    let store = &*app.store;
    let c = shifted("spring", "春节", -1, 1);
    assert_eq!(
        campaign::save_all(store, std::slice::from_ref(&c), "seed", true)
            .await
            .expect("save"),
        vec!["spring"]
    );
    assert!(
        campaign::save_all(store, std::slice::from_ref(&c), "seed", true)
            .await
            .expect("save")
            .is_empty()
    );
    assert!(
        campaign::save_all(store, std::slice::from_ref(&c), "admin", false)
            .await
            .expect("save")
            .is_empty(),
        "unchanged"
    );
    let changed = Campaign {
        template: "a lunar new year painting of {subject}".into(),
        ..c
    };
    assert_eq!(
        campaign::save_all(store, std::slice::from_ref(&changed), "alice", false)
            .await
            .expect("save"),
        vec!["spring"]
    );
    let revisions = store.campaign_revisions("spring").await.expect("revisions");
    assert_eq!(
        revisions
            .iter()
            .map(|r| r.changed_by.as_str())
            .collect::<Vec<_>>(),
        vec!["seed", "alice"]
    );
    let loaded = campaign::load_stored(store).await.expect("load");
    let spring = loaded
        .all()
        .iter()
        .find(|c| c.name == "spring")
        .expect("stored");
    assert_eq!(spring, &changed);
    assert!(
        loaded.all().iter().any(|c| c.name == "mid-autumn"),
        "the seed folder was imported at start"
    );
}

async fn campaign_requests_inside_and_outside_their_window(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    for c in [
        shifted("now", "中秋", -1, 1),
        shifted("later", "春节", 3, 5),
        shifted("over", "端午", -5, -3),
    ] {
        std::fs::write(dir.path().join(format!("{}.toml", c.name)), c.to_toml()).expect("write");
    }
    let seed_dir = dir.path().display().to_string();
    let app = spawn_app_with(backend, &[("HUABI__CAMPAIGNS__SEED_DIR", &seed_dir)]).await;
    let content = |body: &str| {
        huabi::channel::wechat::xml::parse(body.as_bytes())
            .expect("xml")
            .get("Content")
            .unwrap_or_default()
            .to_string()
    };
    let (_, body) = app.post_plain(&text_xml("o_c", 1, "中秋 嫦娥抱玉兔")).await;
    assert_eq!(content(&body), shipped().replies.received);
    let (_, body) = app.post_plain(&text_xml("o_c", 2, "春节 灯笼")).await;
    assert!(content(&body).contains("还没开始"), "{body}");
    let (_, body) = app.post_plain(&text_xml("o_c", 3, "端午 龙舟")).await;
    assert!(content(&body).contains("结束"), "{body}");
    assert_eq!(
        app.counts().await.jobs,
        1,
        "only the running campaign paints"
    );
    let job = &app
        .store
        .lease_jobs("t", &crate::helpers::paints_default(), 1, 30.0, 3)
        .await
        .expect("lease")[0];
    assert!(
        job.prompt.starts_with("a festive Mid-Autumn Festival painting of Chang'e the moon goddess in flowing silk robes holding the white jade rabbit"),
        "{}",
        job.prompt
    );
    assert_eq!(
        (job.scheduler.as_str(), job.steps, job.width),
        ("euler_a", 2, 64)
    );
}

on_both_databases!(
    campaigns_are_stored_with_revisions,
    campaign_requests_inside_and_outside_their_window
);

#[tokio::test]
async fn the_campaign_cli_imports_lists_and_exports() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("spring.toml");
    std::fs::write(&file, shifted("spring", "春节", -1, 1).to_toml()).expect("write");
    let huabi = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_huabi"))
            .args(args)
            .env("HUABI__DATABASE__URL", &db.url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run huabi");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(
        huabi(&[
            "campaign",
            "import",
            file.to_str().expect("path"),
            "--by",
            "alice"
        ])
        .trim(),
        "spring: stored"
    );
    assert_eq!(
        huabi(&["campaign", "import", file.to_str().expect("path")]).trim(),
        "spring: unchanged"
    );
    let list = huabi(&["campaign", "list"]);
    assert!(
        list.contains("spring") && list.contains("running") && list.contains("by alice"),
        "{list}"
    );
    let out = dir.path().join("export");
    huabi(&["campaign", "export", "--out", out.to_str().expect("path")]);
    let exported = campaign::load_file(&out.join("spring.toml")).expect("exported file loads");
    assert_eq!(exported.name, "spring");
    assert_eq!(exported.keywords, vec!["春节".to_string()]);
    assert_eq!(exported.glossary, shipped().glossary);
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "name = \"x\"").expect("write");
    let failed = std::process::Command::new(env!("CARGO_BIN_EXE_huabi"))
        .args(["campaign", "import", broken.to_str().expect("path")])
        .env("HUABI__DATABASE__URL", &db.url)
        .output()
        .expect("run");
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("broken.toml"));
}
