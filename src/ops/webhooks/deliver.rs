//! The delivery task: takes due deliveries from the queue, sends each signed, and records the
//! outcome — delivered (2xx), retried later (another status, a time-out, a connection error),
//! given up past the retry window, refused by the address guard, or its endpoint disabled
//! (410).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;

use crate::ops::webhooks::guard::{self, GuardedResolver};
use crate::ops::webhooks::queue::{
    Attempt, Delivery, DeliveryState, Disabled, Queue, now_ms, rfc3339,
};
use crate::ops::webhooks::settings::WebhookSettings;
use crate::ops::webhooks::sign::{backoff, signature};

/// Deliveries attempted at once.
const CONCURRENCY: usize = 4;
/// Due deliveries taken from the queue per round.
const ROUND: usize = 64;
/// The longest the task sleeps without looking at the queue (and whether it should stop).
const IDLE: Duration = Duration::from_secs(1);

/// The delivery client: no redirects, no proxy, the attempt time-out, and (unless private
/// addresses are allowed) the guarded resolver.
pub(super) fn client(settings: &WebhookSettings) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!("cairn-webhooks/", env!("CARGO_PKG_VERSION")));
    if !settings.allow_private_addresses {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    Ok(builder.build()?)
}

/// Runs until the queue is dropped (with the webhooks holding it): each round sends what is
/// due, then sleeps until the next delivery is due, an event is emitted, or [`IDLE`] passed.
pub(super) async fn worker(
    queue: Weak<Queue>,
    settings: Arc<WebhookSettings>,
    wake: Arc<tokio::sync::Notify>,
    client: reqwest::Client,
) {
    loop {
        let sleep = {
            let Some(queue) = queue.upgrade() else {
                return;
            };
            let sender = Sender {
                queue: &queue,
                settings: &settings,
                client: &client,
            };
            sender.round().await
        };
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

/// What one round of deliveries works with.
struct Sender<'a> {
    queue: &'a Queue,
    settings: &'a WebhookSettings,
    client: &'a reqwest::Client,
}

/// What one attempt came to.
enum Outcome {
    Delivered(u16),
    /// The receiver answered 410: the endpoint is disabled.
    Gone,
    /// The guard refused every address of the host: not retried.
    Refused(String),
    /// Anything else: retried until the window closes.
    Retry(Option<u16>, String),
}

impl Sender<'_> {
    /// Sends every due delivery; returns how long to sleep before the next round.
    async fn round(&self) -> Duration {
        let due = match self.queue.due(now_ms(), ROUND) {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the webhook queue");
                return IDLE;
            }
        };
        let full = due.len() == ROUND;
        futures::stream::iter(due)
            .for_each_concurrent(CONCURRENCY, |(d, body)| self.attempt(d, body))
            .await;
        if full {
            return Duration::ZERO;
        }
        match self.queue.next_due() {
            Ok(Some(at)) => {
                Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)).min(IDLE)
            }
            _ => IDLE,
        }
    }

    /// One attempt of `d`, recorded with its outcome.
    async fn attempt(&self, mut d: Delivery, body: String) {
        let started = Instant::now();
        let outcome = self.send(&d, body).await;
        let (status, error) = match &outcome {
            Outcome::Delivered(s) => (Some(*s), None),
            Outcome::Gone => (Some(410), Some("410 Gone".to_string())),
            Outcome::Refused(e) => (None, Some(e.clone())),
            Outcome::Retry(s, e) => (*s, Some(e.clone())),
        };
        d.attempts.push(Attempt {
            at: rfc3339(now_ms()),
            status,
            error,
            ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        let next = self.settle(&mut d, outcome);
        tracing::info!(delivery = %d.id, event = %d.event_type, url = %d.endpoint, state = ?d.state, attempts = d.attempts.len(), "webhook attempt");
        if let Err(e) = self.queue.record(&d, next, self.settings.keep) {
            tracing::warn!(delivery = %d.id, error = %format!("{e:#}"), "cannot record a webhook attempt; it will be sent again");
        }
    }

    /// Sets `d`'s state after an attempt; returns its next attempt time if it stays pending.
    fn settle(&self, d: &mut Delivery, outcome: Outcome) -> Option<i64> {
        let (state, next, error) = match outcome {
            Outcome::Delivered(_) => (DeliveryState::Delivered, None, None),
            Outcome::Gone => {
                self.disable(&d.endpoint);
                let why = "the receiver answered 410 Gone: the endpoint is disabled until its URL changes in [[webhooks.endpoints]]";
                (DeliveryState::Failed, None, Some(why.to_string()))
            }
            Outcome::Refused(e) => (DeliveryState::Failed, None, Some(e)),
            Outcome::Retry(_, e) => match self.next_attempt(d) {
                Some(at) => (DeliveryState::Pending, Some(at), None),
                None => {
                    let n = d.attempts.len();
                    let why = format!(
                        "gave up after {n} attempts within the retry window; the last: {e}"
                    );
                    (DeliveryState::Failed, None, Some(why))
                }
            },
        };
        if state == DeliveryState::Failed {
            tracing::warn!(delivery = %d.id, url = %d.endpoint, reason = error.as_deref().unwrap_or(""), "webhook delivery failed");
        }
        d.state = state;
        d.next_attempt_at = next.map(rfc3339);
        d.error = error;
        next
    }

    /// When to try `d` again after its failed attempts; `None` once that is past the window.
    fn next_attempt(&self, d: &Delivery) -> Option<i64> {
        let s = &self.settings;
        let attempts = u32::try_from(d.attempts.len()).unwrap_or(u32::MAX);
        let wait = backoff(
            attempts,
            s.first_retry,
            s.max_retry_interval,
            rand::random(),
        );
        let created = chrono::DateTime::parse_from_rfc3339(&d.created_at)
            .map(|t| t.timestamp_millis())
            .unwrap_or_else(|_| now_ms());
        let window = i64::try_from(s.retry_window.as_millis()).unwrap_or(i64::MAX);
        let next = now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        (next <= created.saturating_add(window)).then_some(next)
    }

    fn disable(&self, url: &str) {
        let why = Disabled {
            at: Utc::now().to_rfc3339(),
            reason: "the receiver answered 410 Gone".into(),
        };
        if let Err(e) = self.queue.disable(url, &why) {
            tracing::warn!(url, error = %format!("{e:#}"), "cannot record a disabled endpoint");
        }
        tracing::warn!(
            url,
            "a webhook receiver answered 410 Gone: its endpoint is disabled"
        );
    }

    /// Sends `d` once, signed now.
    async fn send(&self, d: &Delivery, body: String) -> Outcome {
        let Some(endpoint) = self.settings.endpoint(&d.endpoint) else {
            return Outcome::Refused(
                "the endpoint is no longer in [[webhooks.endpoints]]".to_string(),
            );
        };
        if let Ok(Some(_)) = self.queue.disabled(&d.endpoint) {
            return Outcome::Refused("the endpoint was disabled by its receiver (410)".into());
        }
        if let Some(refusal) = self.literal_refused(&endpoint.url) {
            return Outcome::Refused(refusal);
        }
        let timestamp = Utc::now().timestamp();
        let sig = signature(&endpoint.key, &d.message_id, timestamp, body.as_bytes());
        let sent = self
            .client
            .post(endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &d.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => classify(resp.status()),
            Err(e) if guard::is_refusal(&e) => Outcome::Refused(error_text(&e)),
            Err(e) => Outcome::Retry(None, error_text(&e)),
        }
    }

    /// The guard's refusal of a URL whose host is a literal IP address (no resolver sees it).
    fn literal_refused(&self, url: &reqwest::Url) -> Option<String> {
        if self.settings.allow_private_addresses {
            return None;
        }
        let host = url.host_str()?;
        let ip: std::net::IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        let why = guard::refused(ip)?;
        Some(format!(
            "{ip} is {why}; set [webhooks] allow_private_addresses = true to deliver to private, loopback or link-local addresses"
        ))
    }
}

fn classify(status: reqwest::StatusCode) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        Outcome::Delivered(code)
    } else if code == 410 {
        Outcome::Gone
    } else if status.is_redirection() {
        Outcome::Retry(Some(code), format!("{status} (redirects are not followed)"))
    } else {
        Outcome::Retry(Some(code), status.to_string())
    }
}

/// An error with its causes, one line.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
