//! Query embedding for searches and answers: owns the query threads and batches questions that
//! arrive together.
//!
//! One coordinator thread takes the oldest waiting question plus every other question already
//! waiting (up to [`MAX_BATCH`]) and embeds them in one call on its own two-thread pool, so the
//! global pool that ingest embedding saturates never delays a search. A lone question is
//! embedded at once, as before; under concurrent load the model runs one forward pass over many
//! short sequences instead of many passes over one each (`benches/embed.rs` measured 6–22 %
//! more questions per second with 16 clients; BENCHMARKS.md). A batch that fails is retried
//! question by question, so one bad question cannot fail the others. A panic in the tokenizer
//! or model is contained to its call (an error for its questions), the coordinator restarts
//! itself after any other panic, and [`QueryEmbedder::health`] reports a model that keeps
//! panicking, for `/readyz`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use cairn_ingest::IngestError;
use cairn_ingest::embed::Embedder;

/// Most questions embedded in one call: bounds the padded batch's memory for long questions.
pub const MAX_BATCH: usize = 16;

/// Model calls that panicked in a row after which [`QueryEmbedder::health`] reports the
/// embedder as failing (one panic is one bad question; several in a row, a broken model).
pub const FAILING_AFTER: usize = 3;

struct Job {
    text: String,
    reply: mpsc::SyncSender<Result<Vec<f32>, IngestError>>,
}

/// Where [`QueryEmbedder::inject_panic`] makes the next calls panic (tests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicSite {
    /// Inside a model call (as a tokenizer or model bug would).
    Model,
    /// In the coordinator, outside any model call.
    Coordinator,
}

/// What the coordinator and the callers share: panic counts for the health check, and the
/// test hook's pending panics.
#[derive(Default)]
struct Shared {
    panics_in_a_row: AtomicUsize,
    last_panic: Mutex<String>,
    injected_model: AtomicUsize,
    injected_coordinator: AtomicUsize,
}

impl Shared {
    /// Takes one pending injected panic at `site`, if any.
    fn take_injected(&self, site: PanicSite) -> bool {
        let counter = match site {
            PanicSite::Model => &self.injected_model,
            PanicSite::Coordinator => &self.injected_coordinator,
        };
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Runs one model call with its panics contained: a panic becomes an error for the
    /// questions of that call, and is counted for [`QueryEmbedder::health`].
    fn call<T>(
        &self,
        name: &str,
        f: impl FnOnce() -> Result<T, IngestError>,
    ) -> Result<T, IngestError> {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if self.take_injected(PanicSite::Model) {
                panic!("injected query-embedder panic");
            }
            f()
        }));
        match outcome {
            Ok(result) => {
                self.panics_in_a_row.store(0, Ordering::Release);
                result
            }
            Err(payload) => {
                let what = panic_message(payload.as_ref());
                tracing::error!(embedder = %name, panic = %what, "the query embedder panicked; the question fails, the embedder keeps serving");
                *self.last_panic.lock().unwrap_or_else(|p| p.into_inner()) = what.clone();
                self.panics_in_a_row.fetch_add(1, Ordering::AcqRel);
                Err(IngestError::Embed {
                    embedder: name.to_string(),
                    message: format!(
                        "the query embedder panicked ({what}); this question was not embedded"
                    ),
                })
            }
        }
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Embeds questions on dedicated threads, batching concurrent ones. Dropping it lets the
/// coordinator finish the questions it holds and stop. A panic in a model call fails only the
/// questions of that call; a panic elsewhere in the coordinator loses the batch in hand and
/// the coordinator starts over, so later questions are served either way.
pub struct QueryEmbedder {
    tx: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl QueryEmbedder {
    /// Starts the coordinator and a pool of `threads` threads for the model.
    pub fn start(embedder: Arc<dyn Embedder>, threads: usize) -> anyhow::Result<QueryEmbedder> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("cairn-query-{i}"))
            .build()?;
        let (tx, rx) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let worker = std::thread::Builder::new()
            .name("cairn-query-batch".into())
            .spawn(move || {
                // Restarts the loop after a panic; returns once every sender is gone.
                while catch_unwind(AssertUnwindSafe(|| {
                    coordinate(&rx, &pool, embedder.as_ref(), &state)
                }))
                .is_err()
                {
                    tracing::error!(
                        "the query-embedding coordinator panicked; its batch was lost, restarted"
                    );
                }
            })?;
        Ok(QueryEmbedder {
            tx: Some(tx),
            worker: Some(worker),
            shared,
        })
    }

    /// Embeds one question, waiting for its batch. Blocking.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, IngestError> {
        let stopped = |message: &str| IngestError::Embed {
            embedder: "query".into(),
            message: message.into(),
        };
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            text: text.to_string(),
            reply,
        };
        self.tx
            .as_ref()
            .ok_or_else(|| stopped("the query-embedding thread has stopped"))?
            .send(job)
            .map_err(|_| stopped("the query-embedding thread has stopped"))?;
        answer.recv().map_err(|_| {
            stopped("the query embedder failed while holding this question (it restarts itself); try again")
        })?
    }

    /// `None` while healthy; the reason while the last [`FAILING_AFTER`] or more model calls
    /// all panicked (a call that returns makes it healthy again).
    pub fn health(&self) -> Option<String> {
        let n = self.shared.panics_in_a_row.load(Ordering::Acquire);
        (n >= FAILING_AFTER).then(|| {
            let last = self
                .shared
                .last_panic
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            format!("the query embedder panicked on its last {n} calls (last: {last})")
        })
    }

    /// Test hook, reachable from Rust code only (no config key, route or environment variable
    /// leads here): the next `count` passes through `site` panic.
    #[doc(hidden)]
    pub fn inject_panic(&self, site: PanicSite, count: usize) {
        let counter = match site {
            PanicSite::Model => &self.shared.injected_model,
            PanicSite::Coordinator => &self.shared.injected_coordinator,
        };
        counter.store(count, Ordering::Release);
    }
}

