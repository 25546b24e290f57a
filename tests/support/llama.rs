//! A real OpenAI-compatible server for tests: llama.cpp's `llama-server` with a small GGUF model
//! (SmolLM2-135M-Instruct), started on a free 127.0.0.1 port and killed on drop.
//!
//! `scripts/fetch-llama.sh` builds/fetches both into a cache and prints the two variables this
//! helper reads: `CAIRN_LLAMA_SERVER` (the executable) and `CAIRN_LLAMA_MODEL` (the `.gguf`).
//! The tests that need it are `#[ignore = NEEDS_LLAMA]`: listed as ignored by a plain
//! `cargo test`, run by `--include-ignored`, and failing then when it is not set up. `CAIRN_LLAMA_THREADS` sets the server's threads; the default, 1, keeps
//! it fast while other tests share the cores (two threads spin at every barrier and crawl when a
//! core is taken away).
//!
//! It never downloads anything and never talks to an address outside the loopback.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name the server answers to (`--alias`), used as the model in cairn routes.
pub const MODEL_ALIAS: &str = "smollm2";
/// Model load on a busy 2-core machine takes a few seconds; this leaves room for a slow CI.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

pub struct LlamaServer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub root: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reason the llama-server tests are `#[ignore]`d: a plain `cargo test` lists them as
/// ignored; `--include-ignored` (scripts/test.sh) runs them, and they fail without the server.
pub const NEEDS_LLAMA: &str = "needs llama-server: eval \"$(scripts/fetch-llama.sh)\"";

fn missing(test: &str, why: &str) -> ! {
    panic!(
        "{test}: a real llama-server is needed but {why}: run `eval \"$(scripts/fetch-llama.sh)\"`, \
         which exports CAIRN_LLAMA_SERVER and CAIRN_LLAMA_MODEL"
    );
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl LlamaServer {
    /// Starts the server and waits until `/health` answers 200; panics when it is not set up.
    pub async fn start(test: &str) -> LlamaServer {
        let (Ok(server), Ok(model)) = (
            std::env::var("CAIRN_LLAMA_SERVER"),
            std::env::var("CAIRN_LLAMA_MODEL"),
        ) else {
            missing(
                test,
                "CAIRN_LLAMA_SERVER and CAIRN_LLAMA_MODEL are not both set",
            );
        };
        for (var, path) in [
            ("CAIRN_LLAMA_SERVER", &server),
            ("CAIRN_LLAMA_MODEL", &model),
        ] {
            if !Path::new(path).is_file() {
                // A variable set to a wrong path is a broken setup, not an absent one.
                panic!("{test}: {var}={path} is not a file; rerun scripts/fetch-llama.sh");
            }
        }
        let threads = std::env::var("CAIRN_LLAMA_THREADS").unwrap_or_else(|_| "1".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("llama-server.log");
        let port = free_port();
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(&server)
            .args(["-m", &model, "--alias", MODEL_ALIAS])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            // One slot with room for a retrieved context.
            .args(["-c", "4096", "-np", "1", "-t", &threads])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{test}: cannot start {server}: {e}"));
        let mut me = LlamaServer {
            child,
            root: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        me.wait_ready(test).await;
        me
    }

    /// The `base_url` of an `openai_compatible` provider pointing at this server.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.root)
    }

    /// The last lines the server logged (for assertion messages).
    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }

    async fn wait_ready(&mut self, test: &str) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                use std::os::unix::process::ExitStatusExt;
                let hint = match status.signal() {
                    Some(4) => {
                        ": this build uses CPU instructions this machine lacks (a prebuilt \
                         binary made with -march=native?); build one with scripts/fetch-llama.sh"
                    }
                    _ => "",
                };
                panic!(
                    "{test}: llama-server exited before it was ready: {status}{hint}\n{}",
                    self.log_tail()
                );
            }
            // 503 while the model loads, 200 once it serves.
            if let Ok(r) = client.get(format!("{}/health", self.root)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "{test}: llama-server not ready after {READY_TIMEOUT:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
