//! The document store (redb): the authoritative copy of documents, chunks and vectors, the
//! committed generation number and the chunk-id counter. BM25 and HNSW are derived from it and
//! can always be rebuilt.
//!
//! Layout: one redb file, `store.redb`, with tables `docs` (doc id → [`StoredDoc`] JSON),
//! `chunks` (internal chunk id → [`ChunkRecord`] JSON), `vectors` (same key → little-endian
//! f32s) and `meta` (manifest, generation, next chunk id, and the list of persisted HNSW graphs
//! with their checksums).
//!
//! A generation is committed by [`Store::commit`] as ONE durable write transaction (documents,
//! chunks, vectors, generation, chunk-id counter and manifest together), so a crash leaves either
//! all of it or none of it. Reads use read transactions and never wait for the writer.
//!
//! Writes run on a store-owned writer thread; the caller waits at most `stall` without progress
//! and then gets [`IndexError::Stalled`] (see [`Store::health`]). When redb reports an I/O error
//! (a full disk, say) it refuses further writes until the database is reopened: the writer thread
//! reopens it at once, and again before the next write if that failed, so the next commit after
//! space is freed succeeds in the same process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::types::{ChunkRecord, DocumentRecord, EmbedderInfo};
use crate::vectors::PersistedSegment;
use crate::{IndexError, Result};

const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("chunks");
const VECTORS: TableDefinition<u64, &[u8]> = TableDefinition::new("vectors");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const MANIFEST: &str = "manifest";
const GENERATION: &str = "generation";
const NEXT_CHUNK: &str = "next_chunk_id";
const GRAPHS: &str = "graph_segments";

/// Bumped when the on-disk layout changes incompatibly. 1: sled (`store/` directory);
/// 2: redb (`store.redb`).
pub const FORMAT_VERSION: u32 = 2;
/// The store's file inside the index directory.
pub const STORE_FILE: &str = "store.redb";
/// The directory the format-1 (sled) store lived in, inside the index directory.
pub const SLED_STORE_DIR: &str = "store";

/// What the manifest records about an index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub embedder: EmbedderInfo,
}

/// A document with the internal ids of its live chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDoc {
    pub record: DocumentRecord,
    pub chunk_ids: Vec<u64>,
}

/// One staged change to the documents table.
#[derive(Debug, Clone)]
pub enum DocChange {
    Put(Box<StoredDoc>),
    Remove(String),
}

impl DocChange {
    pub fn doc_id(&self) -> &str {
        match self {
            DocChange::Put(d) => &d.record.id,
            DocChange::Remove(id) => id,
        }
    }
}

/// Chunk bodies and vectors written by a generation, held in memory until its commit (a
/// prepared generation searches them from here).
#[derive(Debug, Default)]
pub struct StagedChunks {
    pub chunks: HashMap<u64, ChunkRecord>,
    pub vectors: Vec<(u64, Vec<f32>)>,
}

/// Everything one generation commit writes, in one transaction.
pub struct CommitBatch {
    /// The generation the store must be at; anything else means a commit this process gave up
    /// on landed after all, and this one is refused rather than applied on top of it.
    pub expected: u64,
    pub generation: u64,
    pub changes: Arc<Vec<DocChange>>,
    pub staged: Arc<StagedChunks>,
    /// The chunk-id counter after this commit (kept if the stored one is higher).
    pub next_chunk_id: u64,
    pub manifest: Option<Manifest>,
}

/// Whether the store's writes are making progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// A write (`operation`) has made no progress since `since`.
    Stalled {
        operation: &'static str,
        #[serde(with = "unix_secs")]
        since: SystemTime,
    },
}

mod unix_secs {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }
}

/// Classifies a redb error: damaged or unreadable files become [`IndexError::Corrupt`] (with the
/// rebuild advice); anything else (permissions, a full disk, a lock) stays a storage error.
fn store_error(path: &Path, source: impl Into<redb::Error>) -> IndexError {
    let source: redb::Error = source.into();
    let damaged = match &source {
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => true,
        redb::Error::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    };
    if damaged {
        IndexError::Corrupt {
            path: path.to_path_buf(),
            reason: source.to_string(),
        }
    } else {
        IndexError::Store {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }
}

/// `store_error` at `path`, for `map_err` over any of redb's error types.
fn se<E: Into<redb::Error>>(path: &Path) -> impl Fn(E) -> IndexError + '_ {
    move |e| store_error(path, e)
}

