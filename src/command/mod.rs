//! Turns a follower's message into what huabi does about it: paint (with the options the follower gave), help,
//! welcome, status, fetch, again, or nothing. Pure: [`grammar`] parses the text, [`plan`] decides.

pub mod grammar;

use time::OffsetDateTime;

use crate::campaign::{Campaign, Campaigns, Window};
use crate::config::{ReplySettings, Settings};
use crate::filter::ContentFilter;
use crate::limits::{Limits, Listing};
use crate::model::{Event, InboundKind, Reply};
use crate::model::{NewJob, PhotoJob, Refusal, RefusalReason};
use crate::store::{LimitCheck, QueueStatus, RefusalTexts};
pub use grammar::PaintRequest;
use grammar::{Command, Grammar, sized};

/// What a node interprets messages with: the grammar (with the campaigns' keywords), the campaigns and the
/// content filter.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// The command grammar.
    pub grammar: Grammar,
    /// The campaigns in use.
    pub campaigns: Campaigns,
    /// The content filter.
    pub filter: ContentFilter,
    /// Followers allowed (no limits) or denied from the console: (channel, account, user) → allowed.
    pub listings: std::collections::HashMap<(String, String, String), bool>,
}

impl Catalog {
    /// The grammar for `settings`' keywords plus every campaign's.
    pub fn new(settings: &Settings, campaigns: Campaigns, filter: ContentFilter) -> Self {
        Self {
            grammar: Grammar::new(
                &settings.replies.help_keywords,
                &settings.delivery.fetch_keywords,
                &campaigns.keywords(),
            ),
            campaigns,
            filter,
            listings: Default::default(),
        }
    }

    /// With the console's allow/deny lists.
    pub fn with_listings(
        mut self,
        listings: impl IntoIterator<Item = ((String, String, String), bool)>,
    ) -> Self {
        self.listings = listings.into_iter().collect();
        self
    }
}

/// What to do with one inbound message.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Answer; no job.
    Reply(Reply),
    /// Refuse a painting request politely; no job; the reason is recorded.
    Refuse {
        /// The passive reply.
        reply: Reply,
        /// Why.
        refusal: Refusal,
    },
    /// Admit a painting job and answer.
    Paint {
        /// The job.
        job: NewJob,
        /// The passive reply.
        reply: Reply,
    },
    /// 取图: answer with a waiting picture.
    Fetch,
    /// 进度: answer with the queue position.
    Status,
    /// 额度: answer with what is left today.
    Quota,
    /// 重画: paint the follower's last request again with a new seed.
    Again,
}

fn text(text: &str) -> Reply {
    Reply::Text {
        text: text.to_string(),
    }
}

/// The first non-empty text.
fn either<'a>(preferred: &'a str, fallback: &'a str) -> &'a str {
    if preferred.trim().is_empty() {
        fallback
    } else {
        preferred
    }
}

/// Decides the plan for a message received at `now`.
pub fn plan(
    kind: &InboundKind,
    settings: &Settings,
    catalog: &Catalog,
    now: OffsetDateTime,
) -> Plan {
    let replies = &settings.replies;
    let welcome = |campaign: Option<&Campaign>| {
        let campaign_welcome = campaign.map_or("", |c| c.replies.welcome.as_str());
        Plan::Reply(text(either(campaign_welcome, &replies.welcome)))
    };
    match kind {
        InboundKind::Text { content } => plan_text(content, settings, catalog, now),
        InboundKind::Voice {
            recognition: Some(words),
        } => plan_text(words, settings, catalog, now),
        InboundKind::Voice { recognition: None } => Plan::Reply(text(&replies.voice_unrecognized)),
        InboundKind::Image { media_id } => match catalog.campaigns.photo_campaign(now) {
            Some(campaign) => plan_photo(campaign, media_id, settings),
            None => Plan::Reply(text(&replies.unsupported)),
        },
        InboundKind::Event(Event::Subscribe { .. }) => welcome(catalog.campaigns.active(now)),
        InboundKind::Event(Event::Click { key }) => match catalog.campaigns.by_menu_key(key) {
            Some(campaign) => match campaign.window(now) {
                Window::Open => welcome(Some(campaign)),
                window => outside(campaign, window, replies),
            },
            None => Plan::Reply(text(&replies.help)),
        },
        InboundKind::Event(_) | InboundKind::Other { .. } => Plan::Reply(Reply::None),
    }
}

