//! Campaigns as data: keywords, a prompt template with the follower's subject in it, painting parameters, quotas,
//! a time window (Asia/Shanghai) and a 中文 → English glossary applied to the subject (the SD text encoder reads
//! English). Stored in the database (every change kept as a revision), seeded from `config/campaigns/*.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::ModelCatalog;
use crate::model::LoraChoice;
use crate::store::{Store, StoreError};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a campaign definition is refused.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Not valid TOML for a campaign.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// Parsed, but not a usable campaign.
    #[error("campaign {name:?}: {reason}")]
    Invalid {
        /// The campaign.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Texts a campaign answers with; empty ones fall back to the general replies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CampaignReplies {
    /// Answer to `subscribe` while the campaign runs.
    pub welcome: String,
    /// Answer to an admitted request.
    pub received: String,
    /// Before `starts_at`; `{starts_at}` is filled in.
    pub not_started: String,
    /// After `ends_at`.
    pub ended: String,
}

/// One campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// Unique name (`mid-autumn`).
    pub name: String,
    /// Shown to admins.
    #[serde(default)]
    pub title: String,
    /// Words that start a request for this campaign (`中秋 嫦娥抱玉兔`).
    pub keywords: Vec<String>,
    /// Menu `CLICK` keys that answer with the campaign's welcome text.
    #[serde(default)]
    pub menu_keys: Vec<String>,
    /// The prompt, with `{subject}` where the follower's (translated) words go.
    pub template: String,
    /// Painted when the follower gives only the keyword.
    #[serde(default)]
    pub default_subject: String,
    /// Negative prompt.
    #[serde(default)]
    pub negative_prompt: String,
    /// The model it is painted with (a folder of the model catalogue; empty = the default model).
    #[serde(default)]
    pub model: String,
    /// LoRAs merged into the model for this campaign (`[{ name = "NAME", scale = 0.8 }]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraChoice>,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Denoising steps.
    pub steps: u32,
    /// Scheduler name.
    pub scheduler: String,
    /// Guidance scale.
    pub guidance: f32,
    /// Requests per follower per day (Asia/Shanghai); 0 = the general limit.
    #[serde(default)]
    pub daily_quota: u32,
    /// Requests for the whole campaign per day; 0 = none.
    #[serde(default)]
    pub daily_cap: u32,
    /// RFC 3339 start, e.g. `2027-09-10T00:00:00+08:00`.
    pub starts_at: String,
    /// RFC 3339 end (exclusive).
    pub ends_at: String,
    /// Reply texts.
    #[serde(default)]
    pub replies: CampaignReplies,
    /// 中文 → English, applied to the subject, longest entries first.
    #[serde(default)]
    pub glossary: BTreeMap<String, String>,
    /// Painting from followers' photos while the campaign runs (img2img); `None` = photos are not painted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photo: Option<PhotoMode>,
}

/// A campaign's `[photo]`: a follower's photo becomes an img2img job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotoMode {
    /// How much of the photo is repainted, above 0 and at most 1 (the share of the steps run).
    #[serde(default = "default_strength")]
    pub strength: f64,
    /// The prompt painted over a photo; `{subject}`, if present, is the campaign's default subject.
    pub template: String,
    /// Negative prompt; empty = the campaign's.
    #[serde(default)]
    pub negative_prompt: String,
    /// Picture width; 0 = the campaign's.
    #[serde(default)]
    pub width: u32,
    /// Picture height; 0 = the campaign's.
    #[serde(default)]
    pub height: u32,
    /// Answer to a photo taken for painting; empty = `replies.photo_received`.
    #[serde(default)]
    pub received: String,
}

fn default_strength() -> f64 {
    0.6
}

impl PhotoMode {
    /// The size photos are painted at, given the campaign's.
    pub fn size(&self, campaign: (u32, u32)) -> (u32, u32) {
        (
            if self.width == 0 {
                campaign.0
            } else {
                self.width
            },
            if self.height == 0 {
                campaign.1
            } else {
                self.height
            },
        )
    }
}

/// Where `now` falls relative to a campaign's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Before `starts_at`.
    NotStarted,
    /// Running.
    Open,
    /// At or after `ends_at`.
    Ended,
}

impl Campaign {
    /// Parses a TOML definition.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, CampaignError> {
        let campaign: Campaign = toml::from_str(text).map_err(|e| CampaignError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        campaign.validate()?;
        Ok(campaign)
    }

