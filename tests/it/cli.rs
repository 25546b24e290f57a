//! The `cairn` binary's command-line contract.

use crate::support;

use std::process::Command;

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

/// Runs `cmd`, fails the test with its stderr unless it succeeded, and returns its stdout.
fn stdout_of_success(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn ingest_search_ask_json_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(dir.path(), "");
    let out = cairn()
        .arg("--config")
        .arg(&config)
        .arg("-q")
        .arg("ingest")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("indexed") && table.contains("samples"),
        "{table}"
    );

    let out = cairn()
        .args(["--config"])
        .arg(&config)
        .args(["-q", "search", "password reset link", "--k", "2", "--json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let hits = json["hits"].as_array().expect("hits");
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0]["doc_id"], "samples:help-center/account.md");
    for key in ["doc_id", "chunk_id", "title", "url", "score", "snippet"] {
        assert!(hits[0].get(key).is_some(), "{key}");
    }

    let out = cairn()
        .args(["--config"])
        .arg(&config)
        .args([
            "-q",
            "ask",
            "How long is a password reset link valid?",
            "--json",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        json["answer"]
            .as_str()
            .expect("answer")
            .contains("60 minutes"),
        "{json}"
    );
    assert_eq!(
        json["citations"][0]["doc_id"],
        "samples:help-center/account.md"
    );
}

#[test]
fn bad_config_stops_with_file_key_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\nbind = \"nowhere\"\n").expect("write");
    let out = cairn()
        .arg("--config")
        .arg(&config)
        .args(["search", "x"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("server.bind"),
        "{err}"
    );
}

#[test]
fn env_overrides_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(dir.path(), "");
    let out = cairn()
        .arg("--config")
        .arg(&config)
        .args(["search", "x"])
        .env("CAIRN__RETRIEVAL__TOP_K", "0")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retrieval.top_k"));
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in ["serve", "ingest", "search", "ask"] {
        let out = cairn().args([cmd, "--help"]).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Example"),
            "{cmd}: {text}"
        );
    }
}

#[test]
fn bench_ingest_reports_figures_and_an_unchanged_second_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(dir.path(), "");
    let dataset = dir.path().join("beir");
    std::fs::create_dir_all(&dataset).expect("mkdir");
    let corpus: String = (0..4)
        .map(|i| {
            format!(
                "{{\"_id\":\"d{i}\",\"title\":\"Title {i}\",\"text\":\"Abstract {i} about cells and proteins.\"}}\n"
            )
        })
        .collect();
    std::fs::write(dataset.join("corpus.jsonl"), corpus).expect("write corpus");
    let out = stdout_of_success(
        cairn()
            .arg("--config")
            .arg(&config)
            .args(["bench", "ingest", "--json", "--dataset"])
            .arg(&dataset),
    );
    let f: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(f["documents"], 4, "{f}");
    assert_eq!(f["failed"], 0, "{f}");
    assert!(f["chunks"].as_u64().is_some_and(|c| c >= 4), "{f}");
    assert_eq!(f["second_unchanged"], 4, "{f}");
    assert_eq!(f["second_indexed"], 0, "{f}");
    for key in [
        "documents_per_second",
        "chunks_per_second",
        "first_seconds",
        "second_seconds",
    ] {
        assert!(f[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {f}");
    }
    assert!(f["first_shares"]["embedding"].as_f64().is_some(), "{f}");

    let missing = cairn()
        .arg("--config")
        .arg(&config)
        .args(["-q", "bench", "ingest", "--dataset"])
        .arg(dir.path().join("nowhere"))
        .output()
        .expect("run");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("corpus.jsonl"));
}

