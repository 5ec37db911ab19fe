//! The HTTP surface: webhooks, health and metrics. Handlers are thin: extract, call one module, map the result.

mod error;
mod health;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::channel::wechat::WechatChannel;
use crate::config::Settings;
use crate::store::Store;

pub use error::ApiError;

/// WeChat drops the connection after 5 s; answering (even with an error) before that lets its retry start sooner.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(4500);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Arc<dyn Store>,
    /// The default WeChat account.
    pub wechat: Arc<WechatChannel>,
    /// All settings.
    pub settings: Arc<Settings>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Wakes this process's idle worker when a job is admitted.
    pub wake_workers: Arc<tokio::sync::Notify>,
    /// Wakes the announcer that tells other nodes' workers (coalesced).
    pub announce_jobs: Arc<tokio::sync::Notify>,
    /// Jobs queued, as last counted (refreshed every second while backpressure or the fast path is on).
    pub queue_depth: Arc<std::sync::atomic::AtomicI64>,
    /// The grammar and campaigns messages are interpreted with (replaced when campaigns change).
    pub catalog: Arc<std::sync::RwLock<Arc<crate::command::Catalog>>>,
    /// The message use case (plans and admits what followers send).
    pub inbox: Arc<crate::inbox::Inbox>,
    /// Notified when campaigns, filter words or follower lists change (here or on another node): reload now.
    pub catalog_changed: Arc<tokio::sync::Notify>,
    /// Answers with pictures inside the reply window (fast path, 取图); `None` without an API client.
    pub passive: Option<Arc<crate::deliver::passive::PassiveReplies>>,
}

impl AppState {
    /// The state of a node serving `settings` over `store`: fresh wake-ups, a queue count starting at 0 and the
    /// message use case wired to them.
    pub fn new(
        store: Arc<dyn Store>,
        wechat: WechatChannel,
        settings: Settings,
        catalog: crate::command::Catalog,
        passive: Option<Arc<crate::deliver::passive::PassiveReplies>>,
    ) -> Self {
        let settings = Arc::new(settings);
        let catalog = Arc::new(std::sync::RwLock::new(Arc::new(catalog)));
        let wake_workers = Arc::new(tokio::sync::Notify::new());
        let announce_jobs = Arc::new(tokio::sync::Notify::new());
        let queue_depth: Arc<std::sync::atomic::AtomicI64> = Default::default();
        let inbox = Arc::new(crate::inbox::Inbox::new(
            store.clone(),
            settings.clone(),
            catalog.clone(),
            queue_depth.clone(),
            wake_workers.clone(),
            announce_jobs.clone(),
        ));
        Self {
            store,
            wechat: Arc::new(wechat),
            settings,
            metrics: metrics_handle(),
            wake_workers,
            announce_jobs,
            queue_depth,
            catalog,
            inbox,
            passive,
            catalog_changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Makes every node re-read campaigns, filter words and follower lists now (this one directly, the others
    /// through the store).
    pub async fn announce_catalog(&self) {
        self.catalog_changed.notify_one();
        if let Err(e) = self.store.announce_catalog().await {
            tracing::warn!(error = %e, "could not tell other nodes about the change; they see it at their next reload");
        }
    }
}

/// Builds the router with all routes and layers.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.server.body_limit_bytes;
    Router::new()
        .route(
            "/webhook/wechat",
            get(webhook::verify_wechat).post(webhook::receive_wechat),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(crate::admin::router(state.clone()))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The process-wide Prometheus recorder (installed once; every app in the process shares it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; metrics then go there instead.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
