//! The command line: thin calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{App, shutdown_signal};
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
        /// Comma-separated roles to run: web (webhooks). worker and deliver arrive with the job queue.
        #[arg(long, value_delimiter = ',', default_value = "web")]
        roles: Vec<Role>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Paint a prompt to labelled PNG/JPEG file(s) with the configured model.
    Generate(GenerateArgs),
    /// Measurements.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `huabi generate` flags.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// What to paint.
    #[arg(long)]
    pub prompt: String,
    /// Output file: .png or .jpg/.jpeg (with --batch B: <stem>-0 … <stem>-(B-1) beside it).
    #[arg(long)]
    pub out: PathBuf,
    /// What to avoid.
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Seed of the first picture (picture i uses seed + i); random when omitted.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Width in pixels (a multiple of 8).
    #[arg(long, default_value_t = 512)]
    pub width: u32,
    /// Height in pixels (a multiple of 8).
    #[arg(long, default_value_t = 512)]
    pub height: u32,
    /// Classifier-free guidance scale (1 or less turns guidance off).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f32,
    /// Scheduler: euler, euler_a, dpmpp_2m_karras, ddim or lcm (default: the model's own, else euler).
    #[arg(long, value_parser = parse_scheduler)]
    pub scheduler: Option<SchedulerKind>,
    /// Pictures painted together in one pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Initial latents: float32 .npy of shape [1, 4, H/f, W/f] (diffusers' `latents=`).
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
}

fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse()
        .map_err(|e: crate::engine::scheduler::SchedulerError| e.to_string())
}

/// The roles a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Webhooks: receive, admit, acknowledge.
    Web,
    /// Paint queued jobs (not yet available).
    Worker,
    /// Deliver finished pictures (not yet available).
    Deliver,
}

/// `huabi bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time the engine on the configured model (HUABI__ENGINE__MODEL_DIR, HUABI__ENGINE__THREADS): median seconds
    /// per batch, images/s and per-stage time for each batch size. `scripts/bench-engine` compares it with Python.
    Engine {
        /// Picture width.
        #[arg(long, default_value_t = 64)]
        width: u32,
        /// Picture height.
        #[arg(long, default_value_t = 64)]
        height: u32,
        /// Denoising steps.
        #[arg(long, default_value_t = 4)]
        steps: usize,
        /// Comma-separated batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        batches: Vec<usize>,
        /// Timed runs per batch size (after a warm-up run).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Scheduler.
        #[arg(long, value_parser = parse_scheduler, default_value = "euler")]
        scheduler: SchedulerKind,
        /// Print JSON lines instead of a table.
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
        Command::Generate(args) => {
            let settings = load_settings()?;
            let options = GenerateOptions {
                prompt: args.prompt,
                negative: args.negative,
                out: args.out,
                steps: args.steps,
                seed: args.seed,
                width: args.width,
                height: args.height,
                guidance: args.guidance,
                scheduler: args.scheduler,
                batch: args.batch,
                init_latents: args.init_latents,
            };
            tokio::task::spawn_blocking(move || crate::generate::run(&settings.engine, &options))
                .await
                .context("generate task")??;
            Ok(())
        }
        Command::Bench(BenchCommand::Engine {
            width,
            height,
            steps,
            batches,
            runs,
            scheduler,
            json,
        }) => {
            let settings = load_settings()?;
            let options = bench::EngineBenchOptions {
                width,
                height,
                steps,
                batches,
                runs,
                scheduler,
            };
            let rows =
                tokio::task::spawn_blocking(move || bench::run_engine(&settings.engine, &options))
                    .await
                    .context("bench task")??;
            for row in rows {
                if json {
                    println!("{}", serde_json::to_string(&row)?);
                } else {
                    println!(
                        "batch {}: {:.4} s/batch, {:.4} s/image, {:.2} images/s (text {:.4} s, denoise {:.4} s, decode {:.4} s)",
                        row.batch,
                        row.seconds,
                        row.seconds_per_image,
                        row.images_per_sec,
                        row.text,
                        row.denoise,
                        row.decode
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
    }
}

fn load_settings() -> anyhow::Result<Settings> {
    let settings = Settings::load().context("loading configuration")?;
    crate::telemetry::init(&settings.log);
    Ok(settings)
}

async fn serve(roles: &[Role]) -> anyhow::Result<()> {
    let unavailable: Vec<_> = roles.iter().filter(|r| **r != Role::Web).collect();
    if !unavailable.is_empty() {
        anyhow::bail!("roles {unavailable:?} are not available in this version; use --roles web");
    }
    let settings = load_settings()?;
    tracing::debug!(?settings, "configuration");
    let app = App::build(settings).await?;
    app.run_until(shutdown_signal()).await
}
