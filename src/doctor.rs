//! `huabi doctor`: checks a deployment end to end — the database reachable and migrated, its clock, ONNX Runtime and
//! every model loading, each platform account's credentials accepted — and says what to fix.

use std::time::Duration;

use secrecy::ExposeSecret;
use time::OffsetDateTime;

use crate::channel::telegram::api::TelegramApi;
use crate::channel::wechat::api::WechatApi;
use crate::config::Settings;
use crate::store;

/// How a check came out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but deserves a look.
    Warn,
    /// Broken: huabi cannot do this part of its job.
    Fail,
}

/// One check: what was checked, what was found, and what to do about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// How it came out.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do (empty when fine).
    pub fix: String,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Verdict::Ok, detail, "")
    }

    fn new(
        name: impl Into<String>,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            verdict,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// Clock skew (local vs database) above this is worth a warning; WeChat signs with timestamps, and limits and
/// leases compare times across nodes.
const SKEW_WARN: Duration = Duration::from_secs(2);
/// Skew above this breaks things (huabi refuses messages whose timestamp is 600 s off).
const SKEW_FAIL: Duration = Duration::from_secs(60);

/// Runs every check; `load_models` opens each model's sessions (seconds per model).
pub async fn run(settings: &Settings, load_models: bool) -> Vec<Check> {
    let mut checks = database(settings).await;
    checks.extend(models(settings, load_models).await);
    checks.extend(accounts(settings).await);
    checks
}

async fn database(settings: &Settings) -> Vec<Check> {
    let url = crate::config::redact_url(&settings.database.url);
    let store = match store::connect(&settings.database).await {
        Ok(store) => store,
        Err(e) => {
            return vec![Check::new(
                "database",
                Verdict::Fail,
                format!("cannot connect to {url}: {e}"),
                "check HUABI__DATABASE__URL, that the server runs and that this machine may connect to it",
            )];
        }
    };
    let health = match store.health().await {
        Ok(health) => health,
        Err(e) => {
            return vec![Check::new(
                "database",
                Verdict::Fail,
                format!("{url} does not answer: {e}"),
                "check that the database is up (a PostgreSQL failover in progress ends by itself)",
            )];
        }
    };
    let mut checks = vec![Check::ok(
        "database",
        format!("{} at {url} answers", store.backend()),
    )];
    checks.push(match health.applied {
        Some(v) if v == health.known => {
            Check::ok("migrations", format!("schema at {v}, up to date"))
        }
        Some(v) if v > health.known => Check::new(
            "migrations",
            Verdict::Warn,
            format!("schema at {v}, newer than this build's {}", health.known),
            "a newer huabi migrated this database: upgrade this node",
        ),
        applied => Check::new(
            "migrations",
            Verdict::Fail,
            format!(
                "schema at {}, this build needs {}",
                applied.map_or("nothing".to_string(), |v| v.to_string()),
                health.known
            ),
            "run `huabi migrate` (or start `huabi serve`, which migrates)",
        ),
    });
    let skew = (OffsetDateTime::now_utc() - health.now).abs();
    let skew = Duration::from_secs_f64(skew.as_seconds_f64());
    let detail = format!(
        "this machine and the database differ by {:.1} s",
        skew.as_secs_f64()
    );
    checks.push(if skew > SKEW_FAIL {
        Check::new(
            "clock",
            Verdict::Fail,
            detail,
            "run NTP (chrony, systemd-timesyncd) on every node and the database host",
        )
    } else if skew > SKEW_WARN {
        Check::new(
            "clock",
            Verdict::Warn,
            detail,
            "run NTP on every node and the database host",
        )
    } else {
        Check::ok("clock", detail)
    });
    checks
}

async fn models(settings: &Settings, load: bool) -> Vec<Check> {
    let engine = settings.engine.clone();
    let report = tokio::task::spawn_blocking(move || {
        crate::models_report::report(&engine, Ok(Vec::new()), load)
    })
    .await;
    let Ok(report) = report else {
        return vec![Check::new(
            "models",
            Verdict::Fail,
            "the model check crashed",
            "run `huabi models` to see why",
        )];
    };
    if report.models.is_empty() {
        return vec![Check::new(
            "models",
            Verdict::Fail,
            format!("no model in {}", report.models_dir),
            "put a model folder there (scripts/convert-model converts a checkpoint) or set HUABI__ENGINE__MODELS_DIR",
        )];
    }
    report
        .models
        .iter()
        .map(|row| {
            let name = format!("model {}", row.info.name);
            match (&row.info.problem, row.load_secs) {
                (Some(problem), _) => Check::new(
                    name,
                    Verdict::Fail,
                    problem.clone(),
                    "fix the model folder (see `huabi models`); ONNX Runtime problems: run scripts/fetch-ort or set ORT_DYLIB_PATH",
                ),
                (None, Some(secs)) => Check::ok(name, format!("loads in {secs:.1} s with ONNX Runtime")),
                (None, None) => Check::ok(name, "files complete (not loaded: --no-load)"),
            }
        })
        .collect()
}

async fn accounts(settings: &Settings) -> Vec<Check> {
    let timeout = Duration::from_secs_f64(settings.delivery.api_timeout_secs);
    let mut checks = Vec::new();
    for account in &settings.channels.wechat {
        let name = format!("wechat/{}", account.name);
        let s = &account.settings;
        if s.token.expose_secret().is_empty() {
            checks.push(Check::new(
                name.clone(),
                Verdict::Fail,
                "no Token: the webhook answers 503",
                "set the Token of the account's server configuration (HUABI__WECHAT__TOKEN for `default`)",
            ));
        }
        let api = WechatApi::new(&s.api_base, &s.app_id, s.app_secret.clone(), timeout);
        checks.push(
            platform_token(
                &name,
                &api,
                "AppID and AppSecret",
                "HUABI__WECHAT__APP_ID / APP_SECRET",
            )
            .await,
        );
    }
    for account in &settings.channels.wecom {
        let name = format!("wecom/{}", account.name);
        let api = WechatApi::wecom(
            &account.api_base,
            &account.corp_id,
            &account.agent_id,
            account.secret.clone(),
            timeout,
        );
        checks.push(
            platform_token(
                &name,
                &api,
                "CorpID and Secret",
                "the account's corp_id / secret",
            )
            .await,
        );
    }
    for account in &settings.channels.telegram {
        let name = format!("telegram/{}", account.name);
        let api = TelegramApi::new(&account.api_base, account.bot_token.clone(), timeout);
        checks.push(match api.get_me().await {
            Ok(username) => Check::ok(name, format!("bot @{username} answers")),
            Err(e) => Check::new(
                name,
                Verdict::Fail,
                format!("getMe failed: {e}"),
                "check the bot token @BotFather gave, and that api.telegram.org is reachable",
            ),
        });
    }
    checks
}

/// Asks the platform for an access token with the account's credentials.
async fn platform_token(name: &str, api: &WechatApi, credentials: &str, keys: &str) -> Check {
    if !api.is_configured() {
        return Check::new(
            name,
            Verdict::Warn,
            format!("no {credentials}: pictures wait for 取图 (no sending API)"),
            format!("set {keys} to send pictures"),
        );
    }
    match api.stable_token(false).await {
        Ok(_) => Check::ok(
            name,
            format!("{credentials} accepted (access token issued)"),
        ),
        Err(e) => Check::new(
            name,
            Verdict::Fail,
            format!("the platform refused the token request: {e}"),
            format!(
                "check {keys}; 40164 means this machine's IP is not on the account's IP allowlist"
            ),
        ),
    }
}

/// The checks as lines for a terminal.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        out.push_str(&format!("{mark}  {:<22} {}\n", c.name, c.detail));
        if !c.fix.is_empty() {
            out.push_str(&format!("      {:<22} → {}\n", "", c.fix));
        }
    }
    out
}
