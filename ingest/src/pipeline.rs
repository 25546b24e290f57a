//! The incremental pipeline: listing → hash check → chunk → embed → index, in bounded batches.
//!
//! Invariant: every listed document ends in exactly one outcome of the report (indexed and
//! unchanged are counted; skipped and failed are counted and get a line with the reason or the
//! error) and documents are deleted only when the connector's listing was complete
//! (or it reported them deleted explicitly). A failed document keeps its previously indexed
//! version. Batches are committed as they fill, so memory stays bounded and a crash loses at
//! most the open batch. With an [`EmbeddingCache`] in the options, chunks whose text was
//! embedded before (by the same model) are not sent to the embedder again.
//!
//! The report carries [`StageTimes`]: wall time the coordinating thread spent in each stage.
//! Chunking runs on rayon's pool, so its figure is what the stage cost the run, not CPU time
//! summed over threads; the stages together may add up to a little less than `seconds`
//! (progress callbacks and bookkeeping are not attributed).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use cairn_index::{
    ChunkInput, ChunkRecord, DocumentRecord, IndexBackend, IndexWriter, PreparedGeneration,
};

use crate::IngestError;
use crate::chunking::Chunker;
use crate::connectors::{Connector, Item, SyncState};
use crate::embed::Embedder;
use crate::embed_cache::EmbeddingCache;
use crate::source::SourceDocument;

/// What happened to one document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Indexed { chunks: usize },
    Unchanged,
    Skipped { reason: String },
    Failed { error: String },
    Deleted,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Indexed { .. } => "indexed",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Failed { .. } => "failed",
            Outcome::Deleted => "deleted",
        }
    }
}

/// One report line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportLine {
    pub doc_id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Counts by outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub indexed: usize,
    pub unchanged: usize,
    pub skipped: usize,
    pub failed: usize,
    pub deleted: usize,
    pub chunks: usize,
    /// Chunk texts sent to the embedder.
    #[serde(default)]
    pub embedded: usize,
    /// Chunk vectors served by the embedding cache.
    #[serde(default)]
    pub embed_cache_hits: usize,
}

/// Wall time the coordinating thread spent in each stage of a run, in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StageTimes {
    /// Inside the connector: listing, reading and extracting documents.
    pub extraction: f64,
    /// Splitting batches into chunks (parallel; wall time of the whole batch).
    pub chunking: f64,
    /// Embedding-cache lookups and writes plus the embedder itself.
    pub embedding: f64,
    /// Index reads (content-hash checks, the deletion listing), writes and commits.
    pub indexing: f64,
}

impl StageTimes {
    /// The four stages added up.
    pub fn total(&self) -> f64 {
        self.extraction + self.chunking + self.embedding + self.indexing
    }
}

/// Durations accumulated during a run, turned into [`StageTimes`] at the end.
#[derive(Default)]
struct Stopwatches {
    /// Everything spent inside the listing's `emit` callback (subtracted from the listing).
    in_emit: Duration,
    chunking: Duration,
    embedding: Duration,
    indexing: Duration,
}

/// The report of one source's run; kept by the caller and shown by the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub source: String,
    pub started_at: String,
    pub finished_at: String,
    pub counts: Counts,
    /// Whether the listing was complete (deletions were reconciled).
    pub reconciled: bool,
    /// Every document that was not simply indexed or unchanged, plus deletions.
    pub lines: Vec<ReportLine>,
    pub state: SyncState,
    pub seconds: f64,
    /// Where `seconds` went; zero in reports written before stages were measured.
    #[serde(default)]
    pub stages: StageTimes,
    /// The quality gate's verdict on this run's changes, when a gate is configured and the
    /// run changed something. When it did not pass, nothing of the run was switched in and
    /// `state` is the one the run started from, so the next run retries the same changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateReport>,
}

/// Decides whether a run's changes may be switched in: it scores the run's prepared
/// generation (and usually the serving one, for comparison) before anyone can search it.
pub trait Gate: Sync {
    /// Judges the prepared generation. An error means the gate could not judge; the run's
    /// changes are then not switched in (the gate fails closed).
    fn judge(&self, prepared: &dyn PreparedGeneration) -> Result<GateReport, String>;
}