/// Whether a failed write leaves redb refusing writes until the database is reopened.
fn needs_reopen(e: &IndexError) -> bool {
    matches!(e, IndexError::Store { .. } | IndexError::Corrupt { .. })
}

fn corrupt(path: &Path, reason: impl Into<String>) -> IndexError {
    IndexError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const ABANDONED: u8 = 2;

/// State shared by the store handle and its writer thread.
struct Shared {
    path: PathBuf,
    cache_bytes: usize,
    /// `None` after a reopen failed; the next write tries again.
    db: RwLock<Option<Arc<Database>>>,
    /// Start of the clock the progress stamps count from.
    epoch: Instant,
    /// Nanoseconds since `epoch` of the running write's last sign of progress.
    last_progress: AtomicU64,
    /// The running write, if any.
    busy: Mutex<Option<&'static str>>,
    /// Test hook: nanoseconds the next write sleeps just before committing.
    injected_stall: AtomicU64,
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn beat(&self) {
        self.last_progress.store(self.now(), Ordering::Release);
    }

    /// The running write and how long it has gone without progress.
    fn running(&self) -> Option<(&'static str, Duration)> {
        let op = (*lock(&self.busy))?;
        let idle = self
            .now()
            .saturating_sub(self.last_progress.load(Ordering::Acquire));
        Some((op, Duration::from_nanos(idle)))
    }

    fn open_db(&self, check_integrity: bool) -> Result<Database> {
        let mut builder = Database::builder();
        builder.set_cache_size(self.cache_bytes);
        // A file damaged outside redb is then a `Corrupt` error at open rather than a panic or
        // wrong data later; it costs one read of the file.
        builder.set_check_integrity_on_open(check_integrity);
        builder
            .create(&self.path)
            .map_err(|e| store_error(&self.path, e))
    }

    fn db(&self) -> Result<Arc<Database>> {
        if let Some(db) = &*read_lock(&self.db) {
            return Ok(db.clone());
        }
        // A reopen after an I/O error failed (the disk was still full, say): try again.
        let mut slot = write_lock(&self.db);
        if slot.is_none() {
            *slot = Some(Arc::new(self.open_db(false)?));
            tracing::info!(file = %self.path.display(), "reopened the store");
        }
        slot.clone().ok_or_else(|| IndexError::Store {
            path: self.path.clone(),
            source: "the store is closed".into(),
        })
    }

    /// Closes and reopens the database, which is how redb recovers from an I/O error (it refuses
    /// every write after one). Waits for reads in flight to let go of the old handle.
    fn reopen(&self) -> Result<()> {
        let mut slot = write_lock(&self.db);
        if let Some(old) = slot.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        if let Err(e) = db.close() {
                            tracing::warn!(error = %e, "closing the store after an I/O error");
                        }
                        break;
                    }
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(still) => {
                        *slot = Some(still);
                        return Err(IndexError::Store {
                            path: self.path.clone(),
                            source: "cannot reopen the store: a read still holds it".into(),
                        });
                    }
                }
            }
        }
        let db = self.open_db(false)?;
        tracing::info!(file = %self.path.display(), "reopened the store after an I/O error");
        *slot = Some(Arc::new(db));
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a write job sees on the writer thread.
struct WriteCtx<'a> {
    shared: &'a Shared,
    state: &'a AtomicU8,
}

