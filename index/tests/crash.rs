//! Crash safety: a child process (this test binary re-executed to run the same test with a
//! directory variable set, which turns the test into its writer half) commits generations and records each one AFTER `commit()` returned;
//! the parent SIGKILLs it at chosen or random moments and checks that the reopened index is
//! exactly one committed generation, never a mix, and never older than the last one the child
//! saw acknowledged (durability, not just atomicity).
//!
//! A writer half is not a test of its own: each `sigkill_*` test starts by asking
//! [`writer_half`] whether it is the child, so running any test by hand always runs a parent
//! that checks something.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_index::{Filter, Index, SearchMode};
use common::*;

const CHILD_ENV: &str = "CAIRN_INDEX_CRASH_CHILD_DIR";
const DOCS: usize = 300;
/// The last generation whose `commit()` returned in the child, replaced atomically.
const ACK_FILE: &str = "child-acknowledged";

/// Records `generation` as acknowledged: written to a temporary file and renamed over the ack
/// file, so the parent never reads half of it. (A SIGKILL does not lose the page cache, so no
/// fsync is needed for the parent to see it.)
fn acknowledge(dir: &Path, generation: u64) {
    let tmp = dir.join("ack.tmp");
    std::fs::write(&tmp, generation.to_string()).expect("ack file");
    std::fs::rename(&tmp, dir.join(ACK_FILE)).expect("ack file");
}

