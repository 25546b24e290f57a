//! Vectors: an hnsw_rs graph for large corpora plus an exact scan that is both the correctness
//! oracle and the faster path for small corpora and selective filters.
//!
//! Vectors are L2-normalised at the edge (validated: right dimension, finite, non-zero), so dot
//! product equals cosine similarity. hnsw_rs cannot delete, so vectors live in immutable
//! [`Segment`]s: a replaced or deleted chunk stays in its segment as a tombstone and is filtered
//! out by the generation's live set during search; segments whose dead fraction passes
//! `rebuild_dead_fraction` are rebuilt from their live rows, and small segments are merged.
//!
//! Scans run their kernels through `pulp`, which picks the widest instruction set the CPU
//! reports at run time (AVX2 and FMA on x86-64), so release binaries stay
//! portable: nothing is compiled with `target-cpu=native`.
//!
//! Graphs are persisted with hnsw_rs's dump format ([`Segment::persist`]) and the sha256 of
//! each file is recorded in the store; [`Segment::load`] verifies both hashes before handing
//! the files to hnsw_rs, whose loader asserts or exits the process on malformed input.

use std::path::Path;
use std::sync::{Arc, LazyLock, OnceLock};

use anndists::dist::DistDot;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::{Hnsw, Point};
use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::FilterT;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{IndexError, Result};

/// Tunables for vector search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VectorOptions {
    /// HNSW links per node.
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    /// Below this many vectors a segment has no graph and is searched by exact scan.
    ///
    /// Default 20,000 (see `## Index` in BENCHMARKS.md, 50k×384-d, 2 shared cores): the exact
    /// scan costs about 0.9 ms per 1,000 rows there (43 ms p50 for 50k), so a 20k segment
    /// scans in under ~17 ms, exactly, while building its graph costs about a minute of CPU
    /// per 25k rows (the 50k fixture took 155 s to build, 163 s to rebuild without its graph
    /// files). Small segments are merged often during ingest; graphs only pay off once a
    /// segment will live long and the scan grows past a few graph searches (8 ms at ef 64).
    pub exact_below: usize,
    /// When a filter keeps less than this fraction of vectors, scan the allowed ones exactly.
    ///
    /// Default 1.0: every filter that leaves out any chunk is served by the scan, and only a
    /// search that every chunk passes walks the graphs. See `## Index` in BENCHMARKS.md
    /// (100k×384-d, four graph segments of 25k, AVX2, mean CPU per dense query with
    /// candidates = 100, three runs): the scan of the allowed int8 rows cost 4.8–6.6 ms at
    /// 90%, 5.9–7.2 at 70%, 5.4–7.0 at 50% and 2.3–3.7 at 10%, against 7.6–8.5, 8.8–10.3,
    /// 9.0–10.8 and 65–72 ms for hnsw_rs's filtered walk, both at recall 1.000. The scan
    /// grows with the corpus and the walk does not, so a much larger index may want a lower
    /// value.
    pub exact_filter_fraction: f32,
    /// Rebuild the graph when this fraction of its nodes are tombstones.
    pub rebuild_dead_fraction: f32,
    /// Tiered merging of graph segments: once this many graph segments hold similar numbers
    /// of live rows (each at most `merge_factor` times the smallest), a commit merges them
    /// into one graph built from their live rows (tombstones dropped). The build runs in the
    /// committing writer; readers keep the previous generation until it is published.
    ///
    /// Default 0 (off). Merging the four 25k graphs of the 100k bench fixture into one (factor
    /// 4) halved the unfiltered vector side (2.4 → 1.3 ms of CPU) but the single graph, built
    /// with the default `m` and `ef_construction`, found far fewer true neighbours on that
    /// clustered corpus: recall@10 0.79 at ef 64 and 0.87 at ef 128, against 0.998 for four
    /// graphs (see `## Index` in BENCHMARKS.md). With `ef_construction` 200 the merged graph
    /// reached 0.93 at ef 64 and 0.96 at ef 128: turn merging on together with a higher
    /// `ef_construction`, and measure recall.
    pub merge_factor: usize,
}