impl WriteCtx<'_> {
    /// Records progress, so a long write that is moving is not taken for a stalled one.
    fn beat(&self) {
        self.shared.beat();
    }

    /// Commits `txn` unless the caller has given up waiting (then it is aborted, so a write
    /// the caller reported as failed does not land later). The test hook's stall sits after
    /// that check, where a real hang inside the commit would: such a commit may still land.
    fn commit(&self, txn: redb::WriteTransaction) -> Result<()> {
        if self.state.load(Ordering::Acquire) == ABANDONED {
            let _ = txn.abort();
            return Err(IndexError::Stalled {
                operation: "commit (abandoned before it started)",
                secs: 0,
            });
        }
        let nanos = self.shared.injected_stall.swap(0, Ordering::AcqRel);
        if nanos > 0 {
            tracing::warn!(ms = nanos / 1_000_000, "test hook: stalling a store write");
            std::thread::sleep(Duration::from_nanos(nanos));
        }
        txn.commit()
            .map_err(|e| store_error(&self.shared.path, e))?;
        self.beat();
        Ok(())
    }
}

type JobFn = Box<dyn FnOnce(&WriteCtx<'_>) + Send>;

struct Job {
    operation: &'static str,
    state: Arc<AtomicU8>,
    run: JobFn,
}

pub struct Store {
    shared: Arc<Shared>,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    stall: Duration,
}

impl Store {
    /// Opens (or creates) the store file `path` with a page cache of `cache_bytes`; a write
    /// without progress for `stall` fails with [`IndexError::Stalled`].
    pub fn open(path: &Path, cache_bytes: u64, stall: Duration) -> Result<Store> {
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            cache_bytes: usize::try_from(cache_bytes).unwrap_or(usize::MAX),
            db: RwLock::new(None),
            epoch: Instant::now(),
            last_progress: AtomicU64::new(0),
            busy: Mutex::new(None),
            injected_stall: AtomicU64::new(0),
        });
        let db = shared.open_db(true)?;
        // Every table exists from the first open on, so reads never meet a missing one.
        let txn = db.begin_write().map_err(|e| store_error(path, e))?;
        {
            txn.open_table(DOCS).map_err(se(path))?;
            txn.open_table(CHUNKS).map_err(se(path))?;
            txn.open_table(VECTORS).map_err(se(path))?;
            txn.open_table(META).map_err(se(path))?;
        }
        txn.commit().map_err(|e| store_error(path, e))?;
        *write_lock(&shared.db) = Some(Arc::new(db));

        let (tx, rx) = mpsc::channel::<Job>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cairn-store-writer".into())
            .spawn(move || writer_thread(&thread_shared, &rx))
            .map_err(|source| IndexError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store {
            shared,
            jobs: Some(tx),
            thread: Some(thread),
            stall,
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn err(&self, source: impl Into<redb::Error>) -> IndexError {
        store_error(&self.shared.path, source)
    }

    fn corrupt(&self, reason: impl Into<String>) -> IndexError {
        corrupt(&self.shared.path, reason)
    }

    /// Runs `f` on the writer thread and waits for it, at most `stall` without progress.
    fn write<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&WriteCtx<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let stalled = |op: &'static str, idle: Duration| IndexError::Stalled {
            operation: op,
            secs: idle.as_secs().max(self.stall.as_secs()),
        };
        // A write stuck behind a stalled one would only wait for it: fail now.
        if let Some((op, idle)) = self.shared.running()
            && idle >= self.stall
        {
            return Err(stalled(op, idle));
        }
        let state = Arc::new(AtomicU8::new(PENDING));
        let (tx, rx) = mpsc::sync_channel::<Result<T>>(1);
        let job = Job {
            operation,
            state: state.clone(),
            run: Box::new(move |ctx: &WriteCtx<'_>| {
                let _ = tx.send(f(ctx));
            }),
        };
        let Some(jobs) = &self.jobs else {
            return Err(IndexError::Store {
                path: self.shared.path.clone(),
                source: "the store's writer has stopped".into(),
            });
        };
        if jobs.send(job).is_err() {
            return Err(IndexError::Store {
                path: self.shared.path.clone(),
                source: "the store's writer thread has died".into(),
            });
        }
        let queued = Instant::now();
        let tick = (self.stall / 4).clamp(Duration::from_millis(1), Duration::from_millis(250));
        loop {
            match rx.recv_timeout(tick) {
                Ok(result) => return result,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(IndexError::Store {
                        path: self.shared.path.clone(),
                        source: format!("the store's writer thread died during {operation}").into(),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let (op, idle) = match (state.load(Ordering::Acquire), self.shared.running()) {
                (RUNNING, Some((op, idle))) => (op, idle),
                // Still queued behind another write: that one's progress is what counts,
                // and the wait since queueing when nothing runs.
                (_, Some((op, idle))) => (op, idle.min(queued.elapsed())),
                (_, None) => (operation, queued.elapsed()),
            };
            if idle >= self.stall {
                state.store(ABANDONED, Ordering::Release);
                // It may have finished just now.
                if let Ok(result) = rx.try_recv() {
                    return result;
                }
                tracing::error!(
                    operation = op,
                    secs = idle.as_secs(),
                    "a store write made no progress; giving up waiting for it"
                );
                return Err(stalled(op, idle));
            }
        }
    }

    /// Runs `f` in a read transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> std::result::Result<T, IndexError>,
    ) -> Result<T> {
        let db = self.shared.db()?;
        let txn = db.begin_read().map_err(|e| self.err(e))?;
        f(&txn)
    }

    /// The write running on the writer thread, if any, and how long it has gone without
    /// progress.
    pub fn running(&self) -> Option<(&'static str, Duration)> {
        self.shared.running()
    }

    /// Whether writes are making progress.
    pub fn health(&self) -> Health {
        match self.shared.running() {
            Some((operation, idle)) if idle >= self.stall => Health::Stalled {
                operation,
                since: SystemTime::now() - idle,
            },
            _ => Health::Healthy,
        }
    }

    /// Test hook: the next write sleeps `d` just before it commits.
    pub fn inject_write_stall(&self, d: Duration) {
        self.shared
            .injected_stall
            .store(d.as_nanos() as u64, Ordering::Release);
    }

    fn meta_get(&self, key: &'static str) -> Result<Option<Vec<u8>>> {
        self.read(|txn| {
            let t = txn.open_table(META).map_err(|e| self.err(e))?;
            Ok(t.get(key)
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_vec()))
        })
    }

    pub fn manifest(&self) -> Result<Option<Manifest>> {
        match self.meta_get(MANIFEST)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.corrupt(format!("manifest: {e}"))),
        }
    }

    fn put_meta(&self, operation: &'static str, key: &'static str, bytes: Vec<u8>) -> Result<()> {
        let path = self.shared.path.clone();
        self.write(operation, move |ctx| {
            with_reopen(ctx, |ctx| {
                let db = ctx.shared.db()?;
                let txn = begin(&db, &path, Durability::Immediate)?;
                {
                    let mut meta = txn.open_table(META).map_err(|e| store_error(&path, e))?;
                    meta.insert(key, bytes.as_slice())
                        .map_err(|e| store_error(&path, e))?;
                }
                ctx.commit(txn)
            })
        })
    }

    /// The persisted graph segments last recorded (empty when none). Only a cache: a missing
    /// or stale list makes open rebuild graphs, never lose data.
    pub fn graph_segments(&self) -> Result<Vec<PersistedSegment>> {
        match self.meta_get(GRAPHS)? {
            None => Ok(Vec::new()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| self.corrupt(format!("graph segment list: {e}"))),
        }
    }

    /// Records the persisted graph segments durably, so the files they name may be relied
    /// upon (and files they no longer name may be deleted) once this returns.
    pub fn set_graph_segments(&self, segments: &[PersistedSegment]) -> Result<()> {
        let bytes = serde_json::to_vec(segments).map_err(|e| self.corrupt(e.to_string()))?;
        self.put_meta("record the graph segments", GRAPHS, bytes)
    }

    fn read_u64(&self, key: &'static str) -> Result<u64> {
        match self.meta_get(key)? {
            None => Ok(0),
            Some(b) => decode_u64(&b).ok_or_else(|| self.corrupt("counter is not 8 bytes")),
        }
    }

    pub fn generation(&self) -> Result<u64> {
        self.read_u64(GENERATION)
    }

    /// The first chunk id no commit has used. Ids are never reused, so a reader of an older
    /// generation can never see a different chunk under an id it holds.
    pub fn next_chunk_id(&self) -> Result<u64> {
        self.read_u64(NEXT_CHUNK)
    }

    pub fn doc(&self, id: &str) -> Result<Option<StoredDoc>> {
        self.read(|txn| {
            let t = txn.open_table(DOCS).map_err(|e| self.err(e))?;
            match t.get(id).map_err(|e| self.err(e))? {
                None => Ok(None),
                Some(b) => serde_json::from_slice(b.value())
                    .map(Some)
                    .map_err(|e| self.corrupt(format!("document {id}: {e}"))),
            }
        })
    }

    /// Every stored document, read in one transaction.
    pub fn docs(&self) -> Result<Vec<StoredDoc>> {
        self.read(|txn| {
            let t = txn.open_table(DOCS).map_err(|e| self.err(e))?;
            let mut out = Vec::with_capacity(t.len().unwrap_or(0) as usize);
            for item in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                out.push(
                    serde_json::from_slice(v.value())
                        .map_err(|e| self.corrupt(format!("document {}: {e}", k.value())))?,
                );
            }
            Ok(out)
        })
    }

    pub fn doc_count(&self) -> usize {
        self.read(|txn| {
            let t = txn.open_table(DOCS).map_err(|e| self.err(e))?;
            t.len().map_err(|e| self.err(e))
        })
        .unwrap_or(0) as usize
    }

    pub fn chunk(&self, id: u64) -> Result<Option<ChunkRecord>> {
        Ok(self.chunks(&[id])?.pop().flatten())
    }

    /// Chunk bodies by id, in the order asked, read in one transaction.
    pub fn chunks(&self, ids: &[u64]) -> Result<Vec<Option<ChunkRecord>>> {
        self.read(|txn| {
            let t = txn.open_table(CHUNKS).map_err(|e| self.err(e))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(match t.get(id).map_err(|e| self.err(e))? {
                    None => None,
                    Some(b) => Some(
                        serde_json::from_slice(b.value())
                            .map_err(|e| self.corrupt(format!("chunk {id}: {e}")))?,
                    ),
                });
            }
            Ok(out)
        })
    }

    /// Vectors by id, in the order asked, read in one transaction.
    pub fn vectors(&self, ids: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
        self.read(|txn| {
            let t = txn.open_table(VECTORS).map_err(|e| self.err(e))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(match t.get(id).map_err(|e| self.err(e))? {
                    None => None,
                    Some(b) => {
                        let b = b.value();
                        if b.len() % 4 != 0 {
                            return Err(self.corrupt(format!("vector {id} has {} bytes", b.len())));
                        }
                        Some(
                            b.chunks_exact(4)
                                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .collect(),
                        )
                    }
                });
            }
            Ok(out)
        })
    }

    /// The commit point of a generation: document changes, chunk bodies, vectors, the
    /// generation number, the chunk-id counter and the manifest (if given) in one durable
    /// transaction. Refused when the store is not at `batch.expected`.
    ///
    /// When redb fails part-way (a full disk), it may still have made the transaction durable;
    /// the store is then reopened and the outcome read back, so `Ok` means committed and an
    /// error means not committed, except for [`IndexError::Stalled`], after which the outcome is
    /// unknown until the stalled write ends.
    pub fn commit(&self, batch: CommitBatch) -> Result<()> {
        let path = self.shared.path.clone();
        self.write("commit a generation", move |ctx| {
            let target = batch.generation;
            match commit_txn(ctx, &path, &batch) {
                Ok(()) => Ok(()),
                Err(CommitFailure::Refused(e)) => Err(e),
                Err(CommitFailure::Failed(e)) if !needs_reopen(&e) => Err(e),
                Err(CommitFailure::Failed(e)) => {
                    tracing::warn!(error = %e, "a store commit failed; reopening the store");
                    if let Err(reopen) = ctx.shared.reopen() {
                        tracing::error!(error = %reopen, "could not reopen the store");
                        return Err(e);
                    }
                    // redb says a failed commit may still have become durable: look.
                    match read_generation(ctx.shared, &path) {
                        Ok(g) if g == target => {
                            tracing::warn!(
                                generation = g,
                                "the commit landed despite the error; keeping it"
                            );
                            Ok(())
                        }
                        _ => Err(e),
                    }
                }
            }
        })
    }

    /// Removes chunk bodies and vectors no document references any more. Not made durable on
    /// its own (no fsync): a crash can only leave unreferenced bodies, which the next open
    /// sweeps, and the next generation commit makes the removal durable anyway.
    pub fn remove_chunks(&self, ids: &[u64]) -> Result<()> {
        let path = self.shared.path.clone();
        let ids = ids.to_vec();
        self.write("remove retired chunks", move |ctx| {
            with_reopen(ctx, |ctx| {
                let db = ctx.shared.db()?;
                let txn = begin(&db, &path, Durability::None)?;
                {
                    let mut chunks = txn.open_table(CHUNKS).map_err(se(&path))?;
                    let mut vectors = txn.open_table(VECTORS).map_err(se(&path))?;
                    for (i, id) in ids.iter().enumerate() {
                        chunks.remove(id).map_err(se(&path))?;
                        vectors.remove(id).map_err(se(&path))?;
                        if i.is_multiple_of(1024) {
                            ctx.beat();
                        }
                    }
                }
                ctx.commit(txn)
            })
        })
    }

    /// Internal ids of every stored chunk body, referenced or not.
    pub fn stored_chunk_ids(&self) -> Result<Vec<u64>> {
        self.read(|txn| {
            let t = txn.open_table(CHUNKS).map_err(|e| self.err(e))?;
            let mut out = Vec::with_capacity(t.len().unwrap_or(0) as usize);
            for item in t.iter().map_err(|e| self.err(e))? {
                let (k, _) = item.map_err(|e| self.err(e))?;
                out.push(k.value());
            }
            Ok(out)
        })
    }

    pub fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.shared.path).map_or(0, |m| m.len())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            match self.shared.running() {
                // A stuck write would hold the drop forever; its thread ends on its own.
                Some((op, idle)) if idle >= self.stall => {
                    tracing::warn!(
                        operation = op,
                        "dropping the store while a write is stalled; not waiting for it"
                    );
                }
                _ => {
                    let _ = t.join();
                }
            }
        }
    }
}

