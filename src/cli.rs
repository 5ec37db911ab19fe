//! The command line: thin calls into the library.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{App, Role, shutdown_signal};
use crate::bench::{self, AckBenchOptions};
use crate::config::Settings;
use crate::engine::SchedulerKind;
use crate::generate::GenerateOptions;
use crate::store;

/// huabi (画笔): AI painting for WeChat Official Accounts.
#[derive(Debug, Parser)]
#[command(name = "huabi", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node: migrate the database, then serve until SIGTERM or ctrl-c.
    Serve {
        /// Comma-separated roles: web (webhooks), worker (paints queued jobs), deliver (sends finished pictures).
        #[arg(long, value_delimiter = ',', default_value = "web,worker,deliver")]
        roles: Vec<Role>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Paint a prompt to labelled PNG/JPEG file(s) with the configured model.
    Generate(GenerateOptions),
    /// Measurements.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Usage per day (Asia/Shanghai), campaign, platform and account, from the `usage_daily` view (or summed
    /// `--by channel|account`).
    Usage {
        /// `Nd` for the last N days including today, or a first day `YYYY-MM-DD`.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: crate::usage::UsageFormat,
        /// Rows per campaign (and platform and account), or summed per platform or per account.
        #[arg(long, value_enum, default_value = "campaign")]
        by: crate::usage::UsageBy,
    },
    /// Campaigns in the database: import TOML definitions (each change kept as a revision), export, list.
    #[command(subcommand)]
    Campaign(CampaignCommand),
    /// The web console's users.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The model catalogue: models (architecture, precision, sizes, whether they load), LoRAs (format, rank,
    /// layers, the models they fit) and the campaigns that use each.
    Models {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: crate::models_report::ModelsFormat,
        /// Only read the files; do not open each model's sessions to see that it loads.
        #[arg(long)]
        no_load: bool,
    },
    /// Run a local stand-in for a platform's API (WeChat: point HUABI__WECHAT__API_BASE at it; Telegram: an
    /// account's api_base) to try huabi without an account.
    Standin(StandinOptions),
    /// Telegram bots.
    #[command(subcommand)]
    Telegram(TelegramCommand),
    /// Check this deployment: the database reachable and migrated, clock skew, ONNX Runtime and each model loading,
    /// each account's credentials accepted by its platform; says what to fix, exits 1 when something is broken.
    Doctor {
        /// Only read the model files; do not open each model's sessions.
        #[arg(long)]
        no_load: bool,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// `huabi telegram …`.
#[derive(Debug, Subcommand)]
pub enum TelegramCommand {
    /// Points the bot's webhook at huabi (`setWebhook` with the account's secret token).
    SetWebhook {
        /// The account (`[[channels.telegram]]` name).
        #[arg(long)]
        account: String,
        /// The public HTTPS address of `/webhook/telegram/{account}`.
        #[arg(long)]
        url: String,
    },
}

/// The platforms `huabi standin` can stand in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StandinPlatform {
    /// WeChat's API.
    Wechat,
    /// Telegram's Bot API.
    Telegram,
    /// WeCom's API (`--app-id` is the CorpID, `--app-secret` the app's Secret).
    Wecom,
}

/// `huabi campaign …`.
#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Store campaign definitions: a `.toml` file or a folder of them (default: the configured seed folder).
    Import {
        /// File or folder.
        path: Option<std::path::PathBuf>,
        /// Who makes the change (recorded in the revision).
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
        /// Store campaigns whose model this machine's catalogue lacks (their LoRAs are then checked where they
        /// are painted, not here).
        #[arg(long)]
        skip_model_check: bool,
    },
    /// Write every stored campaign as `<name>.toml` into a folder.
    Export {
        /// Folder to write into.
        #[arg(long, default_value = "campaigns-export")]
        out: std::path::PathBuf,
    },
    /// List the stored campaigns: name, keywords, window, state now, revisions.
    List,
}

