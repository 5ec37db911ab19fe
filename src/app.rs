//! Builds the roles from [`Settings`] and runs them until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::campaign;
use crate::channel::registry::{AccountChannel, Channels};
use crate::channel::telegram::api::{TelegramApi, TelegramOutbound};
use crate::channel::telegram::{self, TelegramChannel};
use crate::channel::wechat::WechatChannel;
use crate::channel::wechat::api::WechatApi;
use crate::channel::wecom::{self, WecomChannel};
use crate::channel::{MediaSource, Outbound};
use crate::command::Catalog;
use crate::config::Settings;
use crate::deliver::Deliverer;
use crate::deliver::passive::PassiveReplies;
use crate::deliver::token::TokenService;
use crate::deliver::wechat::WechatOutbound;
use crate::engine::EngineHandle;
use crate::engine::translate::Translator;
use crate::filter::{self, ContentFilter};
use crate::http::{AppState, TelegramEndpoint, Webhook, WechatEndpoint, WecomEndpoint, router};
use crate::queue::Worker;
use crate::store::{self, Store};

/// The roles a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Webhooks: receive, admit, acknowledge.
    Web,
    /// Paint queued jobs.
    Worker,
    /// Deliver finished pictures through each platform's API.
    Deliver,
}

/// A node ready to serve: database connected and migrated, engine loaded for workers, port bound.
pub struct App {
    listener: TcpListener,
    state: AppState,
    worker: Option<Worker>,
    deliverer: Option<Deliverer>,
    finished: broadcast::Sender<i64>,
    passive: Vec<Arc<PassiveReplies>>,
    /// Prunes storage (nodes with the deliver role, whether or not they have accounts to send through).
    janitor: Option<crate::retention::Janitor>,
}

