//! The console's storage contract, run unchanged against PostgreSQL and SQLite.

use std::sync::Arc;

use huabi::model::NewJob;
use huabi::model::{Inbound, InboundKind, Reply};
use huabi::store::admin::{JobFilter, NewAudit};
use huabi::store::{self, Admission, Store, Submission};
use time::{Duration, OffsetDateTime};

use crate::helpers::{Backend, TestDb, paints_default, settings};

async fn store_for(db: &TestDb) -> Arc<dyn Store> {
    let store = store::connect(&settings(&db.url, &[]).database)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

async fn users_sessions_and_throttling(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    assert_eq!(s.admin_user_count().await.expect("count"), 0);
    s.save_admin_user("alice", "admin", Some("$argon2id$hash"), false)
        .await
        .expect("save");
    assert_eq!(s.admin_user_count().await.expect("count"), 1);
    let now = OffsetDateTime::now_utc();
    s.create_session("tok1", "alice", "csrf1", now + Duration::hours(1))
        .await
        .expect("session");
    s.create_session("old", "alice", "csrf0", now - Duration::seconds(1))
        .await
        .expect("session");
    let live = s.session("tok1", now).await.expect("read").expect("live");
    assert_eq!(
        (
            live.user_name.as_str(),
            live.role.as_str(),
            live.csrf.as_str()
        ),
        ("alice", "admin", "csrf1")
    );
    assert!(
        s.session("old", now).await.expect("read").is_none(),
        "expired"
    );
    assert!(s.session("nope", now).await.expect("read").is_none());
    // Changing a user keeps the password when none is given, and ends the user's sessions.
    s.save_admin_user("alice", "viewer", None, false)
        .await
        .expect("save");
    let alice = s.admin_user("alice").await.expect("read").expect("alice");
    assert_eq!(
        (alice.role.as_str(), alice.password_hash.as_str()),
        ("viewer", "$argon2id$hash")
    );
    assert!(s.session("tok1", now).await.expect("read").is_none());
    s.create_session("tok2", "alice", "c", now + Duration::hours(1))
        .await
        .expect("session");
    s.save_admin_user("alice", "viewer", None, true)
        .await
        .expect("disable");
    assert!(s.session("tok2", now).await.expect("read").is_none());
    assert_eq!(
        s.admin_user_count().await.expect("count"),
        0,
        "disabled users do not count"
    );
    s.end_session("tok2").await.expect("end");

    for n in 0..3 {
        s.record_login_failure("bob", "10.0.0.1", now - Duration::minutes(n))
            .await
            .expect("failure");
    }
    s.record_login_failure("carol", "10.0.0.1", now - Duration::minutes(30))
        .await
        .expect("failure");
    let f = s
        .login_failures("bob", "10.0.0.1", now - Duration::minutes(15))
        .await
        .expect("failures");
    assert_eq!((f.by_user, f.by_address), (3, 3));
    let oldest = f.oldest.expect("oldest");
    assert!(
        (oldest - (now - Duration::minutes(2))).abs() < Duration::seconds(1),
        "{oldest}"
    );
    let none = s
        .login_failures("dave", "10.0.0.9", now - Duration::minutes(15))
        .await
        .expect("failures");
    assert_eq!((none.by_user, none.by_address, none.oldest), (0, 0, None));
    s.prune_admin(now, now - Duration::minutes(15))
        .await
        .expect("prune");
    let all = s
        .login_failures("carol", "10.0.0.1", now - Duration::days(1))
        .await
        .expect("failures");
    assert_eq!(
        (all.by_user, all.by_address),
        (0, 3),
        "carol's old failure is gone, bob's recent ones stay"
    );
}

async fn audit_words_listings_and_workers(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    s.audit(&NewAudit {
        actor: "alice",
        action: "word.add",
        target: "坏词",
        before: None,
        after: Some("坏词"),
    })
    .await
    .expect("audit");
    s.audit(&NewAudit {
        actor: "bob",
        action: "campaign.save",
        target: "mid-autumn",
        before: Some("a"),
        after: Some("b"),
    })
    .await
    .expect("audit");
    let log = s.audit_log(10).await.expect("log");
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].actor.as_str(), log[0].before.as_deref()),
        ("bob", Some("a")),
        "newest first"
    );
    assert!(s.add_filter_word("坏词", "alice").await.expect("add"));
    assert!(!s.add_filter_word("坏词", "bob").await.expect("again"));
    let words = s.filter_word_entries().await.expect("words");
    assert_eq!(
        (words[0].word.as_str(), words[0].added_by.as_str()),
        ("坏词", "alice")
    );
    assert!(s.remove_filter_word("坏词").await.expect("remove"));
    assert!(!s.remove_filter_word("坏词").await.expect("gone"));

    s.set_follower_listing(("wechat", "gh", "o_1"), Some("deny"), "alice")
        .await
        .expect("deny");
    s.set_follower_listing(("wechat", "gh", "o_1"), Some("allow"), "alice")
        .await
        .expect("allow");
    s.set_follower_listing(("wechat", "gh", "o_2"), Some("deny"), "alice")
        .await
        .expect("deny");
    let lists = s.follower_lists().await.expect("lists");
    assert_eq!(lists.len(), 2);
    assert!(
        lists
            .iter()
            .any(|l| l.user_id == "o_1" && l.listing == "allow")
    );
    s.set_follower_listing(("wechat", "gh", "o_2"), None, "alice")
        .await
        .expect("unlist");
    assert_eq!(s.follower_lists().await.expect("lists").len(), 1);

    s.worker_seen("w-1", &paints_default()).await.expect("seen");
    let workers = s.workers().await.expect("workers");
    assert_eq!(workers.len(), 1);
    assert!(workers[0].models.contains("tiny-sd"));
}