/// A refusal answered with `reply`.
fn refuse(reply: &str, reason: RefusalReason, campaign: Option<&Campaign>, detail: String) -> Plan {
    Plan::Refuse {
        reply: text(reply),
        refusal: Refusal {
            reason,
            campaign: campaign.map(|c| c.name.clone()),
            detail,
        },
    }
}

/// The answer to a campaign request outside the campaign's window.
fn outside(campaign: &Campaign, window: Window, replies: &ReplySettings) -> Plan {
    let (reply, state) = match window {
        Window::NotStarted => (
            either(&campaign.replies.not_started, &replies.campaign_not_started)
                .replace("{starts_at}", &campaign_time(&campaign.starts_at)),
            "not started",
        ),
        _ => (
            either(&campaign.replies.ended, &replies.campaign_ended).to_string(),
            "ended",
        ),
    };
    refuse(
        &reply,
        RefusalReason::OutsideWindow,
        Some(campaign),
        state.into(),
    )
}

/// `2027-09-08T00:00:00+08:00` as `2027-09-08 00:00`.
fn campaign_time(rfc3339: &str) -> String {
    rfc3339.get(..16).unwrap_or(rfc3339).replace('T', " ")
}

fn plan_text(words: &str, settings: &Settings, catalog: &Catalog, now: OffsetDateTime) -> Plan {
    let replies = &settings.replies;
    match catalog.grammar.parse(words) {
        Ok(Command::Help) => Plan::Reply(text(&replies.help)),
        Ok(Command::Quota) => Plan::Quota,
        Ok(Command::Status) => Plan::Status,
        Ok(Command::Fetch) => Plan::Fetch,
        Ok(Command::Again) => Plan::Again,
        Ok(Command::Paint(request)) => {
            let campaign = request
                .campaign
                .as_deref()
                .and_then(|keyword| catalog.campaigns.by_keyword(keyword));
            let max_chars = settings.engine.max_prompt_chars;
            if request.subject.chars().count() > max_chars {
                let reply = replies.too_long.replace("{max}", &max_chars.to_string());
                return refuse(&reply, RefusalReason::Invalid, campaign, "too long".into());
            }
            if let Some(word) = catalog.filter.find(words) {
                return refuse(
                    &replies.blocked,
                    RefusalReason::Blocked,
                    campaign,
                    word.to_string(),
                );
            }
            match campaign {
                Some(campaign) => match campaign.window(now) {
                    Window::Open => Plan::Paint {
                        job: campaign_job(campaign, &request, settings),
                        reply: text(either(&campaign.replies.received, &replies.received)),
                    },
                    window => outside(campaign, window, replies),
                },
                None => Plan::Paint {
                    job: job_for(&request, settings),
                    reply: received(settings),
                },
            }
        }
        Err(error) => refuse(
            &replies.bad_command.replace("{detail}", &error.to_string()),
            RefusalReason::Invalid,
            None,
            error.to_string(),
        ),
    }
}

/// A photo sent while `campaign` paints photos: an img2img job with the campaign's photo template.
fn plan_photo(campaign: &Campaign, media_id: &str, settings: &Settings) -> Plan {
    let Some(photo) = &campaign.photo else {
        return Plan::Reply(text(&settings.replies.unsupported));
    };
    let (width, height) = photo.size((campaign.width, campaign.height));
    let job = NewJob {
        prompt: campaign.photo_prompt().unwrap_or_default(),
        negative_prompt: either(&photo.negative_prompt, &campaign.negative_prompt).to_string(),
        width,
        height,
        photo: Some(PhotoJob {
            media_id: media_id.to_string(),
            strength: photo.strength,
        }),
        ..campaign_job(campaign, &PaintRequest::default(), settings)
    };
    let reply = either(&photo.received, &settings.replies.photo_received);
    Plan::Paint {
        job,
        reply: text(reply),
    }
}

/// The plan for 重画 given the follower's last request: paint it again with a new seed — unless its campaign is no
/// longer running — or say there is nothing to repeat.
pub fn plan_again(
    last: Option<NewJob>,
    settings: &Settings,
    catalog: &Catalog,
    now: OffsetDateTime,
) -> Plan {
    let Some(job) = last else {
        return Plan::Reply(text(&settings.replies.again_nothing));
    };
    let campaign = job
        .campaign
        .as_deref()
        .and_then(|name| catalog.campaigns.by_name(name));
    match campaign.map(|c| (c, c.window(now))) {
        Some((campaign, window)) if window != Window::Open => {
            outside(campaign, window, &settings.replies)
        }
        Some((campaign, _)) => Plan::Paint {
            job,
            reply: text(either(
                &campaign.replies.received,
                &settings.replies.received,
            )),
        },
        None => Plan::Paint {
            job,
            reply: received(settings),
        },
    }
}