/// The last generation the child acknowledged (0 before the first).
fn acknowledged(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(ACK_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// When the parent's directory variable `var` is set, this process is the child: runs
/// `writer` there, which commits until the parent kills it. Otherwise returns, and the caller
/// goes on as the parent.
fn writer_half(var: &str, writer: fn(&Path) -> !) {
    if let Some(dir) = std::env::var_os(var) {
        writer(Path::new(&dir));
    }
}

fn round_text(round: u64, d: usize) -> String {
    format!("round{round} document {d} shared words")
}

/// Round `r` (committed as generation `r`) holds documents `0..DOCS` plus `extra{r}`, every one
/// tagged with `r` in its text and metadata.
fn write_round(index: &Index, round: u64) -> u64 {
    let mut w = index.writer();
    let r = round.to_string();
    let extra = format!("wiki:extra{round}");
    let mut ids: Vec<String> = (0..DOCS).map(|d| format!("wiki:{d}")).collect();
    ids.push(extra);
    for (d, id) in ids.iter().enumerate() {
        let text = round_text(round, d);
        let spec = DocSpec {
            metadata: &[("round", r.as_str())],
            ..DocSpec::new(id, &text, d)
        };
        let chunks = (0..3)
            .map(|o| {
                chunk(
                    id,
                    o,
                    &format!("{text} part {o}"),
                    axis_vector(d, 0.1 * o as f32 + round as f32 * 0.001),
                )
            })
            .collect();
        w.upsert(record(&spec), chunks).expect("upsert");
    }
    if round > 1 {
        w.delete(&format!("wiki:extra{}", round - 1));
    }
    w.commit().expect("commit")
}

/// The writer half of `sigkill_during_commit_keeps_the_last_committed_generation`.
fn crash_child_writer(dir: &Path) -> ! {
    let index = Index::open(dir, options(200)).expect("child open");
    let mut round = index.generation();
    loop {
        round += 1;
        assert_eq!(write_round(&index, round), round);
        // A file rather than stdout: libtest may capture the child's printed output.
        acknowledge(dir, round);
    }
}

/// Runs test `name` of this binary as a child writer (its [`writer_half`]) with `env` set, waits until `ready`
/// holds, lets it run `delay_ms` longer and SIGKILLs it.
fn kill_writer(
    exe: &Path,
    name: &str,
    env: (&str, &Path),
    ready: impl Fn() -> bool,
    delay_ms: u64,
) {
    let mut child = Command::new(exe)
        .args(["--exact", name, "--test-threads=1"])
        .env(env.0, env.1)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let started = Instant::now();
    while !ready() {
        assert!(
            child.try_wait().expect("poll child").is_none(),
            "child ended early"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "child never got ready"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(delay_ms));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap child");
}

fn check_consistent(dir: &Path) -> u64 {
    let acked = acknowledged(dir);
    let index = Index::open(dir, options(200)).expect("reopen after SIGKILL");
    let g = index.generation();
    assert!(g >= 1, "the first generation was committed before the kill");
    assert!(
        g >= acked,
        "generation {acked} was acknowledged but the store reopened at {g}"
    );
    let stats = index.stats();
    assert_eq!(stats.documents, DOCS + 1, "generation {g}");
    assert_eq!(stats.chunks, (DOCS + 1) * 3, "generation {g}");
    for d in 0..DOCS {
        let doc = index
            .document(&format!("wiki:{d}"))
            .expect("doc")
            .expect("present");
        assert_eq!(doc.metadata["round"], g.to_string());
    }
    assert!(
        index
            .document(&format!("wiki:extra{g}"))
            .expect("doc")
            .is_some()
    );
    assert!(
        index
            .document(&format!("wiki:extra{}", g + 1))
            .expect("doc")
            .is_none()
    );
    let all = |mode, text: &str| {
        let mut req = request(text, Some(vec![1.0; DIM]), mode, Filter::default());
        req.k = (DOCS + 1) * 3 + 10;
        index.search(&req).expect("search")
    };
    // BM25 holds exactly this round's chunks: none of the next round's, all of this one's.
    assert_eq!(all(SearchMode::Bm25, &format!("round{}", g + 1)).len(), 0);
    assert_eq!(
        all(SearchMode::Bm25, &format!("round{}", g.saturating_sub(1))).len(),
        0
    );
    let bm25 = all(SearchMode::Bm25, &format!("round{g}"));
    assert_eq!(bm25.len(), (DOCS + 1) * 3, "generation {g}");
    for mode in [SearchMode::Dense, SearchMode::Hybrid] {
        let hits = all(mode, "shared words");
        let expected = (DOCS + 1) * 3;
        if mode == SearchMode::Dense {
            // The reloaded graph is approximate: asked for every vector it may miss a few.
            // Which generation survived is what this test checks (every hit below).
            assert!(
                hits.len() * 100 >= expected * 97,
                "{mode:?} generation {g}: {}",
                hits.len()
            );
        } else {
            assert_eq!(hits.len(), expected, "{mode:?} generation {g}");
        }
        for h in hits {
            assert_eq!(h.document.metadata["round"], g.to_string());
            assert!(h.chunk.text.starts_with(&format!("round{g} ")));
        }
    }
    // And the index keeps working: one more commit on top.
    assert_eq!(write_round(&index, g + 1), g + 1);
    g
}

#[test]
fn sigkill_during_commit_keeps_the_last_committed_generation() {
    writer_half(CHILD_ENV, crash_child_writer);
    let exe = std::env::current_exe().expect("test binary");
    let mut seen = Vec::new();
    for delay_ms in [0u64, 15, 60, 150, 400, 900] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready = || acknowledged(dir.path()) >= 1;
        kill_writer(
            &exe,
            "sigkill_during_commit_keeps_the_last_committed_generation",
            (CHILD_ENV, dir.path()),
            ready,
            delay_ms,
        );
        let g = check_consistent(dir.path());
        seen.push((delay_ms, g));
    }
    eprintln!("(delay ms, generation found after kill): {seen:?}");
}

const MERGE_CHILD_ENV: &str = "CAIRN_INDEX_MERGE_CHILD_DIR";
const PER_ROUND: usize = 120;
const DELETED_PER_ROUND: usize = 10;

/// Round `r` adds documents `m{r}:0..PER_ROUND` (nothing is replaced, so graph segments pile
/// up and merge four at a time) and deletes the first few of round `r - 1`, leaving
/// tombstones for the merges to drop.
fn write_merge_round(index: &Index, round: u64) -> u64 {
    let mut w = index.writer();
    for d in 0..PER_ROUND {
        let id = format!("m{round}:{d}");
        let text = format!("merge round{round} item{d}");
        let v = axis_vector(d, round as f32 * 0.01 + d as f32 * 0.001);
        w.upsert(
            record(&DocSpec::new(&id, &text, d)),
            vec![chunk(&id, 0, &text, v)],
        )
        .expect("upsert");
    }
    for d in 0..DELETED_PER_ROUND {
        w.delete(&format!("m{}:{d}", round.saturating_sub(1)));
    }
    w.commit().expect("commit")
}

fn merge_options() -> cairn_index::IndexOptions {
    let mut o = options(100);
    o.vectors.merge_factor = 4;
    o
}

/// The writer half of `sigkill_while_graph_segments_merge_keeps_the_last_committed_generation`.
fn crash_child_merging_writer(dir: &Path) -> ! {
    let index = Index::open(dir, merge_options()).expect("child open");
    let mut round = 0;
    loop {
        round += 1;
        assert_eq!(write_merge_round(&index, round), round);
        acknowledge(dir, round);
    }
}

#[test]
fn sigkill_while_graph_segments_merge_keeps_the_last_committed_generation() {
    writer_half(MERGE_CHILD_ENV, crash_child_merging_writer);
    let exe = std::env::current_exe().expect("test binary");
    let mut seen = Vec::new();
    // Killed once round `after` is committed, `delay_ms` into the next commit: round 4's commit
    // merges the first four graphs, round 8's the next four, round 16's the four merged ones.
    for (after, delay_ms) in [(1u64, 0u64), (3, 0), (3, 20), (7, 5), (15, 10), (15, 60)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let committed = || acknowledged(dir.path());
        kill_writer(
            &exe,
            "sigkill_while_graph_segments_merge_keeps_the_last_committed_generation",
            (MERGE_CHILD_ENV, dir.path()),
            || committed() >= after,
            delay_ms,
        );

        let acked = committed();
        let index = Index::open(dir.path(), merge_options()).expect("reopen after SIGKILL");
        let g = index.generation();
        assert!(g >= 1);
        assert!(
            g >= acked,
            "generation {acked} was acknowledged, reopened at {g}"
        );
        // Exactly the documents of rounds 1..=g, minus those each later round deleted.
        let expected = g as usize * PER_ROUND - (g as usize - 1) * DELETED_PER_ROUND;
        let stats = index.stats();
        assert_eq!(
            (stats.documents, stats.chunks),
            (expected, expected),
            "gen {g}"
        );
        let deleted = |id: &str| {
            let (round, d) = id[1..].split_once(':').expect("m{r}:{d}");
            let (round, d): (u64, usize) = (round.parse().expect("r"), d.parse().expect("d"));
            round < g && d < DELETED_PER_ROUND
        };
        let mut req = request(
            "merge",
            Some(vec![1.0; DIM]),
            SearchMode::Bm25,
            Filter::default(),
        );
        req.k = expected + 10;
        for mode in [SearchMode::Bm25, SearchMode::Dense] {
            req.mode = mode;
            let ids = doc_ids(&index, &req);
            let unique: std::collections::HashSet<&String> = ids.iter().collect();
            assert_eq!(
                unique.len(),
                ids.len(),
                "{mode:?} gen {g}: a chunk came twice"
            );
            if mode == SearchMode::Bm25 {
                assert_eq!(ids.len(), expected, "gen {g}");
            } else {
                // The graphs are approximate when asked for every vector.
                assert!(ids.len() * 100 >= expected * 97, "gen {g}: {}", ids.len());
            }
            for id in &ids {
                assert!(!deleted(id), "{mode:?} gen {g}: deleted {id} came back");
                let round: u64 = id[1..id.find(':').expect(":")].parse().expect("round");
                assert!(round <= g, "{mode:?} gen {g}: {id} of an uncommitted round");
            }
        }
        assert_eq!(write_merge_round(&index, g + 1), g + 1);
        seen.push((
            after,
            delay_ms,
            g,
            stats.vector_segments,
            index.graphs_loaded(),
        ));
    }
    eprintln!("(round, delay ms, generation found, vector segments): {seen:?}");
    // Merges happened: from round 4 on there are fewer segments than rounds.
    assert!(
        seen.iter()
            .any(|(_, _, g, segments, _)| *segments < *g as usize)
    );
}

// ---------------------------------------------------------------------------------------------
// Random SIGKILLs during bulk commits, with readers searching in the child.

const BULK_CHILD_ENV: &str = "CAIRN_INDEX_BULK_CHILD_DIR";
const BULK_DOCS: usize = 24;
const BULK_DIM: usize = 32;

fn bulk_options() -> cairn_index::IndexOptions {
    let mut o = cairn_index::IndexOptions::new(cairn_index::EmbedderInfo {
        name: "crash-embedder".into(),
        version: "1".into(),
        dimension: BULK_DIM,
    });
    o.vectors.exact_below = 64;
    o.vectors.merge_factor = 4;
    o
}

/// A deterministic pseudo-random vector for `seed` (splitmix64), far from every other.
fn bulk_vector(seed: &str) -> Vec<f32> {
    let mut x = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..BULK_DIM)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) as f64 / u64::MAX as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// Document `d` of round `r`, in its version `v` (the round that last wrote it).
fn bulk_doc(
    r: u64,
    d: usize,
    v: u64,
) -> (cairn_index::DocumentRecord, Vec<cairn_index::ChunkInput>) {
    let id = format!("k{r}:{d}");
    let word = format!("uniq{r}x{d}v{v}");
    let text = format!("{word} bulkword round{r}");
    let version = v.to_string();
    let spec = DocSpec {
        metadata: &[("version", version.as_str())],
        ..DocSpec::new(&id, &text, d)
    };
    let chunks = (0..2)
        .map(|o| {
            chunk(
                &id,
                o,
                &format!("{text} part{o} {word}p{o}"),
                bulk_vector(&format!("{id}/{o}/{v}")),
            )
        })
        .collect();
    (record(&spec), chunks)
}

/// Round `r` adds `k{r}:0..BULK_DOCS`, rewrites `k{r-1}:0` and deletes `k{r-2}:1`.
fn write_bulk_round(index: &Index, r: u64) -> u64 {
    let mut w = index.writer();
    for d in 0..BULK_DOCS {
        let (doc, chunks) = bulk_doc(r, d, r);
        w.upsert(doc, chunks).expect("upsert");
    }
    if r > 1 {
        let (doc, chunks) = bulk_doc(r - 1, 0, r);
        w.upsert(doc, chunks).expect("upsert");
    }
    if r > 2 {
        w.delete(&format!("k{}:1", r - 2));
    }
    w.commit().expect("commit")
}

/// The documents generation `g` holds: `(round, doc, version)`.
fn bulk_expected(g: u64) -> Vec<(u64, usize, u64)> {
    let mut out = Vec::new();
    for r in 1..=g {
        for d in 0..BULK_DOCS {
            if d == 1 && r + 2 <= g {
                continue;
            }
            let v = if d == 0 && r < g { r + 1 } else { r };
            out.push((r, d, v));
        }
    }
    out
}

/// The writer half of `sigkill_at_random_moments_never_loses_an_acknowledged_commit`: two
/// reader threads search without pause while the main thread commits round after round.
fn crash_child_bulk_writer(dir: &Path) -> ! {
    let index = std::sync::Arc::new(Index::open(dir, bulk_options()).expect("child open"));
    for t in 0..2u64 {
        let index = index.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            loop {
                n += 1;
                let g = index.generation().max(1);
                let r = 1 + (n * 7 + t) % g;
                let mode =
                    [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid][n as usize % 3];
                let req = request(
                    &format!("round{r} bulkword"),
                    Some(bulk_vector(&format!("query{n}"))),
                    mode,
                    Filter::default(),
                );
                // A failing search panics this thread, which the parent sees as a dead child.
                if let Err(e) = index.search(&req) {
                    eprintln!("reader failed: {e}");
                    std::process::exit(3);
                }
            }
        });
    }
    let mut round = index.generation();
    loop {
        round += 1;
        assert_eq!(write_bulk_round(&index, round), round);
        acknowledge(dir, round);
    }
}

