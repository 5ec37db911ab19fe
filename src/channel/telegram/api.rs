//! A client for one bot's Bot API: `sendMessage`, `sendPhoto` (multipart, or a `file_id` already on Telegram),
//! `getFile` + the file download for followers' photos, `setWebhook`. Every answer is a JSON object with `ok`;
//! errors carry `error_code` and, for 429, `parameters.retry_after`. [`TelegramOutbound`] puts it behind
//! [`Outbound`] and [`MediaSource`].

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::channel::{
    ErrorClass, MediaError, MediaLimits, MediaSource, Outbound, Picture, SendError,
};

/// Longest API answer read (they are small JSON objects).
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Telegram's limits for `sendPhoto` uploads.
const LIMITS: MediaLimits = MediaLimits {
    max_bytes: 10 << 20,
    max_side_sum: 10_000,
    formats: &["jpg", "png"],
};

/// A client for one bot.
#[derive(Clone)]
pub struct TelegramApi {
    http: reqwest::Client,
    base: String,
    bot_token: SecretString,
}

impl std::fmt::Debug for TelegramApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramApi")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Classifies a failed answer: HTTP status or `error_code`, with `retry_after` where given.
pub fn classify(code: u16, description: &str, retry_after: Option<f64>) -> SendError {
    let class = match code {
        429 => ErrorClass::Transient,
        500..=599 => ErrorClass::Transient,
        // Bot blocked by the user, user deactivated, kicked: nothing reaches them.
        403 => ErrorClass::Blocked,
        // A wrong bot token.
        401 | 404 => ErrorClass::Permanent,
        _ => ErrorClass::Permanent,
    };
    SendError {
        class,
        retry_after_secs: retry_after.filter(|s| s.is_finite() && *s >= 0.0),
        message: format!(
            "Telegram {code}: {}",
            description.chars().take(200).collect::<String>()
        ),
    }
}

/// Parses an answer: `{"ok":true,"result":…}` gives the result, anything else an error.
pub fn parse_answer(status: u16, body: &[u8]) -> Result<Value, SendError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        let class = if status >= 500 || status == 429 {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
        SendError::new(class, format!("Telegram answered {status} with no JSON"))
    })?;
    if value.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(value.get("result").cloned().unwrap_or(Value::Null));
    }
    let code = value
        .get("error_code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(status);
    let description = value
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("");
    let retry_after = value
        .pointer("/parameters/retry_after")
        .and_then(Value::as_f64);
    Err(classify(code, description, retry_after))
}

