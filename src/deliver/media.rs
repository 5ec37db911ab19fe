//! Followers' photos from WeChat's `media/get`, with the account's shared access token.

use std::sync::Arc;

use async_trait::async_trait;

use super::DeliverError;
use super::token::TokenService;
use crate::channel::wechat::api::{ApiError, ErrorClass};
use crate::channel::{MediaError, MediaSource};

/// [`MediaSource`] for the WeChat account this node serves.
pub struct WechatMedia {
    tokens: Arc<TokenService>,
}

impl WechatMedia {
    /// Fetches with `tokens`' account and token.
    pub fn new(tokens: Arc<TokenService>) -> Self {
        Self { tokens }
    }
}

fn classify(error: DeliverError) -> MediaError {
    match error {
        DeliverError::Api(ApiError::TooLarge { max }) => MediaError::TooLarge { max },
        DeliverError::Api(e) if e.class() == ErrorClass::Permanent => {
            MediaError::Gone(e.to_string())
        }
        other => MediaError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl MediaSource for WechatMedia {
    async fn fetch(
        &self,
        channel: &str,
        _account: &str,
        media_id: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, MediaError> {
        if channel != "wechat" {
            return Err(MediaError::Gone(format!(
                "no media API for channel {channel:?}"
            )));
        }
        let api = self.tokens.api();
        self.tokens
            .call(|token| async move { api.get_media(&token, media_id, max_bytes).await })
            .await
            .map_err(classify)
    }
}
