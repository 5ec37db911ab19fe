//! The console over HTTP, on both databases: absent until a user exists; sessions, CSRF, throttled logins, roles;
//! every change audited; the test chat and campaign previews go through the webhook's own use case; a saved campaign
//! reaches the webhook at once.

use std::time::{Duration, Instant};

use huabi::admin::auth;
use reqwest::StatusCode;
use reqwest::header::{LOCATION, RETRY_AFTER, SET_COOKIE};

use crate::helpers::*;

/// A browser-like client of one app: keeps the session cookie and the page's CSRF token.
pub struct Console {
    base: String,
    client: reqwest::Client,
    cookies: Vec<(String, String)>,
    /// The CSRF token of the last page read.
    pub csrf: String,
}

/// The value of the first `name="csrf" value="…"` in a page.
fn csrf_of(body: &str) -> Option<String> {
    let at = body.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(body[at..].split('"').next()?.to_string())
}

impl Console {
    pub fn new(app: &TestApp) -> Self {
        Self::at(format!("http://{}", app.addr))
    }

    /// A client of the node at `base` (`http://host:port`).
    pub fn at(base: String) -> Self {
        Self {
            base,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: Vec::new(),
            csrf: String::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(SET_COOKIE) {
            let text = value.to_str().expect("cookie");
            let (pair, _) = text.split_once(';').unwrap_or((text, ""));
            let (k, v) = pair.split_once('=').expect("name=value");
            self.cookies.retain(|(name, _)| name != k);
            if !v.is_empty() {
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
    }

    /// GET `path`; returns status, body and the response's Location.
    pub async fn get(&mut self, path: &str) -> (StatusCode, String, Option<String>) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("get");
        self.keep_cookies(&response);
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().expect("location").to_string());
        let body = response.text().await.expect("body");
        if let Some(csrf) = csrf_of(&body) {
            self.csrf = csrf;
        }
        (status, body, location)
    }

    /// POSTs a form to `path`, with the CSRF token unless `csrf` is false.
    pub async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        csrf: bool,
    ) -> reqwest::Response {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let token = self.csrf.clone();
        if csrf {
            fields.push(("csrf", &token));
        }
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(&fields)
            .send()
            .await
            .expect("post");
        self.keep_cookies(&response);
        response
    }

    /// Logs in; returns the login response's status.
    pub async fn log_in(&mut self, user: &str, password: &str) -> reqwest::Response {
        self.get("/admin/login").await;
        self.post(
            "/admin/login",
            &[
                ("user", user),
                ("password", password),
                ("next", "/admin/campaigns"),
            ],
            true,
        )
        .await
    }
}

pub async fn add_user(app: &TestApp, name: &str, role: &str, password: &str) {
    let hash = auth::hash_password(password).expect("hash");
    app.store
        .save_admin_user(name, role, Some(&hash), false)
        .await
        .expect("user");
}

const PASSWORD: &str = "correct horse battery";

