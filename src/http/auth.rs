//! Callers: API keys (stored as SHA-256 hashes, compared in constant time, never logged),
//! scopes, access groups, and per-key token-bucket rate limits.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::section::{Check, ConfigError};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Ask,
    Search,
    Admin,
    /// `GET /metrics`. The `admin` scope includes it.
    Metrics,
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    /// Scopes of requests without a key (the page's public mode and an unauthenticated
    /// Prometheus scrape). `[]` requires a key for everything. `admin` is never granted
    /// without a key.
    pub anonymous_scopes: Vec<Scope>,
    /// Requests per minute for all anonymous callers together.
    pub anonymous_rate_per_minute: u32,
    pub keys: Vec<RawKey>,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            anonymous_scopes: vec![Scope::Ask, Scope::Search, Scope::Metrics],
            anonymous_rate_per_minute: 600,
            keys: Vec::new(),
        }
    }
}

impl RawAuth {
    /// Every key has a well-formed hash, a unique name and at least one scope.
    pub fn validate(&self, cx: &Check) -> Result<(), ConfigError> {
        let mut key_names = std::collections::HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            if parse_hash(&k.hash).is_none() {
                return Err(cx.key_err(
                    &format!("auth.keys[{i}].hash"),
                    "must be \"sha256:<64 hex digits>\"; `cairn hash-key` prints it for a key",
                ));
            }
            if !key_names.insert(k.name.clone()) {
                return Err(cx.key_err(
                    &format!("auth.keys[{i}].name"),
                    format!("`{}` is used twice", k.name),
                ));
            }
            if k.scopes.is_empty() {
                return Err(cx.key_err(
                    &format!("auth.keys[{i}].scopes"),
                    "needs at least one of ask, search, admin, metrics",
                ));
            }
        }
        Ok(())
    }
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: String,
    /// `sha256:<64 hex>` of the key; `cairn hash-key` prints it.
    pub hash: String,
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub access_groups: Vec<String>,
    #[serde(default = "default_rate")]
    pub rate_per_minute: u32,
    /// Requests allowed in a burst above the steady rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_rate() -> u32 {
    600
}

fn default_burst() -> u32 {
    20
}

/// The hash stored in config for a key.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// An authenticated (or anonymous) caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub groups: Vec<String>,
    pub anonymous: bool,
}

impl Caller {
    /// Whether the caller holds `scope` (`admin` includes `metrics`).
    pub fn can(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
            || (scope == Scope::Metrics && self.scopes.contains(&Scope::Admin))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    /// No key, but this scope needs one.
    Missing,
    /// A key was sent that matches no configured key.
    Invalid,
    /// Authenticated, but without the scope.
    Forbidden(Scope),
    /// Over the rate limit; retry after this many seconds.
    RateLimited { retry_after_secs: u64 },
}

struct Key {
    caller: Caller,
    hash: [u8; 32],
    limiter: DefaultDirectRateLimiter,
}

/// The configured keys; cheap to share.
pub struct Auth {
    keys: Vec<Key>,
    anonymous: Caller,
    anonymous_limiter: DefaultDirectRateLimiter,
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(rate).allow_burst(burst)
}

/// Parses `sha256:<hex>` into bytes.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hex_part = s.strip_prefix("sha256:")?;
    let bytes = hex::decode(hex_part).ok()?;
    bytes.try_into().ok()
}