fn writer_thread(shared: &Shared, jobs: &mpsc::Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        if job
            .state
            .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // The caller gave up before it started.
            continue;
        }
        shared.beat();
        *lock(&shared.busy) = Some(job.operation);
        let ctx = WriteCtx {
            shared,
            state: &job.state,
        };
        if let Err(panic) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)(&ctx)))
        {
            tracing::error!(operation = job.operation, ?panic, "a store write panicked");
        }
        *lock(&shared.busy) = None;
    }
}

/// Runs a write (`Shared::db` reopens the database first when a previous failure left it
/// closed), and reopens it after an error that leaves redb refusing writes.
fn with_reopen<T>(ctx: &WriteCtx<'_>, f: impl FnOnce(&WriteCtx<'_>) -> Result<T>) -> Result<T> {
    let result = f(ctx);
    if let Err(e) = &result
        && needs_reopen(e)
        && let Err(reopen) = ctx.shared.reopen()
    {
        tracing::error!(error = %reopen, "could not reopen the store after a failed write");
    }
    result
}

/// A write transaction, `Immediate` (durable when its commit returns: one fsync) unless
/// `durability` says otherwise.
fn begin(db: &Database, path: &Path, durability: Durability) -> Result<redb::WriteTransaction> {
    let mut txn = db.begin_write().map_err(|e| store_error(path, e))?;
    txn.set_durability(durability)
        .map_err(|e| store_error(path, e))?;
    Ok(txn)
}

