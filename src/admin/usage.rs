//! Usage at a glance, from the same views `huabi usage` reads: per day and campaign, the last 30 days and today by
//! hour as charts, the queue now (by model), live workers, and the top followers (ids masked).

use askama::Template;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{Admin, AdminError, AdminResult, html};
use crate::http::AppState;
use crate::store::admin::{FollowerUsage, HourRow, WorkerRow};
use crate::store::{ModelQueue, UsageRow};
use crate::usage::{self, UsageFormat};

/// `/admin/usage`.
#[derive(Template)]
#[template(path = "admin/usage.html")]
pub struct UsagePage {
    /// Who is looking.
    pub admin: Admin,
    /// `usage_daily` rows of the last 30 days.
    pub rows: Vec<UsageRow>,
    /// The charts' data (JSON): days, requests and painted per day; hours, requests and painted per hour today.
    pub chart_json: String,
    /// Jobs queued now.
    pub queued: i64,
    /// Queued jobs by model and LoRA set.
    pub queue: Vec<ModelQueue>,
    /// Live workers.
    pub workers: Vec<WorkerRow>,
    /// Followers with the most paintings in the last 30 days, each with its masked id.
    pub followers: Vec<(FollowerUsage, String)>,
}

/// A follower id with its middle hidden (`oAbc…xyz`).
pub fn mask(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 8 {
        return format!(
            "{}…",
            chars.first().map_or(String::new(), |c| c.to_string())
        );
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}…{tail}")
}

/// The charts' data.
fn chart_data(rows: &[UsageRow], hours: &[HourRow]) -> serde_json::Value {
    let mut days: Vec<String> = rows.iter().map(|r| r.day.clone()).collect();
    days.sort();
    days.dedup();
    let per_day = |f: fn(&UsageRow) -> i64| -> Vec<i64> {
        days.iter()
            .map(|d| rows.iter().filter(|r| &r.day == d).map(f).sum())
            .collect()
    };
    let mut by_hour = [[0i64; 2]; 24];
    for h in hours {
        if let Some(slot) = usize::try_from(h.hour)
            .ok()
            .and_then(|i| by_hour.get_mut(i))
        {
            *slot = [h.requests, h.painted];
        }
    }
    serde_json::json!({
        "days": days,
        "requests": per_day(|r| r.requests),
        "painted": per_day(|r| r.painted),
        "hours": (0..24).collect::<Vec<_>>(),
        "hour_requests": by_hour.iter().map(|h| h[0]).collect::<Vec<_>>(),
        "hour_painted": by_hour.iter().map(|h| h[1]).collect::<Vec<_>>(),
    })
}

/// `GET /admin/usage`.
pub async fn page(State(state): State<AppState>, admin: Admin) -> AdminResult {
    let today = crate::limits::shanghai_day(OffsetDateTime::now_utc());
    let since = (today - time::Duration::days(29)).to_string();
    let rows = state.store.usage(&since).await?;
    let hours = state.store.usage_by_hour(&today.to_string()).await?;
    html(UsagePage {
        admin,
        chart_json: chart_data(&rows, &hours).to_string().replace("</", "<\\/"),
        rows,
        queued: state.store.queued_jobs().await?,
        queue: state.store.queue_by_model().await?,
        workers: super::pages::live_workers(&state).await?,
        followers: state
            .store
            .top_followers(&since, 10)
            .await?
            .into_iter()
            .map(|f| {
                let masked = mask(&f.user_id);
                (f, masked)
            })
            .collect(),
    })
}

/// `?since=` as `huabi usage` takes it.
#[derive(Debug, Deserialize)]
pub struct Since {
    #[serde(default = "week")]
    since: String,
}

fn week() -> String {
    "7d".into()
}

/// `GET /admin/usage.json`: the same JSON as `huabi usage --format json`.
pub async fn json(
    State(state): State<AppState>,
    _admin: Admin,
    Query(q): Query<Since>,
) -> AdminResult<Response> {
    let today = crate::limits::shanghai_day(OffsetDateTime::now_utc());
    let first =
        usage::first_day(&q.since, today).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    let rows = state.store.usage(&first.to_string()).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        usage::render(&rows, UsageFormat::Json),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_ids_are_masked() {
        assert_eq!(mask("oAbCdEfGhIjK123"), "oAbC…123");
        assert_eq!(mask("short"), "s…");
        assert_eq!(mask(""), "…");
        assert_eq!(mask("中秋快乐每一天"), "中…");
    }
}
