//! A store write that makes no progress is an error after `stall`, never a silent hang: the
//! caller gets `IndexError::Stalled`, `Index::health` reports it (so a readiness probe can
//! answer 503), searches keep serving, and once the stuck write ends the index is healthy and
//! the next commit succeeds.

mod common;

use std::time::{Duration, Instant};

use cairn_index::{Filter, Health, Index, IndexError, SearchMode};
use common::*;

fn upsert(index: &Index, id: &str, text: &str, axis: usize) -> cairn_index::Result<u64> {
    let mut w = index.writer();
    w.upsert(
        record(&DocSpec::new(id, text, axis)),
        vec![chunk(id, 0, text, axis_vector(axis, 0.0))],
    )?;
    w.commit()
}

fn found(index: &Index, word: &str) -> Vec<String> {
    doc_ids(
        index,
        &request(word, None, SearchMode::Bm25, Filter::default()),
    )
}

#[test]
fn a_stalled_store_write_fails_with_stalled_and_the_index_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stall = Duration::from_millis(600);
    let mut o = options(4);
    o.stall = stall;
    let index = Index::open(dir.path(), o.clone()).expect("open");
    assert_eq!(
        upsert(&index, "wiki:a", "aardvark baseline", 0).expect("commit"),
        1
    );
    assert_eq!(index.health(), Health::Healthy);

    // The next store write hangs for 4 s inside its commit.
    index.inject_write_stall(Duration::from_secs(4));
    let started = Instant::now();
    let err = upsert(&index, "wiki:s", "stalled sloth", 1).expect_err("a stalled commit");
    let waited = started.elapsed();
    assert!(matches!(err, IndexError::Stalled { .. }), "{err}");
    assert_eq!(err.code(), "store_stalled");
    assert!(err.to_string().contains("no progress"), "{err}");
    assert!(
        waited >= stall && waited < Duration::from_secs(3),
        "gave up after {waited:?}"
    );
    match index.health() {
        Health::Stalled { operation, .. } => assert!(operation.contains("commit"), "{operation}"),
        Health::Healthy => panic!("health is healthy during a stall"),
    }
    // Readers are not blocked: the last published generation keeps serving.
    assert_eq!(found(&index, "aardvark"), ["wiki:a"]);
    assert_eq!(index.generation(), 1);

    // A second commit while the first is stuck fails at once instead of queueing behind it.
    let started = Instant::now();
    let err = upsert(&index, "wiki:t", "tapir", 2).expect_err("stuck behind a stall");
    assert!(matches!(err, IndexError::Stalled { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // Once the stuck write ends the index is healthy again...
    let deadline = Instant::now() + Duration::from_secs(20);
    while index.health() != Health::Healthy {
        assert!(Instant::now() < deadline, "still {:?}", index.health());
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...and the next commit succeeds. The stalled commit was stuck inside redb's commit, so
    // it landed after all: the index notices the store moved and reloads it before committing.
    let g = upsert(&index, "wiki:b", "badger after", 3).expect("commit after the stall");
    assert_eq!(g, 3);
    assert_eq!(found(&index, "badger"), ["wiki:b"]);
    assert_eq!(found(&index, "sloth"), ["wiki:s"]);
    assert_eq!(found(&index, "tapir"), Vec::<String>::new());
    assert_eq!(index.stats().documents, 3);

    // A restart sees the same.
    drop(index);
    let index = Index::open(dir.path(), o).expect("reopen");
    assert_eq!(index.generation(), 3);
    assert_eq!(found(&index, "sloth"), ["wiki:s"]);
    assert_eq!(found(&index, "aardvark"), ["wiki:a"]);
}

#[test]
fn a_write_queued_behind_a_slow_one_is_not_reported_as_stalled_while_it_progresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = options(4);
    o.stall = Duration::from_secs(5);
    let index = Index::open(dir.path(), o).expect("open");
    // A stall shorter than the limit is only slow.
    index.inject_write_stall(Duration::from_millis(300));
    assert_eq!(
        upsert(&index, "wiki:a", "aardvark", 0).expect("slow commit"),
        1
    );
    assert_eq!(index.health(), Health::Healthy);
    assert_eq!(found(&index, "aardvark"), ["wiki:a"]);
}

#[test]
fn health_is_reported_through_the_backend_trait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = options(4);
    o.stall = Duration::from_millis(300);
    let index = Index::open(dir.path(), o).expect("open");
    let backend: &dyn cairn_index::IndexBackend = &index;
    assert_eq!(backend.health(), Health::Healthy);
    index.inject_write_stall(Duration::from_secs(2));
    assert!(upsert(&index, "wiki:a", "aardvark", 0).is_err());
    assert!(matches!(backend.health(), Health::Stalled { .. }));
}