impl Default for VectorOptions {
    fn default() -> Self {
        VectorOptions {
            m: 16,
            ef_construction: 100,
            ef_search: 64,
            exact_below: 20_000,
            exact_filter_fraction: 1.0,
            rebuild_dead_fraction: 0.25,
            merge_factor: 0,
        }
    }
}

/// Checks a vector and returns it L2-normalised.
pub fn validate(chunk: &str, v: &[f32], dim: usize) -> Result<Vec<f32>> {
    if v.len() != dim {
        return Err(IndexError::WrongDimension {
            chunk: chunk.to_string(),
            got: v.len(),
            expected: dim,
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::InvalidVector {
            chunk: chunk.to_string(),
        });
    }
    let norm = dot(v, v).sqrt();
    if norm < 1e-12 || !norm.is_finite() {
        return Err(IndexError::InvalidVector {
            chunk: chunk.to_string(),
        });
    }
    Ok(v.iter().map(|x| x / norm).collect())
}

/// Dot product with eight independent accumulators so the compiler vectorises it: with the
/// baseline instruction set when called directly, with AVX2 and FMA inside the scans below.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// An immutable run of vectors: contiguous rows for the exact scan, plus an HNSW graph once the
/// segment is large enough. Segments are shared between generations and never mutated, so
/// readers search them without locks while a writer builds the next generation.
pub struct Segment {
    dim: usize,
    ids: Vec<u64>,
    rows: Rows,
    /// The rows quantised to int8 (see [`Sq8Rows`]), a quarter of the bytes for exact scans.
    sq8: Sq8Rows,
    graph: Option<Hnsw<'static, f32, DistDot>>,
    /// Set once the graph has been written to disk (or when it was loaded from disk).
    persisted: OnceLock<PersistedSegment>,
}

/// Where a segment's f32 rows live.
enum Rows {
    /// One contiguous array, for segments without a graph.
    Owned(Vec<f32>),
    /// hnsw_rs's own copy of each vector, by row: a graph keeps every point's vector anyway,
    /// so the segment holds a pointer per row instead of a second copy.
    Graph(Vec<Arc<Point<'static, f32>>>),
}

/// The graph's points by row (the id each point was inserted or dumped with), checking that
/// every row is there once with the right dimension.
fn graph_rows(
    graph: &Hnsw<'static, f32, DistDot>,
    rows: usize,
    dim: usize,
) -> std::result::Result<Vec<Arc<Point<'static, f32>>>, String> {
    let mut by_row: Vec<Option<Arc<Point<'static, f32>>>> = vec![None; rows];
    for point in graph.get_point_indexation() {
        let row = point.get_origin_id();
        if point.get_v().len() != dim {
            return Err(format!("point {row} has {} values", point.get_v().len()));
        }
        match by_row.get_mut(row) {
            Some(slot @ None) => *slot = Some(point),
            Some(Some(_)) => return Err(format!("point {row} appears twice")),
            None => return Err(format!("point {row} is past the {rows} rows listed")),
        }
    }
    by_row
        .into_iter()
        .enumerate()
        .map(|(row, p)| p.ok_or_else(|| format!("point {row} is missing")))
        .collect()
}

/// A graph segment on disk: hnsw_rs dump files `<name>.hnsw.graph` and `<name>.hnsw.data`,
/// the chunk id of every row (row `i` of the graph is `ids[i]`), and each file's sha256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PersistedSegment {
    pub name: String,
    pub ids: Vec<u64>,
    pub graph_sha256: String,
    pub data_sha256: String,
}

