//! The command grammar: a follower's text → [`Command`]. Full-width and half-width forms, extra spaces, zero-width
//! characters and case are all accepted (the text is NFKC-normalised first). Options may stand anywhere:
//! `横版` / `竖版` / `方图` / `--ar W:H`, `种子 42` / `--seed 42`, `不要 文字` / `--no text`, `高清` / `--hd`.

use crate::engine::normalize_prompt;

/// Largest seed accepted (the engine's seeds are exact in an f64, like diffusers').
pub const MAX_SEED: u64 = (1 << 52) - 1;

/// What a follower's message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Paint something.
    Paint(PaintRequest),
    /// 帮助 / help.
    Help,
    /// 额度 / quota: what is left today.
    Quota,
    /// 进度 / status: queue position and ETA.
    Status,
    /// 取图 / fetch: the finished picture.
    Fetch,
    /// 重画 / again: the last request with a new seed.
    Again,
}

/// A painting request with its options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaintRequest {
    /// The campaign keyword it starts with (normalised and lower-cased).
    pub campaign: Option<String>,
    /// What to paint (without the keyword and the options); may be empty for a campaign.
    pub subject: String,
    /// Aspect ratio `(width, height)`.
    pub aspect: Option<(u32, u32)>,
    /// A fixed seed.
    pub seed: Option<u64>,
    /// Things not to paint (added to the negative prompt).
    pub avoid: Vec<String>,
    /// 高清: paint at a higher resolution.
    pub hd: bool,
}

/// Why a message is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Only options, no subject.
    #[error("只有选项，没有要画的内容")]
    EmptySubject,
    /// A seed that is not a whole number in range.
    #[error("种子须是 0 到 {MAX_SEED} 的整数，收到 {0}")]
    BadSeed(String),
    /// An aspect ratio that is not `W:H` with sides 1–32 and at most 4:1.
    #[error("比例须像 16:9（每边 1 到 32，最多 4:1），收到 {0}")]
    BadAspect(String),
    /// An option without its value.
    #[error("{0} 后面缺少内容")]
    MissingValue(&'static str),
    /// An option huabi does not know.
    #[error("不认识的选项 {0}")]
    UnknownOption(String),
}

/// The words that name each command; everything compared after normalising and lower-casing.
#[derive(Debug, Clone)]
pub struct Grammar {
    help: Vec<String>,
    quota: Vec<String>,
    status: Vec<String>,
    fetch: Vec<String>,
    again: Vec<String>,
    campaigns: Vec<String>,
}

fn normalized(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| key(w)).collect()
}

/// The comparison form of a word or message.
fn key(text: &str) -> String {
    normalize_prompt(text).to_lowercase()
}

impl Default for Grammar {
    fn default() -> Self {
        Self {
            help: normalized(&["帮助", "help", "?", "？", "菜单", "menu"]),
            quota: normalized(&["额度", "quota", "剩余次数"]),
            status: normalized(&["进度", "status", "排队"]),
            fetch: normalized(&["取图", "fetch"]),
            again: normalized(&["重画", "again", "再来一张"]),
            campaigns: Vec::new(),
        }
    }
}

/// Options whose value is the next token (or glued to the name).
#[derive(Clone, Copy)]
enum Valued {
    Seed,
    Avoid,
    Aspect,
}

impl Grammar {
    /// The built-in words plus `help` and `fetch` from configuration, and the campaign keywords.
    pub fn new(help: &[String], fetch: &[String], campaigns: &[String]) -> Self {
        let mut grammar = Self::default();
        grammar.help.extend(help.iter().map(|w| key(w)));
        grammar.fetch.extend(fetch.iter().map(|w| key(w)));
        grammar.campaigns = campaigns.iter().map(|w| key(w)).collect();
        grammar
    }

    /// Whether `text` (as typed) is a fetch command.
    pub fn is_fetch(&self, text: &str) -> bool {
        self.fetch.contains(&bare(&key(text)))
    }

    /// Parses one message.
    pub fn parse(&self, text: &str) -> Result<Command, CommandError> {
        let text = normalize_prompt(text);
        let lowered = text.to_lowercase();
        if lowered.is_empty() || self.help.contains(&lowered) {
            return Ok(Command::Help);
        }
        let word = bare(&lowered);
        for (words, command) in [
            (&self.help, Command::Help),
            (&self.quota, Command::Quota),
            (&self.status, Command::Status),
            (&self.fetch, Command::Fetch),
            (&self.again, Command::Again),
        ] {
            if words.contains(&word) {
                return Ok(command);
            }
        }
        self.parse_paint(&text).map(Command::Paint)
    }

