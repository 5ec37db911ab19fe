//! Messaging platforms. Each platform verifies, decrypts and parses its webhooks into the platform-neutral
//! [`Inbound`] and renders [`Reply`]s back into its own wire format. Knows nothing of the store.

pub mod wechat;

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
