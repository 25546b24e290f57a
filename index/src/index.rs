//! The index: generations, the single writer, and hybrid search over the current generation.
//!
//! Commit protocol (the store is the source of truth; BM25 and vectors are derived):
//! 1. new chunks get fresh ids (never reused) and are held in memory with their vectors, as the
//!    prepared generation's overlay, which its searches read bodies from;
//! 2. BM25 changes are committed with payload `generation + 1`;
//! 3. the store commits documents, chunk bodies, vectors, `generation + 1` and the chunk-id
//!    counter in ONE write transaction (refused unless the store is still at `generation`),
//!    then the `committed-generation` marker file is updated (it detects a store that lost
//!    commits, e.g. a file restored from an older copy);
//! 4. a new in-memory [`Generation`] is published with one atomic pointer swap;
//! 5. graph segments not yet on disk are dumped and listed (with sha256s) in the store;
//! 6. chunk bodies the commit replaced are deleted once no reader holds an older generation.
//!
//! A crash before 3 leaves the store at the old generation with nothing of the new one: on
//! open, BM25 is rebuilt from the store when its payload disagrees. Persisted graphs are loaded
//! at open when their checksums match and rebuilt from stored vectors otherwise; live vectors no
//! persisted graph covers go into a fresh segment. A commit that fails or stalls marks the index
//! for reconciliation: before the next commit it compares the store with the serving generation
//! and, if a given-up commit landed after all, reloads the generation from the store.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;

use crate::bm25::Bm25;
use crate::fusion::{Fusion, fuse, single};
use crate::input::validate_upsert;
use crate::live::LiveSet;
pub use crate::store::Health;
use crate::store::{
    CommitBatch, DocChange, FORMAT_VERSION, Manifest, SLED_STORE_DIR, STORE_FILE, StagedChunks,
    Store, StoredDoc,
};
use crate::types::{
    ChunkInput, ChunkRecord, DocumentRecord, EmbedderInfo, Filter, Hit, ScoreBreakdown, SearchMode,
    SearchRequest,
};
use crate::vectors::{
    Best, PersistedSegment, Segment, Sq8Query, VectorOptions, dot, rescore_count, top_k, validate,
};
use crate::{IndexError, Result};

/// How to open an index.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    pub embedder: EmbedderInfo,
    pub vectors: VectorOptions,
    pub fusion: Fusion,
    /// Candidates taken from each retriever before fusion.
    pub candidates: usize,
    /// Bytes of the store's (redb's) page cache. Searches read only the bodies of the hits
    /// they return (the documents and vectors live in memory), so a small cache costs little;
    /// redb's own default (1 GiB) would keep most of what opening read resident.
    pub store_cache_bytes: u64,
    /// How long a store write may go without progress before its caller gets
    /// [`IndexError::Stalled`] and [`Index::health`] reports it (default 120 s).
    pub stall: Duration,
    /// For a full rebuild only: when the directory holds an index in an old on-disk format,
    /// move it aside (see [`Index::set_aside_old_format`]) and start an empty index instead of
    /// failing with [`IndexError::OldFormat`]. Default `false`.
    pub replace_old_format: bool,
}

impl IndexOptions {
    pub fn new(embedder: EmbedderInfo) -> IndexOptions {
        IndexOptions {
            embedder,
            vectors: VectorOptions::default(),
            fusion: Fusion::default(),
            candidates: 100,
            store_cache_bytes: 64 * 1024 * 1024,
            stall: Duration::from_secs(120),
            replace_old_format: false,
        }
    }
}

/// Counts for status pages and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStats {
    pub generation: u64,
    pub documents: usize,
    pub chunks: usize,
    pub vector_segments: usize,
    pub tombstones: usize,
    pub bytes_on_disk: u64,
    pub vector_memory_bytes: usize,
    pub embedder: EmbedderInfo,
}

/// One committed, immutable state of the index. Readers hold an `Arc` to it for the length of
/// a search; a commit publishes a new one and never mutates an old one.
struct Generation {
    number: u64,
    searcher: tantivy::Searcher,
    /// Live chunks, where their vectors sit, and id lists for filters.
    live: LiveSet,
    segments: Vec<Arc<Segment>>,
    /// Chunk bodies of a prepared generation, not in the store until it is published (then
    /// cleared: the store has them).
    overlay: ArcSwapOption<StagedChunks>,
}

impl Generation {
    fn new(
        number: u64,
        searcher: tantivy::Searcher,
        live: HashMap<u64, Arc<DocumentRecord>>,
        segments: Vec<Arc<Segment>>,
    ) -> Generation {
        Generation {
            number,
            searcher,
            live: LiveSet::new(live, &segments),
            segments,
            overlay: ArcSwapOption::empty(),
        }
    }
}

/// The hybrid index. Cheap to share behind an `Arc`; searches never block on the writer.
pub struct Index {
    dir: PathBuf,
    options: IndexOptions,
    store: Store,
    bm25: Bm25,
    current: ArcSwap<Generation>,
    writer_lock: Mutex<()>,
    /// Chunk bodies a commit made unreachable, with the generation that could still read them,
    /// oldest first. They are deleted from the store once no reader holds that generation or
    /// any older one, so a search never loses a hit of the generation it started on.
    retired: Mutex<Vec<(Weak<Generation>, Vec<u64>)>>,
    /// Graph segments loaded from disk at open (rather than rebuilt).
    graphs_loaded: usize,
    /// The next fresh chunk id (ids of discarded or failed generations are not reused either).
    next_chunk: AtomicU64,
    /// A commit failed or stalled: compare the store with the serving generation before the
    /// next one.
    needs_reconcile: AtomicBool,
    /// The store has no manifest yet: the first commit writes it.
    manifest_pending: AtomicBool,
}

