//! Signed webhooks (`[webhooks]`): events cairn emits (`job.completed`, `answer.handoff`, …)
//! delivered to the endpoints that subscribed to them, signed per the Standard Webhooks
//! specification, at least once, from a persisted queue (`queue`), with jittered exponential
//! backoff over a bounded window, behind a private-address guard (`guard`).
//!
//! [`Webhooks::emit`] is the whole API for the rest of cairn: it records one pending delivery
//! per subscribed endpoint (durably) and wakes the delivery task, which the server starts
//! ([`Webhooks::start`]); deliveries emitted by a process without one (the CLI) wait for the
//! next `cairn serve`.
//!
//! Must not: import the engine (the engine holds this), or block an async caller (`emit` moves
//! its write to a blocking thread when called on a runtime).

mod deliver;
pub mod guard;
pub mod queue;
pub mod settings;
pub mod sign;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde_json::{Value, json};

use crate::ops::webhooks::queue::{Delivery, DeliveryState, Disabled, Queue, now_ms, rfc3339};
use crate::ops::webhooks::settings::WebhookSettings;

/// The webhooks of a running cairn: settings, the queue (none without endpoints) and the
/// delivery task's wake-up.
pub struct Webhooks {
    settings: Arc<WebhookSettings>,
    /// The delivery task holds it weakly: it stops once these webhooks are dropped.
    queue: Option<Arc<Queue>>,
    wake: Arc<tokio::sync::Notify>,
    started: AtomicBool,
}

/// An endpoint as `/admin/webhooks/deliveries` shows it (never its secret).
#[derive(Debug, Serialize)]
pub struct EndpointView {
    pub url: String,
    pub events: Vec<String>,
    pub disabled: Option<Disabled>,
}

impl Webhooks {
    /// Opens the delivery queue in `<data_dir>/state/webhooks.redb` when any endpoint is
    /// configured (nothing is created otherwise).
    pub fn open(settings: WebhookSettings, data_dir: &Path) -> anyhow::Result<Arc<Webhooks>> {
        let queue = if settings.endpoints.is_empty() {
            None
        } else {
            let path = data_dir.join("state").join("webhooks.redb");
            let queue =
                Queue::open(&path).map_err(|e| e.context(format!("opening {}", path.display())))?;
            Some(Arc::new(queue))
        };
        Ok(Arc::new(Webhooks {
            settings: Arc::new(settings),
            queue,
            wake: Arc::new(tokio::sync::Notify::new()),
            started: AtomicBool::new(false),
        }))
    }

    /// Emits an event: one delivery per endpoint subscribed to `event_type` (and not
    /// disabled), persisted before this returns when called outside a runtime, or on a
    /// blocking thread (so a caller's task never waits on the disk) inside one. The payload
    /// is `{"type", "timestamp", "data"}`. A failure to record is logged, never returned:
    /// an event never fails the work that emitted it.
    pub fn emit(self: &Arc<Self>, event_type: &str, data: Value) {
        if self.queue.is_none() || !self.subscribed(event_type) {
            return;
        }
        let payload = json!({
            "type": event_type,
            "timestamp": rfc3339(now_ms()),
            "data": data,
        });
        let (this, event_type) = (self.clone(), event_type.to_string());
        let record = move || {
            if let Err(e) = this.enqueue(&event_type, &payload) {
                tracing::error!(event = %event_type, error = %format!("{e:#}"), "cannot record a webhook delivery; check the data directory's disk");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(record)),
            Err(_) => record(),
        }
    }

    fn subscribed(&self, event_type: &str) -> bool {
        self.settings
            .endpoints
            .iter()
            .any(|e| e.events.iter().any(|t| t == event_type))
    }

    /// Records the deliveries of one event and wakes the delivery task.
    fn enqueue(&self, event_type: &str, payload: &Value) -> anyhow::Result<()> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        let body = serde_json::to_string(payload)?;
        let message_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let now = now_ms();
        let mut items = Vec::new();
        for endpoint in &self.settings.endpoints {
            if !endpoint.events.iter().any(|t| t == event_type) {
                continue;
            }
            if queue.disabled(endpoint.url.as_str())?.is_some() {
                tracing::debug!(url = %endpoint.url, event = event_type, "endpoint disabled by its receiver; not delivered");
                continue;
            }
            let delivery = Delivery {
                id: format!("{now:020}-{}", uuid::Uuid::new_v4().simple()),
                message_id: message_id.clone(),
                event_type: event_type.to_string(),
                endpoint: endpoint.url.to_string(),
                created_at: rfc3339(now),
                state: DeliveryState::Pending,
                attempts: Vec::new(),
                next_attempt_at: Some(rfc3339(now)),
                error: None,
            };
            items.push((delivery, body.clone()));
        }
        queue.enqueue(&items, now)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Starts the delivery task on the current tokio runtime (once; nothing without endpoints
    /// or outside a runtime). It stops when these webhooks are dropped.
    pub fn start(&self) -> anyhow::Result<()> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        if self.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::SeqCst);
            return Ok(());
        };
        let client = deliver::client(&self.settings)?;
        rt.spawn(deliver::worker(
            Arc::downgrade(queue),
            self.settings.clone(),
            self.wake.clone(),
            client,
        ));
        Ok(())
    }

    /// The newest `limit` deliveries, each with its attempts.
    pub fn deliveries(&self, limit: usize) -> anyhow::Result<Vec<Delivery>> {
        match &self.queue {
            Some(q) => q.list(limit),
            None => Ok(Vec::new()),
        }
    }

    /// The configured endpoints, each with whether its receiver disabled it.
    pub fn endpoints(&self) -> anyhow::Result<Vec<EndpointView>> {
        let mut out = Vec::new();
        for e in &self.settings.endpoints {
            let disabled = match &self.queue {
                Some(q) => q.disabled(e.url.as_str())?,
                None => None,
            };
            out.push(EndpointView {
                url: e.url.to_string(),
                events: e.events.clone(),
                disabled,
            });
        }
        Ok(out)
    }
}
