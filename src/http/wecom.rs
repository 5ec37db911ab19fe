//! A WeCom app's callback: URL verification (the encrypted `echostr`), every message verified and decrypted,
//! admitted exactly once (WeCom retries a message it got no answer to within about 5 s: same MsgId), and answered
//! inside the window with an encrypted passive text; the picture follows through `message/send`.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::{AppState, Webhook, WebhookRequest, error::ApiError};
use crate::channel::wecom::{CHANNEL, WecomChannel};
use crate::inbox::Step;
use crate::model::Reply;
use crate::store::Admission;

/// One WeCom app's callback.
pub struct WecomEndpoint {
    /// Verifies, opens and parses its callbacks and renders its replies.
    pub channel: WecomChannel,
}

#[async_trait::async_trait]
impl Webhook for WecomEndpoint {
    fn platform(&self) -> &'static str {
        CHANNEL
    }

    fn account(&self) -> &str {
        self.channel.name()
    }

    async fn get(&self, _state: &AppState, request: WebhookRequest) -> Result<Response, ApiError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Ok(self
            .channel
            .verify_url(&request.wechat_query(), now)?
            .into_response())
    }

    async fn post(&self, state: &AppState, request: WebhookRequest) -> Result<Response, ApiError> {
        let now = OffsetDateTime::now_utc();
        let received =
            self.channel
                .receive(&request.wechat_query(), &request.body, now.unix_timestamp())?;
        let reply = match state.inbox.prepare(&received.inbound, now, false).await? {
            Step::Admit(submission) => match state.inbox.admit(&submission).await? {
                Admission::Accepted { .. } => submission.reply.clone(),
                Admission::Refused { reply } | Admission::Duplicate { reply, .. } => reply,
            },
            // Pictures are always sent on WeCom; nothing waits to be fetched.
            Step::Fetch => Reply::Text {
                text: state.settings.replies.fetch_retry.clone(),
            },
        };
        let body = self
            .channel
            .render_reply(&received, &reply, now.unix_timestamp());
        Ok((
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            body,
        )
            .into_response())
    }
}
