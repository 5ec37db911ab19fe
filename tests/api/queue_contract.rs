//! The job queue's store contract, run unchanged against PostgreSQL and SQLite: batching by parameters, leases,
//! takeover after expiry, heartbeats, bounded attempts, completion only by the lease holder.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use huabi::model::NewJob;
use huabi::model::{Inbound, InboundKind, Reply};
use huabi::store::{self, JobFate, JobRefusal, Painted, Store, Submission};

use crate::helpers::{Backend, TestDb, settings};

async fn store_for(db: &TestDb) -> Arc<dyn Store> {
    let store = store::connect(&settings(&db.url, &[]).database)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

async fn add_job(store: &dyn Store, n: u32, width: u32) -> i64 {
    let inbound = Inbound {
        channel: "wechat",
        account: "gh_q".into(),
        user_id: format!("u{n}"),
        message_id: Some(n.to_string()),
        dedup_key: format!("m:{n}"),
        sent_at: 1,
        kind: InboundKind::Text {
            content: format!("prompt {n}"),
        },
    };
    let job = NewJob {
        width,
        ..NewJob::new(
            format!("prompt {n}"),
            &settings("sqlite://unused", &[]).jobs,
        )
    };
    match store
        .submit(&Submission {
            refusal: None,
            limits: None,
            inbound: &inbound,
            job: Some(job),
            reply: Reply::None,
        })
        .await
        .expect("submit")
    {
        store::Admission::Accepted { job_id: Some(id) } => id,
        other => panic!("{other:?}"),
    }
}

async fn lease_groups_by_parameters_oldest_first(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    let a1 = add_job(&*s, 1, 512).await;
    let b1 = add_job(&*s, 2, 256).await;
    let a2 = add_job(&*s, 3, 512).await;
    let a3 = add_job(&*s, 4, 512).await;
    let first = s
        .lease_jobs("w1", &crate::helpers::paints_default(), 10, 30.0, 3)
        .await
        .expect("lease");
    assert_eq!(
        first.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a1, a2, a3]
    );
    assert!(first.iter().all(|j| j.width == 512
        && j.attempts == 1
        && j.seed >= 0
        && j.steps == 20
        && j.scheduler == "euler"));
    assert!((first[0].guidance - 7.5).abs() < 1e-6);
    let second = s
        .lease_jobs("w1", &crate::helpers::paints_default(), 10, 30.0, 3)
        .await
        .expect("lease");
    assert_eq!((second.len(), second[0].id, second[0].width), (1, b1, 256));
    assert!(
        s.lease_jobs("w2", &crate::helpers::paints_default(), 10, 30.0, 3)
            .await
            .expect("lease")
            .is_empty()
    );
    assert_eq!(
        s.job_status(a1).await.expect("status").as_deref(),
        Some("running")
    );
}

async fn concurrent_workers_never_share_a_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    for n in 0..30 {
        add_job(&*s, n, 512).await;
    }
    let mut workers = Vec::new();
    for w in 0..5 {
        let s = s.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s
                    .lease_jobs(
                        &format!("w{w}"),
                        &crate::helpers::paints_default(),
                        4,
                        30.0,
                        3,
                    )
                    .await
                    .expect("lease");
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(
        (all.len(), distinct.len()),
        (30, 30),
        "every job leased exactly once"
    );
}

async fn expired_leases_are_taken_over_and_only_the_holder_completes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    let id = add_job(&*s, 1, 512).await;
    let a = s
        .lease_jobs("worker-a", &crate::helpers::paints_default(), 1, 0.2, 3)
        .await
        .expect("lease");
    assert!(
        s.lease_jobs("worker-b", &crate::helpers::paints_default(), 1, 30.0, 3)
            .await
            .expect("lease")
            .is_empty(),
        "lease still held"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let b = s
        .lease_jobs("worker-b", &crate::helpers::paints_default(), 1, 30.0, 3)
        .await
        .expect("takeover");
    assert_eq!((b.len(), b[0].id, b[0].attempts), (1, id, 2));
    if backend == Backend::Postgres {
        assert_eq!(b[0].taken_from.as_deref(), Some("worker-a"));
    }
    assert_eq!(b[0].seed, a[0].seed, "the seed is kept on retries");
    assert!(
        !s.complete_job(a[0].lease("worker-a"), b"late", 1)
            .await
            .expect("complete"),
        "the old holder lost the lease"
    );
    assert_eq!(
        s.fail_job(a[0].lease("worker-a"), "late", 3)
            .await
            .expect("fail"),
        JobFate::LeaseLost
    );
    assert!(
        s.complete_job(b[0].lease("worker-b"), b"\xFF\xD8jpeg", 1)
            .await
            .expect("complete")
    );
    assert_eq!(
        s.job_status(id).await.expect("status").as_deref(),
        Some("done")
    );
    assert_eq!(
        s.job_image(id).await.expect("image").as_deref(),
        Some(&b"\xFF\xD8jpeg"[..])
    );
    assert!(
        !s.complete_job(b[0].lease("worker-b"), b"again", 1)
            .await
            .expect("complete"),
        "done only once"
    );
}

