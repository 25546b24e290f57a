//! The embedding cache in the pipeline: a reindex embeds only chunk text it has not seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cairn_index::{EmbedderInfo, Index, IndexOptions};
use cairn_ingest::embed_cache::EmbeddingCache;
use cairn_ingest::pipeline::{Control, PipelineOptions, Report, run};
use cairn_ingest::{
    Body, Chunker, ChunkerOptions, Connector, Embedder, HashEmbedder, IngestError, Item,
    SourceDocument, SyncState, SyncSummary,
};

/// Counts the texts it is asked to embed.
struct Counting {
    inner: HashEmbedder,
    texts: AtomicUsize,
}

impl Embedder for Counting {
    fn info(&self) -> EmbedderInfo {
        self.inner.info()
    }
    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IngestError> {
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        self.inner.embed_passages(texts)
    }
    fn count_tokens(&self, text: &str) -> usize {
        self.inner.count_tokens(text)
    }
}

struct Fixed(Vec<SourceDocument>);

impl Connector for Fixed {
    fn name(&self) -> &str {
        "mem"
    }
    fn list(
        &mut self,
        _state: &SyncState,
        _full: bool,
        emit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<SyncSummary, IngestError> {
        for d in &self.0 {
            if !emit(Item::Document(d.clone())) {
                break;
            }
        }
        Ok(SyncSummary {
            complete: true,
            ..Default::default()
        })
    }
}

fn doc(id: &str, paragraphs: &[String]) -> SourceDocument {
    SourceDocument {
        external_id: id.into(),
        title: format!("Doc {id}"),
        url: None,
        updated_at: None,
        metadata: Default::default(),
        access_groups: vec![],
        body: Body::Markdown(paragraphs.join("\n\n")),
    }
}

/// Distinct paragraphs of ~60 words, so each becomes its own chunk or so.
fn paragraphs(id: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|p| {
            let words: Vec<String> = (0..60).map(|w| format!("{id}w{p}x{w}")).collect();
            format!("## Section {p}\n\n{}", words.join(" "))
        })
        .collect()
}

struct Setup {
    embedder: Arc<Counting>,
    chunker: Chunker,
    options: PipelineOptions,
    _cache_dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let embedder = Arc::new(Counting {
            inner: HashEmbedder::new(32),
            texts: AtomicUsize::new(0),
        });
        let dynamic: Arc<dyn Embedder> = embedder.clone();
        let chunker = Chunker::new(ChunkerOptions::default(), dynamic);
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let cache = EmbeddingCache::open(cache_dir.path()).expect("cache");
        Setup {
            embedder,
            chunker,
            options: PipelineOptions {
                full: true, // re-chunk everything: only the cache avoids re-embedding
                embedding_cache: Some(Arc::new(cache)),
                ..Default::default()
            },
            _cache_dir: cache_dir,
        }
    }

    fn run(&self, index: &Index, docs: Vec<SourceDocument>) -> (Report, usize) {
        let before = self.embedder.texts.load(Ordering::SeqCst);
        let dynamic: Arc<dyn Embedder> = self.embedder.clone();
        let report = run(
            &mut Fixed(docs),
            index,
            &self.chunker,
            &dynamic,
            &SyncState::default(),
            &self.options,
            Control {
                progress: &|_| {},
                cancel: &AtomicBool::new(false),
                gate: None,
            },
        )
        .expect("run");
        (report, self.embedder.texts.load(Ordering::SeqCst) - before)
    }
}

fn open_index(dir: &std::path::Path, e: &Counting) -> Index {
    Index::open(dir, IndexOptions::new(e.info())).expect("index")
}

#[test]
fn reindex_embeds_only_the_changed_chunks() {
    let s = Setup::new();
    let index_dir = tempfile::tempdir().expect("tempdir");
    let index = open_index(index_dir.path(), &s.embedder);
    let a = paragraphs("a", 4);
    let b = paragraphs("b", 4);
    let c = paragraphs("c", 4);
    let (first, embedded) = s.run(&index, vec![doc("a", &a), doc("b", &b), doc("c", &c)]);
    assert_eq!(first.counts.indexed, 3);
    let total = first.counts.chunks;
    assert!(total >= 6, "{total} chunks");
    assert_eq!(embedded, total);
    assert_eq!(first.counts.embedded, total);

    // Change one paragraph of `b`: a full reindex embeds only chunks with new text.
    let mut b2 = b.clone();
    b2[3] = format!("{} plus an edited sentence", b2[3]);
    let (second, embedded) = s.run(&index, vec![doc("a", &a), doc("b", &b2), doc("c", &c)]);
    assert_eq!(second.counts.indexed, 3);
    let b_chunks = index
        .chunks_of(&cairn_index::DocumentRecord::make_id("mem", "b"))
        .expect("chunks")
        .len();
    assert!(
        embedded >= 1 && embedded < b_chunks,
        "embedded {embedded} of b's {b_chunks}"
    );
    assert_eq!(second.counts.embedded, embedded);
    assert_eq!(
        second.counts.embed_cache_hits,
        second.counts.chunks - embedded
    );

    // A rebuilt index with the same cache embeds nothing.
    let fresh_dir = tempfile::tempdir().expect("tempdir");
    let fresh = open_index(fresh_dir.path(), &s.embedder);
    let (third, embedded) = s.run(&fresh, vec![doc("a", &a), doc("b", &b2), doc("c", &c)]);
    assert_eq!(third.counts.indexed, 3);
    assert_eq!(embedded, 0);
}

#[test]
fn an_old_sled_cache_directory_is_replaced_by_an_empty_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    // What sled 0.34 left in the cache directory.
    std::fs::create_dir_all(dir.path().join("blobs")).expect("mkdir");
    std::fs::write(dir.path().join("conf"), "segment_size: 524288\n").expect("conf");
    std::fs::write(dir.path().join("db"), vec![3u8; 4096]).expect("db");
    let cache = EmbeddingCache::open(dir.path()).expect("open over a sled cache");
    assert!(cache.is_empty());
    assert!(!dir.path().join("conf").exists() && !dir.path().join("db").exists());
    assert!(
        dir.path()
            .join(cairn_ingest::embed_cache::CACHE_FILE)
            .is_file()
    );
    let e = HashEmbedder::new(8);
    let (first, stats) = cache
        .embed_passages(&e, &["one", "two", "three"])
        .expect("embed");
    assert_eq!(stats.embedded, 3);
    drop(cache);
    // The batch was written durably: a reopened cache serves it.
    let cache = EmbeddingCache::open(dir.path()).expect("reopen");
    assert_eq!(cache.len(), 3);
    let (again, stats) = cache.embed_passages(&e, &["three", "one"]).expect("embed");
    assert_eq!(stats.hits, 2);
    assert_eq!(again, vec![first[2].clone(), first[0].clone()]);
}

#[test]
fn a_damaged_cache_file_is_replaced_by_an_empty_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join(cairn_ingest::embed_cache::CACHE_FILE),
        vec![0xa5u8; 8192],
    )
    .expect("garbage");
    let cache = EmbeddingCache::open(dir.path()).expect("open over a damaged file");
    assert!(cache.is_empty());
    let (_, stats) = cache
        .embed_passages(&HashEmbedder::new(8), &["alpha"])
        .expect("embed");
    assert_eq!(stats.embedded, 1);
    assert_eq!(cache.len(), 1);
}