/// Everything generation `g` must hold, read back byte-identical from the store, and BM25 and
/// vector search agreeing with it.
fn check_bulk(index: &Index, g: u64, rng: &mut impl rand::Rng) {
    let expected = bulk_expected(g);
    let stats = index.stats();
    assert_eq!(stats.documents, expected.len(), "generation {g}");
    assert_eq!(stats.chunks, expected.len() * 2, "generation {g}");
    for &(r, d, v) in &expected {
        let (doc, chunks) = bulk_doc(r, d, v);
        let stored = index.document(&doc.id).expect("read").expect("present");
        assert_eq!(stored, doc, "generation {g}: record of {}", doc.id);
        let stored_chunks = index.chunks_of(&doc.id).expect("chunks");
        let want: Vec<_> = chunks.iter().map(|c| c.chunk.clone()).collect();
        assert_eq!(stored_chunks, want, "generation {g}: chunks of {}", doc.id);
        let vectors = index.vectors_of(&doc.id).expect("vectors");
        for (got, c) in vectors.iter().zip(&chunks) {
            let want = cairn_index::validate_query(&c.vector, BULK_DIM).expect("valid");
            let same = got.len() == want.len()
                && got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "generation {g}: a vector of {} differs", doc.id);
        }
        assert_eq!(vectors.len(), 2, "generation {g}: vectors of {}", doc.id);
    }
    // Deleted and superseded versions are gone from the store.
    if g > 2 {
        assert!(
            index
                .document(&format!("k{}:1", g - 2))
                .expect("read")
                .is_none()
        );
    }
    // BM25 holds exactly the live chunks.
    let mut all = request("bulkword", None, SearchMode::Bm25, Filter::default());
    all.k = expected.len() * 2 + 10;
    let hits = index.search(&all).expect("search");
    assert_eq!(
        hits.len(),
        expected.len() * 2,
        "generation {g}: BM25 chunk count"
    );
    // Each document of the newest round and a sample of the rest: found by its unique word
    // through BM25, and by its vector through dense search.
    let mut sample: Vec<&(u64, usize, u64)> = expected.iter().filter(|e| e.0 == g).collect();
    for _ in 0..20 {
        sample.push(&expected[rng.random_range(0..expected.len())]);
    }
    for &&(r, d, v) in &sample {
        let (doc, chunks) = bulk_doc(r, d, v);
        let word = format!("uniq{r}x{d}v{v}");
        let hits = index
            .search(&request(&word, None, SearchMode::Bm25, Filter::default()))
            .expect("search");
        let ids: std::collections::HashSet<String> =
            hits.iter().map(|h| h.document.id.clone()).collect();
        assert_eq!(ids.len(), 1, "generation {g}: BM25 `{word}` gave {ids:?}");
        assert!(
            ids.contains(&doc.id),
            "generation {g}: BM25 `{word}` gave {ids:?}"
        );
        for c in &chunks {
            let mut req = request(
                "",
                Some(c.vector.clone()),
                SearchMode::Dense,
                Filter::default(),
            );
            req.k = 10;
            let hits = index.search(&req).expect("search");
            assert!(
                hits.iter().any(|h| h.chunk == c.chunk),
                "generation {g}: {}#{} not found by its vector",
                doc.id,
                c.chunk.ordinal
            );
        }
    }
}