/// The reply to an admitted painting request.
pub fn received(settings: &Settings) -> Reply {
    if settings.delivery.passive_only {
        text(&settings.replies.received_passive)
    } else {
        text(&settings.replies.received)
    }
}

/// The job for a free painting request: the configured parameters, with the follower's options applied.
pub fn job_for(request: &PaintRequest, settings: &Settings) -> NewJob {
    let job = NewJob {
        model: settings.engine.default_model(),
        ..NewJob::new(request.subject.clone(), &settings.jobs)
    };
    with_options(job, request, settings)
}

/// The job for a campaign request: the campaign's template and parameters, with the follower's options applied.
pub fn campaign_job(campaign: &Campaign, request: &PaintRequest, settings: &Settings) -> NewJob {
    let job = NewJob {
        prompt: campaign.render(&request.subject),
        negative_prompt: campaign.negative_prompt.clone(),
        width: campaign.width,
        height: campaign.height,
        steps: campaign.steps,
        scheduler: campaign.scheduler.clone(),
        guidance: campaign.guidance,
        campaign: Some(campaign.name.clone()),
        model: if campaign.model.is_empty() {
            settings.engine.default_model()
        } else {
            campaign.model.clone()
        },
        loras: campaign.loras.clone(),
        ..NewJob::new(String::new(), &settings.jobs)
    };
    with_options(job, request, settings)
}

/// Applies the follower's size, seed and negative options to `job`.
fn with_options(job: NewJob, request: &PaintRequest, settings: &Settings) -> NewJob {
    let max = (settings.engine.max_width, settings.engine.max_height);
    let (width, height) = match (request.aspect, request.hd) {
        (None, false) => (job.width, job.height),
        (aspect, hd) => {
            let scale = if hd { 3 } else { 2 };
            let base = (job.width * scale / 2, job.height * scale / 2);
            sized(base, aspect.unwrap_or((job.width, job.height)), max)
        }
    };
    let negative: Vec<&str> = std::iter::once(job.negative_prompt.as_str())
        .chain(request.avoid.iter().map(String::as_str))
        .filter(|n| !n.is_empty())
        .collect();
    NewJob {
        width,
        height,
        negative_prompt: negative.join(", "),
        seed: request.seed.map(|s| s as i64),
        ..job
    }
}

/// The limits `job` must pass for `user_id` at `now`: the configured ones, with its campaign's quota and cap.
/// `queued` is the queue depth this node last counted. `None` when nothing limits it (an allow-listed follower,
/// or every limit 0 and no lists), so admission stays one statement.
pub fn limit_check(
    settings: &Settings,
    catalog: &Catalog,
    job: &NewJob,
    (channel, account, user_id): (&str, &str, &str),
    (now, queued): (OffsetDateTime, i64),
) -> Option<LimitCheck> {
    let l = &settings.limits;
    let campaign = job
        .campaign
        .as_deref()
        .and_then(|name| catalog.campaigns.by_name(name));
    let per_day = campaign
        .map(|c| c.daily_quota)
        .filter(|q| *q > 0)
        .unwrap_or(l.per_day);
    let console = catalog.listings.get(&(
        channel.to_string(),
        account.to_string(),
        user_id.to_string(),
    ));
    let listing = match console {
        Some(true) => Listing::Allowed,
        Some(false) => Listing::Denied,
        None if l.allow.iter().any(|u| u == user_id) => Listing::Allowed,
        None if l.deny.iter().any(|u| u == user_id) => Listing::Denied,
        None => Listing::Normal,
    };
    let limits = Limits {
        per_day,
        per_minute: l.per_minute,
        in_flight: l.in_flight,
        campaign_per_day: campaign.map_or(0, |c| c.daily_cap),
        busy_queue: l.busy_queue,
    };
    let unlimited = limits == Limits::default() && listing == Listing::Normal;
    if unlimited || listing == Listing::Allowed {
        return None;
    }
    let r = &settings.replies;
    let with_limit = |text: &str, limit: u32| text.replace("{limit}", &limit.to_string());
    Some(LimitCheck {
        limits,
        listing,
        now,
        queued,
        replies: RefusalTexts {
            denied: r.denied.clone(),
            per_day: with_limit(&r.limited_per_day, per_day),
            per_minute: with_limit(&r.limited_per_minute, l.per_minute),
            in_flight: with_limit(&r.limited_in_flight, l.in_flight),
            campaign_cap: r.limited_campaign_cap.clone(),
            busy: r.busy.clone(),
        },
    })
}

