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
            .post_plain(&text_xml(&format!("o_{n}"), 7000 + n, "中秋 嫦娥抱玉兔"))
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