#[test]
fn sigkill_at_random_moments_never_loses_an_acknowledged_commit() {
    use rand::{Rng, SeedableRng};
    writer_half(BULK_CHILD_ENV, crash_child_bulk_writer);
    let kills: usize = std::env::var("CAIRN_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CAIRN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{kills} kills, CAIRN_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().expect("test binary");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut found = Vec::new();
    for kill in 0..kills {
        let before = acknowledged(dir.path());
        // Killed once at least one more commit was acknowledged, a random moment later: in the
        // middle of a commit, between commits, during graph builds and merges.
        let delay_ms = rng.random_range(0..250);
        kill_writer(
            &exe,
            "sigkill_at_random_moments_never_loses_an_acknowledged_commit",
            (BULK_CHILD_ENV, dir.path()),
            || acknowledged(dir.path()) > before,
            delay_ms,
        );
        let acked = acknowledged(dir.path());
        let index = Index::open(dir.path(), bulk_options()).expect("reopen after SIGKILL");
        let g = index.generation();
        assert!(
            g >= acked,
            "kill {kill} (after {delay_ms} ms): generation {acked} was acknowledged, the \
             index reopened at {g} (CAIRN_CRASH_SEED={seed})"
        );
        // At most the commit in flight beyond the acknowledged one.
        assert!(
            g <= acked + 1,
            "kill {kill}: reopened at {g}, acknowledged {acked}"
        );
        check_bulk(&index, g, &mut rng);
        found.push((delay_ms, acked, g));
    }
    eprintln!("(delay ms, acknowledged, reopened at): {found:?}");
}
