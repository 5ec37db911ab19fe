//! Settings: `config/default.toml` (embedded) → the file named by `HUABI_CONFIG` → `HUABI__SECTION__KEY`
//! environment variables (and `DATABASE_URL`). The only module that reads the environment.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The defaults, compiled in so the binary works from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Errors while loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value was read but is not acceptable.
    #[error("configuration: {key}: {reason}")]
    Invalid {
        /// The offending key, as `section.key`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Every setting huabi reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// HTTP server.
    pub server: ServerSettings,
    /// Database connection.
    pub database: DatabaseSettings,
    /// The WeChat Official Account of single-account deployments (becomes the account `default`).
    pub wechat: WechatSettings,
    /// Every platform account, several per platform (`[[channels.wechat]]`, …); after loading, the `[wechat]`
    /// account is among them as `default` where it applies.
    #[serde(default)]
    pub channels: ChannelSettings,
    /// The painting engine.
    pub engine: crate::engine::EngineConfig,
    /// Translating Chinese prompts.
    pub translate: crate::engine::translate::TranslateConfig,
    /// The safety check of every picture.
    pub safety: crate::engine::safety::SafetyConfig,
    /// How jobs are painted and leased.
    pub jobs: JobSettings,
    /// How finished pictures reach followers.
    pub delivery: DeliverySettings,
    /// Where campaigns come from.
    pub campaigns: CampaignSettings,
    /// The content filter.
    pub filter: FilterSettings,
    /// Per-follower limits and backpressure.
    pub limits: LimitSettings,
    /// Reply texts.
    pub replies: ReplySettings,
    /// The web console.
    pub admin: AdminSettings,
    /// How long pictures, messages and jobs are kept.
    pub retention: RetentionSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// The console's public address (`https://…` makes its cookie `Secure`).
    pub public_url: String,
    /// Trust `X-Forwarded-For` / `X-Forwarded-Proto` from the proxy in front (client address, https).
    pub trust_proxy_headers: bool,
    /// Hours a login lasts.
    pub session_hours: f64,
    /// Size of preview pictures: their longer side, in pixels (0 = the campaign's own size).
    pub preview_size: u32,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Webhook body limit in bytes.
    pub body_limit_bytes: usize,
    /// Seconds granted to in-flight work on shutdown.
    pub shutdown_grace_secs: u64,
}

/// `[database]`.
#[derive(Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://…`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Seconds to wait for a pooled connection.
    pub acquire_timeout_secs: u64,
}

impl DatabaseSettings {
    /// The pool acquire timeout.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.acquire_timeout_secs)
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_secs", &self.acquire_timeout_secs)
            .finish()
    }
}

/// The URL with any password replaced by `***`, for logs.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // set_password only fails for URLs that cannot have one, which this one has.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => raw.to_string(),
        Err(_) => "<unparsable url>".to_string(),
    }
}

/// `[channels]`: the accounts huabi serves, by platform.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// WeChat Official Accounts (`[[channels.wechat]]`).
    #[serde(default)]
    pub wechat: Vec<WechatAccount>,
    /// Telegram bots (`[[channels.telegram]]`).
    #[serde(default)]
    pub telegram: Vec<TelegramAccount>,
    /// WeCom self-built apps (`[[channels.wecom]]`).
    #[serde(default)]
    pub wecom: Vec<WecomAccount>,
}

/// One `[[channels.wecom]]` entry: a WeCom (企业微信) self-built app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WecomAccount {
    /// The account's name in URLs (`/webhook/wecom/{name}`), storage and the environment.
    pub name: String,
    /// The callback Token (secret).
    #[serde(default = "empty_secret")]
    pub token: SecretString,
    /// The callback EncodingAESKey (43 characters; secret).
    #[serde(default = "empty_secret")]
    pub aes_key: SecretString,
    /// The CorpID (checked inside every message).
    #[serde(default)]
    pub corp_id: String,
    /// The app's AgentId.
    #[serde(default)]
    pub agent_id: String,
    /// The app's Secret (secret).
    #[serde(default = "empty_secret")]
    pub secret: SecretString,
    /// API base URL; tests point it at a local server.
    #[serde(default = "wecom_api_base")]
    pub api_base: String,
}

fn wecom_api_base() -> String {
    "https://qyapi.weixin.qq.com".into()
}

