//! The accounts a node sends through, keyed by (platform, account name): the deliverer dispatches each job by its
//! own platform and account, and workers fetch followers' photos the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{MediaError, MediaSource, Outbound};

/// One account's senders.
#[derive(Clone)]
pub struct AccountChannel {
    /// Sends pictures and texts to its followers.
    pub outbound: Arc<dyn Outbound>,
    /// Fetches what its followers sent, where the platform allows.
    pub media: Option<Arc<dyn MediaSource>>,
}

/// Every account this node can send through.
#[derive(Clone, Default)]
pub struct Channels {
    accounts: BTreeMap<(String, String), AccountChannel>,
}

/// The key naming an account in queries: `platform/name`.
pub fn account_key(platform: &str, account: &str) -> String {
    format!("{platform}/{account}")
}

impl Channels {
    /// No accounts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) account `name` of `platform`.
    pub fn insert(&mut self, platform: &str, name: &str, channel: AccountChannel) {
        self.accounts
            .insert((platform.to_string(), name.to_string()), channel);
    }

    /// The account's senders, if this node has it.
    pub fn get(&self, platform: &str, name: &str) -> Option<&AccountChannel> {
        self.accounts.get(&(platform.to_string(), name.to_string()))
    }

    /// Whether the node has no account to send through.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Every account as [`account_key`]s, for leasing only the jobs this node can deliver.
    pub fn keys(&self) -> Vec<String> {
        self.accounts
            .keys()
            .map(|(platform, name)| account_key(platform, name))
            .collect()
    }
}

#[async_trait]
impl MediaSource for Channels {
    async fn fetch(
        &self,
        channel: &str,
        account: &str,
        media_id: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, MediaError> {
        let media = self
            .get(channel, account)
            .and_then(|a| a.media.as_ref())
            .ok_or_else(|| {
                MediaError::Unavailable(format!(
                    "this node has no media API for {}",
                    account_key(channel, account)
                ))
            })?;
        media.fetch(channel, account, media_id, max_bytes).await
    }
}