impl Index {
    /// Opens (or creates) the index in `dir`, checking the embedder recorded in its manifest and
    /// repairing derived structures after a crash.
    ///
    /// A damaged store is reported as [`IndexError::Corrupt`] naming the file; a damaged BM25
    /// index is derived data, so it is discarded and rebuilt from the store instead. Panics
    /// raised by the storage libraries on malformed files are turned into `Corrupt` as well.
    /// A directory written in an older on-disk format (format 1, sled) is
    /// [`IndexError::OldFormat`], unless [`IndexOptions::replace_old_format`] is set for a full
    /// rebuild. Opening starts the store's writer thread and verifies the store file's page
    /// checksums (one read of the file).
    pub fn open(dir: &Path, options: IndexOptions) -> Result<Index> {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Index::open_inner(dir, options)
        }));
        match opened {
            Ok(result) => result,
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                Err(IndexError::Corrupt {
                    path: dir.to_path_buf(),
                    reason: format!("reading the index failed: {reason}"),
                })
            }
        }
    }

    fn open_inner(dir: &Path, options: IndexOptions) -> Result<Index> {
        std::fs::create_dir_all(dir).map_err(|source| IndexError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if dir.join(SLED_STORE_DIR).is_dir() {
            if !options.replace_old_format {
                return Err(IndexError::OldFormat {
                    path: dir.to_path_buf(),
                    found: "format 1, a sled store".into(),
                    expected: FORMAT_VERSION,
                });
            }
            Index::set_aside_old_format(dir)?;
            std::fs::create_dir_all(dir).map_err(|source| IndexError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let store_path = dir.join(STORE_FILE);
        let store = Store::open(&store_path, options.store_cache_bytes, options.stall)?;
        let manifest = store.manifest()?;
        match &manifest {
            Some(m) if m.format_version < FORMAT_VERSION => {
                return Err(IndexError::OldFormat {
                    path: dir.to_path_buf(),
                    found: format!("format {}", m.format_version),
                    expected: FORMAT_VERSION,
                });
            }
            Some(m) if m.format_version > FORMAT_VERSION => {
                return Err(IndexError::Corrupt {
                    path: store_path,
                    reason: format!(
                        "on-disk format {} (written by a newer cairn) but this cairn reads \
                         format {FORMAT_VERSION}",
                        m.format_version
                    ),
                });
            }
            Some(m) if m.embedder != options.embedder => {
                return Err(IndexError::EmbedderMismatch {
                    path: dir.to_path_buf(),
                    found: m.embedder.to_string(),
                    expected: options.embedder.to_string(),
                });
            }
            _ => {}
        }
        check_committed_marker(dir, store.generation()?)?;
        let bm25_dir = dir.join("bm25");
        let bm25 = match Bm25::open(&bm25_dir) {
            Ok(b) => b,
            Err(IndexError::Corrupt { path, reason }) => {
                tracing::warn!(
                    file = %path.display(),
                    %reason,
                    "BM25 index is damaged; rebuilding it from the store"
                );
                std::fs::remove_dir_all(&bm25_dir).map_err(|source| IndexError::Io {
                    path: bm25_dir.clone(),
                    source,
                })?;
                Bm25::open(&bm25_dir)?
            }
            Err(e) => return Err(e),
        };
        let loaded = load_generation(dir, &store, &bm25, &options, true)?;
        let index = Index {
            dir: dir.to_path_buf(),
            options,
            store,
            bm25,
            current: ArcSwap::from_pointee(loaded.generation),
            writer_lock: Mutex::new(()),
            retired: Mutex::new(Vec::new()),
            graphs_loaded: loaded.graphs_loaded,
            next_chunk: AtomicU64::new(loaded.next_chunk_id),
            needs_reconcile: AtomicBool::new(false),
            manifest_pending: AtomicBool::new(manifest.is_none()),
        };
        index.persist_graphs(&index.current.load());
        Ok(index)
    }

    /// For a full rebuild of an index in an old on-disk format: moves the whole directory `dir`
    /// aside to `<dir>.old-format` (replacing an earlier one there, so at most one old copy is
    /// kept for undoing by hand) and returns where it went; `Ok(None)` when `dir` holds no
    /// old-format index. Never deletes the current format. Call it only while no process has
    /// the index open; [`IndexOptions::replace_old_format`] makes [`Index::open`] do it.
    pub fn set_aside_old_format(dir: &Path) -> Result<Option<PathBuf>> {
        if !dir.join(SLED_STORE_DIR).is_dir() {
            return Ok(None);
        }
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(".old-format");
        let aside = dir.with_file_name(name);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IndexError::Io { path, source }
        };
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(io(&aside))?;
        }
        std::fs::rename(dir, &aside).map_err(io(dir))?;
        tracing::warn!(
            old = %aside.display(),
            new = %dir.display(),
            "the index was in an old on-disk format (sled); moved it aside to rebuild from the sources"
        );
        Ok(Some(aside))
    }

    /// Whether the index's writes are making progress: [`Health::Stalled`] while a store write
    /// has gone without progress for [`IndexOptions::stall`] (a readiness probe should then
    /// answer 503), healthy again once it ends.
    pub fn health(&self) -> Health {
        self.store.health()
    }

    /// Test hook: the next store write sleeps `d` just before it commits (where a hanging disk
    /// would hold it), so stall handling can be tested end to end. Not for production use.
    #[doc(hidden)]
    pub fn inject_write_stall(&self, d: Duration) {
        self.store.inject_write_stall(d);
    }

    /// Before a commit, after one failed or stalled: when the store no longer matches the
    /// serving generation (a given-up commit landed after all), reload the generation from the
    /// store. Fails with `Stalled` while the given-up write is still running.
    fn reconcile(&self) -> Result<()> {
        if !self.needs_reconcile.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some((operation, idle)) = self.store.running() {
            return Err(IndexError::Stalled {
                operation,
                secs: idle.as_secs(),
            });
        }
        let stored = self.store.generation()?;
        let old = self.current.load_full();
        if stored != old.number || self.bm25.committed_generation()? != stored {
            tracing::warn!(
                serving = old.number,
                store = stored,
                "the store and the serving generation disagree after a failed commit; \
                 reloading from the store"
            );
            let loaded = load_generation(&self.dir, &self.store, &self.bm25, &self.options, false)?;
            self.next_chunk
                .fetch_max(loaded.next_chunk_id, Ordering::AcqRel);
            let fresh = Arc::new(loaded.generation);
            // Bodies the old generation read and the store no longer references.
            let gone: Vec<u64> = old
                .live
                .docs()
                .map(|(id, _)| id)
                .filter(|id| !fresh.live.contains(*id))
                .collect();
            self.current.store(fresh);
            self.retire(Arc::downgrade(&old), gone)?;
            if self.store.manifest()?.is_some() {
                self.manifest_pending.store(false, Ordering::Release);
            }
        }
        self.needs_reconcile.store(false, Ordering::Release);
        Ok(())
    }

    /// Graph segments loaded from disk by [`Index::open`] instead of being rebuilt.
    pub fn graphs_loaded(&self) -> usize {
        self.graphs_loaded
    }

    /// Dumps graph segments of `g` not yet on disk, records the list in the store, then deletes
    /// graph files the list no longer names. Failures only cost a rebuild at the next open, so
    /// they are logged rather than returned.
    fn persist_graphs(&self, g: &Generation) {
        let dir = self.dir.join("graphs");
        let result = (|| -> std::result::Result<(), String> {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let mut saved = Vec::new();
            for seg in &g.segments {
                if let Some(p) = seg.persist(&dir, g.number)? {
                    saved.push(p);
                }
            }
            if saved == self.store.graph_segments().map_err(|e| e.to_string())? {
                return Ok(());
            }
            self.store
                .set_graph_segments(&saved)
                .map_err(|e| e.to_string())?;
            let keep: HashSet<String> = saved.iter().flat_map(|p| p.file_names()).collect();
            for entry in std::fs::read_dir(&dir)
                .map_err(|e| e.to_string())?
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            Ok(())
        })();
        if let Err(reason) = result {
            tracing::warn!(%reason, "could not persist HNSW graphs; they will be rebuilt on open");
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &IndexOptions {
        &self.options
    }

    /// The single writer. Blocks while another writer is open; readers are never blocked.
    pub fn writer(&self) -> Writer<'_> {
        let guard = match self.writer_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        Writer {
            index: self,
            _guard: guard,
            upserts: Vec::new(),
            deletes: Vec::new(),
        }
    }

    /// The stored document, if indexed.
    pub fn document(&self, doc_id: &str) -> Result<Option<DocumentRecord>> {
        Ok(self.store.doc(doc_id)?.map(|d| d.record))
    }

    /// Content hash of an indexed document (for incremental ingest).
    pub fn content_hash(&self, doc_id: &str) -> Result<Option<String>> {
        Ok(self.store.doc(doc_id)?.map(|d| d.record.content_hash))
    }

    /// Ids of the indexed documents of `source`.
    pub fn document_ids(&self, source: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for d in self.store.docs()? {
            if d.record.source == source {
                out.push(d.record.id);
            }
        }
        Ok(out)
    }

    /// Chunks of a document in order.
    pub fn chunks_of(&self, doc_id: &str) -> Result<Vec<ChunkRecord>> {
        let Some(doc) = self.store.doc(doc_id)? else {
            return Ok(Vec::new());
        };
        let mut out: Vec<ChunkRecord> = self
            .store
            .chunks(&doc.chunk_ids)?
            .into_iter()
            .flatten()
            .collect();
        out.sort_by_key(|c| c.ordinal);
        Ok(out)
    }

    /// The stored vectors of a document's chunks, in chunk order (for tests and verification
    /// tools: searches use the in-memory copies).
    #[doc(hidden)]
    pub fn vectors_of(&self, doc_id: &str) -> Result<Vec<Vec<f32>>> {
        let Some(doc) = self.store.doc(doc_id)? else {
            return Ok(Vec::new());
        };
        let chunks = self.store.chunks(&doc.chunk_ids)?;
        let vectors = self.store.vectors(&doc.chunk_ids)?;
        let mut rows: Vec<(u32, Vec<f32>)> = chunks
            .into_iter()
            .zip(vectors)
            .filter_map(|(c, v)| Some((c?.ordinal, v?)))
            .collect();
        rows.sort_by_key(|(ordinal, _)| *ordinal);
        Ok(rows.into_iter().map(|(_, v)| v).collect())
    }

    pub fn stats(&self) -> IndexStats {
        let g = self.current.load();
        let total: usize = g.segments.iter().map(|s| s.len()).sum();
        IndexStats {
            generation: g.number,
            documents: self.store.doc_count(),
            chunks: g.live.len(),
            vector_segments: g.segments.len(),
            tombstones: total.saturating_sub(g.live.len()),
            bytes_on_disk: self.store.size_on_disk() + self.bm25.size_on_disk(),
            vector_memory_bytes: g.segments.iter().map(|s| s.memory_bytes()).sum(),
            embedder: self.options.embedder.clone(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.current.load().number
    }

    /// Hybrid (or single-retriever) search with filters applied inside each retriever.
    pub fn search(&self, req: &SearchRequest) -> Result<Vec<Hit>> {
        self.search_in(&self.current.load_full(), req)
    }

    /// [`Index::search`] over one given generation (the published one, or a prepared one).
    fn search_in(&self, g: &Generation, req: &SearchRequest) -> Result<Vec<Hit>> {
        let candidates = self.options.candidates.max(req.k);
        let want_bm25 = matches!(req.mode, SearchMode::Bm25 | SearchMode::Hybrid);
        let want_vec = matches!(req.mode, SearchMode::Dense | SearchMode::Hybrid);

        let bm25_hits = if want_bm25 {
            self.bm25
                .search(
                    &g.searcher,
                    &req.text,
                    candidates,
                    &req.filter,
                    !g.live.all_public(),
                )?
                .into_iter()
                .filter(|(id, _)| g.live.contains(*id))
                .collect()
        } else {
            Vec::new()
        };
        let vec_hits = match (&req.vector, want_vec) {
            (Some(v), true) => self.vector_search(g, v, candidates, &req.filter)?,
            (None, true) if req.mode == SearchMode::Dense => {
                return Err(IndexError::InvalidDocument(
                    "dense search needs a query vector".into(),
                ));
            }
            _ => Vec::new(),
        };
        let fused: Vec<(u64, ScoreBreakdown)> = match req.mode {
            SearchMode::Hybrid => fuse(&bm25_hits, &vec_hits, &self.options.fusion),
            SearchMode::Bm25 => single(&bm25_hits, true),
            SearchMode::Dense => single(&vec_hits, false),
        };
        let fused: Vec<(u64, ScoreBreakdown)> = fused.into_iter().take(req.k).collect();
        let bodies = self.bodies(g, &fused.iter().map(|(id, _)| *id).collect::<Vec<_>>())?;
        let mut hits = Vec::with_capacity(req.k);
        for ((id, breakdown), body) in fused.into_iter().zip(bodies) {
            // Bodies of a generation are kept until its last reader releases it (see
            // `retire`), so a live id always has its body; skip defensively all the same.
            let (Some(chunk), Some(live)) = (body, g.live.get(id)) else {
                tracing::warn!(chunk = id, "live chunk without a stored body");
                continue;
            };
            let snippet = if req.snippets {
                Some(self.bm25.snippet(&g.searcher, &req.text, &chunk.text)?)
            } else {
                None
            };
            hits.push(Hit {
                chunk_id: chunk.chunk_id(),
                score: breakdown.fused,
                breakdown,
                chunk,
                document: (*live.doc).clone(),
                snippet,
            });
        }
        Ok(hits)
    }

    /// Chunk bodies of `g` by id: a prepared generation's new ones from its overlay, the rest
    /// from the store (one read transaction).
    fn bodies(&self, g: &Generation, ids: &[u64]) -> Result<Vec<Option<ChunkRecord>>> {
        let overlay = g.overlay.load_full();
        let Some(overlay) = overlay.as_deref() else {
            return self.store.chunks(ids);
        };
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !overlay.chunks.contains_key(id))
            .collect();
        let mut stored = self.store.chunks(&missing)?.into_iter();
        Ok(ids
            .iter()
            .map(|id| match overlay.chunks.get(id) {
                Some(c) => Some(c.clone()),
                None => stored.next().flatten(),
            })
            .collect())
    }

    /// Dense top-`k` among the chunks `filter` allows. When the filter keeps fewer than
    /// `exact_filter_fraction` of the live chunks, their rows are marked in one bitmap per
    /// segment and scanned exactly: int8 scores over each segment's contiguous rows, then the
    /// best few re-scored with the f32 rows (a filtered graph walk visits many rejected nodes
    /// to find them). Otherwise each segment's graph is walked, with the filter inside the walk.
    fn vector_search(
        &self,
        g: &Generation,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(u64, f32)>> {
        let q = validate("query", query, self.options.embedder.dimension)?;
        let options = &self.options.vectors;
        let limit = (options.exact_filter_fraction * g.live.len() as f32).ceil() as usize;
        let rows: Vec<usize> = g.segments.iter().map(|s| s.len()).collect();
        if let Some(masks) = g.live.allowed_rows(filter, limit, &rows) {
            let sq = Sq8Query::new(&q);
            let mut best = Best::new(rescore_count(k));
            for (s, (seg, mask)) in g.segments.iter().zip(&masks).enumerate() {
                seg.scan_masked(&sq, mask, (s as u64) << 32, &mut best);
            }
            let scored = best
                .into_sorted()
                .into_iter()
                .map(|(key, _)| {
                    let seg = &g.segments[(key >> 32) as usize];
                    let row = (key & u64::from(u32::MAX)) as usize;
                    (seg.ids()[row], dot(&q, seg.row(row)))
                })
                .collect();
            return Ok(top_k(scored, k));
        }
        let passes_all = g.live.passes_all(filter);
        let mut all = Vec::new();
        for (i, seg) in g.segments.iter().enumerate() {
            let allowed = |row: usize| g.live.row_allowed(i, row, filter);
            // Without tombstones or a filter the walk needs no per-node check.
            let check = !passes_all || g.live.dead_rows(i) > 0;
            let rows: Option<&(dyn Fn(usize) -> bool + Sync)> = check.then_some(&allowed);
            all.extend(seg.search(&q, k, rows, options));
        }
        Ok(top_k(all, k))
    }

    /// Queues chunk bodies for deletion and deletes every queued batch whose generation (and
    /// every older one) no reader holds any more. A released generation can never be loaded
    /// again, so the check cannot race with a new reader.
    fn retire(&self, generation: Weak<Generation>, ids: Vec<u64>) -> Result<()> {
        let mut retired = match self.retired.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if !ids.is_empty() {
            retired.push((generation, ids));
        }
        let released = retired
            .iter()
            .take_while(|(g, _)| g.strong_count() == 0)
            .count();
        let batch: Vec<u64> = retired.drain(..released).flat_map(|(_, ids)| ids).collect();
        if !batch.is_empty() {
            self.store.remove_chunks(&batch)?;
        }
        Ok(())
    }

    /// Exact (brute-force) dense search: the oracle for recall measurements.
    pub fn exact_vector_search(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(String, f32)>> {
        let g = self.current.load_full();
        let q = validate("query", query, self.options.embedder.dimension)?;
        let allowed = |id: u64| g.live.allowed(id, filter);
        let mut all = Vec::new();
        for seg in &g.segments {
            all.extend(seg.exact(&q, k, &allowed));
        }
        let mut out = Vec::new();
        for (id, s) in top_k(all, k) {
            if let Some(c) = self.store.chunk(id)? {
                out.push((c.chunk_id(), s));
            }
        }
        Ok(out)
    }
}

/// A document staged for upsert with its validated chunks and normalised vectors.
type StagedDoc = (DocumentRecord, Vec<(ChunkRecord, Vec<f32>)>);

/// Stages changes; [`Writer::commit`] publishes them as one new generation. Dropping a writer
/// without committing discards them.
pub struct Writer<'a> {
    index: &'a Index,
    _guard: MutexGuard<'a, ()>,
    upserts: Vec<StagedDoc>,
    deletes: Vec<String>,
}

impl<'a> Writer<'a> {
    /// Stages a document and its chunks, replacing any previous version. Validates every chunk
    /// (non-empty text, vector of the right dimension, finite, non-zero) before staging.
    pub fn upsert(&mut self, doc: DocumentRecord, chunks: Vec<ChunkInput>) -> Result<()> {
        let staged = validate_upsert(&doc, chunks, self.index.options.embedder.dimension)?;
        self.deletes.retain(|d| d != &doc.id);
        self.upserts.retain(|(d, _)| d.id != doc.id);
        self.upserts.push((doc, staged));
        Ok(())
    }

    /// Stages the removal of a document.
    pub fn delete(&mut self, doc_id: &str) {
        self.upserts.retain(|(d, _)| d.id != doc_id);
        if !self.deletes.iter().any(|d| d == doc_id) {
            self.deletes.push(doc_id.to_string());
        }
    }

    pub fn pending(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }

    /// Writes and publishes a new generation; returns its number. On error nothing is
    /// published and the previous generation keeps serving.
    pub fn commit(self) -> Result<u64> {
        match self.prepare()? {
            Staged::Nothing(number) => Ok(number),
            Staged::Prepared(p) => p.publish(),
        }
    }

    /// Stages the changes and builds their generation without publishing it: BM25 holds them
    /// (with the next generation's payload), the new chunk bodies and vectors are held in memory
    /// with the generation, and searches keep using the current generation. Nothing reaches
    /// the store until [`Prepared::publish`], so a crash leaves the index as it was (BM25 is
    /// rebuilt from the store on open). The caller can search the prepared generation, then
    /// [`Prepared::publish`] or [`Prepared::discard`] it.
    pub fn prepare(self) -> Result<Staged<'a>> {
        let index = self.index;
        if self.upserts.is_empty() && self.deletes.is_empty() {
            return Ok(Staged::Nothing(index.current.load().number));
        }
        index.reconcile()?;
        let old = index.current.load_full();
        let next = old.number + 1;
        let store = &index.store;
        let upserts = self.upserts.len();
        let deletes = self.deletes.len();

        // 1. Fresh ids for the new chunks, never reused (not even if this is discarded).
        let n_chunks: usize = self.upserts.iter().map(|(_, c)| c.len()).sum();
        let mut next_id = index
            .next_chunk
            .fetch_add(n_chunks as u64, Ordering::AcqRel);
        let next_chunk_id = next_id + n_chunks as u64;
        let mut changes = Vec::new();
        let mut staged = StagedChunks {
            chunks: HashMap::with_capacity(n_chunks),
            vectors: Vec::with_capacity(n_chunks),
        };
        let mut dead: Vec<u64> = Vec::new();
        let mut bm25 = index.bm25.writer()?;
        let mut new_live: Vec<(u64, Arc<DocumentRecord>)> = Vec::new();
        let mut removed_docs: HashSet<String> = HashSet::new();
        for doc_id in &self.deletes {
            if let Some(prev) = store.doc(doc_id)? {
                dead.extend(prev.chunk_ids);
                bm25.delete_doc(doc_id);
                changes.push(DocChange::Remove(doc_id.clone()));
                removed_docs.insert(doc_id.clone());
            }
        }
        for (doc, chunks) in self.upserts {
            if let Some(prev) = store.doc(&doc.id)? {
                dead.extend(prev.chunk_ids);
            }
            bm25.delete_doc(&doc.id);
            let rec = Arc::new(doc.clone());
            let mut ids = Vec::with_capacity(chunks.len());
            for (chunk, vector) in chunks {
                let id = next_id;
                next_id += 1;
                ids.push(id);
                bm25.add_chunk(id, &doc, &chunk)?;
                staged.vectors.push((id, vector));
                staged.chunks.insert(id, chunk);
                new_live.push((id, rec.clone()));
            }
            removed_docs.insert(doc.id.clone());
            changes.push(DocChange::Put(Box::new(StoredDoc {
                record: doc,
                chunk_ids: ids,
            })));
        }
        // 2. BM25. Its searcher is reloaded for the prepared generation only; the published
        // generation keeps its own searcher, so it does not see these changes.
        bm25.commit(next)?;

        // The new generation, built but not published.
        let dead_set: HashSet<u64> = dead.iter().copied().collect();
        let mut live: HashMap<u64, Arc<DocumentRecord>> = old
            .live
            .docs()
            .filter(|(id, d)| !dead_set.contains(id) && !removed_docs.contains(&d.id))
            .map(|(id, d)| (id, d.clone()))
            .collect();
        live.extend(new_live);
        let segments = plan_segments(
            &old.segments,
            staged.vectors.clone(),
            &live,
            index.options.embedder.dimension,
            &index.options.vectors,
        );
        let searcher = index.bm25.reload()?;
        let staged = Arc::new(staged);
        let generation = Generation::new(next, searcher, live, segments);
        generation.overlay.store(Some(staged.clone()));
        Ok(Staged::Prepared(Prepared {
            index,
            _guard: self._guard,
            old,
            next: Some(Arc::new(generation)),
            changes: Arc::new(changes),
            dead,
            staged,
            next_chunk_id,
            upserts,
            deletes,
        }))
    }
}

/// What [`Writer::prepare`] produced.
pub enum Staged<'a> {
    /// Nothing was staged; the current generation number.
    Nothing(u64),
    Prepared(Prepared<'a>),
}

/// A built but unpublished generation: searchable through [`Prepared::search`], not in the
/// store. It holds the index's writer lock until it is published or discarded; dropping it
/// discards it.
pub struct Prepared<'a> {
    index: &'a Index,
    _guard: MutexGuard<'a, ()>,
    /// The generation serving while this one is prepared.
    old: Arc<Generation>,
    /// `None` once published or discarded.
    next: Option<Arc<Generation>>,
    changes: Arc<Vec<DocChange>>,
    /// Chunk bodies the new generation no longer references.
    dead: Vec<u64>,
    /// Chunk bodies and vectors of the new generation, written by the publish.
    staged: Arc<StagedChunks>,
    /// The chunk-id counter to store with the commit.
    next_chunk_id: u64,
    upserts: usize,
    deletes: usize,
}

impl Prepared<'_> {
    /// The number the generation gets when published.
    pub fn generation(&self) -> u64 {
        self.next.as_ref().map_or(self.old.number, |g| g.number)
    }

    /// Searches the prepared generation exactly as [`Index::search`] would once published.
    pub fn search(&self, req: &SearchRequest) -> Result<Vec<Hit>> {
        match &self.next {
            Some(g) => self.index.search_in(g, req),
            None => self.index.search_in(&self.old, req),
        }
    }

    /// Publishes the generation: commits it to the store in one transaction, then swaps it in.
    pub fn publish(mut self) -> Result<u64> {
        let index = self.index;
        let Some(next) = self.next.take() else {
            return Ok(self.old.number);
        };
        // 3. The store's commit point: everything of the generation in one transaction.
        let manifest_pending = index.manifest_pending.load(Ordering::Acquire);
        let batch = CommitBatch {
            expected: self.old.number,
            generation: next.number,
            changes: self.changes.clone(),
            staged: self.staged.clone(),
            next_chunk_id: self.next_chunk_id,
            manifest: manifest_pending.then(|| Manifest {
                format_version: FORMAT_VERSION,
                embedder: index.options.embedder.clone(),
            }),
        };
        if let Err(e) = index.store.commit(batch) {
            // Not committed (or, after a stall, not known yet): put BM25 back so it matches
            // the serving generation again, and check the store before the next commit.
            index.needs_reconcile.store(true, Ordering::Release);
            self.next = Some(next);
            self.rollback();
            return Err(e);
        }
        if manifest_pending {
            index.manifest_pending.store(false, Ordering::Release);
        }
        // A marker behind the store is harmless (see `check_committed_marker`).
        if let Err(e) = write_committed_marker(&index.dir, next.number) {
            tracing::warn!(error = %e, "could not update the committed-generation marker");
        }
        // The store has the bodies now.
        next.overlay.store(None);
        // 4. Publish.
        let number = next.number;
        index.current.store(next);
        // 5.-6. Persist graphs; retire bodies the old generation may still be reading.
        index.persist_graphs(&index.current.load());
        let retired_gen = Arc::downgrade(&self.old);
        let old = std::mem::replace(&mut self.old, index.current.load_full());
        drop(old);
        index.retire(retired_gen, std::mem::take(&mut self.dead))?;
        tracing::debug!(
            generation = number,
            upserts = self.upserts,
            deletes = self.deletes,
            "committed"
        );
        Ok(number)
    }

    /// Drops the generation: the serving one stays, BM25 gets back the documents the staged
    /// changes replaced or removed, and the staged bodies are dropped (they never reached the
    /// store). Should this fail half-way, hits stay correct (every retriever's hits are limited
    /// to the serving generation's live chunks) and the next open rebuilds BM25 from the store.
    pub fn discard(mut self) -> Result<()> {
        self.rollback_inner()
    }

    fn rollback(&mut self) {
        if let Err(e) = self.rollback_inner() {
            tracing::warn!(error = %e, "could not roll back a prepared generation; BM25 is rebuilt from the store at the next open");
        }
    }

    fn rollback_inner(&mut self) -> Result<()> {
        if self.next.take().is_none() {
            return Ok(());
        }
        let index = self.index;
        let mut bm25 = index.bm25.writer()?;
        for change in self.changes.iter() {
            let doc_id = change.doc_id();
            bm25.delete_doc(doc_id);
            if let Some(prev) = index.store.doc(doc_id)? {
                let bodies = index.store.chunks(&prev.chunk_ids)?;
                for (id, chunk) in prev.chunk_ids.iter().zip(bodies) {
                    if let Some(chunk) = chunk {
                        bm25.add_chunk(*id, &prev.record, &chunk)?;
                    }
                }
            }
        }
        bm25.commit(self.old.number)?;
        tracing::info!(
            generation = self.old.number,
            upserts = self.upserts,
            deletes = self.deletes,
            "discarded a prepared generation"
        );
        Ok(())
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        self.rollback();
    }
}

