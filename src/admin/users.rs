//! Users (admins manage them: add, change role, reset password, disable) and the audit log of every change.

use askama::Template;
use axum::extract::State;
use serde::Deserialize;

use super::auth::{self, Role};
use super::{Admin, AdminError, AdminResult, audit, html, see_other};
use crate::http::AppState;
use crate::store::admin::{AdminUser, AuditEntry};

/// `/admin/users`.
#[derive(Template)]
#[template(path = "admin/users.html")]
pub struct UsersPage {
    /// Who is looking.
    pub admin: Admin,
    /// Every user.
    pub users: Vec<AdminUser>,
    /// Why the last change was refused.
    pub error: String,
}

/// `GET /admin/users`.
pub async fn page(State(state): State<AppState>, admin: Admin) -> AdminResult {
    admin.require(Role::Admin)?;
    html(UsersPage {
        admin,
        users: state.store.admin_users().await?,
        error: String::new(),
    })
}

/// A user to add or change.
#[derive(Debug, Deserialize)]
pub struct UserForm {
    name: String,
    role: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    disabled: Option<String>,
}

/// `POST /admin/users`: adds a user or changes one (an empty password keeps the current one). A changed user's
/// sessions end.
pub async fn save(
    State(state): State<AppState>,
    admin: Admin,
    axum::Form(form): axum::Form<UserForm>,
) -> AdminResult {
    admin.require(Role::Admin)?;
    let name = form.name.trim();
    let before = state.store.admin_user(name).await?;
    let checked = (|| -> Result<(Role, Option<String>), String> {
        auth::check_user_name(name)?;
        let role: Role = form.role.parse()?;
        let password = match (form.password.is_empty(), &before) {
            (true, Some(_)) => None,
            (true, None) => return Err("a new user needs a password".into()),
            (false, _) => {
                auth::check_new_password(&form.password)?;
                Some(form.password.clone())
            }
        };
        if name == admin.name && (role != Role::Admin || form.disabled.is_some()) {
            return Err("you cannot take the admin role from yourself or disable yourself".into());
        }
        Ok((role, password))
    })();
    let (role, password) = match checked {
        Ok(ok) => ok,
        Err(error) => {
            let mut response = html(UsersPage {
                admin,
                users: state.store.admin_users().await?,
                error,
            })?;
            *response.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
            return Ok(response);
        }
    };
    let hash = match password {
        Some(p) => Some(
            tokio::task::spawn_blocking(move || auth::hash_password(&p))
                .await
                .map_err(|e| AdminError::BadRequest(e.to_string()))?
                .map_err(AdminError::BadRequest)?,
        ),
        None => None,
    };
    let disabled = form.disabled.is_some();
    state
        .store
        .save_admin_user(name, role.as_str(), hash.as_deref(), disabled)
        .await?;
    let describe = |role: &str, disabled: bool| format!("role={role} disabled={disabled}");
    let after = describe(role.as_str(), disabled)
        + if hash.is_some() {
            " password=changed"
        } else {
            ""
        };
    audit(
        &state,
        &admin,
        "user.save",
        name,
        (
            before.map(|u| describe(&u.role, u.disabled)).as_deref(),
            Some(&after),
        ),
    )
    .await?;
    see_other("/admin/users")
}

/// `/admin/audit`.
#[derive(Template)]
#[template(path = "admin/audit.html")]
pub struct AuditPage {
    /// Who is looking.
    pub admin: Admin,
    /// The newest entries, each with its diff.
    pub entries: Vec<(AuditEntry, Vec<(char, String)>)>,
}

/// `GET /admin/audit`.
pub async fn audit_log(State(state): State<AppState>, admin: Admin) -> AdminResult {
    let entries = state
        .store
        .audit_log(200)
        .await?
        .into_iter()
        .map(|e| {
            let diff = super::campaigns::line_diff(
                e.before.as_deref().unwrap_or(""),
                e.after.as_deref().unwrap_or(""),
            )
            .into_iter()
            .filter(|(k, _)| *k != ' ')
            .collect();
            (e, diff)
        })
        .collect();
    html(AuditPage { admin, entries })
}