/// The answer to 额度, given the follower's requests today.
pub fn quota_reply(used_today: i64, settings: &Settings) -> Reply {
    let limit = settings.limits.per_day;
    if limit == 0 {
        return text(&settings.replies.quota_unlimited);
    }
    let left = (i64::from(limit) - used_today).max(0);
    text(
        &settings
            .replies
            .quota_left
            .replace("{left}", &left.to_string())
            .replace("{limit}", &limit.to_string()),
    )
}

/// The answer to 进度.
pub fn status_reply(status: QueueStatus, replies: &ReplySettings) -> Reply {
    let painted_as = status
        .painted_prompt
        .as_deref()
        .map(|prompt| replies.status_painted_as.replace("{prompt}", prompt))
        .unwrap_or_default();
    if status.open == 0 {
        return text(&format!("{}{painted_as}", replies.status_idle));
    }
    let eta = if status.finished_recently > 0 {
        let per_sec = status.finished_recently as f64 / 600.0;
        let secs = ((status.ahead + status.open) as f64 / per_sec).ceil() as u64;
        if secs < 90 {
            format!("{secs} 秒")
        } else {
            format!("{} 分钟", secs.div_ceil(60))
        }
    } else {
        "片刻".to_string()
    };
    let mut reply = replies
        .status_queued
        .replace("{open}", &status.open.to_string())
        .replace("{ahead}", &status.ahead.to_string())
        .replace("{eta}", &eta);
    if let Some(model) = &status.waiting_for_model {
        reply.push_str(&replies.status_waiting_model.replace("{model}", model));
    }
    reply.push_str(&painted_as);
    text(&reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::load_from(Default::default()).expect("defaults")
    }

    fn plan_for(content: &str, s: &Settings) -> Plan {
        plan(
            &InboundKind::Text {
                content: content.into(),
            },
            s,
            &Catalog::new(
                s,
                Campaigns::default(),
                ContentFilter::new(["暴力".to_string()]).expect("filter"),
            ),
            OffsetDateTime::now_utc(),
        )
    }

    #[test]
    fn text_becomes_a_job_with_the_received_reply() {
        let s = settings();
        let Plan::Paint { job, reply } = plan_for("  嫦娥抱玉兔 ", &s) else {
            panic!("a job")
        };
        assert_eq!(
            job,
            NewJob {
                model: "tiny-sd".into(),
                ..NewJob::new("嫦娥抱玉兔", &s.jobs)
            }
        );
        assert_eq!(reply, text(&s.replies.received));
    }

    #[test]
    fn options_shape_the_job() {
        let s = settings();
        let Plan::Paint { job, .. } = plan_for("月饼 横版 种子 42 不要 文字 --no blur", &s)
        else {
            panic!("a job")
        };
        assert_eq!((job.width, job.height, job.seed), (704, 384, Some(42)));
        assert_eq!(job.negative_prompt, "文字, blur");
        assert_eq!(job.prompt, "月饼");
        let Plan::Paint { job, .. } = plan_for("月饼 高清", &s) else {
            panic!("a job")
        };
        assert_eq!((job.width, job.height), (768, 768));
    }

    #[test]
    fn commands_errors_and_long_prompts_answer_without_a_job() {
        let s = settings();
        assert_eq!(plan_for("帮助", &s), Plan::Reply(text(&s.replies.help)));
        assert_eq!(plan_for("进度", &s), Plan::Status);
        assert_eq!(plan_for("取图", &s), Plan::Fetch);
        assert_eq!(plan_for("重画", &s), Plan::Again);
        assert_eq!(plan_for("额度", &s), Plan::Quota);
        assert_eq!(quota_reply(3, &s), text("今天还能画 17 张（每天 20 张）。"));
        assert_eq!(quota_reply(30, &s), text("今天还能画 0 张（每天 20 张）。"));
        let Plan::Refuse {
            reply: Reply::Text { text: bad },
            refusal,
        } = plan_for("猫 --seed abc", &s)
        else {
            panic!("an error reply")
        };
        assert!(bad.contains("种子") && bad.contains("abc"), "{bad}");
        assert_eq!(refusal.reason, RefusalReason::Invalid);
        let Plan::Refuse { refusal, .. } = plan_for("画一个 暴 力 场景", &s) else {
            panic!("blocked")
        };
        assert_eq!(
            (refusal.reason, refusal.detail.as_str()),
            (RefusalReason::Blocked, "暴力")
        );
        let long = "月".repeat(s.engine.max_prompt_chars + 1);
        let Plan::Refuse {
            reply: Reply::Text { text: refused },
            ..
        } = plan_for(&long, &s)
        else {
            panic!("refused")
        };
        assert!(refused.contains(&s.engine.max_prompt_chars.to_string()));
    }

    #[test]
    fn voice_uses_recognition() {
        let s = settings();
        let grammar = Catalog::default();
        let now = OffsetDateTime::now_utc();
        let voice = |words: Option<&str>| InboundKind::Voice {
            recognition: words.map(str::to_string),
        };
        assert!(
            matches!(plan(&voice(Some("一只猫。")), &s, &grammar, now), Plan::Paint { job, .. } if job.prompt == "一只猫.")
        );
        assert_eq!(plan(&voice(Some("取图。")), &s, &grammar, now), Plan::Fetch);
        assert_eq!(
            plan(&voice(None), &s, &grammar, now),
            Plan::Reply(text(&s.replies.voice_unrecognized))
        );
    }

    #[test]
    fn events_and_other_kinds() {
        let s = settings();
        let g = Catalog::default();
        let now = OffsetDateTime::now_utc();
        let r = &s.replies;
        let event = |e| plan(&InboundKind::Event(e), &s, &g, now);
        assert_eq!(
            event(Event::Subscribe { scene: None }),
            Plan::Reply(text(&r.welcome))
        );
        assert_eq!(event(Event::Unsubscribe), Plan::Reply(Reply::None));
        assert_eq!(
            event(Event::Scan { scene: "1".into() }),
            Plan::Reply(Reply::None)
        );
        assert_eq!(
            event(Event::Click { key: "K".into() }),
            Plan::Reply(text(&r.help))
        );
        let other = InboundKind::Other {
            kind: "video".into(),
        };
        assert_eq!(plan(&other, &s, &g, now), Plan::Reply(Reply::None));
        let image = InboundKind::Image {
            media_id: "m".into(),
        };
        assert_eq!(plan(&image, &s, &g, now), Plan::Reply(text(&r.unsupported)));
    }

    #[test]
    fn photos_become_img2img_jobs_while_a_photo_campaign_runs() {
        let s = settings();
        let campaign = crate::campaign::load_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/campaigns/mid-autumn.toml"
        )))
        .expect("campaign");
        let photo = campaign
            .photo
            .clone()
            .expect("the shipped campaign paints photos");
        let catalog = Catalog::new(
            &s,
            Campaigns::new(vec![campaign.clone()]),
            ContentFilter::default(),
        );
        let image = InboundKind::Image {
            media_id: "MEDIA".into(),
        };
        let during = time::macros::datetime!(2027-09-10 12:00 +08:00);
        let Plan::Paint { job, reply } = plan(&image, &s, &catalog, during) else {
            panic!("a job")
        };
        assert_eq!(
            job.photo,
            Some(PhotoJob {
                media_id: "MEDIA".into(),
                strength: photo.strength
            })
        );
        assert_eq!(job.prompt, campaign.photo_prompt().expect("prompt"));
        assert_eq!(job.negative_prompt, photo.negative_prompt);
        assert_eq!((job.width, job.height), (campaign.width, campaign.height));
        assert_eq!(job.campaign.as_deref(), Some("mid-autumn"));
        assert_eq!(reply, text(&photo.received));
        let after = time::macros::datetime!(2027-10-01 12:00 +08:00);
        assert_eq!(
            plan(&image, &s, &catalog, after),
            Plan::Reply(text(&s.replies.unsupported)),
            "outside the campaign a photo keeps today's reply"
        );
    }

    #[test]
    fn campaign_requests_render_the_template_inside_the_window_only() {
        let s = settings();
        let campaign = crate::campaign::load_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/campaigns/mid-autumn.toml"
        )))
        .expect("campaign");
        let catalog = Catalog::new(
            &s,
            Campaigns::new(vec![campaign.clone()]),
            ContentFilter::default(),
        );
        let message = |content: &str| InboundKind::Text {
            content: content.into(),
        };
        let during = time::macros::datetime!(2027-09-10 12:00 +08:00);
        let Plan::Paint { job, reply } =
            plan(&message("中秋 嫦娥抱玉兔 横版"), &s, &catalog, during)
        else {
            panic!("a job")
        };
        assert!(
            job.prompt.contains("Chang'e") && job.prompt.contains("jade rabbit"),
            "{}",
            job.prompt
        );
        assert_eq!(job.campaign.as_deref(), Some("mid-autumn"));
        assert_eq!((job.width, job.height, job.steps), (704, 384, 20));
        assert_eq!(job.scheduler, "euler_a");
        assert_eq!(reply, text(&campaign.replies.received));
        let before = time::macros::datetime!(2027-09-01 12:00 +08:00);
        let Plan::Refuse {
            reply: Reply::Text { text: early },
            refusal,
        } = plan(&message("中秋 嫦娥"), &s, &catalog, before)
        else {
            panic!("refused")
        };
        assert_eq!(refusal.campaign.as_deref(), Some("mid-autumn"));
        assert!(
            early.contains("还没开始") && early.contains("2027-09-08 00:00"),
            "{early}"
        );
        let after = time::macros::datetime!(2027-10-01 12:00 +08:00);
        assert!(matches!(
            plan(&message("赏月 月饼"), &s, &catalog, after),
            Plan::Refuse { reply, .. } if reply == text(&campaign.replies.ended)
        ));
        assert_eq!(
            plan(
                &InboundKind::Event(Event::Subscribe { scene: None }),
                &s,
                &catalog,
                during
            ),
            Plan::Reply(text(&campaign.replies.welcome))
        );
        assert_eq!(
            plan(
                &InboundKind::Event(Event::Subscribe { scene: None }),
                &s,
                &catalog,
                after
            ),
            Plan::Reply(text(&s.replies.welcome))
        );
        assert_eq!(
            plan(
                &InboundKind::Event(Event::Click {
                    key: "MID_AUTUMN".into()
                }),
                &s,
                &catalog,
                during
            ),
            Plan::Reply(text(&campaign.replies.welcome))
        );
        let Plan::Paint { job, .. } = plan(&message("中秋"), &s, &catalog, during) else {
            panic!("the default subject")
        };
        assert!(job.prompt.contains("family reunion"));
    }

    #[test]
    fn again_repeats_the_last_request_while_its_campaign_runs() {
        let s = settings();
        let campaign = crate::campaign::load_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/campaigns/mid-autumn.toml"
        )))
        .expect("campaign");
        let catalog = Catalog::new(&s, Campaigns::new(vec![campaign]), ContentFilter::default());
        let festive = NewJob {
            campaign: Some("mid-autumn".into()),
            ..NewJob::new("moon", &s.jobs)
        };
        let during = time::macros::datetime!(2027-09-10 12:00 +08:00);
        let after = time::macros::datetime!(2027-10-10 12:00 +08:00);
        assert!(matches!(
            plan_again(Some(festive.clone()), &s, &catalog, during),
            Plan::Paint { job, .. } if job == festive
        ));
        assert!(matches!(
            plan_again(Some(festive), &s, &catalog, after),
            Plan::Refuse { .. }
        ));
        assert_eq!(
            plan_again(None, &s, &catalog, after),
            Plan::Reply(text(&s.replies.again_nothing))
        );
        let free = NewJob::new("cat", &s.jobs);
        assert!(matches!(
            plan_again(Some(free), &s, &catalog, after),
            Plan::Paint { .. }
        ));
    }

    #[test]
    fn status_reports_position_and_eta() {
        let r = settings().replies;
        let status = |open, ahead, finished_recently| QueueStatus {
            waiting_for_model: None,
            open,
            ahead,
            finished_recently,
            painted_prompt: None,
        };
        assert_eq!(status_reply(status(0, 5, 100), &r), text(&r.status_idle));
        let Reply::Text { text: queued } = status_reply(status(1, 9, 600), &r) else {
            panic!()
        };
        assert!(queued.contains('9') && queued.contains("10 秒"), "{queued}");
        let Reply::Text { text: slow } = status_reply(status(2, 100, 60), &r) else {
            panic!()
        };
        assert!(slow.contains("17 分钟"), "{slow}");
        let Reply::Text { text: unknown } = status_reply(status(1, 3, 0), &r) else {
            panic!()
        };
        assert!(unknown.contains("片刻"), "{unknown}");
        let waiting = QueueStatus {
            waiting_for_model: Some("sdxl-anime".into()),
            ..status(1, 3, 600)
        };
        let Reply::Text { text: waiting } = status_reply(waiting, &r) else {
            panic!()
        };
        assert!(
            waiting.contains("sdxl-anime") && waiting.contains("前面还有 3 张"),
            "{waiting}"
        );
    }
}