/// File recording the last committed generation outside the store. redb falls back to the
/// previous commit when the newest one's checksum fails (a torn write), and a store file
/// restored from an older copy opens fine too; comparing with this marker turns such a silent
/// loss of acknowledged generations into a `Corrupt` error. It costs one small write and fsync
/// per commit.
const COMMITTED_MARKER: &str = "committed-generation";

fn write_committed_marker(dir: &Path, generation: u64) -> Result<()> {
    let io = |source| IndexError::Io {
        path: dir.join(COMMITTED_MARKER),
        source,
    };
    let tmp = dir.join(format!("{COMMITTED_MARKER}.tmp"));
    std::fs::write(&tmp, generation.to_string()).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, dir.join(COMMITTED_MARKER)).map_err(io)?;
    Ok(())
}

/// A crash between the store's commit and the marker leaves the marker one behind, which is
/// fine; a marker ahead of the store means the store lost committed data.
fn check_committed_marker(dir: &Path, store_generation: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(dir.join(COMMITTED_MARKER)) else {
        return Ok(());
    };
    match text.trim().parse::<u64>() {
        Ok(marked) if marked > store_generation => Err(IndexError::Corrupt {
            path: dir.join("store"),
            reason: format!(
                "the store opened at generation {store_generation} but generation {marked}                  was committed: its log is truncated or damaged"
            ),
        }),
        Ok(_) => Ok(()),
        Err(_) => {
            tracing::warn!("ignoring an unreadable {COMMITTED_MARKER} file");
            Ok(())
        }
    }
}