/// A name for this process's leases and claims in `role`, unique across nodes and restarts.
fn node_id(role: &str) -> String {
    format!(
        "{role}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The accounts this node serves: each configured account's senders in the registry and its webhook. A platform
/// plugs in here with one function.
fn accounts(
    settings: &Settings,
    store: &Arc<dyn Store>,
    web: bool,
    finished: &broadcast::Sender<i64>,
) -> anyhow::Result<Accounts> {
    let mut accounts = Accounts {
        channels: Channels::new(),
        endpoints: Vec::new(),
        passive: Vec::new(),
    };
    wechat_accounts(settings, store, web, finished, &mut accounts)?;
    wecom_accounts(settings, store, &mut accounts)?;
    telegram_accounts(settings, &mut accounts);
    Ok(accounts)
}

/// What [`accounts`] builds.
struct Accounts {
    /// Senders by account.
    channels: Channels,
    /// Webhooks.
    endpoints: Vec<Arc<dyn Webhook>>,
    /// Passive replies of WeChat accounts (whose uploaded material this node sweeps).
    passive: Vec<Arc<PassiveReplies>>,
}

/// WeChat Official Accounts: webhook, and with AppID + AppSecret the API (shared token, passive replies).
fn wechat_accounts(
    settings: &Settings,
    store: &Arc<dyn Store>,
    web: bool,
    finished: &broadcast::Sender<i64>,
    accounts: &mut Accounts,
) -> anyhow::Result<()> {
    for account in &settings.channels.wechat {
        let name = account.name.as_str();
        let channel = WechatChannel::new(name, &account.settings)
            .with_context(|| format!("WeChat account {name}"))?;
        if !channel.is_configured() {
            tracing::warn!(
                account = name,
                "the WeChat account has no Token (HUABI__WECHAT__TOKEN for `default`): its webhook answers 503 until it has"
            );
        }
        let api = Arc::new(WechatApi::new(
            &account.settings.api_base,
            &account.settings.app_id,
            account.settings.app_secret.clone(),
            Duration::from_secs_f64(settings.delivery.api_timeout_secs),
        ));
        let mut passive = None;
        if api.is_configured() {
            let tokens = Arc::new(TokenService::new(
                store.clone(),
                api.clone(),
                node_id("token"),
            ));
            let outbound = Arc::new(WechatOutbound::new(tokens.clone()));
            accounts.channels.insert(
                crate::channel::wechat::CHANNEL,
                name,
                AccountChannel {
                    outbound: outbound.clone(),
                    media: Some(outbound as Arc<dyn MediaSource>),
                },
            );
            passive = web.then(|| {
                Arc::new(PassiveReplies::new(
                    store.clone(),
                    tokens,
                    node_id("web"),
                    settings.delivery.clone(),
                    settings.replies.clone(),
                    finished.clone(),
                ))
            });
        }
        accounts.passive.extend(passive.clone());
        accounts
            .endpoints
            .push(Arc::new(WechatEndpoint { channel, passive }));
    }
    Ok(())
}

/// WeCom self-built apps: callback, and with Secret + AgentId the API.
fn wecom_accounts(
    settings: &Settings,
    store: &Arc<dyn Store>,
    accounts: &mut Accounts,
) -> anyhow::Result<()> {
    for account in &settings.channels.wecom {
        let name = account.name.as_str();
        let channel = WecomChannel::new(
            name,
            account.token.expose_secret(),
            account.aes_key.expose_secret(),
            &account.corp_id,
        )
        .with_context(|| format!("WeCom account {name}"))?;
        let api = Arc::new(WechatApi::wecom(
            &account.api_base,
            &account.corp_id,
            &account.agent_id,
            account.secret.clone(),
            Duration::from_secs_f64(settings.delivery.api_timeout_secs),
        ));
        if api.is_configured() && !account.agent_id.is_empty() {
            let tokens = Arc::new(TokenService::new(store.clone(), api, node_id("token")));
            let outbound = Arc::new(WechatOutbound::new(tokens));
            accounts.channels.insert(
                wecom::CHANNEL,
                name,
                AccountChannel {
                    outbound: outbound.clone(),
                    media: Some(outbound as Arc<dyn MediaSource>),
                },
            );
        }
        accounts.endpoints.push(Arc::new(WecomEndpoint { channel }));
    }
    Ok(())
}

/// Telegram bots: webhook, and with a bot token the Bot API.
fn telegram_accounts(settings: &Settings, accounts: &mut Accounts) {
    for account in &settings.channels.telegram {
        let name = account.name.as_str();
        let api = TelegramApi::new(
            &account.api_base,
            account.bot_token.clone(),
            Duration::from_secs_f64(settings.delivery.api_timeout_secs),
        );
        let outbound = api
            .is_configured()
            .then(|| Arc::new(TelegramOutbound::new(api)));
        if let Some(outbound) = &outbound {
            accounts.channels.insert(
                telegram::CHANNEL,
                name,
                AccountChannel {
                    outbound: outbound.clone(),
                    media: Some(outbound.clone() as Arc<dyn MediaSource>),
                },
            );
        }
        let channel = TelegramChannel::new(name, account.secret_token.clone());
        accounts.endpoints.push(Arc::new(TelegramEndpoint {
            channel,
            outbound: outbound.map(|o| o as Arc<dyn Outbound>),
        }));
    }
}

impl App {
    /// Connects and migrates the database, loads the engine when the node paints, builds the channels and binds
    /// the listen address.
    pub async fn build(settings: Settings, roles: &[Role]) -> anyhow::Result<Self> {
        let store = store::connect(&settings.database).await.with_context(|| {
            format!(
                "connecting to {}",
                crate::config::redact_url(&settings.database.url)
            )
        })?;
        store.migrate().await.context("applying migrations")?;
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("binding {}", settings.server.listen))?;
        let (finished, _) = broadcast::channel(1024);
        let Accounts {
            channels,
            endpoints,
            passive,
        } = accounts(&settings, &store, roles.contains(&Role::Web), &finished)?;
        let channels = Arc::new(channels);
        let worker = if roles.contains(&Role::Worker) {
            let config = settings.engine.clone();
            let translate = settings.translate.clone();
            let (engine, translator) = tokio::task::spawn_blocking(move || {
                let engine = EngineHandle::spawn(config.clone())?;
                let translator = Translator::open(&config, &translate)?;
                Ok::<_, crate::engine::EngineError>((engine, translator))
            })
            .await
            .context("engine loader")?
            .context("loading the engine")?;
            if translator.is_none() {
                tracing::warn!(
                    "HUABI__TRANSLATE__MODEL_DIR is not set: Chinese outside campaign glossaries goes to the text encoder as it is"
                );
            }
            let media = (!channels.is_empty()).then(|| channels.clone() as Arc<dyn MediaSource>);
            Some(
                Worker::new(
                    store.clone(),
                    engine,
                    node_id("worker"),
                    settings.jobs.clone(),
                    settings.engine.max_batch,
                    settings.engine.aigc_provider.clone(),
                    finished.clone(),
                )
                .with_translator(translator.map(Arc::new))
                .with_media(media)
                .with_replies(settings.replies.clone(), settings.safety.keep_flagged),
            )
        } else {
            None
        };
        let deliverer = match roles.contains(&Role::Deliver) {
            true if !channels.is_empty() => Some(Deliverer::new(
                store.clone(),
                channels.clone(),
                node_id("deliver"),
                settings.delivery.clone(),
                settings.replies.failed.clone(),
            )),
            true => {
                tracing::warn!(
                    "no account has API credentials (HUABI__WECHAT__APP_ID / APP_SECRET, …): this node delivers nothing (pictures stay in the database)"
                );
                None
            }
            false => None,
        };
        let janitor = roles
            .contains(&Role::Deliver)
            .then(|| crate::retention::Janitor::new(store.clone(), settings.retention.clone()));
        let catalog = load_catalog(&*store, &settings, true).await?;
        let state = AppState::new(store, endpoints, settings, catalog);
        Ok(Self {
            listener,
            state,
            worker,
            deliverer,
            finished,
            passive,
            janitor,
        })
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
        if self.worker.is_some() {
            self.state
                .store
                .subscribe_jobs(self.state.wake_workers.clone())
                .await
                .context("listening for new jobs")?;
        }
        if self.deliverer.is_some() || self.state.has_passive_replies() {
            self.state
                .store
                .subscribe_finished(self.finished.clone())
                .await
                .context("listening for finished jobs")?;
        }
        self.state
            .store
            .subscribe_catalog(self.state.catalog_changed.clone())
            .await
            .context("listening for campaign changes")?;
        tokio::spawn(reload_catalog(self.state.clone(), stop.clone()));
        tokio::spawn(count_queue(self.state.clone(), stop.clone()));
        tokio::spawn(announce_task(
            self.state.store.clone(),
            self.state.announce_jobs.clone(),
            stop.clone(),
        ));
        let poll = Duration::from_secs_f64(self.state.settings.jobs.poll_secs);
        let worker = self.worker.map(|w| {
            tracing::info!(worker = w.id(), "worker started");
            tokio::spawn(w.run(self.state.wake_workers.clone(), stop.clone(), poll))
        });
        for passive in self.passive {
            tokio::spawn(passive.sweep_materials_until(stop.clone()));
        }
        if let Some(janitor) = self.janitor {
            tokio::spawn(janitor.run(stop.clone()));
        }
        let deliverer = self.deliverer.map(|d| {
            tracing::info!(deliverer = d.id(), "deliverer started");
            let poll = Duration::from_secs_f64(self.state.settings.delivery.poll_secs);
            tokio::spawn(d.run(self.finished.subscribe(), stop.clone(), poll))
        });
        let server = axum::serve(
            self.listener,
            router(self.state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.clone().cancelled_owned());
        let drained = async {
            let served = server.await.context("HTTP server");
            // The batch and deliveries in hand finish; leases still held go back.
            for task in [worker, deliverer].into_iter().flatten() {
                let _ = task.await;
            }
            served
        };
        tokio::select! {
            result = drained => result?,
            _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "grace period over; stopping with work in hand (its leases expire)");
            }
        }
        tracing::info!("huabi stopped");
        Ok(())
    }
}

