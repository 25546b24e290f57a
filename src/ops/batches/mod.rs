//! Batches: questions submitted together (`POST /batches`) and answered in the background by
//! this process's runner, each through the same entry point as an interactive answer
//! ([`crate::answer::answer_as`]: cache, privacy, audit, traces, fallback, budgets), with the
//! submitting key's name, access groups and budget bucket.
//!
//! Priority: `[batches] concurrency` workers each wait, before starting a request, until at most
//! `[batches] max_interactive` interactive answers are in flight ([`AnswerLoad`]); a request
//! that started runs to its end. Persistence: the store ([`store::BatchStore`]) writes each
//! result and its counts in one transaction, and a restarted runner resumes every queued or
//! running batch with the requests that have no result, so each request is answered once (an
//! answer cut off by the stop is answered again; only one result is ever stored).
//!
//! Must not: hold the engine or the store alive while idle (workers keep weak references, so a
//! stopped server releases its files), or run more than `concurrency` requests at once.

pub mod settings;
pub mod store;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
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
use crate::ops::batches::settings::RawBatches;
use crate::ops::batches::store::{Batch, BatchItem, BatchResult, BatchState, BatchStore};

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

/// A batch whose requests are waiting: the batch as accepted and its requests not started.
struct Waiting {
    batch: Arc<Batch>,
    items: VecDeque<(u32, BatchItem)>,
}

/// The runner's queue: active batches oldest first.
#[derive(Default)]
struct Queue {
    /// Whether active batches were read from the store (once, at the first claim).
    loaded: bool,
    batches: VecDeque<Waiting>,
}

/// One request taken off the queue.
struct Claim {
    batch: Arc<Batch>,
    n: u32,
    item: BatchItem,
}

struct Inner {
    engine: Weak<Engine>,
    path: PathBuf,
    store: Mutex<Option<Arc<BatchStore>>>,
    queue: Mutex<Queue>,
    /// Serialises submissions, so the per-key count cannot be raced past.
    submitting: tokio::sync::Mutex<()>,
    settings: RawBatches,
}