impl WecomAccount {
    /// An entry named `name` with nothing set.
    fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            token: empty_secret(),
            aes_key: empty_secret(),
            corp_id: String::new(),
            agent_id: String::new(),
            secret: empty_secret(),
            api_base: wecom_api_base(),
        }
    }

    /// Sets `field` from the environment (`HUABI__CHANNELS__WECOM__<NAME>__<FIELD>`).
    fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        match field {
            "token" => self.token = value.into(),
            "aes_key" => self.aes_key = value.into(),
            "corp_id" => self.corp_id = value.into(),
            "agent_id" => self.agent_id = value.into(),
            "secret" => self.secret = value.into(),
            "api_base" => self.api_base = value.into(),
            other => return Err(format!("unknown key {other:?}")),
        }
        Ok(())
    }

    /// Checks the callback keys: WeCom callbacks are always encrypted, so the AES key and CorpID are required.
    fn validate(&self) -> Result<(), ConfigError> {
        let prefix = format!("channels.wecom.{}", self.name);
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: format!("{prefix}.{key}"),
            reason,
        };
        crate::channel::wechat::crypto::AesKey::from_encoding_key(self.aes_key.expose_secret())
            .map_err(|e| invalid("aes_key", e.to_string()))?;
        if self.corp_id.is_empty() {
            return Err(invalid(
                "corp_id",
                "required (it is checked inside every message)".into(),
            ));
        }
        if !self.agent_id.is_empty() && !self.agent_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("agent_id", "a number".into()));
        }
        Ok(())
    }
}

/// One `[[channels.telegram]]` entry: a bot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramAccount {
    /// The account's name in URLs (`/webhook/telegram/{name}`), storage and the environment.
    pub name: String,
    /// The token @BotFather gave (secret).
    #[serde(default = "empty_secret")]
    pub bot_token: SecretString,
    /// The secret Telegram sends with every update (`setWebhook`'s `secret_token`; 1–256 of `A-Za-z0-9_-`).
    #[serde(default = "empty_secret")]
    pub secret_token: SecretString,
    /// Bot API base URL; tests point it at a local server.
    #[serde(default = "telegram_api_base")]
    pub api_base: String,
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

fn telegram_api_base() -> String {
    "https://api.telegram.org".into()
}

impl TelegramAccount {
    /// An entry named `name` with nothing set.
    fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            bot_token: empty_secret(),
            secret_token: empty_secret(),
            api_base: telegram_api_base(),
        }
    }

    /// Sets `field` from the environment (`HUABI__CHANNELS__TELEGRAM__<NAME>__<FIELD>`).
    fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        match field {
            "bot_token" => self.bot_token = value.into(),
            "secret_token" => self.secret_token = value.into(),
            "api_base" => self.api_base = value.into(),
            other => return Err(format!("unknown key {other:?}")),
        }
        Ok(())
    }

    /// Checks the secret token's form (Telegram refuses others at `setWebhook`).
    fn validate(&self) -> Result<(), ConfigError> {
        let secret = self.secret_token.expose_secret();
        let ok = secret.len() <= 256
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                key: format!("channels.telegram.{}.secret_token", self.name),
                reason: "use at most 256 of A-Z, a-z, 0-9, _ and -".into(),
            })
        }
    }
}

/// One `[[channels.wechat]]` entry: `[wechat]`'s keys and a name.
#[derive(Debug, Clone, Deserialize)]
pub struct WechatAccount {
    /// The account's name in URLs (`/webhook/wechat/{name}`), storage and the environment.
    pub name: String,
    /// Its credentials and checks.
    #[serde(flatten)]
    pub settings: WechatSettings,
}

/// The WeChat account `[wechat]` and `HUABI__WECHAT__*` configure.
pub const DEFAULT_ACCOUNT: &str = "default";

/// `[wechat]`, and each `[[channels.wechat]]` entry (missing keys take `[wechat]`'s defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WechatSettings {
    /// The console Token (secret).
    pub token: SecretString,
    /// The AppID.
    pub app_id: String,
    /// The AppSecret (secret).
    pub app_secret: SecretString,
    /// The current EncodingAESKey; empty means plaintext only (secret).
    pub aes_key: SecretString,
    /// The previous EncodingAESKey, tried when the current one fails (secret).
    pub previous_aes_key: SecretString,
    /// API base URL.
    pub api_base: String,
    /// Allowed difference between a request's timestamp and now, in seconds.
    pub max_clock_skew_secs: u64,
}

impl Default for WechatSettings {
    fn default() -> Self {
        Self {
            token: SecretString::from(""),
            app_id: String::new(),
            app_secret: SecretString::from(""),
            aes_key: SecretString::from(""),
            previous_aes_key: SecretString::from(""),
            api_base: "https://api.weixin.qq.com".into(),
            max_clock_skew_secs: 600,
        }
    }
}

