//! Batches: questions submitted together (`POST /batches`) and answered in the background by
//! the runner, each through the same entry point as an interactive answer
//! ([`crate::answer::answer_as`]: cache, privacy, audit, traces, fallback, budgets), with the
//! submitting key's name, access groups and budget bucket.
//!
//! Priority: `[batches] concurrency` workers each wait, before starting a request, until at most
//! `[batches] max_interactive` interactive answers are in flight ([`AnswerLoad`]); a request
//! that started runs to its end. Where batches live is a [`BatchBackend`]: without PostgreSQL,
//! [`local::LocalBatches`] (the redb store [`store::BatchStore`], which writes each result and
//! its counts in one transaction, and an in-memory queue; a restarted runner resumes every
//! queued or running batch with the requests that have no result); with it,
//! [`shared::PgBatches`] (tables every replica claims requests from, with a lease, so any
//! replica shows, cancels and runs any batch). Either way each request has one result (an
//! answer cut off by a stop is answered again; only one result is ever stored and counted),
//! and [`finished`] runs once per batch.
//!
//! Must not: hold the engine or the store alive while idle (workers keep weak references, so a
//! stopped server releases its files), or run more than `concurrency` requests at once.

pub mod local;
pub mod settings;
pub mod shared;
pub mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use cairn_index::{Filter, TimeRange};

use crate::agent::{Origin, answer_as};
use crate::answer::events::{AnswerEvent, AskRequest, Mode};
use crate::answer::handoff;
use crate::answer::load::{AnswerLoad, Lane};
use crate::engine::Engine;
use crate::ops::batches::local::LocalBatches;
use crate::ops::batches::settings::RawBatches;
use crate::ops::batches::shared::PgBatches;
use crate::ops::batches::store::{Batch, BatchItem, BatchResult, BatchState};

/// The HTTP route batch answers are recorded under in traces.
pub const TRACE_ROUTE: &str = "/batches";

/// Who submits a batch: the key's name, its access groups and its budget bucket.
#[derive(Debug, Clone)]
pub struct Submitter {
    pub name: String,
    pub groups: Vec<String>,
    pub budget_key: String,
}

/// Why a batch was not accepted (the checks of its requests happen before).
#[derive(Debug)]
pub enum SubmitError {
    /// The key already has this many batches queued or running (`[batches]
    /// max_active_per_key`).
    TooManyActive(usize),
    Store(anyhow::Error),
}

/// One request taken for this process to answer.
pub struct Claim {
    pub batch: Arc<Batch>,
    pub n: u32,
    pub item: BatchItem,
}

/// Where batches live and how requests are handed to the runner: this process's redb store
/// and queue ([`LocalBatches`]), or PostgreSQL's tables shared by replicas ([`PgBatches`]).
/// Calls block (file or database I/O).
pub trait BatchBackend: Send + Sync {
    /// Stores a new batch and its requests unless its owner already has `limit` active
    /// batches (`Ok(false)`).
    fn create(&self, batch: &Batch, items: Vec<BatchItem>, limit: usize) -> anyhow::Result<bool>;
    fn get(&self, id: &str) -> anyhow::Result<Option<Batch>>;
    /// The stored results of batch `id`, in request order.
    fn results(&self, id: &str) -> anyhow::Result<Vec<BatchResult>>;
    /// Marks batch `id` cancelled if it is active; the batch as stored.
    fn cancel(&self, id: &str) -> anyhow::Result<Option<Batch>>;
    /// Takes the next request to answer (marking its batch running), if any.
    fn claim(&self) -> anyhow::Result<Option<Claim>>;
    /// Stores request `n`'s result and counts it, once; the batch as stored and whether this
    /// call finished it.
    fn record(&self, id: &str, n: u32, result: &BatchResult) -> anyhow::Result<(Batch, bool)>;
}

/// How long a replica's claim on a request of a shared batch holds: twice `[server]
/// request_timeout_secs`, well past the time an answer takes. A claim older than this is taken
/// by another replica (the claimer died, or is stuck).
fn lease(engine: &Engine) -> Duration {
    Duration::from_secs(
        engine
            .config
            .server
            .request_timeout_secs
            .max(1)
            .saturating_mul(2),
    )
}

/// What cancelling does to a batch: an active one ends `cancelled` now; an ended one stays.
pub fn cancel_active(b: &mut Batch) {
    if b.state.active() {
        b.state = BatchState::Cancelled;
        b.finished_at = Some(chrono::Utc::now().to_rfc3339());
    }
}

struct Inner {
    engine: Weak<Engine>,
    backend: Arc<dyn BatchBackend>,
    /// Serialises this process's submissions, so the per-key count cannot be raced past
    /// (across replicas, PostgreSQL serialises them).
    submitting: tokio::sync::Mutex<()>,
    settings: RawBatches,
}