/// `cairn eval answers` on the bundled question file with the offline provider: every figure
/// is reproducible, citations all resolve, and the MiniLM default finds the gold passages for
/// paraphrased questions.
#[test]
fn eval_answers_reports_citation_and_gold_figures_reproducibly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(dir.path(), "");
    stdout_of_success(cairn().arg("--config").arg(&config).args(["-q", "ingest"]));
    let qa = support::repo().join("samples/qa.jsonl");
    let run = || -> serde_json::Value {
        let out = stdout_of_success(
            cairn()
                .arg("--config")
                .arg(&config)
                .args(["-q", "eval", "answers", "--json", "--qa"])
                .arg(&qa),
        );
        serde_json::from_slice(&out).expect("json")
    };
    let first = run();
    assert_eq!(first["questions"], 10);
    assert_eq!(first["citation_validity"], 1.0, "{first:#}");
    assert!(
        first["answer_contains_gold"].as_f64().expect("gold") >= 0.75,
        "{first:#}"
    );
    assert!(
        first["citation_recall"].as_f64().expect("recall") >= 0.75,
        "{first:#}"
    );
    assert_eq!(first["idk_rate_answerable"], 0.0, "{first:#}");
    assert!(first["idk_rate_unanswerable"].is_number(), "{first:#}");
    let second = run();
    for key in [
        "citation_validity",
        "citation_precision",
        "citation_recall",
        "idk_rate_unanswerable",
        "answer_contains_gold",
    ] {
        assert_eq!(first[key], second[key], "{key} differs between runs");
    }

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"question\": \"ok\"}\n{\"quest\": 1}\n").expect("write");
    let out = cairn()
        .arg("--config")
        .arg(&config)
        .args(["-q", "eval", "answers", "--qa"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
}

/// `cairn models list` names the default model and reports the verified cached copy that the
/// test run itself uses; an unknown model name is refused with the list of known ones.
#[test]
fn models_list_and_unknown_pull() {
    let out = stdout_of_success(cairn().args(["-q", "models", "pull"]));
    assert!(String::from_utf8_lossy(&out).contains("ready in"));
    let out = stdout_of_success(cairn().args(["-q", "models", "list"]));
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("all-MiniLM-L6-v2") && text.contains("cached in"),
        "{text}"
    );
    let out = cairn()
        .args(["-q", "models", "pull", "no-such-model"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown model") && err.contains("all-MiniLM-L6-v2"),
        "{err}"
    );
}

/// What a format-1 (sled) index leaves in `<data>/index`: a `store/` directory (its contents do
/// not matter, the directory marks the old format) and the derived folders beside it.
fn sled_era_index(data: &std::path::Path) {
    let index = data.join("index");
    std::fs::create_dir_all(index.join("store/blobs")).expect("mkdir");
    std::fs::write(index.join("store/conf"), b"segment_size: 524288\n").expect("conf");
    std::fs::write(index.join("store/db"), vec![7u8; 4096]).expect("db");
    std::fs::create_dir_all(index.join("bm25")).expect("mkdir");
}

#[test]
fn an_old_format_index_is_refused_naming_the_fix_and_ingest_full_rebuilds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(dir.path(), "[embedder]\nkind = \"hash\"\n");
    sled_era_index(&dir.path().join("data"));

    for args in [
        &["ingest"][..],
        &["ingest", "--source", "samples", "--full"],
    ] {
        let out = cairn()
            .arg("--config")
            .arg(&config)
            .arg("-q")
            .args(args)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("index_old_format") && stderr.contains("`cairn ingest --full`"),
            "{args:?}: {stderr}"
        );
        assert!(
            dir.path().join("data/index/store/db").is_file(),
            "untouched"
        );
    }

    let out = stdout_of_success(
        cairn()
            .arg("--config")
            .arg(&config)
            .args(["-q", "ingest", "--full"]),
    );
    let table = String::from_utf8_lossy(&out);
    assert!(table.contains("samples"), "{table}");
    // The old index was set aside, not deleted, and the rebuilt one serves.
    assert!(dir.path().join("data/index.old-format/store/db").is_file());
    assert!(!dir.path().join("data/index/store").exists());
    let hits = stdout_of_success(cairn().arg("--config").arg(&config).args([
        "-q",
        "search",
        "password reset link",
        "--json",
    ]));
    let json: serde_json::Value = serde_json::from_slice(&hits).expect("json");
    assert!(!json["hits"].as_array().expect("hits").is_empty(), "{json}");
}

