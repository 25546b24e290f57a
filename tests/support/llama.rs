//! A real OpenAI-compatible server for tests: llama.cpp's `llama-server` with a small GGUF model
//! (SmolLM2-135M-Instruct), started on a free 127.0.0.1 port and killed on drop.
//!
//! `scripts/fetch-llama.sh` builds/fetches both into a cache and prints the two variables this
//! helper reads: `CAIRN_LLAMA_SERVER` (the executable) and `CAIRN_LLAMA_MODEL` (the `.gguf`).
//! Without them a test prints a loud SKIPPED block and passes, unless `CAIRN_REQUIRE_LLAMA=1`
//! (CI), where it fails. `CAIRN_LLAMA_THREADS` sets the server's threads; the default, 1, keeps
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

/// Returns `false` after a loud SKIPPED message, or panics when the server is required.
fn skip_or_fail(test: &str, why: &str) -> bool {
    if std::env::var("CAIRN_REQUIRE_LLAMA").as_deref() == Ok("1") {
        panic!("{test}: a real llama-server is required (CAIRN_REQUIRE_LLAMA=1) but {why}");
    }
    eprintln!(
        "\n**********\nSKIPPED: {test}: {why}\n  run `scripts/fetch-llama.sh` and export the \
         CAIRN_LLAMA_SERVER / CAIRN_LLAMA_MODEL lines it prints\n**********\n"
    );
    false
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
    /// Starts the server and waits until `/health` answers 200. `None` when the variables are
    /// not set and the server is not required (the SKIPPED message is already printed).
    pub async fn start(test: &str) -> Option<LlamaServer> {
        let (Ok(server), Ok(model)) = (
            std::env::var("CAIRN_LLAMA_SERVER"),
            std::env::var("CAIRN_LLAMA_MODEL"),
        ) else {
            skip_or_fail(
                test,
                "CAIRN_LLAMA_SERVER and CAIRN_LLAMA_MODEL are not both set",
            );
            return None;
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
        Some(me)
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