/// What [`load_generation`] read from the store.
struct Loaded {
    generation: Generation,
    graphs_loaded: usize,
    next_chunk_id: u64,
}

/// Builds the committed generation from the store: live documents, BM25 (rebuilt from the
/// store when its payload disagrees), vector segments (persisted graphs that pass their
/// checksums, the rest from stored vectors). With `sweep` (at open, when no reader can hold an
/// older generation) chunk bodies no document references are deleted.
fn load_generation(
    dir: &Path,
    store: &Store,
    bm25: &Bm25,
    options: &IndexOptions,
    sweep: bool,
) -> Result<Loaded> {
    let generation = store.generation()?;
    let mut live: HashMap<u64, Arc<DocumentRecord>> = HashMap::new();
    let docs = store.docs()?;
    for doc in &docs {
        let rec = Arc::new(doc.record.clone());
        for id in &doc.chunk_ids {
            live.insert(*id, rec.clone());
        }
    }
    let mut next_chunk_id = store.next_chunk_id()?;
    if let Some(max) = live.keys().max() {
        next_chunk_id = next_chunk_id.max(max + 1);
    }
    if sweep {
        let stored = store.stored_chunk_ids()?;
        if let Some(max) = stored.iter().max() {
            next_chunk_id = next_chunk_id.max(max + 1);
        }
        let orphans: Vec<u64> = stored
            .into_iter()
            .filter(|id| !live.contains_key(id))
            .collect();
        if !orphans.is_empty() {
            tracing::info!(
                count = orphans.len(),
                "removing chunk bodies no document references"
            );
            store.remove_chunks(&orphans)?;
        }
    }

    if bm25.committed_generation()? != generation {
        tracing::warn!(
            store_generation = generation,
            bm25_generation = bm25.committed_generation()?,
            "BM25 index disagrees with the store; rebuilding it from the store"
        );
        let mut w = bm25.writer()?;
        w.delete_all()?;
        for doc in &docs {
            let bodies = store.chunks(&doc.chunk_ids)?;
            for (id, chunk) in doc.chunk_ids.iter().zip(bodies) {
                let chunk = chunk.ok_or_else(|| IndexError::Corrupt {
                    path: store.path().to_path_buf(),
                    reason: format!("document {} points at missing chunk {id}", doc.record.id),
                })?;
                w.add_chunk(*id, &doc.record, &chunk)?;
            }
        }
        w.commit(generation)?;
    }

    // Graphs first: the vectors they hold come from their dumps, so only live vectors no
    // graph covers are read from the store.
    let graphs_dir = dir.join("graphs");
    let (mut segments, claimed) =
        load_graphs(&store.graph_segments()?, &graphs_dir, &live, options);
    let graphs_loaded = segments.len();
    let ids: Vec<u64> = live
        .keys()
        .filter(|id| !claimed.contains(id))
        .copied()
        .collect();
    let mut rest: Vec<(u64, Vec<f32>)> = Vec::with_capacity(ids.len());
    for (id, v) in ids.iter().zip(store.vectors(&ids)?) {
        let v = v.ok_or_else(|| IndexError::Corrupt {
            path: store.path().to_path_buf(),
            reason: format!("chunk {id} has no vector"),
        })?;
        if v.len() != options.embedder.dimension {
            return Err(IndexError::Corrupt {
                path: store.path().to_path_buf(),
                reason: format!("chunk {id} has a {}-d vector", v.len()),
            });
        }
        rest.push((*id, v));
    }
    rest.sort_by_key(|(id, _)| *id);
    if !rest.is_empty() {
        segments.push(Arc::new(Segment::build(
            options.embedder.dimension,
            rest,
            &options.vectors,
        )));
    }
    let searcher = bm25.reload()?;
    Ok(Loaded {
        generation: Generation::new(generation, searcher, live, segments),
        graphs_loaded,
        next_chunk_id,
    })
}

