//! Commit throughput of the document store: the redb store against the format-1 sled store,
//! in one run, on the same ingest-sized batches (64 documents × 3 chunks, 384-d hash-like
//! vectors per commit), each commit durable when it returns (sled: `flush`; redb: an
//! `Immediate` transaction). The sled store writes as the index used to: chunk bodies and
//! vectors with `apply_batch`, then documents and the generation in a transaction.
//!
//! Two reader threads read random committed chunk bodies without pause meanwhile, as searches
//! do. Each store runs on its own thread, bounded by `STORE_BENCH_TIMEOUT_SECS` (default 600): a
//! store that does not finish in time is reported as hung (sled 0.34's bulk-write deadlock).
//!
//! Run: `cargo bench -p cairn-index --features sled-bench --bench store_commit`
//! (`STORE_BENCH_COMMITS`, default 300, sets the number of commits per store).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn_index::store_bench::{
    CommitBatch, DocChange, SledDocChange, SledStore, StagedChunks, Store, StoredDoc,
};
use cairn_index::{ChunkRecord, DocumentRecord};

const DOCS: usize = 64;
const CHUNKS: usize = 3;
const DIM: usize = 384;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Batch {
    docs: Vec<StoredDoc>,
    chunks: Vec<(u64, ChunkRecord, Vec<f32>)>,
}

fn hash_vector(seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..DIM)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Commit `c`'s documents and chunks, chunk ids from `first_id` on.
fn batch(c: u64, first_id: u64) -> Batch {
    let mut docs = Vec::with_capacity(DOCS);
    let mut chunks = Vec::with_capacity(DOCS * CHUNKS);
    let mut id = first_id;
    for d in 0..DOCS {
        let doc_id = format!("bench:{c}:{d}");
        let record = DocumentRecord {
            id: doc_id.clone(),
            source: "bench".into(),
            external_id: format!("{c}:{d}"),
            title: format!("document {d} of commit {c}"),
            url: None,
            updated_at: None,
            metadata: Default::default(),
            access_groups: Vec::new(),
            content_hash: format!("{c}-{d}"),
        };
        let mut ids = Vec::new();
        for o in 0..CHUNKS {
            let text = format!(
                "commit {c} document {d} chunk {o} {}",
                "some ordinary words of a paragraph ".repeat(12)
            );
            chunks.push((
                id,
                ChunkRecord {
                    doc_id: doc_id.clone(),
                    ordinal: o as u32,
                    char_start: 0,
                    char_end: text.len(),
                    text,
                    heading_path: Vec::new(),
                    page: None,
                },
                hash_vector(id),
            ));
            ids.push(id);
            id += 1;
        }
        docs.push(StoredDoc {
            record,
            chunk_ids: ids,
        });
    }
    Batch { docs, chunks }
}

/// Two threads reading random chunk bodies below `committed` until `stop`; returns the count.
fn readers(
    read: Arc<dyn Fn(u64) + Send + Sync>,
    committed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..2u64)
        .map(|t| {
            let (read, committed, stop) = (read.clone(), committed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut x = t + 1;
                while !stop.load(Ordering::Relaxed) {
                    let max = committed.load(Ordering::Acquire);
                    if max == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    read((x >> 33) % max);
                    n += 1;
                }
                n
            })
        })
        .collect()
}

fn finish(stop: &AtomicBool, readers: Vec<std::thread::JoinHandle<u64>>, name: &str, secs: f64) {
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap_or(0)).sum();
    println!(
        "{name}: {reads} chunk reads by 2 readers during the commits ({:.0}/s)",
        reads as f64 / secs
    );
}

