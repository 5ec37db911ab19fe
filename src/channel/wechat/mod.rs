//! The WeChat Official Account channel: URL verification, signature and freshness checks, the three
//! message modes (plaintext, compatible, safe), message parsing and passive replies.

pub mod api;
pub mod crypto;
pub mod signature;
pub mod xml;

use secrecy::{ExposeSecret, SecretString};

use crate::config::WechatSettings;
use crate::model::{Event, Inbound, InboundKind, Reply};
use crypto::{AesKey, CryptoError};
use xml::{Fields, XmlError};

/// The channel's name in storage and logs.
pub const CHANNEL: &str = "wechat";
/// Longest user id, account id or message id accepted.
const MAX_ID_LEN: usize = 128;

/// Why a WeChat request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WechatError {
    /// No Token is configured, so no request can be authenticated.
    #[error("the WeChat Token is not configured")]
    NotConfigured,
    /// A signature parameter is missing.
    #[error("missing query parameter {0}")]
    MissingParam(&'static str),
    /// The signature does not match.
    #[error("signature mismatch")]
    BadSignature,
    /// The timestamp is too far from now (or not a number).
    #[error("timestamp outside the allowed clock skew")]
    StaleTimestamp,
    /// `encrypt_type=aes` arrived but no EncodingAESKey is configured.
    #[error("encrypted message received but wechat.aes_key is not set")]
    EncryptionNotConfigured,
    /// An `encrypt_type` other than `raw` or `aes`.
    #[error("unsupported encrypt_type {0:?}")]
    UnsupportedEncryption(String),
    /// The body is not a WeChat XML document.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The encrypted payload could not be opened.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The XML lacks a field or a field has a bad value.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The signature-related query parameters WeChat appends to every request.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct WebhookQuery {
    /// sha1(token, timestamp, nonce).
    pub signature: Option<String>,
    /// Unix seconds, as sent.
    pub timestamp: Option<String>,
    /// Random value.
    pub nonce: Option<String>,
    /// URL verification challenge (GET only).
    pub echostr: Option<String>,
    /// `aes` for compatible/safe mode, absent or `raw` for plaintext.
    pub encrypt_type: Option<String>,
    /// sha1(token, timestamp, nonce, Encrypt) in encrypted modes.
    pub msg_signature: Option<String>,
    /// The follower's OpenID (informational).
    pub openid: Option<String>,
}

/// How the reply to a request must be written: in the request's own mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyMode {
    /// Plain XML.
    Plain,
    /// Encrypted with the key at `key_index`, echoing the request's `nonce`.
    Encrypted {
        /// Which configured key opened the request (0 = current, 1 = previous).
        key_index: usize,
        /// The request's nonce.
        nonce: String,
    },
}

/// A verified, parsed message and how to answer it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The message, its `account` the configured account's name.
    pub inbound: Inbound,
    /// The account's original id (`gh_…`, the message's `ToUserName`), which replies come from.
    pub original_id: String,
    /// The reply mode.
    pub mode: ReplyMode,
}

/// One configured WeChat Official Account.
pub struct WechatChannel {
    name: String,
    token: SecretString,
    app_id: String,
    /// Current key first, then the previous one.
    keys: Vec<AesKey>,
    max_skew_secs: u64,
}

impl std::fmt::Debug for WechatChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatChannel")
            .field("app_id", &self.app_id)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

fn required<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str, WechatError> {
    value.as_deref().ok_or(WechatError::MissingParam(name))
}

