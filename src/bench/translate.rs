//! `huabi bench translate`: how long translating one prompt takes, as the worker does it (the prompt's stretches of
//! Chinese decoded together, no cache), beside the same words decoded as one sequence (what a translation call per
//! message does). Random-weight models never stop on their own, so every stretch decodes as many tokens as its
//! source has (about what a real zh→en translation produces), the end forced after them.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::engine::EngineConfig;
use crate::engine::translate::{TranslateConfig, Translator};

/// A 30-character prompt in three clauses.
pub const DEFAULT_PROMPT: &str = "中秋节的夜晚，一家人在院子里赏月，桌上摆着月饼和桂花酒";

/// What `huabi bench translate` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct TranslateBenchOptions {
    /// The translation model (default: HUABI__TRANSLATE__MODEL_DIR).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// The prompt.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Timed runs (after two warm-up runs).
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
}

/// The figures of one way of translating.
#[derive(Debug, Clone, Serialize)]
pub struct TranslateBenchRow {
    /// `stretches` (huabi) or `whole` (the prompt as one sequence).
    pub variant: &'static str,
    /// Sequences decoded together.
    pub rows: usize,
    /// Tokens generated in all.
    pub tokens: usize,
    /// Median milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Times both variants, alternating run by run.
pub fn run(
    engine: &EngineConfig,
    translate: &TranslateConfig,
    options: &TranslateBenchOptions,
) -> anyhow::Result<Vec<TranslateBenchRow>> {
    let dir = options
        .model_dir
        .clone()
        .unwrap_or_else(|| translate.model_dir.clone());
    anyhow::ensure!(
        !dir.as_os_str().is_empty(),
        "give --model-dir or set HUABI__TRANSLATE__MODEL_DIR"
    );
    let config = TranslateConfig {
        cache_entries: 0,
        ..translate.clone()
    };
    let translator = Translator::open_dir(engine, &dir, config)
        .with_context(|| format!("opening {}", dir.display()))?;
    let stretches = translator.stretches(&options.prompt);
    anyhow::ensure!(!stretches.is_empty(), "the prompt has no Chinese");
    let whole: String = stretches.concat();
    let source_tokens = |text: &str| {
        translator
            .source_tokens(text)
            .map(|n| n.saturating_sub(1).max(1))
    };
    let stretch_tokens = stretches
        .iter()
        .map(|s| source_tokens(s))
        .collect::<Result<Vec<_>, _>>()?;
    let whole_tokens: usize = stretch_tokens.iter().sum();
    let mut times = [Vec::new(), Vec::new()];
    for run in 0..options.runs.max(1) + 2 {
        translator.fix_length(Some(*stretch_tokens.iter().max().unwrap_or(&1)));
        let started = Instant::now();
        translator.translate(&options.prompt)?;
        let stretches_ms = started.elapsed().as_secs_f64() * 1000.0;
        translator.fix_length(Some(whole_tokens));
        let started = Instant::now();
        translator.translate_batch(&[whole.as_str()], usize::MAX)?;
        let whole_ms = started.elapsed().as_secs_f64() * 1000.0;
        if run >= 2 {
            times[0].push(stretches_ms);
            times[1].push(whole_ms);
        }
    }
    let row = |variant, rows, tokens, mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        TranslateBenchRow {
            variant,
            rows,
            tokens,
            p50_ms: percentile(&t, 50.0),
            p95_ms: percentile(&t, 95.0),
        }
    };
    let [stretched, whole_times] = times;
    Ok(vec![
        row(
            "stretches",
            stretches.len(),
            stretch_tokens.iter().max().unwrap_or(&1) * stretches.len(),
            stretched,
        ),
        row("whole", 1, whole_tokens, whole_times),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 95.0), 19.0);
        assert_eq!(percentile(&[], 95.0), 0.0);
    }
}
