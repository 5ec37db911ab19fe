//! Filter words: the list (the shipped file's count, the table's entries with who added them and when), adding
//! and removing entries, and checking a prompt against the filter as followers' messages are checked.

use askama::Template;
use axum::extract::State;
use serde::Deserialize;

use super::auth::Role;
use super::{Admin, AdminError, AdminResult, audit, html, see_other};
use crate::http::AppState;
use crate::store::admin::WordEntry;

/// `/admin/words`.
#[derive(Template)]
#[template(path = "admin/words.html")]
pub struct WordsPage {
    /// Who is looking.
    pub admin: Admin,
    /// The table's words.
    pub words: Vec<WordEntry>,
    /// Words in the shipped file.
    pub file_words: usize,
    /// The prompt checked, its normalised form and what matched.
    pub check: Option<(String, String, Option<String>)>,
}

async fn words_page(
    state: &AppState,
    admin: Admin,
    check: Option<(String, String, Option<String>)>,
) -> AdminResult {
    html(WordsPage {
        admin,
        words: state.store.filter_word_entries().await?,
        file_words: crate::filter::read_word_file(&state.settings.filter.words_file)
            .map(|w| w.len())
            .unwrap_or(0),
        check,
    })
}

/// `GET /admin/words`.
pub async fn page(State(state): State<AppState>, admin: Admin) -> AdminResult {
    words_page(&state, admin, None).await
}

/// A word to add or remove.
#[derive(Debug, Deserialize)]
pub struct WordForm {
    word: String,
}

/// `POST /admin/words`.
pub async fn add(
    State(state): State<AppState>,
    admin: Admin,
    axum::Form(form): axum::Form<WordForm>,
) -> AdminResult {
    admin.require(Role::Editor)?;
    let word = form.word.trim();
    if word.is_empty() || word.chars().count() > 100 {
        return Err(AdminError::BadRequest(
            "a filter word has 1 to 100 characters".into(),
        ));
    }
    if state.store.add_filter_word(word, &admin.name).await? {
        audit(&state, &admin, "word.add", word, (None, Some(word))).await?;
        state.announce_catalog().await;
    }
    see_other("/admin/words")
}

/// `POST /admin/words/remove`.
pub async fn remove(
    State(state): State<AppState>,
    admin: Admin,
    axum::Form(form): axum::Form<WordForm>,
) -> AdminResult {
    admin.require(Role::Editor)?;
    let word = form.word.trim();
    if state.store.remove_filter_word(word).await? {
        audit(&state, &admin, "word.remove", word, (Some(word), None)).await?;
        state.announce_catalog().await;
    }
    see_other("/admin/words")
}

/// A prompt to check.
#[derive(Debug, Deserialize)]
pub struct CheckForm {
    text: String,
}

/// `POST /admin/words/check`: which word the filter finds in a prompt, after the same normalisation.
pub async fn check(
    State(state): State<AppState>,
    admin: Admin,
    axum::Form(form): axum::Form<CheckForm>,
) -> AdminResult {
    let catalog = state.inbox.catalog();
    let matched = catalog.filter.find(&form.text).map(str::to_string);
    let normalised = crate::filter::normalize(&form.text);
    words_page(&state, admin, Some((form.text, normalised, matched))).await
}
