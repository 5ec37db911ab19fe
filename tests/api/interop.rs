//! Interoperability with an implementation we did not write: wechatpy encrypts and signs, huabi answers,
//! wechatpy verifies and decrypts the reply.

use std::path::PathBuf;

use crate::helpers::*;

#[tokio::test]
async fn wechatpy_client_drives_huabi_in_safe_mode() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let app = spawn_app(backend).await;
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/wechatpy_client.py");
        let python = test_python();
        let output = tokio::process::Command::new(&python)
            .arg(&script)
            .args([app.webhook_url().as_str(), TOKEN, AES_KEY, APP_ID])
            .output()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (run ./scripts/test, which creates .venv with wechatpy): {e}",
                    python.display()
                )
            });
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "wechatpy client failed on {backend:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
        let jobs = app.store.recent_jobs(10).await.expect("jobs");
        assert_eq!(jobs.len(), 1, "two posts of one message, one job");
        assert_eq!(jobs[0].prompt, result["prompt"].as_str().expect("prompt"));
        assert_eq!(
            jobs[0].source_msg_id,
            result["msg_id"].as_str().expect("msg id")
        );
        assert_eq!(jobs[0].user_id, "o_wechatpy");
    }
}
