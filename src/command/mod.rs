//! Turns a follower's message into what huabi does about it: paint, help, welcome or nothing. Pure.
//! [`grammar`] parses text into a [`grammar::Command`].

pub mod grammar;

use crate::channel::{Event, InboundKind, Reply};
use crate::config::ReplySettings;

/// What to do with one inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The prompt of the painting job to admit, if any.
    pub job_prompt: Option<String>,
    /// The passive reply.
    pub reply: Reply,
}

impl Plan {
    fn reply(text: &str) -> Self {
        Self {
            job_prompt: None,
            reply: Reply::Text {
                text: text.to_string(),
            },
        }
    }

    fn silent() -> Self {
        Self {
            job_prompt: None,
            reply: Reply::None,
        }
    }
}

/// Decides the plan for a message kind.
pub fn plan(kind: &InboundKind, replies: &ReplySettings) -> Plan {
    match kind {
        InboundKind::Text { content } => plan_text(content, replies),
        InboundKind::Voice {
            recognition: Some(text),
        } => plan_text(text, replies),
        InboundKind::Voice { recognition: None } => Plan::reply(&replies.voice_unrecognized),
        InboundKind::Image { .. } => Plan::reply(&replies.unsupported),
        InboundKind::Event(Event::Subscribe { .. }) => Plan::reply(&replies.welcome),
        InboundKind::Event(Event::Click { .. }) => Plan::reply(&replies.help),
        InboundKind::Event(_) | InboundKind::Other { .. } => Plan::silent(),
    }
}

fn plan_text(text: &str, replies: &ReplySettings) -> Plan {
    let trimmed = text.trim();
    let lowered = trimmed.to_lowercase();
    if trimmed.is_empty()
        || replies
            .help_keywords
            .iter()
            .any(|k| k.trim().to_lowercase() == lowered)
    {
        return Plan::reply(&replies.help);
    }
    Plan {
        job_prompt: Some(trimmed.to_string()),
        reply: Reply::Text {
            text: replies.received.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn replies() -> ReplySettings {
        Settings::load_from(Default::default())
            .expect("defaults")
            .replies
    }

    #[test]
    fn text_becomes_a_job_with_the_received_reply() {
        let r = replies();
        let p = plan(
            &InboundKind::Text {
                content: "  嫦娥抱玉兔 ".into(),
            },
            &r,
        );
        assert_eq!(p.job_prompt.as_deref(), Some("嫦娥抱玉兔"));
        assert_eq!(
            p.reply,
            Reply::Text {
                text: r.received.clone()
            }
        );
    }

    #[test]
    fn help_words_and_empty_text_answer_help_without_a_job() {
        let r = replies();
        for text in ["帮助", "HELP", " help ", "", "   ", "？"] {
            let p = plan(
                &InboundKind::Text {
                    content: text.into(),
                },
                &r,
            );
            assert_eq!(p, Plan::reply(&r.help), "{text:?}");
        }
    }

    #[test]
    fn voice_uses_recognition() {
        let r = replies();
        let p = plan(
            &InboundKind::Voice {
                recognition: Some("一只猫".into()),
            },
            &r,
        );
        assert_eq!(p.job_prompt.as_deref(), Some("一只猫"));
        let p = plan(&InboundKind::Voice { recognition: None }, &r);
        assert_eq!(p, Plan::reply(&r.voice_unrecognized));
    }

    #[test]
    fn events_and_other_kinds() {
        let r = replies();
        assert_eq!(
            plan(&InboundKind::Event(Event::Subscribe { scene: None }), &r),
            Plan::reply(&r.welcome)
        );
        assert_eq!(
            plan(&InboundKind::Event(Event::Unsubscribe), &r),
            Plan::silent()
        );
        assert_eq!(
            plan(&InboundKind::Event(Event::Scan { scene: "1".into() }), &r),
            Plan::silent()
        );
        assert_eq!(
            plan(&InboundKind::Event(Event::Click { key: "K".into() }), &r),
            Plan::reply(&r.help)
        );
        assert_eq!(
            plan(
                &InboundKind::Other {
                    kind: "video".into()
                },
                &r
            ),
            Plan::silent()
        );
        assert_eq!(
            plan(
                &InboundKind::Image {
                    media_id: "m".into()
                },
                &r
            ),
            Plan::reply(&r.unsupported)
        );
    }
}
