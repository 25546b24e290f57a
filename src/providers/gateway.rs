//! The gateway: the one entry point the answer pipeline calls.
//!
//! [`Router::stream`] takes a route and a request and returns a stream plus [`TargetInfo`]
//! (which provider and model served, attempts made, tokens and cost). Internally, per target in
//! route order: the breaker is asked first (an open breaker skips the target), a concurrency
//! permit is taken, the call is opened and held until its first output event (text or tool
//! call) under the time-to-first-token limit; retryable failures before that point are retried
//! with backoff ([`super::retry`]), other failures or spent retries move to the next target.
//! Once output has started the stream is handed over and never retried or replaced; idle and
//! total time-outs then apply, a failure is reported in-stream, and dropping the stream (or
//! cancelling the token) drops the HTTP response, which closes the upstream request.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::breaker::Breaker;
use super::config::{Price, ProviderSettings};
use super::cost::{Exhausted, Reservation, cost_usd, estimate_usd};
use super::retry::RetryPolicy;
use super::{
    ChatEvent, ChatRequest, ChatResponse, ChatStream, EmbedRequest, EmbedResponse, FinishReason,
    Message, ProviderError, RerankRequest, RerankResponse, Role, Router, Target, Usage,
};

/// Gateway state of one provider, shared by all its targets.
#[derive(Debug)]
pub struct Gate {
    pub settings: ProviderSettings,
    pub retry: RetryPolicy,
    pub breaker: Breaker,
    pub limiter: Arc<Semaphore>,
}

impl Gate {
    pub fn new(s: &ProviderSettings) -> Gate {
        Gate {
            settings: s.clone(),
            retry: RetryPolicy::from_settings(s),
            breaker: Breaker::new(
                s.breaker_failures,
                Duration::from_millis(s.breaker_cooldown_ms),
            ),
            limiter: Arc::new(Semaphore::new(s.max_concurrency.max(1))),
        }
    }

    /// Records a failed call (breaker, attempt log) and returns how long to wait before retrying
    /// the same target, or `None` when it must not be retried.
    fn after_failure(
        &self,
        target: &Target,
        e: &ProviderError,
        retry: u32,
        waited: Duration,
        attempts: &mut Vec<Attempt>,
    ) -> Option<Duration> {
        if health_failure(e) {
            self.breaker.failure();
        }
        attempts.push(Attempt {
            provider: target.provider_name.clone(),
            model: target.model.clone(),
            error: Some(e.clone()),
        });
        if !e.retryable() {
            return None;
        }
        let after = e.retry_after_ms().map(Duration::from_millis);
        self.retry.delay(retry, after, waited, &mut rand::rng())
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

/// How a request's deadline is shared across its route (see [`Router::stream_until`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeBudget {
    /// The deadline of a request that did not bring its own (`[server] request_timeout_secs`).
    pub request: Duration,
    /// The part of the time left that a target with fallbacks after it leaves to them
    /// (`[gateway] fallback_share`).
    pub fallback_share: f64,
}

impl Default for TimeBudget {
    fn default() -> Self {
        TimeBudget {
            request: Duration::from_secs(60),
            fallback_share: super::config::DEFAULT_FALLBACK_SHARE,
        }
    }
}

impl TimeBudget {
    /// When a target tried at `now` must give up: the request deadline for the last target;
    /// for one with fallbacks after it, early enough to leave them `fallback_share` of the
    /// time left.
    pub fn slice_end(&self, now: Instant, deadline: Instant, has_later: bool) -> Instant {
        if !has_later {
            return deadline;
        }
        let left = deadline.saturating_duration_since(now);
        let keep = self.fallback_share.clamp(0.0, 1.0);
        now + left.mul_f64(1.0 - keep)
    }
}

/// Why the gateway gave no stream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("budget exhausted: {0}")]
    BudgetExhausted(Exhausted),
    #[error("no route named `{0}`")]
    NoRoute(String),
    #[error("every provider of the route failed{}", last_error(.last))]
    AllFailed {
        attempts: Vec<Attempt>,
        last: Option<ProviderError>,
    },
    #[error("the call was cancelled")]
    Cancelled,
    #[error("the output does not match the requested schema: {0}")]
    SchemaInvalid(String),
    /// A call failed after output had started (so it was not retried).
    #[error("{0}")]
    Interrupted(ProviderError),
}