/// A gate's verdict, kept in the run's report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateReport {
    /// Whether the run's generation was switched in.
    pub passed: bool,
    /// Which score dropped and by how much, or that every score held.
    pub reason: String,
    /// Questions scored.
    pub questions: usize,
    /// The largest drop of any score the gate accepts.
    pub max_drop: f64,
    /// The generation serving when the run started, and the one the run prepared.
    pub serving_generation: u64,
    pub candidate_generation: u64,
    /// Each score on the serving and on the prepared generation, by name (`"ndcg@10"`, ...).
    pub scores: BTreeMap<String, GateScore>,
}

/// One score before and after.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct GateScore {
    pub serving: f64,
    pub candidate: f64,
}

/// Live progress for progress bars and job status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    pub listed: usize,
    pub processed: usize,
    pub chunks: usize,
    /// Documents the listing holds: set once it is known (the listing finished, or the
    /// connector counted its documents up front), `None` before.
    pub total: Option<usize>,
}

/// Pipeline tunables.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Documents chunked and embedded together.
    pub batch_docs: usize,
    /// Documents per index commit.
    pub commit_every: usize,
    /// Re-embed everything even when the content hash is unchanged.
    pub full: bool,
    /// Vectors by chunk text, so reindexing re-embeds only new text (see [`EmbeddingCache`]).
    pub embedding_cache: Option<Arc<EmbeddingCache>>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            batch_docs: 32,
            commit_every: 512,
            full: false,
            embedding_cache: None,
        }
    }
}

struct Run<'a> {
    source: String,
    index: &'a dyn IndexBackend,
    chunker: &'a Chunker,
    embedder: &'a Arc<dyn Embedder>,
    options: &'a PipelineOptions,
    progress: &'a (dyn Fn(&Progress) + Sync),
    seen: HashSet<String>,
    batch: Vec<SourceDocument>,
    uncommitted: usize,
    counts: Counts,
    lines: Vec<ReportLine>,
    state: Progress,
    writer: Option<Box<dyn IndexWriter + 'a>>,
    fatal: Option<IngestError>,
    clock: Stopwatches,
    /// With a gate, the whole run is staged in one writer and judged before it is published.
    gate: Option<&'a dyn Gate>,
}

impl<'a> Run<'a> {
    fn doc_id(&self, external: &str) -> String {
        DocumentRecord::make_id(&self.source, external)
    }

    fn writer(&mut self) -> Result<&mut (dyn IndexWriter + 'a), IngestError> {
        let w = match self.writer.take() {
            Some(w) => w,
            None => self.index.writer()?,
        };
        Ok(self.writer.insert(w).as_mut())
    }

    fn line(&mut self, doc_id: String, outcome: Outcome) {
        match &outcome {
            Outcome::Indexed { chunks } => {
                self.counts.indexed += 1;
                self.counts.chunks += chunks;
            }
            Outcome::Unchanged => self.counts.unchanged += 1,
            Outcome::Skipped { .. } => self.counts.skipped += 1,
            Outcome::Failed { .. } => self.counts.failed += 1,
            Outcome::Deleted => self.counts.deleted += 1,
        }
        if !matches!(outcome, Outcome::Deleted) {
            self.state.processed += 1;
        }
        if !matches!(outcome, Outcome::Indexed { .. } | Outcome::Unchanged) {
            self.lines.push(ReportLine { doc_id, outcome });
        }
        (self.progress)(&self.state);
    }

