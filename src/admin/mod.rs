//! The console at `/admin`: server-rendered pages (askama templates in `templates/admin/`, htmx and Chart.js
//! vendored under `assets/admin/`) for campaign admins and operators. Absent (404) until a user exists. Every page
//! needs a session; every POST carries the session's CSRF token; writes need the editor or admin role and are
//! recorded in the audit log. Pages work without JavaScript where a form suffices.

mod assets;
pub mod auth;
mod campaigns;
mod chat;
mod jobs;
mod pages;
mod usage;
mod users;
mod words;

use std::net::SocketAddr;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use time::OffsetDateTime;

use crate::http::AppState;
use crate::store::StoreError;
use crate::store::admin::NewAudit;
use auth::Role;

/// Largest form the console accepts.
const FORM_LIMIT: usize = 1024 * 1024;

/// Failures of a console request, each with its status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No session: pages redirect to the login form, actions answer 401.
    #[error("log in first")]
    Unauthenticated,
    /// The role does not allow it, or the CSRF token is missing or wrong.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing there.
    #[error("not found")]
    NotFound,
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A page could not be rendered.
    #[error("rendering: {0}")]
    Render(#[from] askama::Error),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::NotFound => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Store(_) | AdminError::Render(_) => {
                tracing::error!(error = %self, "console request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let page = pages::ErrorPage {
            status: status.as_u16(),
            message: self.to_string(),
        };
        let body = page.render().unwrap_or_else(|_| self.to_string());
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

/// A console request's result.
pub type AdminResult<T = Response> = Result<T, AdminError>;

/// The logged-in user of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Login name.
    pub name: String,
    /// Role now.
    pub role: Role,
    /// The session's CSRF token (every form sends it back).
    pub csrf: String,
}

impl Admin {
    /// Whether the user may change campaigns, words and followers.
    pub fn can_edit(&self) -> bool {
        self.role >= Role::Editor
    }

    /// Whether the user may manage users.
    pub fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }

    /// Refuses (403) unless the user has at least `role`.
    pub fn require(&self, role: Role) -> AdminResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(AdminError::Forbidden(format!(
                "this needs the {} role; you are {}",
                role.as_str(),
                self.role.as_str()
            )))
        }
    }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(admin) = parts.extensions.get::<Admin>() {
            return Ok(admin.clone());
        }
        let token = cookie(&parts.headers, auth::COOKIE).ok_or(AdminError::Unauthenticated)?;
        let session = state
            .store
            .session(&auth::token_hash(&token), OffsetDateTime::now_utc())
            .await?
            .ok_or(AdminError::Unauthenticated)?;
        let admin = Admin {
            name: session.user_name,
            role: session
                .role
                .parse()
                .map_err(|e: String| AdminError::Forbidden(e))?,
            csrf: session.csrf,
        };
        parts.extensions.insert(admin.clone());
        Ok(admin)
    }
}

/// The client's address: the connection's, or the proxy's `X-Forwarded-For` when configured to trust it.
pub fn client_address(
    state: &AppState,
    headers: &HeaderMap,
    connect: Option<SocketAddr>,
) -> String {
    if state.settings.admin.trust_proxy_headers
        && let Some(forwarded) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
    {
        return forwarded.trim().to_string();
    }
    connect.map_or_else(|| "unknown".into(), |a| a.ip().to_string())
}

/// Whether cookies must be `Secure`: the public address is https, or a trusted proxy says the request was.
pub fn secure_cookies(state: &AppState, headers: &HeaderMap) -> bool {
    state.settings.admin.public_url.starts_with("https://")
        || (state.settings.admin.trust_proxy_headers
            && headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")))
}

/// A `Set-Cookie` value for the console's cookies.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Renders a page.
pub fn html(page: impl Template) -> AdminResult {
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page.render()?,
    )
        .into_response())
}

/// POST-redirect-GET.
pub fn see_other(to: &str) -> AdminResult {
    Ok(Redirect::to(to).into_response())
}

