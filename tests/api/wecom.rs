//! A WeCom (企业微信) self-built app end to end, on PostgreSQL and SQLite: the encrypted URL verification, encrypted
//! and signed callbacks admitted once (WeCom's retries share the MsgId), an encrypted passive "received", and the
//! picture through `gettoken` + `media/upload` + `message/send` with the AgentId, also under 30 % API faults —
//! against the stand-in in its WeCom mode, beside the WeChat account every test app has.

use huabi::app::Role;
use huabi::channel::wechat::crypto::AesKey;
use huabi::channel::wechat::{signature, xml};
use huabi::standin::{Fault, StandIn, StandInOptions};

use crate::delivery::{delivering, images_per_user, wait_for};
use crate::helpers::*;

const CORP_ID: &str = "wwcorp0123456789";
const AGENT_ID: &str = "1000002";
const SECRET: &str = "wecom-app-secret";
const CALLBACK_TOKEN: &str = "wecomToken";

async fn start_wecom(options: StandInOptions) -> (StandIn, String) {
    crate::delivery::serve_standin(StandInOptions {
        app_id: CORP_ID.into(),
        secret: SECRET.into(),
        wecom_agent_id: Some(AGENT_ID.into()),
        ..options
    })
    .await
}

async fn spawn_wecom(backend: Backend, api_base: &str) -> TestApp {
    let wechat = delivering("http://127.0.0.1:9", "0");
    let mut env: Vec<(&str, &str)> = wechat.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(&[
        ("HUABI__CHANNELS__WECOM__HR__TOKEN", CALLBACK_TOKEN),
        ("HUABI__CHANNELS__WECOM__HR__AES_KEY", AES_KEY),
        ("HUABI__CHANNELS__WECOM__HR__CORP_ID", CORP_ID),
        ("HUABI__CHANNELS__WECOM__HR__AGENT_ID", AGENT_ID),
        ("HUABI__CHANNELS__WECOM__HR__SECRET", SECRET),
        ("HUABI__CHANNELS__WECOM__HR__API_BASE", api_base),
        ("HUABI__DELIVERY__BACKOFF_MAX_SECS", "0.4"),
    ]);
    spawn_app_roles(backend, &env, &[Role::Web, Role::Worker, Role::Deliver]).await
}

fn key() -> AesKey {
    AesKey::from_encoding_key(AES_KEY).expect("key")
}

/// The query WeCom signs a callback with: `msg_signature` over token, timestamp, nonce and the ciphertext.
fn signed(encrypt: &str, token: &str) -> Vec<(String, String)> {
    let ts = now().to_string();
    vec![
        (
            "msg_signature".into(),
            signature::sign(&[token, &ts, "n7", encrypt]),
        ),
        ("timestamp".into(), ts),
        ("nonce".into(), "n7".into()),
    ]
}

/// An encrypted text callback from `user`, and its query.
fn callback(user: &str, msg_id: u64, text: &str, token: &str) -> (String, Vec<(String, String)>) {
    let inner = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>{}</Content><MsgId>{msg_id}</MsgId><AgentID>{AGENT_ID}</AgentID></xml>",
        now(),
        xml::cdata(text)
    );
    let encrypt = key().encrypt(inner.as_bytes(), CORP_ID);
    let body = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><AgentID><![CDATA[{AGENT_ID}]]></AgentID><Encrypt>{}</Encrypt></xml>",
        xml::cdata(&encrypt)
    );
    (body, signed(&encrypt, token))
}

