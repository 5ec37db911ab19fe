//! The test chat: the admin talks to the bot as a follower would. Messages go through the same use case as the
//! webhook ([`crate::inbox::Inbox`]: commands, campaign keywords, limits, the filter, `进度`, `取图`), as the
//! follower `console:<user>` on channel `console` (whose pictures are shown here, never sent). A campaign can be
//! pretended to run: the message is then planned at a moment inside its window.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::auth::Role;
use super::{Admin, AdminError, AdminResult, html};
use crate::http::AppState;
use crate::inbox::Step;
use crate::model::{Inbound, InboundKind, Reply};
use crate::store::{Admission, Waiting};

/// The test chat's channel and account.
pub const CHAT_CHANNEL: &str = "console";
/// See [`CHAT_CHANNEL`].
pub const CHAT_ACCOUNT: &str = "chat";

/// One exchange: what was sent, what the bot answered, and the job (or picture) it concerns.
pub struct Exchange {
    /// The message.
    pub sent: String,
    /// The answer's text (or a note for a picture).
    pub answer: String,
    /// A job to show (painting, or the picture 取图 fetched).
    pub job: Option<i64>,
}

/// `/admin/chat`.
#[derive(Template)]
#[template(path = "admin/chat.html")]
pub struct ChatPage {
    /// Who is chatting.
    pub admin: Admin,
    /// Campaign names, for the "pretend it runs" switch.
    pub campaigns: Vec<String>,
    /// The campaign pretended to run.
    pub pretend: String,
    /// The exchange just made (without JavaScript, the page shows the last one).
    pub exchange: Option<Exchange>,
}

/// One exchange, alone (what htmx appends to the log).
#[derive(Template)]
#[template(path = "admin/chat_exchange.html")]
pub struct ExchangeFragment {
    /// The exchange.
    pub exchange: Exchange,
}

/// `GET /admin/chat`.
pub async fn page(State(state): State<AppState>, admin: Admin) -> AdminResult {
    admin.require(Role::Editor)?;
    html(ChatPage {
        admin,
        campaigns: campaign_names(&state),
        pretend: String::new(),
        exchange: None,
    })
}

fn campaign_names(state: &AppState) -> Vec<String> {
    state
        .inbox
        .catalog()
        .campaigns
        .all()
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

/// A chat message.
#[derive(Debug, Deserialize)]
pub struct ChatForm {
    text: String,
    #[serde(default)]
    pretend: String,
}

/// The moment a message is planned at: now, or a minute into the pretended campaign's window.
fn planned_at(state: &AppState, pretend: &str) -> AdminResult<OffsetDateTime> {
    if pretend.is_empty() {
        return Ok(OffsetDateTime::now_utc());
    }
    let catalog = state.inbox.catalog();
    let campaign = catalog
        .campaigns
        .by_name(pretend)
        .ok_or_else(|| AdminError::BadRequest(format!("no campaign {pretend:?}")))?;
    let start = OffsetDateTime::parse(&campaign.starts_at, &Rfc3339)
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
    Ok(start + time::Duration::minutes(1))
}

/// The text of a reply as the chat shows it.
fn shown(reply: &Reply) -> String {
    match reply {
        Reply::Text { text } => text.clone(),
        Reply::Image { .. } => "[图片 · picture]".into(),
        Reply::None => "（没有回复 · no reply）".into(),
    }
}

/// `POST /admin/chat`: one message, answered as the webhook would answer it.
pub async fn send(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    axum::Form(form): axum::Form<ChatForm>,
) -> AdminResult {
    admin.require(Role::Editor)?;
    let now = planned_at(&state, &form.pretend)?;
    let id = format!(
        "{}{:08x}",
        OffsetDateTime::now_utc().unix_timestamp_nanos(),
        rand::random::<u32>()
    );
    let inbound = Inbound {
        channel: CHAT_CHANNEL,
        account: CHAT_ACCOUNT.into(),
        user_id: format!("console:{}", admin.name),
        message_id: Some(id.clone()),
        dedup_key: format!("chat:{id}"),
        sent_at: OffsetDateTime::now_utc().unix_timestamp(),
        kind: InboundKind::Text {
            content: form.text.clone(),
        },
    };
    let (answer, job) = match state.inbox.prepare(&inbound, now, true).await? {
        Step::Admit(submission) => match state.inbox.admit(&submission).await? {
            Admission::Accepted { job_id } => (shown(&submission.reply), job_id),
            Admission::Refused { reply } => (shown(&reply), None),
            Admission::Duplicate { reply, job_id } => (shown(&reply), job_id),
        },
        Step::Fetch => fetch(&state, &inbound, &admin).await?,
    };
    let exchange = Exchange {
        sent: form.text,
        answer,
        job,
    };
    if headers.contains_key("hx-request") {
        return html(ExchangeFragment { exchange });
    }
    html(ChatPage {
        admin,
        campaigns: campaign_names(&state),
        pretend: form.pretend,
        exchange: Some(exchange),
    })
}

/// 取图 in the chat: the oldest finished picture is shown (and counted as fetched), as the webhook would send it.
async fn fetch(
    state: &AppState,
    inbound: &Inbound,
    admin: &Admin,
) -> AdminResult<(String, Option<i64>)> {
    let holder = format!("chat-{}", admin.name);
    let replies = &state.settings.replies;
    let waiting = state
        .store
        .claim_waiting(
            inbound.channel,
            &inbound.account,
            &inbound.user_id,
            &holder,
            30.0,
        )
        .await?;
    let text = |t: &str| Reply::Text {
        text: t.to_string(),
    };
    let (reply, job) = match waiting {
        Waiting::Picture { job_id } => (
            Reply::Text {
                text: "[图片 · picture]".into(),
            },
            Some(job_id),
        ),
        Waiting::Failed { job_id } => {
            let notice = state.store.failure_notice(job_id).await?;
            (
                text(notice.as_deref().unwrap_or(&replies.failed)),
                Some(job_id),
            )
        }
        Waiting::InProgress => (text(&replies.fetch_pending), None),
        Waiting::Nothing => (text(&replies.fetch_nothing), None),
    };
    state
        .inbox
        .admit(&crate::store::Submission {
            inbound,
            job: None,
            reply: reply.clone(),
            refusal: None,
            limits: None,
        })
        .await?;
    if let Some(job_id) = job {
        state
            .store
            .finish_reply(job_id, &holder, inbound, &reply, "fetch")
            .await?;
    }
    Ok((shown(&reply), job))
}
