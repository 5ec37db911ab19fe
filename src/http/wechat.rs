//! A WeChat account's webhook: verify, decrypt, parse, admit exactly once, answer inside WeChat's window (with the
//! picture itself when it is painted in time).

use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::{AppState, Webhook, WebhookRequest, error::ApiError};
use crate::channel::wechat::{CHANNEL, Received, WebhookQuery, WechatChannel};
use crate::deliver::passive::PassiveReplies;
use crate::inbox::Step;
use crate::model::{Inbound, Reply};
use crate::store::{Admission, Submission};

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// One WeChat account's webhook.
pub struct WechatEndpoint {
    /// Verifies, opens and parses its requests and renders its replies.
    pub channel: WechatChannel,
    /// Answers with pictures inside the reply window (fast path, 取图); `None` without its API credentials or on
    /// a node without the web role.
    pub passive: Option<Arc<PassiveReplies>>,
}

#[async_trait::async_trait]
impl Webhook for WechatEndpoint {
    fn platform(&self) -> &'static str {
        CHANNEL
    }

    fn account(&self) -> &str {
        self.channel.name()
    }

    /// URL verification: answers the `echostr` challenge.
    async fn get(&self, _state: &AppState, request: WebhookRequest) -> Result<Response, ApiError> {
        Ok(self
            .channel
            .verify_url(&request.wechat_query(), now())?
            .into_response())
    }

    async fn post(&self, state: &AppState, request: WebhookRequest) -> Result<Response, ApiError> {
        receive(state, self, &request.wechat_query(), &request.body).await
    }

    fn answers_with_pictures(&self) -> bool {
        self.passive.is_some()
    }
}

/// WeChat waits 5 s; a picture reply must be on its way back by then.
const ANSWER_WITHIN: Duration = Duration::from_millis(4300);

/// A pushed message or event.
async fn receive(
    state: &AppState,
    endpoint: &WechatEndpoint,
    query: &WebhookQuery,
    body: &[u8],
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let received = endpoint.channel.receive(query, body, now())?;
    let inbound = &received.inbound;
    let passive = endpoint.passive.as_deref().filter(|p| p.is_enabled());
    let step = state
        .inbox
        .prepare(inbound, OffsetDateTime::now_utc(), passive.is_some())
        .await?;
    let reply = match (step, passive) {
        (Step::Admit(submission), _) => admit(state, passive, started, *submission).await?,
        (Step::Fetch, Some(passive)) => fetch_picture(state, passive, inbound, started).await?,
        (Step::Fetch, None) => Reply::Text {
            text: state.settings.replies.fetch_retry.clone(),
        },
    };
    Ok(respond(endpoint, &received, &reply))
}

/// The HTTP answer carrying `reply`, encrypted when the request was.
fn respond(endpoint: &WechatEndpoint, received: &Received, reply: &Reply) -> Response {
    let body = endpoint.channel.render_reply(received, reply, now());
    let content_type = if *reply == Reply::None {
        "text/plain; charset=utf-8"
    } else {
        "application/xml; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Admits the message (and its job), then, when the job finishes within the fast-path window, answers with the
/// picture itself. A retry of an admitted message waits on the same job instead of starting anything.
async fn admit(
    state: &AppState,
    passive: Option<&PassiveReplies>,
    started: Instant,
    mut submission: Submission<'_>,
) -> Result<Reply, ApiError> {
    let inbound = submission.inbound;
    let delivery = &state.settings.delivery;
    // With a long queue the job cannot be painted inside the window: do not hold the request for nothing.
    let queued = state.inbox.queue_depth();
    let fast_path = passive.filter(|_| {
        delivery.fast_path_secs > 0.0 && queued <= i64::from(delivery.fast_path_max_queue)
    });
    if let (Some(job), Some(_)) = (submission.job.as_mut(), fast_path) {
        // Deliverers leave the job to this request until its answer window is over.
        job.deliver_after_secs = delivery.fast_path_secs + 1.0;
    }
    let (stored, job_id) = match state.inbox.admit(&submission).await? {
        Admission::Accepted { job_id } => (submission.reply, job_id),
        Admission::Refused { reply } => return Ok(reply),
        Admission::Duplicate { reply, .. } if matches!(reply, Reply::Image { .. }) => {
            return Ok(reply);
        }
        Admission::Duplicate { reply, job_id } => (reply, job_id),
    };
    let answer_by = started + ANSWER_WITHIN;
    if let (Some(passive), Some(job_id)) = (fast_path, job_id) {
        let wait_until = started + Duration::from_secs_f64(delivery.fast_path_secs);
        if let Some(picture) = passive
            .fast_path(inbound, job_id, wait_until, answer_by)
            .await
        {
            return Ok(picture);
        }
    }
    if let Some(passive) = passive.filter(|_| delivery.fetch_on_any_message && job_id.is_some()) {
        let waiting = passive.claim_waiting(inbound).await?;
        if let Some(picture) = passive.answer_fetch(inbound, waiting, answer_by).await {
            return Ok(picture);
        }
    }
    Ok(stored)
}

/// 取图: answers with the follower's oldest finished picture (or word that it failed), or says why there is none.
async fn fetch_picture(
    state: &AppState,
    passive: &PassiveReplies,
    inbound: &Inbound,
    started: Instant,
) -> Result<Reply, ApiError> {
    let waiting = passive.claim_waiting(inbound).await?;
    let submission = Submission {
        refusal: None,
        limits: None,
        inbound,
        job: None,
        reply: passive.fetch_text(waiting),
    };
    match state.inbox.admit(&submission).await {
        Ok(Admission::Accepted { .. } | Admission::Refused { .. }) => Ok(passive
            .answer_fetch(inbound, waiting, started + ANSWER_WITHIN)
            .await
            .unwrap_or(submission.reply)),
        Ok(Admission::Duplicate { reply, .. }) => {
            passive.release(waiting).await;
            Ok(reply)
        }
        Err(e) => {
            passive.release(waiting).await;
            Err(e.into())
        }
    }
}