/// `huabi admin …`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Creates a console user or changes one (role, password); the console at /admin opens with the first user.
    /// The password is asked for on the terminal, or read from HUABI_ADMIN_PASSWORD.
    AddUser {
        /// Login name.
        name: String,
        /// admin (manages users), editor (changes campaigns and words) or viewer (reads).
        #[arg(long, default_value = "admin")]
        role: String,
    },
}

/// `huabi standin`.
#[derive(Debug, clap::Args)]
pub struct StandinOptions {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
    /// Which platform's API.
    #[arg(long, value_enum, default_value = "wechat")]
    platform: StandinPlatform,
    /// WeChat: the AppID it accepts.
    #[arg(long, env = "HUABI__WECHAT__APP_ID", default_value = "")]
    app_id: String,
    /// WeChat: the AppSecret it accepts.
    #[arg(
        long,
        env = "HUABI__WECHAT__APP_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    app_secret: String,
    /// WeCom: the AgentId `message/send` must name.
    #[arg(long, default_value = "")]
    agent_id: String,
    /// Telegram: the bot token it accepts.
    #[arg(long, default_value = "")]
    bot_token: String,
    /// Telegram: chats that blocked the bot (403), comma-separated.
    #[arg(long, value_delimiter = ',')]
    blocked_chats: Vec<String>,
    /// Share of calls (0-1) that fail (WeChat: with one of --faults; Telegram: 429 or 500).
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// Faults to inject.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "busy,rate-limit,token,timeout"
    )]
    faults: Vec<crate::standin::Fault>,
    /// Seconds a timeout fault stalls.
    #[arg(long, default_value_t = 15.0)]
    stall_secs: f64,
    /// Behave like an unverified account (48001 on temporary uploads and customer-service sends).
    #[arg(long)]
    passive_only: bool,
    /// Write every picture sent into this folder.
    #[arg(long)]
    save_dir: Option<std::path::PathBuf>,
}

/// Parses a scheduler name for clap.
pub fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse()
        .map_err(|e: crate::engine::scheduler::SchedulerError| e.to_string())
}

