//! The one access token of a WeChat account, shared by every node through the store: read from the database,
//! refreshed by a single node at a time (an in-process lock, then a claim row in the database), and on 40001 /
//! 40014 / 42001 expired only if it is still the failing token (compare-and-swap) before one retry.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;

use super::DeliverError;
use crate::channel::ErrorClass;
use crate::channel::wechat::api::{ApiError, WechatApi};
use crate::store::{AccountState, Store, StoreError, StoredToken};

/// A token is replaced this long before it expires (stable_token pre-rotates 5 minutes before expiry), or halfway
/// through its life if that is shorter.
const REFRESH_MARGIN_MS: i64 = 300_000;
/// How long one node's refresh claim keeps the others waiting at most.
const CLAIM_MS: i64 = 15_000;
/// How often a node waiting for another node's refresh looks again.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The shared access token of one account.
pub struct TokenService {
    store: Arc<dyn Store>,
    api: Arc<WechatApi>,
    holder: String,
    refreshing: Mutex<()>,
    /// The account as this node last read or wrote it: a token still in date is used without asking the database
    /// again (nodes replace it only when it expires or WeChat refuses it, and a refusal clears this copy).
    cached: std::sync::Mutex<Option<AccountState>>,
}

impl TokenService {
    /// A token service for `api`'s account; `holder` names this node on refresh claims.
    pub fn new(store: Arc<dyn Store>, api: Arc<WechatApi>, holder: String) -> Self {
        Self {
            store,
            api,
            holder,
            refreshing: Mutex::new(()),
            cached: std::sync::Mutex::new(None),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Option<AccountState>> {
        // Plain data: a panic elsewhere cannot leave it half-written.
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account as cached, read from the database when this node has not read it yet.
    async fn account(&self) -> Result<AccountState, StoreError> {
        if let Some(state) = self.cache().clone() {
            return Ok(state);
        }
        let state = self
            .store
            .account_state(self.api.platform(), &self.api.credential())
            .await?;
        *self.cache() = Some(state.clone());
        Ok(state)
    }

    /// Whether the account can only answer passively (WeChat said 48001, here or on another node).
    pub async fn passive_only(&self) -> Result<bool, StoreError> {
        Ok(self.account().await?.passive_only)
    }

    /// Records that WeChat refused the customer-service API (48001) for every node.
    pub async fn mark_passive_only(&self) -> Result<(), StoreError> {
        self.store
            .set_passive_only(self.api.platform(), &self.api.credential(), true)
            .await?;
        if let Some(state) = self.cache().as_mut() {
            state.passive_only = true;
        }
        Ok(())
    }

    /// The API client.
    pub fn api(&self) -> &WechatApi {
        &self.api
    }

    /// Calls `call` with the current token; when WeChat says the token is invalid or expired, expires it (only if
    /// no other node replaced it meanwhile), gets the current one and calls once more.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, DeliverError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let token = self.token(None).await?;
        match call(token.clone()).await {
            Err(e) if e.class() == ErrorClass::TokenInvalid => {
                *self.cache() = None;
                let expired = self
                    .store
                    .expire_token(self.api.platform(), &self.api.credential(), &token)
                    .await?;
                tracing::info!(error = %e, expired, "access token refused; retrying once with the current one");
                let fresh = self.token(Some(&token)).await?;
                Ok(call(fresh).await?)
            }
            other => Ok(other?),
        }
    }

    /// The current token, refreshed when missing or nearly expired. `refused` is a token WeChat just refused:
    /// if stable_token hands the same one back, a forced refresh follows.
    pub async fn token(&self, refused: Option<&str>) -> Result<String, DeliverError> {
        let credential = self.api.credential();
        let deadline = now_ms() + 2 * CLAIM_MS;
        loop {
            if let Some(token) = self.usable().await? {
                return Ok(token);
            }
            {
                let _single_flight = self.refreshing.lock().await;
                if let Some(token) = self.usable().await? {
                    return Ok(token);
                }
                if self
                    .store
                    .claim_token_refresh(
                        self.api.platform(),
                        &credential,
                        &self.holder,
                        now_ms(),
                        CLAIM_MS,
                    )
                    .await?
                {
                    return self.refresh(refused).await;
                }
            }
            if now_ms() > deadline {
                return Err(DeliverError::Api(ApiError::Transport(
                    "another node's token refresh did not finish".into(),
                )));
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// A token in date: the cached one, else the database's (which then becomes the cached one).
    async fn usable(&self) -> Result<Option<String>, DeliverError> {
        let in_date = |state: &AccountState| {
            state
                .token
                .as_ref()
                .filter(|t| t.expires_ms > now_ms())
                .map(|t| t.token.clone())
        };
        if let Some(token) = self.cache().as_ref().and_then(in_date) {
            return Ok(Some(token));
        }
        let state = self
            .store
            .account_state(self.api.platform(), &self.api.credential())
            .await?;
        let token = in_date(&state);
        *self.cache() = Some(state);
        Ok(token)
    }

    /// Fetches a token while holding the refresh claim, stores it, and ends the claim either way.
    async fn refresh(&self, refused: Option<&str>) -> Result<String, DeliverError> {
        let credential = self.api.credential();
        let fetched = match self.api.stable_token(false).await {
            Ok(issued) if Some(issued.token.as_str()) == refused => {
                tracing::warn!(
                    "stable_token returned the token WeChat just refused; forcing a new one"
                );
                self.api.stable_token(true).await
            }
            other => other,
        };
        match fetched {
            Ok(issued) => {
                metrics::counter!("huabi_wechat_token_refreshes_total").increment(1);
                let lifetime_ms = (issued.expires_in.min(1 << 30) as i64) * 1000;
                let use_until = now_ms() + lifetime_ms - REFRESH_MARGIN_MS.min(lifetime_ms / 2);
                self.store
                    .save_token(self.api.platform(), &credential, &issued.token, use_until)
                    .await?;
                if let Some(state) = self.cache().as_mut() {
                    state.token = Some(StoredToken {
                        token: issued.token.clone(),
                        expires_ms: use_until,
                    });
                }
                tracing::info!(expires_in = issued.expires_in, "access token refreshed");
                Ok(issued.token)
            }
            Err(e) => {
                self.store
                    .release_token_refresh(self.api.platform(), &credential, &self.holder)
                    .await?;
                Err(e.into())
            }
        }
    }
}