impl WechatSettings {
    /// Whether a Token is set (without one no request can be authenticated).
    pub fn is_configured(&self) -> bool {
        !self.token.expose_secret().is_empty()
    }

    /// Sets `field` from the environment (`HUABI__CHANNELS__WECHAT__<NAME>__<FIELD>`).
    fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        match field {
            "token" => self.token = value.into(),
            "app_id" => self.app_id = value.into(),
            "app_secret" => self.app_secret = value.into(),
            "aes_key" => self.aes_key = value.into(),
            "previous_aes_key" => self.previous_aes_key = value.into(),
            "api_base" => self.api_base = value.into(),
            "max_clock_skew_secs" => {
                self.max_clock_skew_secs = value.parse().map_err(|e| format!("{e}"))?
            }
            other => return Err(format!("unknown key {other:?}")),
        }
        Ok(())
    }

    /// Checks the keys: AES keys well-formed, an AppID beside them. `prefix` names the section in errors.
    fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let aes = self.aes_key.expose_secret();
        for (key, value) in [
            ("aes_key", aes),
            ("previous_aes_key", self.previous_aes_key.expose_secret()),
        ] {
            if !value.is_empty() {
                crate::channel::wechat::crypto::AesKey::from_encoding_key(value).map_err(|e| {
                    ConfigError::Invalid {
                        key: format!("{prefix}.{key}"),
                        reason: e.to_string(),
                    }
                })?;
            }
        }
        if !aes.is_empty() && self.app_id.is_empty() {
            return Err(ConfigError::Invalid {
                key: format!("{prefix}.app_id"),
                reason:
                    "required when aes_key is set (it is checked inside every encrypted message)"
                        .into(),
            });
        }
        Ok(())
    }
}

/// Whether `name` can name an account: lowercase ASCII letters, digits, `-` and `_`, at most 32, starting with a
/// letter or digit (it appears in URLs and environment variable names).
pub fn valid_account_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// The entry of `list` named `name` (a shell cannot export `-`: `BRAND_A` also addresses `brand-a`), added by `new`
/// when there is none.
fn entry<'a, T>(
    list: &'a mut Vec<T>,
    name: &str,
    name_of: fn(&T) -> &String,
    new: impl FnOnce() -> T,
) -> &'a mut T {
    let index = match list
        .iter()
        .position(|a| name_of(a).replace('-', "_") == name)
    {
        Some(i) => i,
        None => {
            list.push(new());
            list.len() - 1
        }
    };
    &mut list[index]
}

/// The prefix of environment variables that address platform accounts by name.
const CHANNELS_ENV: &str = "HUABI__CHANNELS__";

impl ChannelSettings {
    /// Applies `HUABI__CHANNELS__<PLATFORM>__<NAME>__<FIELD>` variables: to the entry of that name, or to a new one.
    fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let mut vars: Vec<_> = env
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(CHANNELS_ENV).map(|rest| (k, rest, v)))
            .collect();
        vars.sort();
        for (var, rest, value) in vars {
            let invalid = |reason: String| ConfigError::Invalid {
                key: var.clone(),
                reason,
            };
            let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            let [platform, name, field] = parts.as_slice() else {
                return Err(invalid(
                    "expected HUABI__CHANNELS__<PLATFORM>__<NAME>__<FIELD>".into(),
                ));
            };
            match platform.as_str() {
                "wechat" => entry(
                    &mut self.wechat,
                    name,
                    |a| &a.name,
                    || WechatAccount {
                        name: name.clone(),
                        settings: WechatSettings::default(),
                    },
                )
                .settings
                .set(field, value),
                "telegram" => entry(
                    &mut self.telegram,
                    name,
                    |a| &a.name,
                    || TelegramAccount::named(name),
                )
                .set(field, value),
                "wecom" => entry(
                    &mut self.wecom,
                    name,
                    |a| &a.name,
                    || WecomAccount::named(name),
                )
                .set(field, value),
                other => return Err(invalid(format!("unknown platform {other:?}"))),
            }
            .map_err(invalid)?;
        }
        Ok(())
    }

    /// Puts `[wechat]` among the WeChat accounts as `default`: always when no other account is listed (so a node
    /// without a Token answers 503, as before), else only when it has a Token.
    fn adopt_default(&mut self, wechat: &WechatSettings) -> Result<(), ConfigError> {
        if self.wechat.is_empty() || wechat.is_configured() {
            if self.wechat.iter().any(|a| a.name == DEFAULT_ACCOUNT) {
                return Err(ConfigError::Invalid {
                    key: "channels.wechat".into(),
                    reason:
                        "an account named \"default\" is listed and [wechat] is set too: keep one"
                            .into(),
                });
            }
            self.wechat.insert(
                0,
                WechatAccount {
                    name: DEFAULT_ACCOUNT.into(),
                    settings: wechat.clone(),
                },
            );
        }
        Ok(())
    }

    /// Checks every account: names valid and unique per platform, keys well-formed.
    fn validate(&self) -> Result<(), ConfigError> {
        check_names("wechat", self.wechat.iter().map(|a| a.name.as_str()))?;
        check_names("telegram", self.telegram.iter().map(|a| a.name.as_str()))?;
        check_names("wecom", self.wecom.iter().map(|a| a.name.as_str()))?;
        self.wecom.iter().try_for_each(WecomAccount::validate)?;
        for account in &self.wechat {
            account
                .settings
                .validate(&format!("channels.wechat.{}", account.name))?;
        }
        self.telegram.iter().try_for_each(TelegramAccount::validate)
    }
}

