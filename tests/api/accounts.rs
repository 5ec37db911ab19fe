//! Several WeChat accounts in one deployment: each has its own webhook (`/webhook/wechat/{name}`), its messages,
//! jobs and limits are its own, and — the hazard this guards against — each account's pictures go out through
//! its own credentials and API, never another account's. On PostgreSQL and SQLite.

use std::time::Duration;

use huabi::channel::wechat::signature;
use huabi::standin::{StandIn, StandInOptions};

use crate::delivery::{delivering, images_per_user, spawn_delivering, start_standin, wait_for};
use crate::helpers::*;

/// The second account: its own Token, AppID and AppSecret.
const B_TOKEN: &str = "brand-b-token";
const B_APP_ID: &str = "wx_brand_b";
const B_SECRET: &str = "brand-b-secret";

/// Starts a stand-in that knows only account B's credentials.
async fn start_b_standin() -> (StandIn, String) {
    crate::delivery::serve_standin(StandInOptions {
        app_id: B_APP_ID.into(),
        secret: B_SECRET.into(),
        ..StandInOptions::default()
    })
    .await
}

/// POSTs a plaintext message signed with `token` to `path`.
async fn post_signed(app: &TestApp, path: &str, token: &str, body: &str) -> (u16, String) {
    let ts = now().to_string();
    let query = [
        ("signature", signature::sign(&[token, &ts, "n1"])),
        ("timestamp", ts),
        ("nonce", "n1".to_string()),
    ];
    let resp = app
        .client
        .post(format!("http://{}{path}", app.addr))
        .query(&query)
        .body(body.to_string())
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

async fn each_account_delivers_through_its_own_credentials(backend: Backend) {
    let (a, a_base) = start_standin(StandInOptions::default()).await;
    let (b, b_base) = start_b_standin().await;
    let app = spawn_delivering(
        backend,
        &delivering(&a_base, "0"),
        &[
            ("HUABI__CHANNELS__WECHAT__BRAND_B__TOKEN", B_TOKEN),
            ("HUABI__CHANNELS__WECHAT__BRAND_B__APP_ID", B_APP_ID),
            ("HUABI__CHANNELS__WECHAT__BRAND_B__APP_SECRET", B_SECRET),
            ("HUABI__CHANNELS__WECHAT__BRAND_B__API_BASE", &b_base),
        ],
    )
    .await;
    // One follower id on both accounts, even the same MsgId: two accounts, two messages, two pictures.
    let message = text_xml("o_same", 7100, "嫦娥抱玉兔");
    let (status, body) = post_signed(&app, "/webhook/wechat", TOKEN, &message).await;
    assert_eq!((status, body.contains("收到")), (200, true), "{body}");
    let (status, body) = post_signed(&app, "/webhook/wechat/brand_b", B_TOKEN, &message).await;
    assert_eq!((status, body.contains("收到")), (200, true), "{body}");
    let only_b = text_xml("o_b_only", 7101, "月下的桂花树");
    let (status, _) = post_signed(&app, "/webhook/wechat/brand_b", B_TOKEN, &only_b).await;
    assert_eq!(status, 200);
    // Each account's Token is its own: B's signature does not open A's webhook, nor A's B's.
    let (status, _) = post_signed(&app, "/webhook/wechat", B_TOKEN, &only_b).await;
    assert_eq!(status, 401);
    let (status, _) = post_signed(&app, "/webhook/wechat/brand_b", TOKEN, &message).await;
    assert_eq!(status, 401);
    let (status, _) = post_signed(&app, "/webhook/wechat/nobody", TOKEN, &message).await;
    assert_eq!(status, 404);

    let b_record = wait_for(&b, 60, "two pictures through B", |r| r.sends.len() >= 2).await;
    let a_record = wait_for(&a, 60, "one picture through A", |r| !r.sends.is_empty()).await;
    assert_eq!(
        images_per_user(&a_record),
        [("o_same".to_string(), 1)].into()
    );
    assert_eq!(
        images_per_user(&b_record),
        [("o_same".to_string(), 1), ("o_b_only".to_string(), 1)].into()
    );
    assert!(a_record.refused.is_empty() && b_record.refused.is_empty());
    assert_eq!((a_record.tokens_issued, b_record.tokens_issued), (1, 1));

    // Stored under each account's name; the deliverer's writes land a moment after the stand-in's record.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = app.store.recent_jobs(10).await.expect("jobs");
        let mut accounts: Vec<(String, String)> = jobs
            .iter()
            .map(|j| (j.account.clone(), j.status.to_string()))
            .collect();
        accounts.sort();
        let expected = vec![
            ("brand_b".to_string(), "delivered".to_string()),
            ("brand_b".to_string(), "delivered".to_string()),
            ("default".to_string(), "delivered".to_string()),
        ];
        if accounts == expected {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{accounts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (a.record().sends.len(), b.record().sends.len()),
        (1, 2),
        "nothing sent twice"
    );
    // Usage is per account, and sums per platform.
    let rows = app.store.usage("2000-01-01").await.expect("usage");
    let delivered = |account: &str| -> i64 {
        rows.iter()
            .filter(|r| r.channel == "wechat" && r.account == account)
            .map(|r| r.delivered)
            .sum()
    };
    assert_eq!((delivered("default"), delivered("brand_b")), (1, 2));
    let waits = app.store.delivery_waits("2000-01-01").await.expect("waits");
    let by_channel = huabi::usage::group(rows, &waits, huabi::usage::UsageBy::Channel);
    assert_eq!(by_channel.len(), 1);
    assert_eq!(
        (by_channel[0].account.as_str(), by_channel[0].delivered),
        ("*", 3)
    );
    assert!(by_channel[0].p95_secs.is_some());
}

async fn without_a_default_account_the_plain_webhook_is_404(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("HUABI__WECHAT__TOKEN", ""),
            ("HUABI__WECHAT__AES_KEY", ""),
            ("HUABI__CHANNELS__WECHAT__SHOP__TOKEN", B_TOKEN),
        ],
    )
    .await;
    let message = text_xml("o_shop", 7200, "画 一只猫");
    let (status, _) = post_signed(&app, "/webhook/wechat", TOKEN, &message).await;
    assert_eq!(status, 404);
    let (status, body) = post_signed(&app, "/webhook/wechat/shop", B_TOKEN, &message).await;
    assert_eq!(status, 200, "{body}");
    let jobs = app.store.recent_jobs(5).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].channel.as_str(), jobs[0].account.as_str()),
        ("wechat", "shop")
    );
}

