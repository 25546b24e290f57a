//! Deletes and replacements, filters, access control, validation, embedder identity and reopen.

mod common;

use cairn_index::{Filter, Index, IndexError, SearchMode, TimeRange};
use common::*;

const MODES: [SearchMode; 3] = [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid];

/// Every retrieval path, with and without filters, must agree that `gone` does not exist.
fn assert_absent(index: &Index, text: &str, axis: usize, gone: &str) {
    let filters = [
        Filter::default(),
        Filter {
            sources: vec!["wiki".into()],
            ..Default::default()
        },
        Filter {
            caller_groups: vec!["staff".into()],
            ..Default::default()
        },
    ];
    for mode in MODES {
        for f in &filters {
            let req = request(text, Some(axis_vector(axis, 0.0)), mode, f.clone());
            let ids = doc_ids(index, &req);
            assert!(
                !ids.iter().any(|d| d == gone),
                "{gone} returned by {mode:?} with {f:?}: {ids:?}"
            );
        }
    }
    let exact = index
        .exact_vector_search(&axis_vector(axis, 0.0), 50, &Filter::default())
        .expect("exact");
    assert!(
        !exact
            .iter()
            .any(|(c, _)| c.starts_with(&format!("{gone}#")))
    );
}

fn corpus() -> Vec<DocSpec<'static>> {
    vec![
        DocSpec::new("wiki:a", "aardvark burrows at night", 0),
        DocSpec::new("wiki:b", "badger digs setts in woodland", 1),
        DocSpec::new("wiki:c", "capybara swims in rivers", 2),
        DocSpec::new("wiki:d", "dormouse sleeps through winter", 3),
        DocSpec::new("wiki:e", "echidna lays eggs", 4),
        DocSpec::new("wiki:f", "ferret hunts rabbits", 5),
    ]
}

#[test]
fn deleted_document_is_never_returned_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    put(&index, &corpus());
    let req = request(
        "aardvark",
        Some(axis_vector(0, 0.0)),
        SearchMode::Hybrid,
        Filter::default(),
    );
    assert_eq!(
        doc_ids(&index, &req).first().map(String::as_str),
        Some("wiki:a")
    );

    let mut w = index.writer();
    w.delete("wiki:a");
    w.commit().expect("commit delete");
    assert_absent(&index, "aardvark burrows", 0, "wiki:a");
    assert!(index.document("wiki:a").expect("doc").is_none());
    assert!(index.chunks_of("wiki:a").expect("chunks").is_empty());

    // Further commits (merges, graph rebuilds) must not resurrect it, nor must a reopen.
    for i in 0..6 {
        let id = format!("wiki:x{i}");
        let text = format!("filler number {i}");
        let mut w = index.writer();
        w.upsert(
            record(&DocSpec::new(&id, &text, i)),
            vec![chunk(&id, 0, &text, axis_vector(i, 0.3))],
        )
        .expect("upsert");
        w.commit().expect("commit");
        assert_absent(&index, "aardvark burrows", 0, "wiki:a");
    }
    drop(index);
    let index = open(dir.path());
    assert_absent(&index, "aardvark burrows", 0, "wiki:a");
}

#[test]
fn replaced_document_returns_only_its_new_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    put(&index, &corpus());
    // Replace b: new words, new direction.
    put(
        &index,
        &[DocSpec::new("wiki:b", "okapi grazes in forest", 6)],
    );
    for mode in MODES {
        let old = request(
            "badger setts",
            Some(axis_vector(1, 0.0)),
            mode,
            Filter::default(),
        );
        for h in index.search(&old).expect("search") {
            assert!(
                !h.chunk.text.contains("badger"),
                "old version of wiki:b returned by {mode:?}"
            );
        }
        let new = request("okapi", Some(axis_vector(6, 0.0)), mode, Filter::default());
        let hits = index.search(&new).expect("search");
        assert_eq!(hits[0].document.id, "wiki:b", "{mode:?}");
        assert!(hits[0].chunk.text.contains("okapi"));
        assert_eq!(hits.iter().filter(|h| h.document.id == "wiki:b").count(), 1);
    }
    // Replacing with fewer chunks drops the surplus ones everywhere.
    let mut w = index.writer();
    let rec = record(&DocSpec::new("wiki:c", "capybara", 2));
    w.upsert(
        rec.clone(),
        vec![
            chunk("wiki:c", 0, "capybara first part", axis_vector(2, 0.0)),
            chunk("wiki:c", 1, "capybara second part", axis_vector(2, 0.1)),
        ],
    )
    .expect("upsert");
    w.commit().expect("commit");
    let mut w = index.writer();
    w.upsert(
        rec,
        vec![chunk(
            "wiki:c",
            0,
            "capybara only part",
            axis_vector(2, 0.0),
        )],
    )
    .expect("upsert");
    w.commit().expect("commit");
    for mode in MODES {
        let req = request(
            "capybara part",
            Some(axis_vector(2, 0.0)),
            mode,
            Filter::default(),
        );
        let hits = index.search(&req).expect("search");
        let c: Vec<_> = hits.iter().filter(|h| h.document.id == "wiki:c").collect();
        assert_eq!(c.len(), 1, "{mode:?}");
        assert_eq!(c[0].chunk.text, "capybara only part");
    }
    assert_eq!(index.chunks_of("wiki:c").expect("chunks").len(), 1);
}