/// Account names of one platform: valid and unique.
fn check_names<'a>(
    platform: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        let invalid = |reason| ConfigError::Invalid {
            key: format!("channels.{platform}.name"),
            reason,
        };
        if !valid_account_name(name) {
            return Err(invalid(format!(
                "{name:?}: use 1-32 lowercase letters, digits, - or _"
            )));
        }
        if !seen.insert(name) {
            return Err(invalid(format!("{name:?} is listed twice")));
        }
    }
    Ok(())
}

/// `[jobs]`: painting parameters of a request and the queue's leases.
#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
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
    /// Negative prompt.
    pub negative_prompt: String,
    /// Lease length in seconds.
    pub lease_secs: f64,
    /// Leases before a job fails.
    pub max_attempts: i32,
    /// Idle worker's poll tick, in seconds.
    pub poll_secs: f64,
    /// Largest photo file painted from, in bytes.
    pub max_photo_bytes: usize,
    /// Largest photo painted from, in pixels (width × height); larger ones are refused before decoding.
    pub max_photo_pixels: u64,
}

/// `[delivery]`: the fast path, the fetch flow and the deliverers.
#[derive(Debug, Clone, Deserialize)]
pub struct DeliverySettings {
    /// Seconds a webhook request waits for its picture to answer with it directly; 0 turns the fast path off.
    pub fast_path_secs: f64,
    /// Queued jobs above which a request does not wait for its picture (it could not be painted in time).
    pub fast_path_max_queue: u32,
    /// The account has no customer-service API (unverified): keep every picture for the fetch flow.
    pub passive_only: bool,
    /// Words that fetch a waiting picture, compared after trimming and lower-casing.
    pub fetch_keywords: Vec<String>,
    /// Any message from a follower with a picture waiting (held for the fetch flow) fetches it.
    pub fetch_on_any_message: bool,
    /// Deliveries a deliverer runs at once.
    pub concurrency: usize,
    /// Seconds a deliverer's lease on a finished job lasts.
    pub lease_secs: f64,
    /// Delivery attempts before a picture is kept for the fetch flow instead.
    pub max_attempts: i32,
    /// First backoff after a transient error, in seconds; doubles per attempt, with jitter.
    pub backoff_base_secs: f64,
    /// Longest backoff, in seconds.
    pub backoff_max_secs: f64,
    /// Seconds one call to WeChat's API may take.
    pub api_timeout_secs: f64,
    /// Idle deliverer's poll tick, in seconds.
    pub poll_secs: f64,
}

/// `[campaigns]`.
#[derive(Debug, Clone, Deserialize)]
pub struct CampaignSettings {
    /// Folder of `*.toml` campaigns imported at start when the database lacks them.
    pub seed_dir: std::path::PathBuf,
    /// How often a node re-reads the campaigns from the database, in seconds.
    pub reload_secs: f64,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// Requests per follower per day (Asia/Shanghai); a campaign's `daily_quota` overrides it; 0 = unlimited.
    pub per_day: u32,
    /// Requests per follower per clock minute; 0 = unlimited.
    pub per_minute: u32,
    /// Jobs one follower may have queued or painting; 0 = unlimited.
    pub in_flight: u32,
    /// Queued jobs above which requests get the busy reply and no job; 0 = never.
    pub busy_queue: u32,
    /// Followers (user ids) with no limits.
    pub allow: Vec<String>,
    /// Followers never painted for.
    pub deny: Vec<String>,
}

