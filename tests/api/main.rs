//! Integration tests: one binary (one link) for all of them.

mod engine;
mod failover;
mod helpers;
mod hostile;
mod interop;
mod queue_contract;
mod store_contract;
mod two_nodes;
mod webhook;
mod worker;