fn commit_redb(dir: &Path, commits: u64) -> Vec<Duration> {
    let store = Arc::new(
        Store::open(&dir.join("store.redb"), 64 << 20, Duration::from_secs(600))
            .expect("open redb store"),
    );
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader_store = store.clone();
    let threads = readers(
        Arc::new(move |id| {
            let got = reader_store.chunks(&[id]).expect("redb read");
            assert!(got[0].is_some(), "chunk {id} missing");
        }),
        committed.clone(),
        stop.clone(),
    );
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut next_id = 0;
    for c in 0..commits {
        let b = batch(c, next_id);
        next_id += (DOCS * CHUNKS) as u64;
        let t = Instant::now();
        let mut staged = StagedChunks {
            chunks: HashMap::new(),
            vectors: Vec::new(),
        };
        for (id, chunk, v) in b.chunks {
            staged.chunks.insert(id, chunk);
            staged.vectors.push((id, v));
        }
        store
            .commit(CommitBatch {
                expected: c,
                generation: c + 1,
                changes: Arc::new(
                    b.docs
                        .into_iter()
                        .map(|d| DocChange::Put(Box::new(d)))
                        .collect(),
                ),
                staged: Arc::new(staged),
                next_chunk_id: next_id,
                manifest: None,
            })
            .expect("redb commit");
        lat.push(t.elapsed());
        committed.store(next_id, Ordering::Release);
    }
    finish(&stop, threads, "redb", started.elapsed().as_secs_f64());
    lat
}

fn commit_sled(dir: &Path, commits: u64) -> Vec<Duration> {
    let store = Arc::new(SledStore::open(&dir.join("store"), 64 << 20).expect("open sled store"));
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader_store = store.clone();
    let threads = readers(
        Arc::new(move |id| {
            let got = reader_store.chunk(id).expect("sled read");
            assert!(got.is_some(), "chunk {id} missing");
        }),
        committed.clone(),
        stop.clone(),
    );
    let started = Instant::now();
    let mut lat = Vec::new();
    for c in 0..commits {
        let b = batch(c, c * (DOCS * CHUNKS) as u64);
        let t = Instant::now();
        let first = store
            .reserve_chunk_ids((DOCS * CHUNKS) as u64)
            .expect("reserve");
        assert_eq!(first, c * (DOCS * CHUNKS) as u64);
        let items: Vec<(u64, &ChunkRecord, &[f32])> = b
            .chunks
            .iter()
            .map(|(id, chunk, v)| (*id, chunk, v.as_slice()))
            .collect();
        store.put_chunks(&items).expect("sled put_chunks");
        let changes: Vec<SledDocChange> = b
            .docs
            .into_iter()
            .map(|d| {
                SledDocChange::Put(Box::new(cairn_index::store_bench::SledStoredDoc {
                    record: d.record,
                    chunk_ids: d.chunk_ids,
                }))
            })
            .collect();
        store.commit(&changes, c + 1).expect("sled commit");
        lat.push(t.elapsed());
        committed.store((c + 1) * (DOCS * CHUNKS) as u64, Ordering::Release);
    }
    finish(&stop, threads, "sled", started.elapsed().as_secs_f64());
    lat
}

fn report(name: &str, commits: u64, lat: Option<(Vec<Duration>, Duration)>, timeout: Duration) {
    let Some((mut lat, total)) = lat else {
        println!(
            "{name}: HUNG — {commits} commits did not finish within {} s",
            timeout.as_secs()
        );
        return;
    };
    lat.sort_unstable();
    let pct = |q: f64| {
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    let secs = total.as_secs_f64();
    println!(
        "{name}: {commits} commits of {DOCS}x{CHUNKS} chunks in {secs:.1} s: {:.1} commits/s, \
         {:.0} chunks/s; commit p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        commits as f64 / secs,
        (commits as usize * DOCS * CHUNKS) as f64 / secs,
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
}

fn run(
    name: &'static str,
    commits: u64,
    timeout: Duration,
    f: fn(&Path, u64) -> Vec<Duration>,
) {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let path = dir.path().to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let lat = f(&path, commits);
        let _ = tx.send((lat, t.elapsed()));
    });
    let result = rx.recv_timeout(timeout).ok();
    let size = cairn_index::soak::bytes_under(dir.path());
    let hung = result.is_none();
    report(name, commits, result, timeout);
    println!("{name}: {:.1} MiB on disk", size as f64 / (1 << 20) as f64);
    if hung {
        // A hung store keeps its thread: leave its directory rather than pull it away.
        println!("{name}: left {} for inspection", dir.keep().display());
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let commits = env("STORE_BENCH_COMMITS", 300);
    let timeout = Duration::from_secs(env("STORE_BENCH_TIMEOUT_SECS", 600));
    run("redb", commits, timeout, commit_redb);
    run("sled", commits, timeout, commit_sled);
}
