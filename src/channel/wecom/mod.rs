//! The WeCom (企业微信) self-built app channel. Its callback is WeChat's safe mode with the CorpID where WeChat
//! checks the AppID: the encrypted `echostr` on URL verification, every message encrypted and signed with
//! `msg_signature`, passive replies encrypted the same way. So it reuses [`WechatChannel`]'s checks, always in the
//! encrypted mode, and names its messages `wecom`. Sending goes through [`WechatApi::wecom`] (`gettoken`,
//! `media/upload`, `message/send` with the AgentId).
//!
//! [`WechatApi::wecom`]: crate::channel::wechat::api::WechatApi::wecom

use crate::channel::wechat::crypto::CryptoError;
use crate::channel::wechat::{Received, WebhookQuery, WechatChannel, WechatError};
use crate::config::WechatSettings;
use crate::model::Reply;

/// The channel's name in storage, URLs and logs.
pub const CHANNEL: &str = "wecom";

/// One configured WeCom app's callback side.
#[derive(Debug)]
pub struct WecomChannel {
    inner: WechatChannel,
}

impl WecomChannel {
    /// App `name`'s callback, checked with `token`, opened with `aes_key` and the CorpID.
    pub fn new(name: &str, token: &str, aes_key: &str, corp_id: &str) -> Result<Self, CryptoError> {
        let settings = WechatSettings {
            token: token.into(),
            app_id: corp_id.into(),
            aes_key: aes_key.into(),
            ..WechatSettings::default()
        };
        Ok(Self {
            inner: WechatChannel::new(name, &settings)?,
        })
    }

    /// The account's name in storage and URLs.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// Answers the callback URL verification: the decrypted `echostr`.
    pub fn verify_url(&self, query: &WebhookQuery, now: i64) -> Result<String, WechatError> {
        if query.msg_signature.is_none() {
            return Err(WechatError::MissingParam("msg_signature"));
        }
        self.inner.verify_url(query, now)
    }

    /// Verifies, decrypts and parses a callback message (always encrypted).
    pub fn receive(
        &self,
        query: &WebhookQuery,
        body: &[u8],
        now: i64,
    ) -> Result<Received, WechatError> {
        let query = WebhookQuery {
            encrypt_type: Some("aes".into()),
            ..query.clone()
        };
        let mut received = self.inner.receive(&query, body, now)?;
        received.inbound.channel = CHANNEL;
        Ok(received)
    }

    /// Renders `reply` as the encrypted answer to `received`.
    pub fn render_reply(&self, received: &Received, reply: &Reply, now: i64) -> String {
        self.inner.render_reply(received, reply, now)
    }
}
