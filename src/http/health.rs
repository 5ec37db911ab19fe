//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::StatusCode;

use super::{AppState, error::ApiError};

/// The process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// The database answers.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.store.ping().await?;
    Ok("ready")
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> (StatusCode, String) {
    (StatusCode::OK, state.metrics.render())
}