/// Every key is optional: a config holding one `[[sources]]` table, outside the repository (no
/// `prompts/` folder beside it), ingests and answers with the built-in prompt.
#[test]
fn a_four_line_config_outside_the_repository_ingests_and_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("corpus")).expect("mkdir");
    std::fs::copy(
        support::repo().join("samples/corpus/help-center/account.md"),
        dir.path().join("corpus/account.md"),
    )
    .expect("copy");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[[sources]]\nname = \"docs\"\nkind = \"files\"\npath = \"corpus\"\n",
    )
    .expect("config");
    assert_eq!(
        std::fs::read_to_string(&config)
            .expect("read")
            .lines()
            .count(),
        4
    );
    let run = |args: &[&str]| {
        stdout_of_success(
            cairn()
                .current_dir(dir.path())
                .arg("--config")
                .arg(&config)
                .arg("-q")
                .args(args),
        )
    };
    let table = String::from_utf8(run(&["ingest"])).expect("utf8");
    assert!(table.contains("docs"), "{table}");
    let answer = run(&["ask", "How long is a password reset link valid?", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&answer).expect("json");
    assert!(
        json["answer"].as_str().unwrap_or("").contains("60 minutes"),
        "{json}"
    );
    assert_eq!(json["citations"][0]["doc_id"], "docs:account.md", "{json}");
}

/// A short `bench batches`: both phases send their requests, none fails, the batch runs
/// during the second phase only, and the ratios are reported.
#[test]
fn bench_batches_reports_both_phases_and_the_batch_running_in_the_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(dir.path(), "");
    let out = stdout_of_success(cairn().arg("--config").arg(&config).args([
        "-q",
        "bench",
        "batches",
        "--rate",
        "4",
        "--seconds",
        "2",
        "--batch",
        "400",
        "--json",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&out).expect("json");
    for phase in ["without_batch", "with_batch"] {
        assert_eq!(r[phase]["requests"], 8, "{phase}: {r}");
        assert_eq!(r[phase]["errors"], 0, "{phase}: {r}");
        assert!(r[phase]["p99_ms"].as_f64().expect("p99") > 0.0, "{r}");
    }
    assert_eq!(r["without_batch"]["batch_done"], 0, "{r}");
    assert!(
        r["with_batch"]["batch_done"].as_u64().expect("done") > 0,
        "{r}"
    );
    assert!(r["p99_ratio"].as_f64().expect("ratio") > 0.0, "{r}");
}

/// A short `bench soak`: commits and searches for a few seconds, reports every figure, and
/// keeps the index in `--dir` when one is given.
#[test]
fn bench_soak_reports_throughput_latency_memory_disk_and_no_stalls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(dir.path(), "");
    let soak_dir = dir.path().join("soak");
    let out = stdout_of_success(cairn().arg("--config").arg(&config).args([
        "-q",
        "bench",
        "soak",
        "--minutes",
        "0.05",
        "--min-chunks",
        "300",
        "--dir",
        soak_dir.to_str().expect("utf8"),
        "--json",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(r["stalls"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["target_reached"].as_bool().expect("bool"), "{r}");
    assert!(r["seconds"].as_f64().expect("seconds") >= 3.0, "{r}");
    assert!(
        r["chunks_committed"].as_u64().expect("chunks") >= 300,
        "{r}"
    );
    for key in ["commits_per_sec", "chunks_per_sec", "bytes_on_disk"] {
        assert!(r[key].as_f64().expect(key) > 0.0, "{key}: {r}");
    }
    assert!(
        r["commit_latency"]["p99_ms"].as_f64().expect("p99") > 0.0,
        "{r}"
    );
    assert!(
        r["search_latency"]["count"].as_u64().expect("count") > 0,
        "{r}"
    );
    assert!(
        soak_dir.join("store.redb").is_file(),
        "--dir keeps the index"
    );

    // The table names every figure.
    let out = stdout_of_success(cairn().arg("--config").arg(&config).args([
        "-q",
        "bench",
        "soak",
        "--minutes",
        "0.02",
        "--min-chunks",
        "100",
    ]));
    let table = String::from_utf8(out).expect("utf8");
    for word in [
        "commits/s",
        "chunks/s",
        "p99 commit",
        "p99 search",
        "peak RSS",
        "on disk",
        "stalls",
    ] {
        assert!(table.contains(word), "{word}: {table}");
    }
}
