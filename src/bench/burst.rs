//! `huabi bench burst`: a burst of messages from distinct followers at a running deployment, then — from the jobs'
//! own timelines in the database — the time from acknowledgement to delivery (p50/p95), pictures per second and the
//! batch sizes the workers used.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::channel::wechat::signature;
use crate::store::{JobTiming, Store};

/// What to send.
#[derive(Debug, Clone, clap::Args)]
pub struct BurstOptions {
    /// Webhook URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhook/wechat")]
    pub url: String,
    /// The server's WeChat Token.
    #[arg(long, env = "HUABI__WECHAT__TOKEN", hide_env_values = true)]
    pub token: String,
    /// Messages, each from its own follower.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Requests in flight at once while sending the burst.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds to wait for every picture to be delivered.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct BurstReport {
    /// Messages sent.
    pub messages: usize,
    /// Messages acknowledged with 200.
    pub acknowledged: usize,
    /// Seconds the burst took to send.
    pub send_secs: f64,
    /// Jobs delivered.
    pub delivered: usize,
    /// Median seconds from admission (ack) to delivery.
    pub p50_secs: f64,
    /// 95th percentile of the same.
    pub p95_secs: f64,
    /// Largest.
    pub max_secs: f64,
    /// Pictures delivered per second, first admission to last delivery.
    pub pictures_per_sec: f64,
    /// Jobs per batch size.
    pub batch_sizes: BTreeMap<i32, usize>,
    /// Mean batch size over jobs.
    pub mean_batch: f64,
}

impl fmt::Display for BurstReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} messages ({} acknowledged in {:.2} s), {} delivered; ack→delivery p50 {:.2} s, p95 {:.2} s, max {:.2} s; \
             {:.2} pictures/s; batch sizes (size: jobs) {:?}, mean {:.2}",
            self.messages,
            self.acknowledged,
            self.send_secs,
            self.delivered,
            self.p50_secs,
            self.p95_secs,
            self.max_secs,
            self.pictures_per_sec,
            self.batch_sizes,
            self.mean_batch
        )
    }
}

/// Sends the burst, waits for every picture, and reports from the store.
pub async fn run_burst(
    store: Arc<dyn Store>,
    options: BurstOptions,
) -> anyhow::Result<BurstReport> {
    let prefix = format!("burst-{:08x}-", rand::random::<u32>());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let gate = Arc::new(Semaphore::new(options.connections.max(1)));
    let started = Instant::now();
    let mut sends = Vec::with_capacity(options.messages);
    for n in 0..options.messages {
        let (client, gate, url, token) = (
            client.clone(),
            gate.clone(),
            options.url.clone(),
            options.token.clone(),
        );
        let user = format!("{prefix}{n}");
        sends.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
            let nonce = n.to_string();
            let sig = signature::sign(&[&token, &timestamp, &nonce]);
            let body = format!(
                "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{timestamp}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[月亮和桂花 {n}]]></Content><MsgId>{}</MsgId></xml>",
                700_000_000 + n
            );
            let resp = client
                .post(&url)
                .query(&[("signature", sig.as_str()), ("timestamp", &timestamp), ("nonce", &nonce)])
                .body(body)
                .send()
                .await
                .ok()?;
            resp.status().is_success().then_some(())
        }));
    }
    let mut acknowledged = 0;
    for send in sends {
        if matches!(send.await, Ok(Some(()))) {
            acknowledged += 1;
        }
    }
    let send_secs = started.elapsed().as_secs_f64();
    let deadline = started + Duration::from_secs_f64(options.timeout);
    let timings = loop {
        let timings = store.job_timings(&prefix).await?;
        let open = timings
            .iter()
            .filter(|t| t.status != "delivered" && t.status != "failed")
            .count();
        if (timings.len() >= acknowledged && open == 0) || Instant::now() > deadline {
            break timings;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Ok(report(options.messages, acknowledged, send_secs, &timings))
}

/// Summarises the jobs' timelines.
pub fn report(
    messages: usize,
    acknowledged: usize,
    send_secs: f64,
    timings: &[JobTiming],
) -> BurstReport {
    let mut waits: Vec<f64> = timings
        .iter()
        .filter_map(|t| t.delivered_s.map(|d| d - t.created_s))
        .collect();
    waits.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        if waits.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * waits.len() as f64).ceil() as usize).clamp(1, waits.len());
        waits[rank - 1]
    };
    let first = timings
        .iter()
        .map(|t| t.created_s)
        .fold(f64::INFINITY, f64::min);
    let last = timings
        .iter()
        .filter_map(|t| t.delivered_s)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut batch_sizes = BTreeMap::new();
    for size in timings.iter().filter_map(|t| t.batch_size) {
        *batch_sizes.entry(size).or_insert(0) += 1;
    }
    let batched: usize = batch_sizes.values().sum();
    let mean_batch = batch_sizes
        .iter()
        .map(|(size, jobs)| *size as f64 * *jobs as f64)
        .sum::<f64>()
        / batched.max(1) as f64;
    BurstReport {
        messages,
        acknowledged,
        send_secs,
        delivered: waits.len(),
        p50_secs: percentile(0.50),
        p95_secs: percentile(0.95),
        max_secs: waits.last().copied().unwrap_or(f64::NAN),
        pictures_per_sec: waits.len() as f64 / (last - first).max(1e-9),
        batch_sizes,
        mean_batch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_reads_percentiles_rate_and_batches_from_timelines() {
        let timings: Vec<JobTiming> = (0..10)
            .map(|i| JobTiming {
                status: crate::model::JobStatus::Delivered,
                created_s: 100.0,
                delivered_s: Some(100.0 + (i + 1) as f64),
                batch_size: Some(if i < 8 { 4 } else { 2 }),
            })
            .collect();
        let r = report(10, 10, 0.5, &timings);
        assert_eq!(
            (r.delivered, r.p50_secs, r.p95_secs, r.max_secs),
            (10, 5.0, 10.0, 10.0)
        );
        assert_eq!(r.pictures_per_sec, 1.0);
        assert_eq!(r.batch_sizes, BTreeMap::from([(2, 2), (4, 8)]));
        assert!((r.mean_batch - 3.6).abs() < 1e-9);
        let empty = report(3, 0, 0.1, &[]);
        assert_eq!(empty.delivered, 0);
        assert!(empty.p50_secs.is_nan());
    }
}
