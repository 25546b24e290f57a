//! The soak logic (`cairn_index::soak::run`, behind `benches/soak.rs` and the CLI) on a tiny
//! configuration: it commits, searches meanwhile, and reports without stalls or errors.

use std::time::Duration;

use cairn_index::soak::{SoakOptions, run};

#[test]
fn a_short_soak_commits_searches_and_reports_no_stalls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SoakOptions {
        duration: Duration::from_secs(2),
        min_chunks: 300,
        max_duration: Duration::from_secs(60),
        docs_per_commit: 16,
        chunks_per_doc: 3,
        replaced_per_commit: 4,
        dimension: 16,
        search_threads: 2,
        ..SoakOptions::default()
    };
    let report = run(dir.path(), &options).expect("soak");
    assert!(report.target_reached, "{report:?}");
    assert!(report.chunks_committed >= 300, "{report:?}");
    assert_eq!(report.commits, report.final_generation, "{report:?}");
    assert_eq!(report.commit_latency.count as u64, report.commits);
    assert!(report.search_latency.count > 0, "{report:?}");
    assert_eq!((report.stalls, report.errors), (0, 0), "{report:?}");
    assert!(report.bytes_on_disk > 0);
    // Replacements keep the document count below the number of upserts.
    assert!(report.final_documents < (report.commits as usize) * 16);
    assert_eq!(report.final_chunks, report.final_documents * 3);
    let json = serde_json::to_value(&report).expect("serialises");
    assert!(json["commit_latency"]["p99_ms"].is_number());
}
