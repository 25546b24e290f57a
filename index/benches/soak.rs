//! The index soak (see `cairn_index::soak`): ingest-sized commits for 10 minutes and at least
//! 100,000 chunks while two threads search, then the report as JSON on stdout.
//!
//! Run: `cargo bench -p cairn-index --bench soak`. A smoke run:
//! `SOAK_SECS=20 SOAK_MIN_CHUNKS=2000 cargo bench -p cairn-index --bench soak`.
//! `SOAK_DIR` keeps the index in a given (empty) directory instead of a temporary one.

use std::time::Duration;

use cairn_index::soak::{SoakOptions, run};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut options = SoakOptions::default();
    if let Some(s) = env("SOAK_SECS") {
        options.duration = Duration::from_secs(s);
        options.max_duration = Duration::from_secs(s * 6);
    }
    if let Some(n) = env("SOAK_MIN_CHUNKS") {
        options.min_chunks = n;
    }
    if let Some(t) = env("SOAK_SEARCH_THREADS") {
        options.search_threads = t as usize;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var("SOAK_DIR").map_or_else(|_| tmp.path().to_path_buf(), Into::into);
    let report = run(&dir, &options).expect("soak");
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("report as JSON")
    );
    assert_eq!(report.stalls, 0, "the soak saw stalls");
}
