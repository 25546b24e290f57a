//! Prepared generations (the reindex quality gate's basis): written, searchable through the
//! prepared handle only, then published or discarded; a discarded or crashed one leaves the
//! index exactly as it was.

mod common;

use cairn_index::conformance::{MODES, corpus};
use cairn_index::{Filter, Index, Prepared, SearchMode, Staged};
use common::*;

fn prepared<'a>(staged: Staged<'a>) -> Prepared<'a> {
    match staged {
        Staged::Prepared(p) => p,
        Staged::Nothing(_) => panic!("expected a prepared generation"),
    }
}

/// Replaces `wiki:a` with new words and adds `wiki:z`, deletes `wiki:b`.
fn stage_changes(index: &Index) -> Prepared<'_> {
    let mut w = index.writer();
    w.upsert(
        record(&DocSpec::new("wiki:a", "aardvark eats termites", 0)),
        vec![chunk(
            "wiki:a",
            0,
            "aardvark eats termites",
            axis_vector(0, 0.1),
        )],
    )
    .expect("upsert a");
    w.upsert(
        record(&DocSpec::new("wiki:z", "zebra grazes on savanna", 7)),
        vec![chunk(
            "wiki:z",
            0,
            "zebra grazes on savanna",
            axis_vector(7, 0.0),
        )],
    )
    .expect("upsert z");
    w.delete("wiki:b");
    prepared(w.prepare().expect("prepare"))
}

fn ids(index: &Index, text: &str, axis: usize, mode: SearchMode) -> Vec<String> {
    doc_ids(
        index,
        &request(text, Some(axis_vector(axis, 0.0)), mode, Filter::default()),
    )
}

#[test]
fn a_prepared_generation_is_invisible_until_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    let base = put(&index, &corpus());
    let p = stage_changes(&index);
    assert_eq!(p.generation(), base + 1);
    for mode in MODES {
        // The serving generation still has the old words and `wiki:b`, not `wiki:z`.
        assert!(ids(&index, "aardvark burrows", 0, mode).contains(&"wiki:a".to_string()));
        assert!(ids(&index, "badger digs", 1, mode).contains(&"wiki:b".to_string()));
        assert!(!ids(&index, "zebra grazes", 7, mode).contains(&"wiki:z".to_string()));
        // The prepared one has the new state.
        let req = request(
            "zebra grazes",
            Some(axis_vector(7, 0.0)),
            mode,
            Filter::default(),
        );
        let hits = p.search(&req).expect("search prepared");
        assert_eq!(
            hits.first().map(|h| h.document.id.as_str()),
            Some("wiki:z"),
            "{mode:?}"
        );
        let req = request(
            "badger digs",
            Some(axis_vector(1, 0.0)),
            mode,
            Filter::default(),
        );
        assert!(
            !p.search(&req)
                .expect("search")
                .iter()
                .any(|h| h.document.id == "wiki:b")
        );
    }
    assert_eq!(index.generation(), base);
    assert_eq!(p.publish().expect("publish"), base + 1);
    assert_eq!(index.generation(), base + 1);
    for mode in MODES {
        assert_eq!(
            ids(&index, "zebra grazes", 7, mode)
                .first()
                .map(String::as_str),
            Some("wiki:z")
        );
        assert!(!ids(&index, "badger digs", 1, mode).contains(&"wiki:b".to_string()));
    }
    // Published means committed: it survives a reopen.
    drop(index);
    let index = open(dir.path());
    assert_eq!(index.generation(), base + 1);
    assert_eq!(index.stats().documents, corpus().len());
}

#[test]
fn a_discarded_generation_leaves_no_trace_in_any_retriever() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    let base = put(&index, &corpus());
    let bodies_before = index.stats().chunks;
    stage_changes(&index).discard().expect("discard");
    assert_eq!(index.generation(), base);

    // A later commit reloads BM25: the discarded words and documents must not come back,
    // and the replaced and deleted ones must still be found.
    put(&index, &[DocSpec::new("wiki:y", "yak climbs mountains", 6)]);
    for mode in MODES {
        assert!(
            !ids(&index, "zebra grazes savanna", 7, mode).contains(&"wiki:z".to_string()),
            "{mode:?}"
        );
        assert!(
            ids(&index, "badger digs setts", 1, mode).contains(&"wiki:b".to_string()),
            "{mode:?}"
        );
    }
    let bm25 = ids(&index, "termites", 0, SearchMode::Bm25);
    assert!(bm25.is_empty(), "discarded words still match: {bm25:?}");
    let bm25 = ids(&index, "aardvark burrows", 0, SearchMode::Bm25);
    assert_eq!(bm25.first().map(String::as_str), Some("wiki:a"));
    assert_eq!(index.stats().chunks, bodies_before + 1);

    // Reopening agrees (BM25's committed generation matches the store's, no rebuild needed).
    drop(index);
    let index = open(dir.path());
    assert_eq!(index.generation(), base + 1);
    assert!(ids(&index, "termites", 0, SearchMode::Bm25).is_empty());
    assert_eq!(index.stats().documents, corpus().len() + 1);
}

#[test]
fn dropping_a_prepared_generation_discards_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    let base = put(&index, &corpus());
    drop(stage_changes(&index));
    // The writer lock is free again and the index is unchanged.
    let next = put(&index, &[DocSpec::new("wiki:y", "yak climbs mountains", 6)]);
    assert_eq!(next, base + 1);
    assert!(ids(&index, "termites", 0, SearchMode::Bm25).is_empty());
}

#[test]
fn a_crash_while_prepared_reopens_at_the_serving_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = {
        let index = open(dir.path());
        let base = put(&index, &corpus());
        // A crash: neither published nor discarded, and no destructor runs.
        std::mem::forget(stage_changes(&index));
        base
    };
    // The forgotten writer lock lived in the leaked index; a new process opens afresh.
    let index = open(dir.path());
    assert_eq!(index.generation(), base);
    assert_eq!(index.stats().documents, corpus().len());
    for mode in MODES {
        assert!(!ids(&index, "zebra grazes", 7, mode).contains(&"wiki:z".to_string()));
        assert!(ids(&index, "badger digs", 1, mode).contains(&"wiki:b".to_string()));
    }
    assert!(ids(&index, "termites", 0, SearchMode::Bm25).is_empty());
}
