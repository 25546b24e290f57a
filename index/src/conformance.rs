//! The behaviour every [`IndexBackend`] must show, as test functions any backend's test suite
//! runs through [`conformance_tests!`](crate::conformance_tests): deletes and replacements
//! never come back through any retriever, filters and deny-by-default access groups, input
//! validation, the score breakdown, and the document reads ingest relies on.
//!
//! Compiled only with the `conformance` feature (test builds); the functions panic on a
//! broken contract, like any test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};

use crate::backend::IndexBackend;
use crate::types::{
    ChunkInput, ChunkRecord, DocumentRecord, EmbedderInfo, Filter, SearchMode, SearchRequest,
    TimeRange,
};
use crate::{Fusion, IndexError};

/// Dimension of the test vectors.
pub const DIM: usize = 8;

/// Opens a backend over one test's storage; calling it again reopens the same data (a
/// restart). Dropping it releases the storage.
pub type Opener = Box<dyn Fn() -> Box<dyn IndexBackend>>;

pub fn embedder() -> EmbedderInfo {
    EmbedderInfo {
        name: "test-embedder".into(),
        version: "1".into(),
        dimension: DIM,
    }
}

/// Fusion the conformance checks expect a backend to be opened with (the default RRF).
pub fn fusion() -> Fusion {
    Fusion::default()
}

/// A unit-ish vector pointing mostly along axis `axis`, nudged by `salt`.
pub fn axis_vector(axis: usize, salt: f32) -> Vec<f32> {
    let mut v = vec![0.05f32; DIM];
    v[axis % DIM] = 1.0;
    v[(axis + 1) % DIM] += salt;
    v
}

pub fn time(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, day, 12, 0, 0)
        .single()
        .expect("valid date")
}

/// A one-chunk test document.
pub struct DocSpec<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub text: &'a str,
    pub axis: usize,
    pub groups: &'a [&'a str],
    pub metadata: &'a [(&'a str, &'a str)],
    pub day: Option<u32>,
}

impl<'a> DocSpec<'a> {
    pub fn new(id: &'a str, text: &'a str, axis: usize) -> DocSpec<'a> {
        DocSpec {
            id,
            source: "wiki",
            text,
            axis,
            groups: &[],
            metadata: &[],
            day: None,
        }
    }
}

pub fn record(spec: &DocSpec<'_>) -> DocumentRecord {
    DocumentRecord {
        id: spec.id.to_string(),
        source: spec.source.to_string(),
        external_id: spec.id.to_string(),
        title: format!("title of {}", spec.id),
        url: None,
        updated_at: spec.day.map(time),
        metadata: spec
            .metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        access_groups: spec.groups.iter().map(|g| g.to_string()).collect(),
        content_hash: format!("hash-{}", spec.text.len()),
    }
}

pub fn chunk(doc_id: &str, ordinal: u32, text: &str, vector: Vec<f32>) -> ChunkInput {
    ChunkInput {
        chunk: ChunkRecord {
            doc_id: doc_id.to_string(),
            ordinal,
            text: text.to_string(),
            heading_path: Vec::new(),
            page: None,
            char_start: 0,
            char_end: text.chars().count(),
        },
        vector,
    }
}

/// Upserts one single-chunk document per spec and commits; returns the generation.
pub fn put(index: &dyn IndexBackend, specs: &[DocSpec<'_>]) -> u64 {
    let mut w = index.writer().expect("writer");
    for s in specs {
        let c = chunk(s.id, 0, s.text, axis_vector(s.axis, 0.0));
        w.upsert(record(s), vec![c]).expect("upsert");
    }
    w.commit().expect("commit")
}

pub fn request(
    text: &str,
    vector: Option<Vec<f32>>,
    mode: SearchMode,
    filter: Filter,
) -> SearchRequest {
    SearchRequest {
        text: text.to_string(),
        vector,
        k: 50,
        mode,
        filter,
        snippets: false,
    }
}

/// Distinct document ids of a search, in rank order.
pub fn doc_ids(index: &dyn IndexBackend, req: &SearchRequest) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in index.search(req).expect("search") {
        if !out.contains(&h.document.id) {
            out.push(h.document.id);
        }
    }
    out
}

pub const MODES: [SearchMode; 3] = [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid];

/// Every retrieval path, with and without filters, must agree that `gone` does not exist.
pub fn assert_absent(index: &dyn IndexBackend, text: &str, axis: usize, gone: &str) {
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
}

pub fn corpus() -> Vec<DocSpec<'static>> {
    vec![
        DocSpec::new("wiki:a", "aardvark burrows at night", 0),
        DocSpec::new("wiki:b", "badger digs setts in woodland", 1),
        DocSpec::new("wiki:c", "capybara swims in rivers", 2),
        DocSpec::new("wiki:d", "dormouse sleeps through winter", 3),
        DocSpec::new("wiki:e", "echidna lays eggs", 4),
        DocSpec::new("wiki:f", "ferret hunts rabbits", 5),
    ]
}

