//! Domain types every layer shares: what a follower sends ([`Inbound`]), what huabi answers ([`Reply`]) and the
//! LoRAs a job is painted with. Depends on nothing else in the crate.

use serde::{Deserialize, Serialize};

/// A message or event from a follower, independent of the platform it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The platform, e.g. `wechat`.
    pub channel: &'static str,
    /// The account the message was sent to (WeChat: the original id `gh_…`).
    pub account: String,
    /// The follower's id on that platform (WeChat: OpenID).
    pub user_id: String,
    /// The platform's message id, when the platform gives one (events have none).
    pub message_id: Option<String>,
    /// The key that makes platform retries of one message recognisable as the same message.
    pub dedup_key: String,
    /// When the platform says the message was sent, in unix seconds.
    pub sent_at: i64,
    /// What the message carries.
    pub kind: InboundKind,
}

/// The content of an [`Inbound`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundKind {
    /// A text message.
    Text {
        /// The text as typed.
        content: String,
    },
    /// A voice message, with the platform's speech recognition when it is enabled.
    Voice {
        /// The recognised text, if any.
        recognition: Option<String>,
    },
    /// A picture.
    Image {
        /// The platform's media id for the picture.
        media_id: String,
    },
    /// A platform event.
    Event(Event),
    /// A message kind huabi does not handle; acknowledged and logged.
    Other {
        /// The platform's name for the kind.
        kind: String,
    },
}

impl InboundKind {
    /// A short stable name for storage and logs.
    pub fn name(&self) -> &str {
        match self {
            InboundKind::Text { .. } => "text",
            InboundKind::Voice { .. } => "voice",
            InboundKind::Image { .. } => "image",
            InboundKind::Event(Event::Subscribe { .. }) => "event:subscribe",
            InboundKind::Event(Event::Unsubscribe) => "event:unsubscribe",
            InboundKind::Event(Event::Click { .. }) => "event:click",
            InboundKind::Event(Event::Scan { .. }) => "event:scan",
            InboundKind::Event(Event::Other { .. }) => "event:other",
            InboundKind::Other { .. } => "other",
        }
    }
}

/// Platform events huabi reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new follower; `scene` is set when they followed through a QR code.
    Subscribe {
        /// The QR scene key without the `qrscene_` prefix.
        scene: Option<String>,
    },
    /// A follower left.
    Unsubscribe,
    /// A menu button was pressed.
    Click {
        /// The button's key.
        key: String,
    },
    /// An existing follower scanned a QR code.
    Scan {
        /// The scene key.
        scene: String,
    },
    /// Any other event.
    Other {
        /// The platform's event name.
        name: String,
    },
}

/// What huabi answers to a message, synchronously, inside the platform's window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// Nothing to say: the platform gets its plain acknowledgement.
    None,
    /// A text message.
    Text {
        /// The text.
        text: String,
    },
    /// A picture already uploaded to the platform.
    Image {
        /// The platform's media id.
        media_id: String,
    },
}

/// A LoRA and the strength it is merged at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraChoice {
    /// The LoRA's name (`models/loras/NAME.safetensors`) or a path to a file.
    pub name: String,
    /// Its scale (1 = as trained).
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

impl Eq for LoraChoice {}

impl std::hash::Hash for LoraChoice {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.scale.to_bits().hash(state);
    }
}

/// A LoRA set in its canonical order (by name, then scale), so equal sets compare equal.
pub fn canonical_loras(loras: &[LoraChoice]) -> Vec<LoraChoice> {
    let mut sorted = loras.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name).then(a.scale.total_cmp(&b.scale)));
    sorted
}

/// The stored form of a LoRA set (`jobs.loras`): canonical JSON, so equal sets are equal strings.
pub fn loras_json(loras: &[LoraChoice]) -> String {
    serde_json::to_string(&canonical_loras(loras)).unwrap_or_else(|_| "[]".into())
}

/// A painting request huabi answered without a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: RefusalReason,
    /// The campaign it was for, if any.
    pub campaign: Option<String>,
    /// What matched or what was wrong.
    pub detail: String,
}

/// The kinds of [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The content filter matched.
    Blocked,
    /// The request was malformed (bad option, too long).
    Invalid,
    /// The campaign was not running.
    OutsideWindow,
    /// A per-follower limit or the campaign's cap.
    Limited,
    /// The queue was too deep (backpressure).
    Busy,
}

impl RefusalReason {
    /// The name stored in `inbound_messages.decision`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Blocked => "blocked",
            RefusalReason::Invalid => "invalid",
            RefusalReason::OutsideWindow => "outside_window",
            RefusalReason::Limited => "limited",
            RefusalReason::Busy => "busy",
        }
    }
}

/// A painting request to admit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: String,
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
    /// The campaign it belongs to (`None` for a free prompt).
    pub campaign: Option<String>,
    /// The model to paint with (`""` = the painting worker's default).
    pub model: String,
    /// The LoRAs merged into it.
    pub loras: Vec<LoraChoice>,
    /// A seed the follower chose; `None` lets the first lease pick one.
    pub seed: Option<i64>,
    /// Seconds after admission before a deliverer may take the finished picture: the webhook's fast-path window, in
    /// which the request itself may answer with the picture.
    pub deliver_after_secs: f64,
    /// img2img: the follower's photo to paint from.
    pub photo: Option<PhotoJob>,
}

/// The photo an img2img job paints from.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoJob {
    /// The platform's media id of the photo (fetched by the worker through the platform's media API).
    pub media_id: String,
    /// How much of it is repainted, in (0, 1].
    pub strength: f64,
}

/// Where a job stands: `queued` → `running` → `done` (painted) → `delivered`, or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for a worker.
    Queued,
    /// Leased by a worker that is painting it.
    Running,
    /// Painted and stored, not yet delivered.
    Done,
    /// The follower has the picture.
    Delivered,
    /// Ended without a picture.
    Failed,
}

impl JobStatus {
    /// Every status, in the order a job passes them.
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Done,
        JobStatus::Delivered,
        JobStatus::Failed,
    ];

    /// The name stored in `jobs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Delivered => "delivered",
            JobStatus::Failed => "failed",
        }
    }

    /// Whether the job has ended (painted or failed).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Delivered | JobStatus::Failed
        )
    }
}

/// A status name that is not one of [`JobStatus`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status {0:?}")]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.chars().take(32).collect()))
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for JobStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_their_stored_names() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
            assert_eq!(status, status.as_str());
        }
        assert!("painting".parse::<JobStatus>().is_err());
        assert!(JobStatus::Failed.is_finished() && !JobStatus::Running.is_finished());
    }

    #[test]
    fn equal_sets_store_alike() {
        let a = LoraChoice {
            name: "b".into(),
            scale: 0.5,
        };
        let b = LoraChoice {
            name: "a".into(),
            scale: 1.0,
        };
        assert_eq!(
            loras_json(&[a.clone(), b.clone()]),
            loras_json(&[b.clone(), a.clone()])
        );
        assert_eq!(loras_json(&[]), "[]");
        let back: Vec<LoraChoice> = serde_json::from_str(&loras_json(&[a, b])).expect("json");
        assert_eq!(back[0].name, "a");
        assert!(serde_json::from_str::<Vec<LoraChoice>>(r#"[{"name":"x","weight":1}]"#).is_err());
    }
}
