//! Load over loopback, bounded: `cairn bench streams` holds many streaming `/ask` requests open
//! against a slow fake provider; every one must complete and the process must end the run with
//! the file descriptors and tokio tasks it started with (the 1,000-stream figures are in
//! BENCHMARKS.md and RELIABILITY.md).

use std::process::Command;

use crate::support;

#[test]
fn concurrent_slow_streams_all_complete_without_leaking_descriptors_or_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(dir.path(), "[embedder]\nkind = \"hash\"\n");
    let streams = 200;
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--config")
        .arg(&config)
        .args([
            "-q", "bench", "streams", "--json", "--tokens", "10", "--gap-ms", "20",
        ])
        .args(["--streams", &streams.to_string()])
        .output()
        .expect("run cairn bench streams");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON report");
    assert_eq!(r["completed"], streams, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["problems"].as_array().map(Vec::len), Some(0), "{r}");
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    // Every stream held sockets open at the peak, and they were all closed afterwards.
    assert!(n("fds_peak") >= n("fds_before") + streams, "{r}");
    assert!(n("fds_after") <= n("fds_before") + 8, "{r}");
    assert!(n("tasks_after") <= n("tasks_before") + 8, "{r}");
    // Holding a stream open costs memory in proportion to it: ~135 KiB each was measured at
    // 1,000 streams (BENCHMARKS.md); 1 MiB each leaves room for a busy allocator and still
    // fails if a stream holds a large buffer or its state is never freed.
    let grown_kib = n("rss_peak_kib").saturating_sub(n("rss_before_kib"));
    assert!(
        grown_kib <= streams * 1024,
        "{grown_kib} KiB for {streams} streams: {r}"
    );
    assert!(r["ttft_p99_ms"].as_f64().is_some_and(|t| t > 0.0), "{r}");
}
