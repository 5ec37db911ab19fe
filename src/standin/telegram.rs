//! A stand-in for Telegram's Bot API, for tests and trying huabi without a bot: `sendMessage`, `sendPhoto`
//! (multipart upload or a `file_id` it issued), `getFile` + file downloads of photos added with
//! [`TelegramStandIn::add_file`], `setWebhook`; a wrong bot token is 401; faults (429 with `retry_after`, 500) at a
//! chosen rate; chats listed as blocked answer 403.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

/// Largest upload accepted (Telegram's photo limit).
const MAX_PHOTO_BYTES: usize = 10 << 20;

/// How the stand-in behaves.
#[derive(Debug, Clone, Default)]
pub struct TelegramOptions {
    /// The bot token it accepts.
    pub bot_token: String,
    /// Share of calls (0–1) that fail: half 429 with `retry_after`, half 500.
    pub fault_rate: f64,
    /// `retry_after` of its 429 answers, in seconds.
    pub retry_after_secs: u64,
    /// Chats that blocked the bot (403).
    pub blocked_chats: Vec<String>,
    /// Seed of the fault dice.
    pub seed: u64,
}

/// One message the bot sent.
#[derive(Debug, Clone, Serialize)]
pub struct TelegramSend {
    /// The chat.
    pub chat_id: String,
    /// `text` or `photo`.
    pub kind: String,
    /// The text sent.
    pub text: Option<String>,
    /// The picture uploaded (absent when a `file_id` was re-sent).
    #[serde(skip)]
    pub jpeg: Option<Vec<u8>>,
    /// The `file_id` re-sent, if any.
    pub file_id: Option<String>,
}

/// What the stand-in has received.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TelegramRecord {
    /// API calls, all methods.
    pub calls: u64,
    /// Faults injected.
    pub faults: u64,
    /// Messages sent, in order.
    pub sends: Vec<TelegramSend>,
    /// Files downloaded (`file_path`s).
    pub downloads: Vec<String>,
    /// The last `setWebhook`: URL and secret token.
    pub webhook: Option<(String, String)>,
    /// Calls refused, with why.
    pub refused: Vec<String>,
}

struct Inner {
    options: TelegramOptions,
    dice: StdRng,
    files: HashMap<String, Arc<Vec<u8>>>,
    record: TelegramRecord,
}

/// The Bot API stand-in (cheap to clone; clones share state).
#[derive(Clone)]
pub struct TelegramStandIn {
    inner: Arc<Mutex<Inner>>,
}

fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn refusal(code: u16, description: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    answer(
        status,
        json!({"ok": false, "error_code": code, "description": description}),
    )
}

fn ok(result: Value) -> Response {
    answer(StatusCode::OK, json!({"ok": true, "result": result}))
}

impl TelegramStandIn {
    /// A stand-in with `options`.
    pub fn new(options: TelegramOptions) -> Self {
        let dice = StdRng::seed_from_u64(options.seed);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                options,
                dice,
                files: HashMap::new(),
                record: TelegramRecord::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data: a panic elsewhere cannot leave it half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `bytes` available as file `file_id`, as a follower's photo is once they send it.
    pub fn add_file(&self, file_id: &str, bytes: Vec<u8>) {
        self.lock()
            .files
            .insert(file_id.to_string(), Arc::new(bytes));
    }

    /// What it has received so far.
    pub fn record(&self) -> TelegramRecord {
        self.lock().record.clone()
    }

    /// The routes, under the same paths as `https://api.telegram.org`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{bot}/{method}", post(method))
            .route("/file/{bot}/{*path}", get(file))
            .route("/_standin/record", get(record))
            .layer(DefaultBodyLimit::max(2 * MAX_PHOTO_BYTES))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Checks the bot token in the path and rolls the fault dice: the refusal, if any.
    fn refuse(&self, bot: &str) -> Option<Response> {
        let mut inner = self.lock();
        inner.record.calls += 1;
        if bot.strip_prefix("bot") != Some(inner.options.bot_token.as_str())
            || inner.options.bot_token.is_empty()
        {
            inner.record.refused.push("401: Unauthorized".into());
            return Some(refusal(401, "Unauthorized"));
        }
        let rate = inner.options.fault_rate;
        if rate > 0.0 && inner.dice.r#gen::<f64>() < rate {
            inner.record.faults += 1;
            if inner.dice.r#gen::<bool>() {
                let retry_after = inner.options.retry_after_secs;
                return Some(answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"ok": false, "error_code": 429,
                           "description": format!("Too Many Requests: retry after {retry_after}"),
                           "parameters": {"retry_after": retry_after}}),
                ));
            }
            return Some(refusal(500, "Internal Server Error"));
        }
        None
    }

    /// 403 when `chat_id` blocked the bot.
    fn blocked(&self, chat_id: &str) -> Option<Response> {
        let mut inner = self.lock();
        if inner.options.blocked_chats.iter().any(|c| c == chat_id) {
            inner
                .record
                .refused
                .push(format!("403: blocked by {chat_id}"));
            return Some(refusal(403, "Forbidden: bot was blocked by the user"));
        }
        None
    }

    fn sent(&self, send: TelegramSend) -> Response {
        let mut inner = self.lock();
        let message_id = inner.record.sends.len() + 1;
        let file_id = send
            .file_id
            .clone()
            .unwrap_or_else(|| format!("sent-photo-{message_id}"));
        if let Some(jpeg) = &send.jpeg {
            inner.files.insert(file_id.clone(), Arc::new(jpeg.clone()));
        }
        let photo = (send.kind == "photo")
            .then(|| json!([{"file_id": file_id, "width": 64, "height": 64}]));
        inner.record.sends.push(send);
        ok(json!({"message_id": message_id, "photo": photo}))
    }
}