/// `[filter]`.
#[derive(Debug, Clone, Deserialize)]
pub struct FilterSettings {
    /// The shipped word list (one entry a line), extended by the `filter_words` table.
    pub words_file: std::path::PathBuf,
}

/// `[replies]`: every text a follower can receive.
#[derive(Debug, Clone, Deserialize)]
pub struct ReplySettings {
    /// A painting request was queued.
    pub received: String,
    /// Help text.
    pub help: String,
    /// Welcome text for new followers.
    pub welcome: String,
    /// A voice message without recognised speech.
    pub voice_unrecognized: String,
    /// A message kind that cannot be painted from.
    pub unsupported: String,
    /// Words that ask for help.
    pub help_keywords: Vec<String>,
    /// A painting request was queued on an account without the customer-service API.
    pub received_passive: String,
    /// Sent (or given on fetch) when a painting failed for good.
    pub failed: String,
    /// Fetch, with nothing finished yet but a painting under way.
    pub fetch_pending: String,
    /// Fetch, with nothing at all.
    pub fetch_nothing: String,
    /// Fetch, when the picture could not be uploaded right now.
    pub fetch_retry: String,
    /// 额度 while no daily limit is configured.
    pub quota_unlimited: String,
    /// 进度 with paintings queued; `{open}`, `{ahead}` and `{eta}` are filled in.
    pub status_queued: String,
    /// 进度 with nothing queued.
    pub status_idle: String,
    /// Added to 进度 when the follower's painting needs a model no worker paints now; `{model}` is its name.
    pub status_waiting_model: String,
    /// 重画 with no earlier request.
    pub again_nothing: String,
    /// A prompt longer than the engine takes; `{max}` is filled in.
    pub too_long: String,
    /// A message the grammar refused; `{detail}` says why.
    pub bad_command: String,
    /// A campaign request before the campaign starts, unless the campaign says otherwise; `{starts_at}`.
    pub campaign_not_started: String,
    /// A campaign request after the campaign ended, unless the campaign says otherwise.
    pub campaign_ended: String,
    /// A request the content filter stopped.
    pub blocked: String,
    /// 额度 with a daily limit; `{left}` and `{limit}` are filled in.
    pub quota_left: String,
    /// The daily quota is used up; `{limit}`.
    pub limited_per_day: String,
    /// Too many this minute; `{limit}`.
    pub limited_per_minute: String,
    /// Too many queued or painting; `{limit}`.
    pub limited_in_flight: String,
    /// The campaign's daily cap is reached.
    pub limited_campaign_cap: String,
    /// The queue is too deep.
    pub busy: String,
    /// A deny-listed follower.
    pub denied: String,
    /// A picture the safety check stopped (it is not delivered).
    #[serde(rename = "unsafe")]
    pub unsafe_picture: String,
    /// A photo taken for painting in a photo campaign.
    pub photo_received: String,
    /// A photo over the size limits; `{max_mb}` and `{max_megapixels}` are filled in.
    pub photo_too_large: String,
    /// A photo that cannot be read.
    pub photo_unreadable: String,
    /// A photo the platform no longer gives out.
    pub photo_missing: String,
    /// Added to 进度 when the follower's latest painting was translated; `{prompt}` is the English painted.
    pub status_painted_as: String,
}

/// `[retention]`.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Days picture bytes are kept after delivery (or after the job failed).
    pub picture_days: u32,
    /// Days a held picture waits for `取图` before it expires.
    pub held_days: u32,
    /// Days inbound messages and finished jobs are kept (daily usage is rolled up first and kept for good).
    pub history_days: u32,
    /// Seconds between pruning passes (nodes with the deliver role run them).
    pub every_secs: f64,
    /// The most rows of each kind one statement removes.
    pub batch: i64,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// tracing filter directive.
    pub filter: String,
    /// `pretty` or `json`.
    pub format: String,
}