fn last_error(last: &Option<ProviderError>) -> String {
    last.as_ref()
        .map(|e| format!("; last error: {e}"))
        .unwrap_or_default()
}

impl GatewayError {
    /// A stable machine-readable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BudgetExhausted(_) => "budget_exhausted",
            GatewayError::NoRoute(_) => "no_route",
            // The route ran out of the request's time rather than of providers: a deadline.
            GatewayError::AllFailed {
                last: Some(ProviderError::Timeout { stage, .. }),
                ..
            } if stage == "request_deadline" => "deadline_exceeded",
            GatewayError::AllFailed { .. } => "providers_unavailable",
            GatewayError::Cancelled => "cancelled",
            GatewayError::SchemaInvalid(_) => "schema_invalid",
            GatewayError::Interrupted(_) => "provider_stream_failed",
        }
    }
}

/// One try of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    /// `None` when the breaker skipped the target without a call.
    pub error: Option<ProviderError>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Meter {
    usage: Usage,
    cost_usd: f64,
    price_known: bool,
}

/// Tokens and cost of a call, filled in as its stream runs.
#[derive(Debug, Default)]
pub struct CallMeter {
    inner: Mutex<Meter>,
}

impl CallMeter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Meter> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, usage: Usage, price: Option<&Price>) {
        let mut m = self.lock();
        m.usage = usage;
        m.price_known = price.is_some();
        m.cost_usd = price.map_or(0.0, |p| cost_usd(p, &usage));
    }

    pub fn usage(&self) -> Usage {
        self.lock().usage
    }

    /// US dollars; 0 when the model has no price in the table.
    pub fn cost_usd(&self) -> f64 {
        self.lock().cost_usd
    }

    pub fn price_known(&self) -> bool {
        self.lock().price_known
    }
}

/// Which target served a call, how it got there, and what it cost.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    pub provider_name: String,
    pub model: String,
    /// Position of the serving target in the route (0: the first choice).
    pub target_index: usize,
    /// Failed or skipped tries before the one that served.
    pub attempts: Vec<Attempt>,
    pub meter: Arc<CallMeter>,
}

impl TargetInfo {
    pub fn usage(&self) -> Usage {
        self.meter.usage()
    }

    pub fn cost_usd(&self) -> f64 {
        self.meter.cost_usd()
    }
}

/// Settles the call's budget reservation and reports to the breaker when a served call ends
/// (however it ends).
struct CallGuard {
    _permit: OwnedSemaphorePermit,
    gate: Arc<Gate>,
    meter: Arc<CallMeter>,
    reservation: Option<Reservation>,
    failed: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            // A call that reported no usage (cut off before its last event) is charged what
            // was reserved for it: the vendor may well bill it.
            let m = *self.meter.lock();
            let cost = if m.usage == Usage::default() {
                r.usd()
            } else {
                m.cost_usd
            };
            r.settle(cost);
        }
        if self.failed {
            self.gate.breaker.failure();
        }
    }
}

/// A stream after its first output event: idle and total time-outs, cancellation, metering.
///
/// Written as a hand-made [`Stream`](futures::Stream) rather than an `unfold` with a fresh
/// `timeout` and `cancelled()` per event: the timer and the cancellation waiter are created once
/// per stream, and the timer is only re-armed when it fires early (an event arrived since it
/// was set), so an event that is already waiting costs no timer work at all.
struct Live {
    inner: ChatStream,
    buf: VecDeque<ChatEvent>,
    idle: Duration,
    deadline: Instant,
    /// When the last event came from upstream; the idle limit counts from here.
    last_event: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    price: Option<Price>,
    provider: String,
    guard: CallGuard,
    done: bool,
}

impl Live {
    /// The total limit counts from when the call began (`opened.started`).
    fn new(
        opened: Opened,
        s: &ProviderSettings,
        target: &Target,
        cancel: CancellationToken,
        guard: CallGuard,
    ) -> Live {
        let idle = Gate::ms(s.timeout_idle_ms);
        let deadline = opened.started + Gate::ms(s.timeout_total_ms);
        let now = Instant::now();
        let due = (now + idle).min(deadline);
        Live {
            inner: opened.stream,
            buf: opened.buf,
            idle,
            deadline,
            last_event: now,
            timer: Box::pin(tokio::time::sleep_until(due.into())),
            cancelled: Box::pin(cancel.cancelled_owned()),
            price: s.prices.get(&target.model).copied(),
            provider: target.provider_name.clone(),
            guard,
            done: false,
        }
    }