async fn absent_until_a_user_exists_then_every_route_needs_a_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = Console::new(&app);
    for path in [
        "/admin",
        "/admin/login",
        "/admin/campaigns",
        "/admin/assets/admin.css",
    ] {
        assert_eq!(c.get(path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    add_user(&app, "alice", "admin", PASSWORD).await;
    for path in [
        "/admin",
        "/admin/campaigns",
        "/admin/campaigns/mid-autumn",
        "/admin/chat",
        "/admin/words",
        "/admin/usage",
        "/admin/usage.json",
        "/admin/jobs",
        "/admin/followers/o_1",
        "/admin/audit",
        "/admin/users",
    ] {
        let (status, _, location) = c.get(path).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert!(
            location
                .as_deref()
                .is_some_and(|l| l.starts_with("/admin/login?next=")),
            "{path}: {location:?}"
        );
    }
    for path in [
        "/admin/words",
        "/admin/chat",
        "/admin/campaigns/import",
        "/admin/users",
        "/admin/logout",
    ] {
        let response = c.post(path, &[("word", "x")], false).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(
        c.get("/admin/assets/htmx-2.0.11.min.js").await.0,
        StatusCode::OK
    );
    // Logging in lands on the page asked for; the cookie is HttpOnly and SameSite=Strict.
    let response = c.log_in("alice", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/admin/campaigns");
    let set: Vec<&str> = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("huabi_admin="))
        .expect("session cookie");
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Strict")
            && !session.contains("Secure")
    );
    let (status, body, _) = c.get("/admin/campaigns").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("mid-autumn") && body.contains("活动"),
        "{body}"
    );
    // Logging out ends the session on the server: the old cookie is worthless.
    let stolen = c.cookies.clone();
    c.get("/admin").await;
    assert_eq!(
        c.post("/admin/logout", &[], true).await.status(),
        StatusCode::SEE_OTHER
    );
    c.cookies = stolen;
    assert_eq!(c.get("/admin").await.0, StatusCode::SEE_OTHER);
}

async fn logins_are_throttled_and_forms_need_their_token(backend: Backend) {
    let app = spawn_app(backend).await;
    add_user(&app, "alice", "admin", PASSWORD).await;
    let mut c = Console::new(&app);
    // A login form without its token changes nothing.
    c.get("/admin/login").await;
    let response = c
        .post(
            "/admin/login",
            &[("user", "alice"), ("password", PASSWORD)],
            false,
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    for _ in 0..5 {
        assert_eq!(
            c.log_in("alice", "wrong password!").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let response = c.log_in("alice", PASSWORD).await;
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    let retry: i64 = response.headers()[RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=900).contains(&retry), "{retry}");
    // Another user from the same address is throttled too (five failures from one address).
    add_user(&app, "bob", "viewer", PASSWORD).await;
    assert_eq!(
        c.log_in("bob", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Forms without the session's token: 403 and nothing stored.
    let app = spawn_app(backend).await;
    add_user(&app, "carol", "editor", PASSWORD).await;
    let mut c = Console::new(&app);
    assert_eq!(
        c.log_in("carol", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    c.get("/admin/words").await;
    assert_eq!(
        c.post("/admin/words", &[("word", "坏词")], false)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let stale = c.csrf.clone();
    c.csrf = "not-the-token".into();
    assert_eq!(
        c.post("/admin/words", &[("word", "坏词")], true)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert!(
        app.store
            .filter_word_entries()
            .await
            .expect("words")
            .is_empty()
    );
    c.csrf = stale;
    assert_eq!(
        c.post("/admin/words", &[("word", "坏词")], true)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        app.store.filter_word_entries().await.expect("words").len(),
        1
    );
}

async fn roles_decide_who_changes_what_and_changes_are_audited(backend: Backend) {
    let app = spawn_app(backend).await;
    add_user(&app, "vera", "viewer", PASSWORD).await;
    add_user(&app, "ed", "editor", PASSWORD).await;
    let mut viewer = Console::new(&app);
    viewer.log_in("vera", PASSWORD).await;
    viewer.get("/admin/words").await;
    assert_eq!(
        viewer
            .post("/admin/words", &[("word", "x")], true)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(viewer.get("/admin/users").await.0, StatusCode::FORBIDDEN);
    assert_eq!(viewer.get("/admin/chat").await.0, StatusCode::FORBIDDEN);
    let mut editor = Console::new(&app);
    editor.log_in("ed", PASSWORD).await;
    editor.get("/admin/words").await;
    assert_eq!(
        editor
            .post("/admin/words", &[("word", "违禁")], true)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        editor
            .post(
                "/admin/users",
                &[
                    ("name", "mallory"),
                    ("role", "admin"),
                    ("password", "0123456789ab")
                ],
                true
            )
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert!(
        app.store
            .admin_user("mallory")
            .await
            .expect("user")
            .is_none()
    );
    // The word reaches the filter at once: the webhook blocks it, and so does the chat.
    let deadline = Instant::now() + Duration::from_secs(2);
    // A new MsgId each time: a retry of one message would repeat its first answer.
    for msg_id in 1.. {
        let (_, body) = app
            .post_plain(&text_xml("o_w", msg_id, "画一张违禁的图"))
            .await;
        if body.contains("画不了") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new word did not reach the webhook within 2 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    editor.get("/admin/chat").await;
    let chat = editor
        .post("/admin/chat", &[("text", "画一张违禁的图")], true)
        .await;
    let body = chat.text().await.expect("body");
    assert!(body.contains("画不了"), "{body}");
    let (_, log, _) = viewer.get("/admin/audit").await;
    assert!(
        log.contains("word.add") && log.contains("违禁") && log.contains("ed"),
        "{log}"
    );
    // The check box shows the match after normalisation.
    let check = editor
        .post("/admin/words/check", &[("text", "违 禁")], true)
        .await;
    assert!(check.text().await.expect("body").contains("命中"));
}

async fn campaigns_are_edited_previewed_and_rolled_back(backend: Backend) {
    let app = spawn_app(backend).await;
    add_user(&app, "ed", "editor", PASSWORD).await;
    let mut c = Console::new(&app);
    c.log_in("ed", PASSWORD).await;
    let (_, page, _) = c.get("/admin/campaigns/mid-autumn").await;
    assert!(page.contains("嫦娥"), "the glossary table is on the page");
    // An invalid window is refused inline, with the values as typed, and nothing is stored.
    let form = |ends: &'static str, keyword: &'static str| {
        vec![
            ("title", "中秋赏月"),
            ("keywords", keyword),
            ("template", "a festive painting of {subject}"),
            ("width", "64"),
            ("height", "64"),
            ("steps", "2"),
            ("scheduler", "euler"),
            ("guidance", "7.5"),
            ("starts_at", "2020-01-01T00:00:00+08:00"),
            ("ends_at", ends),
            ("glossary_key", "月亮"),
            ("glossary_value", "the full moon"),
        ]
    };
    let response = c
        .post(
            "/admin/campaigns/mid-autumn",
            &form("2019-01-01T00:00:00+08:00", "中秋"),
            true,
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = response.text().await.expect("body");
    assert!(
        body.contains("ends_at must be after starts_at") && body.contains("2019-01-01"),
        "{body}"
    );
    assert_eq!(
        app.store
            .campaign_revisions("mid-autumn")
            .await
            .expect("revisions")
            .len(),
        1
    );
    // Fixed: stored as a revision, audited, and the webhook answers the new keyword within 2 s.
    let response = c
        .post(
            "/admin/campaigns/mid-autumn",
            &form("2099-01-01T00:00:00+08:00", "赏月节"),
            true,
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let revisions = app
        .store
        .campaign_revisions("mid-autumn")
        .await
        .expect("revisions");
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[1].changed_by, "ed");
    let deadline = Instant::now() + Duration::from_secs(2);
    for msg_id in 100.. {
        app.post_plain(&text_xml("o_k", msg_id, "赏月节 月亮"))
            .await;
        let jobs = app.store.recent_jobs(1).await.expect("jobs");
        if jobs
            .first()
            .is_some_and(|j| j.prompt == "a festive painting of the full moon")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the saved campaign did not reach the webhook within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The prompt preview and a preview painting (queued first, never delivered).
    let (_, fragment, _) = c
        .get("/admin/campaigns/mid-autumn/prompt?subject=%E6%9C%88%E4%BA%AE")
        .await;
    assert_eq!(
        fragment,
        "<code class=\"prompt\">a festive painting of the full moon</code>"
    );
    c.get("/admin/campaigns/mid-autumn").await;
    let response = c
        .post(
            "/admin/campaigns/mid-autumn/preview",
            &[("subject", "月亮")],
            true,
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let preview = app
        .store
        .jobs(&huabi::store::admin::JobFilter {
            user_id: Some("ed".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("jobs")
        .remove(0);
    assert_eq!(
        (preview.channel.as_str(), preview.held.as_deref()),
        ("console", Some("preview"))
    );
    assert_eq!(
        app.store
            .lease_jobs("w", &paints_default(), 1, 30.0, 3)
            .await
            .expect("lease")[0]
            .id,
        preview.id,
        "the preview is painted before the follower's job"
    );
    // Roll back to the first revision.
    c.get("/admin/campaigns/mid-autumn").await;
    let first = revisions[0].id;
    let response = c
        .post(
            &format!("/admin/campaigns/mid-autumn/rollback/{first}"),
            &[],
            true,
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let revisions = app
        .store
        .campaign_revisions("mid-autumn")
        .await
        .expect("revisions");
    assert_eq!(revisions.len(), 3);
    assert_eq!(revisions[2].definition, revisions[0].definition);
    let (_, audit, _) = c.get("/admin/audit").await;
    assert!(
        audit.contains("campaign.rollback") && audit.contains("campaign.save"),
        "{audit}"
    );
    // TOML export and import.
    let (status, toml, _) = c.get("/admin/campaigns/mid-autumn/export").await;
    assert_eq!(status, StatusCode::OK);
    let renamed = toml
        .replacen("name = \"mid-autumn\"", "name = \"spring\"", 1)
        .replace("中秋", "春节");
    c.get("/admin/campaigns").await;
    let response = c
        .post("/admin/campaigns/import", &[("toml", &renamed)], true)
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        app.store
            .campaign_revisions("spring")
            .await
            .expect("revisions")
            .len(),
        1
    );
    let response = c
        .post(
            "/admin/campaigns/import",
            &[("toml", "name = \"broken\"")],
            true,
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

async fn the_test_chat_answers_as_the_webhook_does(backend: Backend) {
    let app = spawn_app(backend).await;
    add_user(&app, "ed", "editor", PASSWORD).await;
    let mut c = Console::new(&app);
    c.log_in("ed", PASSWORD).await;
    c.get("/admin/chat").await;
    let body = |r: reqwest::Response| async move { r.text().await.expect("body") };
    let help = body(c.post("/admin/chat", &[("text", "帮助")], true).await).await;
    assert!(help.contains("发送一句话描述你想要的画面"), "{help}");
    let painted = body(
        c.post("/admin/chat", &[("text", "月下的桂花树")], true)
            .await,
    )
    .await;
    assert!(
        painted.contains("收到") && painted.contains("/admin/jobs/"),
        "{painted}"
    );
    // The shipped campaign has not started; pretending it runs plans the message inside its window.
    let early = body(c.post("/admin/chat", &[("text", "中秋 嫦娥")], true).await).await;
    assert!(early.contains("还没开始"), "{early}");
    let running = body(
        c.post(
            "/admin/chat",
            &[("text", "中秋 嫦娥"), ("pretend", "mid-autumn")],
            true,
        )
        .await,
    )
    .await;
    assert!(running.contains("中秋的画"), "{running}");
    let status = body(c.post("/admin/chat", &[("text", "进度")], true).await).await;
    assert!(status.contains("你有 2 张"), "{status}");
    let fetch = body(c.post("/admin/chat", &[("text", "取图")], true).await).await;
    assert!(fetch.contains("还在画"), "{fetch}");
    // Chat jobs belong to the console: no deliverer ever takes them.
    let jobs = app.store.recent_jobs(10).await.expect("jobs");
    assert!(
        jobs.iter()
            .all(|j| j.channel == "console" && j.user_id == "console:ed")
    );
}

on_both_databases!(
    absent_until_a_user_exists_then_every_route_needs_a_session,
    logins_are_throttled_and_forms_need_their_token,
    roles_decide_who_changes_what_and_changes_are_audited,
    campaigns_are_edited_previewed_and_rolled_back,
    the_test_chat_answers_as_the_webhook_does
);

#[tokio::test]
async fn add_user_takes_the_password_from_the_environment_and_stores_argon2id() {
    let db = TestDb::new(Backend::Sqlite).await;
    let run = |password: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_huabi"))
            .args(["admin", "add-user", "olga", "--role", "editor"])
            .env("HUABI__DATABASE__URL", &db.url)
            .env("HUABI_ADMIN_PASSWORD", password)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run huabi")
    };
    let out = run("short");
    assert!(!out.status.success());
    let out = run("a long enough password");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = settings(&db.url, &[]);
    let store = huabi::store::connect(&s.database).await.expect("connect");
    let olga = store.admin_user("olga").await.expect("read").expect("olga");
    assert!(olga.password_hash.starts_with("$argon2id$"));
    assert!(auth::verify_password(
        "a long enough password",
        &olga.password_hash
    ));
    assert_eq!(olga.role, "editor");
}

#[tokio::test]
async fn a_change_on_one_node_reaches_another_within_2_s() {
    let db = TestDb::new(Backend::Postgres).await;
    let (port_a, port_b) = (free_port(), free_port());
    // reload_secs stays 30: only the change's notification can make node B see it in time.
    let mut a = start_serve(&db.url, port_a, "web", &[]);
    let mut b = start_serve(&db.url, port_b, "web", &[]);
    wait_ready(port_a, &mut a).await;
    wait_ready(port_b, &mut b).await;
    let store = huabi::store::connect(&settings(&db.url, &[]).database)
        .await
        .expect("connect");
    let hash = auth::hash_password(PASSWORD).expect("hash");
    store
        .save_admin_user("ed", "editor", Some(&hash), false)
        .await
        .expect("user");
    let mut console = Console::at(format!("http://127.0.0.1:{port_a}"));
    assert_eq!(
        console.log_in("ed", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    console.get("/admin/words").await;
    let added = Instant::now();
    assert_eq!(
        console
            .post("/admin/words", &[("word", "跨节点")], true)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    let client = reqwest::Client::new();
    for n in 0.. {
        let body = client
            .post(format!("http://127.0.0.1:{port_b}/webhook/wechat"))
            .query(&plain_query(now(), &format!("n{n}")))
            .body(text_xml("o_n", 500 + n, "画一张跨节点的图"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("body");
        if body.contains("画不了") {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(2),
            "node B did not see the word within 2 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
