//! From signed message to picture at WeChat's API: `huabi` with all three roles on the real engine and small model,
//! talking to the in-process stand-in for WeChat's API — on PostgreSQL and SQLite. Also: faults at the API, the
//! fast path (the passive reply is the picture), passive-only accounts and 取图, and the one failure notice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use huabi::app::Role;
use huabi::standin::{Fault, Record, StandIn, StandInOptions};

use crate::helpers::*;

pub const APP_SECRET: &str = "standin-secret";

/// Starts a stand-in for the test account; returns it and its base URL.
pub async fn start_standin(options: StandInOptions) -> (StandIn, String) {
    serve_standin(StandInOptions {
        app_id: APP_ID.into(),
        secret: APP_SECRET.into(),
        ..options
    })
    .await
}

/// Starts a stand-in with exactly `options` on a free port; returns it and its base URL.
pub async fn serve_standin(options: StandInOptions) -> (StandIn, String) {
    let stand_in = StandIn::new(options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(stand_in.clone().serve(listener));
    (stand_in, base)
}

/// Environment for an app that paints small pictures fast and delivers to `api_base`.
pub fn delivering(api_base: &str, fast_path_secs: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "HUABI__ENGINE__MODEL_DIR",
            format!("{}/models/tiny-sd", env!("CARGO_MANIFEST_DIR")),
        ),
        ("HUABI__ENGINE__THREADS", "2".into()),
        ("HUABI__ENGINE__AIGC_PROVIDER", "huabi-delivery".into()),
        ("HUABI__JOBS__WIDTH", "64".into()),
        ("HUABI__JOBS__HEIGHT", "64".into()),
        ("HUABI__JOBS__STEPS", "2".into()),
        ("HUABI__WECHAT__API_BASE", api_base.into()),
        ("HUABI__WECHAT__APP_SECRET", APP_SECRET.into()),
        ("HUABI__DELIVERY__FAST_PATH_SECS", fast_path_secs.into()),
        ("HUABI__DELIVERY__POLL_SECS", "0.2".into()),
        ("HUABI__DELIVERY__BACKOFF_BASE_SECS", "0.05".into()),
        ("HUABI__DELIVERY__BACKOFF_MAX_SECS", "0.4".into()),
    ]
}

pub async fn spawn_delivering(
    backend: Backend,
    env: &[(&'static str, String)],
    extra: &[(&'static str, &str)],
) -> TestApp {
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    spawn_app_roles(backend, &all, &[Role::Web, Role::Worker, Role::Deliver]).await
}

/// Waits until the stand-in's record satisfies `done`.
pub async fn wait_for(
    stand_in: &StandIn,
    secs: u64,
    what: &str,
    done: impl Fn(&Record) -> bool,
) -> Record {
    poll_until(
        secs,
        what,
        || stand_in.record(),
        done,
        |record| {
            format!(
                "{} sends, {} uploads, refused {:?}",
                record.sends.len(),
                record.uploads.len(),
                record.refused
            )
        },
    )
    .await
}

/// Image sends per follower.
pub fn images_per_user(record: &Record) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for send in record.sends.iter().filter(|s| s.msgtype == "image") {
        *counts.entry(send.touser.clone()).or_insert(0) += 1;
    }
    counts
}

/// A delivered picture: a whole JPEG, at most 2 MB, with the AIGC record naming the provider.
fn assert_labelled_jpeg(jpeg: &[u8]) {
    assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]) && jpeg.ends_with(&[0xFF, 0xD9]));
    assert!(jpeg.len() <= 2 * 1024 * 1024);
    let text = String::from_utf8_lossy(jpeg);
    assert!(
        text.contains("AIGC") && text.contains("huabi-delivery"),
        "AIGC metadata"
    );
}