/// The batches of one server: the store and the runner's workers.
pub struct Batches {
    inner: Arc<Inner>,
    wake: Arc<Notify>,
    load: Arc<AnswerLoad>,
    started: AtomicBool,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Batches {
    /// The batches of `engine`'s data directory (`state/batches.redb`, opened on first use);
    /// the runner starts with [`Batches::start`].
    pub fn new(engine: &Arc<Engine>) -> Batches {
        Batches {
            inner: Arc::new(Inner {
                engine: Arc::downgrade(engine),
                path: engine.config.data_dir.join("state").join("batches.redb"),
                store: Mutex::new(None),
                queue: Mutex::new(Queue::default()),
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
        let store = self.inner.store(true).map_err(SubmitError::Store)?;
        let store = store.ok_or_else(|| SubmitError::Store(anyhow::anyhow!("no store")))?;
        let active = store
            .all()
            .map_err(SubmitError::Store)?
            .iter()
            .filter(|b| b.owner == who.name && b.state.active())
            .count();
        let limit = self.inner.settings.max_active_per_key;
        if active >= limit {
            return Err(SubmitError::TooManyActive(limit));
        }
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
        store.create(&batch, &items).map_err(SubmitError::Store)?;
        self.inner.enqueue(&batch, items);
        self.wake.notify_waiters();
        Ok(batch)
    }

    /// Batch `id` when `owner` submitted it (`None`: absent or another key's).
    pub fn get(&self, id: &str, owner: &str) -> anyhow::Result<Option<Batch>> {
        let Some(store) = self.inner.store(false)? else {
            return Ok(None);
        };
        Ok(store.get(id)?.filter(|b| b.owner == owner))
    }

    /// The results of batch `id` so far, when `owner` submitted it.
    pub fn results(&self, id: &str, owner: &str) -> anyhow::Result<Option<Vec<BatchResult>>> {
        if self.get(id, owner)?.is_none() {
            return Ok(None);
        }
        let Some(store) = self.inner.store(false)? else {
            return Ok(None);
        };
        Ok(Some(store.results(id)?))
    }

    /// Cancels what has not started of batch `id` (requests running finish and keep their
    /// results); a batch that already ended is returned as it is.
    pub fn cancel(&self, id: &str, owner: &str) -> anyhow::Result<Option<Batch>> {
        if self.get(id, owner)?.is_none() {
            return Ok(None);
        }
        let Some(store) = self.inner.store(false)? else {
            return Ok(None);
        };
        // Off the queue first, so no worker starts one of its requests meanwhile.
        lock(&self.inner.queue).batches.retain(|w| w.batch.id != id);
        store.update(id, |b| {
            if b.state.active() {
                b.state = BatchState::Cancelled;
                b.finished_at = Some(chrono::Utc::now().to_rfc3339());
            }
        })
    }
}

impl Inner {
    /// The store; opened on first use, and created only when `create` (a process that never
    /// received a batch has no file).
    fn store(&self, create: bool) -> anyhow::Result<Option<Arc<BatchStore>>> {
        let mut slot = lock(&self.store);
        if let Some(s) = slot.as_ref() {
            return Ok(Some(s.clone()));
        }
        if !create && !self.path.exists() {
            return Ok(None);
        }
        let opened = Arc::new(BatchStore::open(&self.path)?);
        *slot = Some(opened.clone());
        Ok(Some(opened))
    }

    /// Puts a new batch's requests at the end of the queue (unless the queue is yet to be read
    /// from the store, which then finds it there).
    fn enqueue(&self, batch: &Batch, items: Vec<BatchItem>) {
        let mut queue = lock(&self.queue);
        if !queue.loaded {
            return;
        }
        queue.batches.push_back(Waiting {
            batch: Arc::new(batch.clone()),
            items: (0u32..).zip(items).collect(),
        });
    }

    /// Reads the active batches and their requests without a result (the work a previous
    /// run left, or none).
    fn load(&self, queue: &mut Queue) -> anyhow::Result<()> {
        let Some(store) = self.store(false)? else {
            queue.loaded = true;
            return Ok(());
        };
        for batch in store.all()?.into_iter().filter(|b| b.state.active()) {
            let items = store.pending(&batch.id)?;
            tracing::info!(batch = %batch.id, left = items.len(), "resuming a batch");
            queue.batches.push_back(Waiting {
                batch: Arc::new(batch),
                items: items.into(),
            });
        }
        queue.loaded = true;
        Ok(())
    }

    /// Takes the next request of the oldest batch with one waiting; marks its batch running.
    fn claim(&self) -> anyhow::Result<Option<Claim>> {
        let mut queue = lock(&self.queue);
        if !queue.loaded {
            self.load(&mut queue)?;
        }
        while let Some(front) = queue.batches.front_mut() {
            let Some((n, item)) = front.items.pop_front() else {
                queue.batches.pop_front();
                continue;
            };
            let batch = front.batch.clone();
            if batch.state == BatchState::Queued
                && let Some(store) = self.store(false)?
            {
                let running = store.update(&batch.id, |b| {
                    if b.state == BatchState::Queued {
                        b.state = BatchState::Running;
                    }
                })?;
                if let Some(running) = running {
                    front.batch = Arc::new(running);
                }
            }
            return Ok(Some(Claim { batch, n, item }));
        }
        Ok(None)
    }

    /// Answers a claimed request and stores its result.
    async fn run(&self, engine: Arc<Engine>, claim: Claim) {
        let result = answer_one(engine.clone(), &claim.batch, &claim.item).await;
        let Ok(Some(store)) = self.store(false) else {
            tracing::error!(batch = %claim.batch.id, "the batch store is gone; result dropped");
            return;
        };
        let id = claim.batch.id.clone();
        let n = claim.n;
        let recorded = tokio::task::spawn_blocking(move || store.record(&id, n, &result)).await;
        match recorded {
            Ok(Ok((batch, true))) => finished(&engine, &batch),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(batch = %claim.batch.id, request = n, error = %e, "a batch result could not be stored; the request is answered again after a restart")
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
        let claim = match strong.claim() {
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
