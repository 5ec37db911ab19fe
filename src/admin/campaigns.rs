//! Campaign pages: the list, create and edit forms (validated exactly as a TOML import is), revisions with a diff
//! and rollback, TOML import and export, the English prompt a subject becomes, and preview paintings.

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use time::OffsetDateTime;

use super::auth::Role;
use super::pages::state_word;
use super::{Admin, AdminError, AdminResult, audit, html, see_other};
use crate::campaign::{self, Campaign, CampaignReplies, PhotoMode};
use crate::command::PaintRequest;
use crate::http::AppState;
use crate::model::LoraChoice;
use crate::store::CampaignRevision;

/// A campaign's line in the list.
pub struct Line {
    /// The campaign.
    pub campaign: Campaign,
    /// upcoming / running / ended.
    pub state: &'static str,
    /// Requests admitted today.
    pub today: i64,
}

/// `/admin/campaigns`.
#[derive(Template)]
#[template(path = "admin/campaigns.html")]
pub struct ListPage {
    /// Who is looking.
    pub admin: Admin,
    /// The campaigns.
    pub lines: Vec<Line>,
    /// An import that failed, and why.
    pub import_error: String,
    /// The TOML that failed to import.
    pub import_text: String,
}

/// A revision with the change it made.
pub struct RevisionLine {
    /// The revision.
    pub revision: CampaignRevision,
    /// Lines of the TOML diff against the revision before (`+`, `-` or ` ` first).
    pub diff: Vec<(char, String)>,
}

/// The edit form, filled.
#[derive(Debug, Clone, Default)]
pub struct CampaignForm {
    /// Field values as typed.
    pub fields: BTreeMap<String, String>,
    /// Glossary rows as typed.
    pub glossary: Vec<(String, String)>,
}

impl CampaignForm {
    /// A field's value ("" when absent).
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }
}

/// `/admin/campaigns/{name}` and `/admin/campaigns/new`.
#[derive(Template)]
#[template(path = "admin/campaign.html")]
pub struct EditPage {
    /// Who is looking.
    pub admin: Admin,
    /// The campaign's name; empty for a new one.
    pub name: String,
    /// upcoming / running / ended, for a stored campaign.
    pub state: &'static str,
    /// The form.
    pub form: CampaignForm,
    /// Why the last save was refused.
    pub error: String,
    /// A saved change was made.
    pub saved: bool,
    /// Revisions, newest first.
    pub revisions: Vec<RevisionLine>,
    /// Scheduler names.
    pub schedulers: Vec<String>,
    /// The subject of the prompt preview, and what it becomes.
    pub subject: String,
    /// The English prompt for `subject`.
    pub prompt: String,
    /// A preview job to show.
    pub preview: Option<i64>,
}

/// A campaign as form fields.
fn form_of(c: &Campaign) -> CampaignForm {
    let mut fields = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        fields.insert(k.to_string(), v);
    };
    put("name", c.name.clone());
    put("title", c.title.clone());
    put("keywords", c.keywords.join(", "));
    put("menu_keys", c.menu_keys.join(", "));
    put("template", c.template.clone());
    put("default_subject", c.default_subject.clone());
    put("negative_prompt", c.negative_prompt.clone());
    put("model", c.model.clone());
    put(
        "loras",
        c.loras
            .iter()
            .map(|l| format!("{}:{}", l.name, l.scale))
            .collect::<Vec<_>>()
            .join(", "),
    );
    put("width", c.width.to_string());
    put("height", c.height.to_string());
    put("steps", c.steps.to_string());
    put("scheduler", c.scheduler.clone());
    put("guidance", c.guidance.to_string());
    put("daily_quota", c.daily_quota.to_string());
    put("daily_cap", c.daily_cap.to_string());
    put("starts_at", c.starts_at.clone());
    put("ends_at", c.ends_at.clone());
    put("welcome", c.replies.welcome.clone());
    put("received", c.replies.received.clone());
    put("not_started", c.replies.not_started.clone());
    put("ended", c.replies.ended.clone());
    if let Some(photo) = &c.photo {
        put("photo_template", photo.template.clone());
        put("photo_strength", photo.strength.to_string());
        put("photo_width", photo.width.to_string());
        put("photo_height", photo.height.to_string());
        put("photo_negative_prompt", photo.negative_prompt.clone());
        put("photo_received", photo.received.clone());
    }
    CampaignForm {
        fields,
        glossary: c.glossary.clone().into_iter().collect(),
    }
}