/// Sends `text` from `user` with fresh MsgIds from `first_id`, 100 ms apart for up to `secs`, until the passive reply
/// is a picture; `other` checks each reply that is not. Returns that message, its MsgId and the picture's MediaId.
async fn until_picture(
    app: &TestApp,
    (user, first_id, text): (&str, u64, &str),
    secs: u64,
    other: impl Fn(&str),
) -> (String, u64, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut msg_id = first_id;
    loop {
        let message = text_xml(user, msg_id, text);
        let (status, reply) = app.post_plain(&message).await;
        assert_eq!(status, 200);
        if let Some(media_id) = media_id_of(&reply) {
            return (message, msg_id, media_id);
        }
        other(&reply);
        assert!(
            Instant::now() < deadline,
            "{user}: {text:?} never answered with a picture"
        );
        msg_id += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The MediaId of a plaintext image reply.
fn media_id_of(reply: &str) -> Option<String> {
    let fields = huabi::channel::wechat::xml::parse(reply.as_bytes()).ok()?;
    if fields.get("MsgType") != Some("image") {
        return None;
    }
    let start = reply.find("<MediaId><![CDATA[")? + "<MediaId><![CDATA[".len();
    let end = start + reply[start..].find("]]>")?;
    Some(reply[start..end].to_string())
}

async fn every_message_becomes_one_picture_at_the_api(backend: Backend) {
    let (stand_in, base) = start_standin(StandInOptions::default()).await;
    let app = spawn_delivering(backend, &delivering(&base, "0"), &[]).await;
    let users: Vec<String> = (0..5).map(|n| format!("o_follower_{n}")).collect();
    for (n, user) in users.iter().enumerate() {
        let (status, body) = app
            .post_plain(&text_xml(user, 9100 + n as u64, "嫦娥抱玉兔"))
            .await;
        assert_eq!(status, 200);
        assert!(body.contains("收到"), "{body}");
    }
    let record = wait_for(&stand_in, 60, "5 pictures", |r| r.sends.len() >= 5).await;
    let per_user = images_per_user(&record);
    assert_eq!(per_user.len(), 5);
    assert!(per_user.values().all(|&n| n == 1), "{per_user:?}");
    for send in &record.sends {
        assert!(users.contains(&send.touser));
        assert_labelled_jpeg(send.jpeg.as_deref().expect("picture"));
    }
    assert!(
        record
            .uploads
            .iter()
            .all(|u| !u.permanent && u.filename.ends_with(".jpg"))
    );
    assert_eq!(record.tokens_issued, 1, "one token for everything");
    assert_eq!(record.token_requests, 1, "fetched once, shared");
    // The stand-in records a send a moment before the deliverer records it as delivered; a delivered job is never
    // leased again.
    wait_all_delivered(&app, 5).await;
    assert_eq!(stand_in.record().sends.len(), 5, "nothing is sent twice");
}

async fn the_fast_path_answers_with_the_picture_itself(backend: Backend) {
    let (stand_in, base) = start_standin(StandInOptions::default()).await;
    let app = spawn_delivering(backend, &delivering(&base, "3.5"), &[]).await;
    let message = text_xml("o_fast", 9200, "月下的桂花树");
    let started = Instant::now();
    let (status, reply) = app.post_plain(&message).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    let media_id = media_id_of(&reply).unwrap_or_else(|| panic!("an image reply: {reply}"));
    assert!(took < Duration::from_millis(4500), "answered in {took:?}");
    eprintln!("fast path: picture in the passive reply after {took:?}");
    let record = stand_in.record();
    assert_eq!(record.uploads.len(), 1);
    assert_eq!(record.uploads[0].media_id, media_id);
    // WeChat's retry of the same message gets the same picture, and nothing else happens.
    let (_, again) = app.post_plain(&message).await;
    assert_eq!(media_id_of(&again).as_deref(), Some(media_id.as_str()));
    // Recorded delivered (passively) with the reply: no deliverer can lease it any more.
    wait_all_delivered(&app, 1).await;
    let record = stand_in.record();
    assert!(
        record.sends.is_empty(),
        "delivered once, passively: {:?}",
        record.sends
    );
    assert_eq!(record.uploads.len(), 1);
    let job = &app.store.recent_jobs(1).await.expect("jobs")[0];
    assert_eq!(
        app.store
            .job_status(job.id)
            .await
            .expect("status")
            .as_deref(),
        Some("delivered")
    );
}

async fn a_failed_painting_is_told_once(backend: Backend) {
    let (stand_in, base) = start_standin(StandInOptions::default()).await;
    let app = spawn_delivering(
        backend,
        &delivering(&base, "0"),
        // Every request is painted at 60×60, which the engine refuses (not a multiple of 8): the job fails at once.
        &[("HUABI__JOBS__WIDTH", "60"), ("HUABI__JOBS__HEIGHT", "60")],
    )
    .await;
    let (status, _) = app
        .post_plain(&text_xml("o_unlucky", 9300, "月下的桂花树"))
        .await;
    assert_eq!(status, 200);
    let record = wait_for(&stand_in, 60, "the failure notice", |r| !r.sends.is_empty()).await;
    assert_eq!(record.sends[0].msgtype, "text");
    assert_eq!(record.sends[0].touser, "o_unlucky");
    assert!(
        record.sends[0]
            .text
            .as_deref()
            .is_some_and(|t| t.contains("没能画成"))
    );
    // Once recorded as told, no deliverer leases the job again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app.store.recent_jobs(1).await.expect("jobs")[0].notified {
        assert!(Instant::now() < deadline, "the notice was never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stand_in.record().sends.len(), 1, "told once");
    assert!(stand_in.record().uploads.is_empty());
}

async fn passive_only_accounts_keep_pictures_for_fetch(backend: Backend) {
    let (stand_in, base) = start_standin(StandInOptions {
        passive_only: true,
        ..Default::default()
    })
    .await;
    let app = spawn_delivering(backend, &delivering(&base, "0"), &[]).await;
    let (status, _) = app.post_plain(&text_xml("o_passive", 9400, "灯笼")).await;
    assert_eq!(status, 200);
    // The deliverer's upload is refused with 48001; the account turns passive-only and the picture waits.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !app
        .store
        .account_state("wechat", APP_ID)
        .await
        .expect("account")
        .passive_only
    {
        assert!(
            Instant::now() < deadline,
            "48001 never switched the account"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Until the deliverer has let go of the job, 取图 says it is on its way.
    let (fetch, _, media_id) = until_picture(&app, ("o_passive", 9401, "取图"), 5, |reply| {
        assert!(
            reply.contains("稍等") || reply.contains("准备中"),
            "{reply}"
        )
    })
    .await;
    let (_, again) = app.post_plain(&fetch).await;
    assert_eq!(
        media_id_of(&again).as_deref(),
        Some(media_id.as_str()),
        "a retry gets the same picture"
    );
    let record = stand_in.record();
    let upload = record
        .uploads
        .iter()
        .find(|u| u.media_id == media_id)
        .expect("uploaded");
    assert!(
        upload.permanent,
        "passive-only accounts upload permanent material"
    );
    assert!(record.sends.is_empty());
    let (_, nothing) = app.post_plain(&text_xml("o_passive", 9500, "取图")).await;
    assert!(nothing.contains("没有"), "nothing left: {nothing}");
}

async fn with_fetch_on_any_message_the_next_prompt_fetches_the_waiting_picture(backend: Backend) {
    let (stand_in, base) = start_standin(StandInOptions::default()).await;
    let app = spawn_delivering(
        backend,
        &delivering(&base, "0"),
        &[
            ("HUABI__DELIVERY__PASSIVE_ONLY", "true"),
            ("HUABI__DELIVERY__FETCH_ON_ANY_MESSAGE", "true"),
            // A slow machine keeps more of this follower's jobs in flight; no limit may refuse one.
            ("HUABI__LIMITS__IN_FLIGHT", "0"),
            ("HUABI__LIMITS__PER_MINUTE", "0"),
        ],
    )
    .await;
    let (_, first) = app.post_plain(&text_xml("o_any", 9700, "桂花")).await;
    assert!(
        first.contains("取图"),
        "passive-only accounts say how to fetch: {first}"
    );
    let (_, n, media_id) = until_picture(&app, ("o_any", 9701, "团圆"), 60, |_| {}).await;
    assert!(
        stand_in
            .record()
            .uploads
            .iter()
            .any(|u| u.media_id == media_id && u.permanent)
    );
    let jobs = app.store.recent_jobs(100).await.expect("jobs");
    assert_eq!(
        jobs.len() as u64,
        n - 9700 + 1,
        "every message is still painted"
    );
}

async fn closed_windows_and_used_quotas_keep_pictures_for_fetch(backend: Backend) {
    let (stand_in, base) = start_standin(StandInOptions {
        closed_window_users: vec!["o_gone".into()],
        sends_per_user: Some(2),
        ..Default::default()
    })
    .await;
    let app = spawn_delivering(
        backend,
        &delivering(&base, "0"),
        &[
            ("HUABI__LIMITS__PER_MINUTE", "0"),
            ("HUABI__LIMITS__IN_FLIGHT", "0"),
        ],
    )
    .await;
    let (_, _) = app.post_plain(&text_xml("o_gone", 9800, "月饼")).await;
    for n in 0..3 {
        let (_, _) = app.post_plain(&text_xml("o_many", 9810 + n, "灯笼")).await;
    }
    // Two pictures reach o_many; the third (45047) and o_gone's (45015) wait for 取图.
    wait_for(&stand_in, 60, "two sends and two refusals", |r| {
        r.sends.len() >= 2 && r.refused.iter().filter(|e| e.starts_with("450")).count() >= 2
    })
    .await;
    for (user, first) in [("o_gone", 9900u64), ("o_many", 9950)] {
        until_picture(&app, (user, first, "取图"), 5, |_| {}).await;
    }
    let record = stand_in.record();
    assert_eq!(images_per_user(&record).get("o_many"), Some(&2));
    assert!(!images_per_user(&record).contains_key("o_gone"));
}

async fn faults_at_the_api_still_deliver_each_picture_once(backend: Backend) {
    let (stand_in, base) = start_standin(StandInOptions {
        fault_rate: 0.3,
        faults: vec![Fault::Busy, Fault::RateLimit, Fault::Token, Fault::Timeout],
        stall: Duration::from_millis(1500),
        seed: 7,
        ..Default::default()
    })
    .await;
    let app = spawn_delivering(
        backend,
        &delivering(&base, "0"),
        &[
            ("HUABI__DELIVERY__API_TIMEOUT_SECS", "0.5"),
            ("HUABI__DELIVERY__MAX_ATTEMPTS", "40"),
        ],
    )
    .await;
    let n = 12;
    for i in 0..n {
        let (status, _) = app
            .post_plain(&text_xml(&format!("o_fault_{i}"), 9600 + i, "玉兔"))
            .await;
        assert_eq!(status, 200);
    }
    let record = wait_for(&stand_in, 120, "12 pictures through faults", |r| {
        r.sends.len() >= n as usize
    })
    .await;
    let per_user = images_per_user(&record);
    assert_eq!(per_user.len(), n as usize);
    assert!(per_user.values().all(|&c| c == 1), "{per_user:?}");
    eprintln!(
        "faults: {} of {} calls; {} token expiries, {} tokens issued, {} stable_token answers, {} stale-token calls",
        record.faults,
        record.calls,
        record.token_expiries,
        record.tokens_issued,
        record.token_requests,
        record.stale_token_calls
    );
    assert!(record.faults >= 5, "faults were injected");
    assert!(
        record.tokens_issued <= record.token_expiries + 1,
        "one refresh per real expiry"
    );
    assert_eq!(
        record.token_requests, record.tokens_issued,
        "no stable_token call without an expiry behind it"
    );
    wait_all_delivered(&app, n as usize).await;
    assert_eq!(
        stand_in.record().sends.len(),
        n as usize,
        "nothing sent twice"
    );
}

/// Permanent material uploaded for passive replies is deleted through rows any node can sweep: due ones go (one
/// already gone counts as deleted), ones not due stay, and nothing is deleted twice.
async fn uploaded_material_is_swept_from_durable_rows(backend: Backend) {
    use huabi::channel::wechat::api::WechatApi;
    use huabi::deliver::passive::PassiveReplies;
    use huabi::deliver::token::TokenService;
    let db = TestDb::new(backend).await;
    let (stand_in, base) = start_standin(StandInOptions::default()).await;
    let config = settings(&db.url, &[]);
    let store = huabi::store::connect(&config.database)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let api = std::sync::Arc::new(WechatApi::new(
        &base,
        APP_ID,
        APP_SECRET.to_string().into(),
        Duration::from_secs(5),
    ));
    let tokens = std::sync::Arc::new(TokenService::new(store.clone(), api.clone(), "t".into()));
    let jpeg = b"\xFF\xD8\xFF\xE0 a picture \xFF\xD9".to_vec();
    let mut uploaded = Vec::new();
    for name in ["a.jpg", "b.jpg"] {
        let media_id = tokens
            .call(|t| {
                let (api, jpeg) = (api.clone(), jpeg.clone());
                async move { api.add_material_image(&t, jpeg, name).await }
            })
            .await
            .expect("upload");
        uploaded.push(media_id);
    }
    store
        .schedule_material_cleanup("wechat", APP_ID, &uploaded[0], 0.0)
        .await
        .expect("schedule");
    store
        .schedule_material_cleanup("wechat", APP_ID, &uploaded[1], 3600.0)
        .await
        .expect("schedule");
    store
        .schedule_material_cleanup("wechat", APP_ID, "already-gone", 0.0)
        .await
        .expect("schedule");
    let (finished, _) = tokio::sync::broadcast::channel(4);
    let passive = PassiveReplies::new(
        store.clone(),
        tokens,
        "web".into(),
        config.delivery.clone(),
        config.replies.clone(),
        finished,
    );
    assert_eq!(passive.sweep_materials().await.expect("sweep"), 2);
    assert_eq!(passive.sweep_materials().await.expect("sweep"), 0);
    assert_eq!(stand_in.record().deleted, vec![uploaded[0].clone()]);
    assert!(
        store
            .due_material_cleanups("wechat", APP_ID, 10, 0.0)
            .await
            .expect("due")
            .is_empty(),
        "the material not due yet waits"
    );
}

/// The deliverer stepped by hand (`run_once`): each due picture is sent once and recorded, a second step finds
/// nothing, and a failure notice is told once — no background loop, no sleeps.
async fn a_stepped_deliverer_sends_each_picture_once(backend: Backend) {
    use huabi::channel::registry::{AccountChannel, Channels};
    use huabi::channel::wechat::api::WechatApi;
    use huabi::deliver::Deliverer;
    use huabi::deliver::token::TokenService;
    use huabi::deliver::wechat::WechatOutbound;
    let db = TestDb::new(backend).await;
    let (stand_in, base) = start_standin(StandInOptions::default()).await;
    let config = settings(&db.url, &[]);
    let store = crate::delivery_contract::store_for(&db).await;
    let api = std::sync::Arc::new(WechatApi::new(
        &base,
        APP_ID,
        APP_SECRET.to_string().into(),
        Duration::from_secs(5),
    ));
    let tokens = std::sync::Arc::new(TokenService::new(store.clone(), api, "t".into()));
    let mut channels = Channels::new();
    channels.insert(
        "wechat",
        "gh_d",
        AccountChannel {
            outbound: std::sync::Arc::new(WechatOutbound::new(tokens)),
            media: None,
        },
    );
    let deliverer = Deliverer::new(
        store.clone(),
        std::sync::Arc::new(channels),
        "d".into(),
        config.delivery.clone(),
        "failed".into(),
    );
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            crate::delivery_contract::finished_job(&*store, &format!("u{n}"), n, true, 0.0).await,
        );
    }
    let failed = crate::delivery_contract::finished_job(&*store, "u_failed", 9, false, 0.0).await;
    assert_eq!(deliverer.run_once().await.expect("step"), 4);
    for id in &ids {
        assert_eq!(
            store.job_status(*id).await.expect("status").as_deref(),
            Some("delivered")
        );
    }
    assert_eq!(
        store.job_status(failed).await.expect("status").as_deref(),
        Some("failed")
    );
    assert_eq!(deliverer.run_once().await.expect("step"), 0, "nothing left");
    let record = stand_in.record();
    let per_user = images_per_user(&record);
    assert_eq!(per_user.len(), 3);
    assert!(per_user.values().all(|&c| c == 1), "{per_user:?}");
    let notices: Vec<_> = record
        .sends
        .iter()
        .filter(|s| s.msgtype == "text")
        .collect();
    assert_eq!(notices.len(), 1, "told once");
    assert_eq!(notices[0].touser, "u_failed");
}

on_both_databases!(
    a_stepped_deliverer_sends_each_picture_once,
    uploaded_material_is_swept_from_durable_rows,
    every_message_becomes_one_picture_at_the_api,
    the_fast_path_answers_with_the_picture_itself,
    a_failed_painting_is_told_once,
    passive_only_accounts_keep_pictures_for_fetch,
    with_fetch_on_any_message_the_next_prompt_fetches_the_waiting_picture,
    closed_windows_and_used_quotas_keep_pictures_for_fetch,
    faults_at_the_api_still_deliver_each_picture_once,
);

#[tokio::test]
async fn huabi_standin_serves_the_api_and_its_record() {
    let port = free_port();
    let mut standin = tokio::process::Command::new(env!("CARGO_BIN_EXE_huabi"))
        .args(["standin", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--app-id", APP_ID, "--app-secret", APP_SECRET])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start huabi standin");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..200 {
        if client
            .get(format!("{base}/_standin/record"))
            .send()
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        assert!(
            standin.try_wait().expect("status").is_none(),
            "standin exited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "standin never answered");
    let api = huabi::channel::wechat::api::WechatApi::new(
        &base,
        APP_ID,
        APP_SECRET.to_string().into(),
        Duration::from_secs(5),
    );
    let token = api.stable_token(false).await.expect("token");
    assert_eq!(token.expires_in, 7200);
    let wrong = huabi::channel::wechat::api::WechatApi::new(
        &base,
        APP_ID,
        "wrong".to_string().into(),
        Duration::from_secs(5),
    );
    assert!(wrong.stable_token(false).await.is_err());
    let refused = api.send_image(&token.token, "o_x", "no-such-media").await;
    assert!(matches!(
        refused,
        Err(huabi::channel::wechat::api::ApiError::Platform { code: 40007, .. })
    ));
    let record: serde_json::Value = client
        .get(format!("{base}/_standin/record"))
        .send()
        .await
        .expect("record")
        .json()
        .await
        .expect("json");
    assert_eq!(record["token_requests"], 1);
    assert_eq!(record["refused"].as_array().map(Vec::len), Some(2));
}
