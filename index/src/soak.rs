//! The index soak: commits ingest-sized batches (by default 64 documents of 3 chunks, 384-d
//! hash-like vectors) for a set time while other threads search without pause, and reports
//! throughput, commit and search latency percentiles, peak memory, bytes on disk and stalls.
//!
//! [`run`] is what `benches/soak.rs` and the server's `bench soak` command call; the report is
//! `Serialize` so either can print it as JSON. Synthetic data only: no model, no network.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::types::{ChunkInput, ChunkRecord, DocumentRecord, EmbedderInfo, Filter, SearchMode};
use crate::{Health, Index, IndexError, IndexOptions, Result, SearchRequest};

/// What a soak run does.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Run at least this long...
    pub duration: Duration,
    /// ...and until at least this many chunks were committed,
    pub min_chunks: u64,
    /// ...but never longer than this (the report then says the target was not reached).
    pub max_duration: Duration,
    pub docs_per_commit: usize,
    pub chunks_per_doc: usize,
    /// Of each commit's documents, how many replace an earlier document (so old chunk bodies
    /// are retired while readers hold older generations).
    pub replaced_per_commit: usize,
    pub dimension: usize,
    /// Threads searching (hybrid, k = 10) without pause during the run.
    pub search_threads: usize,
    /// [`IndexOptions::stall`] for the run.
    pub stall: Duration,
    pub seed: u64,
}

impl Default for SoakOptions {
    fn default() -> SoakOptions {
        SoakOptions {
            duration: Duration::from_secs(600),
            min_chunks: 100_000,
            max_duration: Duration::from_secs(3600),
            docs_per_commit: 64,
            chunks_per_doc: 3,
            replaced_per_commit: 8,
            dimension: 384,
            search_threads: 2,
            stall: Duration::from_secs(120),
            seed: 17,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1000.0
        };
        Latency {
            count: samples.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// What a soak run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    /// Whether both `duration` and `min_chunks` were reached before `max_duration`.
    pub target_reached: bool,
    pub commits: u64,
    pub chunks_committed: u64,
    pub commits_per_sec: f64,
    pub chunks_per_sec: f64,
    pub commit_latency: Latency,
    /// Searches that ran while commits were going on (all of them, in a soak).
    pub search_latency: Latency,
    pub final_generation: u64,
    pub final_documents: usize,
    pub final_chunks: usize,
    /// Peak resident memory of the whole process (`VmHWM`), when the OS reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Everything under the index directory at the end.
    pub bytes_on_disk: u64,
    /// Commits that failed with [`IndexError::Stalled`] plus health checks (once a second)
    /// that found the index stalled. Must be 0.
    pub stalls: u64,
    /// Other failed commits or searches, with the first error's message.
    pub errors: u64,
    pub first_error: Option<String>,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the run started and ended, when available:
    /// other work on the machine skews every figure above.
    pub load_average_start: Option<String>,
    pub load_average_end: Option<String>,
    pub options: SoakOptionsReport,
}

/// The options of a run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct SoakOptionsReport {
    pub duration_secs: u64,
    pub min_chunks: u64,
    pub docs_per_commit: usize,
    pub chunks_per_doc: usize,
    pub replaced_per_commit: usize,
    pub dimension: usize,
    pub search_threads: usize,
}

/// splitmix64: a small deterministic generator for the synthetic corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A word from a 20,000-word vocabulary, frequent ones far more likely (roughly Zipf).
    fn word(&mut self) -> String {
        let r = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        format!("w{}", (20_000f64.powf(r)) as u64)
    }

    fn vector(&mut self, dim: usize) -> Vec<f32> {
        (0..dim)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            .collect()
    }
}

fn document(
    id: u64,
    version: u64,
    options: &SoakOptions,
    rng: &mut Rng,
) -> (DocumentRecord, Vec<ChunkInput>) {
    let doc_id = format!("soak:{id}");
    let record = DocumentRecord {
        id: doc_id.clone(),
        source: "soak".into(),
        external_id: id.to_string(),
        title: format!("soak document {id}"),
        url: None,
        updated_at: None,
        metadata: Default::default(),
        access_groups: Vec::new(),
        content_hash: format!("{id}-{version}"),
    };
    let chunks = (0..options.chunks_per_doc)
        .map(|o| {
            let words: Vec<String> = (0..60).map(|_| rng.word()).collect();
            let text = format!("doc{id} v{version} {}", words.join(" "));
            ChunkInput {
                chunk: ChunkRecord {
                    doc_id: doc_id.clone(),
                    ordinal: o as u32,
                    char_start: 0,
                    char_end: text.len(),
                    text,
                    heading_path: Vec::new(),
                    page: None,
                },
                vector: rng.vector(options.dimension),
            }
        })
        .collect();
    (record, chunks)
}

/// One writer: upserts `docs` and commits them as a generation.
fn commit(index: &Index, docs: Vec<(DocumentRecord, Vec<ChunkInput>)>) -> Result<u64> {
    let mut w = index.writer();
    for (doc, chunks) in docs {
        w.upsert(doc, chunks)?;
    }
    w.commit()
}

