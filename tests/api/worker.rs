//! From message to stored picture: a signed message through `/webhook/wechat`, painted by the in-process worker on
//! the real engine and small model, stored as a labelled JPEG — on PostgreSQL and SQLite.

use std::time::{Duration, Instant};

use huabi::app::Role;

use crate::helpers::*;

fn small_jobs(model: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HUABI__ENGINE__MODEL_DIR", model.to_string()),
        ("HUABI__ENGINE__THREADS", "2".into()),
        ("HUABI__JOBS__WIDTH", "64".into()),
        ("HUABI__JOBS__HEIGHT", "64".into()),
        ("HUABI__JOBS__STEPS", "2".into()),
        ("HUABI__ENGINE__AIGC_PROVIDER", "huabi-e2e".into()),
    ]
}

async fn messages_become_labelled_pictures(backend: Backend) {
    let model = format!("{}/models/tiny-sd", env!("CARGO_MANIFEST_DIR"));
    let env = small_jobs(&model);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = spawn_app_roles(backend, &extra, &[Role::Web, Role::Worker]).await;
    for n in 0..3 {
        let (status, _) = app
            .post_plain(&text_xml(&format!("o_{n}"), 7000 + n, "嫦娥抱玉兔"))
            .await;
        assert_eq!(status, 200);
    }
    let jobs = app.store.recent_jobs(10).await.expect("jobs");
    assert_eq!(jobs.len(), 3);
    let deadline = Instant::now() + Duration::from_secs(60);
    for job in &jobs {
        loop {
            let status = app.store.job_status(job.id).await.expect("status");
            if status.as_deref() == Some("done") {
                break;
            }
            assert!(Instant::now() < deadline, "job {} still {status:?}", job.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let jpeg = app
            .store
            .job_image(job.id)
            .await
            .expect("image")
            .expect("stored");
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        assert!(jpeg.len() <= 2 * 1024 * 1024);
        let text = String::from_utf8_lossy(&jpeg);
        assert!(
            text.contains("huabi-e2e")
                && text.contains(&format!("&quot;ProduceID&quot;:&quot;{}&quot;", job.id))
        );
    }
}

#[tokio::test]
async fn sqlite_messages_become_labelled_pictures() {
    messages_become_labelled_pictures(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_messages_become_labelled_pictures() {
    messages_become_labelled_pictures(Backend::Postgres).await;
}

#[tokio::test]
async fn an_invalid_job_fails_alone_and_its_batch_neighbours_are_painted() {
    use huabi::engine::EngineHandle;
    use huabi::model::NewJob;
    use huabi::model::{Inbound, InboundKind, Reply};
    use huabi::queue::{Outcome, Worker};
    use huabi::store::{self, Admission, Submission};

    let db = TestDb::new(Backend::Sqlite).await;
    let model = format!("{}/models/tiny-sd", env!("CARGO_MANIFEST_DIR"));
    let env = small_jobs(&model);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = settings(&db.url, &extra);
    let store = store::connect(&s.database).await.expect("connect");
    store.migrate().await.expect("migrate");
    let mut ids = Vec::new();
    for (n, prompt) in [
        (1, "月亮".to_string()),
        (2, "月".repeat(5000)),
        (3, "灯笼".to_string()),
    ] {
        let inbound = Inbound {
            channel: "wechat",
            account: "gh".into(),
            user_id: format!("u{n}"),
            message_id: Some(n.to_string()),
            dedup_key: format!("m:{n}"),
            sent_at: 1,
            kind: InboundKind::Text {
                content: prompt.clone(),
            },
        };
        let submission = Submission {
            refusal: None,
            limits: None,
            inbound: &inbound,
            job: Some(NewJob::new(prompt, &s.jobs)),
            reply: Reply::None,
        };
        let Admission::Accepted { job_id: Some(id) } =
            store.submit(&submission).await.expect("submit")
        else {
            panic!("no job")
        };
        ids.push(id);
    }
    let engine = EngineHandle::spawn(s.engine.clone()).expect("engine");
    let worker = Worker::new(
        store.clone(),
        engine,
        "w-test".into(),
        s.jobs.clone(),
        4,
        "huabi-test".into(),
        tokio::sync::broadcast::channel(16).0,
    );
    assert_eq!(
        worker.run_once().await.expect("run"),
        Outcome::Painted { done: 2, failed: 1 }
    );
    assert_eq!(
        store.job_status(ids[0]).await.expect("status").as_deref(),
        Some("done")
    );
    assert_eq!(
        store.job_status(ids[1]).await.expect("status").as_deref(),
        Some("failed"),
        "invalid input fails at once"
    );
    assert_eq!(
        store.job_status(ids[2]).await.expect("status").as_deref(),
        Some("done")
    );
    assert_eq!(worker.run_once().await.expect("run"), Outcome::Empty);
}