impl PersistedSegment {
    pub fn file_names(&self) -> [String; 2] {
        [
            format!("{}.hnsw.graph", self.name),
            format!("{}.hnsw.data", self.name),
        ]
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

impl Segment {
    /// Builds a segment from validated, normalised vectors; with a graph when `len >= exact_below`.
    pub fn build(dim: usize, items: Vec<(u64, Vec<f32>)>, options: &VectorOptions) -> Segment {
        let mut ids = Vec::with_capacity(items.len());
        let mut data = Vec::with_capacity(items.len() * dim);
        for (id, v) in items {
            debug_assert_eq!(v.len(), dim);
            ids.push(id);
            data.extend_from_slice(&v);
        }
        let graph = (ids.len() >= options.exact_below).then(|| {
            let g = Hnsw::new(
                options.m,
                ids.len(),
                16,
                options.ef_construction,
                DistDot {},
            );
            let rows: Vec<(&[f32], usize)> = (0..ids.len())
                .map(|i| (&data[i * dim..(i + 1) * dim], i))
                .collect();
            g.parallel_insert_slice(&rows);
            g
        });
        let sq8 = Sq8Rows::new(&data, dim);
        // A graph built here holds every row it was given; keep its copy, drop ours.
        let rows = match graph.as_ref().map(|g| graph_rows(g, ids.len(), dim)) {
            Some(Ok(points)) => Rows::Graph(points),
            Some(Err(reason)) => {
                tracing::warn!(%reason, "graph rows unusable; keeping a copy of the vectors");
                Rows::Owned(data)
            }
            None => Rows::Owned(data),
        };
        Segment {
            dim,
            sq8,
            ids,
            rows,
            graph,
            persisted: OnceLock::new(),
        }
    }

    /// Loads a persisted graph after checking both files against the hashes the store
    /// recorded; its vectors come from the dump (row `i` holds `saved.ids[i]`), so the store's
    /// copies of them are not read. Errors say why the graph must be rebuilt.
    pub fn load(
        dim: usize,
        saved: &PersistedSegment,
        dir: &Path,
    ) -> std::result::Result<Segment, String> {
        let [graph_file, data_file] = saved.file_names();
        for (file, want) in [
            (&graph_file, &saved.graph_sha256),
            (&data_file, &saved.data_sha256),
        ] {
            let got = sha256_file(&dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
            if &got != want {
                return Err(format!("{file}: checksum mismatch"));
            }
        }
        // hnsw_rs ties a loaded graph's lifetime to its loader; the loader is a few paths and
        // options (no mmap), so it is leaked once per segment loaded at open.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, &saved.name)));
        let graph: Hnsw<'static, f32, DistDot> =
            io.load_hnsw().map_err(|e| format!("{graph_file}: {e}"))?;
        if graph.get_nb_point() != saved.ids.len() {
            return Err(format!(
                "{graph_file}: {} points but the manifest lists {}",
                graph.get_nb_point(),
                saved.ids.len()
            ));
        }
        let points =
            graph_rows(&graph, saved.ids.len(), dim).map_err(|e| format!("{data_file}: {e}"))?;
        let sq8 = Sq8Rows::from_rows(points.iter().map(|p| p.get_v()), dim);
        Ok(Segment {
            dim,
            ids: saved.ids.clone(),
            sq8,
            rows: Rows::Graph(points),
            graph: Some(graph),
            persisted: OnceLock::from(saved.clone()),
        })
    }

    /// Writes the graph to `dir` (once; later calls return the same record). `None` when the
    /// segment has no graph: exact segments are cheap to rebuild from the store.
    pub fn persist(
        &self,
        dir: &Path,
        generation: u64,
    ) -> std::result::Result<Option<PersistedSegment>, String> {
        let Some(graph) = &self.graph else {
            return Ok(None);
        };
        if let Some(p) = self.persisted.get() {
            return Ok(Some(p.clone()));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let wanted = format!(
            "g{generation}-{:x}-{nanos:x}",
            self.ids.first().copied().unwrap_or(0)
        );
        let name = graph
            .file_dump(dir, &wanted)
            .map_err(|e| format!("dumping graph {wanted}: {e}"))?;
        let mut saved = PersistedSegment {
            name,
            ids: self.ids.clone(),
            graph_sha256: String::new(),
            data_sha256: String::new(),
        };
        let [graph_file, data_file] = saved.file_names();
        for file in [&graph_file, &data_file] {
            // The dump is written through buffered writers; make it durable before the
            // manifest points at it.
            std::fs::File::open(dir.join(file))
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("{file}: {e}"))?;
        }
        saved.graph_sha256 = sha256_file(&dir.join(&graph_file)).map_err(|e| e.to_string())?;
        saved.data_sha256 = sha256_file(&dir.join(&data_file)).map_err(|e| e.to_string())?;
        Ok(Some(self.persisted.get_or_init(|| saved).clone()))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// The vector in row `i`.
    #[inline(always)]
    pub fn row(&self, i: usize) -> &[f32] {
        match &self.rows {
            Rows::Owned(data) => &data[i * self.dim..(i + 1) * self.dim],
            Rows::Graph(points) => points[i].get_v(),
        }
    }

    /// (id, vector) of rows for which `keep` holds; used to merge segments.
    pub fn live_rows(&self, keep: &dyn Fn(u64) -> bool) -> Vec<(u64, Vec<f32>)> {
        self.ids
            .iter()
            .enumerate()
            .filter(|(_, id)| keep(**id))
            .map(|(i, id)| (*id, self.row(i).to_vec()))
            .collect()
    }

    /// Top-`k` (id, cosine) among the rows (indexes into this segment) for which `allowed`
    /// holds, every row when `None`: a graph walk with the filter inside it, or an exact scan
    /// when the segment has no graph.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&(dyn Fn(usize) -> bool + Sync)>,
        options: &VectorOptions,
    ) -> Vec<(u64, f32)> {
        let Some(graph) = &self.graph else {
            let scored = ARCH.dispatch(ExactScan {
                segment: self,
                query,
                keep: &|row| allowed.is_none_or(|a| a(row)),
            });
            return top_k(scored, k);
        };
        let ef = options.ef_search.max(k);
        let found = match allowed {
            Some(allowed) => {
                let filter = |row: &usize| allowed(*row);
                graph.search_filter(query, k, ef, Some(&filter as &dyn FilterT))
            }
            None => graph.search(query, k, ef),
        };
        found
            .into_iter()
            .map(|n| (self.ids[n.d_id], 1.0 - n.distance))
            .collect()
    }

    /// Exact top-`k` by scanning every allowed row.
    pub fn exact(
        &self,
        query: &[f32],
        k: usize,
        allowed: &(dyn Fn(u64) -> bool + Sync),
    ) -> Vec<(u64, f32)> {
        let scored = ARCH.dispatch(ExactScan {
            segment: self,
            query,
            keep: &|row| allowed(self.ids[row]),
        });
        top_k(scored, k)
    }

    /// Approximate cosine of `query` with row `i`, from the int8 rows.
    #[cfg(test)]
    pub fn approx_dot(&self, query: &Sq8Query, i: usize) -> f32 {
        self.sq8.dot(query, i)
    }

    /// Scores with the int8 rows every row whose bit is set in `mask` (bit `row % 64` of word
    /// `row / 64`) and offers each to `best` under the key `key_base | row`. The rows are read
    /// in order from one contiguous array, so a filter that keeps a large share of the rows
    /// costs a sequential pass over their codes rather than scattered reads.
    pub fn scan_masked(&self, query: &Sq8Query, mask: &[u64], key_base: u64, best: &mut Best) {
        ARCH.dispatch(MaskedScan {
            segment: self,
            query,
            mask,
            key_base,
            best,
        })
    }

    /// Bytes this segment holds besides its graph: ids, int8 rows, and the f32 rows of a
    /// segment without a graph (a graph's vectors belong to hnsw_rs and are not counted).
    pub fn memory_bytes(&self) -> usize {
        let rows = match &self.rows {
            Rows::Owned(data) => data.len() * 4,
            Rows::Graph(points) => points.len() * std::mem::size_of::<usize>(),
        };
        rows + self.ids.len() * 8 + self.sq8.memory_bytes()
    }
}

/// Rows scalar-quantised to int8 with one scale per row (`x ≈ scale · code`, codes in
/// -127..=127). An exact scan of many scattered rows is bound by memory reads, so scoring the
/// int8 rows first and re-scoring only the best few with the f32 rows reads about a quarter
/// of the bytes. The int8 score is off by about 1e-3 of the cosine, so re-scoring the best
/// [`rescore_count`] recovers the exact top-k.
struct Sq8Rows {
    dim: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
}

/// A query quantised like the rows.
pub struct Sq8Query {
    codes: Vec<i8>,
    scale: f32,
}

fn quantise(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    out.extend(
        v.iter()
            .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8),
    );
    scale
}

impl Sq8Query {
    pub fn new(query: &[f32]) -> Sq8Query {
        let mut codes = Vec::with_capacity(query.len());
        let scale = quantise(query, &mut codes);
        Sq8Query { codes, scale }
    }
}

impl Sq8Rows {
    fn new(data: &[f32], dim: usize) -> Sq8Rows {
        Sq8Rows::from_rows(data.chunks_exact(dim.max(1)), dim)
    }

    fn from_rows<'a>(rows: impl ExactSizeIterator<Item = &'a [f32]>, dim: usize) -> Sq8Rows {
        let mut codes = Vec::with_capacity(rows.len() * dim);
        let mut scales = Vec::with_capacity(rows.len());
        for row in rows {
            scales.push(quantise(row, &mut codes));
        }
        Sq8Rows { dim, codes, scales }
    }

    #[inline(always)]
    fn codes(&self, i: usize) -> &[i8] {
        &self.codes[i * self.dim..(i + 1) * self.dim]
    }

    #[cfg(test)]
    fn dot(&self, q: &Sq8Query, i: usize) -> f32 {
        dot_i8(&q.codes, self.codes(i)) as f32 * q.scale * self.scales[i]
    }

    fn memory_bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * 4
    }
}

