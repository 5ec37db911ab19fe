use super::api::parse_answer;
use super::*;
use crate::channel::ErrorClass;

fn bot() -> TelegramChannel {
    TelegramChannel::new("bot", SecretString::from("s3cret-token"))
}

fn update(id: i64, message: &str) -> Vec<u8> {
    format!(r#"{{"update_id":{id},"message":{message}}}"#).into_bytes()
}

fn private(text: &str) -> String {
    format!(
        r#"{{"message_id":7,"date":1700000000,"chat":{{"id":4242,"type":"private"}},"from":{{"id":4242,"is_bot":false,"first_name":"A"}},"text":{}}}"#,
        serde_json::to_string(text).expect("json")
    )
}

#[test]
fn the_secret_token_is_checked() {
    let ch = bot();
    assert!(ch.verify(Some(b"s3cret-token")).is_ok());
    assert!(matches!(ch.verify(None), Err(TelegramError::BadSecret)));
    assert!(matches!(
        ch.verify(Some(b"s3cret-tokeN")),
        Err(TelegramError::BadSecret)
    ));
    assert!(matches!(
        ch.verify(Some(b"s3cret")),
        Err(TelegramError::BadSecret)
    ));
    assert!(matches!(
        ch.verify(Some(b"")),
        Err(TelegramError::BadSecret)
    ));
    let open = TelegramChannel::new("bot", SecretString::from(""));
    assert!(matches!(
        open.verify(Some(b"")),
        Err(TelegramError::NotConfigured)
    ));
}

#[test]
fn messages_become_inbound_deduplicated_by_update_id() {
    let m = bot()
        .parse(&update(900, &private("画 一只猫")))
        .expect("valid")
        .expect("a message");
    assert_eq!(
        (
            m.channel,
            m.account.as_str(),
            m.user_id.as_str(),
            m.dedup_key.as_str()
        ),
        ("telegram", "bot", "4242", "u:900")
    );
    assert_eq!(m.message_id.as_deref(), Some("7"));
    assert_eq!(m.sent_at, 1700000000);
    assert_eq!(
        m.kind,
        InboundKind::Text {
            content: "画 一只猫".into()
        }
    );
}

#[test]
fn commands_map_to_what_wechat_followers_send() {
    let kind = |text: &str| {
        bot()
            .parse(&update(1, &private(text)))
            .expect("valid")
            .expect("message")
            .kind
    };
    assert_eq!(
        kind("/start"),
        InboundKind::Event(Event::Subscribe { scene: None })
    );
    assert_eq!(
        kind("/start mid-autumn"),
        InboundKind::Event(Event::Subscribe {
            scene: Some("mid-autumn".into())
        })
    );
    assert_eq!(
        kind("/help"),
        InboundKind::Text {
            content: "help".into()
        }
    );
    assert_eq!(
        kind("/help@huabi_bot"),
        InboundKind::Text {
            content: "help".into()
        }
    );
    assert_eq!(
        kind("/draw a cat"),
        InboundKind::Text {
            content: "a cat".into()
        }
    );
    assert_eq!(
        kind("/unknown x"),
        InboundKind::Text {
            content: "/unknown x".into()
        }
    );
}

#[test]
fn photos_take_the_largest_size_and_other_updates_are_ignored() {
    let photo = r#"{"message_id":8,"date":1,"chat":{"id":5,"type":"private"},"photo":[
        {"file_id":"small","file_unique_id":"a","width":90,"height":60},
        {"file_id":"large","file_unique_id":"b","width":1280,"height":853},
        {"file_id":"medium","file_unique_id":"c","width":320,"height":213}]}"#;
    let m = bot()
        .parse(&update(2, photo))
        .expect("valid")
        .expect("message");
    assert_eq!(
        m.kind,
        InboundKind::Image {
            media_id: "large".into()
        }
    );
    let group = r#"{"message_id":9,"date":1,"chat":{"id":-100,"type":"group"},"text":"hi"}"#;
    assert_eq!(bot().parse(&update(3, group)).expect("valid"), None);
    assert_eq!(
        bot()
            .parse(br#"{"update_id":4,"edited_message":{"message_id":1}}"#)
            .expect("valid"),
        None
    );
    let sticker = r#"{"message_id":10,"date":1,"chat":{"id":5,"type":"private"},"sticker":{}}"#;
    assert_eq!(
        bot()
            .parse(&update(5, sticker))
            .expect("valid")
            .expect("message")
            .kind,
        InboundKind::Other {
            kind: "other".into()
        }
    );
}

#[test]
fn hostile_updates_are_errors_not_panics() {
    let long = "x".repeat(MAX_TEXT_BYTES + 1);
    for body in [
        b"".to_vec(),
        b"not json".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        br#"{"update_id":"1"}"#.to_vec(),
        br#"{"update_id":1,"message":{"message_id":1}}"#.to_vec(),
        br#"{"update_id":1,"message":{"message_id":1,"date":1,"chat":{"id":"x","type":"private"}}}"#.to_vec(),
        br#"{"update_id":1,"message":{"message_id":1,"date":1,"chat":{"id":1,"type":"private"},"photo":[]}}"#
            .to_vec(),
        update(1, &private(&long)),
        format!(
            r#"{{"update_id":1,"message":{{"message_id":1,"date":1,"chat":{{"id":1,"type":"private"}},"photo":[{{"file_id":"{}","width":1,"height":1}}]}}}}"#,
            "f".repeat(MAX_ID_LEN + 1)
        )
        .into_bytes(),
        vec![b'['; 100_000],
    ] {
        assert!(
            matches!(bot().parse(&body), Err(TelegramError::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
    }
}

#[test]
fn api_answers_are_classified() {
    assert_eq!(
        parse_answer(200, br#"{"ok":true,"result":{"message_id":1}}"#).expect("ok")["message_id"],
        1
    );
    let err = |status, body: &[u8]| parse_answer(status, body).expect_err("error");
    let slow = err(
        429,
        br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#,
    );
    assert_eq!(
        (slow.class, slow.retry_after_secs),
        (ErrorClass::Transient, Some(7.0))
    );
    let blocked = err(
        403,
        br#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
    );
    assert_eq!(blocked.class, ErrorClass::Blocked);
    assert_eq!(
        err(
            400,
            br#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#
        )
        .class,
        ErrorClass::Permanent
    );
    assert_eq!(
        err(502, b"<html>Bad Gateway</html>").class,
        ErrorClass::Transient
    );
    assert_eq!(err(200, b"garbage").class, ErrorClass::Permanent);
    assert_eq!(err(200, br#"{"ok":false}"#).class, ErrorClass::Permanent);
}
