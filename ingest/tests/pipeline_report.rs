//! The run report's stage timings and the progress total.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_index::{EmbedderInfo, Index, IndexOptions};
use cairn_ingest::pipeline::{Control, PipelineOptions, Progress, Report, run};
use cairn_ingest::{
    Body, Chunker, ChunkerOptions, Connector, Embedder, HashEmbedder, IngestError, Item,
    SourceDocument, SyncState, SyncSummary,
};

const LIST_PAUSE: Duration = Duration::from_millis(40);
const EMBED_PAUSE: Duration = Duration::from_millis(60);

/// Takes `EMBED_PAUSE` per batch, so the embedding stage has a known lower bound.
struct SlowEmbedder(HashEmbedder);

impl Embedder for SlowEmbedder {
    fn info(&self) -> EmbedderInfo {
        self.0.info()
    }
    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IngestError> {
        std::thread::sleep(EMBED_PAUSE);
        self.0.embed_passages(texts)
    }
    fn count_tokens(&self, text: &str) -> usize {
        self.0.count_tokens(text)
    }
}

/// Pauses `LIST_PAUSE` before each document, like a slow source; optionally announces a count.
struct SlowSource {
    docs: usize,
    announce: bool,
}

impl Connector for SlowSource {
    fn name(&self) -> &str {
        "slow"
    }
    fn count_hint(&mut self, _state: &SyncState, _full: bool) -> Option<usize> {
        self.announce.then_some(self.docs)
    }
    fn list(
        &mut self,
        _state: &SyncState,
        _full: bool,
        emit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<SyncSummary, IngestError> {
        for i in 0..self.docs {
            std::thread::sleep(LIST_PAUSE);
            let doc = SourceDocument {
                external_id: format!("d{i}"),
                title: format!("Document {i}"),
                url: None,
                updated_at: None,
                metadata: Default::default(),
                access_groups: vec![],
                body: Body::Text(format!("Body number {i} with a few words to chunk.")),
            };
            if !emit(Item::Document(doc)) {
                break;
            }
        }
        Ok(SyncSummary {
            complete: true,
            ..Default::default()
        })
    }
}

/// Runs `source` with batches of two documents; returns the report and every progress seen.
fn run_slow(index: &Index, source: &mut SlowSource) -> (Report, Vec<Progress>) {
    let embedder: Arc<dyn Embedder> = Arc::new(SlowEmbedder(HashEmbedder::new(16)));
    let chunker = Chunker::new(ChunkerOptions::default(), embedder.clone());
    let seen = Mutex::new(Vec::new());
    let report = run(
        source,
        index,
        &chunker,
        &embedder,
        &SyncState::default(),
        &PipelineOptions {
            batch_docs: 2,
            ..Default::default()
        },
        Control {
            progress: &|p| seen.lock().expect("lock").push(p.clone()),
            cancel: &AtomicBool::new(false),
            gate: None,
        },
    )
    .expect("run");
    (report, seen.into_inner().expect("lock"))
}

fn open_index(dir: &std::path::Path) -> Index {
    Index::open(dir, IndexOptions::new(HashEmbedder::new(16).info())).expect("index")
}

#[test]
fn stage_times_attribute_the_slow_stages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open_index(dir.path());
    let mut source = SlowSource {
        docs: 4,
        announce: false,
    };
    let (report, progress) = run_slow(&index, &mut source);
    assert_eq!(report.counts.indexed, 4);
    let s = &report.stages;
    // Four pauses in the connector, two embedder batches of two documents.
    assert!(s.extraction >= 4.0 * LIST_PAUSE.as_secs_f64(), "{s:?}");
    assert!(s.embedding >= 2.0 * EMBED_PAUSE.as_secs_f64(), "{s:?}");
    // Embedding happens inside the listing callback and must not be counted as extraction.
    assert!(
        s.extraction < 4.0 * LIST_PAUSE.as_secs_f64() + EMBED_PAUSE.as_secs_f64(),
        "{s:?}"
    );
    assert!(s.chunking > 0.0 && s.indexing > 0.0, "{s:?}");
    assert!(s.total() <= report.seconds, "{s:?} vs {}", report.seconds);

    // Without a hint the total appears only once the listing finished.
    assert!(progress.iter().take(3).all(|p| p.total.is_none()));
    assert_eq!(progress.last().and_then(|p| p.total), Some(4));

    // A second run embeds nothing: its embedding share is (almost) nothing.
    let (again, _) = run_slow(&index, &mut source);
    assert_eq!(again.counts.unchanged, 4);
    assert!(
        again.stages.embedding < EMBED_PAUSE.as_secs_f64(),
        "{:?}",
        again.stages
    );
}

#[test]
fn count_hint_sets_the_total_before_the_first_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open_index(dir.path());
    let (_, progress) = run_slow(
        &index,
        &mut SlowSource {
            docs: 3,
            announce: true,
        },
    );
    assert!(!progress.is_empty());
    assert!(progress.iter().all(|p| p.total == Some(3)), "{progress:?}");
}

#[test]
fn reports_written_before_stage_times_still_load() {
    let old = r#"{"source":"docs","started_at":"2026-01-01T00:00:00Z",
        "finished_at":"2026-01-01T00:00:01Z","counts":{"indexed":1,"unchanged":0,"skipped":0,
        "failed":0,"deleted":0,"chunks":2},"reconciled":true,"lines":[],
        "state":{"watermark":null,"last_reconciled":null},"seconds":1.0}"#;
    let report: Report = serde_json::from_str(old).expect("old report");
    assert_eq!(report.counts.indexed, 1);
    assert_eq!(report.stages.total(), 0.0);
}
