//! `cairn ingest`: run the connectors into the index with progress bars, then a table.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use cairn_ingest::pipeline::Report;

use crate::engine::Engine;

/// Exits 1 when a document failed or the quality gate refused a run.
pub(super) fn run(
    engine: &Arc<Engine>,
    source: Option<&str>,
    full: bool,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let reports = ingest_with_progress(engine, source, full, quiet)?;
    print_reports(&reports);
    let failed: usize = reports.iter().map(|r| r.counts.failed).sum();
    let refused = reports
        .iter()
        .any(|r| r.gate.as_ref().is_some_and(|g| !g.passed));
    Ok(if failed > 0 || refused {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(super) fn ingest_with_progress(
    engine: &Arc<Engine>,
    source: Option<&str>,
    full: bool,
    quiet: bool,
) -> anyhow::Result<Vec<Report>> {
    let bars = crate::cli::progress::IngestBars::new(quiet);
    let cancel = AtomicBool::new(false);
    let reports = engine.ingest(source, full, &|name, p| bars.update(name, p), &cancel);
    bars.finish();
    reports
}

pub(super) fn print_reports(reports: &[Report]) {
    println!(
        "{:<16} {:>8} {:>10} {:>8} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "source",
        "indexed",
        "unchanged",
        "skipped",
        "failed",
        "deleted",
        "chunks",
        "seconds",
        "extract",
        "chunk",
        "embed",
        "index"
    );
    for r in reports {
        let (c, s) = (&r.counts, &r.stages);
        println!(
            "{:<16} {:>8} {:>10} {:>8} {:>7} {:>8} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            r.source,
            c.indexed,
            c.unchanged,
            c.skipped,
            c.failed,
            c.deleted,
            c.chunks,
            r.seconds,
            s.extraction,
            s.chunking,
            s.embedding,
            s.indexing
        );
        for line in &r.lines {
            let detail = match &line.outcome {
                cairn_ingest::pipeline::Outcome::Skipped { reason } => reason.clone(),
                cairn_ingest::pipeline::Outcome::Failed { error } => error.clone(),
                _ => String::new(),
            };
            println!("  {:<9} {} {}", line.outcome.label(), line.doc_id, detail);
        }
        if let Some(g) = &r.gate {
            let verdict = if g.passed { "passed" } else { "REFUSED" };
            println!("  quality gate {verdict}: {}", g.reason);
        }
    }
}
