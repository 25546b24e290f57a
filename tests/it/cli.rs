//! The `cairn` binary's command-line contract.

use crate::support;

use std::process::Command;

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
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
