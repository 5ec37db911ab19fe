//! One contract suite, run unchanged against PostgreSQL and SQLite.

use std::sync::Arc;

use huabi::model::NewJob;
use huabi::model::{Event, Inbound, InboundKind, Reply};
use huabi::store::{self, Admission, Store, Submission};

use crate::helpers::{Backend, TestDb, settings};

async fn store_for(db: &TestDb) -> Arc<dyn Store> {
    let s = settings(&db.url, &[]);
    let store = store::connect(&s.database).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

fn text(user: &str, msg_id: &str, content: &str) -> Inbound {
    Inbound {
        channel: "wechat",
        account: "gh_a".into(),
        user_id: user.into(),
        message_id: Some(msg_id.into()),
        dedup_key: format!("m:{msg_id}:1:{user}"),
        sent_at: 1,
        kind: InboundKind::Text {
            content: content.into(),
        },
    }
}

fn job(prompt: impl Into<String>) -> NewJob {
    NewJob::new(prompt, &settings("sqlite://unused", &[]).jobs)
}

fn reply(t: &str) -> Reply {
    Reply::Text { text: t.into() }
}

async fn first_submission_creates_a_queued_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store_for(&db).await;
    let m = text("u1", "100", "月亮");
    let got = store
        .submit(&Submission {
            refusal: None,
            limits: None,
            inbound: &m,
            job: Some(job("月亮")),
            reply: reply("ok"),
        })
        .await
        .expect("submit");
    let Admission::Accepted { job_id: Some(id) } = got else {
        panic!("expected a job, got {got:?}")
    };
    let jobs = store.recent_jobs(10).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(
        (job.id, job.channel.as_str(), job.account.as_str()),
        (id, "wechat", "gh_a")
    );
    assert_eq!(
        (
            job.user_id.as_str(),
            job.source_msg_id.as_str(),
            job.prompt.as_str()
        ),
        ("u1", "100", "月亮")
    );
    assert_eq!(job.status, "queued");
    let age = time::OffsetDateTime::now_utc() - job.created_at;
    assert!(age.whole_seconds().abs() < 60, "created_at is now: {age}");
}

async fn retry_gets_the_same_reply_and_no_second_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store_for(&db).await;
    let m = text("u1", "101", "桂花");
    let first = Submission {
        refusal: None,
        limits: None,
        inbound: &m,
        job: Some(job("桂花")),
        reply: reply("first reply"),
    };
    let Admission::Accepted {
        job_id: Some(job_id),
    } = store.submit(&first).await.expect("submit")
    else {
        panic!("no job")
    };
    // The retry computes a different reply; the stored one wins.
    let retry = Submission {
        refusal: None,
        limits: None,
        inbound: &m,
        job: Some(job("桂花")),
        reply: reply("other"),
    };
    for _ in 0..3 {
        assert_eq!(
            store.submit(&retry).await.expect("retry"),
            Admission::Duplicate {
                reply: reply("first reply"),
                job_id: Some(job_id),
            }
        );
    }
    assert_eq!(
        store.counts().await.expect("counts"),
        huabi::store::Counts {
            inbound: 1,
            jobs: 1
        }
    );
}

async fn messages_without_jobs_are_deduplicated_too(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store_for(&db).await;
    let m = Inbound {
        message_id: None,
        dedup_key: "e:u2:5:subscribe:".into(),
        kind: InboundKind::Event(Event::Subscribe { scene: None }),
        ..text("u2", "x", "")
    };
    let s = Submission {
        refusal: None,
        limits: None,
        inbound: &m,
        job: None,
        reply: reply("welcome"),
    };
    assert_eq!(
        store.submit(&s).await.expect("submit"),
        Admission::Accepted { job_id: None }
    );
    assert_eq!(
        store.submit(&s).await.expect("retry"),
        Admission::Duplicate {
            reply: reply("welcome"),
            job_id: None,
        }
    );
    let silent = Inbound {
        dedup_key: "e:u2:6:unsubscribe:".into(),
        ..m.clone()
    };
    let s = Submission {
        refusal: None,
        limits: None,
        inbound: &silent,
        job: None,
        reply: Reply::None,
    };
    store.submit(&s).await.expect("submit");
    assert_eq!(
        store.submit(&s).await.expect("retry"),
        Admission::Duplicate {
            reply: Reply::None,
            job_id: None,
        }
    );
    assert_eq!(
        store.counts().await.expect("counts"),
        huabi::store::Counts {
            inbound: 2,
            jobs: 0
        }
    );
}

