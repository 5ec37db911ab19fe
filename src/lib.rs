//! huabi (画笔): an AI painting service for WeChat Official Accounts.
#![warn(missing_docs)]

/// The web console at /admin.
pub mod admin;
/// Builds the roles from settings and runs them until shutdown.
pub mod app;
/// Load generators and measurements behind `huabi bench`.
pub mod bench;
/// Campaigns: templates, glossary, windows.
pub mod campaign;
/// Messaging platforms: verification, decryption, parsing, replies.
pub mod channel;
/// The command line.
pub mod cli;
/// What to do about a follower's message.
pub mod command;
/// Settings from defaults, file and environment.
pub mod config;
/// Delivery of finished pictures through the platform's API and passive replies.
pub mod deliver;
/// `huabi doctor`: checks a deployment and says what to fix.
pub mod doctor;
/// Stable Diffusion on ONNX Runtime.
pub mod engine;
/// The content filter.
pub mod filter;
/// `huabi generate`: prompts to labelled picture files.
pub mod generate;
/// The HTTP surface.
pub mod http;
/// The message use case: plan and admit what followers send.
pub mod inbox;
/// Per-follower limits: the pure policy.
pub mod limits;
/// Domain types every layer shares.
pub mod model;
/// `huabi models`: the model catalogue for operators.
pub mod models_report;
/// The worker: leases batches of jobs and paints them.
pub mod queue;
/// Retention: pruning picture bytes, old messages and finished jobs.
pub mod retention;
/// A local stand-in for WeChat's API, for tests and trying huabi without an account.
pub mod standin;
/// Durable state on PostgreSQL or SQLite.
pub mod store;
/// Logging.
pub mod telemetry;
/// `huabi usage`: usage for operators.
pub mod usage;
