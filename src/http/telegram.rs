//! A Telegram bot's webhook: the secret token checked (401 and nothing stored without it), the update admitted
//! exactly once (Telegram's retries share the `update_id`), 200 at once; what the bot says back ("received", a
//! refusal, help) goes out by `sendMessage` after the answer, and the picture later through the deliverer.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::{AppState, Webhook, WebhookRequest, error::ApiError};
use crate::channel::Outbound;
use crate::channel::telegram::{CHANNEL, SECRET_HEADER, TelegramChannel};
use crate::inbox::Step;
use crate::model::Reply;
use crate::store::Admission;

/// One bot's webhook.
pub struct TelegramEndpoint {
    /// Checks and parses its updates.
    pub channel: TelegramChannel,
    /// Sends its replies (`sendMessage`); `None` without a bot token (replies are then not sent).
    pub outbound: Option<Arc<dyn Outbound>>,
}

#[async_trait::async_trait]
impl Webhook for TelegramEndpoint {
    fn platform(&self) -> &'static str {
        CHANNEL
    }

    fn account(&self) -> &str {
        self.channel.name()
    }

    /// Telegram never verifies by GET.
    async fn get(&self, _state: &AppState, _request: WebhookRequest) -> Result<Response, ApiError> {
        Ok(StatusCode::METHOD_NOT_ALLOWED.into_response())
    }

    async fn post(&self, state: &AppState, request: WebhookRequest) -> Result<Response, ApiError> {
        let secret = request.headers.get(SECRET_HEADER).map(|v| v.as_bytes());
        self.channel.verify(secret)?;
        let Some(inbound) = self.channel.parse(&request.body)? else {
            return Ok(StatusCode::OK.into_response());
        };
        let reply = match state
            .inbox
            .prepare(&inbound, OffsetDateTime::now_utc(), false)
            .await?
        {
            Step::Admit(submission) => match state.inbox.admit(&submission).await? {
                Admission::Accepted { .. } => Some(submission.reply.clone()),
                Admission::Refused { reply } => Some(reply),
                // A retry of an update already answered: say nothing twice.
                Admission::Duplicate { .. } => None,
            },
            // Pictures are always sent on Telegram; nothing waits to be fetched.
            Step::Fetch => Some(Reply::Text {
                text: state.settings.replies.fetch_retry.clone(),
            }),
        };
        if let (Some(Reply::Text { text }), Some(outbound)) = (reply, self.outbound.clone()) {
            let user = inbound.user_id.clone();
            tokio::spawn(async move {
                if let Err(e) = outbound.send_text(&user, &text).await {
                    tracing::warn!(error = %e, "Telegram reply not sent");
                }
            });
        }
        Ok(StatusCode::OK.into_response())
    }
}