/// The instruction set detected once per process. `ARCH.dispatch(op)` runs `op.with_simd`
/// compiled for the widest instruction set this CPU supports; only code inlined into it
/// benefits, hence the scans below are [`pulp::WithSimd`] impls whose bodies (and kernels)
/// are `#[inline(always)]` (a closure body is a separate function the compiler may keep out
/// of line, compiled for the baseline).
static ARCH: LazyLock<pulp::Arch> = LazyLock::new(pulp::Arch::new);

/// The AVX2 token when this CPU has AVX2 (detected once): the int8 kernel uses its
/// multiply-add-pairs instruction explicitly, as the compiler does not find it in portable code.
#[cfg(target_arch = "x86_64")]
static AVX2: LazyLock<Option<pulp::x86::V3>> = LazyLock::new(pulp::x86::V3::try_new);

/// f32 dot product of the query with every row `keep` accepts.
struct ExactScan<'a> {
    segment: &'a Segment,
    query: &'a [f32],
    keep: &'a dyn Fn(usize) -> bool,
}

impl pulp::WithSimd for ExactScan<'_> {
    type Output = Vec<(u64, f32)>;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> Self::Output {
        let seg = self.segment;
        (0..seg.ids.len())
            .filter(|row| (self.keep)(*row))
            .map(|row| (seg.ids[row], dot(self.query, seg.row(row))))
            .collect()
    }
}

