//! A Telegram bot end to end, on PostgreSQL and SQLite: updates checked by their secret token, admitted once per
//! `update_id`, "received" by `sendMessage`, the picture by `sendPhoto` through the deliverer; API faults retried
//! (429's `retry_after` honoured), a blocked bot's picture held, limits per Telegram user — all against the Bot API
//! stand-in, beside the WeChat account every test app has.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use huabi::app::Role;
use huabi::standin::telegram::{TelegramOptions, TelegramRecord, TelegramStandIn};
use reqwest::StatusCode;

use crate::delivery::delivering;
use crate::helpers::*;

pub const BOT_TOKEN: &str = "123456:standin-bot-token";
pub const SECRET: &str = "webhook-secret_1";

pub async fn start_telegram(options: TelegramOptions) -> (TelegramStandIn, String) {
    let stand_in = TelegramStandIn::new(TelegramOptions {
        bot_token: BOT_TOKEN.into(),
        ..options
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(stand_in.clone().serve(listener));
    (stand_in, base)
}

/// A node with every role, the WeChat test account (its API nowhere) and the bot `huabot` at `api_base`.
async fn spawn_bot(backend: Backend, api_base: &str, extra: &[(&str, &str)]) -> TestApp {
    let wechat = delivering("http://127.0.0.1:9", "0");
    let mut env: Vec<(&str, &str)> = wechat.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(&[
        ("HUABI__CHANNELS__TELEGRAM__HUABOT__BOT_TOKEN", BOT_TOKEN),
        ("HUABI__CHANNELS__TELEGRAM__HUABOT__SECRET_TOKEN", SECRET),
        ("HUABI__CHANNELS__TELEGRAM__HUABOT__API_BASE", api_base),
        ("HUABI__DELIVERY__BACKOFF_MAX_SECS", "1.5"),
    ]);
    env.extend_from_slice(extra);
    spawn_app_roles(backend, &env, &[Role::Web, Role::Worker, Role::Deliver]).await
}

pub fn update(update_id: u64, chat: i64, text: &str) -> String {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id % 1000,
            "date": now(),
            "chat": {"id": chat, "type": "private"},
            "from": {"id": chat, "is_bot": false, "first_name": "F"},
            "text": text,
        }
    })
    .to_string()
}

async fn post_update(app: &TestApp, secret: Option<&str>, body: String) -> StatusCode {
    let mut request = app
        .client
        .post(format!("http://{}/webhook/telegram/huabot", app.addr))
        .header("content-type", "application/json")
        .body(body);
    if let Some(secret) = secret {
        request = request.header("X-Telegram-Bot-Api-Secret-Token", secret);
    }
    request.send().await.expect("request sent").status()
}

async fn wait_for(
    stand_in: &TelegramStandIn,
    secs: u64,
    what: &str,
    done: impl Fn(&TelegramRecord) -> bool,
) -> TelegramRecord {
    poll_until(
        secs,
        what,
        || stand_in.record(),
        done,
        |record| {
            let sends: Vec<_> = record
                .sends
                .iter()
                .map(|s| (&s.chat_id, &s.kind, &s.text))
                .collect();
            format!("{sends:?}")
        },
    )
    .await
}

fn photos_per_chat(record: &TelegramRecord) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for send in record.sends.iter().filter(|s| s.kind == "photo") {
        *counts.entry(send.chat_id.clone()).or_insert(0) += 1;
    }
    counts
}

async fn a_message_becomes_one_picture_and_retries_nothing_twice(backend: Backend) {
    let (bot, base) = start_telegram(TelegramOptions::default()).await;
    let app = spawn_bot(backend, &base, &[]).await;
    // No secret, a wrong one, one differing in the last byte: 401 and nothing stored.
    for secret in [None, Some("wrong"), Some("webhook-secret_2")] {
        assert_eq!(
            post_update(&app, secret, update(1, 42, "嫦娥抱玉兔")).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(app.counts().await.inbound, 0);
    assert_eq!(
        post_update(&app, Some(SECRET), "{not json".into()).await,
        StatusCode::BAD_REQUEST
    );
    // The update, then Telegram's retry of it (same update_id).
    for _ in 0..3 {
        assert_eq!(
            post_update(&app, Some(SECRET), update(1, 42, "嫦娥抱玉兔")).await,
            StatusCode::OK
        );
    }
    let record = wait_for(&bot, 60, "a picture", |r| {
        r.sends.iter().any(|s| s.kind == "photo")
    })
    .await;
    let texts: Vec<_> = record.sends.iter().filter(|s| s.kind == "text").collect();
    assert_eq!(texts.len(), 1, "\"received\" once: {texts:?}");
    assert!(texts[0].text.as_deref().unwrap_or("").contains("收到"));
    let jpeg = record
        .sends
        .iter()
        .find_map(|s| s.jpeg.clone())
        .expect("uploaded");
    assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]));
    assert_eq!(app.counts().await.inbound, 1);
    let jobs = app.store.recent_jobs(5).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (
            jobs[0].channel.as_str(),
            jobs[0].account.as_str(),
            jobs[0].user_id.as_str()
        ),
        ("telegram", "huabot", "42")
    );
    // /start welcomes; other accounts' paths are 404.
    assert_eq!(
        post_update(&app, Some(SECRET), update(2, 42, "/start")).await,
        StatusCode::OK
    );
    wait_for(&bot, 10, "the welcome", |r| {
        r.sends
            .iter()
            .any(|s| s.text.as_deref().is_some_and(|t| t.contains("欢迎")))
    })
    .await;
    let status = app
        .client
        .post(format!("http://{}/webhook/telegram/otherbot", app.addr))
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
        .body(update(3, 42, "hi"))
        .send()
        .await
        .expect("sent")
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    wait_all_delivered(&app, 1).await;
    assert_eq!(
        photos_per_chat(&bot.record()),
        [("42".to_string(), 1)].into()
    );
}

