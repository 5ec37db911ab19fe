//! Integration tests: one binary (one link) for all of them.

/// Runs each named `async fn(Backend)` as two tests, `postgres::name` and `sqlite::name`.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(crate::helpers::Backend::Postgres).await })*
        }
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(crate::helpers::Backend::Sqlite).await })*
        }
    };
}

mod accounts;
mod admin;
mod admin_store;
mod browser;
mod campaigns;
mod delivery;
mod delivery_contract;
mod doctor;
mod engine;
mod failover;
mod fatbin;
mod helpers;
mod hostile;
mod interop;
mod limits;
mod lora;
mod models;
mod outage;
mod private_pg;
mod queue_contract;
mod retention;
mod safety;
mod store_contract;
mod telegram;
mod translate;
mod two_nodes;
mod understanding;
mod usage;
mod webhook;
mod wecom;
mod worker;