/// Reads the campaigns from the database (first importing the seed folder's campaigns the database lacks, when
/// `seed`) and the filter words (file and table), and builds the catalog messages are interpreted with.
async fn load_catalog(
    store: &dyn Store,
    settings: &Settings,
    seed: bool,
) -> anyhow::Result<Catalog> {
    let dir = &settings.campaigns.seed_dir;
    if seed && dir.is_dir() {
        let campaigns = campaign::load_dir(dir).context("reading the campaign seed folder")?;
        check_models(settings, campaigns.clone())
            .await
            .context("checking the seed campaigns' models and LoRAs")?;
        let imported = campaign::save_all(store, &campaigns, "seed", true)
            .await
            .context("importing seed campaigns")?;
        if !imported.is_empty() {
            tracing::info!(?imported, dir = %dir.display(), "campaigns imported");
        }
    } else if seed {
        tracing::warn!(dir = %dir.display(), "campaign seed folder not found; only stored campaigns are used");
    }
    let campaigns = campaign::load_stored(store)
        .await
        .context("reading campaigns")?;
    if seed {
        for campaign in campaigns.all() {
            if let Err(error) = check_models(settings, vec![campaign.clone()]).await {
                tracing::error!(campaign = %campaign.name, error = %format!("{error:#}"), "a stored campaign's model or LoRAs do not fit; its requests will fail until it is fixed");
            }
        }
    }
    let mut words = store.filter_words().await.context("reading filter_words")?;
    match filter::read_word_file(&settings.filter.words_file) {
        Ok(listed) => words.extend(listed),
        Err(e) if seed => {
            tracing::warn!(error = %e, "content filter word list not read; only filter_words applies")
        }
        Err(_) => {}
    }
    let filter = ContentFilter::new(words).context("building the content filter")?;
    let listings = store
        .follower_lists()
        .await
        .context("reading follower lists")?
        .into_iter()
        .map(|l| ((l.channel, l.account, l.user_id), l.listing == "allow"));
    Ok(Catalog::new(settings, campaigns, filter).with_listings(listings))
}

