//! The login form, logging in and out, the overview, and the error page.

use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use time::{Duration, OffsetDateTime};

use super::auth::{self, LoginError};
use super::{
    Admin, AdminResult, client_address, connect_address, cookie, html, secure_cookies, set_cookie,
};
use crate::campaign::Window;
use crate::http::AppState;
use crate::store::admin::{JobDetail, JobFilter};

/// Any error, as a page.
#[derive(Template)]
#[template(path = "admin/error.html")]
pub struct ErrorPage {
    /// HTTP status.
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

/// The login form.
#[derive(Template)]
#[template(path = "admin/login.html")]
pub struct LoginPage {
    /// The double-submit token (also in the login cookie).
    pub csrf: String,
    /// Where to go after logging in.
    pub next: String,
    /// Why the last attempt failed.
    pub error: String,
    /// The user name typed last time.
    pub user: String,
}

/// `?next=` of the login form.
#[derive(Debug, Deserialize)]
pub struct Next {
    #[serde(default)]
    next: String,
}

/// Only paths inside the console are followed after logging in.
fn safe_next(next: &str) -> String {
    if next.starts_with("/admin") && !next.starts_with("//") && !next.contains("://") {
        next.to_string()
    } else {
        "/admin".into()
    }
}

/// `GET /admin/login`.
pub async fn login_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Next>,
) -> AdminResult {
    let csrf = auth::random_token();
    let page = LoginPage {
        csrf: csrf.clone(),
        next: safe_next(&q.next),
        error: String::new(),
        user: String::new(),
    };
    let mut response = html(page)?;
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(
            auth::LOGIN_COOKIE,
            &csrf,
            3600,
            secure_cookies(&state, &headers),
        ),
    );
    Ok(response)
}

/// The login form's fields.
struct LoginForm {
    user: String,
    password: String,
    csrf: String,
    next: String,
}

/// `POST /admin/login`: 303 to the page asked for; 401 with the form again; 429 with `Retry-After` when throttled;
/// 403 without the form's token.
pub async fn log_in(State(state): State<AppState>, request: Request) -> AdminResult {
    let (parts, body) = request.into_parts();
    let address = client_address(&state, &parts.headers, connect_address(&parts));
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|_| super::AdminError::BadRequest("form too large".into()))?;
    let field = |name: &str| {
        url::form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let form = LoginForm {
        user: field("user"),
        password: field("password"),
        csrf: field("csrf"),
        next: field("next"),
    };
    let expected = cookie(&parts.headers, auth::LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !auth::same_token(&form.csrf, &expected) {
        return Err(super::AdminError::Forbidden(
            "the login form expired; reload the page".into(),
        ));
    }
    let lasts = Duration::seconds_f64(state.settings.admin.session_hours * 3600.0);
    let now = OffsetDateTime::now_utc();
    let secure = secure_cookies(&state, &parts.headers);
    match auth::log_in(
        &*state.store,
        form.user.trim(),
        &form.password,
        &address,
        now,
        lasts,
    )
    .await
    {
        Ok(token) => {
            tracing::info!(user = %form.user.trim(), %address, "console login");
            let mut response = Redirect::to(&safe_next(&form.next)).into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                set_cookie(auth::COOKIE, &token, lasts.whole_seconds(), secure),
            );
            headers.append(
                header::SET_COOKIE,
                set_cookie(auth::LOGIN_COOKIE, "", 0, secure),
            );
            Ok(response)
        }
        Err(error) => {
            let status = match error {
                LoginError::Wrong => StatusCode::UNAUTHORIZED,
                LoginError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
                LoginError::Store(e) => return Err(e.into()),
            };
            tracing::warn!(user = %form.user.trim(), %address, %error, "console login refused");
            let page = LoginPage {
                csrf: expected,
                next: safe_next(&form.next),
                error: error.to_string(),
                user: form.user,
            };
            let mut response = html(page)?;
            *response.status_mut() = status;
            if let LoginError::Throttled(secs) = error {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    secs.to_string().parse().expect("digits"),
                );
            }
            Ok(response)
        }
    }
}

/// `POST /admin/logout`: ends the session on the server and clears the cookie.
pub async fn log_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    _admin: Admin,
) -> AdminResult<Response> {
    if let Some(token) = cookie(&headers, auth::COOKIE) {
        state.store.end_session(&auth::token_hash(&token)).await?;
    }
    let mut response = Redirect::to("/admin/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(auth::COOKIE, "", 0, secure_cookies(&state, &headers)),
    );
    Ok(response)
}

/// A campaign's line on the overview.
pub struct CampaignLine {
    /// Name.
    pub name: String,
    /// Title.
    pub title: String,
    /// upcoming / running / ended.
    pub state: &'static str,
}

/// `/admin`.
#[derive(Template)]
#[template(path = "admin/overview.html")]
pub struct OverviewPage {
    /// Who is looking.
    pub admin: Admin,
    /// Campaigns and their state.
    pub campaigns: Vec<CampaignLine>,
    /// Today (Asia/Shanghai): requests, admitted, painted, delivered, failed.
    pub today: [i64; 5],
    /// Jobs queued now.
    pub queued: i64,
    /// Workers seen in the last 30 s.
    pub workers: usize,
    /// The newest jobs.
    pub jobs: Vec<JobDetail>,
}

/// A campaign's state word.
pub fn state_word(window: Window) -> &'static str {
    match window {
        Window::NotStarted => "upcoming",
        Window::Open => "running",
        Window::Ended => "ended",
    }
}

/// Workers that said what they paint within the last 30 s.
pub async fn live_workers(state: &AppState) -> AdminResult<Vec<crate::store::admin::WorkerRow>> {
    let now = OffsetDateTime::now_utc();
    Ok(state
        .store
        .workers()
        .await?
        .into_iter()
        .filter(|w| now - w.seen_at < Duration::seconds(30))
        .collect())
}

/// `GET /admin`.
pub async fn overview(State(state): State<AppState>, admin: Admin) -> AdminResult {
    let now = OffsetDateTime::now_utc();
    let catalog = state.inbox.catalog();
    let campaigns = catalog
        .campaigns
        .all()
        .iter()
        .map(|c| CampaignLine {
            name: c.name.clone(),
            title: c.title.clone(),
            state: state_word(c.window(now)),
        })
        .collect();
    let day = crate::limits::shanghai_day(now).to_string();
    let mut today = [0; 5];
    for row in state.store.usage(&day).await? {
        for (sum, v) in today.iter_mut().zip([
            row.requests,
            row.admitted,
            row.painted,
            row.delivered,
            row.failed,
        ]) {
            *sum += v;
        }
    }
    html(OverviewPage {
        admin,
        campaigns,
        today,
        queued: state.store.queued_jobs().await?,
        workers: live_workers(&state).await?.len(),
        jobs: state
            .store
            .jobs(&JobFilter {
                limit: 8,
                ..Default::default()
            })
            .await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_followed_after_login() {
        assert_eq!(safe_next("/admin/campaigns"), "/admin/campaigns");
        for hostile in [
            "https://evil.example",
            "//evil.example",
            "/other",
            "",
            "/admin/x?u=http://e",
        ] {
            assert_eq!(safe_next(hostile), "/admin", "{hostile}");
        }
    }
}