/// The coordinator's loop: gathers waiting questions into batches and embeds each on `pool`.
fn coordinate(
    rx: &mpsc::Receiver<Job>,
    pool: &rayon::ThreadPool,
    embedder: &dyn Embedder,
    shared: &Shared,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if shared.take_injected(PanicSite::Coordinator) {
            panic!("injected coordinator panic");
        }
        pool.install(|| run_batch(embedder, shared, jobs));
    }
}

/// Embeds `jobs` in one call and answers each; on failure (a panic included), answers each
/// from its own call, so one bad question cannot fail the others.
fn run_batch(embedder: &dyn Embedder, shared: &Shared, jobs: Vec<Job>) {
    let name = embedder.info().name;
    if jobs.len() > 1 {
        let texts: Vec<&str> = jobs.iter().map(|j| j.text.as_str()).collect();
        if let Ok(vectors) = shared.call(&name, || embedder.embed_queries(&texts))
            && vectors.len() == jobs.len()
        {
            for (job, v) in jobs.into_iter().zip(vectors) {
                let _ = job.reply.send(Ok(v));
            }
            return;
        }
    }
    for job in jobs {
        let _ = job
            .reply
            .send(shared.call(&name, || embedder.embed_query(&job.text)));
    }
}

impl Drop for QueryEmbedder {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_index::EmbedderInfo;
    use std::sync::Mutex;

    /// Records the size of every call; fails any call containing "bad". Batches queries like
    /// MiniLM does.
    struct Recording {
        calls: Mutex<Vec<usize>>,
        gate: Mutex<()>,
        /// Calls that have started (before waiting for the gate).
        entered: std::sync::atomic::AtomicUsize,
    }

    impl Embedder for Recording {
        fn info(&self) -> EmbedderInfo {
            EmbedderInfo {
                name: "recording".into(),
                version: "1".into(),
                dimension: 2,
            }
        }
        fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IngestError> {
            // Before the gate, so a panic does not poison it.
            if texts.iter().any(|t| t.contains("panic")) {
                panic!("tokenizer exploded");
            }
            self.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _held = self.gate.lock().expect("gate");
            self.calls.lock().expect("calls").push(texts.len());
            if texts.iter().any(|t| t.contains("bad")) {
                return Err(IngestError::Embed {
                    embedder: "recording".into(),
                    message: "bad text".into(),
                });
            }
            Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
        }
        fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IngestError> {
            self.embed_passages(texts)
        }
        fn count_tokens(&self, text: &str) -> usize {
            text.len()
        }
    }