impl Auth {
    /// Builds from validated config (hashes already checked by config validation).
    pub fn new(raw: &RawAuth) -> Arc<Auth> {
        let keys = raw
            .keys
            .iter()
            .filter_map(|k| {
                Some(Key {
                    hash: parse_hash(&k.hash)?,
                    caller: Caller {
                        name: k.name.clone(),
                        scopes: k.scopes.clone(),
                        groups: k.access_groups.clone(),
                        anonymous: false,
                    },
                    limiter: RateLimiter::direct(quota(k.rate_per_minute, k.burst)),
                })
            })
            .collect();
        let anon_rate = raw.anonymous_rate_per_minute;
        Arc::new(Auth {
            keys,
            anonymous: Caller {
                name: "anonymous".into(),
                scopes: raw
                    .anonymous_scopes
                    .iter()
                    .copied()
                    .filter(|s| *s != Scope::Admin)
                    .collect(),
                groups: Vec::new(),
                anonymous: true,
            },
            anonymous_limiter: RateLimiter::direct(quota(anon_rate, (anon_rate / 10).max(5))),
        })
    }

    /// Identifies the caller from an `Authorization` header value and checks `scope` and the
    /// caller's rate limit.
    pub fn check(&self, authorization: Option<&str>, scope: Scope) -> Result<Caller, AuthError> {
        let presented = authorization.and_then(|h| {
            let (kind, token) = h.trim().split_once(' ')?;
            kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let (caller, limiter) = match presented {
            None => {
                if authorization.is_some() {
                    return Err(AuthError::Invalid);
                }
                if !self.anonymous.can(scope) {
                    return Err(AuthError::Missing);
                }
                (&self.anonymous, &self.anonymous_limiter)
            }
            Some(token) => {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                // Compare against every key without stopping early.
                let mut found: Option<&Key> = None;
                for k in &self.keys {
                    if bool::from(k.hash.ct_eq(&digest)) {
                        found = Some(k);
                    }
                }
                let k = found.ok_or(AuthError::Invalid)?;
                if !k.caller.can(scope) {
                    return Err(AuthError::Forbidden(scope));
                }
                (&k.caller, &k.limiter)
            }
        };
        if let Err(not_until) = limiter.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(AuthError::RateLimited {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        Ok(caller.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Arc<Auth> {
        Auth::new(&RawAuth {
            anonymous_scopes: vec![Scope::Search, Scope::Admin],
            anonymous_rate_per_minute: 600,
            keys: vec![RawKey {
                name: "bot".into(),
                hash: hash_key("secret-1"),
                scopes: vec![Scope::Ask],
                access_groups: vec!["support".into()],
                rate_per_minute: 60,
                burst: 2,
            }],
        })
    }

    #[test]
    fn keys_scopes_and_anonymous() {
        let a = auth();
        let c = a.check(Some("Bearer secret-1"), Scope::Ask).expect("ok");
        assert_eq!(c.name, "bot");
        assert_eq!(c.groups, vec!["support".to_string()]);
        assert_eq!(
            a.check(Some("Bearer wrong"), Scope::Ask).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(
            a.check(Some("Bearer secret-1"), Scope::Admin).err(),
            Some(AuthError::Forbidden(Scope::Admin))
        );
        assert!(a.check(None, Scope::Search).is_ok());
        // Anonymous admin is never granted, even when configured.
        assert_eq!(a.check(None, Scope::Admin).err(), Some(AuthError::Missing));
        assert_eq!(a.check(None, Scope::Ask).err(), Some(AuthError::Missing));
        assert_eq!(
            a.check(Some("Basic abc"), Scope::Search).err(),
            Some(AuthError::Invalid)
        );
    }

    #[test]
    fn rate_limit_refuses_with_retry_after() {
        let a = auth();
        assert!(a.check(Some("Bearer secret-1"), Scope::Ask).is_ok());
        assert!(a.check(Some("Bearer secret-1"), Scope::Ask).is_ok());
        match a.check(Some("Bearer secret-1"), Scope::Ask) {
            Err(AuthError::RateLimited { retry_after_secs }) => assert!(retry_after_secs >= 1),
            other => panic!("expected rate limit, got {other:?}"),
        }
    }

    #[test]
    fn hash_format() {
        let h = hash_key("x");
        assert!(parse_hash(&h).is_some());
        assert!(parse_hash("md5:abc").is_none());
    }
}
