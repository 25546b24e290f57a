//! `cairn bench ingest`: ingest throughput on a BEIR-layout corpus (`corpus.jsonl`).
//!
//! The corpus is ingested end to end (listing, chunking, embedding with the configured
//! embedder, index writes and commits) into a fresh temporary index with a fresh embedding
//! cache, then ingested again with nothing changed. The figures: documents/s and chunks/s of
//! the first run, the process's peak resident memory (`VmHWM`), each stage's share of the first
//! run's wall time (see `cairn_ingest::pipeline::StageTimes`: coordinating-thread wall time), and
//! the second run's seconds and fraction of the first. Nothing is kept after the command.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use cairn_index::Index;
use cairn_ingest::embed_cache::EmbeddingCache;
use cairn_ingest::pipeline::{PipelineOptions, Report, StageTimes};

use crate::cli::progress::IngestBars;
use crate::engine::{Engine, index_options};
use crate::eval::ingest_corpus;

/// Percent of a run's wall time per stage; `other` is what no stage accounts for.
#[derive(Debug, Clone, Serialize)]
pub struct StageShares {
    pub extraction: f64,
    pub chunking: f64,
    pub embedding: f64,
    pub indexing: f64,
    pub other: f64,
}

impl StageShares {
    fn of(stages: &StageTimes, seconds: f64) -> StageShares {
        let pct = |s: f64| {
            if seconds > 0.0 {
                100.0 * s / seconds
            } else {
                0.0
            }
        };
        StageShares {
            extraction: pct(stages.extraction),
            chunking: pct(stages.chunking),
            embedding: pct(stages.embedding),
            indexing: pct(stages.indexing),
            other: pct((seconds - stages.total()).max(0.0)),
        }
    }
}

/// What `cairn bench ingest --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct IngestFigures {
    /// The embedder as the index records it (name and dimension).
    pub embedder: String,
    pub documents: usize,
    pub chunks: usize,
    pub failed: usize,
    pub first_seconds: f64,
    pub documents_per_second: f64,
    pub chunks_per_second: f64,
    /// Peak resident set size of the whole process (`VmHWM`); `None` off Linux.
    pub peak_rss_bytes: Option<u64>,
    pub first_stages: StageTimes,
    pub first_shares: StageShares,
    pub second_seconds: f64,
    /// `second_seconds / first_seconds`.
    pub second_fraction: f64,
    pub second_unchanged: usize,
    /// Documents the second run indexed again (0 when the incremental check works).
    pub second_indexed: usize,
    pub second_stages: StageTimes,
}

/// `VmHWM` of this process from `/proc/self/status`, in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(status_kib(&status, "VmHWM")? * 1024)
}

/// A `kB` field (`VmRSS`, `VmHWM`, ...) of a `/proc/<pid>/status` text, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Ingests `<dataset>/corpus.jsonl` twice into a temporary index and measures both runs.
pub fn ingest(engine: &Engine, dataset: &Path, quiet: bool) -> anyhow::Result<IngestFigures> {
    let corpus = dataset.join("corpus.jsonl");
    anyhow::ensure!(
        corpus.is_file(),
        "{} not found; --dataset must be a BEIR-layout folder with corpus.jsonl",
        corpus.display()
    );
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let index = Index::open(
        &scratch.path().join("index"),
        index_options(&engine.config, engine.embedder.info()),
    )
    .context("opening the temporary index")?;
    let cache = EmbeddingCache::open(&scratch.path().join("embed-cache"))
        .context("opening the temporary embedding cache")?;
    let options = PipelineOptions {
        embedding_cache: Some(Arc::new(cache)),
        ..PipelineOptions::default()
    };
    let run = |label: &str| -> anyhow::Result<Report> {
        let bars = IngestBars::new(quiet);
        let report = ingest_corpus(engine, &corpus, &index, &options, &|p| {
            bars.update(label, p)
        });
        bars.finish();
        Ok(report?)
    };
    let first = run("first run")?;
    let second = run("second run")?;
    let per_second = |n: usize| {
        if first.seconds > 0.0 {
            n as f64 / first.seconds
        } else {
            0.0
        }
    };
    Ok(IngestFigures {
        embedder: engine.embedder.info().to_string(),
        documents: first.counts.indexed,
        chunks: first.counts.chunks,
        failed: first.counts.failed,
        first_seconds: first.seconds,
        documents_per_second: per_second(first.counts.indexed),
        chunks_per_second: per_second(first.counts.chunks),
        peak_rss_bytes: peak_rss_bytes(),
        first_shares: StageShares::of(&first.stages, first.seconds),
        first_stages: first.stages,
        second_seconds: second.seconds,
        second_fraction: if first.seconds > 0.0 {
            second.seconds / first.seconds
        } else {
            0.0
        },
        second_unchanged: second.counts.unchanged,
        second_indexed: second.counts.indexed,
        second_stages: second.stages,
    })
}

/// The human-readable summary.
pub fn print(f: &IngestFigures) {
    println!("embedder       {}", f.embedder);
    println!(
        "first run      {} documents, {} chunks, {} failed in {:.2} s",
        f.documents, f.chunks, f.failed, f.first_seconds
    );
    println!(
        "throughput     {:.1} documents/s, {:.1} chunks/s",
        f.documents_per_second, f.chunks_per_second
    );
    match f.peak_rss_bytes {
        Some(b) => println!("peak RSS       {:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => println!("peak RSS       unavailable (no /proc/self/status)"),
    }
    let s = &f.first_shares;
    println!(
        "stages         extraction {:.1}%, chunking {:.1}%, embedding {:.1}%, indexing {:.1}%, other {:.1}%",
        s.extraction, s.chunking, s.embedding, s.indexing, s.other
    );
    println!(
        "second run     {:.2} s = {:.1}% of the first ({} unchanged, {} indexed again)",
        f.second_seconds,
        100.0 * f.second_fraction,
        f.second_unchanged,
        f.second_indexed
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_with_other() {
        let stages = StageTimes {
            extraction: 1.0,
            chunking: 2.0,
            embedding: 4.0,
            indexing: 2.0,
        };
        let s = StageShares::of(&stages, 10.0);
        assert!((s.embedding - 40.0).abs() < 1e-9);
        assert!((s.other - 10.0).abs() < 1e-9);
        let sum = s.extraction + s.chunking + s.embedding + s.indexing + s.other;
        assert!((sum - 100.0).abs() < 1e-9);
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 1024 * 1024));
        }
    }
}