/// `huabi bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time the engine on a model (default HUABI__ENGINE__MODEL; HUABI__ENGINE__THREADS): median seconds per
    /// batch, images/s and per-stage time for each batch size; with `--lora`, the LoRA'd pipeline beside the plain
    /// one, and what opening and merging took. `scripts/bench-engine` compares it with Python.
    Engine {
        /// What to measure.
        #[command(flatten)]
        options: bench::EngineBenchOptions,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Time translating one prompt (default: 30 Chinese characters in three clauses) with the model in
    /// HUABI__TRANSLATE__MODEL_DIR or `--model-dir`: huabi's way (the clauses decoded together) beside the prompt
    /// decoded as one sequence; p50 and p95 in milliseconds.
    Translate {
        /// What to measure.
        #[command(flatten)]
        options: bench::translate::TranslateBenchOptions,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send a burst of messages from distinct followers to a running deployment (database: HUABI__DATABASE__URL),
    /// wait for every picture, and report ack→delivery p50/p95, pictures/s and batch sizes from the jobs' timelines.
    Burst {
        /// What to send.
        #[command(flatten)]
        options: bench::burst::BurstOptions,
        /// Print JSON instead of a line of text.
        #[arg(long)]
        json: bool,
    },
    /// Load a running `huabi serve` with signed plaintext text messages (distinct MsgIds) and report
    /// acknowledgements per second and latency percentiles.
    Ack {
        /// Webhook URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/webhook/wechat")]
        url: String,
        /// The server's WeChat Token.
        #[arg(long, env = "HUABI__WECHAT__TOKEN", hide_env_values = true)]
        token: String,
        /// Messages per second (open loop, latency measured from the scheduled send time);
        /// without it, `--connections` clients send back to back (closed loop, maximum rate).
        #[arg(long)]
        rate: Option<f64>,
        /// Concurrent connections (closed loop) or the most requests in flight (open loop).
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the CLI and maps failures to an exit code.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { roles } => serve(&roles).await,
        Command::Migrate => {
            let settings = load_settings()?;
            let store = store::connect(&settings.database).await?;
            store.migrate().await?;
            println!("migrations applied ({})", store.backend());
            Ok(())
        }
        Command::Generate(options) => {
            let settings = load_settings()?;
            tokio::task::spawn_blocking(move || crate::generate::run(&settings.engine, &options))
                .await
                .context("generate task")??;
            Ok(())
        }
        Command::Bench(BenchCommand::Engine { options, json }) => {
            let settings = load_settings()?;
            let steps = options.steps.max(1) as f64;
            let (loads, rows) =
                tokio::task::spawn_blocking(move || bench::run_engine(&settings.engine, &options))
                    .await
                    .context("bench task")??;
            for load in loads {
                if json {
                    println!("{}", serde_json::to_string(&load)?);
                } else {
                    println!(
                        "{}: sessions opened in {:.2} s, LoRAs merged in {:.2} s ({} layers), +{:.0} MiB resident",
                        load.variant,
                        load.load_secs,
                        load.merge_secs,
                        load.merged_layers,
                        load.rss_added_mb
                    );
                }
            }
            for row in rows {
                if json {
                    println!("{}", serde_json::to_string(&row)?);
                } else {
                    println!(
                        "{} batch {}: {:.4} s/batch, {:.4} s/image, {:.2} images/s (text {:.4} s, denoise {:.4} s = {:.4} s/step, decode {:.4} s, safety check {:.4} s = {:.1} % of the batch)",
                        row.variant,
                        row.batch,
                        row.seconds,
                        row.seconds_per_image,
                        row.images_per_sec,
                        row.text,
                        row.denoise,
                        row.denoise / steps,
                        row.decode,
                        row.safety,
                        100.0 * row.safety / row.seconds.max(f64::MIN_POSITIVE)
                    );
                }
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Translate { options, json }) => {
            let settings = load_settings()?;
            let rows = tokio::task::spawn_blocking(move || {
                bench::translate::run(&settings.engine, &settings.translate, &options)
            })
            .await
            .context("bench task")??;
            for row in rows {
                if json {
                    println!("{}", serde_json::to_string(&row)?);
                } else {
                    println!(
                        "{}: {} sequence(s), {} tokens: p50 {:.1} ms, p95 {:.1} ms",
                        row.variant, row.rows, row.tokens, row.p50_ms, row.p95_ms
                    );
                }
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Ack {
            url,
            token,
            rate,
            connections,
            duration,
            json,
        }) => {
            let report = bench::run_ack(AckBenchOptions {
                url,
                token,
                rate,
                connections,
                duration: Duration::from_secs_f64(duration),
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Burst { options, json }) => {
            let settings = load_settings()?;
            let store = store::connect(&settings.database).await?;
            let report = bench::burst::run_burst(store, options).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
        Command::Standin(options) => standin(options).await,
        Command::Telegram(TelegramCommand::SetWebhook { account, url }) => {
            let settings = load_settings()?;
            let bot = settings
                .channels
                .telegram
                .iter()
                .find(|a| a.name == account)
                .with_context(|| format!("no Telegram account named {account:?} is configured"))?;
            anyhow::ensure!(
                !secrecy::ExposeSecret::expose_secret(&bot.secret_token).is_empty(),
                "the account has no secret_token: set HUABI__CHANNELS__TELEGRAM__{}__SECRET_TOKEN",
                account.to_uppercase()
            );
            let api = crate::channel::telegram::api::TelegramApi::new(
                &bot.api_base,
                bot.bot_token.clone(),
                Duration::from_secs(30),
            );
            api.set_webhook(
                &url,
                secrecy::ExposeSecret::expose_secret(&bot.secret_token),
            )
            .await?;
            println!("webhook of {account} set to {url}");
            Ok(())
        }
        Command::Admin(AdminCommand::AddUser { name, role }) => add_user(&name, &role).await,
        Command::Models { format, no_load } => {
            let settings = load_settings()?;
            let campaigns = match store::connect(&settings.database).await {
                Ok(store) => match store.migrate().await {
                    Ok(()) => crate::campaign::load_stored(&*store)
                        .await
                        .map(|c| c.all().to_vec())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            let engine = settings.engine.clone();
            let report = tokio::task::spawn_blocking(move || {
                crate::models_report::report(&engine, campaigns, !no_load)
            })
            .await
            .context("models task")?;
            print!("{}", crate::models_report::render(&report, format));
            Ok(())
        }
        Command::Doctor { no_load, json } => {
            let settings = load_settings()?;
            let checks = crate::doctor::run(&settings, !no_load).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", crate::doctor::render(&checks));
            }
            let broken = checks
                .iter()
                .filter(|c| c.verdict == crate::doctor::Verdict::Fail)
                .count();
            if broken > 0 {
                anyhow::bail!("{broken} check(s) failed");
            }
            Ok(())
        }
        Command::Campaign(command) => campaign(command).await,
        Command::Usage { since, format, by } => {
            let settings = load_settings()?;
            let today = crate::limits::shanghai_day(time::OffsetDateTime::now_utc());
            let first = crate::usage::first_day(&since, today)?;
            let store = store::connect(&settings.database).await?;
            store.migrate().await?;
            let first = first.to_string();
            let waits = match by {
                crate::usage::UsageBy::Campaign => Vec::new(),
                _ => store.delivery_waits(&first).await?,
            };
            let rows = crate::usage::group(store.usage(&first).await?, &waits, by);
            print!("{}", crate::usage::render(&rows, format));
            if format == crate::usage::UsageFormat::Table {
                print!(
                    "{}",
                    crate::usage::render_queue(&store.queue_by_model().await?)
                );
            }
            Ok(())
        }
    }
}

async fn campaign(command: CampaignCommand) -> anyhow::Result<()> {
    use crate::campaign::{self, Window};
    let settings = load_settings()?;
    let store = store::connect(&settings.database).await?;
    store.migrate().await?;
    match command {
        CampaignCommand::Import {
            path,
            by,
            skip_model_check,
        } => {
            let path = path.unwrap_or(settings.campaigns.seed_dir);
            let campaigns = if path.is_dir() {
                campaign::load_dir(&path)?
            } else {
                vec![campaign::load_file(&path)?]
            };
            let models = crate::engine::ModelCatalog::new(&settings.engine);
            let checked = campaigns.clone();
            tokio::task::spawn_blocking(move || {
                checked
                    .iter()
                    .try_for_each(|c| c.check_models(&models, !skip_model_check))
            })
            .await
            .context("model check task")??;
            let changed = campaign::save_all(&*store, &campaigns, &by, false).await?;
            for c in &campaigns {
                let state = if changed.contains(&c.name) {
                    "stored"
                } else {
                    "unchanged"
                };
                println!("{}: {state}", c.name);
            }
        }
        CampaignCommand::Export { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for c in campaign::load_stored(&*store).await?.all() {
                let file = out.join(format!("{}.toml", c.name));
                std::fs::write(&file, c.to_toml())
                    .with_context(|| format!("writing {}", file.display()))?;
                println!("{}", file.display());
            }
        }
        CampaignCommand::List => {
            let now = time::OffsetDateTime::now_utc();
            for c in campaign::load_stored(&*store).await?.all() {
                let state = match c.window(now) {
                    Window::NotStarted => "not started",
                    Window::Open => "running",
                    Window::Ended => "ended",
                };
                let revisions = store.campaign_revisions(&c.name).await?;
                let last = revisions.last().map_or(String::new(), |r| {
                    format!(", last changed by {} at {}", r.changed_by, r.changed_at)
                });
                println!(
                    "{}\t{}\tkeywords {}\t{} → {}\t{state}\t{} revision(s){last}",
                    c.name,
                    c.title,
                    c.keywords.join("/"),
                    c.starts_at,
                    c.ends_at,
                    revisions.len()
                );
            }
        }
    }
    Ok(())
}

async fn add_user(name: &str, role: &str) -> anyhow::Result<()> {
    use crate::admin::auth;
    use std::io::IsTerminal;
    let settings = load_settings()?;
    auth::check_user_name(name).map_err(anyhow::Error::msg)?;
    let role: auth::Role = role.parse().map_err(anyhow::Error::msg)?;
    let password = match std::env::var("HUABI_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => p,
        _ if std::io::stdin().is_terminal() => {
            let first = rpassword::prompt_password(format!("password for {name}: "))?;
            let again = rpassword::prompt_password("again: ")?;
            anyhow::ensure!(first == again, "the two passwords differ");
            first
        }
        _ => anyhow::bail!("no terminal to ask for the password: set HUABI_ADMIN_PASSWORD"),
    };
    auth::check_new_password(&password).map_err(anyhow::Error::msg)?;
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .context("hashing task")?
        .map_err(anyhow::Error::msg)?;
    let store = store::connect(&settings.database).await?;
    store.migrate().await?;
    let before = store.admin_user(name).await?;
    store
        .save_admin_user(name, role.as_str(), Some(&hash), false)
        .await?;
    let after = format!("role={} disabled=false password=changed", role.as_str());
    let before = before.map(|u| format!("role={} disabled={}", u.role, u.disabled));
    store
        .audit(&crate::store::admin::NewAudit {
            actor: "cli",
            action: "user.save",
            target: name,
            before: before.as_deref(),
            after: Some(&after),
        })
        .await?;
    println!(
        "{name} saved ({}); the console is at /admin on every node",
        role.as_str()
    );
    Ok(())
}

async fn standin(o: StandinOptions) -> anyhow::Result<()> {
    load_settings()?; // for the log settings
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("binding {}", o.listen))?;
    if o.platform == StandinPlatform::Telegram {
        anyhow::ensure!(!o.bot_token.is_empty(), "--bot-token is required");
        let stand_in = crate::standin::telegram::TelegramStandIn::new(
            crate::standin::telegram::TelegramOptions {
                bot_token: o.bot_token,
                fault_rate: o.fault_rate,
                retry_after_secs: 1,
                blocked_chats: o.blocked_chats,
                seed: 1,
            },
        );
        tracing::info!(listen = %o.listen, "Telegram Bot API stand-in serving; GET /_standin/record shows what it received");
        tokio::select! {
            served = stand_in.serve(listener) => served.context("stand-in server")?,
            _ = shutdown_signal() => {}
        }
        return Ok(());
    }
    anyhow::ensure!(
        !o.app_id.is_empty() && !o.app_secret.is_empty(),
        "--app-id and --app-secret (or HUABI__WECHAT__APP_ID / APP_SECRET) are required"
    );
    anyhow::ensure!(
        o.platform == StandinPlatform::Wechat || !o.agent_id.is_empty(),
        "--agent-id is required for WeCom"
    );
    if let Some(dir) = &o.save_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let stand_in = crate::standin::StandIn::new(crate::standin::StandInOptions {
        app_id: o.app_id,
        secret: o.app_secret,
        fault_rate: o.fault_rate,
        faults: o.faults,
        stall: Duration::from_secs_f64(o.stall_secs),
        passive_only: o.passive_only,
        save_dir: o.save_dir,
        wecom_agent_id: (o.platform == StandinPlatform::Wecom).then_some(o.agent_id),
        ..Default::default()
    });
    tracing::info!(listen = %o.listen, platform = ?o.platform, "WeChat/WeCom API stand-in serving; GET /_standin/record shows what it received");
    tokio::select! {
        served = stand_in.serve(listener) => served.context("stand-in server")?,
        _ = shutdown_signal() => {}
    }
    Ok(())
}

fn load_settings() -> anyhow::Result<Settings> {
    let settings = Settings::load().context("loading configuration")?;
    crate::telemetry::init(&settings.log);
    Ok(settings)
}

async fn serve(roles: &[Role]) -> anyhow::Result<()> {
    let settings = load_settings()?;
    tracing::debug!(?settings, "configuration");
    let app = App::build(settings, roles).await?;
    app.run_until(shutdown_signal()).await
}