impl Settings {
    /// Loads settings from the defaults, `HUABI_CONFIG` and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::vars().collect())
    }

    /// Loads settings as [`Settings::load`] does, from the given environment instead of the process's.
    pub fn load_from(env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = env.get("HUABI_CONFIG").filter(|p| !p.is_empty()) {
            builder = builder.add_source(File::from(PathBuf::from(path)).required(true));
        }
        let huabi_env: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("HUABI__") && !k.starts_with(CHANNELS_ENV))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("HUABI")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("replies.help_keywords")
                .with_list_parse_key("delivery.fetch_keywords")
                .with_list_parse_key("limits.allow")
                .with_list_parse_key("limits.deny")
                .with_list_parse_key("engine.models")
                .try_parsing(true)
                .source(Some(huabi_env.clone())),
        );
        if !huabi_env.contains_key("HUABI__DATABASE__URL")
            && let Some(url) = env.get("DATABASE_URL").filter(|u| !u.is_empty())
        {
            builder = builder.set_override("database.url", url.as_str())?;
        }
        if !huabi_env.contains_key("HUABI__ENGINE__ORT_DYLIB_PATH")
            && let Some(path) = env.get("ORT_DYLIB_PATH").filter(|p| !p.is_empty())
        {
            builder = builder.set_override("engine.ort_dylib_path", path.as_str())?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.engine.safety = settings.safety.clone();
        settings.channels.apply_env(&env)?;
        settings.wechat.validate("wechat")?;
        settings.channels.adopt_default(&settings.wechat)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.channels.validate()?;
        if self.server.body_limit_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "server.body_limit_bytes".into(),
                reason: "must be positive".into(),
            });
        }
        if self
            .jobs
            .scheduler
            .parse::<crate::engine::SchedulerKind>()
            .is_err()
        {
            return Err(ConfigError::Invalid {
                key: "jobs.scheduler".into(),
                reason: format!("unknown scheduler {:?}", self.jobs.scheduler),
            });
        }
        if !self.jobs.lease_secs.is_finite()
            || self.jobs.lease_secs <= 0.0
            || self.jobs.max_attempts < 1
            || !self.jobs.poll_secs.is_finite()
            || self.jobs.poll_secs <= 0.0
        {
            return Err(ConfigError::Invalid {
                key: "jobs.lease_secs".into(),
                reason: "lease_secs and poll_secs must be positive and max_attempts at least 1"
                    .into(),
            });
        }
        let r = &self.retention;
        if r.picture_days == 0
            || r.held_days == 0
            || r.history_days == 0
            || r.batch < 1
            || !(r.every_secs.is_finite() && r.every_secs > 0.0)
        {
            return Err(ConfigError::Invalid {
                key: "retention".into(),
                reason: "days, every_secs and batch must be positive".into(),
            });
        }
        let d = &self.delivery;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !(d.fast_path_secs.is_finite() && (0.0..=4.0).contains(&d.fast_path_secs)) {
            return Err(ConfigError::Invalid {
                key: "delivery.fast_path_secs".into(),
                reason: "must be between 0 and 4 (WeChat waits 5 s for an answer)".into(),
            });
        }
        if !(positive(d.lease_secs)
            && positive(d.backoff_base_secs)
            && positive(d.backoff_max_secs)
            && positive(d.api_timeout_secs)
            && positive(d.poll_secs)
            && d.max_attempts >= 1
            && d.concurrency >= 1)
        {
            return Err(ConfigError::Invalid {
                key: "delivery".into(),
                reason: "lease, backoff, timeout and poll seconds must be positive, max_attempts and concurrency at least 1".into(),
            });
        }
        if !(self.campaigns.reload_secs.is_finite() && self.campaigns.reload_secs > 0.0) {
            return Err(ConfigError::Invalid {
                key: "campaigns.reload_secs".into(),
                reason: "must be positive".into(),
            });
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "database.max_connections".into(),
                reason: "must be positive".into(),
            });
        }
        Ok(())
    }
}