/// Peak resident memory of this process, from `/proc/self/status` (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The first three fields of `/proc/loadavg` (Linux).
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Bytes of every file under `dir`.
pub fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Runs the soak in `dir` (created if needed; use an empty directory).
pub fn run(dir: &Path, options: &SoakOptions) -> Result<SoakReport> {
    let mut index_options = IndexOptions::new(EmbedderInfo {
        name: "soak-hash".into(),
        version: "1".into(),
        dimension: options.dimension,
    });
    index_options.stall = options.stall;
    let index = Arc::new(Index::open(dir, index_options)?);
    let stop = Arc::new(AtomicBool::new(false));
    let searches_failed = Arc::new(AtomicU64::new(0));
    let first_search_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();

    let readers: Vec<_> = (0..options.search_threads)
        .map(|t| {
            let index = index.clone();
            let stop = stop.clone();
            let failed = searches_failed.clone();
            let first = first_search_error.clone();
            let dim = options.dimension;
            let mut rng = Rng(options.seed ^ (0x5eed + t as u64));
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let req = SearchRequest {
                        text: format!("{} {} {}", rng.word(), rng.word(), rng.word()),
                        vector: Some(rng.vector(dim)),
                        k: 10,
                        mode: SearchMode::Hybrid,
                        filter: Filter::default(),
                        snippets: false,
                    };
                    let started = Instant::now();
                    match index.search(&req) {
                        Ok(_) => samples.push(started.elapsed()),
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut first = first.lock().unwrap_or_else(|p| p.into_inner());
                            first.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                samples
            })
        })
        .collect();

    // Health, once a second.
    let health_stalls = Arc::new(AtomicU64::new(0));
    let watcher = {
        let index = index.clone();
        let stop = stop.clone();
        let stalls = health_stalls.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if index.health() != Health::Healthy {
                    stalls.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let mut rng = Rng(options.seed);
    let load_average_start = load_average();
    let started = Instant::now();
    let mut commit_samples = Vec::new();
    let mut commits = 0u64;
    let mut chunks = 0u64;
    let mut next_doc = 0u64;
    let mut stalled_commits = 0u64;
    let mut failed_commits = 0u64;
    let mut first_error: Option<String> = None;
    let mut last_log = Instant::now();
    let target_reached = loop {
        let elapsed = started.elapsed();
        if elapsed >= options.duration && chunks >= options.min_chunks {
            break true;
        }
        if elapsed >= options.max_duration {
            break false;
        }
        let mut docs = Vec::with_capacity(options.docs_per_commit);
        let replaced = options.replaced_per_commit.min(options.docs_per_commit);
        for i in 0..options.docs_per_commit {
            let id = if i < replaced && next_doc > 0 {
                rng.below(next_doc)
            } else {
                next_doc += 1;
                next_doc - 1
            };
            docs.push(document(id, commits, options, &mut rng));
        }
        let n_chunks: u64 = docs.iter().map(|(_, c)| c.len() as u64).sum();
        let t = Instant::now();
        let result = commit(&index, docs);
        match result {
            Ok(_) => {
                commit_samples.push(t.elapsed());
                commits += 1;
                chunks += n_chunks;
            }
            Err(e) => {
                if matches!(e, IndexError::Stalled { .. }) {
                    stalled_commits += 1;
                } else {
                    failed_commits += 1;
                }
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        if last_log.elapsed() >= Duration::from_secs(30) {
            last_log = Instant::now();
            tracing::info!(
                seconds = started.elapsed().as_secs(),
                commits,
                chunks,
                "soak progress"
            );
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut search_samples = Vec::new();
    for r in readers {
        search_samples.extend(r.join().unwrap_or_default());
    }
    let _ = watcher.join();
    let stats = index.stats();
    let search_errors = searches_failed.load(Ordering::Relaxed);
    if first_error.is_none() {
        first_error = first_search_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
    }
    Ok(SoakReport {
        seconds,
        target_reached,
        commits,
        chunks_committed: chunks,
        commits_per_sec: commits as f64 / seconds,
        chunks_per_sec: chunks as f64 / seconds,
        commit_latency: Latency::of(commit_samples),
        search_latency: Latency::of(search_samples),
        final_generation: stats.generation,
        final_documents: stats.documents,
        final_chunks: stats.chunks,
        peak_rss_bytes: peak_rss_bytes(),
        bytes_on_disk: bytes_under(dir),
        stalls: stalled_commits + health_stalls.load(Ordering::Relaxed),
        errors: failed_commits + search_errors,
        first_error,
        load_average_start,
        load_average_end: load_average(),
        options: SoakOptionsReport {
            duration_secs: options.duration.as_secs(),
            min_chunks: options.min_chunks,
            docs_per_commit: options.docs_per_commit,
            chunks_per_doc: options.chunks_per_doc,
            replaced_per_commit: options.replaced_per_commit,
            dimension: options.dimension,
            search_threads: options.search_threads,
        },
    })
}
