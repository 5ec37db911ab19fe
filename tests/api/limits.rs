//! Per-follower limits on both databases: exactly the quota under concurrency, per-minute and in-flight limits,
//! backpressure, allow and deny lists, the campaign cap, and the day turning at midnight in Asia/Shanghai.

use std::sync::Arc;

use huabi::limits::{Limits, Listing};
use huabi::model::NewJob;
use huabi::model::{Inbound, InboundKind, Reply};
use huabi::store::{Admission, LimitCheck, RefusalTexts, Store, Submission};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::helpers::*;

fn content(body: &str) -> String {
    huabi::channel::wechat::xml::parse(body.as_bytes())
        .unwrap_or_else(|e| panic!("{e}: {body:?}"))
        .get("Content")
        .unwrap_or_default()
        .to_string()
}

/// Posts `n` messages from `user` all at once; returns the replies.
async fn burst(app: &Arc<TestApp>, user: &str, first_id: u64, n: u64) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (app, user) = (app.clone(), user.to_string());
            tokio::spawn(async move {
                let (status, body) = app.post_plain(&text_xml(&user, first_id + i, "月亮")).await;
                assert_eq!(status, 200, "{body}");
                content(&body)
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task"));
    }
    replies
}

async fn fifty_at_once_admit_exactly_the_quota(backend: Backend) {
    let app = Arc::new(
        spawn_app_with(
            backend,
            &[
                ("HUABI__LIMITS__PER_DAY", "5"),
                ("HUABI__LIMITS__PER_MINUTE", "0"),
                ("HUABI__LIMITS__IN_FLIGHT", "0"),
            ],
        )
        .await,
    );
    let replies = burst(&app, "o_eager", 1000, 50).await;
    assert_eq!(app.counts().await.jobs, 5, "exactly the quota");
    let refused = replies
        .iter()
        .filter(|r| r.contains("今天的 5 张已经画完"))
        .count();
    assert_eq!(refused, 45, "{replies:?}");
    let today = huabi::limits::shanghai_day(OffsetDateTime::now_utc()).to_string();
    let usage = app.store.usage(&today).await.expect("usage");
    assert_eq!(
        (usage[0].requests, usage[0].admitted, usage[0].limited),
        (50, 5, 45)
    );
    // Retries of refused messages repeat the refusal and create nothing.
    let (_, again) = app.post_plain(&text_xml("o_eager", 1049, "月亮")).await;
    assert!(content(&again).contains("画完") || content(&again).contains("收到"));
    assert_eq!(app.counts().await.jobs, 5);
    let (_, quota) = app.post_plain(&text_xml("o_eager", 2000, "额度")).await;
    assert!(content(&quota).contains("还能画 0 张"), "{quota}");
    let other = burst(&app, "o_other", 3000, 3).await;
    assert!(
        other.iter().all(|r| r.contains("收到")),
        "another follower has their own quota"
    );
}

async fn per_minute_in_flight_and_backpressure(backend: Backend) {
    let per_minute = Arc::new(
        spawn_app_with(
            backend,
            &[
                ("HUABI__LIMITS__PER_MINUTE", "3"),
                ("HUABI__LIMITS__IN_FLIGHT", "0"),
            ],
        )
        .await,
    );
    let replies = burst(&per_minute, "o_fast", 1, 10).await;
    assert_eq!(per_minute.counts().await.jobs, 3);
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.contains("每分钟最多 3 张"))
            .count(),
        7
    );

    let in_flight = Arc::new(
        spawn_app_with(
            backend,
            &[
                ("HUABI__LIMITS__PER_MINUTE", "0"),
                ("HUABI__LIMITS__IN_FLIGHT", "2"),
            ],
        )
        .await,
    );
    let replies = burst(&in_flight, "o_queue", 1, 6).await;
    assert_eq!(in_flight.counts().await.jobs, 2);
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.contains("2 张画在排队"))
            .count(),
        4
    );
    // Finishing a job frees a slot.
    let leased = in_flight
        .store
        .lease_jobs("w", &crate::helpers::paints_default(), 1, 30.0, 3)
        .await
        .expect("lease");
    assert!(
        in_flight
            .store
            .complete_job(leased[0].lease("w"), b"\xFF\xD8", 1)
            .await
            .expect("done")
    );
    let replies = burst(&in_flight, "o_queue", 100, 2).await;
    assert_eq!(
        replies.iter().filter(|r| r.contains("收到")).count(),
        1,
        "{replies:?}"
    );

    let busy = spawn_app_with(
        backend,
        &[
            ("HUABI__LIMITS__BUSY_QUEUE", "3"),
            ("HUABI__LIMITS__ALLOW", "o_vip"),
            ("HUABI__LIMITS__DENY", "o_spam"),
        ],
    )
    .await;
    for n in 0..3u64 {
        let (_, body) = busy
            .post_plain(&text_xml(&format!("o_{n}"), n, "桂花"))
            .await;
        assert!(content(&body).contains("收到"), "{n}: {body}");
    }
    // Each node counts the queue once a second (backpressure is approximate by design).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for n in 3..5u64 {
        let (_, body) = busy
            .post_plain(&text_xml(&format!("o_{n}"), n, "桂花"))
            .await;
        assert!(content(&body).contains("排队作画的人太多"), "{n}: {body}");
    }
    let (_, vip) = busy.post_plain(&text_xml("o_vip", 50, "桂花")).await;
    assert!(
        content(&vip).contains("收到"),
        "the allow list skips limits: {vip}"
    );
    let (_, spam) = busy.post_plain(&text_xml("o_spam", 51, "桂花")).await;
    assert!(content(&spam).contains("暂时无法"), "{spam}");
    assert_eq!(busy.counts().await.jobs, 4);
}

