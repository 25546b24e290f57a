//! The embedded index against the PostgreSQL one on the same synthetic corpus, in one process:
//! the time to commit the whole corpus, and hybrid search latency (k = 10) without a filter and
//! with a source filter keeping a tenth of the chunks.
//!
//! Corpus: `CAIRN_BENCH_N` one-chunk documents (default 10,000) of 384-d vectors around 50
//! centres (fixed seed), with words drawn from each centre's vocabulary, spread over 10 sources.
//! Needs `CAIRN_PG_URL` (see `scripts/start-postgres.sh`); prints SKIPPED without it.
//!
//! Run: `cargo bench -p cairn-pg --bench backends`.

use std::hint::black_box;
use std::time::Instant;

use cairn_index::{
    ChunkInput, ChunkRecord, DocumentRecord, EmbedderInfo, Filter, Index, IndexBackend,
    IndexOptions, SearchMode, SearchRequest,
};
use cairn_pg::{PgIndex, PgOptions};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 384;
const CENTRES: usize = 50;
const SOURCES: usize = 10;

fn embedder() -> EmbedderInfo {
    EmbedderInfo {
        name: "bench-backends".into(),
        version: "1".into(),
        dimension: DIM,
    }
}

/// A point near `centre` (not normalised; the index normalises).
fn near(rng: &mut StdRng, centre: &[f32]) -> Vec<f32> {
    centre
        .iter()
        .map(|c| c + rng.random_range(-0.3f32..0.3))
        .collect()
}

fn words(rng: &mut StdRng, cluster: usize, n: usize) -> String {
    (0..n)
        .map(|_| format!("w{}x{}", cluster, rng.random_range(0..12)))
        .collect::<Vec<_>>()
        .join(" ")
}

struct Fixture {
    docs: Vec<(DocumentRecord, ChunkInput)>,
    queries: Vec<(String, Vec<f32>)>,
}

fn fixture(n: usize) -> Fixture {
    let mut rng = StdRng::seed_from_u64(7);
    let centres: Vec<Vec<f32>> = (0..CENTRES)
        .map(|_| (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    let docs = (0..n)
        .map(|i| {
            let cluster = rng.random_range(0..CENTRES);
            let source = format!("s{}", i % SOURCES);
            let id = DocumentRecord::make_id(&source, &i.to_string());
            let text = words(&mut rng, cluster, 12);
            let doc = DocumentRecord {
                id: id.clone(),
                source,
                external_id: i.to_string(),
                title: format!("document {i}"),
                url: None,
                updated_at: None,
                metadata: Default::default(),
                access_groups: Vec::new(),
                content_hash: format!("h{i}"),
            };
            let chunk = ChunkInput {
                chunk: ChunkRecord {
                    doc_id: id,
                    ordinal: 0,
                    char_end: text.chars().count(),
                    text,
                    heading_path: Vec::new(),
                    page: None,
                    char_start: 0,
                },
                vector: near(&mut rng, &centres[cluster]),
            };
            (doc, chunk)
        })
        .collect();
    let queries = (0..100)
        .map(|_| {
            let cluster = rng.random_range(0..CENTRES);
            (
                words(&mut rng, cluster, 2),
                near(&mut rng, &centres[cluster]),
            )
        })
        .collect();
    Fixture { docs, queries }
}

/// Commits the whole corpus in one writer; returns the seconds it took.
fn load(index: &dyn IndexBackend, f: &Fixture) -> f64 {
    let started = Instant::now();
    let mut w = index.writer().expect("writer");
    for (doc, chunk) in &f.docs {
        w.upsert(doc.clone(), vec![chunk.clone()]).expect("upsert");
    }
    w.commit().expect("commit");
    started.elapsed().as_secs_f64()
}

fn bench(c: &mut Criterion) {
    let Ok(url) = std::env::var("CAIRN_PG_URL") else {
        eprintln!("SKIPPED: CAIRN_PG_URL is not set; run `eval \"$(scripts/start-postgres.sh)\"`");
        return;
    };
    let n = std::env::var("CAIRN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let f = fixture(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = Index::open(dir.path(), IndexOptions::new(embedder())).expect("embedded");
    let mut pg_options = PgOptions::new(url.clone());
    pg_options.schema = format!("bench_{}", std::process::id());
    let pg = PgIndex::open(&pg_options, &IndexOptions::new(embedder())).expect("postgres");
    let backends: [(&str, &dyn IndexBackend); 2] = [("embedded", &embedded), ("postgres", &pg)];
    for (name, index) in backends {
        eprintln!("commit of {n} chunks, {name}: {:.1} s", load(index, &f));
    }
    let filters = [
        ("no filter", Filter::default()),
        (
            "source filter (10%)",
            Filter {
                sources: vec!["s3".into()],
                ..Default::default()
            },
        ),
    ];
    for (filter_name, filter) in &filters {
        let mut group = c.benchmark_group(format!("hybrid k=10, {n} chunks, {filter_name}"));
        for (name, index) in backends {
            let mut i = 0;
            group.bench_function(name, |b| {
                b.iter(|| {
                    let (text, vector) = &f.queries[i % f.queries.len()];
                    i += 1;
                    let hits = index
                        .search(&SearchRequest {
                            text: text.clone(),
                            vector: Some(vector.clone()),
                            k: 10,
                            mode: SearchMode::Hybrid,
                            filter: filter.clone(),
                            snippets: false,
                        })
                        .expect("search");
                    black_box(hits)
                })
            });
        }
        group.finish();
    }
    drop(pg);
    if let Ok(mut client) = postgres::Client::connect(&url, postgres::NoTls) {
        let _ = client.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            pg_options.schema
        ));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
