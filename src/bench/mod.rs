//! `huabi bench ack`: a load generator for the webhook's acknowledgement path. Sends signed plaintext text
//! messages with distinct MsgIds and reports acknowledgements per second and latency percentiles.
//! `huabi bench engine` times the engine; `huabi bench burst` ([`burst`]) times message-to-delivery;
//! `huabi bench translate` ([`translate`]) times translation.

pub mod burst;
pub mod translate;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

use crate::channel::wechat::signature;

/// What to send.
#[derive(Debug, Clone)]
pub struct AckBenchOptions {
    /// Webhook URL.
    pub url: String,
    /// The server's Token.
    pub token: String,
    /// Messages per second (open loop), or `None` for back-to-back clients.
    pub rate: Option<f64>,
    /// Clients (closed loop) or the in-flight cap (open loop).
    pub connections: usize,
    /// How long to send.
    pub duration: Duration,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct AckReport {
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Requests answered 200.
    pub acknowledged: u64,
    /// Requests answered otherwise or failed.
    pub errors: u64,
    /// Seconds from the first send to the last answer.
    pub elapsed_secs: f64,
    /// Acknowledgements per second.
    pub per_sec: f64,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: f64,
    /// Largest latency in milliseconds.
    pub max_ms: f64,
}

impl fmt::Display for AckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} loop: {} acknowledged, {} errors in {:.1} s = {:.0} msg/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.mode,
            self.acknowledged,
            self.errors,
            self.elapsed_secs,
            self.per_sec,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

struct Shared {
    client: reqwest::Client,
    options: AckBenchOptions,
    run_id: u64,
    counter: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

impl Shared {
    /// Sends message number `n`; returns whether it was acknowledged.
    async fn send(&self, n: u64) -> bool {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let nonce = n.to_string();
        let sig = signature::sign(&[&self.options.token, &timestamp, &nonce]);
        let body = format!(
            "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[bench-{}]]></FromUserName><CreateTime>{timestamp}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[bench prompt {n}]]></Content><MsgId>{}{n:09}</MsgId></xml>",
            n % 1000,
            self.run_id
        );
        let result = self
            .client
            .post(&self.options.url)
            .query(&[
                ("signature", sig.as_str()),
                ("timestamp", &timestamp),
                ("nonce", &nonce),
            ])
            .body(body)
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => resp.bytes().await.is_ok(),
            _ => false,
        }
    }
}

/// Runs the load and measures.
pub async fn run_ack(options: AckBenchOptions) -> anyhow::Result<AckReport> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.connections.max(1) * 2)
        .timeout(Duration::from_secs(10))
        .build()
        .context("HTTP client")?;
    let shared = Arc::new(Shared {
        client,
        run_id: rand::random::<u32>() as u64 + 1,
        options: options.clone(),
        counter: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
    });
    let start = Instant::now();
    let deadline = start + options.duration;
    let mode = match options.rate {
        None => {
            closed_loop(&shared, deadline).await;
            "closed"
        }
        Some(rate) => {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
            open_loop(&shared, rate, deadline).await;
            "open"
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    let mut latencies = std::mem::take(&mut *shared.latencies_us.lock().await);
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    let acknowledged = latencies.len() as u64;
    Ok(AckReport {
        mode,
        acknowledged,
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed_secs: elapsed,
        per_sec: acknowledged as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    })
}

async fn record(shared: &Shared, sent_at: Instant, ok: bool) {
    if ok {
        shared
            .latencies_us
            .lock()
            .await
            .push(sent_at.elapsed().as_micros() as u64);
    } else {
        shared.errors.fetch_add(1, Ordering::Relaxed);
    }
}

async fn closed_loop(shared: &Arc<Shared>, deadline: Instant) {
    let mut clients = Vec::new();
    for _ in 0..shared.options.connections.max(1) {
        let shared = shared.clone();
        clients.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = shared.counter.fetch_add(1, Ordering::Relaxed);
                let sent_at = Instant::now();
                let ok = shared.send(n).await;
                record(&shared, sent_at, ok).await;
            }
        }));
    }
    for client in clients {
        let _ = client.await;
    }
}

/// Sends at a fixed rate regardless of answers; latency counts from the scheduled time, so a stall shows up
/// in the percentiles instead of silently lowering the rate.
async fn open_loop(shared: &Arc<Shared>, rate: f64, deadline: Instant) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let in_flight = Arc::new(Semaphore::new(shared.options.connections.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let scheduled = start + interval.mul_f64(n as f64);
        if scheduled >= deadline {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            let ok = shared.send(n).await;
            record(&shared, scheduled, ok).await;
            drop(permit);
        });
        n += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// What `huabi bench engine` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineBenchOptions {
    /// Picture width.
    #[arg(long, default_value_t = 64)]
    pub width: u32,
    /// Picture height.
    #[arg(long, default_value_t = 64)]
    pub height: u32,
    /// Denoising steps.
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Comma-separated batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub batches: Vec<usize>,
    /// Timed runs per batch size (after a warm-up run).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Scheduler.
    #[arg(long, value_parser = crate::cli::parse_scheduler, default_value = "euler")]
    pub scheduler: crate::engine::SchedulerKind,
    /// The model (default: HUABI__ENGINE__MODEL).
    #[arg(long)]
    pub model: Option<String>,
    /// LoRAs (NAME_OR_PATH[:SCALE], repeatable): the model with them merged is timed beside the plain model, the
    /// two alternating run by run.
    #[arg(long = "lora", value_parser = crate::generate::parse_lora)]
    pub loras: Vec<crate::model::LoraChoice>,
}

