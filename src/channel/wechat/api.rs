//! WeChat's server API for what huabi sends and fetches: the stable access token, image uploads (temporary media and
//! permanent material), followers' pictures (`media/get`) and customer-service messages. Plain HTTP; who holds the token is the caller's business.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::channel::{ErrorClass, SendError};

/// Largest API answer read; WeChat's are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest access token accepted (WeChat asks callers to reserve 512 characters).
const MAX_TOKEN_LEN: usize = 2048;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// WeChat answered with an error code.
    #[error("WeChat error {code}: {message}")]
    Platform {
        /// `errcode`.
        code: i64,
        /// `errmsg`.
        message: String,
    },
    /// The request did not complete: connection refused, reset, or timed out.
    #[error("WeChat API unreachable or too slow: {0}")]
    Transport(String),
    /// An HTTP status other than 200.
    #[error("WeChat API answered HTTP {0}")]
    Status(u16),
    /// A 200 answer that is not what the endpoint returns.
    #[error("unexpected answer from the WeChat API: {0}")]
    Decode(String),
    /// No AppID / AppSecret configured.
    #[error("HUABI__WECHAT__APP_ID and HUABI__WECHAT__APP_SECRET are needed to call WeChat's API")]
    NotConfigured,
    /// A download larger than the caller accepts.
    #[error("the media is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
}

impl ApiError {
    /// How to react to this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::Platform { code, .. } => match code {
                40001 | 40014 | 42001 => ErrorClass::TokenInvalid,
                -1 | 45009 => ErrorClass::Transient,
                45015 => ErrorClass::WindowClosed,
                45047 => ErrorClass::QuotaUsed,
                48001 => ErrorClass::Unauthorized,
                _ => ErrorClass::Permanent,
            },
            ApiError::Transport(_) | ApiError::Decode(_) => ErrorClass::Transient,
            ApiError::Status(status) if *status >= 500 || *status == 429 => ErrorClass::Transient,
            ApiError::Status(_) | ApiError::NotConfigured | ApiError::TooLarge { .. } => {
                ErrorClass::Permanent
            }
        }
    }
}

impl From<ApiError> for SendError {
    fn from(error: ApiError) -> Self {
        SendError::new(error.class(), error.to_string())
    }
}

/// A token as WeChat hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The access token.
    pub token: String,
    /// Seconds it stays valid.
    pub expires_in: u64,
}

/// A client for one account's API: a WeChat Official Account, or a WeCom (企业微信) self-built app, whose API is
/// the same for media and differs in how a token is fetched and a message sent.
#[derive(Clone)]
pub struct WechatApi {
    http: reqwest::Client,
    base: String,
    app_id: String,
    secret: SecretString,
    /// WeCom: the app's AgentId (then `app_id` is the CorpID and `secret` the app's Secret).
    wecom_agent: Option<String>,
}

