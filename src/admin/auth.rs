//! Who is using the console: argon2id passwords, session cookies (the token stored only as its SHA-256), a CSRF
//! token per session, throttled logins, and roles.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::store::StoreError;
use crate::store::admin::AdminStore;

/// The session cookie's name.
pub const COOKIE: &str = "huabi_admin";
/// The login form's double-submit cookie (there is no session yet to hold its CSRF token).
pub const LOGIN_COOKIE: &str = "huabi_login";
/// Failed logins for one user, or from one address, within [`THROTTLE_WINDOW`] before logins are refused.
pub const MAX_FAILURES: i64 = 5;
/// The window failed logins are counted in.
pub const THROTTLE_WINDOW: Duration = Duration::minutes(15);

/// What a user may do; each role can do everything the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads every page.
    Viewer,
    /// Changes campaigns and filter words, paints previews, uses the test chat, re-delivers pictures, lists followers.
    Editor,
    /// Manages users.
    Admin,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role {other:?}: use admin, editor or viewer")),
        }
    }
}

/// Why a login was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown user, disabled user or wrong password (the page never says which).
    #[error("wrong user name or password")]
    Wrong,
    /// Too many failures: try again after this many seconds.
    #[error("too many failed logins; try again in {0} s")]
    Throttled(i64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The argon2id PHC string (`$argon2id$…`) of `password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random token for cookies and forms (256 bits, URL-safe base64).
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the database keeps of a session token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two tokens in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A password the console accepts: 10 to 200 characters.
pub fn check_new_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if (10..=200).contains(&n) {
        Ok(())
    } else {
        Err("a password needs 10 to 200 characters".into())
    }
}

/// A user name the console accepts.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err("a user name is 1 to 64 letters, digits, - _ . or @".into())
    }
}

/// Checks the password of `user` logging in from `address` at `now`, refusing while either has failed
/// [`MAX_FAILURES`] times in the window; on success starts a session and returns its cookie token.
pub async fn log_in(
    store: &dyn AdminStore,
    user: &str,
    password: &str,
    address: &str,
    now: OffsetDateTime,
    lasts: Duration,
) -> Result<String, LoginError> {
    store.prune_admin(now, now - THROTTLE_WINDOW).await?;
    let failures = store
        .login_failures(user, address, now - THROTTLE_WINDOW)
        .await?;
    if failures.by_user >= MAX_FAILURES || failures.by_address >= MAX_FAILURES {
        let free_at = failures.oldest.unwrap_or(now) + THROTTLE_WINDOW;
        return Err(LoginError::Throttled(
            (free_at - now).whole_seconds().max(1),
        ));
    }
    let known = store.admin_user(user).await?.filter(|u| !u.disabled);
    // An unknown user costs the same time as a known one.
    static DUMMY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hash_password("not a real password").unwrap_or_default());
    let hash = known
        .as_ref()
        .map_or_else(|| DUMMY.clone(), |u| u.password_hash.clone());
    let candidate = password.to_string();
    let matches = tokio::task::spawn_blocking(move || verify_password(&candidate, &hash))
        .await
        .unwrap_or(false);
    match known {
        Some(user) if matches => {
            let token = random_token();
            store
                .create_session(
                    &token_hash(&token),
                    &user.name,
                    &random_token(),
                    now + lasts,
                )
                .await?;
            Ok(token)
        }
        _ => {
            store.record_login_failure(user, address, now).await?;
            Err(LoginError::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_argon2id_phc_strings() {
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("correct horse battery", "not a hash"));
        assert_ne!(
            hash,
            hash_password("correct horse battery").expect("hash"),
            "salted"
        );
    }

    #[test]
    fn tokens_roles_and_names() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash("x").len(), 64);
        assert!(same_token(&a, &a.clone()) && !same_token(&a, &b) && !same_token("a", "ab"));
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
        assert_eq!("editor".parse::<Role>(), Ok(Role::Editor));
        assert!("root".parse::<Role>().is_err());
        assert!(check_user_name("alice.w@example").is_ok());
        for bad in ["", "a b", "x/y", &"a".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("long enough!").is_ok());
    }
}