/// int8 dot product of the query with every row set in a bitmap (see [`Segment::scan_masked`]).
struct MaskedScan<'a> {
    segment: &'a Segment,
    query: &'a Sq8Query,
    mask: &'a [u64],
    key_base: u64,
    best: &'a mut Best,
}

impl pulp::WithSimd for MaskedScan<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let seg = self.segment;
        #[cfg(target_arch = "x86_64")]
        let avx2 = *AVX2;
        for (w, &word) in self.mask.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let row = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if row >= seg.ids.len() {
                    break;
                }
                let codes = seg.sq8.codes(row);
                #[cfg(target_arch = "x86_64")]
                let raw = match avx2 {
                    Some(v3) => dot_i8_avx2(v3, &self.query.codes, codes),
                    None => dot_i8(&self.query.codes, codes),
                };
                #[cfg(not(target_arch = "x86_64"))]
                let raw = dot_i8(&self.query.codes, codes);
                let score = raw as f32 * self.query.scale * seg.sq8.scales[row];
                self.best.push(self.key_base | row as u64, score);
            }
        }
    }
}

/// The best `k` (key, score) pairs seen so far, kept without sorting every candidate: scores
/// below the current floor are dropped at once and the buffer is cut back to `k` whenever it
/// reaches `2k`.
pub struct Best {
    k: usize,
    items: Vec<(u64, f32)>,
    floor: f32,
}

