//! Persisted HNSW graphs: reloaded at open when intact, rebuilt (never trusted, never a process
//! exit inside hnsw_rs) when a file is missing, truncated or garbled.

mod common;

use std::fs;
use std::path::Path;

use cairn_index::{EmbedderInfo, Filter, Index, IndexOptions, SearchMode};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VDIM: usize = 16;
const N: usize = 1_200;

fn opts() -> IndexOptions {
    let mut o = IndexOptions::new(EmbedderInfo {
        name: "graphs".into(),
        version: "1".into(),
        dimension: VDIM,
    });
    o.vectors.exact_below = 300;
    o
}

fn vectors() -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(11);
    (0..N + 20)
        .map(|_| (0..VDIM).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect()
}

fn build(dir: &Path, data: &[Vec<f32>]) {
    let index = Index::open(dir, opts()).expect("open");
    for half in [0..N / 2, N / 2..N] {
        let mut w = index.writer();
        for i in half {
            let id = format!("v:{i}");
            w.upsert(
                record(&DocSpec::new(&id, "point", 0)),
                vec![chunk(&id, 0, "point", data[i].clone())],
            )
            .expect("upsert");
        }
        w.commit().expect("commit");
    }
    let mut w = index.writer();
    for i in 0..20 {
        w.delete(&format!("v:{}", i * 7));
    }
    w.commit().expect("commit deletes");
    assert_eq!(index.stats().vector_segments, 2);
}

fn results(index: &Index, queries: &[Vec<f32>]) -> Vec<Vec<String>> {
    queries
        .iter()
        .map(|q| {
            let mut req = request("", Some(q.clone()), SearchMode::Dense, Filter::default());
            req.k = 10;
            index
                .search(&req)
                .expect("search")
                .into_iter()
                .map(|h| h.chunk_id)
                .collect()
        })
        .collect()
}

fn graph_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("graphs"))
        .expect("graphs dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn exact(index: &Index, queries: &[Vec<f32>]) -> Vec<Vec<String>> {
    queries
        .iter()
        .map(|q| {
            index
                .exact_vector_search(q, 10, &Filter::default())
                .expect("exact")
                .into_iter()
                .map(|(c, _)| c)
                .collect()
        })
        .collect()
}

fn recall(got: &[Vec<String>], truth: &[Vec<String>]) -> f64 {
    let hit: usize = got
        .iter()
        .zip(truth)
        .map(|(g, t)| t.iter().filter(|c| g.contains(c)).count())
        .sum();
    hit as f64 / truth.iter().map(Vec::len).sum::<usize>() as f64
}

#[test]
fn graphs_are_reloaded_not_rebuilt() {
    let data = vectors();
    let queries = &data[N..];
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), &data);
    let before = {
        let index = Index::open(dir.path(), opts()).expect("open");
        assert_eq!(index.graphs_loaded(), 2);
        results(&index, queries)
    };
    // Exactly two dumps (graph + data each), nothing left over from intermediate states.
    assert_eq!(graph_files(dir.path()).len(), 4);
    let index = Index::open(dir.path(), opts()).expect("reopen");
    assert_eq!(index.graphs_loaded(), 2);
    assert_eq!(results(&index, queries), before);
    let truth = exact(&index, queries);
    assert!(recall(&before, &truth) >= 0.95);
    drop(index);
    // The scan path reads the reloaded graphs' own rows (int8, then f32 for the best few): it
    // must give exactly the oracle's top 10, tombstones left out.
    let mut scan = opts();
    scan.vectors.exact_filter_fraction = 1.01;
    let index = Index::open(dir.path(), scan).expect("reopen for scans");
    assert_eq!(index.graphs_loaded(), 2);
    assert_eq!(results(&index, queries), truth);
    for hits in &before {
        for c in hits {
            let i: usize = c["v:".len()..c.len() - 2].parse().expect("id");
            assert!(
                !(i.is_multiple_of(7) && i / 7 < 20),
                "deleted {c} came back"
            );
        }
    }
}