/// Reads the posted form (repeated `glossary_key`/`glossary_value` pairs make the glossary table).
fn parse_form(body: &[u8]) -> CampaignForm {
    let mut form = CampaignForm::default();
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        match k.as_ref() {
            "glossary_key" => keys.push(v.trim().to_string()),
            "glossary_value" => values.push(v.trim().to_string()),
            "csrf" => {}
            _ => {
                form.fields.insert(k.into_owned(), v.into_owned());
            }
        }
    }
    form.glossary = keys
        .into_iter()
        .zip(values)
        .filter(|(k, _)| !k.is_empty())
        .collect();
    form
}

fn split_list(text: &str) -> Vec<String> {
    text.split([',', '，', '、', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The form's `[photo]`: none when its template is empty.
fn photo_of(
    form: &CampaignForm,
    number: &dyn Fn(&str) -> Result<u32, String>,
) -> Result<Option<PhotoMode>, String> {
    let template = form.get("photo_template").trim();
    if template.is_empty() {
        return Ok(None);
    }
    let strength = match form.get("photo_strength").trim() {
        "" => 0.6,
        text => text
            .parse::<f64>()
            .map_err(|_| format!("photo strength must be a number, not {text:?}"))?,
    };
    Ok(Some(PhotoMode {
        strength,
        template: template.to_string(),
        negative_prompt: form.get("photo_negative_prompt").trim().to_string(),
        width: number("photo_width")?,
        height: number("photo_height")?,
        received: form.get("photo_received").trim().to_string(),
    }))
}

/// The campaign the form describes, refused with the reason a TOML import would give.
fn campaign_of(form: &CampaignForm) -> Result<Campaign, String> {
    let number = |key: &str| -> Result<u32, String> {
        let text = form.get(key).trim();
        if text.is_empty() {
            return Ok(0);
        }
        text.parse()
            .map_err(|_| format!("{key} must be a whole number, not {text:?}"))
    };
    let guidance = form
        .get("guidance")
        .trim()
        .parse::<f32>()
        .map_err(|_| "guidance must be a number".to_string())?;
    let loras = split_list(form.get("loras"))
        .iter()
        .map(|l| crate::generate::parse_lora(l))
        .collect::<Result<Vec<LoraChoice>, String>>()?;
    let campaign = Campaign {
        name: form.get("name").trim().to_string(),
        title: form.get("title").trim().to_string(),
        keywords: split_list(form.get("keywords")),
        menu_keys: split_list(form.get("menu_keys")),
        template: form.get("template").trim().to_string(),
        default_subject: form.get("default_subject").trim().to_string(),
        negative_prompt: form.get("negative_prompt").trim().to_string(),
        model: form.get("model").trim().to_string(),
        loras,
        width: number("width")?,
        height: number("height")?,
        steps: number("steps")?,
        scheduler: form.get("scheduler").trim().to_string(),
        guidance,
        daily_quota: number("daily_quota")?,
        daily_cap: number("daily_cap")?,
        starts_at: form.get("starts_at").trim().to_string(),
        ends_at: form.get("ends_at").trim().to_string(),
        replies: CampaignReplies {
            welcome: form.get("welcome").trim().to_string(),
            received: form.get("received").trim().to_string(),
            not_started: form.get("not_started").trim().to_string(),
            ended: form.get("ended").trim().to_string(),
        },
        glossary: form.glossary.iter().cloned().collect(),
        photo: photo_of(form, &number)?,
    };
    campaign.validate().map_err(|e| e.to_string())?;
    Ok(campaign)
}

/// A campaign with the same checks as `huabi campaign import` on a node: validation, then its model and LoRAs
/// against this node's catalogue (a model the node lacks is accepted; its LoRAs are checked where it paints).
async fn checked(state: &AppState, campaign: Campaign) -> Result<Campaign, String> {
    let models = crate::engine::ModelCatalog::new(&state.settings.engine);
    tokio::task::spawn_blocking(move || {
        campaign
            .check_models(&models, false)
            .map(|()| campaign)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Stores `campaign` as `admin` (a revision, an audit entry) and makes every node reload; returns whether it
/// changed anything.
async fn store(
    state: &AppState,
    admin: &Admin,
    campaign: &Campaign,
    action: &str,
) -> AdminResult<bool> {
    let before = campaign::load_stored(&*state.store)
        .await?
        .by_name(&campaign.name)
        .map(Campaign::to_toml);
    let changed = campaign::save_all(
        &*state.store,
        std::slice::from_ref(campaign),
        &admin.name,
        false,
    )
    .await?;
    if changed.is_empty() {
        return Ok(false);
    }
    audit(
        state,
        admin,
        action,
        &campaign.name,
        (before.as_deref(), Some(&campaign.to_toml())),
    )
    .await?;
    state.announce_catalog().await;
    Ok(true)
}

/// A line diff (longest common subsequence) of two texts.
pub fn line_diff(before: &str, after: &str) -> Vec<(char, String)> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push((' ', a[i].to_string()));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(('+', b[j].to_string()));
            j += 1;
        } else {
            out.push(('-', a[i].to_string()));
            i += 1;
        }
    }
    out
}

/// TOML of a stored definition (JSON), or the JSON itself when it no longer parses.
fn toml_of(definition: &str) -> String {
    serde_json::from_str::<Campaign>(definition)
        .map(|c| c.to_toml())
        .unwrap_or_else(|_| definition.to_string())
}

/// Revisions with their changes, newest first (only the changed lines and one line around each are kept).
async fn revisions(state: &AppState, name: &str) -> AdminResult<Vec<RevisionLine>> {
    let stored = state.store.campaign_revisions(name).await?;
    let mut lines = Vec::new();
    let mut previous = String::new();
    for revision in stored {
        let now = toml_of(&revision.definition);
        let diff = line_diff(&previous, &now);
        let keep: Vec<bool> = (0..diff.len())
            .map(|i| {
                (i.saturating_sub(1)..=(i + 1).min(diff.len().saturating_sub(1)))
                    .any(|k| diff[k].0 != ' ')
            })
            .collect();
        let diff = diff
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(d, _)| d)
            .collect();
        lines.push(RevisionLine { revision, diff });
        previous = now;
    }
    lines.reverse();
    Ok(lines)
}

/// `GET /admin/campaigns`.
pub async fn list(State(state): State<AppState>, admin: Admin) -> AdminResult {
    list_page(&state, admin, String::new(), String::new()).await
}

async fn list_page(
    state: &AppState,
    admin: Admin,
    import_error: String,
    import_text: String,
) -> AdminResult {
    let now = OffsetDateTime::now_utc();
    let today = crate::limits::shanghai_day(now).to_string();
    let usage = state.store.usage(&today).await?;
    let lines = campaign::load_stored(&*state.store)
        .await?
        .all()
        .iter()
        .map(|c| Line {
            state: state_word(c.window(now)),
            today: usage
                .iter()
                .filter(|u| u.campaign == c.name)
                .map(|u| u.admitted)
                .sum(),
            campaign: c.clone(),
        })
        .collect();
    html(ListPage {
        admin,
        lines,
        import_error,
        import_text,
    })
}

fn schedulers() -> Vec<String> {
    crate::engine::SchedulerKind::ALL
        .iter()
        .map(|k| k.to_string())
        .collect()
}

/// `GET /admin/campaigns/new`: the form, filled from the first stored campaign (or the shipped defaults).
pub async fn new_form(State(state): State<AppState>, admin: Admin) -> AdminResult {
    admin.require(Role::Editor)?;
    let stored = campaign::load_stored(&*state.store).await?;
    let mut form = stored.all().first().map(form_of).unwrap_or_default();
    for key in ["name", "title", "keywords", "menu_keys"] {
        form.fields.insert(key.into(), String::new());
    }
    html(EditPage {
        admin,
        name: String::new(),
        state: "",
        form,
        error: String::new(),
        saved: false,
        revisions: Vec::new(),
        schedulers: schedulers(),
        subject: String::new(),
        prompt: String::new(),
        preview: None,
    })
}

/// `?subject=&preview=&saved=` of the edit page.
#[derive(Debug, Default, Deserialize)]
pub struct EditQuery {
    #[serde(default)]
    subject: String,
    preview: Option<i64>,
    #[serde(default)]
    saved: bool,
}

/// A stored campaign by name.
async fn stored(state: &AppState, name: &str) -> AdminResult<Campaign> {
    campaign::load_stored(&*state.store)
        .await?
        .by_name(name)
        .cloned()
        .ok_or(AdminError::NotFound)
}

/// `GET /admin/campaigns/{name}`.
pub async fn edit(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Query(q): Query<EditQuery>,
) -> AdminResult {
    let campaign = stored(&state, &name).await?;
    let prompt = if q.subject.trim().is_empty() {
        String::new()
    } else {
        campaign.render(&q.subject)
    };
    html(EditPage {
        admin,
        state: state_word(campaign.window(OffsetDateTime::now_utc())),
        form: form_of(&campaign),
        name,
        error: String::new(),
        saved: q.saved,
        revisions: revisions(&state, &campaign.name).await?,
        schedulers: schedulers(),
        subject: q.subject,
        prompt,
        preview: q.preview,
    })
}

/// Re-renders the form with `error` and the values as typed.
async fn refused(
    state: &AppState,
    admin: Admin,
    name: String,
    form: CampaignForm,
    error: String,
) -> AdminResult {
    let revisions = if name.is_empty() {
        Vec::new()
    } else {
        revisions(state, &name).await?
    };
    let mut response = html(EditPage {
        admin,
        state: "",
        name,
        form,
        error,
        saved: false,
        revisions,
        schedulers: schedulers(),
        subject: String::new(),
        prompt: String::new(),
        preview: None,
    })?;
    *response.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
    Ok(response)
}

/// `POST /admin/campaigns`: a new campaign.
pub async fn create(State(state): State<AppState>, admin: Admin, body: Bytes) -> AdminResult {
    admin.require(Role::Editor)?;
    let form = parse_form(&body);
    let campaign = match campaign_of(&form) {
        Ok(c) => c,
        Err(e) => return refused(&state, admin, String::new(), form, e).await,
    };
    if campaign::load_stored(&*state.store)
        .await?
        .by_name(&campaign.name)
        .is_some()
    {
        let error = format!("a campaign named {:?} exists already", campaign.name);
        return refused(&state, admin, String::new(), form, error).await;
    }
    let campaign = match checked(&state, campaign).await {
        Ok(c) => c,
        Err(e) => return refused(&state, admin, String::new(), form, e).await,
    };
    store(&state, &admin, &campaign, "campaign.create").await?;
    see_other(&format!(
        "/admin/campaigns/{}?saved=true",
        url_path(&campaign.name)
    ))
}

/// `POST /admin/campaigns/{name}`: saves a change (the name stays).
pub async fn save(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> AdminResult {
    admin.require(Role::Editor)?;
    stored(&state, &name).await?;
    let mut form = parse_form(&body);
    form.fields.insert("name".into(), name.clone());
    let campaign = match campaign_of(&form) {
        Ok(c) => c,
        Err(e) => return refused(&state, admin, name, form, e).await,
    };
    let campaign = match checked(&state, campaign).await {
        Ok(c) => c,
        Err(e) => return refused(&state, admin, name, form, e).await,
    };
    store(&state, &admin, &campaign, "campaign.save").await?;
    see_other(&format!("/admin/campaigns/{}?saved=true", url_path(&name)))
}

/// `POST /admin/campaigns/{name}/rollback/{revision}`: makes an earlier revision the campaign again (as a new
/// revision).
pub async fn rollback(
    State(state): State<AppState>,
    admin: Admin,
    Path((name, revision)): Path<(String, i64)>,
) -> AdminResult {
    admin.require(Role::Editor)?;
    let revision = state
        .store
        .campaign_revisions(&name)
        .await?
        .into_iter()
        .find(|r| r.id == revision)
        .ok_or(AdminError::NotFound)?;
    let campaign: Campaign = serde_json::from_str(&revision.definition).map_err(|e| {
        AdminError::BadRequest(format!("revision {} no longer reads: {e}", revision.id))
    })?;
    let campaign = checked(&state, campaign)
        .await
        .map_err(AdminError::BadRequest)?;
    store(&state, &admin, &campaign, "campaign.rollback").await?;
    see_other(&format!("/admin/campaigns/{}?saved=true", url_path(&name)))
}

/// The posted TOML of an import.
#[derive(Debug, Deserialize)]
pub struct ImportForm {
    toml: String,
}

/// `POST /admin/campaigns/import`: a TOML definition, as `huabi campaign import` takes it.
pub async fn import(
    State(state): State<AppState>,
    admin: Admin,
    axum::Form(form): axum::Form<ImportForm>,
) -> AdminResult {
    admin.require(Role::Editor)?;
    let parsed = Campaign::from_toml(&form.toml, std::path::Path::new("pasted.toml"))
        .map_err(|e| e.to_string());
    let campaign = match parsed {
        Ok(c) => checked(&state, c).await,
        Err(e) => Err(e),
    };
    match campaign {
        Ok(campaign) => {
            store(&state, &admin, &campaign, "campaign.import").await?;
            see_other(&format!(
                "/admin/campaigns/{}?saved=true",
                url_path(&campaign.name)
            ))
        }
        Err(error) => {
            let mut response = list_page(&state, admin, error, form.toml).await?;
            *response.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
    }
}

/// `GET /admin/campaigns/{name}/export`: the TOML file.
pub async fn export(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> AdminResult<Response> {
    let campaign = stored(&state, &name).await?;
    let disposition = format!(
        "attachment; filename=\"{}.toml\"",
        name.replace(['"', '\\', '\r', '\n'], "_")
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/toml; charset=utf-8".to_string(),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        campaign.to_toml(),
    )
        .into_response())
}

/// The subject of a prompt preview.
#[derive(Debug, Deserialize)]
pub struct SubjectForm {
    #[serde(default)]
    subject: String,
}

/// `GET /admin/campaigns/{name}/prompt?subject=`: the English prompt the subject becomes (an htmx fragment).
pub async fn prompt(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    Query(q): Query<SubjectForm>,
) -> AdminResult<Response> {
    let campaign = stored(&state, &name).await?;
    let fragment = PromptFragment {
        prompt: campaign.render(&q.subject),
    };
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        fragment.render()?,
    )
        .into_response())
}

/// The English prompt, alone.
#[derive(Template)]
#[template(source = "<code class=\"prompt\">{{ prompt }}</code>", ext = "html")]
pub struct PromptFragment {
    /// The prompt.
    pub prompt: String,
}

/// `POST /admin/campaigns/{name}/preview`: paints the campaign for a subject (small, ahead of followers).
pub async fn preview(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<SubjectForm>,
) -> AdminResult {
    admin.require(Role::Editor)?;
    let campaign = stored(&state, &name).await?;
    let request = PaintRequest {
        campaign: Some(name.clone()),
        subject: form.subject.clone(),
        aspect: None,
        seed: None,
        avoid: Vec::new(),
        hd: false,
    };
    let mut job = crate::command::campaign_job(&campaign, &request, &state.settings);
    let longest = state.settings.admin.preview_size;
    if longest > 0 && job.width.max(job.height) > longest {
        let scale = f64::from(longest) / f64::from(job.width.max(job.height));
        let fit = |v: u32| ((f64::from(v) * scale / 64.0).round().max(1.0) as u32) * 64;
        job.width = fit(job.width);
        job.height = fit(job.height);
    }
    let id = state.store.submit_preview(&job, &admin.name).await?;
    state.wake_workers.notify_one();
    state.announce_jobs.notify_one();
    audit(
        &state,
        &admin,
        "campaign.preview",
        &name,
        (None, Some(&job.prompt)),
    )
    .await?;
    see_other(&format!(
        "/admin/campaigns/{}?preview={id}&subject={}#preview",
        url_path(&name),
        url_path(&form.subject)
    ))
}

/// `text` escaped for a URL path or query value.
pub fn url_path(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_mark_added_and_removed_lines() {
        assert_eq!(
            line_diff("a\nb\nc", "a\nx\nc\nd"),
            vec![
                (' ', "a".into()),
                ('+', "x".into()),
                ('-', "b".into()),
                (' ', "c".into()),
                ('+', "d".into())
            ]
        );
        assert_eq!(line_diff("", "a"), vec![('+', "a".into())]);
        assert!(line_diff("same", "same").iter().all(|(k, _)| *k == ' '));
    }

    #[test]
    fn the_form_round_trips_a_campaign_and_refuses_what_import_refuses() {
        let shipped = campaign::load_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/campaigns/mid-autumn.toml"
        )))
        .expect("shipped");
        let form = form_of(&shipped);
        assert_eq!(campaign_of(&form).expect("valid"), shipped);
        let mut bad = form.clone();
        bad.fields
            .insert("ends_at".into(), "2020-01-01T00:00:00+08:00".into());
        assert!(campaign_of(&bad).expect_err("window").contains("ends_at"));
        let mut bad = form.clone();
        bad.fields.insert("width".into(), "wide".into());
        assert!(campaign_of(&bad).expect_err("width").contains("width"));
        let mut bad = form;
        bad.fields.insert("loras".into(), "x:lots".into());
        assert!(campaign_of(&bad).expect_err("lora").contains("scale"));
        let posted = parse_form(b"name=a&glossary_key=%E4%B8%AD&glossary_value=mid&glossary_key=&glossary_value=x&csrf=t");
        assert_eq!(posted.glossary, vec![("中".to_string(), "mid".to_string())]);
        assert!(!posted.fields.contains_key("csrf"));
    }
}
