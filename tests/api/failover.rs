//! Failover on PostgreSQL with two `huabi serve` processes: kill -9 the one painting a job; the other takes the job
//! over within about a second (the dead node's presence lock is gone) and finishes it; the picture is stored once.
//! Pause the painting node (SIGSTOP) past its lease: the other takes over and delivers; the paused one, resumed,
//! finds its result refused (fencing); cut the painting node off from PostgreSQL for 20 s: the same. Kill a web node
//! while messages arrive: WeChat's retries reach the other web node; every follower gets exactly one picture.

use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::helpers::*;

/// A node whose jobs take long enough (256², 40 steps, one thread) to be killed mid-batch, with painting leases of
/// `lease` seconds; delivering to the WeChat API stand-in at `api_base` and to the Telegram stand-in at
/// `telegram_base` (bot `huabot`).
fn start(
    db_url: &str,
    port: u16,
    roles: &str,
    api_base: &str,
    telegram_base: &str,
    lease: &str,
) -> tokio::process::Child {
    start_serve(
        db_url,
        port,
        roles,
        &[
            (
                "HUABI__CHANNELS__TELEGRAM__HUABOT__BOT_TOKEN",
                crate::telegram::BOT_TOKEN,
            ),
            (
                "HUABI__CHANNELS__TELEGRAM__HUABOT__SECRET_TOKEN",
                crate::telegram::SECRET,
            ),
            ("HUABI__CHANNELS__TELEGRAM__HUABOT__API_BASE", telegram_base),
            ("HUABI__WECHAT__API_BASE", api_base),
            ("HUABI__WECHAT__APP_SECRET", crate::delivery::APP_SECRET),
            ("HUABI__DELIVERY__FAST_PATH_SECS", "0"),
            ("HUABI__ENGINE__THREADS", "1"),
            ("HUABI__JOBS__WIDTH", "256"),
            ("HUABI__JOBS__HEIGHT", "256"),
            ("HUABI__JOBS__STEPS", "40"),
            ("HUABI__JOBS__LEASE_SECS", lease),
        ],
    )
}

#[tokio::test]
async fn killing_the_painting_worker_hands_the_job_to_the_other() {
    kill_the_painter(Follower::Wechat).await;
}

#[tokio::test]
async fn killing_the_painting_worker_hands_a_telegram_job_to_the_other() {
    kill_the_painter(Follower::Telegram).await;
}

/// Where the follower in [`kill_the_painter`] writes from.
#[derive(Clone, Copy, PartialEq)]
enum Follower {
    Wechat,
    Telegram,
}