pub fn filtered_corpus() -> Vec<DocSpec<'static>> {
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
pub fn check_filter(index: &dyn IndexBackend, filter: Filter, expected: &[&str]) {
    let want = sorted(expected.iter().map(|s| s.to_string()).collect());
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

/// Sources, metadata, time ranges and access groups, alone and combined, in every mode.
pub fn filter_suite(index: &dyn IndexBackend) {
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

/// Checks that an open with an embedder named `another-model` was refused, naming both it and
/// the recorded `test-embedder`.
pub fn assert_embedder_mismatch<T>(opened: Result<T, IndexError>) {
    match opened {
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
}

pub fn deleted_document_is_never_returned_again(open: &Opener) {
    let index = open();
    put(&*index, &corpus());
    let req = request(
        "aardvark",
        Some(axis_vector(0, 0.0)),
        SearchMode::Hybrid,
        Filter::default(),
    );
    assert_eq!(
        doc_ids(&*index, &req).first().map(String::as_str),
        Some("wiki:a")
    );

    let mut w = index.writer().expect("writer");
    w.delete("wiki:a");
    w.commit().expect("commit delete");
    assert_absent(&*index, "aardvark burrows", 0, "wiki:a");
    assert!(index.document("wiki:a").expect("doc").is_none());
    assert!(index.content_hash("wiki:a").expect("hash").is_none());
    assert!(index.chunks_of("wiki:a").expect("chunks").is_empty());

    // Further commits (merges, graph rebuilds) must not resurrect it, nor must a reopen.
    for i in 0..6 {
        let id = format!("wiki:x{i}");
        let text = format!("filler number {i}");
        let mut w = index.writer().expect("writer");
        w.upsert(
            record(&DocSpec::new(&id, &text, i)),
            vec![chunk(&id, 0, &text, axis_vector(i, 0.3))],
        )
        .expect("upsert");
        w.commit().expect("commit");
        assert_absent(&*index, "aardvark burrows", 0, "wiki:a");
    }
    drop(index);
    let index = open();
    assert_absent(&*index, "aardvark burrows", 0, "wiki:a");
}

pub fn replaced_document_returns_only_its_new_version(open: &Opener) {
    let index = open();
    put(&*index, &corpus());
    // Replace b: new words, new direction.
    put(
        &*index,
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
    let rec = record(&DocSpec::new("wiki:c", "capybara", 2));
    let mut w = index.writer().expect("writer");
    w.upsert(
        rec.clone(),
        vec![
            chunk("wiki:c", 0, "capybara first part", axis_vector(2, 0.0)),
            chunk("wiki:c", 1, "capybara second part", axis_vector(2, 0.1)),
        ],
    )
    .expect("upsert");
    w.commit().expect("commit");
    let mut w = index.writer().expect("writer");
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

pub fn upsert_then_delete_in_one_writer_deletes(open: &Opener) {
    let index = open();
    put(&*index, &corpus());
    let mut w = index.writer().expect("writer");
    w.upsert(
        record(&DocSpec::new("wiki:d", "dormouse again", 3)),
        vec![chunk("wiki:d", 0, "dormouse again", axis_vector(3, 0.0))],
    )
    .expect("upsert");
    w.delete("wiki:d");
    assert_eq!(w.pending(), 1);
    w.commit().expect("commit");
    assert_absent(&*index, "dormouse", 3, "wiki:d");
}

pub fn filters_and_access_groups_apply_in_every_mode(open: &Opener) {
    let index = open();
    put(&*index, &filtered_corpus());
    filter_suite(&*index);
    drop(index);
    filter_suite(&*open());
}

pub fn group_change_on_replace_takes_effect(open: &Opener) {
    let index = open();
    put(&*index, &filtered_corpus());
    // wiki:p becomes restricted to "legal": anonymous callers lose it everywhere.
    put(
        &*index,
        &[DocSpec {
            groups: &["legal"],
            ..DocSpec::new("wiki:p", "shared topic public", 0)
        }],
    );
    check_filter(&*index, Filter::default(), &["drive:q", "wiki:n"]);
}

/// Filters and access groups select before the top-k cut: the one document a filter allows
/// is found even when more than `k` others outrank it in every retriever.
pub fn filters_find_a_document_ranked_below_k_unfiltered_ones(open: &Opener) {
    let index = open();
    // More than the embedded index's 100 candidates per retriever, so a filter applied after
    // that cut would find nothing.
    let ids: Vec<String> = (0..300).map(|i| format!("wiki:popular{i}")).collect();
    let mut specs: Vec<DocSpec<'_>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| DocSpec {
            metadata: &[("lang", "en")],
            ..DocSpec::new(id, "shared topic shared topic popular", i % 2)
        })
        .collect();
    specs.push(DocSpec {
        source: "drive",
        groups: &["hr"],
        metadata: &[("lang", "de")],
        ..DocSpec::new("drive:rare", "shared topic rare", 4)
    });
    put(&*index, &specs);
    let search = |filter: Filter, mode: SearchMode| {
        let mut req = request(
            "shared topic popular",
            Some(axis_vector(0, 0.0)),
            mode,
            filter,
        );
        req.k = 3;
        doc_ids(&*index, &req)
    };
    let hr = || vec!["hr".to_string()];
    for mode in MODES {
        let by_source = Filter {
            sources: vec!["drive".into()],
            caller_groups: hr(),
            ..Default::default()
        };
        assert_eq!(search(by_source, mode), ["drive:rare"], "{mode:?}: source");
        let by_metadata = Filter {
            metadata: [("lang".to_string(), "de".to_string())].into(),
            caller_groups: hr(),
            ..Default::default()
        };
        assert_eq!(
            search(by_metadata, mode),
            ["drive:rare"],
            "{mode:?}: metadata"
        );
        // Without the group the same filter finds nothing: deny by default.
        let no_group = Filter {
            sources: vec!["drive".into()],
            ..Default::default()
        };
        assert!(search(no_group, mode).is_empty(), "{mode:?}: no group");
    }
}

pub fn invalid_input_is_a_typed_error_and_stages_nothing(open: &Opener) {
    let index = open();
    let rec = record(&DocSpec::new("wiki:v", "valid text", 0));
    let mut w = index.writer().expect("writer");
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

/// Hybrid hits carry both rankings and their fused score (the configured fusion); single-retriever hits carry only
/// their own side, with the retriever's score as the hit's score; ranks run 1, 2, 3...
pub fn score_breakdown_has_the_same_shape(open: &Opener) {
    let index = open();
    put(&*index, &corpus());
    let hybrid = request(
        "aardvark burrows",
        Some(axis_vector(0, 0.0)),
        SearchMode::Hybrid,
        Filter::default(),
    );
    let hits = index.search(&hybrid).expect("search");
    assert_eq!(hits[0].document.id, "wiki:a");
    let b = &hits[0].breakdown;
    assert_eq!((b.bm25_rank, b.vector_rank), (Some(1), Some(1)));
    assert!(b.bm25_score.expect("bm25 score") > 0.0);
    assert!((b.vector_similarity.expect("similarity") - 1.0).abs() < 0.05);
    // The top hit is first on both sides: rank 1 twice for RRF, the best normalised score
    // (1.0) twice for the convex combination.
    let expected = match fusion() {
        Fusion::Rrf {
            k,
            bm25_weight,
            vector_weight,
        } => bm25_weight / (k + 1.0) + vector_weight / (k + 1.0),
        Fusion::Convex { alpha } => alpha + (1.0 - alpha),
    };
    assert!((b.fused - expected).abs() < 1e-6, "{b:?}");
    assert!((hits[0].score - b.fused).abs() < 1e-6);
    // Vector-only hits of the hybrid list have no BM25 side.
    assert!(
        hits.iter()
            .any(|h| h.breakdown.bm25_rank.is_none() && h.breakdown.vector_rank.is_some())
    );
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    for (mode, is_bm25) in [(SearchMode::Bm25, true), (SearchMode::Dense, false)] {
        let mut req = hybrid.clone();
        req.mode = mode;
        let hits = index.search(&req).expect("search");
        assert!(!hits.is_empty(), "{mode:?}");
        for (i, h) in hits.iter().enumerate() {
            let b = &h.breakdown;
            if is_bm25 {
                assert_eq!((b.bm25_rank, b.vector_rank), (Some(i + 1), None));
                assert_eq!(b.bm25_score, Some(h.score));
            } else {
                assert_eq!((b.vector_rank, b.bm25_rank), (Some(i + 1), None));
                assert_eq!(b.vector_similarity, Some(h.score));
            }
        }
    }
    // Snippets mark the matched words and escape the text.
    let mut req = hybrid.clone();
    req.snippets = true;
    req.mode = SearchMode::Bm25;
    let hits = index.search(&req).expect("search");
    let snippet = hits[0].snippet.as_deref().expect("snippet");
    assert!(snippet.contains("<mark>aardvark</mark>"), "{snippet}");
}

/// Word ranking weighs a word by its rarity across the index (BM25's inverse document
/// frequency): a chunk matching the rare query word once outranks one that repeats a word
/// every chunk has, and the repeated word still counts (term frequency) among chunks that
/// share it. A cover-density ranking without corpus statistics fails the first half.
pub fn word_ranking_weighs_rare_words_above_common_ones(open: &Opener) {
    let index = open();
    put(
        &*index,
        &[
            DocSpec::new("wiki:r1", "quarterly report report report for the board", 0),
            DocSpec::new("wiki:r2", "monthly report for the team", 1),
            DocSpec::new("wiki:r3", "yearly report on hiring", 2),
            DocSpec::new("wiki:r4", "weekly report on incidents", 3),
            DocSpec::new("wiki:r5", "travel report from the offsite", 4),
            DocSpec::new("wiki:z", "zebra crossing near the office", 5),
        ],
    );
    let req = request("report zebra", None, SearchMode::Bm25, Filter::default());
    let ids = doc_ids(&*index, &req);
    assert_eq!(ids.len(), 6, "every chunk matches one query word: {ids:?}");
    assert_eq!(ids[0], "wiki:z", "the rare word ranks first: {ids:?}");
    assert_eq!(ids[1], "wiki:r1", "three matches beat one: {ids:?}");
    // Removing the only chunk with the rare word changes nothing else.
    let mut w = index.writer().expect("writer");
    w.delete("wiki:z");
    w.commit().expect("commit");
    let ids = doc_ids(&*index, &req);
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(ids[0], "wiki:r1", "{ids:?}");
}

/// Reads the ingest pipeline relies on: hashes, ids by source, ordered chunks, counts and
/// the generation sequence across a reopen.
pub fn document_reads_and_generations(open: &Opener) {
    let index = open();
    assert_eq!(index.generation().expect("generation"), 0);
    let g1 = put(&*index, &filtered_corpus());
    let mut w = index.writer().expect("writer");
    let rec = record(&DocSpec::new("wiki:m", "multi", 0));
    w.upsert(
        rec.clone(),
        vec![
            chunk("wiki:m", 1, "second part", axis_vector(1, 0.0)),
            chunk("wiki:m", 0, "first part", axis_vector(0, 0.0)),
        ],
    )
    .expect("upsert");
    let g2 = w.commit().expect("commit");
    assert_eq!(g2, g1 + 1);
    assert_eq!(index.document("wiki:m").expect("doc"), Some(rec.clone()));
    assert_eq!(
        index.content_hash("wiki:m").expect("hash"),
        Some(rec.content_hash)
    );
    let texts: Vec<String> = index
        .chunks_of("wiki:m")
        .expect("chunks")
        .into_iter()
        .map(|c| c.text)
        .collect();
    assert_eq!(texts, ["first part", "second part"]);
    let mut drive = index.document_ids("drive").expect("ids");
    drive.sort();
    assert_eq!(drive, ["drive:h", "drive:q"]);
    let stats = index.stats().expect("stats");
    assert_eq!((stats.documents, stats.chunks), (6, 7));
    assert_eq!(stats.generation, g2);
    assert_eq!(&stats.embedder, index.embedder());
    drop(index);
    let index = open();
    assert_eq!(index.generation().expect("generation"), g2);
    assert_eq!(put(&*index, &corpus()[..1]), g2 + 1);
}

/// Generates one `#[test]` per conformance check. `$opener` is an expression of type
/// `Option<Opener>` evaluated once per test; `None` skips the test (the expression should say
/// why, loudly).
#[macro_export]
macro_rules! conformance_tests {
    ($opener:expr) => {
        $crate::conformance_tests!(@each $opener; #[test]);
    };
    // For backends that need a server: the tests are listed as ignored with the reason and
    // run with `--include-ignored`.
    ($opener:expr, ignore = $reason:literal) => {
        $crate::conformance_tests!(@each $opener; #[test] #[ignore = $reason]);
    };
    (@each $opener:expr; $(#[$attr:meta])+) => {
        $crate::conformance_tests!(@each $opener; [$(#[$attr])+];
            deleted_document_is_never_returned_again,
            replaced_document_returns_only_its_new_version,
            upsert_then_delete_in_one_writer_deletes,
            filters_and_access_groups_apply_in_every_mode,
            group_change_on_replace_takes_effect,
            filters_find_a_document_ranked_below_k_unfiltered_ones,
            invalid_input_is_a_typed_error_and_stages_nothing,
            score_breakdown_has_the_same_shape,
            word_ranking_weighs_rare_words_above_common_ones,
            document_reads_and_generations
        );
    };
    // The attributes travel as one bracketed token tree, so each test can repeat all of them.
    (@each $opener:expr; $attrs:tt; $($name:ident),+) => {
        $( $crate::conformance_tests!(@one $opener; $attrs; $name); )+
    };
    (@one $opener:expr; [$(#[$attr:meta])+]; $name:ident) => {
        $(#[$attr])+
        fn $name() {
            let opener: Option<$crate::conformance::Opener> = $opener;
            if let Some(open) = opener {
                $crate::conformance::$name(&open);
            }
        }
    };
}
