//! "Every listed document ends as indexed, unchanged, skipped (reason) or failed (error) in the
//! run's report" (ARCHITECTURE.md, README "Connectors"): a listing that mixes every outcome
//! accounts for each document exactly once, on the first run and on an incremental rerun; and
//! a failed document keeps its previously indexed version (`ingest/src/pipeline.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cairn_index::{EmbedderInfo, Index, IndexOptions};
use cairn_ingest::pipeline::{Control, Outcome, PipelineOptions, Report, run};
use cairn_ingest::{
    Body, Chunker, ChunkerOptions, Connector, Embedder, HashEmbedder, IngestError, Item,
    SourceDocument, SyncState, SyncSummary,
};

/// The hash embedder, except that a chunk containing `poisonword` gets a vector of NaNs (which
/// the index refuses for that document alone).
struct Poisoned(HashEmbedder);

impl Embedder for Poisoned {
    fn info(&self) -> EmbedderInfo {
        self.0.info()
    }
    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IngestError> {
        let mut vectors = self.0.embed_passages(texts)?;
        for (v, t) in vectors.iter_mut().zip(texts) {
            if t.contains("poisonword") {
                v.iter_mut().for_each(|x| *x = f32::NAN);
            }
        }
        Ok(vectors)
    }
    fn count_tokens(&self, text: &str) -> usize {
        self.0.count_tokens(text)
    }
}

fn doc(id: &str, text: &str) -> SourceDocument {
    SourceDocument {
        external_id: id.into(),
        title: format!("Doc {id}"),
        url: None,
        updated_at: None,
        metadata: Default::default(),
        access_groups: vec![],
        body: Body::Markdown(text.into()),
    }
}

/// A complete listing of the items it holds.
struct Listing(Vec<Item>);

impl Connector for Listing {
    fn name(&self) -> &str {
        "mixed"
    }
    fn list(
        &mut self,
        _state: &SyncState,
        _full: bool,
        emit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<SyncSummary, IngestError> {
        for item in self.0.drain(..) {
            if !emit(item) {
                break;
            }
        }
        Ok(SyncSummary {
            complete: true,
            ..Default::default()
        })
    }
}

/// Two readable documents, one without text, one the connector skips, one it cannot read and
/// one whose vectors the index refuses.
fn mixed() -> Vec<Item> {
    vec![
        Item::Document(doc("a", "# Alpha\n\nAlpha explains the first thing.")),
        Item::Document(doc("b", "# Beta\n\nBeta explains the second thing.")),
        Item::Document(doc("empty", "   \n\n  ")),
        Item::Skipped {
            external_id: "draft".into(),
            reason: "draft article".into(),
        },
        Item::Failed {
            external_id: "broken".into(),
            error: "row 3: broken quoting".into(),
        },
        Item::Document(doc(
            "nan",
            "# Poison\n\nThis poisonword page cannot be embedded.",
        )),
    ]
}

const LISTED: usize = 6;

/// Runs a source listing `items`; returns the report and how many documents the run says it
/// listed.
fn sync(
    index: &Index,
    embedder: &Arc<dyn Embedder>,
    chunker: &Chunker,
    items: Vec<Item>,
) -> (Report, usize) {
    let listed = AtomicUsize::new(0);
    let report = run(
        &mut Listing(items),
        index,
        chunker,
        embedder,
        &SyncState::default(),
        &PipelineOptions::default(),
        Control {
            progress: &|p| listed.store(p.listed, Ordering::SeqCst),
            cancel: &AtomicBool::new(false),
            gate: None,
        },
    )
    .expect("a run with failed documents is a report, not an error");
    (report, listed.load(Ordering::SeqCst))
}

fn outcome<'a>(report: &'a Report, doc_id: &str) -> Vec<&'a Outcome> {
    report
        .lines
        .iter()
        .filter(|l| l.doc_id == doc_id)
        .map(|l| &l.outcome)
        .collect()
}

/// Each listed document is counted once; the ones not indexed or unchanged have exactly one
/// line with a reason or an error.
fn assert_accounted((report, listed): &(Report, usize)) {
    let c = &report.counts;
    assert_eq!(
        c.indexed + c.unchanged + c.skipped + c.failed,
        LISTED,
        "{report:#?}"
    );
    assert_eq!(*listed, LISTED, "{report:#?}");
    assert_eq!((c.skipped, c.failed), (2, 2), "{report:#?}");
    for (id, skipped) in [
        ("mixed:empty", true),
        ("mixed:draft", true),
        ("mixed:broken", false),
        ("mixed:nan", false),
    ] {
        let lines = outcome(report, id);
        assert_eq!(lines.len(), 1, "{id}: {report:#?}");
        let ok = match lines[0] {
            Outcome::Skipped { reason } => skipped && !reason.is_empty(),
            Outcome::Failed { error } => !skipped && !error.is_empty(),
            _ => false,
        };
        assert!(ok, "{id}: {:?}", lines[0]);
    }
    for id in ["mixed:a", "mixed:b"] {
        assert!(outcome(report, id).is_empty(), "{id}: {report:#?}");
    }
}

#[test]
fn every_listed_document_has_exactly_one_outcome_in_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedder: Arc<dyn Embedder> = Arc::new(Poisoned(HashEmbedder::new(32)));
    let chunker = Chunker::new(ChunkerOptions::default(), embedder.clone());
    let index = Index::open(dir.path(), IndexOptions::new(embedder.info())).expect("index");

    let first = sync(&index, &embedder, &chunker, mixed());
    assert_accounted(&first);
    assert_eq!(first.0.counts.indexed, 2, "{first:#?}");
    let mut ids = index.document_ids("mixed").expect("ids");
    ids.sort();
    assert_eq!(ids, ["mixed:a", "mixed:b"]);

    let again = sync(&index, &embedder, &chunker, mixed());
    assert_accounted(&again);
    assert_eq!(again.0.counts.unchanged, 2, "{again:#?}");
}

/// "A failed document keeps its previously indexed version" (`ingest/src/pipeline.rs`): a
/// document that fails to read, or whose new text the index refuses, stays searchable as it was.
#[test]
fn a_failed_document_keeps_its_previous_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedder: Arc<dyn Embedder> = Arc::new(Poisoned(HashEmbedder::new(32)));
    let chunker = Chunker::new(ChunkerOptions::default(), embedder.clone());
    let index = Index::open(dir.path(), IndexOptions::new(embedder.info())).expect("index");
    let (first, _) = sync(
        &index,
        &embedder,
        &chunker,
        vec![
            Item::Document(doc("a", "# Alpha\n\nAlpha version one.")),
            Item::Document(doc("b", "# Beta\n\nBeta version one.")),
        ],
    );
    assert_eq!(first.counts.indexed, 2, "{first:#?}");
    let (second, _) = sync(
        &index,
        &embedder,
        &chunker,
        vec![
            Item::Document(doc("a", "# Alpha\n\nAlpha version two with a poisonword.")),
            Item::Failed {
                external_id: "b".into(),
                error: "cannot read".into(),
            },
        ],
    );
    assert_eq!(second.counts.failed, 2, "{second:#?}");
    assert_eq!(second.counts.deleted, 0, "{second:#?}");
    for (id, text) in [
        ("mixed:a", "Alpha version one."),
        ("mixed:b", "Beta version one."),
    ] {
        let chunks = index.chunks_of(id).expect("chunks");
        assert!(
            chunks.iter().any(|c| c.text.contains(text)),
            "{id} lost its previous version: {chunks:?}"
        );
    }
}