/// Posts follower `user`'s WeChat text message `msg_id` to the web node on `port`; its HTTP status.
async fn post_text(port: u16, user: &str, msg_id: u64, text: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhook/wechat"))
        .query(&plain_query(now(), "n"))
        .body(text_xml(user, msg_id, text))
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

/// Waits (20 s at most) until a job is being painted; its id and the lease holder.
async fn running_job(conn: &mut sqlx::PgConnection) -> (i64, String) {
    let started = Instant::now();
    loop {
        let row: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT id, leased_by FROM jobs WHERE status = 'running'")
                .fetch_optional(&mut *conn)
                .await
                .expect("query");
        if let Some((id, Some(holder))) = row {
            return (id, holder);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no worker leased the job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (`within` at most) until job `id` is recorded delivered.
async fn delivered(conn: &mut sqlx::PgConnection, id: i64, within: Duration) {
    let started = Instant::now();
    loop {
        let (status,): (String,) = sqlx::query_as("SELECT status FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .expect("query");
        if status == "delivered" {
            return;
        }
        assert!(
            started.elapsed() < within,
            "job {id} not delivered: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pictures stored and leases taken for job `id`.
async fn images_and_attempts(conn: &mut sqlx::PgConnection, id: i64) -> (i64, i32) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM job_images WHERE job_id = $1), (SELECT attempts FROM jobs WHERE id = $1)",
    )
    .bind(id)
    .fetch_one(conn)
    .await
    .expect("query")
}

async fn kill_the_painter(follower: Follower) {
    let db = TestDb::new(Backend::Postgres).await;
    let (stand_in, base) = crate::delivery::start_standin(Default::default()).await;
    let (bot, bot_base) = crate::telegram::start_telegram(Default::default()).await;
    let (port_a, port_b) = (free_port(), free_port());
    // Leases of 30 s: only the dead node's vanished presence lock can explain a takeover within seconds.
    let mut a = start(
        &db.url,
        port_a,
        "web,worker,deliver",
        &base,
        &bot_base,
        "30",
    );
    wait_ready(port_a, &mut a).await;
    let mut b = start(&db.url, port_b, "worker,deliver", &base, &bot_base, "30");
    wait_ready(port_b, &mut b).await;

    let client = reqwest::Client::new();
    let request = match follower {
        Follower::Wechat => client
            .post(format!("http://127.0.0.1:{port_a}/webhook/wechat"))
            .query(&plain_query(now(), "n"))
            .body(text_xml("o_failover", 424242, "月亮")),
        Follower::Telegram => client
            .post(format!("http://127.0.0.1:{port_a}/webhook/telegram/huabot"))
            .header("X-Telegram-Bot-Api-Secret-Token", crate::telegram::SECRET)
            .body(crate::telegram::update(424242, 4242, "月亮")),
    };
    let resp = request.send().await.expect("sent");
    assert_eq!(resp.status(), 200);

    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let (job_id, holder) = running_job(&mut conn).await;
    let (victim, survivor) = if holder.contains(&format!("-{}-", a.id().expect("pid"))) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    victim.start_kill().expect("kill -9");
    victim.wait().await.expect("reaped");
    let killed_at = Instant::now();

    let (new_holder, attempts) = loop {
        let (status, leased_by, attempts): (String, Option<String>, i32) =
            sqlx::query_as("SELECT status, leased_by, attempts FROM jobs WHERE id = $1")
                .bind(job_id)
                .fetch_one(&mut conn)
                .await
                .expect("query");
        if status == "running" && leased_by.as_deref() != Some(holder.as_str()) {
            break (leased_by.expect("holder"), attempts);
        }
        assert_ne!(status, "done", "the killed worker cannot have finished");
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "no takeover within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let takeover = killed_at.elapsed();
    eprintln!("takeover {takeover:?} after kill -9 (lease 30 s); new holder {new_holder}");
    // The goal is 1 s (measured well under it); the bound leaves room for a loaded 2-core CI machine.
    assert!(
        takeover < Duration::from_secs(2),
        "job re-leased {takeover:?} after the kill"
    );
    assert_eq!(attempts, 2);
    delivered(&mut conn, job_id, Duration::from_secs(60)).await;
    assert_eq!(images_and_attempts(&mut conn, job_id).await, (1, 2));
    // Recorded delivered: no deliverer leases it again, so the count below is final.
    if follower == Follower::Wechat {
        let record = stand_in.record();
        assert_eq!(
            record.sends.len(),
            1,
            "the follower gets exactly one picture"
        );
        assert_eq!(record.sends[0].touser, "o_failover");
    } else {
        let photos: Vec<_> = bot
            .record()
            .sends
            .into_iter()
            .filter(|s| s.kind == "photo")
            .map(|s| s.chat_id)
            .collect();
        assert_eq!(photos, ["4242"], "the follower gets exactly one picture");
        assert!(stand_in.record().sends.is_empty());
    }
    assert!(
        survivor.try_wait().expect("status").is_none(),
        "the survivor keeps running"
    );
}

/// Fencing: a painting node paused (SIGSTOP) past its 2 s lease keeps its connections, so its job moves only when the
/// lease expires; the other node paints and delivers it; the paused node, resumed, finishes painting and its late
/// result is refused and counted. One picture stored, one sent.
#[tokio::test]
async fn a_paused_worker_cannot_overwrite_the_takeover() {
    let db = TestDb::new(Backend::Postgres).await;
    let (stand_in, base) = crate::delivery::start_standin(Default::default()).await;
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = start(
        &db.url,
        port_a,
        "web,worker,deliver",
        &base,
        "http://127.0.0.1:9",
        "2",
    );
    wait_ready(port_a, &mut a).await;
    let mut b = start(
        &db.url,
        port_b,
        "worker,deliver",
        &base,
        "http://127.0.0.1:9",
        "2",
    );
    wait_ready(port_b, &mut b).await;
    assert_eq!(post_text(port_a, "o_paused", 515151, "月亮").await, 200);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let (job_id, holder) = running_job(&mut conn).await;
    let (victim, victim_port) = if holder.contains(&format!("-{}-", a.id().expect("pid"))) {
        (a.id().expect("pid"), port_a)
    } else {
        (b.id().expect("pid"), port_b)
    };
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &victim.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    delivered(&mut conn, job_id, Duration::from_secs(90)).await;
    signal("-CONT");
    let late = crate::helpers::wait_for_metric(
        victim_port,
        "huabi_late_results_total{role=\"worker\"} 1",
        Duration::from_secs(90),
    )
    .await;
    assert!(late, "the resumed worker's late result was not counted");
    assert_eq!(images_and_attempts(&mut conn, job_id).await, (1, 2));
    let sends = stand_in.record().sends;
    assert_eq!(sends.len(), 1, "exactly one picture: {sends:?}");
    assert!(a.try_wait().expect("a").is_none() && b.try_wait().expect("b").is_none());
}

/// A partition: the painting node is cut off from PostgreSQL for 20 s (every byte held, no connection closed, so
/// PostgreSQL cannot tell it died and its presence lock stays); its job moves when the 2 s lease expires, the other
/// node paints and delivers it; when the network heals, the cut-off node overwrote nothing (its result was refused,
/// or given up when its lease ran out while the database was out of reach) and the deployment goes on.
#[tokio::test]
async fn a_node_cut_off_from_the_database_cannot_overwrite_the_takeover() {
    let db = TestDb::new(Backend::Postgres).await;
    let port_pg = db
        .url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("the test database's port");
    let network = crate::helpers::Forwarder::start(port_pg).await;
    let cut_url = db
        .url
        .replacen(&format!(":{port_pg}/"), &format!(":{}/", network.port), 1);
    let (stand_in, base) = crate::delivery::start_standin(Default::default()).await;
    let (port_a, port_b) = (free_port(), free_port());
    // Only B paints at first: A starts once B holds the job.
    let mut b = start(&cut_url, port_b, "worker", &base, "http://127.0.0.1:9", "2");
    wait_ready(port_b, &mut b).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let mut a = start(
        &db.url,
        port_a,
        "web,deliver",
        &base,
        "http://127.0.0.1:9",
        "2",
    );
    wait_ready(port_a, &mut a).await;
    assert_eq!(post_text(port_a, "o_partition", 616161, "月亮").await, 200);
    let (job_id, _) = running_job(&mut conn).await;
    network.partition();
    let cut_at = Instant::now();
    let mut c = start(
        &db.url,
        free_port(),
        "worker",
        &base,
        "http://127.0.0.1:9",
        "2",
    );
    delivered(&mut conn, job_id, Duration::from_secs(60)).await;
    let delivered_after = cut_at.elapsed();
    // Keep B cut off for 20 s in all, then heal.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(delivered_after)).await;
    network.heal();
    // Healed, B answers again; whatever it painted meanwhile was refused (or given up when its lease ran out) and
    // overwrote nothing: one picture stored and sent, painted under the second lease.
    let client = reqwest::Client::new();
    let healed = Instant::now();
    while !client
        .get(format!("http://127.0.0.1:{port_b}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "B never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(images_and_attempts(&mut conn, job_id).await, (1, 2));
    // The deployment goes on: a new message is painted and delivered.
    assert_eq!(post_text(port_a, "o_after", 626262, "桂花").await, 200);
    let record =
        crate::delivery::wait_for(&stand_in, 60, "the second picture", |r| r.sends.len() >= 2)
            .await;
    let per_user = crate::delivery::images_per_user(&record);
    assert_eq!(
        per_user.get("o_partition"),
        Some(&1),
        "exactly one picture: {per_user:?}"
    );
    assert_eq!(per_user.get("o_after"), Some(&1));
    for node in [&mut a, &mut b, &mut c] {
        assert!(
            node.try_wait().expect("status").is_none(),
            "every node keeps running"
        );
    }
}

#[tokio::test]
async fn a_job_admitted_on_a_web_node_wakes_a_worker_on_another_node() {
    let db = TestDb::new(Backend::Postgres).await;
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = start(
        &db.url,
        port_a,
        "web",
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "2",
    );
    wait_ready(port_a, &mut a).await;
    // The worker's poll tick is 60 s: only the notification can wake it in time.
    let mut b = start_serve(
        &db.url,
        port_b,
        "worker",
        &[
            ("HUABI__JOBS__POLL_SECS", "60"),
            ("HUABI__JOBS__WIDTH", "64"),
            ("HUABI__JOBS__HEIGHT", "64"),
            ("HUABI__JOBS__STEPS", "2"),
        ],
    );
    wait_ready(port_b, &mut b).await;
    // Let the worker finish its first (empty) look and go to sleep.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posted = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port_a}/webhook/wechat"))
        .query(&plain_query(now(), "n"))
        .body(text_xml("o_wake", 77, "桂花"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    loop {
        let row: Option<(String,)> = sqlx::query_as("SELECT status FROM jobs")
            .fetch_optional(&mut conn)
            .await
            .expect("query");
        if matches!(row.as_ref().map(|(s,)| s.as_str()), Some("done")) {
            break;
        }
        assert!(
            posted.elapsed() < Duration::from_secs(20),
            "the worker was not woken: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "admitted on the web node, painted on the worker node {:?} later",
        posted.elapsed()
    );
}

#[tokio::test]
async fn killing_a_web_node_loses_and_duplicates_nothing() {
    use crate::delivery::{APP_SECRET, images_per_user, start_standin, wait_for};
    let db = TestDb::new(Backend::Postgres).await;
    let (stand_in, base) = start_standin(Default::default()).await;
    let env = [
        ("HUABI__WECHAT__API_BASE", base.as_str()),
        ("HUABI__WECHAT__APP_SECRET", APP_SECRET),
        ("HUABI__DELIVERY__FAST_PATH_SECS", "0"),
        ("HUABI__DELIVERY__POLL_SECS", "0.2"),
        ("HUABI__JOBS__WIDTH", "64"),
        ("HUABI__JOBS__HEIGHT", "64"),
        ("HUABI__JOBS__STEPS", "2"),
    ];
    let (port_a, port_b, port_c) = (free_port(), free_port(), free_port());
    let mut a = start_serve(&db.url, port_a, "web", &env);
    let mut b = start_serve(&db.url, port_b, "web", &env);
    let mut c = start_serve(&db.url, port_c, "worker,deliver", &env);
    wait_ready(port_a, &mut a).await;
    wait_ready(port_b, &mut b).await;
    wait_ready(port_c, &mut c).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let n = 40u64;
    for i in 0..n {
        if i == 20 {
            a.start_kill().expect("kill -9");
            a.wait().await.expect("reaped");
        }
        let body = text_xml(&format!("o_web_{i}"), 50_000 + i, "月饼");
        let query = plain_query(now(), "n");
        // WeChat delivers to A first; its retries (3 deliveries in all) land on B. For messages 15..20 A's answer
        // is lost on the way back, so WeChat retries although A admitted the message.
        let mut acked = false;
        for (attempt, port) in [port_a, port_b, port_b].into_iter().enumerate() {
            let sent = client
                .post(format!("http://127.0.0.1:{port}/webhook/wechat"))
                .query(&query)
                .body(body.clone())
                .send()
                .await;
            if matches!(&sent, Ok(r) if r.status() == 200) {
                acked = true;
                if !((15..20).contains(&i) && attempt == 0) {
                    break;
                }
            }
        }
        assert!(acked, "message {i} was never acknowledged");
    }
    let record = wait_for(&stand_in, 90, "40 pictures", |r| {
        r.sends.len() >= n as usize
    })
    .await;
    let per_user = images_per_user(&record);
    assert_eq!(per_user.len(), n as usize);
    assert!(per_user.values().all(|&c| c == 1), "{per_user:?}");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    wait_all_recorded_delivered(&mut conn, n as i64).await;
    assert_eq!(stand_in.record().sends.len(), n as usize, "nothing twice");
}