/// Loads every persisted graph that still covers a live chunk and passes its checksums;
/// returns them with the ids they hold. Live chunks outside them are rebuilt from the store.
fn load_graphs(
    saved: &[PersistedSegment],
    dir: &Path,
    live: &HashMap<u64, Arc<DocumentRecord>>,
    options: &IndexOptions,
) -> (Vec<Arc<Segment>>, HashSet<u64>) {
    let dim = options.embedder.dimension;
    let mut out = Vec::new();
    let mut claimed: HashSet<u64> = HashSet::new();
    for p in saved {
        // Never let two graphs hold one id (it would be returned twice); by construction they
        // do not, so an overlap means the list is stale.
        if p.ids.iter().any(|id| claimed.contains(id)) {
            continue;
        }
        // A graph mostly made of tombstones is cheaper to rebuild than to keep.
        let alive = p.ids.iter().filter(|id| live.contains_key(id)).count();
        let dead_fraction = 1.0 - alive as f32 / p.ids.len().max(1) as f32;
        if alive == 0 || dead_fraction > options.vectors.rebuild_dead_fraction {
            continue;
        }
        match Segment::load(dim, p, dir) {
            Ok(seg) => {
                claimed.extend(p.ids.iter().copied());
                out.push(Arc::new(seg));
            }
            Err(reason) => {
                tracing::warn!(segment = %p.name, %reason, "persisted HNSW graph unusable; rebuilding");
            }
        }
    }
    (out, claimed)
}

