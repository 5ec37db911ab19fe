//! The console in a real browser: Debian's Chromium driven over WebDriver (chromedriver; `scripts/test` installs
//! both). Logs in, refuses an invalid campaign window inline and accepts the fix, rolls a revision back, previews a
//! prompt and paints a preview, chats `中秋 嫦娥抱玉兔` and sees the picture arrive, sees the usage charts drawn —
//! and saves a screenshot of every page at laptop and phone sizes under `target/browser-screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use huabi::app::Role;
use serde_json::{Value, json};

use crate::admin::add_user;
use crate::helpers::*;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session on a chromedriver this test started.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: scripts/test installs Debian's chromium and chromium-driver"
            );
        }
        let port = free_port();
        let driver = tokio::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("profile");
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--lang=zh-CN",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
            }}}))
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot folder");
        Browser {
            http,
            base: format!("{base}/session/{session}"),
            session,
            _driver: driver,
            _profile: profile,
            shots,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let request = self.http.request(method, format!("{}{path}", self.base));
        let request = if body.is_null() {
            request
        } else {
            request.json(&body)
        };
        let answer: Value = request
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        if answer["value"].get("error").is_some() {
            panic!("WebDriver {path}: {answer}");
        }
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// The first element matching `css`, waiting up to 15 s for it.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let answer: Value = self
                .http
                .post(format!("{}/element", self.base))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .expect("webdriver")
                .json()
                .await
                .expect("json");
            if let Some(id) = answer["value"][ELEMENT].as_str() {
                return id.to_string();
            }
            assert!(Instant::now() < deadline, "no element {css}: {answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            json!({}),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    /// Clicks `css` and waits for the page it leads to (the old document is marked, the new one is not).
    async fn submit(&self, css: &str) {
        self.script("window.__huabiOld = true;").await;
        self.click(css).await;
        self.until(
            "the next page",
            "return !window.__huabiOld && document.readyState === 'complete';",
        )
        .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Waits until `script` returns true.
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.script(script).await != Value::Bool(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self) -> String {
        self.script("return document.body.innerText;")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Screenshots of the page at laptop and phone sizes.
    async fn shoot(&self, name: &str) {
        for (size, width, height) in [("laptop", 1280, 900), ("phone", 390, 844)] {
            self.call(
                reqwest::Method::POST,
                "/window/rect",
                json!({"width": width, "height": height}),
            )
            .await;
            let png = self
                .call(reqwest::Method::GET, "/screenshot", Value::Null)
                .await;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(png.as_str().expect("base64"))
                .expect("png");
            std::fs::write(self.shots.join(format!("{name}-{size}.png")), bytes)
                .expect("write screenshot");
        }
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": 1280, "height": 900}),
        )
        .await;
    }
}

impl Browser {
    /// Ends the session (closing Chromium); chromedriver stops when dropped.
    async fn quit(self) {
        let _ = self
            .http
            .delete(&self.base)
            .send()
            .await
            .map(|_| &self.session);
    }
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let model = format!("{}/models/tiny-sd", env!("CARGO_MANIFEST_DIR"));
    let app = spawn_app_roles(
        Backend::Sqlite,
        &[
            ("HUABI__ENGINE__MODEL_DIR", &model),
            ("HUABI__ENGINE__THREADS", "2"),
            ("HUABI__ADMIN__PREVIEW_SIZE", "128"),
            ("HUABI__JOBS__WIDTH", "128"),
            ("HUABI__JOBS__HEIGHT", "128"),
            ("HUABI__JOBS__STEPS", "2"),
        ],
        &[Role::Web, Role::Worker],
    )
    .await;
    add_user(&app, "alice", "admin", "correct horse battery").await;
    let site = format!("http://{}", app.addr);
    let b = Browser::start().await;

    b.open(&format!("{site}/admin")).await;
    b.find("input[name=user]").await;
    b.shoot("login").await;
    b.type_into("input[name=user]", "alice").await;
    b.type_into("input[name=password]", "correct horse battery")
        .await;
    b.submit("form button[type=submit]").await;
    b.until("the overview", "return document.title.startsWith('总览');")
        .await;
    b.shoot("overview").await;

    // An invalid window is refused inline; the fix is saved.
    b.open(&format!("{site}/admin/campaigns/mid-autumn")).await;
    b.type_into("input[name=ends_at]", "2019-01-01T00:00:00+08:00")
        .await;
    b.type_into("input[name=width]", "128").await;
    b.type_into("input[name=height]", "128").await;
    b.type_into("input[name=steps]", "2").await;
    b.submit("form.grid button[type=submit]").await;
    b.until(
        "the inline error",
        "return !!document.querySelector('p.error');",
    )
    .await;
    assert!(b.text().await.contains("ends_at must be after starts_at"));
    b.shoot("campaign-invalid").await;
    b.type_into("input[name=ends_at]", "2099-01-01T00:00:00+08:00")
        .await;
    b.submit("form.grid button[type=submit]").await;
    b.until(
        "the saved notice",
        "return !!document.querySelector('p.ok');",
    )
    .await;

    // Roll back to the first revision (the shipped definition), then save the small size again.
    b.click("details:last-of-type summary").await;
    b.submit("details:last-of-type form button").await;
    b.until("the rollback", "return !!document.querySelector('p.ok');")
        .await;
    let revisions = app
        .store
        .campaign_revisions("mid-autumn")
        .await
        .expect("revisions");
    assert_eq!(revisions.len(), 3);
    assert_eq!(revisions[2].definition, revisions[0].definition);
    b.type_into("input[name=width]", "128").await;
    b.type_into("input[name=height]", "128").await;
    b.type_into("input[name=steps]", "2").await;
    b.submit("form.grid button[type=submit]").await;
    b.until(
        "the saved notice",
        "return !!document.querySelector('p.ok');",
    )
    .await;

    // The prompt a subject becomes (htmx as it is typed), and a preview painting.
    b.type_into("#subject", "嫦娥抱玉兔").await;
    b.until(
        "the English prompt",
        "return (document.querySelector('#prompt code')||{}).textContent?.includes(\"Chang'e\") === true;",
    )
    .await;
    b.submit("#preview form[action$=preview] button").await;
    b.until(
        "the preview picture",
        "const i = document.querySelector('.job-card img'); return !!i && i.complete && i.naturalWidth > 0;",
    )
    .await;
    b.shoot("campaign-preview").await;

    // The test chat, pretending the campaign runs: the picture arrives in the log.
    b.open(&format!("{site}/admin/chat")).await;
    b.find("select[name=pretend]").await;
    b.script("document.querySelector('select[name=pretend]').value = 'mid-autumn';")
        .await;
    b.type_into("input[name=text]", "中秋 嫦娥抱玉兔").await;
    b.click(".chat-form button[type=submit]").await;
    b.until(
        "the chat picture",
        "const i = document.querySelector('#log .job-card img'); return !!i && i.complete && i.naturalWidth > 0;",
    )
    .await;
    assert!(b.text().await.contains("中秋的画"));
    b.shoot("chat").await;

    // Usage: the charts are drawn.
    b.open(&format!("{site}/admin/usage")).await;
    b.until(
        "the charts",
        "return document.body.getAttribute('data-charts') === 'drawn';",
    )
    .await;
    b.shoot("usage").await;
    for (page, path) in [
        ("campaigns", "/admin/campaigns"),
        ("words", "/admin/words"),
        ("jobs", "/admin/jobs"),
        ("audit", "/admin/audit"),
        ("users", "/admin/users"),
        (
            "follower",
            "/admin/followers/console%3Aalice?channel=console&account=chat",
        ),
    ] {
        b.open(&format!("{site}{path}")).await;
        b.find("main h1").await;
        b.shoot(page).await;
    }
    assert!(b.text().await.contains("console:alice"));
    b.quit().await;
}