async fn same_msg_id_from_different_users_or_accounts_are_different_messages(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store_for(&db).await;
    let a = text("ua", "7", "a");
    let b = text("ub", "7", "b");
    let c = Inbound {
        account: "gh_other".into(),
        ..a.clone()
    };
    for m in [&a, &b, &c] {
        let s = Submission {
            refusal: None,
            limits: None,
            inbound: m,
            job: Some(job("p")),
            reply: reply("r"),
        };
        assert!(matches!(
            store.submit(&s).await.expect("submit"),
            Admission::Accepted { job_id: Some(_) }
        ));
    }
    assert_eq!(store.counts().await.expect("counts").jobs, 3);
}

async fn concurrent_retries_admit_exactly_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store_for(&db).await;
    let mut tasks = Vec::new();
    for msg in 0..10 {
        for _ in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let m = text("racer", &format!("9{msg}"), "race");
                store
                    .submit(&Submission {
                        refusal: None,
                        limits: None,
                        inbound: &m,
                        job: Some(job("race")),
                        reply: reply("r"),
                    })
                    .await
                    .expect("submit")
            }));
        }
    }
    let mut accepted = 0;
    for t in tasks {
        match t.await.expect("task") {
            Admission::Accepted { job_id: Some(_) } => accepted += 1,
            Admission::Duplicate { reply: r, job_id } => {
                assert_eq!(r, reply("r"));
                assert!(job_id.is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted, 10);
    assert_eq!(
        store.counts().await.expect("counts"),
        huabi::store::Counts {
            inbound: 10,
            jobs: 10
        }
    );
}

async fn unicode_and_quotes_survive_storage(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store_for(&db).await;
    let prompt = "嫦娥抱玉兔 '); DROP TABLE jobs; -- 🌕 \"quoted\" \\ ]]>";
    let m = text("u'1", "5", prompt);
    store
        .submit(&Submission {
            refusal: None,
            limits: None,
            inbound: &m,
            job: Some(job(prompt)),
            reply: reply(prompt),
        })
        .await
        .expect("submit");
    assert_eq!(store.recent_jobs(1).await.expect("jobs")[0].prompt, prompt);
    let dup = store
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
        dup,
        Admission::Duplicate {
            reply: reply(prompt),
            job_id: Some(store.recent_jobs(1).await.expect("jobs")[0].id),
        }
    );
}

async fn migrations_are_idempotent_and_ping_works(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store_for(&db).await;
    store.migrate().await.expect("second migrate is a no-op");
    store.ping().await.expect("ping");
    assert_eq!(
        store.backend(),
        match backend {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    );
}

on_both_databases!(
    first_submission_creates_a_queued_job,
    retry_gets_the_same_reply_and_no_second_job,
    messages_without_jobs_are_deduplicated_too,
    same_msg_id_from_different_users_or_accounts_are_different_messages,
    concurrent_retries_admit_exactly_once,
    unicode_and_quotes_survive_storage,
    migrations_are_idempotent_and_ping_works,
);

#[test]
fn migration_folders_have_the_same_file_names() {
    let names = |dir: &str| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    };
    let pg = names(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"));
    assert!(!pg.is_empty());
    assert_eq!(
        pg,
        names(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
    );
}

#[tokio::test]
async fn unreachable_postgres_is_an_error_not_a_skip() {
    let s = settings(
        "postgres://postgres@127.0.0.1:1/none",
        &[("HUABI__DATABASE__ACQUIRE_TIMEOUT_SECS", "1")],
    );
    assert!(store::connect(&s.database).await.is_err());
    let s = settings("mysql://x", &[]);
    let err = store::connect(&s.database)
        .await
        .err()
        .expect("unsupported");
    assert!(
        err.to_string().contains("unsupported database URL"),
        "{err}"
    );
}