impl std::fmt::Debug for WechatApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatApi")
            .field("base", &self.base)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl WechatApi {
    /// A client for the account at `base` (e.g. `https://api.weixin.qq.com`), each call bounded by `timeout`.
    pub fn new(base: &str, app_id: &str, secret: SecretString, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            app_id: app_id.to_string(),
            secret,
            wecom_agent: None,
        }
    }

    /// A client for WeCom app `agent_id` of corporation `corp_id` at `base` (`https://qyapi.weixin.qq.com`).
    pub fn wecom(
        base: &str,
        corp_id: &str,
        agent_id: &str,
        secret: SecretString,
        timeout: Duration,
    ) -> Self {
        Self {
            wecom_agent: Some(agent_id.to_string()),
            ..Self::new(base, corp_id, secret, timeout)
        }
    }

    /// The AppID (WeCom: the CorpID) this client calls for.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The platform: `wechat` or `wecom`.
    pub fn platform(&self) -> &'static str {
        match self.wecom_agent {
            None => super::CHANNEL,
            Some(_) => crate::channel::wecom::CHANNEL,
        }
    }

    /// What its shared token is stored under: the AppID, or for WeCom `CorpID/AgentId` (each app has its own).
    pub fn credential(&self) -> String {
        match &self.wecom_agent {
            None => self.app_id.clone(),
            Some(agent) => format!("{}/{agent}", self.app_id),
        }
    }

    /// Whether AppID and AppSecret are set.
    pub fn is_configured(&self) -> bool {
        !self.app_id.is_empty() && !self.secret.expose_secret().is_empty()
    }

    /// `cgi-bin/stable_token`: in normal mode repeated calls return the same token until shortly before it
    /// expires, so several nodes never invalidate each other's; `force` asks for a new one (20 a day).
    /// WeCom has no stable token: `cgi-bin/gettoken` (corp id + app secret) returns the current one, and a new one
    /// only once it expired, so `force` changes nothing there.
    pub async fn stable_token(&self, force: bool) -> Result<IssuedToken, ApiError> {
        if !self.is_configured() {
            return Err(ApiError::NotConfigured);
        }
        let request = match self.wecom_agent {
            None => self
                .http
                .post(self.url("cgi-bin/stable_token"))
                .json(&json!({
                    "grant_type": "client_credential",
                    "appid": self.app_id,
                    "secret": self.secret.expose_secret(),
                    "force_refresh": force,
                })),
            Some(_) => self.http.get(self.url("cgi-bin/gettoken")).query(&[
                ("corpid", self.app_id.as_str()),
                ("corpsecret", self.secret.expose_secret()),
            ]),
        };
        let answer = self.send(request).await?;
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            expires_in: u64,
        }
        let token: Token = decode(answer)?;
        let valid = !token.access_token.is_empty()
            && token.access_token.len() <= MAX_TOKEN_LEN
            && token.access_token.bytes().all(|b| b.is_ascii_graphic());
        if !valid || token.expires_in == 0 {
            return Err(ApiError::Decode(
                "access_token empty, too long or not printable ASCII".into(),
            ));
        }
        Ok(IssuedToken {
            token: token.access_token,
            expires_in: token.expires_in,
        })
    }

    /// `cgi-bin/media/upload?type=image`: temporary media (3 days) for a customer-service send.
    pub async fn upload_image(
        &self,
        token: &str,
        jpeg: Vec<u8>,
        filename: &str,
    ) -> Result<String, ApiError> {
        self.upload("cgi-bin/media/upload", token, jpeg, filename)
            .await
    }

    /// `cgi-bin/material/add_material?type=image`: permanent material, the one upload passive-only accounts may use.
    pub async fn add_material_image(
        &self,
        token: &str,
        jpeg: Vec<u8>,
        filename: &str,
    ) -> Result<String, ApiError> {
        self.upload("cgi-bin/material/add_material", token, jpeg, filename)
            .await
    }

    /// `cgi-bin/material/del_material`.
    pub async fn delete_material(&self, token: &str, media_id: &str) -> Result<(), ApiError> {
        let request = self
            .http
            .post(self.url("cgi-bin/material/del_material"))
            .query(&[("access_token", token)])
            .json(&json!({ "media_id": media_id }));
        self.send(request).await.map(drop)
    }

    /// `cgi-bin/message/custom/send` with an uploaded picture.
    pub async fn send_image(
        &self,
        token: &str,
        user: &str,
        media_id: &str,
    ) -> Result<(), ApiError> {
        self.custom_send(
            token,
            json!({"touser": user, "msgtype": "image", "image": {"media_id": media_id}}),
        )
        .await
    }

    /// `cgi-bin/message/custom/send` with text.
    pub async fn send_text(&self, token: &str, user: &str, text: &str) -> Result<(), ApiError> {
        self.custom_send(
            token,
            json!({"touser": user, "msgtype": "text", "text": {"content": text}}),
        )
        .await
    }

    /// `cgi-bin/media/get`: a follower's picture (temporary media) by its id, at most `max_bytes`. WeChat answers
    /// errors as JSON and media as the file itself.
    pub async fn get_media(
        &self,
        token: &str,
        media_id: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, ApiError> {
        let mut response = self
            .http
            .get(self.url("cgi-bin/media/get"))
            .query(&[("access_token", token), ("media_id", media_id)])
            .send()
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(ApiError::Status(status));
        }
        let is_answer = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("json") || t.starts_with("text/"));
        let limit = if is_answer {
            MAX_ANSWER_BYTES
        } else {
            max_bytes
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(ApiError::TooLarge { max: limit });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?
        {
            if body.len() + chunk.len() > limit {
                return Err(ApiError::TooLarge { max: limit });
            }
            body.extend_from_slice(&chunk);
        }
        if is_answer {
            parse_answer(&body)?;
            return Err(ApiError::Decode(
                "media/get answered JSON without an error".into(),
            ));
        }
        Ok(body)
    }

    /// A customer-service message (WeCom: an app message from the agent).
    async fn custom_send(&self, token: &str, mut body: Value) -> Result<(), ApiError> {
        let path = match &self.wecom_agent {
            None => "cgi-bin/message/custom/send",
            Some(agent) => {
                body["agentid"] = agent.parse::<i64>().map_or(json!(agent), |n| json!(n));
                "cgi-bin/message/send"
            }
        };
        let request = self
            .http
            .post(self.url(path))
            .query(&[("access_token", token)])
            .json(&body);
        self.send(request).await.map(drop)
    }

    async fn upload(
        &self,
        path: &str,
        token: &str,
        jpeg: Vec<u8>,
        filename: &str,
    ) -> Result<String, ApiError> {
        // The field must be `media` and the file name needs an extension (40005 otherwise).
        let part = reqwest::multipart::Part::bytes(jpeg)
            .file_name(filename.to_string())
            .mime_str("image/jpeg")
            .map_err(|e| ApiError::Decode(e.to_string()))?;
        let form = reqwest::multipart::Form::new().part("media", part);
        let request = self
            .http
            .post(self.url(path))
            .query(&[("access_token", token), ("type", "image")])
            .multipart(form);
        #[derive(Deserialize)]
        struct Uploaded {
            media_id: String,
        }
        let uploaded: Uploaded = decode(self.send(request).await?)?;
        if uploaded.media_id.is_empty() || uploaded.media_id.len() > MAX_TOKEN_LEN {
            return Err(ApiError::Decode("media_id empty or too long".into()));
        }
        Ok(uploaded.media_id)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Sends the request and returns the JSON answer, or the error it carries.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ApiError> {
        let mut response = request
            .send()
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ApiError::Decode(format!(
                    "answer longer than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status != 200 {
            return Err(ApiError::Status(status));
        }
        parse_answer(&body)
    }
}

/// Parses an API answer: a JSON object whose non-zero `errcode` is an error.
pub fn parse_answer(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::Decode(e.to_string()))?;
    if !value.is_object() {
        return Err(ApiError::Decode("not a JSON object".into()));
    }
    match value.get("errcode").map(Value::as_i64) {
        None | Some(Some(0)) => Ok(value),
        Some(Some(code)) => Err(ApiError::Platform {
            code,
            message: value
                .get("errmsg")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        }),
        Some(None) => Err(ApiError::Decode("errcode is not an integer".into())),
    }
}

fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_and_error_codes_classified() {
        assert!(parse_answer(br#"{"errcode":0,"errmsg":"ok"}"#).is_ok());
        assert!(parse_answer(br#"{"media_id":"m","type":"image"}"#).is_ok());
        let class = |body: &[u8]| parse_answer(body).expect_err("error").class();
        assert_eq!(
            class(br#"{"errcode":40001,"errmsg":"invalid credential"}"#),
            ErrorClass::TokenInvalid
        );
        assert_eq!(class(br#"{"errcode":40014}"#), ErrorClass::TokenInvalid);
        assert_eq!(class(br#"{"errcode":42001}"#), ErrorClass::TokenInvalid);
        assert_eq!(
            class(br#"{"errcode":-1,"errmsg":"system error"}"#),
            ErrorClass::Transient
        );
        assert_eq!(class(br#"{"errcode":45009}"#), ErrorClass::Transient);
        assert_eq!(class(br#"{"errcode":45015}"#), ErrorClass::WindowClosed);
        assert_eq!(class(br#"{"errcode":45047}"#), ErrorClass::QuotaUsed);
        assert_eq!(class(br#"{"errcode":48001}"#), ErrorClass::Unauthorized);
        assert_eq!(
            class(br#"{"errcode":40007,"errmsg":"invalid media_id"}"#),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"<html>502 Bad Gateway</html>",
            b"[1,2,3]",
            b"\"ok\"",
            br#"{"errcode":"40001"}"#,
            br#"{"errcode":1e400}"#,
            b"\xff\xfe{",
        ] {
            let error = parse_answer(body).expect_err("refused");
            assert_eq!(error.class(), ErrorClass::Transient, "{body:?}");
        }
        let long = format!(r#"{{"errcode":-1,"errmsg":"{}"}}"#, "x".repeat(10_000));
        match parse_answer(long.as_bytes()) {
            Err(ApiError::Platform { message, .. }) => assert_eq!(message.len(), 200),
            other => panic!("{other:?}"),
        }
        assert_eq!(ApiError::Status(502).class(), ErrorClass::Transient);
        assert_eq!(ApiError::Status(404).class(), ErrorClass::Permanent);
    }
}