/// Every Bot API method the stand-in knows.
async fn method(
    State(s): State<TelegramStandIn>,
    Path((bot, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = s.refuse(&bot) {
        return refused;
    }
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if name == "sendPhoto" && multipart {
        return send_photo_upload(&s, headers, body).await;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return refusal(400, "Bad Request: invalid JSON");
    };
    let field = |key: &str| match request.get(key) {
        Some(Value::String(v)) => Some(v.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match name.as_str() {
        "sendMessage" => {
            let (Some(chat_id), Some(text)) = (field("chat_id"), field("text")) else {
                return refusal(400, "Bad Request: chat_id and text are required");
            };
            if let Some(blocked) = s.blocked(&chat_id) {
                return blocked;
            }
            s.sent(TelegramSend {
                chat_id,
                kind: "text".into(),
                text: Some(text),
                jpeg: None,
                file_id: None,
            })
        }
        "sendPhoto" => {
            let (Some(chat_id), Some(file_id)) = (field("chat_id"), field("photo")) else {
                return refusal(400, "Bad Request: chat_id and photo are required");
            };
            if let Some(blocked) = s.blocked(&chat_id) {
                return blocked;
            }
            if !s.lock().files.contains_key(&file_id) {
                return refusal(400, "Bad Request: wrong file identifier");
            }
            s.sent(TelegramSend {
                chat_id,
                kind: "photo".into(),
                text: None,
                jpeg: None,
                file_id: Some(file_id),
            })
        }
        "getFile" => {
            let Some(file_id) = field("file_id") else {
                return refusal(400, "Bad Request: file_id is required");
            };
            let size = s.lock().files.get(&file_id).map(|f| f.len());
            match size {
                Some(size) => ok(json!({"file_id": file_id, "file_size": size,
                                        "file_path": format!("photos/{file_id}.jpg")})),
                None => refusal(400, "Bad Request: invalid file_id"),
            }
        }
        "setWebhook" => {
            let (Some(url), Some(secret)) = (field("url"), field("secret_token")) else {
                return refusal(400, "Bad Request: url and secret_token are required");
            };
            s.lock().record.webhook = Some((url, secret));
            ok(json!(true))
        }
        "getMe" => ok(json!({"id": 4242, "is_bot": true, "username": "huabi_standin_bot"})),
        _ => refusal(404, "Not Found: method not found"),
    }
}

/// `sendPhoto` with the picture uploaded as `photo` in a multipart form.
async fn send_photo_upload(s: &TelegramStandIn, headers: HeaderMap, body: Bytes) -> Response {
    let request = axum::http::Request::builder()
        .header(
            header::CONTENT_TYPE,
            headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or(header::HeaderValue::from_static("")),
        )
        .body(axum::body::Body::from(body));
    let Ok(request) = request else {
        return refusal(400, "Bad Request");
    };
    let Ok(mut form) =
        <Multipart as axum::extract::FromRequest<()>>::from_request(request, &()).await
    else {
        return refusal(400, "Bad Request: not a multipart form");
    };
    let (mut chat_id, mut jpeg) = (None, None);
    while let Ok(Some(part)) = form.next_field().await {
        match part.name() {
            Some("chat_id") => chat_id = part.text().await.ok(),
            Some("photo") => jpeg = part.bytes().await.ok().map(|b| b.to_vec()),
            _ => {}
        }
    }
    let (Some(chat_id), Some(jpeg)) = (chat_id, jpeg) else {
        return refusal(400, "Bad Request: chat_id and photo are required");
    };
    if let Some(blocked) = s.blocked(&chat_id) {
        return blocked;
    }
    if !jpeg.starts_with(&[0xFF, 0xD8, 0xFF]) || jpeg.len() > MAX_PHOTO_BYTES {
        return refusal(400, "Bad Request: IMAGE_PROCESS_FAILED");
    }
    s.sent(TelegramSend {
        chat_id,
        kind: "photo".into(),
        text: None,
        jpeg: Some(jpeg),
        file_id: None,
    })
}

/// A file download.
async fn file(
    State(s): State<TelegramStandIn>,
    Path((bot, path)): Path<(String, String)>,
) -> Response {
    if let Some(refused) = s.refuse(&bot) {
        return refused;
    }
    let file_id = path
        .strip_prefix("photos/")
        .and_then(|p| p.strip_suffix(".jpg"))
        .unwrap_or_default();
    let bytes = s.lock().files.get(file_id).cloned();
    match bytes {
        Some(bytes) => {
            s.lock().record.downloads.push(path);
            (StatusCode::OK, bytes.to_vec()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /_standin/record`.
async fn record(State(s): State<TelegramStandIn>) -> axum::Json<TelegramRecord> {
    axum::Json(s.record())
}
