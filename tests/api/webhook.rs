//! `/webhook/wechat` over HTTP: golden vectors, the three modes, dedup, replies and every refusal.

use huabi::channel::wechat::{signature, xml};

use crate::helpers::*;

const V2_BODY: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>";
/// Lets the 2014/2024 timestamps of the official vectors through the freshness check.
const NO_SKEW_LIMIT: (&str, &str) = ("HUABI__WECHAT__MAX_CLOCK_SKEW_SECS", "9000000000");

fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn received_text() -> String {
    settings("sqlite://unused", &[]).replies.received
}

async fn v1_url_verification_over_http(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("HUABI__WECHAT__TOKEN", "AAAAA"),
            ("HUABI__WECHAT__AES_KEY", ""),
            NO_SKEW_LIMIT,
        ],
    )
    .await;
    let resp = app
        .client
        .get(app.webhook_url())
        .query(&q(&[
            ("signature", "f464b24fc39322e44b38aa78f5edd27bd1441696"),
            ("timestamp", "1714036504"),
            ("nonce", "1514711492"),
            ("echostr", "4375120948345356249"),
        ]))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "4375120948345356249");
    let resp = app
        .client
        .get(app.webhook_url())
        .query(&q(&[
            ("signature", "0464b24fc39322e44b38aa78f5edd27bd1441696"),
            ("timestamp", "1714036504"),
            ("nonce", "1514711492"),
            ("echostr", "4375120948345356249"),
        ]))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);
}

async fn v1_plaintext_post_signature_over_http(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("HUABI__WECHAT__TOKEN", "AAAAA"),
            ("HUABI__WECHAT__AES_KEY", ""),
            NO_SKEW_LIMIT,
        ],
    )
    .await;
    let query = q(&[
        ("signature", "899cf89e464efb63f54ddac96b0a0a235f53aa78"),
        ("timestamp", "1714037059"),
        ("nonce", "486452656"),
    ]);
    let (status, body) = app.post(&query, text_xml("o_v1", 1, "月下桂花")).await;
    assert_eq!(status, 200, "{body}");
    let reply = xml::parse(body.as_bytes()).expect("plain XML reply");
    assert_eq!(reply.get("Content"), Some(received_text().as_str()));
    assert_eq!(reply.get("ToUserName"), Some("o_v1"));
    assert_eq!(reply.get("FromUserName"), Some(ACCOUNT));
    assert_eq!(
        app.store.recent_jobs(5).await.expect("jobs")[0].prompt,
        "月下桂花"
    );
}

async fn v2_safe_mode_message_is_admitted_once_with_an_encrypted_reply(backend: Backend) {
    let app = spawn_app_with(backend, &[NO_SKEW_LIMIT]).await;
    let query = q(&[
        ("msg_signature", "477715d11cdb4164915debcba66cb864d751f3e6"),
        ("timestamp", "1409659813"),
        ("nonce", "1372623149"),
        ("encrypt_type", "aes"),
    ]);
    let mut replies = Vec::new();
    for _ in 0..3 {
        let (status, body) = app.post(&query, V2_BODY).await;
        assert_eq!(status, 200, "{body}");
        let inner = open_reply(&body);
        assert_eq!(inner.get("ToUserName"), Some("mycreate"));
        assert_eq!(inner.get("MsgType"), Some("text"));
        replies.push(inner.get("Content").expect("content").to_string());
    }
    assert!(replies.iter().all(|r| *r == received_text()), "{replies:?}");
    let jobs = app.store.recent_jobs(10).await.expect("jobs");
    assert_eq!(jobs.len(), 1, "three deliveries, one job");
    assert_eq!(
        (
            jobs[0].prompt.as_str(),
            jobs[0].user_id.as_str(),
            jobs[0].source_msg_id.as_str()
        ),
        ("hello", "mycreate", "4561255354251345929")
    );
    assert_eq!(
        jobs[0].account, "default",
        "stored under the account's name"
    );
}

async fn compatible_mode_uses_the_ciphertext_and_encrypts_the_reply(backend: Backend) {
    let app = spawn_app(backend).await;
    let inner = text_xml("o_compat", 77, "encrypted prompt");
    let (enc_body, query) = encrypted_request(&inner, now(), "nonce-c");
    // Compatible mode carries a plaintext copy beside Encrypt; only the signed ciphertext counts.
    let compat = enc_body.replace("</xml>", "<FromUserName><![CDATA[o_forged]]></FromUserName><MsgType>text</MsgType><Content>forged</Content></xml>");
    let (status, body) = app.post(&query, compat).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(open_reply(&body).get("ToUserName"), Some("o_compat"));
    let jobs = app.store.recent_jobs(5).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].prompt, "encrypted prompt");
}