/// The batches of one server: the backend and the runner's workers.
pub struct Batches {
    inner: Arc<Inner>,
    wake: Arc<Notify>,
    load: Arc<AnswerLoad>,
    started: AtomicBool,
    stop: CancellationToken,
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Batches {
    /// The batches of `engine`: PostgreSQL's `batches` tables with that backend, else the data
    /// directory's `state/batches.redb` (opened on first use); the runner starts with
    /// [`Batches::start`].
    pub fn new(engine: &Arc<Engine>) -> Batches {
        let backend: Arc<dyn BatchBackend> = match engine.postgres() {
            Some(pg) => Arc::new(PgBatches::new(pg.clone(), lease(engine))),
            None => Arc::new(LocalBatches::new(
                engine.config.data_dir.join("state").join("batches.redb"),
            )),
        };
        Batches {
            inner: Arc::new(Inner {
                engine: Arc::downgrade(engine),
                backend,
                submitting: tokio::sync::Mutex::new(()),
                settings: engine.config.batches.clone(),
            }),
            wake: Arc::new(Notify::new()),
            load: engine.load.clone(),
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }
    }

    /// Starts the workers on the current Tokio runtime (once; a no-op outside a runtime, so the
    /// first request starts them then). They resume the batches a previous run left.
    pub fn start(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        for _ in 0..self.inner.settings.concurrency {
            runtime.spawn(worker(
                Arc::downgrade(&self.inner),
                self.wake.clone(),
                self.load.clone(),
                self.stop.clone(),
            ));
        }
        self.wake.notify_waiters();
    }

    pub fn settings(&self) -> &RawBatches {
        &self.inner.settings
    }

    /// Accepts a batch of checked requests for `who`; it is queued for the runner.
    pub async fn submit(
        &self,
        who: &Submitter,
        items: Vec<BatchItem>,
        metadata: Value,
    ) -> Result<Batch, SubmitError> {
        self.start();
        let _one_at_a_time = self.inner.submitting.lock().await;
        let batch = Batch {
            id: uuid::Uuid::new_v4().to_string(),
            state: BatchState::Queued,
            total: items.len(),
            done: 0,
            failed: 0,
            created_at: chrono::Utc::now().to_rfc3339(),
            finished_at: None,
            cost_usd: 0.0,
            metadata,
            owner: who.name.clone(),
            groups: who.groups.clone(),
            budget_key: who.budget_key.clone(),
        };
        let limit = self.inner.settings.max_active_per_key;
        let created = self
            .inner
            .backend
            .create(&batch, items, limit)
            .map_err(SubmitError::Store)?;
        if !created {
            return Err(SubmitError::TooManyActive(limit));
        }
        self.wake.notify_waiters();
        Ok(batch)
    }

    /// Batch `id` when `owner` submitted it (`None`: absent or another key's).
    pub fn get(&self, id: &str, owner: &str) -> anyhow::Result<Option<Batch>> {
        Ok(self.inner.backend.get(id)?.filter(|b| b.owner == owner))
    }

    /// The results of batch `id` so far, when `owner` submitted it.
    pub fn results(&self, id: &str, owner: &str) -> anyhow::Result<Option<Vec<BatchResult>>> {
        if self.get(id, owner)?.is_none() {
            return Ok(None);
        }
        self.inner.backend.results(id).map(Some)
    }

    /// Cancels what has not started of batch `id` (requests running finish and keep their
    /// results); a batch that already ended is returned as it is.
    pub fn cancel(&self, id: &str, owner: &str) -> anyhow::Result<Option<Batch>> {
        if self.get(id, owner)?.is_none() {
            return Ok(None);
        }
        self.inner.backend.cancel(id)
    }
}

impl Inner {
    /// Answers a claimed request and stores its result.
    async fn run(&self, engine: Arc<Engine>, claim: Claim) {
        let result = answer_one(engine.clone(), &claim.batch, &claim.item).await;
        let backend = self.backend.clone();
        let id = claim.batch.id.clone();
        let n = claim.n;
        let recorded = tokio::task::spawn_blocking(move || backend.record(&id, n, &result)).await;
        match recorded {
            Ok(Ok((batch, true))) => finished(&engine, &batch),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(batch = %claim.batch.id, request = n, error = %e, "a batch result could not be stored; the request is answered again after a restart (or, with PostgreSQL, once its lease ends)")
            }
            Err(e) => tracing::error!(error = %e, "storing a batch result panicked"),
        }
    }
}

