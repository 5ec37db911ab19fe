//! Jobs and followers: recent jobs with thumbnails, status, timeline and error, filtered by status, campaign and
//! follower; a picture's card (which htmx polls until it is painted); sending a held picture again; a follower's
//! requests, quota left today and allow/deny listing.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use time::OffsetDateTime;

use super::auth::Role;
use super::campaigns::url_path;
use super::{Admin, AdminError, AdminResult, audit, html, see_other};
use crate::http::AppState;
use crate::store::admin::{JobDetail, JobFilter};

/// `/admin/jobs`.
#[derive(Template)]
#[template(path = "admin/jobs.html")]
pub struct JobsPage {
    /// Who is looking.
    pub admin: Admin,
    /// The jobs.
    pub jobs: Vec<JobDetail>,
    /// The filter as given.
    pub status: String,
    /// The filter as given.
    pub campaign: String,
    /// The filter as given.
    pub follower: String,
}

/// `?status=&campaign=&follower=`.
#[derive(Debug, Default, Deserialize)]
pub struct JobQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    campaign: String,
    #[serde(default)]
    follower: String,
}

fn some(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// `GET /admin/jobs`.
pub async fn list(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<JobQuery>,
) -> AdminResult {
    let jobs = state
        .store
        .jobs(&JobFilter {
            status: some(&q.status),
            campaign: some(&q.campaign),
            user_id: some(&q.follower),
            limit: 100,
        })
        .await?;
    html(JobsPage {
        admin,
        jobs,
        status: q.status,
        campaign: q.campaign,
        follower: q.follower,
    })
}

/// `GET /admin/jobs/{id}/image`: the stored picture.
pub async fn image(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<i64>,
) -> AdminResult<Response> {
    let jpeg = state
        .store
        .job_image(id)
        .await?
        .ok_or(AdminError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "private, max-age=86400"),
        ],
        jpeg,
    )
        .into_response())
}

/// A job's picture, or its state while it is painted.
#[derive(Template)]
#[template(path = "admin/job_card.html")]
pub struct JobCard {
    /// The job.
    pub job: JobDetail,
}

impl JobCard {
    /// Whether the card is final (no more polling).
    pub fn settled(&self) -> bool {
        self.job.status.is_finished()
    }
}

/// `GET /admin/jobs/{id}/card`.
pub async fn card(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<i64>,
) -> AdminResult {
    let job = state.store.job(id).await?.ok_or(AdminError::NotFound)?;
    html(JobCard { job })
}

/// `POST /admin/jobs/{id}/redeliver`: a held picture is sent again.
pub async fn redeliver(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> AdminResult {
    admin.require(Role::Editor)?;
    let job = state.store.job(id).await?.ok_or(AdminError::NotFound)?;
    if state.store.release_hold(id).await? {
        audit(
            &state,
            &admin,
            "job.redeliver",
            &id.to_string(),
            (job.held.as_deref(), None),
        )
        .await?;
    }
    see_other(&format!("/admin/jobs?follower={}", url_path(&job.user_id)))
}

/// `/admin/followers/{id}`.
#[derive(Template)]
#[template(path = "admin/follower.html")]
pub struct FollowerPage {
    /// Who is looking.
    pub admin: Admin,
    /// Channel.
    pub channel: String,
    /// Account.
    pub account: String,
    /// Follower id.
    pub user_id: String,
    /// Their jobs.
    pub jobs: Vec<JobDetail>,
    /// Requests today.
    pub today: i64,
    /// The daily limit (0 = unlimited).
    pub per_day: u32,
    /// `allow`, `deny` or "" (set here; the configured lists apply too).
    pub listing: String,
    /// Listed in the configuration (`limits.allow` / `limits.deny`).
    pub configured: String,
}

/// `?channel=&account=` of a follower page.
#[derive(Debug, Deserialize)]
pub struct FollowerQuery {
    #[serde(default = "wechat")]
    channel: String,
    #[serde(default)]
    account: String,
}

fn wechat() -> String {
    "wechat".into()
}

/// `GET /admin/followers/{id}`.
pub async fn follower(
    State(state): State<AppState>,
    admin: Admin,
    Path(user_id): Path<String>,
    Query(q): Query<FollowerQuery>,
) -> AdminResult {
    let jobs = state
        .store
        .jobs(&JobFilter {
            user_id: Some(user_id.clone()),
            limit: 50,
            ..Default::default()
        })
        .await?;
    let account = if q.account.is_empty() {
        jobs.first().map(|j| j.account.clone()).unwrap_or_default()
    } else {
        q.account
    };
    let today = state
        .store
        .requests_today(&q.channel, &account, &user_id, OffsetDateTime::now_utc())
        .await?;
    let listing = state
        .store
        .follower_lists()
        .await?
        .into_iter()
        .find(|l| l.channel == q.channel && l.account == account && l.user_id == user_id)
        .map(|l| l.listing)
        .unwrap_or_default();
    let limits = &state.settings.limits;
    let configured = if limits.allow.contains(&user_id) {
        "allow"
    } else if limits.deny.contains(&user_id) {
        "deny"
    } else {
        ""
    };
    html(FollowerPage {
        admin,
        channel: q.channel,
        account,
        user_id,
        jobs,
        today,
        per_day: limits.per_day,
        listing,
        configured: configured.into(),
    })
}

/// A listing change.
#[derive(Debug, Deserialize)]
pub struct ListingForm {
    channel: String,
    account: String,
    /// `allow`, `deny` or `none`.
    listing: String,
}

/// `POST /admin/followers/{id}/listing`.
pub async fn listing(
    State(state): State<AppState>,
    admin: Admin,
    Path(user_id): Path<String>,
    axum::Form(form): axum::Form<ListingForm>,
) -> AdminResult {
    admin.require(Role::Editor)?;
    let listing = match form.listing.as_str() {
        "allow" | "deny" => Some(form.listing.as_str()),
        "none" => None,
        other => return Err(AdminError::BadRequest(format!("listing {other:?}"))),
    };
    state
        .store
        .set_follower_listing(
            (&form.channel, &form.account, &user_id),
            listing,
            &admin.name,
        )
        .await?;
    audit(
        &state,
        &admin,
        "follower.listing",
        &user_id,
        (None, Some(&form.listing)),
    )
    .await?;
    state.announce_catalog().await;
    see_other(&format!(
        "/admin/followers/{}?channel={}&account={}",
        url_path(&user_id),
        url_path(&form.channel),
        url_path(&form.account)
    ))
}