    /// The TOML form (for export).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks what serde cannot: the template, the window, the parameters.
    pub fn validate(&self) -> Result<(), CampaignError> {
        let invalid = |reason: String| CampaignError::Invalid {
            name: self.name.clone(),
            reason,
        };
        if self.name.trim().is_empty() || self.name.len() > 64 {
            return Err(invalid("name must be 1 to 64 characters".into()));
        }
        if self.keywords.is_empty() || self.keywords.iter().any(|k| k.trim().is_empty()) {
            return Err(invalid("needs at least one non-empty keyword".into()));
        }
        if !self.template.contains("{subject}") {
            return Err(invalid("template must contain {subject}".into()));
        }
        if self
            .scheduler
            .parse::<crate::engine::SchedulerKind>()
            .is_err()
        {
            return Err(invalid(format!("unknown scheduler {:?}", self.scheduler)));
        }
        let sized = |v: u32| (64..=2048).contains(&v) && v.is_multiple_of(8);
        if !sized(self.width) || !sized(self.height) || !(1..=200).contains(&self.steps) {
            return Err(invalid(
                "width and height must be multiples of 8 from 64 to 2048, steps 1 to 200".into(),
            ));
        }
        if !(self.guidance.is_finite() && (0.0..=30.0).contains(&self.guidance)) {
            return Err(invalid("guidance must be between 0 and 30".into()));
        }
        let (start, end) = self.window_times()?;
        if end <= start {
            return Err(invalid("ends_at must be after starts_at".into()));
        }
        for lora in &self.loras {
            if lora.name.trim().is_empty() {
                return Err(invalid("a LoRA needs a name".into()));
            }
            if !(lora.scale.is_finite() && (-10.0..=10.0).contains(&lora.scale)) {
                return Err(invalid(format!(
                    "LoRA {} scale {} must be between -10 and 10",
                    lora.name, lora.scale
                )));
            }
        }
        let mut names: Vec<&str> = self.loras.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("a LoRA is listed twice".into()));
        }
        if let Some(photo) = &self.photo {
            if !(photo.strength.is_finite() && photo.strength > 0.0 && photo.strength <= 1.0) {
                return Err(invalid(
                    "[photo] strength must be above 0 and at most 1".into(),
                ));
            }
            if (f64::from(self.steps) * photo.strength) < 1.0 {
                return Err(invalid(format!(
                    "[photo] strength {} runs none of the {} steps",
                    photo.strength, self.steps
                )));
            }
            if photo.template.trim().is_empty() {
                return Err(invalid("[photo] needs a template".into()));
            }
            let (width, height) = photo.size((self.width, self.height));
            if !sized(width) || !sized(height) {
                return Err(invalid(
                    "[photo] width and height must be 0 or multiples of 8 from 64 to 2048".into(),
                ));
            }
        }
        Ok(())
    }

    /// The prompt painted over a follower's photo.
    pub fn photo_prompt(&self) -> Option<String> {
        let photo = self.photo.as_ref()?;
        Some(photo.template.replace(
            "{subject}",
            translate(&self.default_subject, &self.glossary).trim(),
        ))
    }

    /// Checks the model and LoRAs against `catalog`: the model exists, every LoRA exists and every key of it fits
    /// the model. With `strict` false, a model this catalogue lacks is accepted (another node may paint it) — but
    /// when it has the model, the LoRAs must be there and fit.
    pub fn check_models(&self, catalog: &ModelCatalog, strict: bool) -> Result<(), CampaignError> {
        let model = if self.model.is_empty() {
            catalog.default_model()
        } else {
            self.model.as_str()
        };
        if !strict && !catalog.model_names().iter().any(|m| m == model) {
            tracing::warn!(campaign = %self.name, %model, "this node does not have the campaign's model; its LoRAs are checked where it is painted");
            return Ok(());
        }
        catalog
            .check(model, &self.loras)
            .map_err(|e| CampaignError::Invalid {
                name: self.name.clone(),
                reason: e.to_string(),
            })
    }

    fn window_times(&self) -> Result<(OffsetDateTime, OffsetDateTime), CampaignError> {
        let parse = |field: &str, value: &str| {
            OffsetDateTime::parse(value, &Rfc3339).map_err(|e| CampaignError::Invalid {
                name: self.name.clone(),
                reason: format!("{field} {value:?} is not an RFC 3339 time: {e}"),
            })
        };
        Ok((
            parse("starts_at", &self.starts_at)?,
            parse("ends_at", &self.ends_at)?,
        ))
    }

    /// Where `now` falls relative to the window.
    pub fn window(&self, now: OffsetDateTime) -> Window {
        match self.window_times() {
            Ok((start, _)) if now < start => Window::NotStarted,
            Ok((_, end)) if now < end => Window::Open,
            _ => Window::Ended,
        }
    }

    /// The English prompt for a follower's subject: glossary applied, put into the template.
    pub fn render(&self, subject: &str) -> String {
        let subject = if subject.trim().is_empty() {
            self.default_subject.as_str()
        } else {
            subject
        };
        self.template
            .replace("{subject}", translate(subject, &self.glossary).trim())
    }
}

