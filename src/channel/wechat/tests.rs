use super::*;
use crate::config::Settings;
use std::collections::HashMap;

const V2_TOKEN: &str = "QDG6eK";
const V2_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const V2_APPID: &str = "wx5823bf96d3bd56c7";
const V2_BODY: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>";

fn channel(token: &str, key: &str, app_id: &str) -> WechatChannel {
    let env: HashMap<String, String> = [
        ("HUABI__WECHAT__TOKEN", token),
        ("HUABI__WECHAT__AES_KEY", key),
        ("HUABI__WECHAT__APP_ID", app_id),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let settings = Settings::load_from(env).expect("valid settings");
    WechatChannel::new("default", &settings.wechat).expect("valid keys")
}

fn query(pairs: &[(&str, &str)]) -> WebhookQuery {
    let mut q = WebhookQuery::default();
    for (k, v) in pairs {
        let v = Some(v.to_string());
        match *k {
            "signature" => q.signature = v,
            "timestamp" => q.timestamp = v,
            "nonce" => q.nonce = v,
            "echostr" => q.echostr = v,
            "encrypt_type" => q.encrypt_type = v,
            "msg_signature" => q.msg_signature = v,
            _ => {}
        }
    }
    q
}

#[test]
fn v1_url_verification_returns_echostr() {
    let ch = channel("AAAAA", "", "");
    let q = query(&[
        ("signature", "f464b24fc39322e44b38aa78f5edd27bd1441696"),
        ("timestamp", "1714036504"),
        ("nonce", "1514711492"),
        ("echostr", "4375120948345356249"),
    ]);
    assert_eq!(
        ch.verify_url(&q, 1714036504).expect("valid"),
        "4375120948345356249"
    );
    assert!(matches!(
        ch.verify_url(&q, 1714036504 + 601),
        Err(WechatError::StaleTimestamp)
    ));
    let mut bad = q.clone();
    bad.signature = Some("f464b24fc39322e44b38aa78f5edd27bd1441690".into());
    assert!(matches!(
        ch.verify_url(&bad, 1714036504),
        Err(WechatError::BadSignature)
    ));
}

#[test]
fn v2_encrypted_url_verification_returns_decrypted_echostr() {
    let ch = channel(V2_TOKEN, V2_KEY, V2_APPID);
    let q = query(&[
        ("msg_signature", "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"),
        ("timestamp", "1409659589"),
        ("nonce", "263014780"),
        (
            "echostr",
            "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
        ),
    ]);
    assert_eq!(
        ch.verify_url(&q, 1409659589).expect("valid"),
        "1616140317555161061"
    );
}

#[test]
fn v2_safe_mode_post_is_verified_decrypted_and_parsed() {
    let ch = channel(V2_TOKEN, V2_KEY, V2_APPID);
    let q = query(&[
        ("msg_signature", "477715d11cdb4164915debcba66cb864d751f3e6"),
        ("timestamp", "1409659813"),
        ("nonce", "1372623149"),
        ("encrypt_type", "aes"),
    ]);
    let received = ch
        .receive(&q, V2_BODY.as_bytes(), 1409659813)
        .expect("valid");
    assert_eq!(received.inbound.user_id, "mycreate");
    assert_eq!(
        received.inbound.account, "default",
        "stored under the account's name"
    );
    assert_eq!(
        received.original_id, "wx5823bf96d3bd56c7",
        "replies come from it"
    );
    assert_eq!(
        received.inbound.message_id.as_deref(),
        Some("4561255354251345929")
    );
    assert_eq!(
        received.inbound.dedup_key,
        "m:4561255354251345929:1409659813:mycreate"
    );
    assert_eq!(
        received.inbound.kind,
        InboundKind::Text {
            content: "hello".into()
        }
    );
    assert_eq!(
        received.mode,
        ReplyMode::Encrypted {
            key_index: 0,
            nonce: "1372623149".into()
        }
    );

    // The reply is encrypted, signed, and opens with our key to the expected text.
    let body = ch.render_reply(
        &received,
        &Reply::Text {
            text: "收到 ]]> ok".into(),
        },
        1409659900,
    );
    let env = xml::parse(body.as_bytes()).expect("envelope");
    let encrypt = env.get("Encrypt").expect("Encrypt");
    assert_eq!(env.get("TimeStamp"), Some("1409659900"));
    assert_eq!(env.get("Nonce"), Some("1372623149"));
    assert!(signature::verify(
        env.get("MsgSignature").expect("sig"),
        &[V2_TOKEN, "1409659900", "1372623149", encrypt]
    ));
    let inner = AesKey::from_encoding_key(V2_KEY)
        .expect("key")
        .decrypt(encrypt, V2_APPID)
        .expect("opens");
    let inner = xml::parse(&inner).expect("inner xml");
    assert_eq!(inner.get("Content"), Some("收到 ]]> ok"));
    assert_eq!(inner.get("ToUserName"), Some("mycreate"));
    assert_eq!(inner.get("FromUserName"), Some("wx5823bf96d3bd56c7"));
    // "success" is never encrypted.
    assert_eq!(ch.render_reply(&received, &Reply::None, 0), "success");
}

#[test]
fn v2_refusals_wrong_nonce_appid_key_and_mode() {
    let good = [
        ("msg_signature", "477715d11cdb4164915debcba66cb864d751f3e6"),
        ("timestamp", "1409659813"),
        ("nonce", "1372623149"),
        ("encrypt_type", "aes"),
    ];
    let ch = channel(V2_TOKEN, V2_KEY, V2_APPID);
    let mut wrong_nonce = good;
    wrong_nonce[2].1 = "1372623148";
    assert!(matches!(
        ch.receive(&query(&wrong_nonce), V2_BODY.as_bytes(), 1409659813),
        Err(WechatError::BadSignature)
    ));
    assert!(matches!(
        ch.receive(&query(&good), V2_BODY.as_bytes(), 1409659813 + 3600),
        Err(WechatError::StaleTimestamp)
    ));
    let other_app = channel(V2_TOKEN, V2_KEY, "wx0000000000000000");
    assert!(matches!(
        other_app.receive(&query(&good), V2_BODY.as_bytes(), 1409659813),
        Err(WechatError::Crypto(CryptoError::AppIdMismatch))
    ));
    let no_key = channel(V2_TOKEN, "", "");
    assert!(matches!(
        no_key.receive(&query(&good), V2_BODY.as_bytes(), 1409659813),
        Err(WechatError::EncryptionNotConfigured)
    ));
    let mut odd = good;
    odd[3].1 = "rsa";
    assert!(matches!(
        ch.receive(&query(&odd), V2_BODY.as_bytes(), 1409659813),
        Err(WechatError::UnsupportedEncryption(_))
    ));
}

#[test]
fn previous_key_opens_messages_and_encrypts_the_reply() {
    let env: HashMap<String, String> = [
        ("HUABI__WECHAT__TOKEN", V2_TOKEN),
        (
            "HUABI__WECHAT__AES_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        ("HUABI__WECHAT__PREVIOUS_AES_KEY", V2_KEY),
        ("HUABI__WECHAT__APP_ID", V2_APPID),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let ch = WechatChannel::new("default", &Settings::load_from(env).expect("valid").wechat)
        .expect("keys");
    let q = query(&[
        ("msg_signature", "477715d11cdb4164915debcba66cb864d751f3e6"),
        ("timestamp", "1409659813"),
        ("nonce", "1372623149"),
        ("encrypt_type", "aes"),
    ]);
    let received = ch
        .receive(&q, V2_BODY.as_bytes(), 1409659813)
        .expect("previous key opens it");
    assert!(matches!(
        received.mode,
        ReplyMode::Encrypted { key_index: 1, .. }
    ));
    let body = ch.render_reply(&received, &Reply::Text { text: "hi".into() }, 1);
    let encrypt = xml::parse(body.as_bytes())
        .expect("xml")
        .get("Encrypt")
        .expect("enc")
        .to_string();
    AesKey::from_encoding_key(V2_KEY)
        .expect("key")
        .decrypt(&encrypt, V2_APPID)
        .expect("reply uses the key that worked");
}

#[test]
fn unconfigured_token_refuses_everything() {
    let ch = channel("", "", "");
    let q = query(&[
        ("signature", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        ("timestamp", "1"),
        ("nonce", ""),
        ("echostr", "x"),
    ]);
    assert!(matches!(
        ch.verify_url(&q, 1),
        Err(WechatError::NotConfigured)
    ));
}

fn plain(fields: &str) -> Result<Inbound, WechatError> {
    parse_inbound(&xml::parse(format!("<xml><ToUserName>gh_1</ToUserName><FromUserName>o_user</FromUserName><CreateTime>1700000000</CreateTime>{fields}</xml>").as_bytes())?)
}

#[test]
fn message_kinds_are_parsed() {
    let text = plain("<MsgType>text</MsgType><Content>月下 桂花</Content><MsgId>42</MsgId>")
        .expect("text");
    assert_eq!(
        text.kind,
        InboundKind::Text {
            content: "月下 桂花".into()
        }
    );
    assert_eq!(text.dedup_key, "m:42:1700000000:o_user");

    let voice = plain("<MsgType>voice</MsgType><MediaId>m</MediaId><Format>amr</Format><Recognition>画一只猫</Recognition><MsgId>43</MsgId>").expect("voice");
    assert_eq!(
        voice.kind,
        InboundKind::Voice {
            recognition: Some("画一只猫".into())
        }
    );
    let mute = plain(
        "<MsgType>voice</MsgType><MediaId>m</MediaId><Recognition></Recognition><MsgId>44</MsgId>",
    )
    .expect("voice");
    assert_eq!(mute.kind, InboundKind::Voice { recognition: None });

    let image = plain(
        "<MsgType>image</MsgType><PicUrl>u</PicUrl><MediaId>media</MediaId><MsgId>45</MsgId>",
    )
    .expect("image");
    assert_eq!(
        image.kind,
        InboundKind::Image {
            media_id: "media".into()
        }
    );

    let sub =
        plain("<MsgType>event</MsgType><Event>subscribe</Event><EventKey>qrscene_123</EventKey>")
            .expect("subscribe");
    assert_eq!(
        sub.kind,
        InboundKind::Event(Event::Subscribe {
            scene: Some("123".into())
        })
    );
    assert_eq!(sub.dedup_key, "e:o_user:1700000000:subscribe:qrscene_123");
    assert_eq!(sub.message_id, None);
    let unsub = plain("<MsgType>event</MsgType><Event>unsubscribe</Event>").expect("unsubscribe");
    assert_eq!(unsub.kind, InboundKind::Event(Event::Unsubscribe));
    let click = plain("<MsgType>event</MsgType><Event>CLICK</Event><EventKey>MIDAUTUMN</EventKey>")
        .expect("click");
    assert_eq!(
        click.kind,
        InboundKind::Event(Event::Click {
            key: "MIDAUTUMN".into()
        })
    );
    let scan = plain(
        "<MsgType>event</MsgType><Event>SCAN</Event><EventKey>7</EventKey><Ticket>t</Ticket>",
    )
    .expect("scan");
    assert_eq!(
        scan.kind,
        InboundKind::Event(Event::Scan { scene: "7".into() })
    );
    let loc = plain("<MsgType>event</MsgType><Event>LOCATION</Event>").expect("other event");
    assert_eq!(
        loc.kind,
        InboundKind::Event(Event::Other {
            name: "LOCATION".into()
        })
    );
    let video = plain("<MsgType>video</MsgType><MsgId>46</MsgId>").expect("other kind");
    assert_eq!(
        video.kind,
        InboundKind::Other {
            kind: "video".into()
        }
    );
}

#[test]
fn events_differing_only_in_key_are_distinct() {
    let a = plain("<MsgType>event</MsgType><Event>CLICK</Event><EventKey>A</EventKey>").expect("a");
    let b = plain("<MsgType>event</MsgType><Event>CLICK</Event><EventKey>B</EventKey>").expect("b");
    assert_ne!(a.dedup_key, b.dedup_key);
}

#[test]
fn malformed_messages_are_refused() {
    for fields in [
        "<MsgType>text</MsgType>",  // no Content
        "<Content>x</Content>",     // no MsgType
        "<MsgType>event</MsgType>", // no Event
    ] {
        assert!(plain(fields).is_err(), "{fields}");
    }
    assert!(parse_inbound(&xml::parse(b"<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>x</Content></xml>").expect("xml")).is_err());
    assert!(parse_inbound(&xml::parse(b"<xml><ToUserName>g</ToUserName><FromUserName>u</FromUserName><CreateTime>soon</CreateTime><MsgType>text</MsgType><Content>x</Content></xml>").expect("xml")).is_err());
    let long_user = "u".repeat(200);
    assert!(parse_inbound(&xml::parse(format!("<xml><ToUserName>g</ToUserName><FromUserName>{long_user}</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>x</Content></xml>").as_bytes()).expect("xml")).is_err());
    assert!(parse_inbound(&xml::parse(b"<xml><ToUserName>g</ToUserName><FromUserName>a&#10;b</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>x</Content></xml>").expect("xml")).is_err());
}
