//! Two `huabi serve` processes sharing one PostgreSQL database: WeChat's retries of one message hitting both
//! nodes at the same moment create exactly one job and get the same reply.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn concurrent_retries_across_two_processes_admit_each_message_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let (port_a, port_b) = (free_port(), free_port());
    // Both start on an empty database at once: migrations must not race either.
    // Seven followers send 40 messages at once: per-minute and in-flight limits are not what this test is about.
    let no_limits = [
        ("HUABI__LIMITS__PER_MINUTE", "0"),
        ("HUABI__LIMITS__IN_FLIGHT", "0"),
    ];
    let mut a = start_serve(&db.url, port_a, "web", &no_limits);
    let mut b = start_serve(&db.url, port_b, "web", &no_limits);
    let client = reqwest::Client::new();
    wait_ready(port_a, &mut a).await;
    wait_ready(port_b, &mut b).await;

    const MESSAGES: u64 = 40;
    let mut tasks = Vec::new();
    for msg in 0..MESSAGES {
        let (body, query) = encrypted_request(
            &text_xml(
                &format!("o_{}", msg % 7),
                880_000 + msg,
                &format!("prompt {msg}"),
            ),
            now(),
            &format!("n{msg}"),
        );
        // Two deliveries to each node, all in flight together.
        for port in [port_a, port_b, port_a, port_b] {
            let client = client.clone();
            let (body, query) = (body.clone(), query.clone());
            tasks.push(tokio::spawn(async move {
                let resp = client
                    .post(format!("http://127.0.0.1:{port}/webhook/wechat"))
                    .query(&query)
                    .body(body)
                    .send()
                    .await
                    .expect("sent");
                (
                    msg,
                    resp.status().as_u16(),
                    resp.text().await.expect("body"),
                )
            }));
        }
    }
    let mut replies: std::collections::HashMap<u64, Vec<String>> = Default::default();
    for t in tasks {
        let (msg, status, body) = t.await.expect("task");
        assert_eq!(status, 200, "{body}");
        let inner = open_reply(&body);
        replies
            .entry(msg)
            .or_default()
            .push(inner.get("Content").expect("content").to_string());
    }
    for (msg, texts) in &replies {
        assert_eq!(texts.len(), 4);
        assert!(
            texts.iter().all(|t| t == &texts[0]),
            "message {msg}: {texts:?}"
        );
    }

    let store = {
        let s = settings(&db.url, &[]);
        huabi::store::connect(&s.database).await.expect("connect")
    };
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        (counts.inbound, counts.jobs),
        (MESSAGES as i64, MESSAGES as i64)
    );
    let jobs = store.recent_jobs(1000).await.expect("jobs");
    let mut ids: Vec<_> = jobs.iter().map(|j| j.source_msg_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), MESSAGES as usize, "one job per message");

    // SIGTERM: both nodes exit cleanly and promptly.
    for node in [&mut a, &mut b] {
        let pid = node.id().expect("pid");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let status = tokio::time::timeout(Duration::from_secs(10), node.wait())
            .await
            .expect("exits within grace")
            .expect("status");
        assert!(status.success(), "clean exit: {status}");
    }
}