/// Records a change in the audit log.
pub async fn audit(
    state: &AppState,
    admin: &Admin,
    action: &str,
    target: &str,
    (before, after): (Option<&str>, Option<&str>),
) -> AdminResult<()> {
    state
        .store
        .audit(&NewAudit {
            actor: &admin.name,
            action,
            target,
            before,
            after,
        })
        .await?;
    Ok(())
}

/// 404 for every console path until a user exists (read each time: `huabi admin add-user` on any node takes effect
/// at once).
async fn present(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.store.admin_user_count().await {
        Ok(0) => StatusCode::NOT_FOUND.into_response(),
        Ok(_) => next.run(request).await,
        Err(e) => AdminError::Store(e).into_response(),
    }
}

/// Pages without a session go to the login form; every other refusal keeps its status.
async fn login_redirect(request: Request, next: Next) -> Response {
    let is_page = request.method() == Method::GET;
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if is_page && response.status() == StatusCode::UNAUTHORIZED {
        let next = url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>();
        return Redirect::to(&format!("/admin/login?next={next}")).into_response();
    }
    response
}

/// Every state-changing request carries the session's CSRF token (form field `csrf` or header `X-CSRF-Token`);
/// without it: 403 and nothing changes. The login form has its own double-submit token.
async fn csrf(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.uri().path() == "/admin/login" {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let admin = match Admin::from_request_parts(&mut parts, &state).await {
        Ok(admin) => admin,
        Err(e) => return e.into_response(),
    };
    let bytes = match axum::body::to_bytes(body, FORM_LIMIT).await {
        Ok(bytes) => bytes,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let sent = parts
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            url::form_urlencoded::parse(&bytes)
                .find(|(k, _)| k == "csrf")
                .map(|(_, v)| v.into_owned())
        });
    if !sent.is_some_and(|t| auth::same_token(&t, &admin.csrf)) {
        return AdminError::Forbidden(
            "the form's security token is missing or stale; reload the page".into(),
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The connection's address, when the server was started with connection info.
pub fn connect_address(request_parts: &Parts) -> Option<SocketAddr> {
    request_parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// The console's routes (under `/admin`).
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin", get(pages::overview))
        .route("/admin/login", get(pages::login_form).post(pages::log_in))
        .route("/admin/logout", post(pages::log_out))
        .route("/admin/assets/{file}", get(assets::serve))
        .route(
            "/admin/campaigns",
            get(campaigns::list).post(campaigns::create),
        )
        .route("/admin/campaigns/new", get(campaigns::new_form))
        .route("/admin/campaigns/import", post(campaigns::import))
        .route(
            "/admin/campaigns/{name}",
            get(campaigns::edit).post(campaigns::save),
        )
        .route("/admin/campaigns/{name}/export", get(campaigns::export))
        .route("/admin/campaigns/{name}/prompt", get(campaigns::prompt))
        .route("/admin/campaigns/{name}/preview", post(campaigns::preview))
        .route(
            "/admin/campaigns/{name}/rollback/{revision}",
            post(campaigns::rollback),
        )
        .route("/admin/chat", get(chat::page).post(chat::send))
        .route("/admin/words", get(words::page).post(words::add))
        .route("/admin/words/remove", post(words::remove))
        .route("/admin/words/check", post(words::check))
        .route("/admin/usage", get(usage::page))
        .route("/admin/usage.json", get(usage::json))
        .route("/admin/jobs", get(jobs::list))
        .route("/admin/jobs/{id}/image", get(jobs::image))
        .route("/admin/jobs/{id}/card", get(jobs::card))
        .route("/admin/jobs/{id}/redeliver", post(jobs::redeliver))
        .route("/admin/followers/{id}", get(jobs::follower))
        .route("/admin/followers/{id}/listing", post(jobs::listing))
        .route("/admin/audit", get(users::audit_log))
        .route("/admin/users", get(users::page).post(users::save))
        .layer(middleware::from_fn_with_state(state.clone(), csrf))
        .layer(middleware::from_fn(login_redirect))
        .layer(middleware::from_fn_with_state(state, present))
}