/// The vector segments of the next generation: the old ones, plus one for the new vectors;
/// segments without a graph are merged once there are several or they grow large, and any
/// segment whose dead fraction passes the threshold is rebuilt from its live rows.
fn plan_segments(
    old: &[Arc<Segment>],
    new_vectors: Vec<(u64, Vec<f32>)>,
    live: &HashMap<u64, Arc<DocumentRecord>>,
    dim: usize,
    options: &VectorOptions,
) -> Vec<Arc<Segment>> {
    let is_live = |id: u64| live.contains_key(&id);
    let mut keep: Vec<Arc<Segment>> = Vec::new();
    let mut small: Vec<&Arc<Segment>> = Vec::new();
    let mut small_live = 0usize;
    for seg in old {
        let alive = seg.ids().iter().filter(|id| is_live(**id)).count();
        if alive == 0 {
            continue;
        }
        let dead_fraction = 1.0 - alive as f32 / seg.len() as f32;
        if !seg.has_graph() {
            small.push(seg);
            small_live += alive;
        } else if dead_fraction > options.rebuild_dead_fraction {
            keep.push(Arc::new(Segment::build(
                dim,
                seg.live_rows(&is_live),
                options,
            )));
        } else {
            keep.push(seg.clone());
        }
    }
    // Decide before copying or building anything, so no row is copied (and no graph built)
    // only to be thrown away.
    if small.len() >= 4 || small_live >= options.exact_below {
        let mut rows: Vec<(u64, Vec<f32>)> =
            small.iter().flat_map(|s| s.live_rows(&is_live)).collect();
        rows.extend(new_vectors.into_iter().filter(|(id, _)| is_live(*id)));
        if !rows.is_empty() {
            keep.push(Arc::new(Segment::build(dim, rows, options)));
        }
    } else {
        // Small segments are reused unchanged.
        keep.extend(small.into_iter().cloned());
        if !new_vectors.is_empty() {
            keep.push(Arc::new(Segment::build(dim, new_vectors, options)));
        }
    }
    merge_graph_tiers(keep, &is_live, dim, options)
}

