//! The one place that maps failures to HTTP status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::channel::telegram::TelegramError;
use crate::channel::wechat::WechatError;
use crate::channel::wechat::crypto::CryptoError;
use crate::store::StoreError;

/// A request that could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The WeChat request was refused.
    #[error(transparent)]
    Wechat(#[from] WechatError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Telegram update was refused.
    #[error(transparent)]
    Telegram(#[from] TelegramError),
    /// No account of that name is configured for the platform.
    #[error("no such account")]
    UnknownAccount,
}

impl ApiError {
    /// The status code this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Wechat(e) => match e {
                WechatError::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
                WechatError::MissingParam(_)
                | WechatError::BadSignature
                | WechatError::StaleTimestamp => StatusCode::UNAUTHORIZED,
                WechatError::EncryptionNotConfigured
                | WechatError::UnsupportedEncryption(_)
                | WechatError::Xml(_)
                | WechatError::Crypto(CryptoError::BadKey)
                | WechatError::Crypto(_)
                | WechatError::Malformed(_) => StatusCode::BAD_REQUEST,
            },
            ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Telegram(TelegramError::NotConfigured) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Telegram(TelegramError::BadSecret) => StatusCode::UNAUTHORIZED,
            ApiError::Telegram(TelegramError::Malformed(_)) => StatusCode::BAD_REQUEST,
            ApiError::UnknownAccount => StatusCode::NOT_FOUND,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::Wechat(WechatError::NotConfigured) => "not_configured",
            ApiError::Wechat(WechatError::MissingParam(_) | WechatError::BadSignature) => {
                "bad_signature"
            }
            ApiError::Wechat(WechatError::StaleTimestamp) => "stale",
            ApiError::Wechat(WechatError::Xml(crate::channel::wechat::xml::XmlError::Doctype)) => {
                "doctype"
            }
            ApiError::Wechat(WechatError::Crypto(_)) => "decrypt",
            ApiError::Wechat(_) => "malformed",
            ApiError::Store(_) => "store",
            ApiError::Telegram(TelegramError::NotConfigured) => "not_configured",
            ApiError::Telegram(TelegramError::BadSecret) => "bad_signature",
            ApiError::Telegram(TelegramError::Malformed(_)) => "malformed",
            ApiError::UnknownAccount => "unknown_account",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        metrics::counter!("huabi_webhook_refused_total", "reason" => self.label()).increment(1);
        if status.is_server_error() {
            tracing::error!(error.message = %self, error.cause_chain = ?self, "request failed");
            (status, "service unavailable").into_response()
        } else {
            tracing::warn!(error.message = %self, status = status.as_u16(), "request refused");
            (status, self.to_string()).into_response()
        }
    }
}
