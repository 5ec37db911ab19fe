//! Retention on both databases: picture bytes go `picture_days` after delivery, held pictures expire after
//! `held_days` (and can no longer be fetched), messages and finished jobs go after `history_days` while their daily
//! usage survives in the rollup, and pruning works in bounded batches.

use huabi::config::RetentionSettings;
use huabi::model::Reply;
use huabi::retention::Janitor;
use huabi::store::{DeliveryEnd, Hold, Submission, Waiting};
use time::{Duration, OffsetDateTime};

use crate::delivery_contract::{accounts, finished_job, first_lease, inbound, store_for};
use crate::helpers::{Backend, TestDb};

async fn pictures_messages_and_jobs_are_pruned_and_usage_survives(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    // Five delivered pictures, one failed job (told), one held picture, one queued job, one text-only message.
    let mut delivered = Vec::new();
    for n in 0..5 {
        delivered.push(finished_job(&*s, &format!("u{n}"), n, true, 0.0).await);
    }
    let failed = finished_job(&*s, "u_failed", 10, false, 0.0).await;
    let held = finished_job(&*s, "u_held", 11, true, 0.0).await;
    for task in s
        .lease_deliveries("d", 20, 30.0, &accounts())
        .await
        .expect("lease")
    {
        let end = if task.job_id == held {
            DeliveryEnd::Held {
                hold: Hold::WindowClosed,
                error: "45015",
            }
        } else {
            DeliveryEnd::Sent
        };
        assert!(
            s.finish_delivery(first_lease(task.job_id, "d"), end)
                .await
                .expect("finish")
        );
    }
    let queued_message = inbound("u_queued", 12);
    s.submit(&Submission {
        refusal: None,
        limits: None,
        inbound: &queued_message,
        job: Some(huabi::model::NewJob::new(
            "still waiting".to_string(),
            &crate::helpers::settings("sqlite://unused", &[]).jobs,
        )),
        reply: Reply::None,
    })
    .await
    .expect("queued");
    let text_only = inbound("u_text", 13);
    s.submit(&Submission {
        refusal: None,
        limits: None,
        inbound: &text_only,
        job: None,
        reply: Reply::None,
    })
    .await
    .expect("text");
    let usage_before = s.usage("2000-01-01").await.expect("usage");
    assert_eq!(usage_before.iter().map(|r| r.delivered).sum::<i64>(), 5);

    let janitor = |batch: i64| {
        Janitor::new(
            s.clone(),
            RetentionSettings {
                picture_days: 7,
                held_days: 30,
                history_days: 90,
                every_secs: 3600.0,
                batch,
            },
        )
    };
    let now = OffsetDateTime::now_utc();

    // Six days on nothing goes; eight days on the delivered pictures' (and the failed job's) bytes go.
    let early = janitor(100)
        .run_once(now + Duration::days(6))
        .await
        .expect("prune");
    assert_eq!(early, Default::default());
    let week = janitor(2)
        .run_once(now + Duration::days(8))
        .await
        .expect("prune");
    assert_eq!(
        (week.pictures, week.expired, week.jobs),
        (5, 0, 0),
        "{week:?}"
    );
    for id in &delivered {
        assert_eq!(s.job_image(*id).await.expect("image"), None);
    }
    assert!(
        s.job_image(held).await.expect("image").is_some(),
        "held pictures wait"
    );
    assert_eq!(
        s.claim_waiting("wechat", "gh_d", "u_held", "web", 10.0)
            .await
            .expect("claim"),
        Waiting::Picture { job_id: held }
    );
    s.release_claim(held, "web").await.expect("release");
    assert_eq!(s.usage("2000-01-01").await.expect("usage"), usage_before);

    // After held_days the held picture expires: not fetchable, bytes gone.
    let month = janitor(100)
        .run_once(now + Duration::days(31))
        .await
        .expect("prune");
    assert_eq!(month.expired, 1, "{month:?}");
    assert_eq!(s.job_image(held).await.expect("image"), None);
    assert_eq!(
        s.job_status(held).await.expect("status").as_deref(),
        Some("failed")
    );
    assert_ne!(
        s.claim_waiting("wechat", "gh_d", "u_held", "web", 10.0)
            .await
            .expect("claim"),
        Waiting::Picture { job_id: held }
    );
    let usage_rolled = s.usage("2000-01-01").await.expect("usage");

    // After history_days the day is rolled up and its finished jobs and their messages go, in batches of two.
    let later = janitor(2)
        .run_once(now + Duration::days(100))
        .await
        .expect("prune");
    assert_eq!((later.jobs, later.messages), (7, 8), "{later:?}");
    assert!(later.usage_rows >= 1);
    let counts = s.counts().await.expect("counts");
    assert_eq!(
        (counts.inbound, counts.jobs),
        (1, 1),
        "the queued job and its message stay"
    );
    assert!(s.job_status(failed).await.expect("status").is_none());
    assert_eq!(
        s.usage("2000-01-01").await.expect("usage"),
        usage_rolled,
        "daily usage survives in the rollup"
    );
    let again = janitor(2)
        .run_once(now + Duration::days(101))
        .await
        .expect("prune");
    assert_eq!(
        again,
        Default::default(),
        "nothing is pruned or rolled up twice"
    );
    assert_eq!(s.usage("2000-01-01").await.expect("usage"), usage_rolled);
}

on_both_databases!(pictures_messages_and_jobs_are_pruned_and_usage_survives);