impl Best {
    pub fn new(k: usize) -> Best {
        Best {
            k,
            items: Vec::with_capacity(k.saturating_mul(2)),
            floor: f32::NEG_INFINITY,
        }
    }

    #[inline(always)]
    pub fn push(&mut self, key: u64, score: f32) {
        if score < self.floor || self.k == 0 {
            return;
        }
        self.items.push((key, score));
        if self.items.len() >= self.k * 2 {
            self.items = top_k(std::mem::take(&mut self.items), self.k);
            self.floor = self.items.last().map_or(f32::NEG_INFINITY, |x| x.1);
            self.items.reserve(self.k);
        }
    }

    /// The best `k`, best first, ties by key.
    pub fn into_sorted(self) -> Vec<(u64, f32)> {
        top_k(self.items, self.k)
    }
}

/// How many int8-scored candidates to re-score exactly for a top-`k`.
pub fn rescore_count(k: usize) -> usize {
    k.saturating_mul(4).max(64)
}

/// Integer dot product, portable: each of eight i32 accumulators takes the sum of two adjacent
/// i8 products per 16 codes. 384 products of at most 127² cannot overflow an i32.
#[inline(always)]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0i32; 8];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let p0 = i32::from(i16::from(x[2 * i]) * i16::from(y[2 * i]));
            let p1 = i32::from(i16::from(x[2 * i + 1]) * i16::from(y[2 * i + 1]));
            acc[i] += p0 + p1;
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += i32::from(*x) * i32::from(*y);
    }
    s
}

/// [`dot_i8`] with AVX2: sign-extend 16 codes of each side to i16, multiply and add adjacent
/// pairs into eight i32 lanes (`vpmaddwd`), accumulate. Inlined into AVX2 code only (see
/// [`MaskedScan`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn dot_i8_avx2(v3: pulp::x86::V3, a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::{__m128i, __m256i};
    let n = a.len().min(b.len());
    let (ca, ra) = a[..n].as_chunks::<16>();
    let (cb, rb) = b[..n].as_chunks::<16>();
    let mut acc: __m256i = pulp::cast([0i32; 8]);
    for (x, y) in ca.iter().zip(cb) {
        let x: __m128i = pulp::cast(*x);
        let y: __m128i = pulp::cast(*y);
        let pairs = v3.avx2._mm256_madd_epi16(
            v3.avx2._mm256_cvtepi8_epi16(x),
            v3.avx2._mm256_cvtepi8_epi16(y),
        );
        acc = v3.avx2._mm256_add_epi32(acc, pairs);
    }
    let lanes: [i32; 8] = pulp::cast(acc);
    let mut s: i32 = lanes.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += i32::from(*x) * i32::from(*y);
    }
    s
}

