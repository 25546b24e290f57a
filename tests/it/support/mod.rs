//! Shared helpers for the end-to-end tests: a configured app over a copy of the sample corpus,
//! request builders and an SSE reader.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::http::Request;
use serde_json::Value;

use cairn::config::{Config, Overrides};
use cairn::engine::Engine;
use cairn::server::{AppState, router};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A test instance: its own data dir, the sample corpus ingested.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub engine: Arc<Engine>,
}

pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let corpus = repo().join("samples/corpus");
    let prompt = repo().join("prompts/answer.v1.toml");
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"data\"\n[answer]\nprompt = {prompt:?}\n{extra}\n[[sources]]\nname = \"samples\"\nkind = \"files\"\npath = {corpus:?}\ninclude = [\"**/*.md\"]\n"
        ),
    )
    .expect("write config");
    path
}

impl TestApp {
    pub fn new() -> TestApp {
        Self::with_config("")
    }

    pub fn with_config(extra: &str) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), extra);
        let config = Config::load(&path, true, &Overrides::default()).expect("config");
        let engine = Engine::open(config).expect("engine");
        let reports = engine
            .ingest(None, false, &|_, _| {}, &AtomicBool::new(false))
            .expect("ingest");
        assert_eq!(reports[0].counts.failed, 0);
        TestApp {
            dir,
            engine: Arc::new(engine),
        }
    }

    pub fn router(&self) -> axum::Router {
        router(Arc::new(AppState {
            engine: self.engine.clone(),
        }))
    }

    /// Serves on a loopback port; returns the address.
    pub async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    }
}

pub fn post_json(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

pub async fn body_json(resp: axum::response::Response) -> Value {
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: String,
}

/// Parses an SSE body (comments skipped, multi-line data joined).
pub fn parse_sse(text: &str) -> Vec<SseEvent> {
    let mut out = Vec::new();
    let mut cur = SseEvent::default();
    let mut has = false;
    for line in text.lines() {
        if line.is_empty() {
            if has {
                out.push(std::mem::take(&mut cur));
                has = false;
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        has = true;
        match field {
            "id" => cur.id = value.to_string(),
            "event" => cur.event = value.to_string(),
            "data" => {
                if !cur.data.is_empty() {
                    cur.data.push('\n');
                }
                cur.data.push_str(value);
            }
            _ => {}
        }
    }
    if has {
        out.push(cur);
    }
    out
}
