//! The HTTP surface: webhooks, health and metrics. Handlers are thin: extract, call one module, map the result.

mod error;
mod health;
mod telegram;
mod wechat;
mod wecom;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::Method;
use axum::response::Response;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::Settings;
use crate::store::Store;

pub use error::ApiError;
pub use telegram::TelegramEndpoint;
pub use wechat::WechatEndpoint;
pub use wecom::WecomEndpoint;

/// WeChat drops the connection after 5 s; answering (even with an error) before that lets its retry start sooner.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(4500);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Arc<dyn Store>,
    /// Every account's webhook, by (platform, account name).
    pub webhooks: Arc<std::collections::BTreeMap<(String, String), Arc<dyn Webhook>>>,
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
}

/// A webhook request as the platform sent it.
pub struct WebhookRequest {
    /// The URI, query included.
    pub uri: axum::http::Uri,
    /// The headers.
    pub headers: axum::http::HeaderMap,
    /// The body (within `server.body_limit_bytes`).
    pub body: axum::body::Bytes,
}

impl WebhookRequest {
    /// The WeChat-style signature parameters of the query; missing or garbled ones are absent (and then refused by
    /// the signature check).
    pub fn wechat_query(&self) -> crate::channel::wechat::WebhookQuery {
        axum::extract::Query::try_from_uri(&self.uri)
            .map(|q| q.0)
            .unwrap_or_default()
    }
}

/// One platform account's webhook: the platform's own checks, parsing and answer around the shared message use
/// case ([`crate::inbox::Inbox`]). A platform plugs in by implementing this and being listed in
/// [`crate::app::App::build`].
#[async_trait::async_trait]
pub trait Webhook: Send + Sync {
    /// The platform's name in URLs (`/webhook/{platform}/{account}`).
    fn platform(&self) -> &'static str;
    /// The account's name.
    fn account(&self) -> &str;
    /// `GET`: URL verification, where the platform has one.
    async fn get(&self, state: &AppState, request: WebhookRequest) -> Result<Response, ApiError>;
    /// `POST`: a message or event.
    async fn post(&self, state: &AppState, request: WebhookRequest) -> Result<Response, ApiError>;
    /// Whether it answers with pictures inside the platform's reply window (it then needs finished-job news).
    fn answers_with_pictures(&self) -> bool {
        false
    }
}

impl AppState {
    /// The state of a node serving `settings` over `store`: fresh wake-ups, a queue count starting at 0 and the
    /// message use case wired to them.
    pub fn new(
        store: Arc<dyn Store>,
        webhooks: Vec<Arc<dyn Webhook>>,
        settings: Settings,
        catalog: crate::command::Catalog,
    ) -> Self {
        let webhooks = Arc::new(
            webhooks
                .into_iter()
                .map(|w| ((w.platform().to_string(), w.account().to_string()), w))
                .collect(),
        );
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
            webhooks,
            settings,
            metrics: metrics_handle(),
            wake_workers,
            announce_jobs,
            queue_depth,
            catalog,
            inbox,
            catalog_changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Whether any account answers with pictures inside the reply window.
    pub fn has_passive_replies(&self) -> bool {
        self.webhooks.values().any(|w| w.answers_with_pictures())
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
        .route("/webhook/wechat", get(default_wechat).post(default_wechat))
        .route(
            "/webhook/{platform}/{account}",
            get(dispatch).post(dispatch),
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

/// `/webhook/{platform}/{account}`: the account's webhook, or 404.
async fn dispatch(
    State(state): State<AppState>,
    Path((platform, account)): Path<(String, String)>,
    method: Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let webhook = state
        .webhooks
        .get(&(platform, account))
        .cloned()
        .ok_or(ApiError::UnknownAccount)?;
    let request = WebhookRequest { uri, headers, body };
    if method == Method::GET {
        webhook.get(&state, request).await
    } else {
        webhook.post(&state, request).await
    }
}

/// `/webhook/wechat`: the WeChat account named `default` (single-account deployments).
async fn default_wechat(
    state: State<AppState>,
    method: Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let path = Path((
        crate::channel::wechat::CHANNEL.to_string(),
        crate::config::DEFAULT_ACCOUNT.to_string(),
    ));
    dispatch(state, path, method, uri, headers, body).await
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