/// The best `k` by score, best first, ties by id.
pub fn top_k(mut scored: Vec<(u64, f32)>, k: usize) -> Vec<(u64, f32)> {
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    scored.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_for_odd_lengths() {
        let a: Vec<f32> = (0..13).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..13).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn sq8_scores_track_f32_and_rescoring_recovers_the_exact_top_k() {
        let dim = 384;
        // Deterministic pseudo-random unit rows.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let rows: Vec<Vec<f32>> = (0..2000)
            .map(|_| {
                let v: Vec<f32> = (0..dim).map(|_| next()).collect();
                validate("r", &v, dim).expect("valid")
            })
            .collect();
        let items: Vec<(u64, Vec<f32>)> = rows
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, v)| (i as u64, v))
            .collect();
        let seg = Segment::build(dim, items, &VectorOptions::default());
        let query = rows[7]
            .iter()
            .zip(&rows[8])
            .map(|(a, b)| a + b)
            .collect::<Vec<f32>>();
        let query = validate("q", &query, dim).expect("valid");
        let sq = Sq8Query::new(&query);
        for i in 0..rows.len() {
            let err = (seg.approx_dot(&sq, i) - dot(&query, seg.row(i))).abs();
            assert!(err < 0.01, "row {i}: error {err}");
        }
        let k = 10;
        // Every row, then every third row: the masked int8 scan plus an f32 re-score of the
        // best few must give the exact top-k of the allowed rows.
        for stride in [1usize, 3] {
            let mut mask = vec![0u64; rows.len().div_ceil(64)];
            for row in (0..rows.len()).step_by(stride) {
                mask[row / 64] |= 1 << (row % 64);
            }
            let mut best = Best::new(rescore_count(k));
            seg.scan_masked(&sq, &mask, 7 << 32, &mut best);
            let rescored: Vec<(u64, f32)> = best
                .into_sorted()
                .into_iter()
                .map(|(key, _)| {
                    assert_eq!(key >> 32, 7, "key carries its segment");
                    let row = (key & 0xffff_ffff) as usize;
                    (seg.ids()[row], dot(&query, seg.row(row)))
                })
                .collect();
            let want = seg.exact(&query, k, &|id| (id as usize).is_multiple_of(stride));
            assert_eq!(top_k(rescored, k), want, "stride {stride}");
        }
    }

    #[test]
    fn int8_kernels_agree_exactly() {
        // Extremes (±127 everywhere), odd lengths (a tail after the 16-code blocks) and mixed
        // signs: the AVX2 kernel must equal the portable one bit for bit.
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 255) as i32 - 127
        };
        for len in [0usize, 5, 16, 37, 384] {
            let a: Vec<i8> = (0..len).map(|_| next() as i8).collect();
            let b: Vec<i8> = (0..len).map(|_| next() as i8).collect();
            let naive: i32 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| i32::from(*x) * i32::from(*y))
                .sum();
            assert_eq!(dot_i8(&a, &b), naive, "len {len}");
            let max = vec![127i8; len];
            let min = vec![-127i8; len];
            assert_eq!(dot_i8(&max, &min), -(127 * 127) * len as i32);
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = *AVX2 {
                assert_eq!(dot_i8_avx2(v3, &a, &b), naive, "len {len}");
                assert_eq!(dot_i8_avx2(v3, &max, &min), -(127 * 127) * len as i32);
            }
        }
    }

    #[test]
    fn best_keeps_the_top_k_of_a_stream() {
        let scores: Vec<(u64, f32)> = (0..1000u64)
            .map(|i| (i, ((i * 7919) % 1009) as f32 / 100.0))
            .collect();
        for k in [0, 1, 5, 64] {
            let mut best = Best::new(k);
            for (id, s) in &scores {
                best.push(*id, *s);
            }
            assert_eq!(best.into_sorted(), top_k(scores.clone(), k), "k {k}");
        }
    }

    #[test]
    fn validate_rejects_bad_vectors() {
        assert!(matches!(
            validate("c", &[1.0, 0.0], 3),
            Err(IndexError::WrongDimension { got: 2, .. })
        ));
        assert!(validate("c", &[f32::NAN, 1.0], 2).is_err());
        assert!(validate("c", &[0.0, 0.0], 2).is_err());
        let v = validate("c", &[3.0, 4.0], 2).expect("valid");
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }
}
