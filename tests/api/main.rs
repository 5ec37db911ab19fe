//! Integration tests: one binary (one link) for all of them.

mod helpers;
mod store_contract;
mod webhook;