fn inbound(user: &str, n: u64) -> Inbound {
    Inbound {
        channel: "wechat",
        account: "gh_l".into(),
        user_id: user.into(),
        message_id: Some(n.to_string()),
        dedup_key: format!("m:{n}:{user}"),
        sent_at: 1,
        kind: InboundKind::Text {
            content: "x".into(),
        },
    }
}

async fn submit_at(
    store: &dyn Store,
    user: &str,
    n: u64,
    limits: Limits,
    now: OffsetDateTime,
    campaign: Option<&str>,
) -> bool {
    let m = inbound(user, n);
    let job = NewJob {
        campaign: campaign.map(str::to_string),
        ..NewJob::new("x", &settings("sqlite://unused", &[]).jobs)
    };
    let check = LimitCheck {
        limits,
        listing: Listing::Normal,
        now,
        queued: 0,
        replies: RefusalTexts {
            per_day: "day".into(),
            campaign_cap: "cap".into(),
            ..Default::default()
        },
    };
    let admission = store
        .submit(&Submission {
            inbound: &m,
            job: Some(job),
            reply: Reply::None,
            refusal: None,
            limits: Some(check),
        })
        .await
        .expect("submit");
    matches!(admission, Admission::Accepted { job_id: Some(_) })
}

async fn the_day_turns_at_midnight_in_shanghai_and_campaigns_cap(backend: Backend) {
    let app = spawn_app(backend).await;
    let store = &*app.store;
    let one_a_day = Limits {
        per_day: 1,
        ..Default::default()
    };
    // 23:59:59 in Shanghai, twice, then 00:00:00 the next day; UTC midnight is not a Shanghai day boundary.
    for (n, at, admitted) in [
        (1, datetime!(2027-09-14 15:59:59 UTC), true),
        (2, datetime!(2027-09-14 15:59:59.9 UTC), false),
        (3, datetime!(2027-09-14 16:00:00 UTC), true),
        (4, datetime!(2027-09-15 15:59:00 UTC), false),
        (5, datetime!(2027-09-15 00:00:00 UTC), false),
    ] {
        assert_eq!(
            submit_at(store, "u", n, one_a_day, at, None).await,
            admitted,
            "{at}"
        );
    }
    let capped = Limits {
        campaign_per_day: 2,
        ..Default::default()
    };
    let now = OffsetDateTime::now_utc();
    assert!(submit_at(store, "a", 10, capped, now, Some("festival")).await);
    assert!(submit_at(store, "b", 11, capped, now, Some("festival")).await);
    assert!(
        !submit_at(store, "c", 12, capped, now, Some("festival")).await,
        "cap reached"
    );
    assert!(
        submit_at(store, "c", 13, capped, now, Some("other")).await,
        "per campaign"
    );
}

on_both_databases!(
    fifty_at_once_admit_exactly_the_quota,
    per_minute_in_flight_and_backpressure,
    the_day_turns_at_midnight_in_shanghai_and_campaigns_cap,
);