#[test]
fn damaged_or_missing_graph_files_are_rebuilt() {
    let data = vectors();
    let queries = &data[N..];
    let root = tempfile::tempdir().expect("tempdir");
    let pristine = root.path().join("pristine");
    build(&pristine, &data);
    let truth = {
        let index = Index::open(&pristine, opts()).expect("open");
        exact(&index, queries)
    };
    let files = graph_files(&pristine);
    for (i, file) in files.iter().enumerate() {
        let name = file.file_name().expect("name").to_owned();
        for how in 0..3 {
            let copy = root.path().join(format!("case-{i}-{how}"));
            fs::create_dir_all(copy.join("graphs")).expect("mkdir");
            copy_tree(&pristine.join("bm25"), &copy.join("bm25"));
            fs::copy(pristine.join("store.redb"), copy.join("store.redb")).expect("copy store");
            for f in &files {
                fs::copy(f, copy.join("graphs").join(f.file_name().expect("name"))).expect("copy");
            }
            let target = copy.join("graphs").join(&name);
            let mut bytes = fs::read(&target).expect("read");
            match how {
                0 => bytes.truncate(bytes.len() / 2),
                1 => {
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x5a;
                }
                _ => bytes.clear(),
            }
            if how == 2 {
                fs::remove_file(&target).expect("remove");
            } else {
                fs::write(&target, bytes).expect("write");
            }
            let index = Index::open(&copy, opts()).expect("open with a damaged graph");
            assert_eq!(index.graphs_loaded(), 1, "{name:?} case {how}");
            assert!(recall(&results(&index, queries), &truth) >= 0.95);
            drop(index);
            // The rebuilt graph was persisted again: the next open loads everything.
            let index = Index::open(&copy, opts()).expect("reopen");
            assert_eq!(index.graphs_loaded(), 2, "{name:?} case {how} after repair");
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read_dir").flatten() {
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

#[test]
fn graph_segments_of_similar_size_are_merged_without_their_tombstones() {
    let data = vectors();
    let queries = &data[N..];
    let dir = tempfile::tempdir().expect("tempdir");
    let deleted = |i: usize| i.is_multiple_of(11) && i < N / 2;
    let mut merging = opts();
    merging.vectors.merge_factor = 4;
    let before = {
        let index = Index::open(dir.path(), merging.clone()).expect("open");
        // Four commits of 300 rows: each is one graph (exact_below = 300) until the fourth,
        // which makes a tier of four and merges them. Deletes in between leave tombstones.
        for (c, part) in data[..N].chunks(N / 4).enumerate() {
            let mut w = index.writer();
            for (j, v) in part.iter().enumerate() {
                let id = format!("v:{}", c * (N / 4) + j);
                w.upsert(
                    record(&DocSpec::new(&id, "point", 0)),
                    vec![chunk(&id, 0, "point", v.clone())],
                )
                .expect("upsert");
            }
            w.commit().expect("commit");
            if c == 1 {
                let mut w = index.writer();
                for i in (0..N).filter(|i| deleted(*i)) {
                    w.delete(&format!("v:{i}"));
                }
                w.commit().expect("commit deletes");
                let s = index.stats();
                assert_eq!((s.vector_segments, s.tombstones), (2, 55));
            }
            if c == 2 {
                assert_eq!(index.stats().vector_segments, 3);
            }
        }
        let s = index.stats();
        assert_eq!((s.vector_segments, s.tombstones, s.chunks), (1, 0, N - 55));
        let got = results(&index, queries);
        let truth = exact(&index, queries);
        assert!(recall(&got, &truth) >= 0.95);
        for hits in &got {
            for c in hits {
                let i: usize = c["v:".len()..c.len() - 2].parse().expect("id");
                assert!(!deleted(i), "deleted {c} came back");
            }
        }
        got
    };
    // Only the merged graph is on disk, and reopening loads it.
    assert_eq!(graph_files(dir.path()).len(), 2);
    let index = Index::open(dir.path(), merging).expect("reopen");
    assert_eq!(index.graphs_loaded(), 1);
    assert_eq!(results(&index, queries), before);
}
