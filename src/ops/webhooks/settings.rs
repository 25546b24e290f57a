//! `[webhooks]` and `[[webhooks.endpoints]]`: where events are delivered, which ones, with
//! which signing secret, and the shared delivery settings (time-out, retry window, the
//! private-address guard).
//!
//! Must not: import anything above `config::section` (the config loader reads this).

use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::config::section::{Check, ConfigError};

/// Every event type cairn emits (or will): an endpoint naming another is refused at startup.
pub const EVENT_TYPES: &[&str] = &[
    "job.completed",
    "job.failed",
    "answer.handoff",
    "batch.completed",
    "batch.failed",
    "feedback.created",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWebhooks {
    /// Time-out of one delivery attempt (connect, send, read the status), humantime.
    pub timeout: String,
    /// The first retry waits about this long; each later one twice as long as the one before.
    pub first_retry: String,
    /// No wait between two attempts is longer than this.
    pub max_retry_interval: String,
    /// A delivery still failing this long after its event gives up (recorded as `failed`).
    pub retry_window: String,
    /// Deliver to private, loopback and link-local addresses (checked after DNS resolution).
    pub allow_private_addresses: bool,
    /// Finished deliveries kept for `/admin/webhooks/deliveries` (the oldest go first).
    pub keep: usize,
    pub endpoints: Vec<RawEndpoint>,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        RawWebhooks {
            timeout: "10s".into(),
            first_retry: "30s".into(),
            max_retry_interval: "1h".into(),
            retry_window: "24h".into(),
            allow_private_addresses: false,
            keep: 1000,
            endpoints: Vec::new(),
        }
    }
}

/// One `[[webhooks.endpoints]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub url: String,
    /// The event types sent to this endpoint (see [`EVENT_TYPES`]).
    pub events: Vec<String>,
    /// A reference (`env:VARIABLE`) to the Standard Webhooks secret, `whsec_<base64>`.
    pub secret: String,
}

/// A validated endpoint: its signing key is the secret's decoded bytes.
#[derive(Clone)]
pub struct Endpoint {
    pub url: reqwest::Url,
    pub events: Vec<String>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.as_str())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// `[webhooks]` validated.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub timeout: Duration,
    pub first_retry: Duration,
    pub max_retry_interval: Duration,
    pub retry_window: Duration,
    pub allow_private_addresses: bool,
    pub keep: usize,
    pub endpoints: Vec<Endpoint>,
}

impl WebhookSettings {
    /// The configured endpoint with this URL.
    pub fn endpoint(&self, url: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.url.as_str() == url)
    }
}

/// A humantime duration at `key`, above zero.
fn duration(
    value: &str,
    key: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(err(key, "must be longer than zero".into())),
        Err(e) => Err(err(
            key,
            format!("`{value}` is not a duration like \"30s\", \"15m\" or \"1d\": {e}"),
        )),
    }
}

/// Decodes a Standard Webhooks secret: `whsec_` followed by base64 (at least 16 bytes).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let Some(b64) = secret.strip_prefix("whsec_") else {
        return Err("the secret must have the Standard Webhooks form `whsec_<base64>`".into());
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the part after `whsec_` is not base64 ({e})"))?;
    if key.len() < 16 {
        return Err(format!(
            "the secret decodes to {} bytes; use at least 16 random bytes (24 to 64 is usual)",
            key.len()
        ));
    }
    Ok(key)
}

impl RawWebhooks {
    fn durations(
        &self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<WebhookSettings, ConfigError> {
        Ok(WebhookSettings {
            timeout: duration(&self.timeout, "webhooks.timeout", err)?,
            first_retry: duration(&self.first_retry, "webhooks.first_retry", err)?,
            max_retry_interval: duration(
                &self.max_retry_interval,
                "webhooks.max_retry_interval",
                err,
            )?,
            retry_window: duration(&self.retry_window, "webhooks.retry_window", err)?,
            allow_private_addresses: self.allow_private_addresses,
            keep: self.keep.max(1),
            endpoints: Vec::new(),
        })
    }

    /// Checks the durations and every endpoint (an http(s) URL, known events, a secret
    /// reference that resolves to a `whsec_` secret).
    pub fn validate(&self, cx: &Check) -> Result<WebhookSettings, ConfigError> {
        let mut settings = self.durations(&|key, message| cx.key_err(key, message))?;
        for (i, e) in self.endpoints.iter().enumerate() {
            settings.endpoints.push(e.validate(i, cx)?);
        }
        Ok(settings)
    }
}

impl RawEndpoint {
    fn validate(&self, i: usize, cx: &Check) -> Result<Endpoint, ConfigError> {
        let key = |k: &str| format!("webhooks.endpoints[{i}].{k}");
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| cx.key_err(&key("url"), format!("`{}` is not a URL: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(cx.key_err(
                &key("url"),
                "must be an http:// or https:// URL with a host",
            ));
        }
        if self.events.is_empty() {
            return Err(cx.key_err(
                &key("events"),
                format!("name at least one of {}", EVENT_TYPES.join(", ")),
            ));
        }
        if let Some(unknown) = self
            .events
            .iter()
            .find(|e| !EVENT_TYPES.contains(&e.as_str()))
        {
            return Err(cx.key_err(
                &key("events"),
                format!(
                    "`{unknown}` is not an event cairn sends; use {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
        let secret = cx.reference(
            &self.secret,
            &key("secret"),
            "export it or remove this endpoint",
        )?;
        let signing = decode_secret(&secret).map_err(|m| cx.key_err(&key("secret"), m))?;
        Ok(Endpoint {
            url,
            events: self.events.clone(),
            key: signing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_must_be_whsec_base64_of_enough_bytes() {
        assert_eq!(
            decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .expect("valid")
                .len(),
            24
        );
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_not base64!").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn the_defaults_parse() {
        let env = |_: &str| None;
        let cx = Check {
            origin: "config.toml",
            base: std::path::Path::new("."),
            env: &env,
        };
        let s = RawWebhooks::default()
            .validate(&cx)
            .expect("defaults are valid");
        assert_eq!(s.retry_window, Duration::from_secs(86_400));
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert!(!s.allow_private_addresses);
    }
}