impl WechatChannel {
    /// Builds account `name`'s channel from its settings (keys were validated when the settings were loaded).
    pub fn new(name: &str, settings: &WechatSettings) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        if !settings.aes_key.expose_secret().is_empty() {
            for key in [&settings.aes_key, &settings.previous_aes_key] {
                if !key.expose_secret().is_empty() {
                    keys.push(AesKey::from_encoding_key(key.expose_secret())?);
                }
            }
        }
        Ok(Self {
            name: name.to_string(),
            token: settings.token.clone(),
            app_id: settings.app_id.clone(),
            keys,
            max_skew_secs: settings.max_clock_skew_secs,
        })
    }

    /// Whether a Token is configured.
    pub fn is_configured(&self) -> bool {
        !self.token.expose_secret().is_empty()
    }

    fn check_fresh(&self, query: &WebhookQuery, now: i64) -> Result<(), WechatError> {
        let timestamp = required(&query.timestamp, "timestamp")?;
        if signature::timestamp_is_fresh(timestamp, now, self.max_skew_secs) {
            Ok(())
        } else {
            Err(WechatError::StaleTimestamp)
        }
    }

    fn check_signature(
        &self,
        query: &WebhookQuery,
        extra: Option<&str>,
    ) -> Result<(), WechatError> {
        if !self.is_configured() {
            return Err(WechatError::NotConfigured);
        }
        let timestamp = required(&query.timestamp, "timestamp")?;
        let nonce = required(&query.nonce, "nonce")?;
        let token = self.token.expose_secret();
        let (given, ok) = match extra {
            None => {
                let given = required(&query.signature, "signature")?;
                (given, signature::verify(given, &[token, timestamp, nonce]))
            }
            Some(extra) => {
                let given = required(&query.msg_signature, "msg_signature")?;
                (
                    given,
                    signature::verify(given, &[token, timestamp, nonce, extra]),
                )
            }
        };
        if ok && !given.is_empty() {
            Ok(())
        } else {
            Err(WechatError::BadSignature)
        }
    }

    /// Answers WeChat's URL verification: the `echostr` to send back. With `msg_signature` and a key
    /// configured the challenge is encrypted (the WeCom form) and its plaintext is returned.
    pub fn verify_url(&self, query: &WebhookQuery, now: i64) -> Result<String, WechatError> {
        let echostr = required(&query.echostr, "echostr")?;
        if query.msg_signature.is_some() && !self.keys.is_empty() {
            self.check_signature(query, Some(echostr))?;
            self.check_fresh(query, now)?;
            let (plain, _) = crypto::decrypt_with_any(&self.keys, echostr, &self.app_id)?;
            return String::from_utf8(plain)
                .map_err(|_| WechatError::Malformed("echostr is not UTF-8".into()));
        }
        self.check_signature(query, None)?;
        self.check_fresh(query, now)?;
        Ok(echostr.to_string())
    }

    /// Verifies, decrypts when needed, and parses a pushed message.
    pub fn receive(
        &self,
        query: &WebhookQuery,
        body: &[u8],
        now: i64,
    ) -> Result<Received, WechatError> {
        match query.encrypt_type.as_deref() {
            None | Some("") | Some("raw") => {
                self.check_signature(query, None)?;
                self.check_fresh(query, now)?;
                let fields = xml::parse(body)?;
                Ok(self.received(parse_inbound(&fields)?, ReplyMode::Plain))
            }
            Some("aes") => {
                if self.keys.is_empty() {
                    return Err(WechatError::EncryptionNotConfigured);
                }
                let envelope = xml::parse(body)?;
                let encrypt = envelope.get("Encrypt").ok_or_else(|| {
                    WechatError::Malformed("encrypted body has no Encrypt field".into())
                })?;
                self.check_signature(query, Some(encrypt))?;
                self.check_fresh(query, now)?;
                let (plain, key_index) =
                    crypto::decrypt_with_any(&self.keys, encrypt, &self.app_id)?;
                let fields = xml::parse(&plain)?;
                let nonce = required(&query.nonce, "nonce")?.to_string();
                let mode = ReplyMode::Encrypted { key_index, nonce };
                Ok(self.received(parse_inbound(&fields)?, mode))
            }
            Some(other) => Err(WechatError::UnsupportedEncryption(
                other.chars().take(16).collect(),
            )),
        }
    }

    /// The account's name in storage and URLs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `inbound` as sent to this account: stored under the account's name, answered from its original id.
    fn received(&self, mut inbound: Inbound, mode: ReplyMode) -> Received {
        let original_id = std::mem::replace(&mut inbound.account, self.name.clone());
        Received {
            inbound,
            original_id,
            mode,
        }
    }

    /// Renders `reply` to `inbound` as the HTTP response body, encrypted when the request was.
    pub fn render_reply(&self, received: &Received, reply: &Reply, now: i64) -> String {
        let (user, from) = (&received.inbound.user_id, &received.original_id);
        let plain = match reply {
            // An empty body or "success" needs no encryption.
            Reply::None => return "success".to_string(),
            Reply::Text { text } => xml::text_reply(user, from, now, text),
            Reply::Image { media_id } => xml::image_reply(user, from, now, media_id),
        };
        match &received.mode {
            ReplyMode::Plain => plain,
            ReplyMode::Encrypted { key_index, nonce } => {
                // receive() only yields Encrypted with the index of a configured key.
                let key = &self.keys[*key_index];
                let encrypt = key.encrypt(plain.as_bytes(), &self.app_id);
                let timestamp = now.to_string();
                let msg_signature =
                    signature::sign(&[self.token.expose_secret(), &timestamp, nonce, &encrypt]);
                xml::encrypted_envelope(&encrypt, &msg_signature, now, nonce)
            }
        }
    }
}

