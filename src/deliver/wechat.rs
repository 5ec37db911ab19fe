//! One WeChat account (or WeCom app: the same API for media, its own token and send) behind the platform-neutral
//! [`Outbound`] and [`MediaSource`]: customer-service messages, temporary media and followers' photos
//! (`media/get`), all with the account's access token shared through the store.

use std::sync::Arc;

use async_trait::async_trait;

use super::DeliverError;
use super::token::TokenService;
use crate::channel::wechat::api::ApiError;
use crate::channel::{
    ErrorClass, MediaError, MediaLimits, MediaSource, Outbound, Picture, SendError,
};

/// WeChat's limits for temporary image media.
const LIMITS: MediaLimits = MediaLimits {
    max_bytes: 10 << 20,
    max_side_sum: 20_000,
    formats: &["jpg", "png"],
};

/// A WeChat account's sending and fetching.
pub struct WechatOutbound {
    tokens: Arc<TokenService>,
}

impl WechatOutbound {
    /// Sends and fetches with `tokens`' account and token.
    pub fn new(tokens: Arc<TokenService>) -> Self {
        Self { tokens }
    }
}

impl From<DeliverError> for SendError {
    fn from(error: DeliverError) -> Self {
        match error {
            DeliverError::Api(e) => e.into(),
            other => SendError::new(ErrorClass::Transient, other.to_string()),
        }
    }
}

fn media_error(error: DeliverError) -> MediaError {
    match error {
        DeliverError::Api(ApiError::TooLarge { max }) => MediaError::TooLarge { max },
        DeliverError::Api(e) if e.class() == ErrorClass::Permanent => {
            MediaError::Gone(e.to_string())
        }
        other => MediaError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl Outbound for WechatOutbound {
    fn platform(&self) -> &'static str {
        self.tokens.api().platform()
    }

    fn media_limits(&self) -> MediaLimits {
        LIMITS
    }

    async fn passive_only(&self) -> Result<bool, SendError> {
        self.tokens
            .passive_only()
            .await
            .map_err(|e| SendError::new(ErrorClass::Transient, e.to_string()))
    }

    async fn mark_passive_only(&self) -> Result<(), SendError> {
        self.tokens
            .mark_passive_only()
            .await
            .map_err(|e| SendError::new(ErrorClass::Transient, e.to_string()))
    }

    async fn upload_picture(&self, jpeg: &[u8], name: &str) -> Result<Option<String>, SendError> {
        let api = self.tokens.api();
        let media_id = self
            .tokens
            .call(|t| async move { api.upload_image(&t, jpeg.to_vec(), name).await })
            .await?;
        Ok(Some(media_id))
    }

    async fn send_picture(&self, user: &str, picture: Picture<'_>) -> Result<(), SendError> {
        let media_id = match picture {
            Picture::Uploaded(media_id) => media_id.to_string(),
            Picture::Jpeg { bytes, name } => {
                self.upload_picture(bytes, name).await?.unwrap_or_default()
            }
        };
        let api = self.tokens.api();
        let media_id = media_id.as_str();
        Ok(self
            .tokens
            .call(|t| async move { api.send_image(&t, user, media_id).await })
            .await?)
    }

    async fn send_text(&self, user: &str, text: &str) -> Result<(), SendError> {
        let api = self.tokens.api();
        Ok(self
            .tokens
            .call(|t| async move { api.send_text(&t, user, text).await })
            .await?)
    }
}

#[async_trait]
impl MediaSource for WechatOutbound {
    async fn fetch(
        &self,
        _channel: &str,
        _account: &str,
        media_id: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, MediaError> {
        let api = self.tokens.api();
        self.tokens
            .call(|token| async move { api.get_media(&token, media_id, max_bytes).await })
            .await
            .map_err(media_error)
    }
}
