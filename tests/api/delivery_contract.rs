//! The delivery side of the store contract, run unchanged against PostgreSQL and SQLite: leasing finished jobs,
//! backoff and holds, passive-reply claims, the fetch flow's claim, and the shared access token (single-flight
//! refresh claim, compare-and-swap expiry).

use std::sync::Arc;
use std::time::Duration;

use huabi::model::NewJob;
use huabi::model::{Inbound, InboundKind, Reply};
use huabi::store::{self, DeliveryEnd, Hold, Lease, Store, Submission, Waiting};

use crate::helpers::{Backend, TestDb, settings};

/// The first delivery lease of job `job`, as `holder` took it.
pub fn first_lease(job: i64, holder: &str) -> Lease<'_> {
    Lease {
        job,
        holder,
        attempt: 1,
    }
}

pub async fn store_for(db: &TestDb) -> Arc<dyn Store> {
    let store = store::connect(&settings(&db.url, &[]).database)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// The accounts the deliverers in these tests send through.
pub fn accounts() -> Vec<String> {
    vec!["wechat/gh_d".to_string()]
}

pub fn inbound(user: &str, n: u32) -> Inbound {
    Inbound {
        channel: "wechat",
        account: "gh_d".into(),
        user_id: user.into(),
        message_id: Some(n.to_string()),
        dedup_key: format!("m:{n}:{user}"),
        sent_at: 1,
        kind: InboundKind::Text {
            content: format!("prompt {n}"),
        },
    }
}

/// Admits a job for `user` and paints it (`ok`) or fails it for good; returns its id.
pub async fn finished_job(s: &dyn Store, user: &str, n: u32, ok: bool, deliver_after: f64) -> i64 {
    let m = inbound(user, n);
    let job = NewJob {
        deliver_after_secs: deliver_after,
        ..NewJob::new(format!("p{n}"), &settings("sqlite://unused", &[]).jobs)
    };
    let admission = s
        .submit(&Submission {
            refusal: None,
            limits: None,
            inbound: &m,
            job: Some(job),
            reply: Reply::Text {
                text: "received".into(),
            },
        })
        .await
        .expect("submit");
    let store::Admission::Accepted { job_id: Some(id) } = admission else {
        panic!("{admission:?}")
    };
    let leased = s
        .lease_jobs("painter", &crate::helpers::paints_default(), 1, 30.0, 3)
        .await
        .expect("lease");
    assert_eq!(leased[0].id, id);
    if ok {
        assert!(
            s.complete_job(leased[0].lease("painter"), b"\xFF\xD8\xFFjpeg", 3)
                .await
                .expect("complete")
        );
    } else {
        s.fail_job(leased[0].lease("painter"), "broken", 0)
            .await
            .expect("fail");
    }
    id
}

async fn finished_jobs_are_leased_once_and_marked_delivered(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    let done = finished_job(&*s, "u1", 1, true, 0.0).await;
    let failed = finished_job(&*s, "u2", 2, false, 0.0).await;
    let a = s
        .lease_deliveries("d1", 10, 30.0, &accounts())
        .await
        .expect("lease");
    assert_eq!(a.len(), 2);
    assert!(
        a.iter()
            .any(|t| t.job_id == done && t.is_picture() && t.user_id == "u1")
    );
    assert!(a.iter().any(|t| t.job_id == failed && !t.is_picture()));
    assert!(
        a.iter()
            .all(|t| t.delivery_attempts == 1 && t.media_id.is_none())
    );
    assert!(
        s.lease_deliveries("d2", 10, 30.0, &accounts())
            .await
            .expect("lease")
            .is_empty(),
        "leased jobs are not leased twice"
    );
    assert!(
        s.renew_delivery(first_lease(done, "d1"), 30.0)
            .await
            .expect("renew")
    );
    let later = Lease {
        attempt: 2,
        ..first_lease(done, "d1")
    };
    assert!(
        !s.renew_delivery(later, 30.0).await.expect("renew")
            && !s
                .renew_delivery(first_lease(done, "d2"), 30.0)
                .await
                .expect("renew"),
        "only the lease held is renewed"
    );
    s.save_media_id(first_lease(done, "d1"), "media-1")
        .await
        .expect("media");
    assert!(
        !s.finish_delivery(first_lease(done, "d2"), DeliveryEnd::Sent)
            .await
            .expect("finish"),
        "only the holder finishes"
    );
    assert!(
        s.finish_delivery(first_lease(done, "d1"), DeliveryEnd::Sent)
            .await
            .expect("finish")
    );
    assert!(
        s.finish_delivery(first_lease(failed, "d1"), DeliveryEnd::Sent)
            .await
            .expect("finish")
    );
    assert_eq!(
        s.job_status(done).await.expect("status").as_deref(),
        Some("delivered")
    );
    assert_eq!(
        s.job_status(failed).await.expect("status").as_deref(),
        Some("failed")
    );
    assert!(
        s.lease_deliveries("d1", 10, 30.0, &accounts())
            .await
            .expect("lease")
            .is_empty(),
        "a told failure is not told again"
    );
}

async fn retries_wait_for_their_backoff_and_holds_wait_for_a_fetch(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    let id = finished_job(&*s, "u1", 1, true, 0.0).await;
    let held = finished_job(&*s, "u2", 2, true, 0.0).await;
    let leased = s
        .lease_deliveries("d1", 10, 30.0, &accounts())
        .await
        .expect("lease");
    assert_eq!(leased.len(), 2);
    s.save_media_id(first_lease(id, "d1"), "media-1")
        .await
        .expect("media");
    let retry = DeliveryEnd::Retry {
        after_secs: 0.6,
        error: "-1 busy",
    };
    assert!(
        s.finish_delivery(first_lease(id, "d1"), retry)
            .await
            .expect("finish")
    );
    let hold = DeliveryEnd::Held {
        hold: Hold::WindowClosed,
        error: "45015",
    };
    assert!(
        s.finish_delivery(first_lease(held, "d1"), hold)
            .await
            .expect("finish")
    );
    assert!(
        s.lease_deliveries("d1", 10, 30.0, &accounts())
            .await
            .expect("lease")
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let again = s
        .lease_deliveries("d2", 10, 30.0, &accounts())
        .await
        .expect("lease");
    assert_eq!(again.len(), 1, "held jobs stay held");
    assert_eq!(
        (
            again[0].job_id,
            again[0].delivery_attempts,
            again[0].media_id.as_deref()
        ),
        (id, 2, Some("media-1")),
        "the media id of the first attempt is reused"
    );
    // The follower fetches the held picture.
    let waiting = s
        .claim_waiting("wechat", "gh_d", "u2", "web-1", 10.0)
        .await
        .expect("claim");
    assert_eq!(waiting, Waiting::Picture { job_id: held });
    let fetch = inbound("u2", 99);
    let picture = Reply::Image {
        media_id: "m-held".into(),
    };
    s.submit(&Submission {
        refusal: None,
        limits: None,
        inbound: &fetch,
        job: None,
        reply: Reply::None,
    })
    .await
    .expect("submit fetch");
    assert!(
        s.finish_reply(held, "web-1", &fetch, &picture, "fetch")
            .await
            .expect("reply")
    );
    assert_eq!(
        s.job_status(held).await.expect("status").as_deref(),
        Some("delivered")
    );
    let retried = s
        .submit(&Submission {
            refusal: None,
            limits: None,
            inbound: &fetch,
            job: None,
            reply: Reply::None,
        })
        .await
        .expect("retry");
    assert_eq!(
        retried,
        store::Admission::Duplicate {
            reply: picture,
            job_id: None
        },
        "a retry of the fetch gets the same picture"
    );
    assert_eq!(
        s.claim_waiting("wechat", "gh_d", "u2", "web-1", 10.0)
            .await
            .expect("claim"),
        Waiting::Nothing
    );
    assert_eq!(
        s.claim_waiting("wechat", "gh_d", "u1", "web-1", 10.0)
            .await
            .expect("claim"),
        Waiting::InProgress,
        "a job being delivered is in progress"
    );
}

async fn the_fast_path_window_keeps_deliverers_away(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    let id = finished_job(&*s, "u1", 1, true, 30.0).await;
    assert!(
        s.lease_deliveries("d1", 10, 30.0, &accounts())
            .await
            .expect("lease")
            .is_empty(),
        "not due yet"
    );
    assert_eq!(
        s.claim_for_reply(id, "web-1", 10.0)
            .await
            .expect("claim")
            .as_deref(),
        Some("done")
    );
    assert_eq!(
        s.claim_for_reply(id, "web-2", 10.0).await.expect("claim"),
        None,
        "one claim at a time"
    );
    s.release_claim(id, "web-1").await.expect("release");
    assert!(
        s.claim_for_reply(id, "web-2", 10.0)
            .await
            .expect("claim")
            .is_some()
    );
    let m = inbound("u1", 1);
    let picture = Reply::Image {
        media_id: "m-fast".into(),
    };
    assert!(
        s.finish_reply(id, "web-2", &m, &picture, "passive")
            .await
            .expect("reply")
    );
    let retry = s
        .submit(&Submission {
            refusal: None,
            limits: None,
            inbound: &m,
            job: None,
            reply: Reply::None,
        })
        .await
        .expect("retry");
    assert_eq!(
        retry,
        store::Admission::Duplicate {
            reply: picture,
            job_id: Some(id)
        }
    );
}

async fn one_node_refreshes_the_token_and_expiry_is_compare_and_swap(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    let app = "wx_app";
    assert_eq!(
        s.account_state("wechat", app).await.expect("account"),
        Default::default()
    );
    assert!(
        s.claim_token_refresh("wechat", app, "a", 1_000, 15_000)
            .await
            .expect("claim")
    );
    assert!(
        !s.claim_token_refresh("wechat", app, "b", 2_000, 15_000)
            .await
            .expect("claim"),
        "a running claim keeps others out"
    );
    assert!(
        s.claim_token_refresh("wechat", app, "b", 17_000, 15_000)
            .await
            .expect("claim"),
        "an expired claim can be taken over"
    );
    s.save_token("wechat", app, "T1", 9_000_000)
        .await
        .expect("save");
    let state = s.account_state("wechat", app).await.expect("account");
    assert_eq!(
        state
            .token
            .as_ref()
            .map(|t| (t.token.as_str(), t.expires_ms)),
        Some(("T1", 9_000_000))
    );
    assert!(
        s.claim_token_refresh("wechat", app, "c", 18_000, 15_000)
            .await
            .expect("claim"),
        "saving ends the claim"
    );
    s.release_token_refresh("wechat", app, "c")
        .await
        .expect("release");
    assert!(
        !s.expire_token("wechat", app, "T0").await.expect("cas"),
        "a stale token expires nothing"
    );
    assert!(s.expire_token("wechat", app, "T1").await.expect("cas"));
    assert!(
        !s.expire_token("wechat", app, "T1").await.expect("cas"),
        "expired once"
    );
    assert_eq!(
        s.account_state("wechat", app)
            .await
            .expect("account")
            .token
            .map(|t| t.expires_ms),
        Some(0)
    );
    s.set_passive_only("wechat", app, true).await.expect("flag");
    assert!(
        s.account_state("wechat", app)
            .await
            .expect("account")
            .passive_only
    );
}

on_both_databases!(
    finished_jobs_are_leased_once_and_marked_delivered,
    retries_wait_for_their_backoff_and_holds_wait_for_a_fetch,
    the_fast_path_window_keeps_deliverers_away,
    one_node_refreshes_the_token_and_expiry_is_compare_and_swap,
);
