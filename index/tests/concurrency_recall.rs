//! Readers searching while a writer commits, and HNSW recall against the exact scan.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_index::{Filter, Index, IndexOptions, SearchMode};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Each commit replaces every document with a new "round" and all docs of a round say so in
/// their text, metadata and vector; a reader must always see exactly one round, complete.
#[test]
fn readers_during_commits_see_whole_generations() {
    const DOCS: usize = 40;
    const ROUNDS: usize = 12;
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Arc::new(Index::open(dir.path(), options(16)).expect("open"));
    let write_round = |index: &Index, round: usize| {
        let mut w = index.writer();
        for d in 0..DOCS {
            let id = format!("wiki:{d}");
            let text = format!("round{round} common words");
            let r = round.to_string();
            let spec = DocSpec {
                metadata: &[("round", r.as_str())],
                ..DocSpec::new(&id, &text, d)
            };
            w.upsert(
                record(&spec),
                vec![chunk(&id, 0, &text, axis_vector(d, round as f32 * 0.01))],
            )
            .expect("upsert");
        }
        w.commit().expect("commit");
    };
    write_round(&index, 0);

    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..3 {
        let index = index.clone();
        let done = done.clone();
        readers.push(std::thread::spawn(move || {
            let mut searches = 0usize;
            let mut mode_i = t;
            while !done.load(Ordering::Relaxed) || searches < 20 {
                let mode = [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid][mode_i % 3];
                mode_i += 1;
                let mut req = request(
                    "common words",
                    Some(vec![1.0; DIM]),
                    mode,
                    Filter::default(),
                );
                req.k = DOCS * 2;
                let hits = index.search(&req).expect("search during commit");
                if mode == SearchMode::Dense {
                    // The graph is approximate: asked for every vector it may miss a few. The
                    // generation checks below are what this test is about.
                    assert!(
                        hits.len() * 100 >= DOCS * 97,
                        "{mode:?}: {} hits",
                        hits.len()
                    );
                } else {
                    assert_eq!(
                        hits.len(),
                        DOCS,
                        "{mode:?}: a partial generation was visible"
                    );
                }
                let round = &hits[0].document.metadata["round"];
                for h in &hits {
                    assert_eq!(&h.document.metadata["round"], round, "mixed generations");
                    assert!(
                        h.chunk.text.starts_with(&format!("round{round} ")),
                        "body from another generation"
                    );
                }
                let mut ids: Vec<_> = hits.iter().map(|h| h.document.id.clone()).collect();
                ids.sort();
                ids.dedup();
                assert_eq!(ids.len(), hits.len(), "a document appeared twice");
                searches += 1;
            }
            searches
        }));
    }
    for round in 1..=ROUNDS {
        write_round(&index, round);
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        let n = r.join().expect("reader thread panicked");
        assert!(n >= 20);
    }
    assert_eq!(index.generation(), ROUNDS as u64 + 1);
}

/// Clustered unit vectors: `clusters` random centres, points scattered around them.
fn clustered(rng: &mut StdRng, n: usize, dim: usize, clusters: usize) -> Vec<Vec<f32>> {
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    (0..n)
        .map(|_| {
            let c = &centres[rng.random_range(0..clusters)];
            c.iter()
                .map(|x| x + rng.random_range(-0.35f32..0.35))
                .collect()
        })
        .collect()
}

#[test]
fn hnsw_recall_at_10_matches_exact_scan() {
    const N: usize = 4_000;
    const VDIM: usize = 32;
    let mut rng = StdRng::seed_from_u64(7);
    let data = clustered(&mut rng, N + 200, VDIM, 40);
    let (corpus, queries) = data.split_at(N);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = IndexOptions::new(cairn_index::EmbedderInfo {
        name: "recall".into(),
        version: "1".into(),
        dimension: VDIM,
    });
    opts.vectors.exact_below = 500;
    // Keep the graph path even for the filtered queries below.
    opts.vectors.exact_filter_fraction = 0.0;
    let index = Index::open(dir.path(), opts).expect("open");
    // Two commits: one big graph segment and a second one, as after incremental ingest.
    for (part, range) in [(0, 0..N / 2), (1, N / 2..N)] {
        let mut w = index.writer();
        for i in range {
            let id = format!("vec:{i}");
            let src = if i % 2 == 0 { "even" } else { "odd" };
            let spec = DocSpec {
                source: src,
                ..DocSpec::new(&id, "vector", 0)
            };
            w.upsert(
                record(&spec),
                vec![chunk(&id, 0, "vector", corpus[i].clone())],
            )
            .expect("upsert");
        }
        assert_eq!(w.commit().expect("commit"), part + 1);
    }
    assert!(index.stats().vector_segments >= 1);
    let even = Filter {
        sources: vec!["even".into()],
        ..Default::default()
    };
    for filter in [Filter::default(), even] {
        let mut found = 0usize;
        for q in queries {
            let mut req = request("", Some(q.clone()), SearchMode::Dense, filter.clone());
            req.k = 10;
            let got: Vec<String> = index
                .search(&req)
                .expect("search")
                .into_iter()
                .map(|h| h.chunk_id)
                .collect();
            let truth = index.exact_vector_search(q, 10, &filter).expect("exact");
            assert_eq!(truth.len(), 10);
            found += truth.iter().filter(|(c, _)| got.contains(c)).count();
        }
        let recall = found as f64 / (queries.len() * 10) as f64;
        assert!(recall >= 0.95, "recall@10 {recall:.3} with {filter:?}");
    }
}