    fn observe(&self, ev: &ChatEvent) {
        if let ChatEvent::Usage(u) = ev {
            self.guard.meter.set(*u, self.price.as_ref());
        }
    }

    /// Polls the timer; `Ready` means the idle or total limit has really passed.
    fn poll_timeout(&mut self, cx: &mut Context<'_>) -> Poll<&'static str> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Poll::Ready("total");
            }
            let due = (self.last_event + self.idle).min(self.deadline);
            if now >= due {
                return Poll::Ready("idle");
            }
            // Events arrived since the timer was armed: move it and poll again to register.
            self.timer.as_mut().reset(due.into());
        }
    }
}

impl futures::Stream for Live {
    type Item = Result<ChatEvent, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let l = self.get_mut();
        if let Some(ev) = l.buf.pop_front() {
            l.observe(&ev);
            return Poll::Ready(Some(Ok(ev)));
        }
        if l.done {
            return Poll::Ready(None);
        }
        if l.cancelled.as_mut().poll(cx).is_ready() {
            l.done = true;
            return Poll::Ready(None);
        }
        match l.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(ev))) => {
                l.last_event = Instant::now();
                l.observe(&ev);
                Poll::Ready(Some(Ok(ev)))
            }
            Poll::Ready(Some(Err(e))) => {
                l.done = true;
                l.guard.failed = health_failure(&e);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                l.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match l.poll_timeout(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(stage) => {
                    l.done = true;
                    l.guard.failed = true;
                    Poll::Ready(Some(Err(ProviderError::Timeout {
                        provider: l.provider.clone(),
                        stage: stage.into(),
                    })))
                }
            },
        }
    }
}

/// What to reserve for a call over `targets`: the highest estimate of any of them, since the
/// call may be served by any (a model without a price counts as free; start-up flags it).
fn route_estimate_usd(targets: &[Target], req: &ChatRequest) -> f64 {
    targets
        .iter()
        .filter_map(|t| t.gate.settings.prices.get(&t.model))
        .map(|p| estimate_usd(p, req))
        .fold(0.0, f64::max)
}

/// A call whose output has started: the events read so far and the rest of the stream.
struct Opened {
    stream: ChatStream,
    buf: VecDeque<ChatEvent>,
    /// When the call was sent; the total time-out counts from here.
    started: Instant,
}

/// Opens a call and waits for its first output event, buffering what came before it, under the
/// first-token limit and never past `until` (this target's share of the request deadline).
async fn open_within(
    target: &Target,
    req: &ChatRequest,
    started: Instant,
    until: Instant,
) -> Result<Opened, ProviderError> {
    let s = &target.gate.settings;
    let first = Gate::ms(s.timeout_first_token_ms).min(Gate::ms(s.timeout_total_ms));
    let (end, stage) = if started + first <= until {
        (started + first, "first_token")
    } else {
        (until, "request_deadline")
    };
    match tokio::time::timeout_at(end.into(), open_until_output(target, req)).await {
        Ok(r) => r.map(|(stream, buf)| Opened {
            stream,
            buf,
            started,
        }),
        Err(_) => Err(ProviderError::Timeout {
            provider: target.provider_name.clone(),
            stage: stage.into(),
        }),
    }
}

/// Opens a call and waits for its first output event, buffering what came first. A stream
/// that ends without output is a failure (a 200 with nothing in it has not answered), except
/// when the vendor said its filter stopped the answer: that ending is the answer's outcome.
async fn open_until_output(
    target: &Target,
    req: &ChatRequest,
) -> Result<(ChatStream, VecDeque<ChatEvent>), ProviderError> {
    let mut s = target.provider.chat_stream(&target.model, req).await?;
    let mut buf = VecDeque::new();
    loop {
        match s.next().await {
            Some(Ok(ev)) => {
                let out = ev.is_output();
                buf.push_back(ev);
                if out {
                    return Ok((s, buf));
                }
            }
            Some(Err(e)) => return Err(e),
            None if buf.contains(&ChatEvent::Finish(FinishReason::ContentFilter)) => {
                // The stream has ended: never poll it again.
                return Ok((Box::pin(futures::stream::empty()), buf));
            }
            None => {
                return Err(ProviderError::Malformed {
                    provider: target.provider_name.clone(),
                    message: "the response ended without any output (no text, no tool call)".into(),
                });
            }
        }
    }
}

