//! Shared helpers for the end-to-end tests: a configured app over a copy of the sample corpus,
//! request builders and an SSE reader.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use serde_json::Value;

use cairn::config::{Config, Overrides};
use cairn::engine::Engine;
use cairn::http::router;
use cairn::http::state::AppState;
use cairn_ingest::pipeline::Report;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A test instance: its own data dir, the sample corpus ingested.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub engine: Arc<Engine>,
    pub state: Arc<AppState>,
}

/// A loopback port that was free a moment ago, for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Secrets the test configs reference (`env:NAME`), looked up before the process environment,
/// so tests need not change the environment they share.
pub const TEST_SECRETS: &[(&str, &str)] = &[(
    "CAIRN_TEST_WEBHOOK_SECRET",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
)];

/// Loads a test config: [`TEST_SECRETS`], then the process environment.
pub fn load_config(path: &Path) -> Config {
    load_config_with(path, &[])
}

/// As [`load_config`], with `env` pairs visible to `env:` references before the test secrets
/// and the process environment.
pub fn load_config_with(path: &Path, env: &[(&str, &str)]) -> Config {
    let lookup = |k: &str| {
        env.iter()
            .chain(TEST_SECRETS.iter())
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
            .or_else(|| std::env::var(k).ok())
    };
    Config::load_with_env(path, true, &Overrides::default(), lookup, true).expect("config")
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
        Self::with_setup(|_| extra.to_string())
    }

    /// `setup` may create files in the test directory and returns extra config text.
    pub fn with_setup(setup: impl FnOnce(&Path) -> String) -> TestApp {
        let (app, reports) = Self::with_setup_reports(setup);
        assert!(reports.iter().all(|r| r.counts.failed == 0), "{reports:?}");
        app
    }

    /// As [`TestApp::with_setup`], returning the ingest reports instead of requiring that no
    /// document failed.
    pub fn with_setup_reports(setup: impl FnOnce(&Path) -> String) -> (TestApp, Vec<Report>) {
        Self::with_setup_env_reports(setup, &[])
    }

    /// As [`TestApp::with_setup`], with `env` pairs visible to the config's `env:`
    /// references next to the process environment (no test sets a process variable).
    pub fn with_setup_env(setup: impl FnOnce(&Path) -> String, env: &[(&str, &str)]) -> TestApp {
        let (app, reports) = Self::with_setup_env_reports(setup, env);
        assert!(reports.iter().all(|r| r.counts.failed == 0), "{reports:?}");
        app
    }

    fn with_setup_env_reports(
        setup: impl FnOnce(&Path) -> String,
        env: &[(&str, &str)],
    ) -> (TestApp, Vec<Report>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = setup(dir.path());
        let path = write_config(dir.path(), &extra);
        let config = load_config_with(&path, env);
        let engine = Engine::open(config).expect("engine");
        let reports = engine
            .ingest(None, false, &|_, _| {}, &AtomicBool::new(false))
            .expect("ingest");
        let engine = Arc::new(engine);
        let state = AppState::new(engine.clone()).expect("state");
        (TestApp { dir, engine, state }, reports)
    }

    /// Stops this instance and opens a new one on the same data dir and config (a restart):
    /// nothing is ingested again.
    pub fn reopen(self) -> TestApp {
        let TestApp { dir, engine, state } = self;
        drop(state);
        drop(engine);
        let path = dir.path().join("config.toml");
        let config = load_config(&path);
        let engine = Arc::new(Engine::open(config).expect("engine reopens"));
        let state = AppState::new(engine.clone()).expect("state");
        TestApp { dir, engine, state }
    }

    pub fn router(&self) -> axum::Router {
        router(self.state.clone())
    }

    /// Serves on a loopback port; returns the address.
    pub async fn serve(&self) -> SocketAddr {
        serve_loopback(self.router()).await
    }
}

