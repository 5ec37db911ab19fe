//! Parse + decrypt: the bytes are a request body; a signed, encrypted body is opened and its message parsed,
//! exactly as the webhook does. Nothing may panic.
#![no_main]

use huabi::channel::wechat::{WebhookQuery, WechatChannel, crypto::AesKey, parse_inbound, signature, xml};
use huabi::config::Settings;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const TOKEN: &str = "QDG6eK";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const APP_ID: &str = "wx5823bf96d3bd56c7";

static CHANNEL: LazyLock<WechatChannel> = LazyLock::new(|| {
    let env = [
        ("HUABI__WECHAT__TOKEN", TOKEN),
        ("HUABI__WECHAT__AES_KEY", KEY),
        ("HUABI__WECHAT__APP_ID", APP_ID),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    WechatChannel::new("default", &Settings::load_from(env).expect("settings").wechat).expect("channel")
});

fuzz_target!(|data: &[u8]| {
    // 1. The raw bytes as a plaintext body and as the flat XML of a decrypted message.
    if let Ok(fields) = xml::parse(data) {
        let _ = parse_inbound(&fields);
    }
    // 2. The raw bytes as ciphertext.
    let key = AesKey::from_encoding_key(KEY).expect("key");
    let _ = key.decrypt(&String::from_utf8_lossy(data), APP_ID);
    // 3. The bytes encrypted and signed correctly, so the fuzzer reaches the inner parser through the channel.
    let encrypt = key.encrypt_with_random(data, APP_ID, &[7u8; 16]);
    let body = format!("<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>");
    let query = WebhookQuery {
        timestamp: Some("1700000000".into()),
        nonce: Some("n".into()),
        encrypt_type: Some("aes".into()),
        msg_signature: Some(signature::sign(&[TOKEN, "1700000000", "n", &encrypt])),
        ..WebhookQuery::default()
    };
    if let Ok(received) = CHANNEL.receive(&query, body.as_bytes(), 1_700_000_000) {
        let _ = CHANNEL.render_reply(&received, &huabi::channel::Reply::Text { text: "x".into() }, 1);
    }
});