impl TelegramApi {
    /// A client for the bot `bot_token` at `base` (`https://api.telegram.org`; tests point it elsewhere).
    pub fn new(base: &str, bot_token: SecretString, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            bot_token,
        }
    }

    /// Whether a bot token is set.
    pub fn is_configured(&self) -> bool {
        !self.bot_token.expose_secret().is_empty()
    }

    fn url(&self, method: &str) -> String {
        format!(
            "{}/bot{}/{method}",
            self.base,
            self.bot_token.expose_secret()
        )
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, SendError> {
        match self.read(request, MAX_ANSWER_BYTES).await? {
            Some((status, body)) => parse_answer(status, &body),
            None => Err(SendError::new(
                ErrorClass::Permanent,
                format!("Telegram answer longer than {MAX_ANSWER_BYTES} bytes"),
            )),
        }
    }

    /// Sends and reads the answer; `None` when it is longer than `max` bytes.
    async fn read(
        &self,
        request: reqwest::RequestBuilder,
        max: usize,
    ) -> Result<Option<(u16, Vec<u8>)>, SendError> {
        // The URL holds the bot token: never let it into an error message.
        let transport = |e: reqwest::Error| {
            SendError::new(
                ErrorClass::Transient,
                format!("Telegram unreachable: {}", e.without_url()),
            )
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > max {
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some((status, body)))
    }

    /// `sendMessage`.
    pub async fn send_message(&self, chat_id: &str, text: &str) -> Result<(), SendError> {
        self.call(
            self.http
                .post(self.url("sendMessage"))
                .json(&json!({"chat_id": chat_id, "text": text})),
        )
        .await
        .map(drop)
    }

    /// `sendPhoto` with the JPEG as a multipart upload; returns the `file_id` Telegram gave it.
    pub async fn send_photo(
        &self,
        chat_id: &str,
        jpeg: &[u8],
        name: &str,
    ) -> Result<Option<String>, SendError> {
        let part = reqwest::multipart::Part::bytes(jpeg.to_vec())
            .file_name(name.to_string())
            .mime_str("image/jpeg")
            .map_err(|e| SendError::new(ErrorClass::Permanent, e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .text("chat_id", chat_id.to_string())
            .part("photo", part);
        let result = self
            .call(self.http.post(self.url("sendPhoto")).multipart(form))
            .await?;
        Ok(result
            .pointer("/photo")
            .and_then(Value::as_array)
            .and_then(|sizes| sizes.last())
            .and_then(|p| p.get("file_id"))
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// `sendPhoto` with a `file_id` already on Telegram.
    pub async fn send_photo_id(&self, chat_id: &str, file_id: &str) -> Result<(), SendError> {
        self.call(
            self.http
                .post(self.url("sendPhoto"))
                .json(&json!({"chat_id": chat_id, "photo": file_id})),
        )
        .await
        .map(drop)
    }

    /// The bytes of file `file_id` (`getFile`, then the download), at most `max_bytes`.
    pub async fn download(&self, file_id: &str, max_bytes: usize) -> Result<Vec<u8>, MediaError> {
        let media = |e: SendError| match e.class {
            ErrorClass::Transient | ErrorClass::TokenInvalid => MediaError::Unavailable(e.message),
            _ => MediaError::Gone(e.message),
        };
        let file = self
            .call(
                self.http
                    .post(self.url("getFile"))
                    .json(&json!({"file_id": file_id})),
            )
            .await
            .map_err(media)?;
        let too_large = MediaError::TooLarge { max: max_bytes };
        if file
            .get("file_size")
            .and_then(Value::as_u64)
            .is_some_and(|size| size > max_bytes as u64)
        {
            return Err(too_large);
        }
        let path = file
            .get("file_path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty() && !p.contains("..") && !p.starts_with('/'))
            .ok_or_else(|| MediaError::Gone("getFile gave no file_path".into()))?;
        let url = format!(
            "{}/file/bot{}/{path}",
            self.base,
            self.bot_token.expose_secret()
        );
        match self
            .read(self.http.get(url), max_bytes)
            .await
            .map_err(media)?
        {
            Some((200, body)) => Ok(body),
            Some((status, _)) => Err(media(classify(status, "file download failed", None))),
            None => Err(too_large),
        }
    }

    /// `getMe`: the bot's username, when the token is valid.
    pub async fn get_me(&self) -> Result<String, SendError> {
        let me = self
            .call(self.http.post(self.url("getMe")).json(&json!({})))
            .await?;
        Ok(me
            .get("username")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// `setWebhook` with the secret token Telegram then sends on every update.
    pub async fn set_webhook(&self, url: &str, secret_token: &str) -> Result<(), SendError> {
        self.call(self.http.post(self.url("setWebhook")).json(&json!({
            "url": url,
            "secret_token": secret_token,
            "allowed_updates": ["message"],
        })))
        .await
        .map(drop)
    }
}

/// One bot behind the platform-neutral [`Outbound`] and [`MediaSource`].
pub struct TelegramOutbound {
    api: TelegramApi,
}

impl TelegramOutbound {
    /// Sends and fetches through `api`.
    pub fn new(api: TelegramApi) -> Self {
        Self { api }
    }
}

#[async_trait]
impl Outbound for TelegramOutbound {
    fn platform(&self) -> &'static str {
        super::CHANNEL
    }

    fn media_limits(&self) -> MediaLimits {
        LIMITS
    }

    async fn upload_picture(&self, _jpeg: &[u8], _name: &str) -> Result<Option<String>, SendError> {
        // A picture reaches Telegram with its send.
        Ok(None)
    }

    async fn send_picture(&self, user: &str, picture: Picture<'_>) -> Result<(), SendError> {
        match picture {
            Picture::Uploaded(file_id) => self.api.send_photo_id(user, file_id).await,
            Picture::Jpeg { bytes, name } => self.api.send_photo(user, bytes, name).await.map(drop),
        }
    }

    async fn send_text(&self, user: &str, text: &str) -> Result<(), SendError> {
        self.api.send_message(user, text).await
    }
}

#[async_trait]
impl MediaSource for TelegramOutbound {
    async fn fetch(
        &self,
        _channel: &str,
        _account: &str,
        media_id: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, MediaError> {
        self.api.download(media_id, max_bytes).await
    }
}
