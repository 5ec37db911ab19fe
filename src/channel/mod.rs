//! Messaging platforms. Each platform verifies, decrypts and parses its webhooks into the platform-neutral
//! [`Inbound`](crate::model::Inbound) and renders [`Reply`](crate::model::Reply)s back into its own wire format;
//! behind [`Outbound`] it sends pictures and texts, its errors classified the same way for every platform. Accounts
//! are found by (platform, account name) in a [`registry::Channels`]. Knows nothing of the store.

pub mod registry;
pub mod telegram;
pub mod wechat;
pub mod wecom;

use async_trait::async_trait;

/// What a sender should do about a failed platform call, whatever the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The access token is invalid or expired: expire it and retry once.
    TokenInvalid,
    /// Busy, rate-limited, unreachable or garbled: back off (at least `retry_after_secs`) and retry.
    Transient,
    /// The platform's window for messaging this follower is closed (WeChat's 48 hours).
    WindowClosed,
    /// The follower's message quota is used up.
    QuotaUsed,
    /// The account lacks the sending API: the follower fetches pictures instead.
    Unauthorized,
    /// The follower blocked the bot or left: nothing can reach them.
    Blocked,
    /// Anything else: retrying will not help.
    Permanent,
}

impl ErrorClass {
    /// The class's name, as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::TokenInvalid => "token_invalid",
            ErrorClass::Transient => "transient",
            ErrorClass::WindowClosed => "window_closed",
            ErrorClass::QuotaUsed => "quota_used",
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::Blocked => "blocked",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// A platform call that failed, with what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// What to do.
    pub class: ErrorClass,
    /// The platform asked for this pause before the next call (Telegram's `retry_after`).
    pub retry_after_secs: Option<f64>,
    /// What the platform or the transport said.
    pub message: String,
}

impl SendError {
    /// An error of `class` saying `message`.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            retry_after_secs: None,
            message: message.into(),
        }
    }
}

/// A picture to send: uploaded by an earlier attempt, or its bytes.
#[derive(Debug, Clone, Copy)]
pub enum Picture<'a> {
    /// The platform's id of a picture already uploaded.
    Uploaded(&'a str),
    /// A JPEG and the file name to send it under.
    Jpeg {
        /// The bytes.
        bytes: &'a [u8],
        /// The file name.
        name: &'a str,
    },
}

/// What pictures a platform takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    /// Largest picture in bytes.
    pub max_bytes: usize,
    /// Largest width plus height in pixels.
    pub max_side_sum: u32,
    /// Formats it takes, as file extensions.
    pub formats: &'static [&'static str],
}

/// Sends to the followers of one account on one platform.
#[async_trait]
pub trait Outbound: Send + Sync {
    /// The platform's name (`wechat`, `telegram`, …).
    fn platform(&self) -> &'static str;
    /// What pictures the platform takes.
    fn media_limits(&self) -> MediaLimits;
    /// Whether pictures can only reach followers when they ask (WeChat accounts without the customer-service API).
    async fn passive_only(&self) -> Result<bool, SendError> {
        Ok(false)
    }
    /// Records, for every node, that the account cannot send (the platform said so).
    async fn mark_passive_only(&self) -> Result<(), SendError> {
        Ok(())
    }
    /// Uploads a picture ahead of sending it and returns its id for [`Picture::Uploaded`], so a retried send does
    /// not upload it again; `None` where the platform uploads with the send.
    async fn upload_picture(&self, jpeg: &[u8], name: &str) -> Result<Option<String>, SendError>;
    /// Sends `picture` to `user`.
    async fn send_picture(&self, user: &str, picture: Picture<'_>) -> Result<(), SendError>;
    /// Sends a text to `user`.
    async fn send_text(&self, user: &str, text: &str) -> Result<(), SendError>;
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