async fn help_welcome_voice_image_and_unknown_kinds(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = settings("sqlite://unused", &[]).replies;
    let content = |body: &str| {
        xml::parse(body.as_bytes())
            .expect("xml")
            .get("Content")
            .map(str::to_string)
    };

    let (status, body) = app.post_plain(&text_xml("u", 1, "帮助")).await;
    assert_eq!((status, content(&body)), (200, Some(s.help.clone())));

    let base = format!(
        "<ToUserName>{ACCOUNT}</ToUserName><FromUserName>u</FromUserName><CreateTime>1700000001</CreateTime>"
    );
    let (status, body) = app
        .post_plain(&format!(
            "<xml>{base}<MsgType>event</MsgType><Event>subscribe</Event></xml>"
        ))
        .await;
    assert_eq!((status, content(&body)), (200, Some(s.welcome.clone())));

    let (status, body) = app
        .post_plain(&format!("<xml>{base}<MsgType>voice</MsgType><MediaId>m</MediaId><Format>amr</Format><Recognition>一只橘猫</Recognition><MsgId>2</MsgId></xml>"))
        .await;
    assert_eq!((status, content(&body)), (200, Some(s.received.clone())));

    let (status, body) = app.post_plain(&format!("<xml>{base}<MsgType>image</MsgType><PicUrl>p</PicUrl><MediaId>m</MediaId><MsgId>3</MsgId></xml>")).await;
    assert_eq!((status, content(&body)), (200, Some(s.unsupported.clone())));

    for unknown in [
        "<MsgType>video</MsgType><MediaId>m</MediaId><MsgId>4</MsgId>",
        "<MsgType>location</MsgType><Location_X>1</Location_X><MsgId>5</MsgId>",
        "<MsgType>event</MsgType><Event>unsubscribe</Event>",
        "<MsgType>event</MsgType><Event>SCAN</Event><EventKey>9</EventKey>",
        "<MsgType>event</MsgType><Event>VIEW</Event><EventKey>https://x</EventKey>",
    ] {
        let (status, body) = app.post_plain(&format!("<xml>{base}{unknown}</xml>")).await;
        assert_eq!((status, body.as_str()), (200, "success"), "{unknown}");
    }
    let (status, body) = app
        .post_plain(&format!(
            "<xml>{base}<MsgType>event</MsgType><Event>CLICK</Event><EventKey>MENU</EventKey></xml>"
        ))
        .await;
    assert_eq!((status, content(&body)), (200, Some(s.help.clone())));

    let jobs = app.store.recent_jobs(10).await.expect("jobs");
    assert_eq!(
        jobs.iter().map(|j| j.prompt.as_str()).collect::<Vec<_>>(),
        vec!["一只橘猫"]
    );
}

async fn refusals_store_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let good = text_xml("o_r", 500, "prompt");
    let t = now();

    // Bad signature, missing signature, stale and future timestamps.
    let mut bad = plain_query(t, "n");
    bad[0].1 = signature::sign(&["wrong-token", &t.to_string(), "n"]);
    assert_eq!(app.post(&bad, good.clone()).await.0, 401);
    assert_eq!(
        app.post(
            &q(&[("timestamp", &t.to_string()), ("nonce", "n")]),
            good.clone()
        )
        .await
        .0,
        401
    );
    assert_eq!(
        app.post(&plain_query(t - 700, "n"), good.clone()).await.0,
        401
    );
    assert_eq!(
        app.post(&plain_query(t + 700, "n"), good.clone()).await.0,
        401
    );
    assert_eq!(
        app.post(&plain_query(t - 590, "n"), text_xml("o_fresh", 1, "x"))
            .await
            .0,
        200,
        "inside the skew is fine"
    );
    let before = app.counts().await;

    // Oversized body.
    let huge = text_xml("o_r", 501, &"画".repeat(30_000));
    assert!(huge.len() > 65536);
    assert_eq!(app.post(&plain_query(t, "n"), huge).await.0, 413);

    // DOCTYPE, in plaintext and inside the ciphertext.
    let doctype = format!(
        "<!DOCTYPE xml [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>{}",
        text_xml("o_r", 502, "&e;")
    );
    let (status, body) = app.post(&plain_query(t, "n"), doctype.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("DOCTYPE"), "{body}");
    let (enc, query) = encrypted_request(&doctype, t, "n");
    assert_eq!(app.post(&query, enc).await.0, 400);

    // Malformed XML and missing fields.
    for body in [
        "",
        "hello",
        "<xml><ToUserName>g</ToUserName>",
        "<xml><MsgType>text</MsgType></xml>",
        "{\"json\":1}",
    ] {
        assert_eq!(
            app.post(&plain_query(t, "n"), body.to_string()).await.0,
            400,
            "{body:?}"
        );
    }

    // Encrypted: tampered ciphertext, wrong msg_signature, wrong AppID inside.
    let (enc, mut query) = encrypted_request(&text_xml("o_r", 503, "x"), t, "n");
    let tampered = enc.replacen("<Encrypt><![CDATA[", "<Encrypt><![CDATA[A", 1);
    assert_eq!(app.post(&query, tampered).await.0, 401);
    query[4].1 = "0".repeat(40);
    assert_eq!(app.post(&query, enc.clone()).await.0, 401);
    let other_app = huabi::channel::wechat::crypto::AesKey::from_encoding_key(AES_KEY)
        .expect("key")
        .encrypt(text_xml("o_r", 504, "x").as_bytes(), "wx_other_app");
    let ts = t.to_string();
    let body = format!("<xml><Encrypt><![CDATA[{other_app}]]></Encrypt></xml>");
    let query = q(&[
        ("timestamp", &ts),
        ("nonce", "n"),
        ("encrypt_type", "aes"),
        (
            "msg_signature",
            &signature::sign(&[TOKEN, &ts, "n", &other_app]),
        ),
    ]);
    assert_eq!(app.post(&query, body).await.0, 400);

    assert_eq!(app.counts().await, before, "no refusal stored anything");
}