/// What opening one pipeline took.
#[derive(Debug, Clone, Serialize)]
pub struct EngineLoadRow {
    /// `plain` or `lora`.
    pub variant: &'static str,
    /// Seconds creating sessions.
    pub load_secs: f64,
    /// Seconds reading LoRAs and merging them into the weights.
    pub merge_secs: f64,
    /// Layers the LoRAs changed.
    pub merged_layers: usize,
    /// Resident memory the process gained, in MiB.
    pub rss_added_mb: f64,
}

/// One batch size's figures (medians over the runs).
#[derive(Debug, Clone, Serialize)]
pub struct EngineBenchRow {
    /// `plain`, or `lora` for the model with the LoRAs merged.
    pub variant: &'static str,
    /// Items per batch.
    pub batch: usize,
    /// Median seconds per batch.
    pub seconds: f64,
    /// Median seconds per image.
    pub seconds_per_image: f64,
    /// Images per second.
    pub images_per_sec: f64,
    /// Median text-encoding seconds.
    pub text: f64,
    /// Median denoising seconds.
    pub denoise: f64,
    /// Median decoding seconds.
    pub decode: f64,
    /// Median seconds of the safety check (0 when the model's pictures are not checked).
    pub safety: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// This process's resident memory in MiB (0 when `/proc` cannot be read).
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Opens the model (and, with LoRAs, the model with them merged) and times whole batches of each (text, denoise
/// and decode; no encoding), the variants alternating run by run.
pub fn run_engine(
    config: &crate::engine::EngineConfig,
    options: &EngineBenchOptions,
) -> anyhow::Result<(Vec<EngineLoadRow>, Vec<EngineBenchRow>)> {
    use crate::engine::{Batch, BatchKey, Engine, Item};
    let mut engine = Engine::new(config)?;
    let model = options
        .model
        .clone()
        .unwrap_or_else(|| engine.catalog().default_model().to_string());
    let mut variants = vec![("plain", Vec::new())];
    if !options.loras.is_empty() {
        variants.push(("lora", options.loras.clone()));
    }
    let mut loads = Vec::new();
    for (variant, loras) in &variants {
        let before = rss_mb();
        let report = engine.open(&model, loras)?;
        loads.push(EngineLoadRow {
            variant,
            load_secs: report.load_secs,
            merge_secs: report.merge_secs,
            merged_layers: report.merged_layers,
            rss_added_mb: rss_mb() - before,
        });
    }
    let mut rows = Vec::new();
    for &b in &options.batches {
        let batches: Vec<(&'static str, Batch)> = variants
            .iter()
            .map(|(variant, loras)| {
                let batch = Batch {
                    key: BatchKey {
                        model: model.clone(),
                        loras: loras.clone(),
                        width: options.width,
                        height: options.height,
                        steps: options.steps,
                        scheduler: options.scheduler,
                        strength: None,
                    },
                    items: (0..b)
                        .map(|i| Item {
                            prompt: "a photo of the moon, mid-autumn festival".into(),
                            negative_prompt: String::new(),
                            seed: i as u64,
                            guidance: 7.5,
                            init_latents: None,
                            init_image: None,
                        })
                        .collect(),
                };
                (*variant, batch)
            })
            .collect();
        let mut times: Vec<[Vec<f64>; 5]> = vec![Default::default(); batches.len()];
        for (_, batch) in &batches {
            engine.generate(batch, &mut |_| {})?;
        }
        for _ in 0..options.runs.max(1) {
            for ((_, batch), t) in batches.iter().zip(&mut times) {
                let timings = engine.generate(batch, &mut |_| {})?.timings;
                t[0].push(timings.total.as_secs_f64());
                t[1].push(timings.text.as_secs_f64());
                t[2].push(timings.denoise.as_secs_f64());
                t[3].push(timings.decode.as_secs_f64());
                t[4].push(timings.safety.as_secs_f64());
            }
        }
        for ((variant, _), [total, text, denoise, decode, safety]) in batches.iter().zip(times) {
            let seconds = median(total);
            rows.push(EngineBenchRow {
                variant,
                batch: b,
                seconds,
                seconds_per_image: seconds / b as f64,
                images_per_sec: b as f64 / seconds,
                text: median(text),
                denoise: median(denoise),
                decode: median(decode),
                safety: median(safety),
            });
        }
    }
    Ok((loads, rows))
}