    fn parse_paint(&self, text: &str) -> Result<PaintRequest, CommandError> {
        // A Chinese keyboard types `--` as an em dash pair.
        let text = text.replace("——", "--").replace('—', "--");
        let mut request = PaintRequest::default();
        let mut subject: Vec<&str> = Vec::new();
        let mut tokens = text.split(' ').filter(|t| !t.is_empty()).peekable();
        while let Some(token) = tokens.next() {
            let lower = token.to_lowercase();
            let (valued, glued) = match lower.as_str() {
                "横版" | "--landscape" => {
                    request.aspect = Some((16, 9));
                    continue;
                }
                "竖版" | "--portrait" => {
                    request.aspect = Some((9, 16));
                    continue;
                }
                "方图" | "--square" => {
                    request.aspect = Some((1, 1));
                    continue;
                }
                "高清" | "--hd" => {
                    request.hd = true;
                    continue;
                }
                _ => match valued_option(&lower) {
                    Some(found) => found,
                    None if lower.starts_with("--") => {
                        return Err(CommandError::UnknownOption(token.to_string()));
                    }
                    None => {
                        subject.push(token);
                        continue;
                    }
                },
            };
            let value = match glued {
                Some(value) => value,
                None => tokens
                    .next()
                    .map(|t| t.to_lowercase())
                    .ok_or(CommandError::MissingValue(valued.name()))?,
            };
            match valued {
                Valued::Seed => request.seed = Some(parse_seed(&value)?),
                Valued::Aspect => request.aspect = Some(parse_aspect(&value)?),
                Valued::Avoid => request.avoid.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(str::to_string),
                ),
            }
        }
        if let Some((keyword, rest)) = subject.first().and_then(|first| self.campaign_of(first)) {
            request.campaign = Some(keyword);
            if rest.is_empty() {
                subject.remove(0);
            } else {
                subject[0] = rest;
            }
        }
        request.subject = subject.join(" ");
        if request.subject.is_empty() && request.campaign.is_none() {
            return Err(CommandError::EmptySubject);
        }
        Ok(request)
    }
}

impl Grammar {
    /// The longest campaign keyword `token` starts with, and what follows it.
    fn campaign_of<'t>(&self, token: &'t str) -> Option<(String, &'t str)> {
        self.campaigns
            .iter()
            .filter_map(|keyword| {
                let split = token
                    .char_indices()
                    .nth(keyword.chars().count())
                    .map_or(token.len(), |(i, _)| i);
                let rest = &token[split..];
                // `中秋嫦娥` is `中秋 嫦娥`, but `moonlight` is not `moon light`.
                let glued_ok = rest.is_empty()
                    || !keyword.ends_with(|c: char| c.is_ascii_alphanumeric())
                    || !rest.starts_with(|c: char| c.is_ascii_alphanumeric());
                (glued_ok && token[..split].to_lowercase() == *keyword).then(|| {
                    let rest = rest.trim_start_matches([':', ',', '.']);
                    (keyword.clone(), rest)
                })
            })
            .max_by_key(|(keyword, _)| keyword.len())
    }
}

impl Valued {
    fn name(self) -> &'static str {
        match self {
            Valued::Seed => "种子 / --seed",
            Valued::Avoid => "不要 / --no",
            Valued::Aspect => "--ar",
        }
    }
}

/// Recognises a valued option; the value when it is glued on (`种子42`, `--seed=42`, `不要文字`).
fn valued_option(lower: &str) -> Option<(Valued, Option<String>)> {
    for (name, valued) in [
        ("--seed", Valued::Seed),
        ("--no", Valued::Avoid),
        ("--ar", Valued::Aspect),
        ("--aspect", Valued::Aspect),
        ("种子", Valued::Seed),
        ("不要", Valued::Avoid),
    ] {
        let Some(rest) = lower.strip_prefix(name) else {
            continue;
        };
        let ascii_name = name.starts_with("--");
        let rest = rest.strip_prefix(['=', ':']).unwrap_or(rest);
        if rest.is_empty() {
            return Some((valued, None));
        }
        // `--notext` is not `--no text`, but `不要文字` is `不要 文字`.
        if ascii_name && !lower[name.len()..].starts_with(['=', ':']) {
            continue;
        }
        return Some((valued, Some(rest.to_string())));
    }
    None
}

/// A message without trailing sentence punctuation (voice recognition adds a full stop).
fn bare(lowered: &str) -> String {
    let trimmed = lowered.trim_end_matches(['.', '!', '?', '。', '！', '？', '~']);
    if trimmed.is_empty() {
        lowered.to_string()
    } else {
        trimmed.to_string()
    }
}

fn parse_seed(value: &str) -> Result<u64, CommandError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|s| *s <= MAX_SEED)
        .ok_or_else(|| CommandError::BadSeed(value.chars().take(40).collect()))
}

fn parse_aspect(value: &str) -> Result<(u32, u32), CommandError> {
    let bad = || CommandError::BadAspect(value.chars().take(40).collect());
    let (w, h) = value.split_once([':', 'x', '/']).ok_or_else(bad)?;
    let side = |s: &str| s.parse::<u32>().ok().filter(|v| (1..=32).contains(v));
    let (w, h) = (side(w).ok_or_else(bad)?, side(h).ok_or_else(bad)?);
    if w > 4 * h || h > 4 * w {
        return Err(bad());
    }
    Ok((w, h))
}

/// The picture size for an aspect ratio with about the area of `base` (sides multiples of 64, at most `max`).
pub fn sized(base: (u32, u32), aspect: (u32, u32), max: (u32, u32)) -> (u32, u32) {
    let area = f64::from(base.0) * f64::from(base.1);
    let ratio = f64::from(aspect.0) / f64::from(aspect.1);
    let snap = |v: f64, limit: u32| {
        let limit = (limit / 64).max(1) * 64;
        (((v / 64.0).round() as u32).max(1) * 64).min(limit)
    };
    (
        snap((area * ratio).sqrt(), max.0),
        snap((area / ratio).sqrt(), max.1),
    )
}

#[cfg(test)]
mod tests;
