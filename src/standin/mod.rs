//! A local stand-in for the parts of WeChat's API huabi calls (`stable_token`, `media/upload`, `media/get`,
//! `material/add_material`, `material/del_material`, `message/custom/send`), for tests and for trying huabi
//! without an account (`huabi standin`; `POST /_standin/media?media_id=…` with a picture as the body plays a
//! follower's photo, for image messages that name it). It checks requests the way WeChat does (token, multipart field `media`,
//! a file name with an extension, JPEG ≤ 2 MB, known media ids), records what it received, and injects faults:
//! busy (-1), rate limit (45009), a real token expiry (the current token stops working: 40001), and stalls
//! longer than the caller's timeout.

pub mod telegram;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

/// Largest picture WeChat accepts for an image message.
pub const MAX_IMAGE_BYTES: usize = 2 * 1024 * 1024;

/// A fault the stand-in can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Fault {
    /// `-1`, system busy.
    Busy,
    /// `45009`, API rate limit reached.
    RateLimit,
    /// The current access token expires for real; the call fails with `40001`.
    Token,
    /// No answer within the caller's timeout (the call is not acted on).
    Timeout,
}

/// How the stand-in behaves.
#[derive(Debug, Clone)]
pub struct StandInOptions {
    /// The AppID it accepts.
    pub app_id: String,
    /// The AppSecret it accepts.
    pub secret: String,
    /// Share of calls (0–1) that fail with one of `faults`.
    pub fault_rate: f64,
    /// The faults to choose from.
    pub faults: Vec<Fault>,
    /// How long a `Timeout` fault stalls before answering -1.
    pub stall: Duration,
    /// `expires_in` of the tokens it issues.
    pub token_ttl_secs: u64,
    /// Answer 48001 to temporary uploads and customer-service sends, like an unverified account.
    pub passive_only: bool,
    /// Followers whose 48-hour window is closed (45015).
    pub closed_window_users: Vec<String>,
    /// Customer-service messages one follower may receive (45047 after that; WeChat allows 5 per message the
    /// follower sends); `None` = no quota.
    pub sends_per_user: Option<usize>,
    /// Seed of the fault dice.
    pub seed: u64,
    /// Where to write each picture sent, if anywhere.
    pub save_dir: Option<PathBuf>,
    /// Stand in for WeCom instead: `app_id` is the CorpID, `secret` the app's Secret, and `message/send` wants
    /// this AgentId.
    pub wecom_agent_id: Option<String>,
}

impl Default for StandInOptions {
    fn default() -> Self {
        Self {
            app_id: String::new(),
            secret: String::new(),
            fault_rate: 0.0,
            faults: vec![Fault::Busy, Fault::RateLimit, Fault::Token, Fault::Timeout],
            stall: Duration::from_secs(3),
            token_ttl_secs: 7200,
            passive_only: false,
            closed_window_users: Vec::new(),
            sends_per_user: None,
            seed: 1,
            wecom_agent_id: None,
            save_dir: None,
        }
    }
}

/// An upload it accepted.
#[derive(Debug, Clone, Serialize)]
pub struct UploadRecord {
    /// The media id it gave out.
    pub media_id: String,
    /// The multipart file name.
    pub filename: String,
    /// Size in bytes.
    pub bytes: usize,
    /// Permanent material (`add_material`) rather than temporary media.
    pub permanent: bool,
}

/// A customer-service message it accepted.
#[derive(Debug, Clone, Serialize)]
pub struct SendRecord {
    /// Recipient OpenID.
    pub touser: String,
    /// `image` or `text`.
    pub msgtype: String,
    /// For images.
    pub media_id: Option<String>,
    /// For text.
    pub text: Option<String>,
    /// The picture behind `media_id`.
    #[serde(skip)]
    pub jpeg: Option<Arc<Vec<u8>>>,
}

/// Everything the stand-in received and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    /// API calls, all endpoints.
    pub calls: u64,
    /// Faults injected.
    pub faults: u64,
    /// `stable_token` calls answered with a token.
    pub token_requests: u64,
    /// Distinct tokens issued.
    pub tokens_issued: u64,
    /// Token expiries it caused.
    pub token_expiries: u64,
    /// Calls refused for a stale or invalid token.
    pub stale_token_calls: u64,
    /// Uploads accepted.
    pub uploads: Vec<UploadRecord>,
    /// Messages sent.
    pub sends: Vec<SendRecord>,
    /// Permanent material deleted.
    pub deleted: Vec<String>,
    /// Media handed out by `media/get`.
    pub downloads: Vec<String>,
    /// Requests refused as malformed (`code: reason`).
    pub refused: Vec<String>,
}

struct IssuedToken {
    value: String,
    valid: bool,
}