/// Merges graph segments of similar size, `merge_factor` at a time, until no tier holds that
/// many (see [`VectorOptions::merge_factor`]). Each merge takes the smallest graphs whose live
/// rows are within `merge_factor` times the smallest's, so a row is rebuilt about once per
/// fourfold growth instead of at every commit.
fn merge_graph_tiers(
    mut segments: Vec<Arc<Segment>>,
    is_live: &dyn Fn(u64) -> bool,
    dim: usize,
    options: &VectorOptions,
) -> Vec<Arc<Segment>> {
    let factor = options.merge_factor;
    if factor < 2 {
        return segments;
    }
    loop {
        let mut graphs: Vec<(usize, usize)> = segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.has_graph())
            .map(|(i, s)| (i, s.ids().iter().filter(|id| is_live(**id)).count()))
            .collect();
        graphs.sort_by_key(|&(i, live)| (live, i));
        let Some(&(_, smallest)) = graphs.first() else {
            return segments;
        };
        let mut tier: Vec<usize> = graphs
            .iter()
            .take_while(|(_, live)| *live <= smallest.saturating_mul(factor))
            .take(factor)
            .map(|(i, _)| *i)
            .collect();
        if tier.len() < factor {
            return segments;
        }
        tier.sort_unstable();
        let mut rows = Vec::new();
        for i in tier.iter().rev() {
            rows.extend(segments.remove(*i).live_rows(is_live));
        }
        rows.sort_unstable_by_key(|(id, _)| *id);
        tracing::info!(
            segments = factor,
            rows = rows.len(),
            "merging graph segments into one"
        );
        segments.push(Arc::new(Segment::build(dim, rows, options)));
    }
}