/// The failed and skipped tries of one call, across the route.
#[derive(Default)]
struct Tried {
    attempts: Vec<Attempt>,
    last: Option<ProviderError>,
}

impl Tried {
    fn push(&mut self, target: &Target, error: Option<ProviderError>) {
        self.attempts.push(Attempt {
            provider: target.provider_name.clone(),
            model: target.model.clone(),
            error,
        });
    }

    /// The target's share of the request deadline ran out before a call could be sent.
    fn out_of_time(&mut self, target: &Target) {
        let e = ProviderError::Timeout {
            provider: target.provider_name.clone(),
            stage: "request_deadline".into(),
        };
        self.push(target, Some(e.clone()));
        self.last = Some(e);
    }
}

/// Whether an error says something about the provider's health (counts for the breaker).
fn health_failure(e: &ProviderError) -> bool {
    e.retryable() || matches!(e, ProviderError::Malformed { .. })
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> Result<(), GatewayError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(GatewayError::Cancelled),
        _ = tokio::time::sleep(d) => Ok(()),
    }
}

impl Router {
    /// Streams a chat answer over `route`: retries, breakers, time-outs, fallback before the
    /// first token, and cost accounting. See the module documentation.
    pub async fn stream(
        &self,
        route: &str,
        req: &ChatRequest,
        cancel: CancellationToken,
    ) -> Result<(ChatStream, TargetInfo), GatewayError> {
        self.stream_for_key(route, req, cancel, None).await
    }

    /// [`Router::stream`] charged to one of cairn's API keys (for the per-key daily cap), under
    /// the router's request deadline counted from now.
    pub async fn stream_for_key(
        &self,
        route: &str,
        req: &ChatRequest,
        cancel: CancellationToken,
        key: Option<&str>,
    ) -> Result<(ChatStream, TargetInfo), GatewayError> {
        let deadline = Instant::now() + self.time.request;
        self.stream_until(route, req, cancel, key, deadline).await
    }

    /// [`Router::stream_for_key`] whose output must have started by `deadline` (the request's
    /// own deadline): every attempt and every fallback gets only what is left of it, and each
    /// target before the last leaves [`TimeBudget::fallback_share`] of the time left to the
    /// targets after it.
    pub async fn stream_until(
        &self,
        route: &str,
        req: &ChatRequest,
        cancel: CancellationToken,
        key: Option<&str>,
        deadline: Instant,
    ) -> Result<(ChatStream, TargetInfo), GatewayError> {
        let targets = self
            .routes
            .get(route)
            .ok_or_else(|| GatewayError::NoRoute(route.to_string()))?;
        self.budget
            .check_tokens(req.max_tokens)
            .map_err(GatewayError::BudgetExhausted)?;
        let mut reservation = Some(
            self.budget
                .reserve(route_estimate_usd(targets, req), key)
                .map_err(GatewayError::BudgetExhausted)?,
        );
        let mut tried = Tried::default();
        for (index, target) in targets.iter().enumerate() {
            let has_later = index + 1 < targets.len();
            let until = self.time.slice_end(Instant::now(), deadline, has_later);
            if let Some((opened, mut guard)) = self
                .try_target(target, req, &cancel, until, &mut tried)
                .await?
            {
                guard.reservation = reservation.take();
                let meter = guard.meter.clone();
                let live = Live::new(opened, &target.gate.settings, target, cancel, guard);
                let info = TargetInfo {
                    provider_name: target.provider_name.clone(),
                    model: target.model.clone(),
                    target_index: index,
                    attempts: tried.attempts,
                    meter,
                };
                return Ok((Box::pin(live), info));
            }
        }
        Err(GatewayError::AllFailed {
            attempts: tried.attempts,
            last: tried.last,
        })
    }