fn decode_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

fn read_generation(shared: &Shared, path: &Path) -> Result<u64> {
    let db = shared.db()?;
    let txn = db.begin_read().map_err(|e| store_error(path, e))?;
    let meta = txn.open_table(META).map_err(|e| store_error(path, e))?;
    match meta.get(GENERATION).map_err(|e| store_error(path, e))? {
        None => Ok(0),
        Some(b) => decode_u64(b.value()).ok_or_else(|| corrupt(path, "counter is not 8 bytes")),
    }
}

/// Why a commit did not happen.
enum CommitFailure {
    /// Refused before writing anything: the store is not at the expected generation.
    Refused(IndexError),
    /// redb failed; the transaction may or may not have become durable.
    Failed(IndexError),
}

impl From<IndexError> for CommitFailure {
    fn from(e: IndexError) -> CommitFailure {
        CommitFailure::Failed(e)
    }
}

fn commit_txn(
    ctx: &WriteCtx<'_>,
    path: &Path,
    batch: &CommitBatch,
) -> std::result::Result<(), CommitFailure> {
    let db = ctx.shared.db()?;
    let txn = begin(&db, path, Durability::Immediate)?;
    {
        let mut meta = txn.open_table(META).map_err(se(path))?;
        let stored = match meta.get(GENERATION).map_err(se(path))? {
            None => 0,
            Some(b) => decode_u64(b.value()).ok_or_else(|| corrupt(path, "bad generation"))?,
        };
        if stored != batch.expected {
            return Err(CommitFailure::Refused(IndexError::Store {
                path: path.to_path_buf(),
                source: format!(
                    "the store is at generation {stored}, this commit expected {}: an earlier \
                     commit that timed out has landed; the index reloads from the store",
                    batch.expected
                )
                .into(),
            }));
        }
        let next_chunk = match meta.get(NEXT_CHUNK).map_err(se(path))? {
            None => 0,
            Some(b) => decode_u64(b.value()).ok_or_else(|| corrupt(path, "bad chunk counter"))?,
        };
        meta.insert(GENERATION, batch.generation.to_be_bytes().as_slice())
            .map_err(se(path))?;
        meta.insert(
            NEXT_CHUNK,
            next_chunk.max(batch.next_chunk_id).to_be_bytes().as_slice(),
        )
        .map_err(se(path))?;
        if let Some(m) = &batch.manifest {
            let bytes = serde_json::to_vec(m).map_err(|e| corrupt(path, e.to_string()))?;
            meta.insert(MANIFEST, bytes.as_slice()).map_err(se(path))?;
        }
    }
    {
        // Ascending keys: appends to the B-tree's right edge.
        let mut ids: Vec<&u64> = batch.staged.chunks.keys().collect();
        ids.sort_unstable();
        let mut chunks = txn.open_table(CHUNKS).map_err(se(path))?;
        for (i, id) in ids.into_iter().enumerate() {
            let body = serde_json::to_vec(&batch.staged.chunks[id])
                .map_err(|e| corrupt(path, e.to_string()))?;
            chunks.insert(id, body.as_slice()).map_err(se(path))?;
            if i.is_multiple_of(256) {
                ctx.beat();
            }
        }
        let mut vectors = txn.open_table(VECTORS).map_err(se(path))?;
        let mut bytes = Vec::new();
        for (i, (id, v)) in batch.staged.vectors.iter().enumerate() {
            bytes.clear();
            bytes.extend(v.iter().flat_map(|f| f.to_le_bytes()));
            vectors.insert(id, bytes.as_slice()).map_err(se(path))?;
            if i.is_multiple_of(256) {
                ctx.beat();
            }
        }
        let mut docs = txn.open_table(DOCS).map_err(se(path))?;
        for change in batch.changes.iter() {
            match change {
                DocChange::Put(d) => {
                    let body = serde_json::to_vec(d).map_err(|e| corrupt(path, e.to_string()))?;
                    docs.insert(d.record.id.as_str(), body.as_slice())
                        .map_err(se(path))?;
                }
                DocChange::Remove(id) => {
                    docs.remove(id.as_str()).map_err(se(path))?;
                }
            }
        }
    }
    ctx.beat();
    Ok(ctx.commit(txn)?)
}