/// The statements a database at migration 9 (one WeChat account) holds: a token row, a passive-only row, a message
/// and its job under the account's original id.
const BEFORE_0010: [&str; 4] = [
    "INSERT INTO wechat_accounts (app_id, access_token, token_expires_ms, passive_only)
     VALUES ('wx_old', 'T-old', 4102444800000, false)",
    "INSERT INTO wechat_accounts (app_id, passive_only) VALUES ('wx_passive', true)",
    "INSERT INTO inbound_messages (channel, account, dedup_key, user_id, msg_id, kind, reply)
     VALUES ('wechat', 'gh_old', 'm:1:1:o_old', 'o_old', '1', 'text', '{\"kind\":\"none\"}')",
    "INSERT INTO jobs (channel, account, user_id, source_msg_id, prompt, inbound_id)
     SELECT 'wechat', 'gh_old', 'o_old', '1', 'old prompt', id FROM inbound_messages",
];

async fn the_channel_accounts_migration_keeps_every_token_and_flag(backend: Backend) {
    let db = TestDb::new(backend).await;
    let folder = match backend {
        Backend::Postgres => "migrations/postgres",
        Backend::Sqlite => "migrations/sqlite",
    };
    let mut migrator = sqlx::migrate::Migrator::new(std::path::Path::new(folder))
        .await
        .expect("migrations");
    let up_to_9: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= 9)
        .cloned()
        .collect();
    migrator.migrations = up_to_9.into();
    match backend {
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
            migrator.run(&pool).await.expect("migrate to 9");
            for statement in BEFORE_0010 {
                sqlx::query(statement).execute(&pool).await.expect("insert");
            }
            pool.close().await;
        }
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.expect("connect");
            migrator.run(&pool).await.expect("migrate to 9");
            for statement in BEFORE_0010 {
                sqlx::query(statement).execute(&pool).await.expect("insert");
            }
            pool.close().await;
        }
    }
    let store = huabi::store::connect(&settings(&db.url, &[]).database)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate to the newest");
    let old = store
        .account_state("wechat", "wx_old")
        .await
        .expect("state");
    let token = old.token.expect("the token survives");
    assert_eq!(
        (token.token.as_str(), token.expires_ms),
        ("T-old", 4102444800000)
    );
    assert!(!old.passive_only);
    assert!(
        store
            .account_state("wechat", "wx_passive")
            .await
            .expect("state")
            .passive_only,
        "the passive-only flag survives"
    );
    let jobs = store.recent_jobs(5).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].account.as_str(), jobs[0].prompt.as_str()),
        ("default", "old prompt"),
        "the one account's rows now name it `default`"
    );
}

on_both_databases!(
    each_account_delivers_through_its_own_credentials,
    without_a_default_account_the_plain_webhook_is_404,
    the_channel_accounts_migration_keeps_every_token_and_flag,
);