    fn accept(&mut self, item: Item) -> Result<(), IngestError> {
        self.state.listed += 1;
        let doc_id = self.doc_id(item.external_id());
        self.seen.insert(doc_id.clone());
        match item {
            Item::Document(doc) => {
                let hash = doc.content_hash();
                let lookup = Instant::now();
                let unchanged = !self.options.full
                    && self.index.content_hash(&doc_id)?.as_deref() == Some(&hash);
                self.clock.indexing += lookup.elapsed();
                if unchanged {
                    self.line(doc_id, Outcome::Unchanged);
                } else {
                    self.batch.push(doc);
                    if self.batch.len() >= self.options.batch_docs {
                        self.flush_batch()?;
                    }
                }
            }
            Item::Skipped { reason, .. } => {
                // A document that is now deliberately excluded must not stay searchable.
                let lookup = Instant::now();
                if self.index.content_hash(&doc_id)?.is_some() {
                    self.writer()?.delete(&doc_id);
                    self.uncommitted += 1;
                }
                self.clock.indexing += lookup.elapsed();
                self.line(doc_id, Outcome::Skipped { reason });
            }
            Item::Failed { error, .. } => self.line(doc_id, Outcome::Failed { error }),
        }
        if self.gate.is_none() && self.uncommitted >= self.options.commit_every {
            self.commit()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), IngestError> {
        let docs = std::mem::take(&mut self.batch);
        if docs.is_empty() {
            return Ok(());
        }
        let source = self.source.clone();
        // CPU work in parallel: chunking.
        let chunking = Instant::now();
        let chunked: Vec<(SourceDocument, Vec<crate::chunking::Chunk>)> = docs
            .into_par_iter()
            .map(|d| {
                let chunks = self.chunker.chunk(&d.body);
                (d, chunks)
            })
            .collect();
        self.clock.chunking += chunking.elapsed();
        let texts: Vec<&str> = chunked
            .iter()
            .flat_map(|(_, cs)| cs.iter().map(|c| c.text.as_str()))
            .collect();
        let embedding = Instant::now();
        let vectors = match &self.options.embedding_cache {
            Some(cache) => {
                let (vectors, stats) = cache.embed_passages(self.embedder.as_ref(), &texts)?;
                self.counts.embedded += stats.embedded;
                self.counts.embed_cache_hits += stats.hits;
                vectors
            }
            None => {
                self.counts.embedded += texts.len();
                self.embedder.embed_passages(&texts)?
            }
        };
        self.clock.embedding += embedding.elapsed();
        if vectors.len() != texts.len() {
            return Err(IngestError::Embed {
                embedder: self.embedder.info().name,
                message: format!("{} vectors for {} texts", vectors.len(), texts.len()),
            });
        }
        let mut vectors = vectors.into_iter();
        for (doc, chunks) in chunked {
            let doc_id = DocumentRecord::make_id(&source, &doc.external_id);
            if chunks.is_empty() {
                self.line(
                    doc_id,
                    Outcome::Skipped {
                        reason: "no text to index after extraction".into(),
                    },
                );
                continue;
            }
            let record = DocumentRecord {
                id: doc_id.clone(),
                source: source.clone(),
                external_id: doc.external_id.clone(),
                title: doc.title.clone(),
                url: doc.url.clone(),
                updated_at: doc.updated_at,
                metadata: doc.metadata.clone(),
                access_groups: doc.access_groups.clone(),
                content_hash: doc.content_hash(),
            };
            let n = chunks.len();
            let inputs: Vec<ChunkInput> = chunks
                .into_iter()
                .enumerate()
                .map(|(i, c)| ChunkInput {
                    chunk: ChunkRecord {
                        doc_id: doc_id.clone(),
                        ordinal: i as u32,
                        text: c.text,
                        heading_path: c.heading_path,
                        page: c.page,
                        char_start: c.char_start,
                        char_end: c.char_end,
                    },
                    vector: vectors.next().unwrap_or_default(),
                })
                .collect();
            let write = Instant::now();
            let written = self.writer()?.upsert(record, inputs);
            self.clock.indexing += write.elapsed();
            match written {
                Ok(()) => {
                    self.uncommitted += 1;
                    self.state.chunks += n;
                    self.line(doc_id, Outcome::Indexed { chunks: n });
                }
                Err(e) => self.line(
                    doc_id,
                    Outcome::Failed {
                        error: e.to_string(),
                    },
                ),
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), IngestError> {
        self.flush_batch()?;
        if let Some(w) = self.writer.take() {
            let commit = Instant::now();
            w.commit()?;
            self.clock.indexing += commit.elapsed();
        }
        self.uncommitted = 0;
        Ok(())
    }

    /// Commits what is left; with a gate, prepares the run's generation, lets the gate judge
    /// it, and publishes or discards it.
    fn finish(&mut self) -> Result<Option<GateReport>, IngestError> {
        let Some(gate) = self.gate else {
            self.commit()?;
            return Ok(None);
        };
        self.flush_batch()?;
        let Some(writer) = self.writer.take() else {
            return Ok(None);
        };
        let started = Instant::now();
        let Some(prepared) = writer.prepare()? else {
            return Ok(None);
        };
        let verdict = gate.judge(prepared.as_ref());
        let report = match verdict {
            Ok(report) => report,
            Err(error) => GateReport {
                passed: false,
                reason: format!("the quality gate could not score the new generation: {error}"),
                questions: 0,
                max_drop: 0.0,
                serving_generation: self.index.generation()?,
                candidate_generation: prepared.generation(),
                scores: BTreeMap::new(),
            },
        };
        if report.passed {
            prepared.publish()?;
        } else {
            tracing::warn!(source = %self.source, reason = %report.reason, "quality gate: the new generation is not switched in");
            prepared.discard()?;
        }
        self.clock.indexing += started.elapsed();
        self.uncommitted = 0;
        Ok(Some(report))
    }
}

/// How a caller watches and stops a run.
pub struct Control<'a> {
    /// Called after every document.
    pub progress: &'a (dyn Fn(&Progress) + Sync),
    /// Set to stop the run after the current document (committed work is kept).
    pub cancel: &'a AtomicBool,
    /// Judges the run's changes before they are switched in (see [`Gate`]). With a gate the
    /// run commits once, at its end, and its changes are held in memory until then.
    pub gate: Option<&'a dyn Gate>,
}

/// Runs one source into the index and returns its report.
pub fn run(
    connector: &mut dyn Connector,
    index: &dyn IndexBackend,
    chunker: &Chunker,
    embedder: &Arc<dyn Embedder>,
    state: &SyncState,
    options: &PipelineOptions,
    control: Control<'_>,
) -> Result<Report, IngestError> {
    let Control {
        progress,
        cancel,
        gate,
    } = control;
    let started = Instant::now();
    let started_at = Utc::now().to_rfc3339();
    let source = connector.name().to_string();
    let mut run = Run {
        source: source.clone(),
        index,
        chunker,
        embedder,
        options,
        progress,
        seen: HashSet::new(),
        batch: Vec::new(),
        uncommitted: 0,
        counts: Counts::default(),
        lines: Vec::new(),
        state: Progress::default(),
        writer: None,
        fatal: None,
        clock: Stopwatches::default(),
        gate,
    };
    let listing = Instant::now();
    run.state.total = connector.count_hint(state, options.full);
    let summary = connector.list(state, options.full, &mut |item| {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        let accepting = Instant::now();
        let accepted = run.accept(item);
        run.clock.in_emit += accepting.elapsed();
        match accepted {
            Ok(()) => true,
            Err(e) => {
                run.fatal = Some(e);
                false
            }
        }
    })?;
    let extraction = listing.elapsed().saturating_sub(run.clock.in_emit);
    if let Some(e) = run.fatal.take() {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        // Keep what was committed; the open batch is dropped and redone by the next run.
        return Err(IngestError::Cancelled);
    }
    run.state.total = Some(run.state.listed);
    (run.progress)(&run.state);
    run.flush_batch()?;

    // Deletions: explicit ones always; unlisted ones only after a complete listing.
    let mut to_delete: BTreeMap<String, ()> = BTreeMap::new();
    for ext in &summary.deleted {
        to_delete.insert(run.doc_id(ext), ());
    }
    let reconciling = Instant::now();
    if summary.complete {
        for id in index.document_ids(&source)? {
            if !run.seen.contains(&id) {
                to_delete.insert(id, ());
            }
        }
    }
    for id in to_delete.into_keys() {
        if index.content_hash(&id)?.is_some() {
            run.writer()?.delete(&id);
            run.line(id, Outcome::Deleted);
        }
    }
    run.clock.indexing += reconciling.elapsed();
    let gate_report = run.finish()?;
    let rejected = gate_report.as_ref().is_some_and(|g| !g.passed);
    if let Some(cache) = &options.embedding_cache {
        let flushing = Instant::now();
        cache.flush();
        run.clock.embedding += flushing.elapsed();
    }

    let now = Utc::now().to_rfc3339();
    let new_state = if rejected {
        state.clone()
    } else {
        SyncState {
            watermark: summary
                .watermark
                .clone()
                .or_else(|| state.watermark.clone()),
            last_reconciled: if summary.complete {
                Some(now.clone())
            } else {
                state.last_reconciled.clone()
            },
        }
    };
    Ok(Report {
        source,
        started_at,
        finished_at: now,
        counts: run.counts,
        reconciled: summary.complete,
        lines: run.lines,
        state: new_state,
        seconds: started.elapsed().as_secs_f64(),
        stages: StageTimes {
            extraction: extraction.as_secs_f64(),
            chunking: run.clock.chunking.as_secs_f64(),
            embedding: run.clock.embedding.as_secs_f64(),
            indexing: run.clock.indexing.as_secs_f64(),
        },
        gate: gate_report,
    })
}
