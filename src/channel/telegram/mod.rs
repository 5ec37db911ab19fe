//! The Telegram bot channel: webhook updates checked by their secret token (`X-Telegram-Bot-Api-Secret-Token`, in
//! constant time), parsed into [`Inbound`]s deduplicated by `update_id`, and the Bot API behind [`Outbound`]
//! (`sendMessage`, `sendPhoto` as multipart, `getFile` for followers' photos).

pub mod api;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::model::{Event, Inbound, InboundKind};

/// The channel's name in storage, URLs and logs.
pub const CHANNEL: &str = "telegram";
/// The header Telegram sends the webhook's secret token in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
/// Longest text accepted (Telegram's own limit is 4096 characters; bytes here).
const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Longest file id accepted.
const MAX_ID_LEN: usize = 256;

/// Why a Telegram update was refused.
#[derive(Debug, thiserror::Error)]
pub enum TelegramError {
    /// No secret token is configured, so no update can be authenticated.
    #[error("the Telegram secret token is not configured")]
    NotConfigured,
    /// The secret token header is missing or wrong.
    #[error("secret token missing or wrong")]
    BadSecret,
    /// The body is not an update.
    #[error("malformed update: {0}")]
    Malformed(String),
}

/// One configured bot's webhook side.
pub struct TelegramChannel {
    name: String,
    secret_token: SecretString,
}

impl std::fmt::Debug for TelegramChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramChannel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Update {
    update_id: i64,
    #[serde(default)]
    message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    message_id: i64,
    date: i64,
    chat: Chat,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    photo: Option<Vec<PhotoSize>>,
}

#[derive(Deserialize)]
struct Chat {
    id: i64,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PhotoSize {
    file_id: String,
    width: u32,
    height: u32,
}

impl TelegramChannel {
    /// Bot `name`'s webhook, accepting updates that carry `secret_token`.
    pub fn new(name: &str, secret_token: SecretString) -> Self {
        Self {
            name: name.to_string(),
            secret_token,
        }
    }

    /// The account's name in storage and URLs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the secret token header, in constant time.
    pub fn verify(&self, header: Option<&[u8]>) -> Result<(), TelegramError> {
        let expected = self.secret_token.expose_secret().as_bytes();
        if expected.is_empty() {
            return Err(TelegramError::NotConfigured);
        }
        match header {
            Some(given) if bool::from(given.ct_eq(expected)) => Ok(()),
            _ => Err(TelegramError::BadSecret),
        }
    }

    /// Parses an update. Updates that are not a message in a private chat (edits, channel posts, group chatter,
    /// callbacks) are acknowledged and ignored: `None`.
    pub fn parse(&self, body: &[u8]) -> Result<Option<Inbound>, TelegramError> {
        let update: Update = serde_json::from_slice(body)
            .map_err(|e| TelegramError::Malformed(e.to_string().chars().take(200).collect()))?;
        let Some(message) = update.message else {
            return Ok(None);
        };
        if message.chat.kind != "private" {
            return Ok(None);
        }
        let kind = match (message.text, message.photo) {
            (Some(text), _) => text_kind(text)?,
            (None, Some(sizes)) => {
                // The largest size Telegram offers; the worker fetches it with getFile.
                let best = sizes
                    .into_iter()
                    .max_by_key(|p| u64::from(p.width) * u64::from(p.height))
                    .ok_or_else(|| TelegramError::Malformed("photo without sizes".into()))?;
                if best.file_id.is_empty() || best.file_id.len() > MAX_ID_LEN {
                    return Err(TelegramError::Malformed("file_id empty or too long".into()));
                }
                InboundKind::Image {
                    media_id: best.file_id,
                }
            }
            (None, None) => InboundKind::Other {
                kind: "other".into(),
            },
        };
        Ok(Some(Inbound {
            channel: CHANNEL,
            account: self.name.clone(),
            user_id: message.chat.id.to_string(),
            message_id: Some(message.message_id.to_string()),
            dedup_key: format!("u:{}", update.update_id),
            sent_at: message.date,
            kind,
        }))
    }
}

/// A text message; `/start` is a new follower, `/help` asks for help, `/draw …` and `/画 …` paint what follows.
fn text_kind(text: String) -> Result<InboundKind, TelegramError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(TelegramError::Malformed("text too long".into()));
    }
    let Some(command) = text.strip_prefix('/') else {
        return Ok(InboundKind::Text { content: text });
    };
    let (name, rest) = command
        .split_once(char::is_whitespace)
        .unwrap_or((command, ""));
    // `/help@my_bot` in menus names the bot.
    let name = name.split('@').next().unwrap_or_default();
    let rest = rest.trim();
    Ok(match name {
        "start" => InboundKind::Event(Event::Subscribe {
            scene: (!rest.is_empty()).then(|| rest.chars().take(64).collect()),
        }),
        "help" => InboundKind::Text {
            content: "help".into(),
        },
        "draw" | "paint" | "画" => InboundKind::Text {
            content: rest.to_string(),
        },
        _ => InboundKind::Text { content: text },
    })
}

#[cfg(test)]
mod tests;