    /// Tries one target until its output starts (`Some`), or until its retries, its breaker or
    /// its share of the request deadline (`until`) say to move on (`None`).
    async fn try_target(
        &self,
        target: &Target,
        req: &ChatRequest,
        cancel: &CancellationToken,
        until: Instant,
        tried: &mut Tried,
    ) -> Result<Option<(Opened, CallGuard)>, GatewayError> {
        let gate = &target.gate;
        let mut retry = 0u32;
        let mut waited = Duration::ZERO;
        loop {
            if !gate.breaker.allow() {
                tracing::debug!(provider = %target.provider_name, "breaker open; skipping");
                tried.push(target, None);
                return Ok(None);
            }
            let started = Instant::now();
            let permit = tokio::select! {
                _ = cancel.cancelled() => return Err(GatewayError::Cancelled),
                p = tokio::time::timeout_at(until.into(), gate.limiter.clone().acquire_owned()) => match p {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(GatewayError::Cancelled),
                    Err(_) => {
                        tried.out_of_time(target);
                        return Ok(None);
                    }
                },
            };
            let opened = tokio::select! {
                _ = cancel.cancelled() => return Err(GatewayError::Cancelled),
                r = open_within(target, req, started, until) => r,
            };
            let e = match opened {
                Ok(opened) => {
                    gate.breaker.success();
                    let guard = CallGuard {
                        _permit: permit,
                        gate: gate.clone(),
                        meter: Arc::new(CallMeter::default()),
                        reservation: None,
                        failed: false,
                    };
                    return Ok(Some((opened, guard)));
                }
                Err(e) => e,
            };
            drop(permit);
            tracing::warn!(provider = %target.provider_name, model = %target.model, error = %e, retry, "provider call failed before output");
            let delay = gate.after_failure(target, &e, retry, waited, &mut tried.attempts);
            tried.last = Some(e);
            // A retry that could not start before this target's share of the deadline ends is
            // not made: the time belongs to the targets after it.
            let Some(d) = delay.filter(|d| Instant::now() + *d < until) else {
                return Ok(None);
            };
            sleep_or_cancel(d, cancel).await?;
            waited += d;
            retry += 1;
        }
    }

    /// A whole (non-streamed) response, with the same gateway behaviour.
    pub async fn complete(
        &self,
        route: &str,
        req: &ChatRequest,
        cancel: CancellationToken,
    ) -> Result<(ChatResponse, TargetInfo), GatewayError> {
        let (stream, info) = self.stream(route, req, cancel).await?;
        let resp = ChatResponse::collect(stream)
            .await
            .map_err(GatewayError::Interrupted)?;
        Ok((resp, info))
    }

    /// A JSON value valid against `req.output_schema`. An invalid reply is retried once with
    /// the validation errors as feedback; a second invalid reply is [`GatewayError::SchemaInvalid`].
    pub async fn complete_json(
        &self,
        route: &str,
        req: &ChatRequest,
        cancel: CancellationToken,
    ) -> Result<(serde_json::Value, TargetInfo), GatewayError> {
        let Some(schema) = &req.output_schema else {
            return Err(GatewayError::SchemaInvalid(
                "the request has no output_schema".into(),
            ));
        };
        let validator = jsonschema::validator_for(&schema.schema).map_err(|e| {
            GatewayError::SchemaInvalid(format!("the schema itself is invalid: {e}"))
        })?;
        let mut req = req.clone();
        let mut last_problem = String::new();
        for _ in 0..2 {
            let (resp, info) = self.complete(route, &req, cancel.clone()).await?;
            match check_json(&validator, &resp.text) {
                Ok(v) => return Ok((v, info)),
                Err(problem) => {
                    tracing::info!(provider = %info.provider_name, %problem, "structured output invalid; asking again");
                    req.messages.push(Message {
                        role: Role::Assistant,
                        content: resp.text,
                    });
                    req.messages.push(Message {
                        role: Role::User,
                        content: format!(
                            "That reply is not valid against the required JSON schema: {problem}. Reply again with only the corrected JSON."
                        ),
                    });
                    last_problem = problem;
                }
            }
        }
        Err(GatewayError::SchemaInvalid(last_problem))
    }