/// Replaces glossary words in `text`, longest first, leftmost first, never inside a replacement.
pub fn translate(text: &str, glossary: &BTreeMap<String, String>) -> String {
    let mut entries: Vec<(&str, &str)> = glossary
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    entries.sort_by_key(|(k, _)| std::cmp::Reverse(k.chars().count()));
    let mut out = String::with_capacity(text.len() * 2);
    let mut rest = text;
    let mut last_was_translated = false;
    while let Some(c) = rest.chars().next() {
        if let Some((key, english)) = entries.iter().find(|(k, _)| rest.starts_with(k)) {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
            out.push_str(english);
            last_was_translated = true;
            rest = &rest[key.len()..];
        } else {
            if last_was_translated && !c.is_whitespace() && !matches!(c, ',' | '.') {
                out.push(' ');
            }
            out.push(c);
            last_was_translated = false;
            rest = &rest[c.len_utf8()..];
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads every `*.toml` in `dir` (sorted by name).
pub fn load_dir(dir: &Path) -> Result<Vec<Campaign>, CampaignError> {
    let io = |source| CampaignError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_file(p)).collect()
}

/// Reads one campaign file.
pub fn load_file(path: &Path) -> Result<Campaign, CampaignError> {
    let text = std::fs::read_to_string(path).map_err(|source| CampaignError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Campaign::from_toml(&text, path)
}

/// Stores `campaigns` (a revision for each change) as `changed_by`; with `only_if_missing`, only those the
/// database lacks. Returns the names stored.
pub async fn save_all(
    store: &dyn Store,
    campaigns: &[Campaign],
    changed_by: &str,
    only_if_missing: bool,
) -> Result<Vec<String>, StoreError> {
    let mut stored = Vec::new();
    for campaign in campaigns {
        let definition = serde_json::to_string(campaign)
            .map_err(|e| StoreError::Corrupt(format!("campaign {}: {e}", campaign.name)))?;
        if store
            .save_campaign(&campaign.name, &definition, changed_by, only_if_missing)
            .await?
        {
            stored.push(campaign.name.clone());
        }
    }
    Ok(stored)
}

/// The campaigns stored in the database; a definition that no longer parses or validates is skipped and logged.
pub async fn load_stored(store: &dyn Store) -> Result<Campaigns, StoreError> {
    let mut all = Vec::new();
    for stored in store.campaigns().await? {
        let parsed = serde_json::from_str::<Campaign>(&stored.definition)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()));
        match parsed {
            Ok(campaign) => all.push(campaign),
            Err(error) => {
                tracing::error!(campaign = %stored.name, %error, "stored campaign skipped")
            }
        }
    }
    Ok(Campaigns::new(all))
}

/// The campaigns a node knows, looked up by keyword and menu key.
#[derive(Debug, Clone, Default)]
pub struct Campaigns {
    all: Vec<Campaign>,
    /// Each keyword in the grammar's comparison form (normalised, lower case), with its campaign's index.
    keys: Vec<(String, usize)>,
}

impl Campaigns {
    /// A set of campaigns (later ones win a keyword both claim).
    pub fn new(all: Vec<Campaign>) -> Self {
        let keys = all
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                c.keywords
                    .iter()
                    .map(move |k| (crate::engine::normalize_prompt(k).to_lowercase(), i))
            })
            .collect();
        Self { all, keys }
    }

    /// All of them.
    pub fn all(&self) -> &[Campaign] {
        &self.all
    }

    /// Every keyword, for the grammar.
    pub fn keywords(&self) -> Vec<String> {
        self.all.iter().flat_map(|c| c.keywords.clone()).collect()
    }

    /// The campaign a (normalised, lower-cased) keyword belongs to.
    pub fn by_keyword(&self, keyword: &str) -> Option<&Campaign> {
        let (_, i) = self.keys.iter().rev().find(|(k, _)| k == keyword)?;
        self.all.get(*i)
    }

    /// The campaign of this name.
    pub fn by_name(&self, name: &str) -> Option<&Campaign> {
        self.all.iter().rev().find(|c| c.name == name)
    }

    /// The campaign a menu key starts.
    pub fn by_menu_key(&self, key: &str) -> Option<&Campaign> {
        self.all
            .iter()
            .rev()
            .find(|c| c.menu_keys.iter().any(|k| k == key))
    }

    /// The campaign running at `now` that paints photos (the one that started last), if any.
    pub fn photo_campaign(&self, now: OffsetDateTime) -> Option<&Campaign> {
        self.all
            .iter()
            .filter(|c| c.photo.is_some() && c.window(now) == Window::Open)
            .max_by_key(|c| c.window_times().map(|(start, _)| start).ok())
    }

    /// The campaign running at `now` (the one that started last), if any.
    pub fn active(&self, now: OffsetDateTime) -> Option<&Campaign> {
        self.all
            .iter()
            .filter(|c| c.window(now) == Window::Open)
            .max_by_key(|c| c.window_times().map(|(start, _)| start).ok())
    }
}

#[cfg(test)]
mod tests;