/// Jobs start from the configured painting parameters (here, so the domain types depend on nothing).
impl crate::model::NewJob {
    /// A job for `prompt` with the configured painting parameters.
    pub fn new(prompt: impl Into<String>, settings: &JobSettings) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: settings.negative_prompt.clone(),
            width: settings.width,
            height: settings.height,
            steps: settings.steps,
            scheduler: settings.scheduler.clone(),
            guidance: settings.guidance,
            campaign: None,
            model: String::new(),
            loras: Vec::new(),
            seed: None,
            deliver_after_secs: 0.0,
            photo: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_without_environment() {
        let s = Settings::load_from(HashMap::new()).expect("defaults are valid");
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database.url, "sqlite://data/huabi.db?mode=rwc");
        assert_eq!(s.wechat.max_clock_skew_secs, 600);
        assert_eq!(s.server.body_limit_bytes, 65536);
        assert_eq!(s.engine.default_model(), "tiny-sd");
        assert_eq!(
            s.engine.default_model_dir(),
            std::path::PathBuf::from("models/tiny-sd")
        );
        assert_eq!(s.engine.device, "cpu");
    }

    #[test]
    fn ort_dylib_path_comes_from_ort_s_own_variable_unless_configured() {
        let s =
            Settings::load_from(env(&[("ORT_DYLIB_PATH", "/x/libonnxruntime.so")])).expect("valid");
        assert_eq!(s.engine.ort_dylib_path, "/x/libonnxruntime.so");
        let s = Settings::load_from(env(&[
            ("ORT_DYLIB_PATH", "/x/libonnxruntime.so"),
            ("HUABI__ENGINE__ORT_DYLIB_PATH", "/y/lib.so"),
        ]))
        .expect("valid");
        assert_eq!(s.engine.ort_dylib_path, "/y/lib.so");
    }

    #[test]
    fn cuda_options_come_from_the_environment() {
        assert_eq!(
            Settings::load_from(env(&[]))
                .expect("valid")
                .engine
                .cuda_options,
            ""
        );
        let s = Settings::load_from(env(&[("HUABI__ENGINE__CUDA_OPTIONS", "prefer_nhwc=1")]))
            .expect("valid");
        assert_eq!(s.engine.cuda_options, "prefer_nhwc=1");
    }

    #[test]
    fn model_dir_wins_over_model_and_names_the_default() {
        let s = Settings::load_from(env(&[
            ("HUABI__ENGINE__MODEL", "sd15"),
            ("HUABI__ENGINE__MODELS", "sd15,sdxl"),
        ]))
        .expect("valid");
        assert_eq!(s.engine.default_model(), "sd15");
        assert_eq!(s.engine.models, vec!["sd15", "sdxl"]);
        let s = Settings::load_from(env(&[
            ("HUABI__ENGINE__MODEL", "sd15"),
            ("HUABI__ENGINE__MODEL_DIR", "/srv/models/my-anime"),
        ]))
        .expect("valid");
        assert_eq!(s.engine.default_model(), "my-anime");
        assert_eq!(
            s.engine.default_model_dir(),
            std::path::PathBuf::from("/srv/models/my-anime")
        );
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = Settings::load_from(env(&[
            ("HUABI__SERVER__LISTEN", "0.0.0.0:9000"),
            ("HUABI__WECHAT__TOKEN", "tok"),
            ("HUABI__WECHAT__MAX_CLOCK_SKEW_SECS", "30"),
            ("HUABI__REPLIES__HELP_KEYWORDS", "救命,sos"),
        ]))
        .expect("valid");
        assert_eq!(s.server.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(s.wechat.token.expose_secret(), "tok");
        assert_eq!(s.wechat.max_clock_skew_secs, 30);
        assert_eq!(s.replies.help_keywords, vec!["救命", "sos"]);
    }

    #[test]
    fn database_url_alias_is_honoured_but_loses_to_the_huabi_variable() {
        let s = Settings::load_from(env(&[("DATABASE_URL", "postgres://a@h/d")])).expect("valid");
        assert_eq!(s.database.url, "postgres://a@h/d");
        let s = Settings::load_from(env(&[
            ("DATABASE_URL", "postgres://a@h/d"),
            ("HUABI__DATABASE__URL", "sqlite://x.db"),
        ]))
        .expect("valid");
        assert_eq!(s.database.url, "sqlite://x.db");
    }

    #[test]
    fn config_file_sits_between_defaults_and_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("huabi.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:7000\"\nbody_limit_bytes = 1000\n",
        )
        .expect("write");
        let path = path.to_string_lossy().to_string();
        let s = Settings::load_from(env(&[
            ("HUABI_CONFIG", &path),
            ("HUABI__SERVER__BODY_LIMIT_BYTES", "2000"),
        ]))
        .expect("valid");
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(s.server.body_limit_bytes, 2000);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Settings::load_from(env(&[
            ("HUABI__WECHAT__TOKEN", "tok-SECRET-1"),
            ("HUABI__WECHAT__APP_SECRET", "app-SECRET-2"),
            ("HUABI__WECHAT__APP_ID", "wx1"),
            (
                "HUABI__WECHAT__AES_KEY",
                "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
            ),
            ("HUABI__DATABASE__URL", "postgres://u:pw-SECRET-3@h/db"),
        ]))
        .expect("valid");
        let shown = format!("{s:?}");
        for secret in ["SECRET-1", "SECRET-2", "jWmYm7", "SECRET-3"] {
            assert!(!shown.contains(secret), "{secret} leaked into {shown}");
        }
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = Settings::load_from(env(&[("HUABI__WECHAT__AES_KEY", "short")]))
            .expect_err("a short key is refused");
        assert!(err.to_string().contains("wechat.aes_key"), "{err}");
        let err = Settings::load_from(env(&[("HUABI__SERVER__LISTEN", "not an address")]))
            .expect_err("a bad address is refused");
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Settings::load_from(env(&[(
            "HUABI__WECHAT__AES_KEY",
            "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        )]))
        .expect_err("app id is required with a key");
        assert!(err.to_string().contains("app_id"), "{err}");
    }

    fn with_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_from(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn wechat_alone_is_the_default_account() {
        let s = with_env(&[("HUABI__WECHAT__TOKEN", "tok")]).expect("valid");
        let names: Vec<_> = s.channels.wechat.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["default"]);
        assert_eq!(s.channels.wechat[0].settings.token.expose_secret(), "tok");
        // Nothing configured at all: still `default`, so its webhook answers 503 rather than 404.
        let s = with_env(&[]).expect("valid");
        assert_eq!(s.channels.wechat.len(), 1);
        assert!(!s.channels.wechat[0].settings.is_configured());
    }

    #[test]
    fn accounts_are_addressed_by_name_from_the_environment() {
        let s = with_env(&[
            ("HUABI__CHANNELS__WECHAT__BRAND_A__TOKEN", "a-tok"),
            ("HUABI__CHANNELS__WECHAT__BRAND_A__APP_SECRET", "a-secret"),
            ("HUABI__CHANNELS__WECHAT__SHOP__TOKEN", "s-tok"),
            ("HUABI__CHANNELS__WECHAT__SHOP__MAX_CLOCK_SKEW_SECS", "30"),
        ])
        .expect("valid");
        let names: Vec<_> = s.channels.wechat.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["brand_a", "shop"],
            "no default without a [wechat] Token"
        );
        let a = &s.channels.wechat[0].settings;
        assert_eq!(a.app_secret.expose_secret(), "a-secret");
        assert_eq!(
            a.api_base, "https://api.weixin.qq.com",
            "defaults fill the rest"
        );
        assert_eq!(s.channels.wechat[1].settings.max_clock_skew_secs, 30);
        let s = with_env(&[
            ("HUABI__WECHAT__TOKEN", "tok"),
            ("HUABI__CHANNELS__WECHAT__SHOP__TOKEN", "s-tok"),
        ])
        .expect("valid");
        let names: Vec<_> = s.channels.wechat.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["default", "shop"]);
    }

    #[test]
    fn bad_accounts_are_refused_naming_the_key() {
        for (env, key) in [
            (
                vec![("HUABI__CHANNELS__WECHAT__SHOP__COLOUR", "x")],
                "HUABI__CHANNELS__WECHAT__SHOP__COLOUR",
            ),
            (
                vec![("HUABI__CHANNELS__WECHAT__SHOP", "x")],
                "HUABI__CHANNELS__WECHAT__SHOP",
            ),
            (vec![("HUABI__CHANNELS__ICQ__SHOP__TOKEN", "x")], "ICQ"),
            (
                vec![("HUABI__CHANNELS__WECHAT__SHOP__AES_KEY", "short")],
                "channels.wechat.shop.aes_key",
            ),
            (
                vec![("HUABI__CHANNELS__WECHAT__SHOP__MAX_CLOCK_SKEW_SECS", "soon")],
                "MAX_CLOCK_SKEW_SECS",
            ),
            (
                vec![
                    ("HUABI__WECHAT__TOKEN", "t"),
                    ("HUABI__CHANNELS__WECHAT__DEFAULT__TOKEN", "u"),
                ],
                "channels.wechat",
            ),
            (
                vec![("HUABI__CHANNELS__WECHAT__SHOP!__TOKEN", "x")],
                "channels.wechat.name",
            ),
        ] {
            let err = with_env(&env).expect_err("refused").to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn accounts_come_from_the_config_file_and_the_environment_adds_secrets() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("huabi.toml");
        std::fs::write(
            &path,
            "[[channels.wechat]]\nname = \"brand-a\"\ntoken = \"a\"\napp_id = \"wx_a\"\n\n\
             [[channels.wechat]]\nname = \"brand-b\"\ntoken = \"b\"\napi_base = \"http://127.0.0.1:9\"\n",
        )
        .expect("write");
        let s = with_env(&[
            ("HUABI_CONFIG", path.to_str().expect("utf-8")),
            ("HUABI__CHANNELS__WECHAT__BRAND_B__APP_SECRET", "from-env"),
        ])
        .expect("valid");
        let names: Vec<_> = s.channels.wechat.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["brand-a", "brand-b"]);
        let b = &s.channels.wechat[1].settings;
        assert_eq!(
            (
                b.token.expose_secret(),
                b.app_secret.expose_secret(),
                b.api_base.as_str()
            ),
            ("b", "from-env", "http://127.0.0.1:9")
        );
    }
}