async fn post(app: &TestApp, (body, query): &(String, Vec<(String, String)>)) -> (u16, String) {
    let resp = app
        .client
        .post(format!("http://{}/webhook/wecom/hr", app.addr))
        .query(query)
        .body(body.clone())
        .send()
        .await
        .expect("sent");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// The text of an encrypted passive reply, after checking its signature.
fn reply_text(body: &str) -> String {
    let envelope = xml::parse(body.as_bytes()).expect("reply envelope");
    let encrypt = envelope.get("Encrypt").expect("Encrypt");
    let (ts, nonce) = (
        envelope.get("TimeStamp").expect("ts"),
        envelope.get("Nonce").expect("nonce"),
    );
    assert!(signature::verify(
        envelope.get("MsgSignature").expect("signature"),
        &[CALLBACK_TOKEN, ts, nonce, encrypt]
    ));
    let inner = key()
        .decrypt(encrypt, CORP_ID)
        .expect("opens with the CorpID");
    xml::parse(&inner)
        .expect("inner")
        .get("Content")
        .unwrap_or_default()
        .to_string()
}

async fn a_callback_becomes_one_picture_through_message_send(backend: Backend) {
    let (wecom, base) = start_wecom(StandInOptions::default()).await;
    let app = spawn_wecom(backend, &base).await;
    // URL verification: the echostr is encrypted, the answer is its plaintext.
    let echostr = key().encrypt(b"echo-8341", CORP_ID);
    let resp = app
        .client
        .get(format!("http://{}/webhook/wecom/hr", app.addr))
        .query(&signed(&echostr, CALLBACK_TOKEN))
        .query(&[("echostr", &echostr)])
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "echo-8341");
    // A forged signature stores nothing.
    let forged = callback("zhangsan", 1, "嫦娥抱玉兔", "not-the-token");
    assert_eq!(post(&app, &forged).await.0, 401);
    assert_eq!(app.counts().await.inbound, 0);
    // The callback and WeCom's two retries of it: one job, the same encrypted "received" each time.
    let message = callback("zhangsan", 81, "嫦娥抱玉兔", CALLBACK_TOKEN);
    for _ in 0..3 {
        let (status, body) = post(&app, &message).await;
        assert_eq!(status, 200, "{body}");
        assert!(reply_text(&body).contains("收到"), "{body}");
    }
    let record = wait_for(&wecom, 60, "a picture", |r| !r.sends.is_empty()).await;
    assert_eq!(
        images_per_user(&record),
        [("zhangsan".to_string(), 1)].into()
    );
    assert_eq!(record.tokens_issued, 1);
    assert!(record.refused.is_empty(), "{:?}", record.refused);
    let jobs = app.store.recent_jobs(5).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (
            jobs[0].channel.as_str(),
            jobs[0].account.as_str(),
            jobs[0].user_id.as_str()
        ),
        ("wecom", "hr", "zhangsan")
    );
    wait_all_delivered(&app, 1).await;
    assert_eq!(wecom.record().sends.len(), 1, "nothing sent twice");
}

async fn api_faults_are_retried_and_every_picture_arrives_once(backend: Backend) {
    let (wecom, base) = start_wecom(StandInOptions {
        fault_rate: 0.3,
        faults: vec![Fault::Busy, Fault::RateLimit, Fault::Token],
        seed: 11,
        ..StandInOptions::default()
    })
    .await;
    let app = spawn_wecom(backend, &base).await;
    let users: Vec<String> = (0..5).map(|n| format!("staff{n}")).collect();
    for (n, user) in users.iter().enumerate() {
        let (status, _) = post(
            &app,
            &callback(user, 900 + n as u64, "月下的桂花树", CALLBACK_TOKEN),
        )
        .await;
        assert_eq!(status, 200);
    }
    let record = wait_for(&wecom, 90, "five pictures", |r| {
        images_per_user(r).len() == users.len()
    })
    .await;
    assert!(record.faults > 0, "faults were injected");
    wait_all_delivered(&app, users.len()).await;
    let per_user = images_per_user(&wecom.record());
    assert!(per_user.values().all(|&n| n == 1), "{per_user:?}");
}

on_both_databases!(
    a_callback_becomes_one_picture_through_message_send,
    api_faults_are_retried_and_every_picture_arrives_once,
);