    /// Embeds texts over `route` with retries, breakers and fallback (no streaming).
    pub async fn embed(
        &self,
        route: &str,
        req: &EmbedRequest,
        cancel: CancellationToken,
    ) -> Result<(EmbedResponse, TargetInfo), GatewayError> {
        let (resp, info) = self
            .unary(route, cancel, |t| {
                let t = t.clone();
                let req = req.clone();
                async move { t.provider.embed(&t.model, &req).await }
            })
            .await?;
        let price = self
            .routes
            .get(route)
            .and_then(|ts| ts.get(info.target_index))
            .and_then(|t| t.gate.settings.prices.get(&t.model).copied());
        info.meter.set(resp.usage, price.as_ref());
        self.budget.charge(info.cost_usd(), None);
        Ok((resp, info))
    }

    /// Reranks documents over `route` with retries, breakers and fallback.
    pub async fn rerank(
        &self,
        route: &str,
        req: &RerankRequest,
        cancel: CancellationToken,
    ) -> Result<(RerankResponse, TargetInfo), GatewayError> {
        self.unary(route, cancel, |t| {
            let t = t.clone();
            let req = req.clone();
            async move { t.provider.rerank(&t.model, &req).await }
        })
        .await
    }

    async fn unary<T, F, Fut>(
        &self,
        route: &str,
        cancel: CancellationToken,
        call: F,
    ) -> Result<(T, TargetInfo), GatewayError>
    where
        F: Fn(&Target) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let targets = self
            .routes
            .get(route)
            .ok_or_else(|| GatewayError::NoRoute(route.to_string()))?;
        self.budget
            .check(None, None)
            .map_err(GatewayError::BudgetExhausted)?;
        let mut attempts = Vec::new();
        let mut last = None;
        for (index, target) in targets.iter().enumerate() {
            let gate = &target.gate;
            let mut retry = 0u32;
            let mut waited = Duration::ZERO;
            loop {
                if !gate.breaker.allow() {
                    attempts.push(Attempt {
                        provider: target.provider_name.clone(),
                        model: target.model.clone(),
                        error: None,
                    });
                    break;
                }
                let _permit = tokio::select! {
                    _ = cancel.cancelled() => return Err(GatewayError::Cancelled),
                    p = gate.limiter.clone().acquire_owned() => p.map_err(|_| GatewayError::Cancelled)?,
                };
                let total = Gate::ms(gate.settings.timeout_total_ms);
                let r = tokio::select! {
                    _ = cancel.cancelled() => return Err(GatewayError::Cancelled),
                    r = tokio::time::timeout(total, call(target)) => r.unwrap_or_else(|_| Err(ProviderError::Timeout {
                        provider: target.provider_name.clone(),
                        stage: "total".into(),
                    })),
                };
                match r {
                    Ok(v) => {
                        gate.breaker.success();
                        let info = TargetInfo {
                            provider_name: target.provider_name.clone(),
                            model: target.model.clone(),
                            target_index: index,
                            attempts,
                            meter: Arc::new(CallMeter::default()),
                        };
                        return Ok((v, info));
                    }
                    Err(e) => {
                        let delay = gate.after_failure(target, &e, retry, waited, &mut attempts);
                        last = Some(e);
                        let Some(d) = delay else { break };
                        sleep_or_cancel(d, &cancel).await?;
                        waited += d;
                        retry += 1;
                    }
                }
            }
        }
        Err(GatewayError::AllFailed { attempts, last })
    }
}

/// Parses a reply as JSON (tolerating a Markdown code fence) and validates it.
pub fn check_json(
    validator: &jsonschema::Validator,
    text: &str,
) -> Result<serde_json::Value, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.strip_suffix("```"))
        .unwrap_or(t)
        .trim();
    let v: serde_json::Value = serde_json::from_str(t).map_err(|e| format!("not JSON ({e})"))?;
    let errors: Vec<String> = validator
        .iter_errors(&v)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .take(5)
        .collect();
    if errors.is_empty() {
        Ok(v)
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_check_reports_path_and_accepts_fences() {
        let v = jsonschema::validator_for(
            &json!({"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}),
        )
        .expect("schema");
        assert_eq!(
            check_json(&v, "```json\n{\"n\": 3}\n```").expect("ok"),
            json!({"n": 3})
        );
        let e = check_json(&v, r#"{"n": "x"}"#).unwrap_err();
        assert!(e.contains("/n"), "{e}");
        assert!(check_json(&v, "nope").unwrap_err().starts_with("not JSON"));
    }
}