/// Where a batch ends: its last request's result was stored and it is now `completed` or
/// `failed` (a cancelled batch does not come here). The one place to tell others about it:
/// the log and the `batch.completed` / `batch.failed` webhook, whose data is the batch as
/// `GET /batches/{id}` shows it.
fn finished(engine: &Engine, batch: &Batch) {
    tracing::info!(
        batch = %batch.id,
        state = ?batch.state,
        done = batch.done,
        failed = batch.failed,
        cost_usd = batch.cost_usd,
        "batch finished"
    );
    let event = match batch.state {
        BatchState::Failed => "batch.failed",
        _ => "batch.completed",
    };
    engine.webhooks.emit(event, batch.view());
}

/// A worker: waits for room beside interactive answers, takes the next request, answers it;
/// sleeps when there is none. Ends when the server's [`Batches`] is dropped.
async fn worker(
    inner: Weak<Inner>,
    wake: Arc<Notify>,
    load: Arc<AnswerLoad>,
    stop: CancellationToken,
) {
    let max_interactive = match inner.upgrade() {
        Some(i) => i.settings.max_interactive,
        None => return,
    };
    loop {
        let wait_for_room = load.wait_for_room(max_interactive);
        tokio::select! {
            _ = wait_for_room => {}
            _ = stop.cancelled() => return,
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let claim = match strong.backend.claim() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reading the batch queue failed; retrying");
                None
            }
        };
        let Some(claim) = claim else {
            // Hold nothing while idle: a restart must be able to reopen the engine's files.
            drop(strong);
            let woken = wake.notified();
            tokio::select! {
                _ = woken => {}
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let Some(engine) = strong.engine.upgrade() else {
            return;
        };
        strong.run(engine, claim).await;
    }
}

/// Runs one request through the answer entry point and collects its result.
async fn answer_one(engine: Arc<Engine>, batch: &Batch, item: &BatchItem) -> BatchResult {
    let updated =
        (item.updated_after.is_some() || item.updated_before.is_some()).then_some(TimeRange {
            from: item.updated_after,
            to: item.updated_before,
        });
    let req = AskRequest {
        question: item.question.clone(),
        filter: Filter {
            sources: item.sources.clone(),
            metadata: item.metadata.clone(),
            updated,
            caller_groups: batch.groups.clone(),
        },
        top_k: engine.config.retrieval.top_k,
        conversation: Vec::new(),
        budget_key: Some(batch.budget_key.clone()),
        thread_id: None,
        // Agent mode runs within the configured `[agent]` budget.
        agent: (item.mode == Mode::Agent).then_some(engine.config.agent.budget),
    };
    let origin = Origin {
        caller: batch.owner.clone(),
        http_route: Some(TRACE_ROUTE),
        lane: Lane::Background,
    };
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(answer_as(engine, req, origin, tx));
    let mut collected = Collected::new(&item.custom_id);
    while let Some(ev) = rx.recv().await {
        collected.apply(ev);
    }
    if let Err(e) = task.await
        && e.is_panic()
    {
        tracing::error!(batch = %batch.id, "a batch answer panicked; its result is an internal error");
    }
    collected.result()
}

/// A request's events gathered into its result line.
struct Collected {
    result: BatchResult,
    ended: bool,
}

impl Collected {
    fn new(custom_id: &str) -> Collected {
        Collected {
            result: BatchResult {
                custom_id: custom_id.to_string(),
                outcome: String::new(),
                answer: None,
                citations: Vec::new(),
                handoff: None,
                error: None,
                trace_id: None,
                cost_usd: 0.0,
            },
            ended: false,
        }
    }

    fn apply(&mut self, ev: AnswerEvent) {
        if self.ended {
            return;
        }
        let r = &mut self.result;
        match ev {
            AnswerEvent::Retrieval { .. } | AnswerEvent::Step(_) => {}
            AnswerEvent::Token(t) => r.answer.get_or_insert_default().push_str(&t),
            AnswerEvent::Citation(c) => r.citations.push(json!(c)),
            AnswerEvent::Usage(u) => r.cost_usd = u.cost_usd,
            AnswerEvent::Done {
                trace_id,
                outcome,
                handoff,
                ..
            } => {
                self.ended = true;
                r.trace_id = Some(trace_id);
                r.outcome = outcome.to_string();
                r.handoff = handoff.map(|h| json!(h));
            }
            AnswerEvent::Error { code, message } => {
                self.ended = true;
                r.outcome = code.to_string();
                r.error = Some(json!({"code": code, "message": message}));
                r.handoff = Some(json!(handoff::of_error(code)));
            }
        }
    }

    /// The result; an answer that ended without a terminal event (its task panicked) is an
    /// internal error.
    fn result(mut self) -> BatchResult {
        if !self.ended {
            self.apply(AnswerEvent::Error {
                code: "internal",
                message:
                    "An internal error occurred; the operator can find details in the server log."
                        .into(),
            });
        }
        self.result
    }
}