async fn faults_are_retried_and_every_picture_arrives_once(backend: Backend) {
    let (bot, base) = start_telegram(TelegramOptions {
        fault_rate: 0.3,
        retry_after_secs: 1,
        seed: 7,
        ..TelegramOptions::default()
    })
    .await;
    let app = spawn_bot(backend, &base, &[]).await;
    let chats: Vec<i64> = (100..106).collect();
    for (n, chat) in chats.iter().enumerate() {
        assert_eq!(
            post_update(
                &app,
                Some(SECRET),
                update(500 + n as u64, *chat, "月下的桂花树")
            )
            .await,
            StatusCode::OK
        );
    }
    let record = wait_for(&bot, 90, "six pictures", |r| {
        photos_per_chat(r).len() == chats.len()
    })
    .await;
    assert!(record.faults > 0, "faults were injected");
    wait_all_delivered(&app, chats.len()).await;
    let per_chat = photos_per_chat(&bot.record());
    assert!(per_chat.values().all(|&n| n == 1), "{per_chat:?}");
}

async fn a_blocked_bot_holds_the_picture_and_limits_are_per_telegram_user(backend: Backend) {
    let (bot, base) = start_telegram(TelegramOptions {
        blocked_chats: vec!["13".into()],
        ..TelegramOptions::default()
    })
    .await;
    let app = spawn_bot(backend, &base, &[("HUABI__LIMITS__PER_DAY", "1")]).await;
    assert_eq!(
        post_update(&app, Some(SECRET), update(700, 13, "一只猫")).await,
        StatusCode::OK
    );
    assert_eq!(
        post_update(&app, Some(SECRET), update(701, 14, "一只狗")).await,
        StatusCode::OK
    );
    // Chat 14's second request today is over its limit; chat 15 has its own.
    assert_eq!(
        post_update(&app, Some(SECRET), update(702, 14, "一只鸟")).await,
        StatusCode::OK
    );
    assert_eq!(
        post_update(&app, Some(SECRET), update(703, 15, "一只鱼")).await,
        StatusCode::OK
    );
    wait_for(&bot, 60, "pictures for 14 and 15", |r| {
        let per_chat = photos_per_chat(r);
        per_chat.get("14") == Some(&1) && per_chat.get("15") == Some(&1)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let held = loop {
        let jobs = app.store.recent_jobs(10).await.expect("jobs");
        let blocked = jobs.iter().find(|j| j.user_id == "13").expect("13's job");
        let detail = app
            .store
            .job(blocked.id)
            .await
            .expect("job")
            .expect("exists");
        if detail.held.is_some() {
            break detail.held;
        }
        assert!(Instant::now() < deadline, "13's picture never held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(held.as_deref(), Some("blocked"));
    let record = bot.record();
    assert_eq!(
        record.refused.iter().filter(|r| r.contains("13")).count(),
        2,
        "\"received\" and the picture, each tried once: {:?}",
        record.refused
    );
    assert_eq!(
        app.store.recent_jobs(10).await.expect("jobs").len(),
        3,
        "14's second request got no job"
    );
    let limited = record
        .sends
        .iter()
        .filter(|s| s.chat_id == "14" && s.kind == "text")
        .count();
    assert_eq!(limited, 2, "14 hears \"received\" and then why not");
}

async fn a_photo_in_a_photo_campaign_is_fetched_with_get_file_and_painted(backend: Backend) {
    let (bot, base) = start_telegram(TelegramOptions::default()).await;
    bot.add_file("TG-PHOTO", crate::understanding::png(96, 64, false));
    let dir = tempfile::tempdir().expect("tempdir");
    let c = crate::understanding::photo_campaign();
    std::fs::write(dir.path().join("photos.toml"), c.to_toml()).expect("write");
    let seed_dir = dir.path().display().to_string();
    let app = spawn_bot(backend, &base, &[("HUABI__CAMPAIGNS__SEED_DIR", &seed_dir)]).await;
    let photo = serde_json::json!({
        "update_id": 800,
        "message": {
            "message_id": 1, "date": now(), "chat": {"id": 77, "type": "private"},
            "photo": [{"file_id": "TG-SMALL", "width": 32, "height": 21},
                      {"file_id": "TG-PHOTO", "width": 96, "height": 64}]
        }
    });
    assert_eq!(
        post_update(&app, Some(SECRET), photo.to_string()).await,
        StatusCode::OK
    );
    let job = crate::understanding::ended_job(&app, "77").await;
    assert_eq!(job.status, "delivered", "{:?}", job.error);
    assert_eq!(
        job.photo_media_id.as_deref(),
        Some("TG-PHOTO"),
        "the largest size"
    );
    assert_eq!(job.campaign.as_deref(), Some("photos"));
    let record = wait_for(&bot, 30, "the painting", |r| {
        r.sends
            .iter()
            .any(|s| s.chat_id == "77" && s.kind == "photo")
    })
    .await;
    assert_eq!(
        record.downloads,
        ["photos/TG-PHOTO.jpg"],
        "fetched once with getFile"
    );
}

on_both_databases!(
    a_message_becomes_one_picture_and_retries_nothing_twice,
    a_photo_in_a_photo_campaign_is_fetched_with_get_file_and_painted,
    faults_are_retried_and_every_picture_arrives_once,
    a_blocked_bot_holds_the_picture_and_limits_are_per_telegram_user,
);