fn inbound(user: &str, n: u32) -> Inbound {
    Inbound {
        channel: "wechat",
        account: "gh".into(),
        user_id: user.into(),
        message_id: Some(n.to_string()),
        dedup_key: format!("m:{user}:{n}"),
        sent_at: 1,
        kind: InboundKind::Text {
            content: format!("prompt {n}"),
        },
    }
}

async fn jobs_previews_holds_and_hourly_usage(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    let jobs = &settings(&db.url, &[]).jobs;
    let mut ids = Vec::new();
    for (user, n) in [("o_a", 1), ("o_a", 2), ("o_b", 3)] {
        let m = inbound(user, n);
        let Admission::Accepted { job_id: Some(id) } = s
            .submit(&Submission {
                inbound: &m,
                job: Some(NewJob {
                    campaign: (n == 3).then(|| "spring".to_string()),
                    ..NewJob::new(format!("prompt {n}"), jobs)
                }),
                reply: Reply::None,
                refusal: None,
                limits: None,
            })
            .await
            .expect("submit")
        else {
            panic!("no job")
        };
        ids.push(id);
    }
    let preview = s
        .submit_preview(
            &NewJob {
                width: 64,
                ..NewJob::new("a preview", jobs)
            },
            "alice",
        )
        .await
        .expect("preview");
    // The preview is leased first, although it came last.
    let leased = s
        .lease_jobs("w", &paints_default(), 1, 30.0, 3)
        .await
        .expect("lease");
    assert_eq!(leased[0].id, preview);
    assert!(
        s.complete_job(leased[0].lease("w"), b"jpeg", 1)
            .await
            .expect("complete")
    );
    let lease = s
        .lease_deliveries("d", 10, 30.0, &["wechat/gh".to_string()])
        .await
        .expect("deliveries");
    assert!(
        lease.iter().all(|t| t.job_id != preview),
        "previews are never delivered"
    );
    let p = s.job(preview).await.expect("job").expect("preview");
    assert_eq!(
        (p.channel.as_str(), p.user_id.as_str(), p.status.as_str()),
        ("console", "alice", "done")
    );
    assert!(p.has_image);

    let all = s
        .jobs(&JobFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("jobs");
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].id, preview, "newest first");
    let mine = s
        .jobs(&JobFilter {
            user_id: Some("o_a".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("jobs");
    assert_eq!(mine.len(), 2);
    let spring = s
        .jobs(&JobFilter {
            campaign: Some("spring".into()),
            status: Some("queued".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("jobs");
    assert_eq!(
        spring.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );

    // A held picture can be sent again.
    let leased = s
        .lease_jobs("w", &paints_default(), 1, 30.0, 3)
        .await
        .expect("lease");
    assert!(
        s.complete_job(leased[0].lease("w"), b"jpeg", 1)
            .await
            .expect("complete")
    );
    let task = s
        .lease_deliveries("d", 1, 30.0, &["wechat/gh".to_string()])
        .await
        .expect("lease")[0]
        .clone();
    s.finish_delivery(
        task.lease("d"),
        store::DeliveryEnd::Held {
            hold: store::Hold::WindowClosed,
            error: "45015",
        },
    )
    .await
    .expect("held");
    assert!(
        s.lease_deliveries("d", 1, 30.0, &["wechat/gh".to_string()])
            .await
            .expect("lease")
            .is_empty()
    );
    assert!(s.release_hold(task.job_id).await.expect("release"));
    assert!(!s.release_hold(task.job_id).await.expect("not held now"));
    assert_eq!(
        s.lease_deliveries("d", 1, 30.0, &["wechat/gh".to_string()])
            .await
            .expect("lease")
            .len(),
        1
    );

    let today = huabi::limits::shanghai_day(OffsetDateTime::now_utc()).to_string();
    let hours = s.usage_by_hour(&today).await.expect("hours");
    assert!(
        hours.iter().map(|h| h.painted).sum::<i64>() >= 1,
        "{hours:?}"
    );
    let top = s.top_followers(&today, 5).await.expect("top");
    assert_eq!(top[0].user_id, "o_a");
    assert_eq!(top[0].admitted, 2);
}

on_both_databases!(
    users_sessions_and_throttling,
    audit_words_listings_and_workers,
    jobs_previews_holds_and_hourly_usage
);
