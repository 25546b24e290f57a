//! Build-level invariants of ARCHITECTURE.md that no runtime test can see (the table in
//! RELIABILITY.md, "Invariants and the tests that fail when they break", names each):
//! `cairn-index` links no async runtime and no network client, and nothing in the build is
//! compiled for the build machine's CPU.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Crates that run an async runtime or speak a network protocol.
const RUNTIME_OR_NETWORK: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "async-io",
    "mio",
    "hyper",
    "h2",
    "reqwest",
    "ureq",
    "curl",
    "socket2",
    "tonic",
    "postgres",
    "tokio-postgres",
];

#[test]
fn the_index_crate_has_no_async_runtime_or_network_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args([
            "tree",
            "-p",
            "cairn-index",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && tree.contains("tantivy"),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| RUNTIME_OR_NETWORK.contains(name))
        .collect();
    assert!(
        found.is_empty(),
        "cairn-index depends on {found:?}; network and async backends belong in their own crate"
    );
    // Nor does its own code open sockets.
    let mut sources = Vec::new();
    rust_files(&repo().join("index/src"), &mut sources);
    for file in sources {
        let text = std::fs::read_to_string(&file).expect("read");
        for needle in ["std::net", "TcpStream", "UdpSocket", "TcpListener"] {
            assert!(!text.contains(needle), "{} uses {needle}", file.display());
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn nothing_is_compiled_for_the_build_machines_cpu() {
    // Built from parts so this file does not match itself.
    let native = ["target-cpu", "=native"].concat();
    let root = repo();
    let mut files: Vec<PathBuf> = [
        ".cargo/config.toml",
        ".cargo/config",
        "Cargo.toml",
        "index/Cargo.toml",
        "ingest/Cargo.toml",
        "pg/Cargo.toml",
        ".ci/run",
        "rust-toolchain.toml",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    for dir in ["scripts", "."] {
        for entry in std::fs::read_dir(root.join(dir)).expect("read dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "build.rs" || name.ends_with(".sh") {
                files.push(path);
            }
        }
    }
    for crate_dir in ["index", "ingest", "pg"] {
        files.push(root.join(crate_dir).join("build.rs"));
    }
    for file in files.iter().filter(|f| f.is_file()) {
        let text = std::fs::read_to_string(file).expect("read");
        assert!(
            !text.contains(&native),
            "{} builds for the build machine's CPU; choose kernels at run time (pulp)",
            file.display()
        );
    }
    // The scan kernels dispatch at run time.
    let vectors = std::fs::read_to_string(root.join("index/src/vectors.rs")).expect("read");
    assert!(
        vectors.contains("pulp::"),
        "index/src/vectors.rs no longer uses pulp"
    );
}
