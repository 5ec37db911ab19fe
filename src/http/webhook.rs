//! `GET|POST /webhook/wechat`: verify, decrypt, parse, admit exactly once, answer inside WeChat's window.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::{AppState, error::ApiError};
use crate::channel::Reply;
use crate::channel::wechat::WebhookQuery;
use crate::command;
use crate::store::{Admission, NewJob, Submission};

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// URL verification: answers the `echostr` challenge.
pub async fn verify_wechat(
    State(state): State<AppState>,
    Query(query): Query<WebhookQuery>,
) -> Result<String, ApiError> {
    Ok(state.wechat.verify_url(&query, now())?)
}

/// A pushed message or event.
pub async fn receive_wechat(
    State(state): State<AppState>,
    Query(query): Query<WebhookQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let received = state.wechat.receive(&query, &body, now())?;
    let inbound = &received.inbound;
    let plan = command::plan(&inbound.kind, &state.settings.replies);
    let submission = Submission {
        inbound,
        job: plan
            .job_prompt
            .map(|prompt| NewJob::new(prompt, &state.settings.jobs)),
        reply: plan.reply,
    };
    let reply = match state.store.submit(&submission).await? {
        Admission::Accepted { job_id } => {
            metrics::counter!("huabi_webhook_admitted_total", "job" => if job_id.is_some() { "yes" } else { "no" })
                .increment(1);
            tracing::debug!(dedup_key = %inbound.dedup_key, kind = inbound.kind.name(), ?job_id, "admitted");
            if job_id.is_some() {
                state.wake_workers.notify_one();
                state.announce_jobs.notify_one();
            }
            submission.reply
        }
        Admission::Duplicate { reply } => {
            metrics::counter!("huabi_webhook_duplicates_total").increment(1);
            tracing::info!(dedup_key = %inbound.dedup_key, "retry of an admitted message");
            reply
        }
    };
    let body = state.wechat.render_reply(&received, &reply, now());
    let content_type = if reply == Reply::None {
        "text/plain; charset=utf-8"
    } else {
        "application/xml; charset=utf-8"
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}
