//! Test databases (a fresh PostgreSQL database or SQLite file per test), a spawned app, and a signing client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use huabi::app::{App, Role};
use huabi::channel::wechat::crypto::AesKey;
use huabi::channel::wechat::{signature, xml};
use huabi::config::Settings;
use huabi::store::Store;
use sqlx::Connection;

/// Token, key and AppID of the test account (V2 of the official vectors).
pub const TOKEN: &str = "QDG6eK";
pub const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
pub const APP_ID: &str = "wx5823bf96d3bd56c7";
pub const ACCOUNT: &str = "gh_test";

/// Where the PostgreSQL server for tests is; the tests fail (never skip) when it is unreachable.
pub fn pg_admin_url() -> String {
    std::env::var("HUABI_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!(
                    "huabi_test_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    rand::random::<u32>()
                );
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL for tests is unreachable at {admin}: {e}")
                    });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(&admin).expect("admin url");
                url.set_path(&name);
                TestDb {
                    url: url.to_string(),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}/huabi.db?mode=rwc", dir.path().display());
                TestDb {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime; a separate thread with its own runtime may block.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Settings for a test app on `db_url`, with `extra` environment overrides.
pub fn settings(db_url: &str, extra: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("HUABI__DATABASE__URL", db_url),
        ("HUABI__SERVER__LISTEN", "127.0.0.1:0"),
        ("HUABI__WECHAT__TOKEN", TOKEN),
        ("HUABI__WECHAT__APP_ID", APP_ID),
        ("HUABI__WECHAT__AES_KEY", AES_KEY),
        ("HUABI__DATABASE__MAX_CONNECTIONS", "8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    Settings::load_from(env).expect("test settings are valid")
}

/// A running app on its own port and database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub client: reqwest::Client,
    pub _db: TestDb,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

pub async fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    spawn_app_roles(backend, extra, &[Role::Web]).await
}

pub async fn spawn_app_roles(backend: Backend, extra: &[(&str, &str)], roles: &[Role]) -> TestApp {
    let db = TestDb::new(backend).await;
    let app = App::build(settings(&db.url, extra), roles)
        .await
        .expect("app builds");
    let addr = app.local_addr().expect("bound");
    let store = app.store();
    tokio::spawn(app.run_until(std::future::pending()));
    TestApp {
        addr,
        store,
        client: reqwest::Client::new(),
        _db: db,
    }
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A plaintext text message.
pub fn text_xml(user: &str, msg_id: u64, content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>{}</Content><MsgId>{msg_id}</MsgId></xml>",
        xml::cdata(content)
    )
}

/// Query parameters of a signed plaintext request at `timestamp`.
pub fn plain_query(timestamp: i64, nonce: &str) -> Vec<(String, String)> {
    let ts = timestamp.to_string();
    vec![
        ("signature".into(), signature::sign(&[TOKEN, &ts, nonce])),
        ("timestamp".into(), ts),
        ("nonce".into(), nonce.into()),
        ("openid".into(), "o_user".into()),
    ]
}

/// Encrypts `inner` as WeChat does and returns the body and query of a safe-mode request.
pub fn encrypted_request(
    inner: &str,
    timestamp: i64,
    nonce: &str,
) -> (String, Vec<(String, String)>) {
    let key = AesKey::from_encoding_key(AES_KEY).expect("key");
    let encrypt = key.encrypt(inner.as_bytes(), APP_ID);
    let ts = timestamp.to_string();
    let body = format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><Encrypt>{}</Encrypt></xml>",
        xml::cdata(&encrypt)
    );
    let query = vec![
        ("signature".into(), signature::sign(&[TOKEN, &ts, nonce])),
        ("timestamp".into(), ts.clone()),
        ("nonce".into(), nonce.into()),
        ("encrypt_type".into(), "aes".into()),
        (
            "msg_signature".into(),
            signature::sign(&[TOKEN, &ts, nonce, &encrypt]),
        ),
    ];
    (body, query)
}

/// Opens an encrypted reply after checking its signature; returns the inner fields.
pub fn open_reply(body: &str) -> xml::Fields {
    let env = xml::parse(body.as_bytes()).expect("reply envelope is XML");
    let encrypt = env.get("Encrypt").expect("Encrypt");
    let ts = env.get("TimeStamp").expect("TimeStamp");
    let nonce = env.get("Nonce").expect("Nonce");
    assert!(
        signature::verify(
            env.get("MsgSignature").expect("MsgSignature"),
            &[TOKEN, ts, nonce, encrypt]
        ),
        "reply signature verifies"
    );
    let inner = AesKey::from_encoding_key(AES_KEY)
        .expect("key")
        .decrypt(encrypt, APP_ID)
        .expect("reply opens");
    xml::parse(&inner).expect("inner reply is XML")
}

