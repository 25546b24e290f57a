//! Crash safety: a child process (this test binary re-executed in "writer" mode) commits one
//! generation and then keeps writing big ones; the parent SIGKILLs it at different moments and
//! checks that the reopened index is exactly one committed generation, never a mix.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_index::{Filter, Index, SearchMode};
use common::*;

const CHILD_ENV: &str = "CAIRN_INDEX_CRASH_CHILD_DIR";
const DOCS: usize = 300;
const READY_FILE: &str = "child-committed";

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

/// Not a test on its own: the writer half of the crash test, active only when re-executed.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let index = Index::open(Path::new(&dir), options(200)).expect("child open");
    let mut round = index.generation() + 1;
    assert_eq!(write_round(&index, round), round);
    // A file rather than stdout: libtest may capture the child's printed output.
    std::fs::write(Path::new(&dir).join(READY_FILE), round.to_string()).expect("ready file");
    loop {
        round += 1;
        assert_eq!(write_round(&index, round), round);
    }
}

/// Runs test `name` of this binary as a child writer with `env` set, waits until `ready`
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
    let index = Index::open(dir, options(200)).expect("reopen after SIGKILL");
    let g = index.generation();
    assert!(g >= 1, "the first generation was committed before the kill");
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
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut seen = Vec::new();
    for delay_ms in [0u64, 15, 60, 150, 400, 900] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready = || dir.path().join(READY_FILE).exists();
        kill_writer(
            &exe,
            "crash_child_writer",
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

/// Not a test on its own: the writer half of the merge crash test, active only when re-executed.
#[test]
fn crash_child_merging_writer() {
    let Ok(dir) = std::env::var(MERGE_CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let index = Index::open(dir, merge_options()).expect("child open");
    for round in 1.. {
        assert_eq!(write_merge_round(&index, round), round);
        // The last committed round, replaced atomically so the parent never reads half of it.
        let tmp = dir.join("progress.tmp");
        std::fs::write(&tmp, round.to_string()).expect("progress file");
        std::fs::rename(&tmp, dir.join(READY_FILE)).expect("progress file");
    }
}

#[test]
fn sigkill_while_graph_segments_merge_keeps_the_last_committed_generation() {
    if std::env::var(MERGE_CHILD_ENV).is_ok() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut seen = Vec::new();
    // Killed once round `after` is committed, `delay_ms` into the next commit: round 4's commit
    // merges the first four graphs, round 8's the next four, round 16's the four merged ones.
    for (after, delay_ms) in [(1u64, 0u64), (3, 0), (3, 20), (7, 5), (15, 10), (15, 60)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let committed = || -> u64 {
            std::fs::read_to_string(dir.path().join(READY_FILE))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        kill_writer(
            &exe,
            "crash_child_merging_writer",
            (MERGE_CHILD_ENV, dir.path()),
            || committed() >= after,
            delay_ms,
        );

        let index = Index::open(dir.path(), merge_options()).expect("reopen after SIGKILL");
        let g = index.generation();
        assert!(g >= 1);
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