async fn heartbeats_keep_leases(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    add_job(&*s, 1, 512).await;
    assert_eq!(
        s.lease_jobs("w1", &crate::helpers::paints_default(), 1, 0.3, 3)
            .await
            .expect("lease")
            .len(),
        1
    );
    assert_eq!(s.heartbeat("w1", 30.0).await.expect("heartbeat"), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.lease_jobs("w2", &crate::helpers::paints_default(), 1, 30.0, 3)
            .await
            .expect("lease")
            .is_empty()
    );
}

async fn attempts_are_bounded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    let crashed = add_job(&*s, 1, 512).await;
    for _ in 0..2 {
        assert_eq!(
            s.lease_jobs("w", &crate::helpers::paints_default(), 1, 0.1, 2)
                .await
                .expect("lease")
                .len(),
            1
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        s.lease_jobs("w", &crate::helpers::paints_default(), 1, 0.1, 2)
            .await
            .expect("lease")
            .is_empty(),
        "no third attempt"
    );
    assert_eq!(s.fail_exhausted(2).await.expect("exhausted"), vec![crashed]);
    assert_eq!(
        s.job_status(crashed).await.expect("status").as_deref(),
        Some("failed")
    );

    let erring = add_job(&*s, 2, 512).await;
    let first = s
        .lease_jobs("w", &crate::helpers::paints_default(), 1, 30.0, 2)
        .await
        .expect("lease");
    assert_eq!(first[0].id, erring);
    assert_eq!(
        s.fail_job(first[0].lease("w"), "boom", 2)
            .await
            .expect("fail"),
        JobFate::Requeued
    );
    let second = s
        .lease_jobs("w", &crate::helpers::paints_default(), 1, 30.0, 2)
        .await
        .expect("lease");
    assert_eq!(
        s.fail_job(second[0].lease("w"), "boom", 2)
            .await
            .expect("fail"),
        JobFate::Failed
    );
    assert_eq!(
        s.job_status(erring).await.expect("status").as_deref(),
        Some("failed")
    );
}

async fn released_leases_do_not_count_as_attempts(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    add_job(&*s, 1, 512).await;
    s.lease_jobs("w1", &crate::helpers::paints_default(), 1, 30.0, 3)
        .await
        .expect("lease");
    assert_eq!(s.release_leases("w1").await.expect("release"), 1);
    let again = s
        .lease_jobs("w2", &crate::helpers::paints_default(), 1, 30.0, 3)
        .await
        .expect("lease");
    assert_eq!(again[0].attempts, 1);
}

/// A result is stored only under the lease it was painted under: a holder whose lease expired and who leased the
/// same job again cannot store the first lease's result, nor can it after another worker took the job over and
/// finished it.
async fn results_are_fenced_by_holder_and_attempt(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store_for(&db).await;
    let id = add_job(&*s, 1, 512).await;
    let can = crate::helpers::paints_default();
    let first = s.lease_jobs("w", &can, 1, 0.2, 5).await.expect("lease");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let second = s.lease_jobs("w", &can, 1, 0.2, 5).await.expect("lease");
    assert_eq!((second[0].id, second[0].attempts), (id, 2));
    let painted = Painted {
        prompt: Some("late"),
        negative: None,
        translate_ms: 1.0,
    };
    assert!(
        !s.save_translation(first[0].lease("w"), &painted)
            .await
            .expect("translation"),
        "the first lease's translation is refused"
    );
    let refusal = JobRefusal {
        reason: "unsafe",
        notice: "no",
        error: "late",
        jpeg: None,
    };
    assert!(
        !s.refuse_job(first[0].lease("w"), &refusal)
            .await
            .expect("refuse")
    );
    assert!(
        !s.complete_job(first[0].lease("w"), b"first", 1)
            .await
            .expect("complete"),
        "the first lease's picture is refused"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let other = s.lease_jobs("w2", &can, 1, 30.0, 5).await.expect("lease");
    assert_eq!(other[0].attempts, 3);
    assert!(
        s.complete_job(other[0].lease("w2"), b"\xFF\xD8third", 1)
            .await
            .expect("complete")
    );
    assert!(
        !s.complete_job(second[0].lease("w"), b"second", 1)
            .await
            .expect("complete"),
        "a late result after the takeover finished is refused"
    );
    assert_eq!(
        s.fail_job(second[0].lease("w"), "late", 5)
            .await
            .expect("fail"),
        JobFate::LeaseLost
    );
    assert_eq!(
        s.job_image(id).await.expect("image").as_deref(),
        Some(&b"\xFF\xD8third"[..])
    );
}

on_both_databases!(
    results_are_fenced_by_holder_and_attempt,
    lease_groups_by_parameters_oldest_first,
    concurrent_workers_never_share_a_job,
    expired_leases_are_taken_over_and_only_the_holder_completes,
    heartbeats_keep_leases,
    attempts_are_bounded,
    released_leases_do_not_count_as_attempts,
);
