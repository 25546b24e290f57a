//! Embedded-index behaviour beyond the backend conformance suite (`tests/conformance.rs`):
//! the exact-scan oracle, embedder identity on disk, reopen, and segment compaction.

mod common;

use cairn_index::conformance::{
    MODES, assert_absent, assert_embedder_mismatch, corpus, filtered_corpus,
};
use cairn_index::{Filter, Index, IndexError, SearchMode};
use common::*;

#[test]
fn exact_scan_never_returns_a_deleted_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    put(&index, &corpus());
    let mut w = index.writer();
    w.delete("wiki:a");
    w.commit().expect("commit delete");
    assert_absent(&index, "aardvark burrows", 0, "wiki:a");
    let exact = index
        .exact_vector_search(&axis_vector(0, 0.0), 50, &Filter::default())
        .expect("exact");
    assert!(!exact.is_empty());
    assert!(!exact.iter().any(|(c, _)| c.starts_with("wiki:a#")));
}

#[test]
fn embedder_mismatch_on_reopen_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(&open(dir.path()), &corpus());
    let mut other = options(4);
    other.embedder.name = "another-model".into();
    assert_embedder_mismatch(Index::open(dir.path(), other));
    let mut wider = options(4);
    wider.embedder.dimension = DIM * 2;
    assert!(matches!(
        Index::open(dir.path(), wider),
        Err(IndexError::EmbedderMismatch { .. })
    ));
    // The right embedder still opens it, with its data intact.
    let index = open(dir.path());
    assert_eq!(index.stats().documents, corpus().len());
}

#[test]
fn reopen_after_commit_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (before, stats) = {
        let index = open(dir.path());
        put(&index, &filtered_corpus());
        put(&index, &corpus());
        let mut w = index.writer();
        w.delete("wiki:e");
        w.commit().expect("commit");
        let req = request(
            "shared topic",
            Some(vec![1.0; DIM]),
            SearchMode::Hybrid,
            Filter {
                caller_groups: vec!["staff".into(), "hr".into()],
                ..Default::default()
            },
        );
        (index.search(&req).expect("search"), index.stats())
    };
    let index = open(dir.path());
    let after_stats = index.stats();
    assert_eq!(after_stats.generation, stats.generation);
    assert_eq!(after_stats.documents, stats.documents);
    assert_eq!(after_stats.chunks, stats.chunks);
    let req = request(
        "shared topic",
        Some(vec![1.0; DIM]),
        SearchMode::Hybrid,
        Filter {
            caller_groups: vec!["staff".into(), "hr".into()],
            ..Default::default()
        },
    );
    let after = index.search(&req).expect("search");
    let ids = |h: &[cairn_index::Hit]| h.iter().map(|h| h.chunk_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before));
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.document, b.document);
        assert_eq!(a.chunk, b.chunk);
    }
    assert!(index.document("wiki:e").expect("doc").is_none());
    assert_eq!(
        index.content_hash("wiki:a").expect("hash"),
        Some(record(&corpus()[0]).content_hash)
    );
    let mut drive = index.document_ids("drive").expect("ids");
    drive.sort();
    assert_eq!(drive, vec!["drive:h".to_string(), "drive:q".to_string()]);
    // A writer on the reopened index continues the generation sequence.
    let g = put(&index, &[DocSpec::new("wiki:z", "zebra", 7)]);
    assert_eq!(g, stats.generation + 1);
}

/// Upserts docs `cmp:{i}` for `ids` (one chunk each, distinct vectors) in one commit.
fn put_numbered(index: &Index, ids: std::ops::Range<usize>) {
    let mut w = index.writer();
    for i in ids {
        let id = format!("cmp:{i}");
        let v: Vec<f32> = (0..DIM)
            .map(|j| ((i * 7 + j * 13) % 17) as f32 + 1.0)
            .collect();
        w.upsert(
            record(&DocSpec::new(&id, "numbered", 0)),
            vec![chunk(&id, 0, "numbered", v)],
        )
        .expect("upsert");
    }
    w.commit().expect("commit");
}

fn delete_numbered(index: &Index, ids: std::ops::Range<usize>) {
    let mut w = index.writer();
    for i in ids {
        w.delete(&format!("cmp:{i}"));
    }
    w.commit().expect("commit");
}

#[test]
fn segments_are_compacted_by_dead_fraction_and_small_ones_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(10);
    opts.vectors.rebuild_dead_fraction = 0.25;
    let index = Index::open(dir.path(), opts).expect("open");
    put_numbered(&index, 0..40);
    let s = index.stats();
    assert_eq!((s.vector_segments, s.tombstones), (1, 0));

    // 8 of 40 dead (20%): below the threshold, the graph is kept with its tombstones.
    delete_numbered(&index, 0..8);
    let s = index.stats();
    assert_eq!((s.vector_segments, s.tombstones, s.chunks), (1, 8, 32));

    // 12 of 40 dead (30%): past the threshold, the segment is rebuilt from its live rows.
    delete_numbered(&index, 8..12);
    let s = index.stats();
    assert_eq!((s.vector_segments, s.tombstones, s.chunks), (1, 0, 28));

    // Four small commits stay separate exact segments; the fifth merges them with its rows.
    for c in 0..4 {
        put_numbered(&index, 100 + c * 2..102 + c * 2);
    }
    assert_eq!(index.stats().vector_segments, 5);
    put_numbered(&index, 200..202);
    let s = index.stats();
    assert_eq!((s.vector_segments, s.tombstones, s.chunks), (2, 0, 38));

    // Every path still returns exactly the live documents.
    let live: Vec<String> = (12..40)
        .chain(100..108)
        .chain(200..202)
        .map(|i| format!("cmp:{i}"))
        .collect();
    let q: Vec<f32> = (0..DIM).map(|j| j as f32 + 1.0).collect();
    let mut req = request(
        "numbered",
        Some(q.clone()),
        SearchMode::Dense,
        Filter::default(),
    );
    req.k = 100;
    for mode in MODES {
        req.mode = mode;
        let mut got = doc_ids(&index, &req);
        got.sort();
        let mut want = live.clone();
        want.sort();
        assert_eq!(got, want, "{mode:?}");
    }
}