#[test]
fn upsert_then_delete_in_one_writer_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    put(&index, &corpus());
    let mut w = index.writer();
    w.upsert(
        record(&DocSpec::new("wiki:d", "dormouse again", 3)),
        vec![chunk("wiki:d", 0, "dormouse again", axis_vector(3, 0.0))],
    )
    .expect("upsert");
    w.delete("wiki:d");
    w.commit().expect("commit");
    assert_absent(&index, "dormouse", 3, "wiki:d");
}

fn filtered_corpus() -> Vec<DocSpec<'static>> {
    vec![
        DocSpec {
            source: "wiki",
            metadata: &[("lang", "en")],
            day: Some(1),
            ..DocSpec::new("wiki:p", "shared topic public", 0)
        },
        DocSpec {
            source: "drive",
            metadata: &[("lang", "de")],
            day: Some(10),
            ..DocSpec::new("drive:q", "shared topic drive", 1)
        },
        DocSpec {
            source: "wiki",
            groups: &["staff"],
            metadata: &[("lang", "en")],
            day: Some(20),
            ..DocSpec::new("wiki:s", "shared topic staff only", 2)
        },
        DocSpec {
            source: "drive",
            groups: &["hr", "board"],
            day: Some(25),
            ..DocSpec::new("drive:h", "shared topic personnel", 3)
        },
        DocSpec {
            source: "wiki",
            ..DocSpec::new("wiki:n", "shared topic undated", 4)
        },
    ]
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Runs a filter through every mode and checks each returns exactly `expected`.
fn check_filter(index: &Index, filter: Filter, expected: &[&str]) {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    for mode in MODES {
        // A query vector between every axis, so dense search would rank all documents.
        let v = vec![1.0f32; DIM];
        let req = request("shared topic", Some(v), mode, filter.clone());
        assert_eq!(
            sorted(doc_ids(index, &req)),
            want,
            "{mode:?} with {filter:?}"
        );
    }
}

fn filter_suite(index: &Index) {
    check_filter(index, Filter::default(), &["wiki:p", "drive:q", "wiki:n"]);
    check_filter(
        index,
        Filter {
            sources: vec!["drive".into()],
            ..Default::default()
        },
        &["drive:q"],
    );
    check_filter(
        index,
        Filter {
            metadata: [("lang".to_string(), "en".to_string())].into(),
            caller_groups: vec!["staff".into()],
            ..Default::default()
        },
        &["wiki:p", "wiki:s"],
    );
    check_filter(
        index,
        Filter {
            updated: Some(TimeRange {
                from: Some(time(5)),
                to: Some(time(22)),
            }),
            caller_groups: vec!["staff".into(), "hr".into()],
            ..Default::default()
        },
        &["drive:q", "wiki:s"],
    );
    check_filter(
        index,
        Filter {
            updated: Some(TimeRange {
                from: Some(time(10)),
                to: None,
            }),
            caller_groups: vec!["board".into()],
            ..Default::default()
        },
        &["drive:q", "drive:h"],
    );
    // Groups widen only to the caller's own groups.
    check_filter(
        index,
        Filter {
            caller_groups: vec!["staff".into()],
            ..Default::default()
        },
        &["wiki:p", "drive:q", "wiki:n", "wiki:s"],
    );
    check_filter(
        index,
        Filter {
            caller_groups: vec!["hr".into(), "nobody".into()],
            ..Default::default()
        },
        &["wiki:p", "drive:q", "wiki:n", "drive:h"],
    );
    check_filter(
        index,
        Filter {
            caller_groups: vec!["Staff".into()],
            ..Default::default()
        },
        &["wiki:p", "drive:q", "wiki:n"],
    );
    // A filter that keeps nothing returns nothing rather than an error.
    check_filter(
        index,
        Filter {
            sources: vec!["mail".into()],
            ..Default::default()
        },
        &[],
    );
}

