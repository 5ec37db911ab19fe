//! Builds the roles from [`Settings`] and runs them until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::channel::wechat::WechatChannel;
use crate::config::Settings;
use crate::http::{AppState, metrics_handle, router};
use crate::store::{self, Store};

/// A node ready to serve: database connected and migrated, port bound.
pub struct App {
    listener: TcpListener,
    state: AppState,
}

impl App {
    /// Connects and migrates the database, builds the channels and binds the listen address.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = store::connect(&settings.database).await.with_context(|| {
            format!(
                "connecting to {}",
                crate::config::redact_url(&settings.database.url)
            )
        })?;
        store.migrate().await.context("applying migrations")?;
        let wechat = WechatChannel::new(&settings.wechat).context("WeChat settings")?;
        if !wechat.is_configured() {
            tracing::warn!(
                "HUABI__WECHAT__TOKEN is not set: /webhook/wechat answers 503 until it is"
            );
        }
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("binding {}", settings.server.listen))?;
        let state = AppState {
            store,
            wechat: Arc::new(wechat),
            settings: Arc::new(settings),
            metrics: metrics_handle(),
        };
        Ok(Self { listener, state })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The store the app uses.
    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// Serves until `shutdown` completes, then gives in-flight requests the configured grace period.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let grace = Duration::from_secs(self.state.settings.server.shutdown_grace_secs);
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        tracing::info!(
            listen = %self.listener.local_addr()?,
            database = self.state.store.backend(),
            "huabi serving"
        );
        let server = axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        tokio::select! {
            result = server => result.context("HTTP server")?,
            _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "grace period over; closing remaining connections");
            }
        }
        tracing::info!("huabi stopped");
        Ok(())
    }
}

/// Completes on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