fn field<'a>(fields: &'a Fields, name: &'static str) -> Result<&'a str, WechatError> {
    fields
        .get(name)
        .ok_or_else(|| WechatError::Malformed(format!("missing {name}")))
}

fn id_field<'a>(fields: &'a Fields, name: &'static str) -> Result<&'a str, WechatError> {
    let value = field(fields, name)?.trim();
    if value.is_empty() || value.len() > MAX_ID_LEN || value.chars().any(char::is_control) {
        return Err(WechatError::Malformed(format!(
            "{name} is empty, too long or has control characters"
        )));
    }
    Ok(value)
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// Turns the fields of a decrypted or plaintext message into an [`Inbound`].
pub fn parse_inbound(fields: &Fields) -> Result<Inbound, WechatError> {
    let account = id_field(fields, "ToUserName")?.to_string();
    let user_id = id_field(fields, "FromUserName")?.to_string();
    let sent_at: i64 = field(fields, "CreateTime")?
        .trim()
        .parse()
        .map_err(|_| WechatError::Malformed("CreateTime is not a number".into()))?;
    let msg_type = field(fields, "MsgType")?.trim();
    let message_id = match fields.get("MsgId").map(str::trim) {
        Some(id) if !id.is_empty() => {
            if id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
                return Err(WechatError::Malformed("MsgId too long".into()));
            }
            Some(id.to_string())
        }
        _ => None,
    };
    let kind = match msg_type {
        "text" => InboundKind::Text {
            content: field(fields, "Content")?.to_string(),
        },
        "voice" => InboundKind::Voice {
            recognition: non_empty(fields.get("Recognition")),
        },
        "image" => InboundKind::Image {
            media_id: fields.get("MediaId").unwrap_or_default().trim().to_string(),
        },
        "event" => InboundKind::Event(parse_event(fields)?),
        other => InboundKind::Other {
            kind: other.chars().take(32).collect(),
        },
    };
    let dedup_key = match (&message_id, &kind) {
        (Some(id), _) => format!("m:{id}:{sent_at}:{user_id}"),
        (None, InboundKind::Event(_)) => format!(
            "e:{user_id}:{sent_at}:{}:{}",
            fields.get("Event").unwrap_or_default().trim(),
            fields.get("EventKey").unwrap_or_default().trim()
        ),
        (None, _) => format!("n:{user_id}:{sent_at}:{msg_type}"),
    };
    Ok(Inbound {
        channel: CHANNEL,
        account,
        user_id,
        message_id,
        dedup_key: truncate_key(dedup_key),
        sent_at,
        kind,
    })
}

/// Keys are bounded so a hostile EventKey cannot bloat the dedup index; the prefix keeps them distinct.
fn truncate_key(key: String) -> String {
    const MAX_KEY: usize = 512;
    if key.len() <= MAX_KEY {
        return key;
    }
    let mut end = MAX_KEY;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    key[..end].to_string()
}

fn parse_event(fields: &Fields) -> Result<Event, WechatError> {
    let name = field(fields, "Event")?.trim();
    let key = non_empty(fields.get("EventKey"));
    Ok(match name.to_ascii_lowercase().as_str() {
        "subscribe" => Event::Subscribe {
            scene: key.map(|k| k.strip_prefix("qrscene_").map(str::to_string).unwrap_or(k)),
        },
        "unsubscribe" => Event::Unsubscribe,
        "click" => Event::Click {
            key: key.unwrap_or_default(),
        },
        "scan" => Event::Scan {
            scene: key.unwrap_or_default(),
        },
        _ => Event::Other {
            name: name.chars().take(64).collect(),
        },
    })
}

#[cfg(test)]
mod tests;