#[test]
fn filters_and_access_groups_apply_in_every_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Exact path (tiny corpus, graph threshold high) and graph path (threshold 1).
    for exact_below in [1_000, 1] {
        let sub = dir.path().join(exact_below.to_string());
        let index = Index::open(&sub, options(exact_below)).expect("open");
        put(&index, &filtered_corpus());
        filter_suite(&index);
        drop(index);
        let index = Index::open(&sub, options(exact_below)).expect("reopen");
        filter_suite(&index);
    }
}

#[test]
fn group_change_on_replace_takes_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    put(&index, &filtered_corpus());
    // wiki:p becomes restricted to "legal": anonymous callers lose it everywhere.
    put(
        &index,
        &[DocSpec {
            groups: &["legal"],
            ..DocSpec::new("wiki:p", "shared topic public", 0)
        }],
    );
    check_filter(&index, Filter::default(), &["drive:q", "wiki:n"]);
}

#[test]
fn embedder_mismatch_on_reopen_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(&open(dir.path()), &corpus());
    let mut other = options(4);
    other.embedder.name = "another-model".into();
    match Index::open(dir.path(), other) {
        Err(e @ IndexError::EmbedderMismatch { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("another-model") && msg.contains("test-embedder"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected EmbedderMismatch, got {e}"),
        Ok(_) => panic!("expected EmbedderMismatch, index opened"),
    }
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
fn invalid_input_is_a_typed_error_and_stages_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    let rec = record(&DocSpec::new("wiki:v", "valid text", 0));
    let mut w = index.writer();
    let bad_dim = w.upsert(
        rec.clone(),
        vec![chunk("wiki:v", 0, "text", vec![1.0; DIM + 1])],
    );
    assert!(
        matches!(bad_dim, Err(IndexError::WrongDimension { got, expected, .. }) if got == DIM + 1 && expected == DIM)
    );
    let mut nan = axis_vector(0, 0.0);
    nan[3] = f32::NAN;
    assert!(matches!(
        w.upsert(rec.clone(), vec![chunk("wiki:v", 0, "text", nan)]),
        Err(IndexError::InvalidVector { .. })
    ));
    let mut inf = axis_vector(0, 0.0);
    inf[0] = f32::INFINITY;
    assert!(matches!(
        w.upsert(rec.clone(), vec![chunk("wiki:v", 0, "text", inf)]),
        Err(IndexError::InvalidVector { .. })
    ));
    assert!(matches!(
        w.upsert(
            rec.clone(),
            vec![chunk("wiki:v", 0, "text", vec![0.0; DIM])]
        ),
        Err(IndexError::InvalidVector { .. })
    ));
    assert!(matches!(
        w.upsert(
            rec.clone(),
            vec![chunk("wiki:v", 0, "  \n\t ", axis_vector(0, 0.0))]
        ),
        Err(IndexError::EmptyText { .. })
    ));
    assert!(matches!(
        w.upsert(
            rec.clone(),
            vec![chunk("wiki:other", 0, "text", axis_vector(0, 0.0))]
        ),
        Err(IndexError::InvalidDocument(_))
    ));
    let mut no_id = rec.clone();
    no_id.id.clear();
    assert!(matches!(
        w.upsert(no_id, Vec::new()),
        Err(IndexError::InvalidDocument(_))
    ));
    // One good chunk and one bad chunk: the whole document is rejected.
    assert!(
        w.upsert(
            rec,
            vec![
                chunk("wiki:v", 0, "good", axis_vector(0, 0.0)),
                chunk("wiki:v", 1, "bad", vec![0.0; DIM]),
            ],
        )
        .is_err()
    );
    assert_eq!(w.pending(), 0);
    assert_eq!(w.commit().expect("empty commit"), 0);

    // Queries are validated too.
    let q = |v: Vec<f32>| request("x", Some(v), SearchMode::Dense, Filter::default());
    assert!(matches!(
        index.search(&q(vec![1.0; 3])),
        Err(IndexError::WrongDimension { .. })
    ));
    assert!(matches!(
        index.search(&q(vec![0.0; DIM])),
        Err(IndexError::InvalidVector { .. })
    ));
    assert!(matches!(
        index.search(&request("x", None, SearchMode::Dense, Filter::default())),
        Err(IndexError::InvalidDocument(_))
    ));
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
