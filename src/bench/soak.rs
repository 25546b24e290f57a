//! `cairn bench soak`: the index soak of `cairn_index::soak` (ingest-sized commits with
//! concurrent searches, synthetic vectors, no model) from the command line, with its table.

use std::path::Path;
use std::time::Duration;

use cairn_index::soak::{SoakOptions, SoakReport};

/// What `bench soak` was asked for.
pub struct SoakRequest<'a> {
    pub minutes: f64,
    pub min_chunks: u64,
    /// Keep the index here (an empty or new directory); a temporary one otherwise.
    pub dir: Option<&'a Path>,
    /// `[index] stall_secs`: a write without progress for this long counts as a stall.
    pub stall: Duration,
}

/// Runs the soak: at least `minutes` and `min_chunks`, at most six times `minutes` (the report
/// says whether both were reached).
pub fn run(request: &SoakRequest) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(
        request.minutes.is_finite() && request.minutes > 0.0,
        "--minutes must be a positive number (e.g. 10 or 0.2)"
    );
    let duration = Duration::from_secs_f64(request.minutes * 60.0);
    let options = SoakOptions {
        duration,
        min_chunks: request.min_chunks,
        max_duration: duration * 6,
        stall: request.stall,
        ..SoakOptions::default()
    };
    let scratch = tempfile::tempdir()?;
    let dir = request.dir.unwrap_or(scratch.path());
    Ok(cairn_index::soak::run(dir, &options)?)
}

/// The report as a table.
pub fn print(r: &SoakReport) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let target = if r.target_reached {
        "target reached"
    } else {
        "TARGET NOT REACHED"
    };
    println!("run            {:.1} s, {target}", r.seconds);
    println!(
        "commits/s      {:.2} ({} commits)",
        r.commits_per_sec, r.commits
    );
    println!(
        "chunks/s       {:.1} ({} chunks)",
        r.chunks_per_sec, r.chunks_committed
    );
    let (c, s) = (&r.commit_latency, &r.search_latency);
    println!(
        "p99 commit     {:.1} ms (p50 {:.1}, max {:.1})",
        c.p99_ms, c.p50_ms, c.max_ms
    );
    println!(
        "p99 search     {:.1} ms (p50 {:.1}, {} searches during commits)",
        s.p99_ms, s.p50_ms, s.count
    );
    match r.peak_rss_bytes {
        Some(b) => println!("peak RSS       {:.1} MiB", mib(b)),
        None => println!("peak RSS       unavailable (no /proc/self/status)"),
    }
    println!("on disk        {:.1} MiB", mib(r.bytes_on_disk));
    println!("stalls         {}", r.stalls);
    match &r.first_error {
        Some(e) => println!("errors         {} (first: {e})", r.errors),
        None => println!("errors         {}", r.errors),
    }
}