/// Checks campaigns' models and LoRAs against this node's catalogue (a model it lacks is another node's business).
async fn check_models(
    settings: &Settings,
    campaigns: Vec<campaign::Campaign>,
) -> anyhow::Result<()> {
    let models = crate::engine::ModelCatalog::new(&settings.engine);
    tokio::task::spawn_blocking(move || {
        campaigns
            .iter()
            .try_for_each(|c| c.check_models(&models, false))
    })
    .await
    .context("model check task")??;
    Ok(())
}

/// Re-reads the campaigns, filter words and follower lists every `reload_secs`, and at once when a change is
/// announced (by this node's console, or another node's through the store), until `stop`.
async fn reload_catalog(state: AppState, stop: CancellationToken) {
    let period = Duration::from_secs_f64(state.settings.campaigns.reload_secs);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
            _ = state.catalog_changed.notified() => {}
        }
        match load_catalog(&*state.store, &state.settings, false).await {
            Ok(catalog) => {
                *state.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not reload campaigns; keeping the ones in use")
            }
        }
    }
}

/// Counts the queued jobs every second (for backpressure, the fast path and the `huabi_queue_depth` gauge) until
/// `stop`.
async fn count_queue(state: AppState, stop: CancellationToken) {
    loop {
        match state.store.queued_jobs().await {
            Ok(n) => {
                state
                    .queue_depth
                    .store(n, std::sync::atomic::Ordering::Relaxed);
                metrics::gauge!("huabi_queue_depth").set(n as f64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not count the queue; backpressure uses the last count")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Bursts of admissions are announced to other nodes at most this often.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(100);

/// Announces admitted jobs to every node's workers, at most once per [`ANNOUNCE_EVERY`].
async fn announce_task(store: Arc<dyn Store>, admitted: Arc<Notify>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = admitted.notified() => {}
        }
        if let Err(e) = store.announce_jobs().await {
            tracing::warn!(error = %e, "could not announce new jobs; workers will find them on their poll tick");
        }
        tokio::time::sleep(ANNOUNCE_EVERY).await;
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