/// A `cairn serve` child process on a config file, listening on a loopback port the system
/// picked; its stderr is collected for log checks. Killed (SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(config: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--config")
            .arg(config)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("CAIRN_LOG", "warn,cairn=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cairn serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("cairn is serving on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                let mut l = sink.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(300))
            .unwrap_or_else(|_| panic!("cairn serve never listened: {}", log.lock().expect("log")));
        Server { child, base, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `app` on a free loopback port for the rest of the test; returns the address.
pub async fn serve_loopback(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Polls `<base>/healthz` until a `cairn serve` child answers (at most 60 s); kills the child
/// and fails the test otherwise.
pub async fn wait_until_serving(
    client: &reqwest::Client,
    base: &str,
    child: &mut std::process::Child,
) {
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    panic!("cairn serve did not come up within 60 s");
}

/// Writes one page into `<dir>/wiki` and returns config text for a `wiki` files source
/// answered by an OpenAI-compatible model at `base` (no retries), plus `extra`.
pub fn wiki_with_remote_model(dir: &Path, base: &str, page: (&str, &str), extra: &str) -> String {
    let wiki = dir.join("wiki");
    std::fs::create_dir_all(&wiki).expect("mkdir");
    std::fs::write(wiki.join(page.0), page.1).expect("write");
    format!(
        r#"
[providers.remote]
kind = "openai_compatible"
base_url = "{base}/v1"
max_retries = 0
[routes]
answer = ["remote:smollm2"]
[[sources]]
name = "wiki"
kind = "files"
path = {wiki:?}
{extra}
"#
    )
}

/// `config` (from [`wiki_with_remote_model`]) with the remote's first-token wait set to `ms`:
/// a test with a short request deadline needs it, since start-up refuses an answer route whose
/// worst case cannot fit in the deadline.
pub fn with_first_token_ms(config: String, ms: u64) -> String {
    config.replacen(
        "max_retries = 0\n",
        &format!("max_retries = 0\ntimeout_first_token_ms = {ms}\n"),
        1,
    )
}

pub const ADMIN: &str = "admin-key-123";
pub const BOT: &str = "bot-key-456";
pub const HR: &str = "hr-key-789";

/// An app with keys `admin` (all scopes, a burst of 200), `bot` (ask + search, rate limited, no groups) and
/// `hr` (ask + search, group `hr`), anonymous search, and an `hr` source (group `hr`) holding
/// one confidential page on salary bands.
pub fn keyed_app() -> TestApp {
    keyed_app_with("")
}

/// Writes the `hr` source's one page (`salaries.md`, text `page`) under `dir` and returns its
/// `[[sources]]` table: source `hr`, readable by access group `hr` only.
pub fn hr_source(dir: &Path, page: &str) -> String {
    let secret = dir.join("secret");
    std::fs::create_dir_all(&secret).expect("mkdir");
    std::fs::write(secret.join("salaries.md"), page).expect("write");
    format!(
        "[[sources]]\nname = \"hr\"\nkind = \"files\"\npath = {secret:?}\naccess_groups = [\"hr\"]\n"
    )
}

/// As [`keyed_app`], with `extra` config after the keys and the `hr` source.
pub fn keyed_app_with(extra: &str) -> TestApp {
    TestApp::with_setup(|dir| {
        let hr = hr_source(
            dir,
            "# Salary bands\n\nThe salary band for senior engineers is confidential and reviewed every March.",
        );
        format!(
            r#"
[auth]
anonymous_scopes = ["search"]
[[auth.keys]]
name = "admin"
hash = "{}"
scopes = ["admin", "ask", "search"]
burst = 200
[[auth.keys]]
name = "bot"
hash = "{}"
scopes = ["ask", "search"]
rate_per_minute = 60
burst = 3
[[auth.keys]]
name = "hr"
hash = "{}"
scopes = ["ask", "search"]
access_groups = ["hr"]
{}{}
"#,
            cairn::http::auth::hash_key(ADMIN),
            cairn::http::auth::hash_key(BOT),
            cairn::http::auth::hash_key(HR),
            hr,
            extra
        )
    })
}

/// `req` in-process, as `key` when given.
async fn send_as(app: &TestApp, key: Option<&str>, req: Request<Body>) -> axum::response::Response {
    use tower::ServiceExt;
    let req = match key {
        Some(k) => with_key(req, k),
        None => req,
    };
    app.router().oneshot(req).await.expect("response")
}

/// `method uri` in-process without a body, as `key` when given: the status and the JSON body
/// (`null` when empty or not JSON).
pub async fn call(
    app: &TestApp,
    key: Option<&str>,
    method: &str,
    uri: &str,
) -> (axum::http::StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("request");
    let resp = send_as(app, key, req).await;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// `POST uri` with the JSON `body` in-process, as `key` when given: the status and the JSON
/// body (it must be JSON).
pub async fn post_as(
    app: &TestApp,
    key: Option<&str>,
    uri: &str,
    body: Value,
) -> (axum::http::StatusCode, Value) {
    let resp = send_as(app, key, post_json(uri, &body.to_string())).await;
    (resp.status(), body_json(resp).await)
}

/// `GET uri` in-process; checks the status and returns the JSON body.
pub async fn get_json(app: &TestApp, uri: &str) -> Value {
    use tower::ServiceExt;
    let resp = app.router().oneshot(get(uri)).await.expect("response");
    assert_eq!(resp.status(), axum::http::StatusCode::OK, "{uri}");
    body_json(resp).await
}

/// Asks `question` without streaming; checks the status and returns the JSON answer.
pub async fn ask_json(app: &TestApp, question: &str) -> Value {
    use tower::ServiceExt;
    let body = serde_json::json!({"question": question, "stream": false}).to_string();
    let resp = app
        .router()
        .oneshot(post_json("/ask", &body))
        .await
        .expect("response");
    assert_eq!(resp.status(), axum::http::StatusCode::OK);
    body_json(resp).await
}

/// Asks "How long do refunds take?" without streaming (see [`ask_json`]).
pub async fn ask_refunds(app: &TestApp) -> Value {
    ask_json(app, "How long do refunds take?").await
}

/// A request with a bearer key.
pub fn with_key(mut req: Request<Body>, key: &str) -> Request<Body> {
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    req
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

pub fn post_json(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

/// The Prometheus text of `GET /metrics`, as an anonymous caller.
pub async fn metrics_text(app: &TestApp) -> String {
    metrics_text_as(app, None).await
}

/// The Prometheus text of `GET /metrics`, with `key` when given.
pub async fn metrics_text_as(app: &TestApp, key: Option<&str>) -> String {
    use tower::ServiceExt;
    let req = match key {
        Some(key) => with_key(get("/metrics"), key),
        None => get("/metrics"),
    };
    let resp = app.router().oneshot(req).await.expect("metrics");
    assert_eq!(resp.status(), axum::http::StatusCode::OK, "GET /metrics");
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .expect("body");
    String::from_utf8(bytes.to_vec()).expect("utf8")
}

/// Queues an admin reindex with `body` (as `ADMIN`), checks it was accepted, and polls
/// `/admin/jobs/{id}` until the job ended, whatever its state (at most 30 s); returns the last job
/// seen.
pub async fn reindex_and_wait(app: &TestApp, body: &str) -> Value {
    use tower::ServiceExt;
    let res = app
        .router()
        .oneshot(with_key(post_json("/admin/reindex", body), ADMIN))
        .await
        .expect("response");
    assert_eq!(res.status(), axum::http::StatusCode::ACCEPTED);
    let id = body_json(res).await["id"].as_str().expect("id").to_string();
    let mut job = Value::Null;
    for _ in 0..600 {
        let res = app
            .router()
            .oneshot(with_key(get(&format!("/admin/jobs/{id}")), ADMIN))
            .await
            .expect("response");
        job = body_json(res).await;
        if job["state"] != "queued" && job["state"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    job
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

/// The data of the first `name` event of the streamed `/ask` of `body` (anonymous).
pub async fn first_streamed(app: &TestApp, body: &Value, name: &str) -> Value {
    use tower::ServiceExt;
    let resp = app
        .router()
        .oneshot(post_json("/ask", &body.to_string()))
        .await
        .expect("response");
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes);
    let event = parse_sse(&text)
        .into_iter()
        .find(|e| e.event == name)
        .unwrap_or_else(|| panic!("no {name} event: {text}"));
    serde_json::from_str(&event.data).expect("json")
}

/// The answer text of an `/ask` SSE stream: its `token` events' texts, in order.
pub fn streamed_answer(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).expect("json")["text"]
                .as_str()
                .expect("text")
                .to_string()
        })
        .collect()
}

/// Reads an SSE body until what was received contains `needle` (20 s at most per chunk);
/// returns what was received.
pub async fn read_until<S, B, E>(body: &mut S, needle: &str) -> String
where
    S: futures::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Debug,
{
    use futures::StreamExt;
    let mut received = String::new();
    while !received.contains(needle) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(20), body.next())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 20 s: {received}"))
            .unwrap_or_else(|| panic!("body ended before {needle:?}: {received}"))
            .expect("body bytes");
        received.push_str(&String::from_utf8_lossy(chunk.as_ref()));
    }
    received
}
