//! Messaging platforms. Each platform verifies, decrypts and parses its webhooks into the platform-neutral
//! [`Inbound`] and renders [`Reply`]s back into its own wire format. Knows nothing of the store.

pub mod wechat;

use serde::{Deserialize, Serialize};

/// A message or event from a follower, independent of the platform it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The platform, e.g. `wechat`.
    pub channel: &'static str,
    /// The account the message was sent to (WeChat: the original id `gh_…`).
    pub account: String,
    /// The follower's id on that platform (WeChat: OpenID).
    pub user_id: String,
    /// The platform's message id, when the platform gives one (events have none).
    pub message_id: Option<String>,
    /// The key that makes platform retries of one message recognisable as the same message.
    pub dedup_key: String,
    /// When the platform says the message was sent, in unix seconds.
    pub sent_at: i64,
    /// What the message carries.
    pub kind: InboundKind,
}

/// The content of an [`Inbound`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundKind {
    /// A text message.
    Text {
        /// The text as typed.
        content: String,
    },
    /// A voice message, with the platform's speech recognition when it is enabled.
    Voice {
        /// The recognised text, if any.
        recognition: Option<String>,
    },
    /// A picture.
    Image {
        /// The platform's media id for the picture.
        media_id: String,
    },
    /// A platform event.
    Event(Event),
    /// A message kind huabi does not handle; acknowledged and logged.
    Other {
        /// The platform's name for the kind.
        kind: String,
    },
}

impl InboundKind {
    /// A short stable name for storage and logs.
    pub fn name(&self) -> &str {
        match self {
            InboundKind::Text { .. } => "text",
            InboundKind::Voice { .. } => "voice",
            InboundKind::Image { .. } => "image",
            InboundKind::Event(Event::Subscribe { .. }) => "event:subscribe",
            InboundKind::Event(Event::Unsubscribe) => "event:unsubscribe",
            InboundKind::Event(Event::Click { .. }) => "event:click",
            InboundKind::Event(Event::Scan { .. }) => "event:scan",
            InboundKind::Event(Event::Other { .. }) => "event:other",
            InboundKind::Other { .. } => "other",
        }
    }
}

/// Platform events huabi reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new follower; `scene` is set when they followed through a QR code.
    Subscribe {
        /// The QR scene key without the `qrscene_` prefix.
        scene: Option<String>,
    },
    /// A follower left.
    Unsubscribe,
    /// A menu button was pressed.
    Click {
        /// The button's key.
        key: String,
    },
    /// An existing follower scanned a QR code.
    Scan {
        /// The scene key.
        scene: String,
    },
    /// Any other event.
    Other {
        /// The platform's event name.
        name: String,
    },
}

/// What huabi answers to a message, synchronously, inside the platform's window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// Nothing to say: the platform gets its plain acknowledgement.
    None,
    /// A text message.
    Text {
        /// The text.
        text: String,
    },
    /// A picture already uploaded to the platform.
    Image {
        /// The platform's media id.
        media_id: String,
    },
}

/// Why a follower's picture could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Larger than the caller accepts.
    #[error("the picture is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The platform no longer has it (expired, unknown id) or will not hand it out.
    #[error("the platform does not hand the picture out: {0}")]
    Gone(String),
    /// The platform could not be asked right now (busy, unreachable, token trouble): try again later.
    #[error("the picture cannot be fetched right now: {0}")]
    Unavailable(String),
}

/// Fetches what followers sent (their photos) through each platform's media API, with the account's credentials.
/// Only ids the platform gave in a message are fetched, never an arbitrary address.
#[async_trait::async_trait]
pub trait MediaSource: Send + Sync {
    /// The bytes of picture `media_id` sent to `account` on `channel`, at most `max_bytes`.
    async fn fetch(
        &self,
        channel: &str,
        account: &str,
        media_id: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, MediaError>;
}