impl TestApp {
    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhook/wechat", self.addr)
    }

    /// POSTs `body` with `query`; returns status and body text.
    pub async fn post(
        &self,
        query: &[(String, String)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, String) {
        let resp = self
            .client
            .post(self.webhook_url())
            .query(query)
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// POSTs a signed plaintext message stamped now.
    pub async fn post_plain(&self, body: &str) -> (u16, String) {
        self.post(&plain_query(now(), "n1"), body.to_string()).await
    }

    pub async fn counts(&self) -> huabi::store::Counts {
        self.store.counts().await.expect("counts")
    }
}

/// A free loopback port for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits (30 s at most) until all `n` jobs on the PostgreSQL database of `conn` are recorded delivered, checking all
/// along that there are exactly `n` messages and `n` jobs (one each, nothing lost or doubled). Once every job is
/// recorded delivered no deliverer can lease one again, so a count of sends taken after it is final.
pub async fn wait_all_recorded_delivered(conn: &mut sqlx::PgConnection, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (inbound, jobs, delivered): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM inbound_messages), (SELECT count(*) FROM jobs),
                    (SELECT count(*) FROM jobs WHERE status = 'delivered')",
        )
        .fetch_one(&mut *conn)
        .await
        .expect("counts");
        assert_eq!((inbound, jobs), (n, n), "one message and one job each");
        if delivered == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{delivered} of {n} recorded delivered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Takes `snapshot` every 50 ms until `done` holds of it and returns it; after `secs` seconds, panics naming `what`
/// was awaited and what the last snapshot held (`describe`).
pub async fn poll_until<T>(
    secs: u64,
    what: &str,
    mut snapshot: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
    describe: impl Fn(&T) -> String,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let value = snapshot();
        if done(&value) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            describe(&value)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Polls the node on `port`'s `/metrics` until a line starts with `line`; false when `within` passes first.
pub async fn wait_for_metric(port: u16, line: &str, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    let client = reqwest::Client::new();
    while std::time::Instant::now() < deadline {
        if let Ok(resp) = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            && let Ok(text) = resp.text().await
            && text.lines().any(|l| l.starts_with(line))
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// Waits until the node on `port` answers `/readyz`; panics if `node` exits first or it never does.
pub async fn wait_ready(port: u16, node: &mut tokio::process::Child) {
    let client = reqwest::Client::new();
    for _ in 0..400 {
        let url = format!("http://127.0.0.1:{port}/readyz");
        if let Ok(resp) = client.get(url).send().await
            && resp.status().is_success()
        {
            return;
        }
        if let Ok(Some(status)) = node.try_wait() {
            panic!("node on port {port} exited early: {status}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("node on port {port} never became ready");
}

/// Starts `huabi serve --roles <roles>` on `db_url` and `port` with the test account's WeChat settings, the bundled
/// model, and `extra` environment overrides.
pub fn start_serve(
    db_url: &str,
    port: u16,
    roles: &str,
    extra: &[(&str, &str)],
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_huabi"));
    cmd.args(["serve", "--roles", roles])
        .env("HUABI__DATABASE__URL", db_url)
        .env("HUABI__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("HUABI__WECHAT__TOKEN", TOKEN)
        .env("HUABI__WECHAT__APP_ID", APP_ID)
        .env("HUABI__WECHAT__AES_KEY", AES_KEY)
        .env(
            "HUABI__ENGINE__MODEL_DIR",
            format!("{}/models/tiny-sd", env!("CARGO_MANIFEST_DIR")),
        )
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start huabi serve")
}

/// What a test worker paints: the default model (by name and as `""`), no LoRAs.
pub fn paints_default() -> huabi::store::Capabilities {
    huabi::store::Capabilities {
        models: vec![String::new(), "tiny-sd".into()],
        loras: Vec::new(),
    }
}

/// Waits until the newest `count` jobs are all `delivered` in the store: the deliverer records that after its send,
/// and never leases a delivered job again, so what a stand-in received by then is all it will receive.
pub async fn wait_all_delivered(app: &TestApp, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let jobs = app.store.recent_jobs(count as i64).await.expect("jobs");
        if jobs.len() == count && jobs.iter().all(|j| j.status == "delivered") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs not all delivered: {:?}",
            jobs.iter().map(|j| (j.id, j.status)).collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A TCP forwarder standing in for the network between huabi and PostgreSQL, or for what points clients at the
/// current primary (a virtual IP, HAProxy with a health check, PgBouncer): [`Forwarder::switch`] sends new connections
/// to another server and cuts the open ones, as a failover does; [`Forwarder::partition`] stops every byte both ways
/// without closing anything, as a network partition does, until [`Forwarder::heal`].
pub struct Forwarder {
    /// The port clients connect to.
    pub port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    cut: tokio::sync::watch::Sender<u64>,
    paused: tokio::sync::watch::Sender<bool>,
}

/// Copies `from` to `to`, holding what it read while `paused` says so.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Forwarder {
    /// Forwards 127.0.0.1:`port` (a free one) to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(target));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (paused, _) = tokio::sync::watch::channel(false);
        let (to, cuts, pauses) = (target.clone(), cut.clone(), paused.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let to = to.load(std::sync::atomic::Ordering::SeqCst);
                let mut cut = cuts.subscribe();
                let pause = pauses.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = relay(client_read, server_write, pause.clone()) => {}
                        _ = relay(server_read, client_write, pause) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            target,
            cut,
            paused,
        }
    }

    /// Sends new connections to `target` and cuts every open one.
    pub fn switch(&self, target: u16) {
        self.target
            .store(target, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Stops every byte, both ways, on every connection (open or new), closing nothing.
    pub fn partition(&self) {
        self.paused.send_replace(true);
    }

    /// Lets the held bytes and everything after them through again.
    pub fn heal(&self) {
        self.paused.send_replace(false);
    }
}

/// The tests' Python (wechatpy, onnxruntime): `HUABI_TEST_PYTHON`, else the `.venv` that `scripts/test` creates.
pub fn test_python() -> std::path::PathBuf {
    match std::env::var_os("HUABI_TEST_PYTHON") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    }
}