    fn started() -> (Arc<Recording>, QueryEmbedder) {
        let inner = Arc::new(Recording {
            calls: Mutex::new(Vec::new()),
            gate: Mutex::new(()),
            entered: std::sync::atomic::AtomicUsize::new(0),
        });
        let q = QueryEmbedder::start(inner.clone(), 1).expect("start");
        (inner, q)
    }

    #[test]
    fn concurrent_questions_share_a_call_and_each_gets_its_own_vector() {
        let (inner, q) = started();
        // Hold the model so the questions queue up behind the first.
        let held = inner.gate.lock().expect("gate");
        let asking = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            let handles: Vec<_> = (1..=9)
                .map(|n| {
                    let (q, asking) = (&q, &asking);
                    s.spawn(move || {
                        asking.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        q.embed(&"x".repeat(n))
                    })
                })
                .collect();
            // Wait until the coordinator is blocked in its first call and every client is
            // asking, then give the last sends a moment to reach the queue.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while (inner.entered.load(std::sync::atomic::Ordering::SeqCst) == 0
                || asking.load(std::sync::atomic::Ordering::SeqCst) < 9)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
            for (n, h) in (1..=9).zip(handles) {
                let v = h.join().expect("thread").expect("vector");
                assert_eq!(v, vec![n as f32, 1.0]);
            }
        });
        let calls = inner.calls.lock().expect("calls").clone();
        assert_eq!(calls.iter().sum::<usize>(), 9, "{calls:?}");
        assert!(calls.len() < 9, "waiting questions were batched: {calls:?}");
    }

    /// Asks "good", `bad` and "other" together (held until all three wait, so they share a
    /// batch): `bad` fails, the other two get their vectors.
    fn fails_alone_in_a_batch(inner: &Recording, q: &QueryEmbedder, bad: &str) {
        let held = inner.gate.lock().expect("gate");
        std::thread::scope(|s| {
            let good = s.spawn(|| q.embed("good"));
            let bad = s.spawn(|| q.embed(bad));
            let other = s.spawn(|| q.embed("other"));
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
            assert_eq!(good.join().expect("thread").expect("good"), vec![4.0, 1.0]);
            assert!(bad.join().expect("thread").is_err());
            assert_eq!(
                other.join().expect("thread").expect("other"),
                vec![5.0, 1.0]
            );
        });
    }

    #[test]
    fn a_bad_question_fails_alone() {
        let (inner, q) = started();
        fails_alone_in_a_batch(&inner, &q, "bad");
    }

    #[test]
    fn a_panicking_model_call_fails_its_question_alone_and_the_worker_keeps_serving() {
        let (inner, q) = started();
        let err = q
            .embed("panic now")
            .expect_err("a panicking call is an error");
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(
            q.embed("fine").expect("served after a panic"),
            vec![4.0, 1.0]
        );
        // In a batch, the panicking question fails alone.
        fails_alone_in_a_batch(&inner, &q, "panic");
    }

    #[test]
    fn repeated_panics_make_it_unhealthy_until_a_call_succeeds() {
        let (_inner, q) = started();
        assert_eq!(q.health(), None);
        for _ in 0..FAILING_AFTER {
            assert!(q.embed("panic").is_err());
        }
        let reason = q.health().expect("unhealthy after repeated panics");
        assert!(reason.contains("tokenizer exploded"), "{reason}");
        q.embed("fine").expect("a good question");
        assert_eq!(q.health(), None);
    }

    #[test]
    fn a_panic_in_the_coordinator_restarts_it() {
        let (_inner, q) = started();
        q.inject_panic(PanicSite::Coordinator, 1);
        let err = q.embed("lost").expect_err("the batch in hand is lost");
        assert!(err.to_string().contains("try again"), "{err}");
        assert_eq!(q.embed("again").expect("restarted"), vec![5.0, 1.0]);
        q.inject_panic(PanicSite::Model, 1);
        assert!(
            q.embed("hook")
                .expect_err("injected")
                .to_string()
                .contains("panicked")
        );
        assert_eq!(q.embed("fine").expect("served"), vec![4.0, 1.0]);
    }
}