struct State_ {
    options: StandInOptions,
    dice: StdRng,
    token: Option<IssuedToken>,
    media: HashMap<String, Arc<Vec<u8>>>,
    record: Record,
}

/// The stand-in server's shared state.
#[derive(Clone)]
pub struct StandIn {
    state: Arc<Mutex<State_>>,
}

/// What a fault does to a call.
enum Injected {
    Answer(Value),
    Stall,
}

fn error(code: i64, message: &str) -> Value {
    json!({"errcode": code, "errmsg": message})
}

fn ok() -> Value {
    json!({"errcode": 0, "errmsg": "ok"})
}

impl StandIn {
    /// A stand-in with `options`.
    pub fn new(options: StandInOptions) -> Self {
        let dice = StdRng::seed_from_u64(options.seed);
        Self {
            state: Arc::new(Mutex::new(State_ {
                options,
                dice,
                token: None,
                media: HashMap::new(),
                record: Record::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State_> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `bytes` available as temporary media `media_id`, as a follower's photo is once they send it.
    pub fn add_media(&self, media_id: &str, bytes: Vec<u8>) {
        self.lock()
            .media
            .insert(media_id.to_string(), Arc::new(bytes));
    }

    /// What it has received so far.
    pub fn record(&self) -> Record {
        self.lock().record.clone()
    }

    /// The routes, under the same paths as `https://api.weixin.qq.com`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/cgi-bin/stable_token", post(stable_token))
            .route("/cgi-bin/media/upload", post(upload_temporary))
            .route("/cgi-bin/material/add_material", post(upload_permanent))
            .route("/cgi-bin/material/del_material", post(delete_material))
            .route("/cgi-bin/message/custom/send", post(custom_send))
            .route("/cgi-bin/gettoken", get(wecom_token))
            .route("/cgi-bin/message/send", post(wecom_send))
            .route("/cgi-bin/media/get", get(get_media))
            .route("/_standin/record", get(record))
            .route("/_standin/media", post(add_media))
            .layer(DefaultBodyLimit::max(4 * MAX_IMAGE_BYTES))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Rolls the fault dice for one call (`token_fault`: whether a token expiry makes sense for this endpoint).
    fn inject(&self, token_fault: bool) -> Option<Injected> {
        let mut state = self.lock();
        state.record.calls += 1;
        let rate = state.options.fault_rate;
        if rate <= 0.0 || state.dice.r#gen::<f64>() >= rate {
            return None;
        }
        let faults: Vec<Fault> = state
            .options
            .faults
            .iter()
            .copied()
            .filter(|f| token_fault || *f != Fault::Token)
            .collect();
        if faults.is_empty() {
            return None;
        }
        let fault = faults[state.dice.gen_range(0..faults.len())];
        state.record.faults += 1;
        Some(match fault {
            Fault::Busy => Injected::Answer(error(-1, "system error")),
            Fault::RateLimit => Injected::Answer(error(45009, "reach max api daily quota limit")),
            Fault::Token => {
                if let Some(token) = state.token.as_mut()
                    && token.valid
                {
                    token.valid = false;
                    state.record.token_expiries += 1;
                }
                Injected::Answer(error(
                    40001,
                    "invalid credential, access_token is invalid or not latest",
                ))
            }
            Fault::Timeout => Injected::Stall,
        })
    }

    /// Answers an injected fault (stalling first for a timeout).
    async fn faulted(&self, token_fault: bool) -> Option<Value> {
        match self.inject(token_fault)? {
            Injected::Answer(value) => Some(value),
            Injected::Stall => {
                let stall = self.lock().options.stall;
                tokio::time::sleep(stall).await;
                Some(error(-1, "system error"))
            }
        }
    }

    /// Checks the `access_token` query parameter.
    fn check_token(&self, query: &HashMap<String, String>) -> Result<(), Value> {
        let mut state = self.lock();
        let given = query.get("access_token").map(String::as_str).unwrap_or("");
        let verdict = match &state.token {
            _ if given.is_empty() => Err(error(41001, "access_token missing")),
            Some(t) if t.value == given && t.valid => Ok(()),
            Some(t) if t.value == given => Err(error(42001, "access_token expired")),
            _ => Err(error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            )),
        };
        if verdict.is_err() {
            state.record.stale_token_calls += 1;
        }
        verdict
    }

    fn refuse(&self, code: i64, message: &str) -> Value {
        self.lock()
            .record
            .refused
            .push(format!("{code}: {message}"));
        error(code, message)
    }
}

async fn stable_token(State(s): State<StandIn>, body: Bytes) -> Json<Value> {
    if let Some(fault) = s.faulted(false).await {
        return Json(fault);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return Json(s.refuse(47001, "data format error"));
    };
    let field = |name: &str| request.get(name).and_then(Value::as_str).unwrap_or("");
    let mut state = s.lock();
    if field("grant_type") != "client_credential" {
        drop(state);
        return Json(s.refuse(40002, "invalid grant_type"));
    }
    if field("appid") != state.options.app_id || field("secret") != state.options.secret {
        drop(state);
        return Json(s.refuse(40125, "invalid appsecret"));
    }
    let force = request
        .get("force_refresh")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let token = state.hand_out_token(force);
    Json(json!({"access_token": token, "expires_in": state.options.token_ttl_secs}))
}

impl State_ {
    /// The current token, a new one when there is none in date or `force` asks for one.
    fn hand_out_token(&mut self, force: bool) -> String {
        if force || !self.token.as_ref().is_some_and(|t| t.valid) {
            let value = format!(
                "standin-token-{}-{:016x}",
                self.record.tokens_issued + 1,
                self.dice.r#gen::<u64>()
            );
            self.token = Some(IssuedToken { value, valid: true });
            self.record.tokens_issued += 1;
        }
        self.record.token_requests += 1;
        self.token
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default()
    }
}

/// WeCom's `gettoken`: the current token for the CorpID and app Secret (a new one only once it expired).
async fn wecom_token(
    State(s): State<StandIn>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    if let Some(fault) = s.faulted(false).await {
        return Json(fault);
    }
    let field = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    let mut state = s.lock();
    if state.options.wecom_agent_id.is_none() {
        drop(state);
        return Json(s.refuse(40001, "not a WeCom stand-in"));
    }
    if field("corpid") != state.options.app_id || field("corpsecret") != state.options.secret {
        drop(state);
        return Json(s.refuse(40001, "invalid secret"));
    }
    let token = state.hand_out_token(false);
    Json(
        json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": state.options.token_ttl_secs}),
    )
}

/// WeCom's `message/send`: an app message, which must name the stand-in's AgentId; otherwise as `custom/send`.
async fn wecom_send(
    state: State<StandIn>,
    query: Query<HashMap<String, String>>,
    body: Bytes,
) -> Json<Value> {
    let agent = serde_json::from_slice::<Value>(&body).ok().and_then(|m| {
        m.get("agentid")
            .map(|a| a.to_string().trim_matches('"').to_string())
    });
    let expected = state.0.lock().options.wecom_agent_id.clone();
    if expected.is_none() || agent != expected {
        return Json(state.0.refuse(40056, "invalid agentid"));
    }
    custom_send(state, query, body).await
}

async fn upload_temporary(
    State(s): State<StandIn>,
    Query(query): Query<HashMap<String, String>>,
    multipart: Multipart,
) -> Json<Value> {
    Json(upload(&s, &query, multipart, false).await)
}

async fn upload_permanent(
    State(s): State<StandIn>,
    Query(query): Query<HashMap<String, String>>,
    multipart: Multipart,
) -> Json<Value> {
    Json(upload(&s, &query, multipart, true).await)
}

async fn upload(
    s: &StandIn,
    query: &HashMap<String, String>,
    mut multipart: Multipart,
    permanent: bool,
) -> Value {
    if let Some(fault) = s.faulted(true).await {
        return fault;
    }
    if let Err(e) = s.check_token(query) {
        return e;
    }
    if !permanent && s.lock().options.passive_only {
        return s.refuse(48001, "api unauthorized");
    }
    if query.get("type").map(String::as_str) != Some("image") {
        return s.refuse(40004, "invalid media type");
    }
    let mut file = None;
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) if field.name() == Some("media") => {
                let filename = field.file_name().unwrap_or("").to_string();
                match field.bytes().await {
                    Ok(bytes) => file = Some((filename, bytes)),
                    Err(_) => return s.refuse(41005, "media data missing"),
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => return s.refuse(41005, "media data missing"),
        }
    }
    let Some((filename, bytes)) = file else {
        return s.refuse(41005, "media data missing");
    };
    let has_extension = filename
        .rsplit_once('.')
        .is_some_and(|(stem, ext)| !stem.is_empty() && !ext.is_empty());
    if !has_extension {
        return s.refuse(40005, "invalid file type");
    }
    if bytes.len() > MAX_IMAGE_BYTES {
        return s.refuse(40009, "invalid image size");
    }
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) && !bytes.starts_with(b"\x89PNG") {
        return s.refuse(40005, "invalid file type");
    }
    let mut state = s.lock();
    let media_id = format!(
        "standin-media-{}-{:08x}",
        state.record.uploads.len() + 1,
        state.dice.r#gen::<u32>()
    );
    state.record.uploads.push(UploadRecord {
        media_id: media_id.clone(),
        filename,
        bytes: bytes.len(),
        permanent,
    });
    state
        .media
        .insert(media_id.clone(), Arc::new(bytes.to_vec()));
    if permanent {
        json!({"media_id": media_id, "url": format!("http://standin.invalid/{media_id}.jpg")})
    } else {
        json!({"type": "image", "media_id": media_id, "created_at": 1_700_000_000})
    }
}

async fn delete_material(
    State(s): State<StandIn>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Json<Value> {
    if let Some(fault) = s.faulted(true).await {
        return Json(fault);
    }
    if let Err(e) = s.check_token(&query) {
        return Json(e);
    }
    let media_id = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("media_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let mut state = s.lock();
    match media_id {
        Some(id) if state.media.remove(&id).is_some() => {
            state.record.deleted.push(id);
            Json(ok())
        }
        _ => {
            drop(state);
            Json(s.refuse(40007, "invalid media_id"))
        }
    }
}

async fn custom_send(
    State(s): State<StandIn>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Json<Value> {
    if let Some(fault) = s.faulted(true).await {
        return Json(fault);
    }
    if let Err(e) = s.check_token(&query) {
        return Json(e);
    }
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return Json(s.refuse(47001, "data format error"));
    };
    let text = |path: &[&str]| {
        path.iter()
            .try_fold(&message, |v, key| v.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (Some(touser), Some(msgtype)) = (text(&["touser"]), text(&["msgtype"])) else {
        return Json(s.refuse(47001, "data format error"));
    };
    let mut state = s.lock();
    if state.options.passive_only {
        drop(state);
        return Json(s.refuse(48001, "api unauthorized"));
    }
    if state.options.closed_window_users.contains(&touser) {
        drop(state);
        return Json(s.refuse(
            45015,
            "response out of time limit or subscription is canceled",
        ));
    }
    let sent = state
        .record
        .sends
        .iter()
        .filter(|r| r.touser == touser)
        .count();
    if state
        .options
        .sends_per_user
        .is_some_and(|quota| sent >= quota)
    {
        drop(state);
        return Json(s.refuse(45047, "out of response count limit"));
    }
    let record = match msgtype.as_str() {
        "image" => {
            let media_id = text(&["image", "media_id"]);
            let Some(jpeg) = media_id
                .as_ref()
                .and_then(|id| state.media.get(id))
                .cloned()
            else {
                drop(state);
                return Json(s.refuse(40007, "invalid media_id"));
            };
            SendRecord {
                touser,
                msgtype,
                media_id,
                text: None,
                jpeg: Some(jpeg),
            }
        }
        "text" => {
            let Some(content) = text(&["text", "content"]) else {
                drop(state);
                return Json(s.refuse(47001, "data format error"));
            };
            SendRecord {
                touser,
                msgtype,
                media_id: None,
                text: Some(content),
                jpeg: None,
            }
        }
        _ => {
            drop(state);
            return Json(s.refuse(40008, "invalid message type"));
        }
    };
    if let (Some(dir), Some(jpeg)) = (&state.options.save_dir, &record.jpeg) {
        let user: String = record
            .touser
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(64)
            .collect();
        let path = dir.join(format!("{}-{user}.jpg", state.record.sends.len() + 1));
        if let Err(e) = std::fs::write(&path, jpeg.as_slice()) {
            tracing::warn!(error = %e, path = %path.display(), "could not save the picture");
        }
    }
    tracing::info!(touser = %record.touser, msgtype = %record.msgtype, "custom/send");
    state.record.sends.push(record);
    Json(ok())
}

/// `media/get`: the bytes of temporary media, or WeChat's JSON error.
async fn get_media(
    State(s): State<StandIn>,
    Query(query): Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(fault) = s.faulted(true).await {
        return Json(fault).into_response();
    }
    if let Err(e) = s.check_token(&query) {
        return Json(e).into_response();
    }
    let id = query.get("media_id").cloned().unwrap_or_default();
    let found = s.lock().media.get(&id).cloned();
    let Some(bytes) = found else {
        return Json(s.refuse(40007, "invalid media_id")).into_response();
    };
    s.lock().record.downloads.push(id.clone());
    let kind = if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else {
        "image/jpeg"
    };
    (
        [
            (axum::http::header::CONTENT_TYPE, kind.to_string()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.jpg\""),
            ),
        ],
        bytes.to_vec(),
    )
        .into_response()
}

/// `POST /_standin/media?media_id=…`: a follower's photo, for trying image messages by hand.
async fn add_media(
    State(s): State<StandIn>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Json<Value> {
    match query.get("media_id").filter(|id| !id.is_empty()) {
        Some(id) => {
            s.add_media(id, body.to_vec());
            Json(ok())
        }
        None => Json(error(40007, "media_id missing")),
    }
}

async fn record(State(s): State<StandIn>) -> Json<Record> {
    Json(s.record())
}
