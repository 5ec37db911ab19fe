//! Logging setup, and the log-and-count of events more than one role reports.

use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Installs the global `tracing` subscriber; `RUST_LOG` overrides the configured filter.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout carries what commands print (JSON reports, file names).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = if settings.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Counts (`huabi_late_results_total{role}`) and logs a result refused because the lease it was made under was taken
/// over meanwhile: its holder was paused, cut off or slow past the lease, and another node did the work.
pub fn late_result(role: &'static str, job: i64, attempt: i32) {
    metrics::counter!("huabi_late_results_total", "role" => role).increment(1);
    tracing::warn!(
        role,
        job,
        attempt,
        "late result discarded: the lease was taken over meanwhile"
    );
}
