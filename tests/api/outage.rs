//! A standby promotion: the primary stops, its synchronous standby is promoted, and the address huabi connects to
//! (a forwarder standing in for a virtual IP or HAProxy) moves to it; nothing acknowledged is lost.
//!
//! The database goes away and comes back: a private PostgreSQL cluster is stopped (fast shutdown: every session
//! cut) under load and started again. While it is away the webhook answers 503 inside WeChat's window (never 200
//! for a message it could not store) and `/readyz` says so; afterwards the nodes reconnect, LISTEN is re-made (the
//! worker node only wakes by notification), WeChat's retries are admitted, and every follower gets exactly one
//! picture.

use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::delivery::{APP_SECRET, images_per_user, start_standin, wait_for};
use crate::helpers::*;
use crate::private_pg::PrivatePg;

/// Posts follower `i`'s message to the node on `port`; the HTTP status, or 0 when no answer came in 5 s.
async fn post(client: &reqwest::Client, port: u16, i: u64) -> u16 {
    client
        .post(format!("http://127.0.0.1:{port}/webhook/wechat"))
        .query(&plain_query(now(), "n"))
        .body(text_xml(&format!("o_outage_{i}"), 70_000 + i, "月饼"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// `/readyz` of the node on `port`.
async fn ready(client: &reqwest::Client, port: u16) -> u16 {
    client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Two nodes' settings: the stand-in at `api_base`, small quick jobs, no fast path, a 2 s wait for a connection.
fn quick_nodes(api_base: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("HUABI__WECHAT__API_BASE", api_base),
        ("HUABI__WECHAT__APP_SECRET", APP_SECRET),
        ("HUABI__DELIVERY__FAST_PATH_SECS", "0"),
        ("HUABI__DELIVERY__POLL_SECS", "0.2"),
        ("HUABI__DATABASE__ACQUIRE_TIMEOUT_SECS", "2"),
        ("HUABI__JOBS__WIDTH", "64"),
        ("HUABI__JOBS__HEIGHT", "64"),
        ("HUABI__JOBS__STEPS", "2"),
    ]
}

/// A `web` node and a `worker,deliver` node on `url`, both ready: the children, their ports and a client that waits
/// 5 s at most.
async fn web_and_worker(
    url: &str,
    env: &[(&str, &str)],
) -> (
    tokio::process::Child,
    tokio::process::Child,
    u16,
    u16,
    reqwest::Client,
) {
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = start_serve(url, port_a, "web", env);
    let mut b = start_serve(url, port_b, "worker,deliver", env);
    wait_ready(port_a, &mut a).await;
    wait_ready(port_b, &mut b).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    (a, b, port_a, port_b, client)
}

#[tokio::test]
async fn every_role_survives_a_postgresql_restart() {
    let pg = PrivatePg::start();
    let url = pg.url();
    let (stand_in, base) = start_standin(Default::default()).await;
    let mut env = quick_nodes(&base);
    // Only a notification wakes the worker node in time: its poll tick is a minute.
    env.push(("HUABI__JOBS__POLL_SECS", "60"));
    let (mut a, mut b, port_a, port_b, client) = web_and_worker(&url, &env).await;

    for i in 0..10 {
        assert_eq!(post(&client, port_a, i).await, 200, "message {i}");
    }
    pg.down();
    assert_eq!(
        ready(&client, port_a).await,
        503,
        "/readyz reports the outage"
    );
    assert_eq!(ready(&client, port_b).await, 503);
    for i in 10..15 {
        let asked = Instant::now();
        let status = post(&client, port_a, i).await;
        assert_eq!(status, 503, "message {i} while the database is away");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "answered inside WeChat's 5 s window"
        );
    }
    pg.up();
    let back = Instant::now();
    while ready(&client, port_a).await != 200 || ready(&client, port_b).await != 200 {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "nodes never ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "ready again {:?} after the database came back",
        back.elapsed()
    );
    // WeChat retries the refused messages; new ones arrive.
    for i in 10..25 {
        let mut tries = 0;
        while post(&client, port_a, i).await != 200 {
            tries += 1;
            assert!(tries < 20, "message {i} never acknowledged");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let record = wait_for(&stand_in, 120, "25 pictures", |r| r.sends.len() >= 25).await;
    let per_user = images_per_user(&record);
    assert_eq!(per_user.len(), 25, "{per_user:?}");
    assert!(per_user.values().all(|&c| c == 1), "{per_user:?}");
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    wait_all_recorded_delivered(&mut conn, 25).await;
    assert_eq!(stand_in.record().sends.len(), 25, "nothing sent twice");
    assert!(a.try_wait().expect("a").is_none() && b.try_wait().expect("b").is_none());
}

#[tokio::test]
async fn a_promoted_standby_takes_over_with_nothing_lost() {
    let primary = PrivatePg::start();
    let standby = PrivatePg::standby_of(&primary);
    // Synchronous replication: a commit (an acknowledgement) waits until the standby has it.
    let mut admin = sqlx::PgConnection::connect(&primary.url())
        .await
        .expect("connect");
    sqlx::query("ALTER SYSTEM SET synchronous_standby_names = '*'")
        .execute(&mut admin)
        .await
        .expect("sync");
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut admin)
        .await
        .expect("reload");
    drop(admin);
    let forwarder = Forwarder::start(primary.port).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", forwarder.port);
    let (stand_in, base) = start_standin(Default::default()).await;
    let env = quick_nodes(&base);
    let (_a, _b, port_a, _, client) = web_and_worker(&url, &env).await;
    for i in 100..110 {
        assert_eq!(post(&client, port_a, i).await, 200, "message {i}");
    }
    primary.down();
    standby.promote();
    forwarder.switch(standby.port);
    let promoted = Instant::now();
    for i in 110..120 {
        let mut tries = 0;
        while post(&client, port_a, i).await != 200 {
            tries += 1;
            assert!(
                tries < 40,
                "message {i} never acknowledged after the promotion"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    eprintln!(
        "acknowledging again {:?} after the promotion",
        promoted.elapsed()
    );
    let record = wait_for(&stand_in, 120, "20 pictures", |r| r.sends.len() >= 20).await;
    let per_user = images_per_user(&record);
    assert_eq!(per_user.len(), 20, "{per_user:?}");
    assert!(per_user.values().all(|&c| c == 1), "{per_user:?}");
    // Every acknowledged message is on the new primary.
    let mut conn = sqlx::PgConnection::connect(&standby.url())
        .await
        .expect("connect");
    wait_all_recorded_delivered(&mut conn, 20).await;
    assert_eq!(stand_in.record().sends.len(), 20, "nothing sent twice");
}