async fn commands_and_options_reach_the_queue(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply_text = |body: &str| {
        huabi::channel::wechat::xml::parse(body.as_bytes())
            .expect("xml")
            .get("Content")
            .unwrap_or_default()
            .to_string()
    };
    let (_, body) = app
        .post_plain(&text_xml("o_cmd", 1, "月饼 横版 种子 42 不要 文字"))
        .await;
    assert!(reply_text(&body).contains("收到"), "{body}");
    let (_, body) = app.post_plain(&text_xml("o_cmd", 2, "进度")).await;
    let status = reply_text(&body);
    assert!(
        status.contains("你有 1 张") && status.contains("前面还有 0 张"),
        "{status}"
    );
    let (_, body) = app.post_plain(&text_xml("o_cmd", 3, "重画")).await;
    assert!(reply_text(&body).contains("收到"), "{body}");
    let (_, body) = app.post_plain(&text_xml("o_cmd", 4, "额度")).await;
    assert!(reply_text(&body).contains("今天还能画 18 张"), "{body}");
    let (_, body) = app.post_plain(&text_xml("o_cmd", 5, "猫 --seed abc")).await;
    assert!(reply_text(&body).contains("没看懂"), "{body}");
    let (_, body) = app.post_plain(&text_xml("o_new", 6, "重画")).await;
    assert!(reply_text(&body).contains("还没有"), "{body}");
    assert_eq!(
        app.counts().await.jobs,
        2,
        "the painting and its 重画; nothing else"
    );
    let leased = app
        .store
        .lease_jobs("t", &crate::helpers::paints_default(), 10, 30.0, 3)
        .await
        .expect("lease");
    assert_eq!(leased.len(), 2);
    let (first, again) = (&leased[0], &leased[1]);
    assert_eq!((first.width, first.height, first.seed), (704, 384, 42));
    assert_eq!(first.prompt, "月饼");
    assert_eq!(first.negative_prompt, "文字");
    assert_eq!((again.prompt.as_str(), again.width), ("月饼", 704));
    assert_ne!(again.seed, 42, "重画 paints with a new seed");
}

on_both_databases!(
    commands_and_options_reach_the_queue,
    v1_url_verification_over_http,
    v1_plaintext_post_signature_over_http,
    v2_safe_mode_message_is_admitted_once_with_an_encrypted_reply,
    compatible_mode_uses_the_ciphertext_and_encrypts_the_reply,
    help_welcome_voice_image_and_unknown_kinds,
    refusals_store_nothing,
);

#[tokio::test]
async fn previous_key_still_opens_messages_after_rotation() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            (
                "HUABI__WECHAT__AES_KEY",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ),
            ("HUABI__WECHAT__PREVIOUS_AES_KEY", AES_KEY),
        ],
    )
    .await;
    let (body, query) = encrypted_request(&text_xml("o_rot", 9, "old key"), now(), "n9");
    let (status, reply) = app.post(&query, body).await;
    assert_eq!(status, 200, "{reply}");
    // open_reply uses the old key: the reply is encrypted with the key that worked.
    assert_eq!(open_reply(&reply).get("ToUserName"), Some("o_rot"));
}

#[tokio::test]
async fn encrypted_request_without_a_configured_key_is_refused() {
    let app = spawn_app_with(Backend::Sqlite, &[("HUABI__WECHAT__AES_KEY", "")]).await;
    let (body, query) = encrypted_request(&text_xml("o", 1, "x"), now(), "n");
    let (status, text) = app.post(&query, body).await;
    assert_eq!(status, 400);
    assert!(text.contains("aes_key"), "{text}");
}

#[tokio::test]
async fn unconfigured_token_answers_503() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[("HUABI__WECHAT__TOKEN", ""), ("HUABI__WECHAT__AES_KEY", "")],
    )
    .await;
    assert_eq!(app.post_plain(&text_xml("o", 1, "x")).await.0, 503);
    assert_eq!(app.counts().await.inbound, 0);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let app = spawn_app(Backend::Sqlite).await;
    let get = |path: &str| app.client.get(format!("http://{}{path}", app.addr)).send();
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    assert_eq!(get("/readyz").await.expect("readyz").status(), 200);
    app.post_plain(&text_xml("o_m", 1, "x")).await;
    let metrics = get("/metrics")
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("huabi_webhook_admitted_total"),
        "{metrics}"
    );
}
