//! Query embedding for searches and answers: owns the query threads and batches questions that
//! arrive together.
//!
//! One coordinator thread takes the oldest waiting question plus every other question already
//! waiting (up to [`MAX_BATCH`]) and embeds them in one call on its own two-thread pool, so the
//! global pool that ingest embedding saturates never delays a search. A lone question is
//! embedded at once, as before; under concurrent load the model runs one forward pass over many
//! short sequences instead of many passes over one each (`benches/embed.rs` measured 6–22 %
//! more questions per second with 16 clients; BENCHMARKS.md). A batch that fails is retried
//! question by question, so one bad question cannot fail the others.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use cairn_ingest::IngestError;
use cairn_ingest::embed::Embedder;

/// Most questions embedded in one call: bounds the padded batch's memory for long questions.
pub const MAX_BATCH: usize = 16;

struct Job {
    text: String,
    reply: mpsc::SyncSender<Result<Vec<f32>, IngestError>>,
}

/// Embeds questions on dedicated threads, batching concurrent ones. Dropping it lets the
/// coordinator finish the questions it holds and stop.
pub struct QueryEmbedder {
    tx: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl QueryEmbedder {
    /// Starts the coordinator and a pool of `threads` threads for the model.
    pub fn start(embedder: Arc<dyn Embedder>, threads: usize) -> anyhow::Result<QueryEmbedder> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("cairn-query-{i}"))
            .build()?;
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = std::thread::Builder::new()
            .name("cairn-query-batch".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    pool.install(|| run_batch(embedder.as_ref(), jobs));
                }
            })?;
        Ok(QueryEmbedder {
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// Embeds one question, waiting for its batch. Blocking.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, IngestError> {
        let stopped = || IngestError::Embed {
            embedder: "query".into(),
            message: "the query-embedding thread has stopped".into(),
        };
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            text: text.to_string(),
            reply,
        };
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }
}

/// Embeds `jobs` in one call and answers each; on failure, answers each from its own call.
fn run_batch(embedder: &dyn Embedder, jobs: Vec<Job>) {
    if jobs.len() > 1 {
        let texts: Vec<&str> = jobs.iter().map(|j| j.text.as_str()).collect();
        if let Ok(vectors) = embedder.embed_queries(&texts)
            && vectors.len() == jobs.len()
        {
            for (job, v) in jobs.into_iter().zip(vectors) {
                let _ = job.reply.send(Ok(v));
            }
            return;
        }
    }
    for job in jobs {
        let _ = job.reply.send(embedder.embed_query(&job.text));
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

    #[test]
    fn a_bad_question_fails_alone() {
        let (inner, q) = started();
        let held = inner.gate.lock().expect("gate");
        std::thread::scope(|s| {
            let good = s.spawn(|| q.embed("good"));
            let bad = s.spawn(|| q.embed("bad"));
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
}
