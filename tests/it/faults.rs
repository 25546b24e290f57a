//! Faults while traffic flows: many concurrent `/ask` streams over a real TCP port against a
//! fake provider that fails in every documented way (429 storms with Retry-After, 5xx, 529, a
//! hang before the first token, a connection dropped mid-stream, malformed chunks), and a
//! knowledge-base API that fails mid-sync. Each test states what must hold; none measures time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use cairn::providers::breaker::State as BreakerState;

use crate::support::{self, TestApp};
use crate::vendors::{Fake, Frame, Reply, Vendor};

/// Remote calls a single answer may make: one call plus `max_retries` retries.
const MAX_RETRIES: usize = 2;
const BREAKER_FAILURES: usize = 3;
const COOLDOWN_MS: u64 = 2000;
/// What one remote answer costs: 21 + 7 tokens at $1000 per million each way.
const ANSWER_COST: f64 = 0.028;
/// A client still waiting after this long counts as a hung connection (the server's own
/// request deadline is 60 s; the slowest scripted path takes a few seconds).
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// The fake provider's behaviour for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    RateLimited,
    ServerError,
    Overloaded,
    HangBeforeFirstToken,
    DropAfterOutput,
    Malformed,
}

const STORM: [Mode; 7] = [
    Mode::Ok,
    Mode::RateLimited,
    Mode::ServerError,
    Mode::Overloaded,
    Mode::HangBeforeFirstToken,
    Mode::DropAfterOutput,
    Mode::Malformed,
];

fn usage_frame() -> Frame {
    Frame::Bytes(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"smollm2\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":7,\"total_tokens\":28}}\n\n"
            .into(),
    )
}

fn reply(mode: Mode) -> Reply {
    let v = Vendor::Compatible;
    match mode {
        Mode::Ok => Reply::sse(v.success(&["Refunds take ", "5 business days [1]."])),
        Mode::RateLimited => {
            Reply::json(429, &v.error_body("slow down")).with_header("retry-after", "1")
        }
        Mode::ServerError => Reply::json(500, &v.error_body("internal")),
        Mode::Overloaded => Reply::json(529, &v.error_body("overloaded")),
        Mode::HangBeforeFirstToken => {
            let mut f = vec![Frame::Delay(Duration::from_secs(60))];
            f.extend(v.success(&["too late"]));
            Reply::sse(f)
        }
        // Text, then the usage the vendor reports, then the connection drops: the tokens
        // reached the client, so the call must be billed once and never retried.
        Mode::DropAfterOutput => {
            let mut f = v.preamble();
            f.push(v.text_frame("Refunds take "));
            f.push(usage_frame());
            f.push(Frame::Delay(Duration::from_millis(20)));
            f.push(Frame::Drop);
            Reply::sse(f)
        }
        Mode::Malformed => Reply::sse(v.malformed()),
    }
}

/// A fake provider whose behaviour is switched by the test: `mode` holds an index into
/// [`STORM`] plus one (cycling per call), or 0 for "every call uses `fixed`".
struct Script {
    cycling: std::sync::atomic::AtomicBool,
    calls: AtomicUsize,
    fixed: std::sync::Mutex<Mode>,
}

impl Script {
    fn next(&self) -> Mode {
        let i = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.cycling.load(Ordering::SeqCst) {
            STORM[i % STORM.len()]
        } else {
            *self.fixed.lock().expect("lock")
        }
    }

    fn set(&self, m: Mode) {
        *self.fixed.lock().expect("lock") = m;
        self.cycling.store(false, Ordering::SeqCst);
    }
}

fn app_with_flaky_remote(fake: &Fake) -> TestApp {
    TestApp::with_config(&format!(
        r#"
[providers.remote]
kind = "openai_compatible"
base_url = "{}/v1"
max_retries = {MAX_RETRIES}
retry_base_ms = 5
timeout_first_token_ms = 1500
breaker_failures = {BREAKER_FAILURES}
breaker_cooldown_ms = {COOLDOWN_MS}
[providers.remote.prices."smollm2"]
input_per_mtok = 1000.0
output_per_mtok = 1000.0
[routes]
answer = ["remote:smollm2", "local"]
[cache]
enabled = false
[traces]
keep = 10000
[auth]
anonymous_scopes = ["ask", "search"]
anonymous_rate_per_minute = 1000000
"#,
        fake.base
    ))
}

/// What one client saw of its `/ask` stream.
#[derive(Debug)]
struct Seen {
    status: u16,
    events: Vec<support::SseEvent>,
}

impl Seen {
    fn last(&self) -> &str {
        self.events.last().map_or("", |e| e.event.as_str())
    }

    fn data(&self, name: &str) -> Option<Value> {
        self.events
            .iter()
            .find(|e| e.event == name)
            .map(|e| serde_json::from_str(&e.data).expect("event json"))
    }
}

async fn ask(client: &reqwest::Client, base: &str, question: &str) -> Seen {
    let fut = async {
        let resp = client
            .post(format!("{base}/ask"))
            .json(&serde_json::json!({"question": question}))
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let mut body = resp.bytes_stream();
        let mut text = Vec::new();
        while let Some(chunk) = body.next().await {
            text.extend_from_slice(&chunk.expect("the server ended the stream cleanly"));
        }
        Seen {
            status,
            events: support::parse_sse(&String::from_utf8_lossy(&text)),
        }
    };
    tokio::time::timeout(CLIENT_DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("a client waited {CLIENT_DEADLINE:?}: a hung connection"))
}

/// Upstream calls a trace records for the remote provider: its failed tries (breaker skips are
/// not calls) plus the call that served, if the remote served (a stream cut after output also
/// records its in-stream error, which is that same call).
fn remote_calls(t: &cairn::observe::trace::Trace) -> usize {
    let errors = t
        .provider_errors
        .iter()
        .filter(|e| e.starts_with("remote: ") && !e.contains("circuit breaker open"))
        .count();
    let cut = usize::from(t.outcome == "provider_stream_failed");
    errors - cut + usize::from(t.provider.as_deref() == Some("remote"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_faults_mid_traffic_end_every_stream_and_bill_once() {
    let script = Arc::new(Script {
        cycling: true.into(),
        calls: AtomicUsize::new(0),
        fixed: std::sync::Mutex::new(Mode::Ok),
    });
    let s = script.clone();
    let fake = Fake::responding(move |_| reply(s.next())).await;
    let app = app_with_flaky_remote(&fake);
    let addr = app.serve().await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    // 1. The storm: 56 concurrent streams while every kind of fault cycles through the calls.
    let clients = 8 * STORM.len();
    let runs = (0..clients).map(|_| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move { ask(&client, &base, "How long do refunds take?").await })
    });
    let seen: Vec<Seen> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.expect("client task"))
        .collect();

    let (mut answered, mut cut_off) = (0, 0);
    for s in &seen {
        assert_eq!(s.status, 200, "{s:?}");
        assert_eq!(
            s.events.first().map(|e| e.event.as_str()),
            Some("retrieval")
        );
        match s.last() {
            "done" => {
                answered += 1;
                let answer = support::streamed_answer(&s.events);
                assert!(answer.contains("business days"), "{answer}");
                let usage = s.data("usage").expect("usage before done");
                assert!(
                    ["remote", "local"].contains(&usage["provider"].as_str().unwrap_or("")),
                    "{usage}"
                );
            }
            "error" => {
                cut_off += 1;
                let e = s.data("error").expect("error");
                // The only typed error here: a stream cut after output (no fallback allowed).
                assert_eq!(e["code"], "provider_stream_failed", "{e}");
                assert!(
                    s.events.iter().any(|e| e.event == "token"),
                    "an error without output should have fallen back: {s:?}"
                );
            }
            other => panic!("stream ended with `{other}`, not done or error: {s:?}"),
        }
    }
    assert_eq!(answered + cut_off, clients);

    let traces = app.engine.traces.recent(usize::MAX);
    assert_eq!(traces.len(), clients);
    // Retries stay within the budget: at most 1 + max_retries remote calls per answer, and the
    // fake saw exactly the calls the traces account for (nothing retried unrecorded, nothing
    // re-sent after output had started).
    for t in &traces {
        assert!(
            remote_calls(t) <= 1 + MAX_RETRIES,
            "{} remote calls: {:?}",
            remote_calls(t),
            t.provider_errors
        );
    }
    let accounted: usize = traces.iter().map(remote_calls).sum();
    assert_eq!(fake.hits(), accounted);
    // Every cut-off stream was a remote call that had sent output; none was retried.
    for t in traces
        .iter()
        .filter(|t| t.outcome == "provider_stream_failed")
    {
        assert_eq!(t.provider.as_deref(), Some("remote"), "{t:?}");
    }
    assert_eq!(
        traces
            .iter()
            .filter(|t| t.outcome == "provider_stream_failed")
            .count(),
        cut_off
    );
    // Billed once: each remote call that reported usage costs one answer's price, whether it
    // completed or was cut off after output; the budget holds exactly the traces' sum.
    let mut billed = 0.0;
    for t in &traces {
        let expected = if t.provider.as_deref() == Some("remote") {
            ANSWER_COST
        } else {
            0.0
        };
        assert!(
            (t.cost_usd - expected).abs() < 1e-9,
            "{} billed {}",
            t.id,
            t.cost_usd
        );
        billed += t.cost_usd;
    }
    let spent = app.engine.router.budget.spent_today();
    assert!(
        (spent - billed).abs() < 1e-9,
        "budget {spent} vs traces {billed}"
    );
    // The storm opened the breaker at least once (later answers skipped the remote).
    assert!(
        traces.iter().any(|t| t
            .provider_errors
            .iter()
            .any(|e| e == "remote: circuit breaker open, not called")),
        "the breaker never opened during the storm"
    );

    // 2. The breaker opens and recovers, step by step: every call fails until it is open …
    script.set(Mode::ServerError);
    let breaker = &app.engine.router.targets("answer")[0].gate.breaker;
    let open = || matches!(breaker.state(), BreakerState::Open { until } if until > Instant::now());
    // Start from a breaker that lets calls through (the storm may have left it open).
    tokio::time::sleep(Duration::from_millis(COOLDOWN_MS + 100)).await;
    let before = fake.hits();
    let mut asked = 0;
    while !open() {
        asked += 1;
        assert!(asked <= BREAKER_FAILURES, "still {:?}", breaker.state());
        let s = ask(&client, &base, "How long do refunds take?").await;
        assert_eq!(s.last(), "done", "falls back to the local provider: {s:?}");
        assert_eq!(s.data("usage").expect("usage")["provider"], "local");
    }
    let hits_when_open = fake.hits();
    assert!(hits_when_open > before);
    // … an open breaker sends nothing upstream, and the answer comes from the fallback …
    let s = ask(&client, &base, "How long do refunds take?").await;
    assert_eq!(s.data("usage").expect("usage")["provider"], "local");
    if open() {
        // (Checked only while the cool-down has not run out on a very slow machine.)
        assert_eq!(
            fake.hits(),
            hits_when_open,
            "an open breaker called upstream"
        );
    }
    // … and once the provider is healthy, the half-open probe after the cool-down closes it.
    script.set(Mode::Ok);
    tokio::time::sleep(Duration::from_millis(COOLDOWN_MS + 100)).await;
    let s = ask(&client, &base, "How long do refunds take?").await;
    assert_eq!(s.last(), "done", "{s:?}");
    assert_eq!(s.data("usage").expect("usage")["provider"], "remote");
    assert!(
        matches!(breaker.state(), BreakerState::Closed { failures: 0 }),
        "{:?}",
        breaker.state()
    );
}

/// How the fake knowledge base answers the second page of a full listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KbMode {
    /// Both pages, all four articles.
    Healthy,
    /// Page 2 answers 401: the token was revoked mid-sync.
    AuthRevoked,
    /// Page 2 answers 429 every time.
    RateLimited,
    /// Page 2 answers 503 every time.
    ServerError,
    /// Page 2 is cut off mid-JSON.
    Truncated,
    /// Page 2 points back at itself.
    CursorLoop,
    /// Both pages, article 2 gone (a real removal).
    Article2Removed,
    /// Page 1 claims more pages but its next link does not parse.
    BrokenNextLink,
    /// Page 1 claims more pages but carries no next link.
    MissingNextLink,
}

fn kb_article(id: u64) -> Value {
    serde_json::json!({
        "id": id,
        "html_url": format!("https://kb.example.com/articles/{id}"),
        "draft": false,
        "updated_at": "2026-01-01T00:00:00Z",
        "title": format!("Article {id}"),
        "body": format!("<p>Kbword{id} explains topic number {id} of the help center.</p>"),
    })
}

fn kb_page(base: &str, ids: &[u64], next: Option<&str>) -> String {
    serde_json::json!({
        "articles": ids.iter().map(|&i| kb_article(i)).collect::<Vec<_>>(),
        "meta": {"has_more": next.is_some(), "after_cursor": next},
        "links": {"next": next.map(|c| format!("{base}/articles.json?page[size]=2&page[after]={c}"))},
    })
    .to_string()
}

/// A Zendesk-style articles API on a loopback port whose page 2 fails as `mode` says. In every
/// failing mode page 1 also comes back short (article 2 missing): a sync that reconciled on
/// that listing would delete articles 2, 3 and 4.
async fn fake_kb(mode: Arc<std::sync::Mutex<KbMode>>) -> String {
    use axum::http::{StatusCode, Uri};
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let b = base.clone();
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let (mode, base) = (*mode.lock().expect("lock"), b.clone());
        async move {
            let query = uri.query().unwrap_or("");
            let second = query.contains("page[after]=c1") || query.contains("page%5Bafter%5D=c1");
            let json = |s: String| (StatusCode::OK, s).into_response();
            match (mode, second) {
                (KbMode::Healthy, false) => json(kb_page(&base, &[1, 2], Some("c1"))),
                (KbMode::Article2Removed, false) => json(kb_page(&base, &[1], Some("c1"))),
                (KbMode::Healthy | KbMode::Article2Removed, true) => {
                    json(kb_page(&base, &[3, 4], None))
                }
                (KbMode::BrokenNextLink, _) => json(
                    serde_json::json!({"articles": [kb_article(1)], "meta": {"has_more": true},
                        "links": {"next": "http://[::1"}})
                    .to_string(),
                ),
                (KbMode::MissingNextLink, _) => json(
                    serde_json::json!({"articles": [kb_article(1)], "meta": {"has_more": true},
                        "links": {"next": null}})
                    .to_string(),
                ),
                (_, false) => json(kb_page(&base, &[1], Some("c1"))),
                (KbMode::AuthRevoked, true) => {
                    (StatusCode::UNAUTHORIZED, r#"{"error":"token revoked"}"#).into_response()
                }
                (KbMode::RateLimited, true) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "0")],
                    r#"{"error":"slow down"}"#,
                )
                    .into_response(),
                (KbMode::ServerError, true) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "upstream down").into_response()
                }
                (KbMode::Truncated, true) => json(r#"{"articles":[{"id":3,"title":"Cut o"#.into()),
                (KbMode::CursorLoop, true) => json(kb_page(&base, &[3], Some("c1"))),
            }
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

fn kb_ids(app: &TestApp) -> Vec<String> {
    let mut ids = app.engine.index.document_ids("kb").expect("ids");
    ids.sort();
    ids
}

async fn sync_kb(app: &TestApp) -> cairn_ingest::pipeline::Report {
    let engine = app.engine.clone();
    let mut reports = tokio::task::spawn_blocking(move || {
        engine
            .ingest(
                Some("kb"),
                false,
                &|_, _| {},
                &std::sync::atomic::AtomicBool::new(false),
            )
            .expect("a failed listing is a report, not an error")
    })
    .await
    .expect("ingest task");
    assert_eq!(reports.len(), 1);
    reports.remove(0)
}

#[tokio::test]
async fn knowledge_base_failures_mid_sync_end_with_a_status_and_delete_nothing() {
    let mode = Arc::new(std::sync::Mutex::new(KbMode::Healthy));
    let base = fake_kb(mode.clone()).await;
    // The connector's blocking HTTP client must not run (or be dropped) on the async runtime.
    let config = format!(
        r#"
[[sources]]
name = "kb"
kind = "kb_api"
url = "{base}/articles.json"
page_size = 2
timeout_secs = 5.0
max_retries = 2
backoff_base_ms = 1
backoff_max_ms = 5
"#
    );
    let app = tokio::task::spawn_blocking(move || TestApp::with_config(&config))
        .await
        .expect("app");
    let all = ["kb:1", "kb:2", "kb:3", "kb:4"];
    // The app's start-up ingest indexed the four articles; a second complete sync agrees.
    let first = sync_kb(&app).await;
    assert!(first.reconciled, "{first:?}");
    assert_eq!(first.counts.unchanged, 4, "{first:?}");
    assert_eq!(kb_ids(&app), all);

    let cases = [
        (KbMode::AuthRevoked, "authentication failed (HTTP 401)"),
        (KbMode::RateLimited, "rate limited (HTTP 429)"),
        (KbMode::ServerError, "server error (HTTP 503)"),
        (KbMode::Truncated, "not valid JSON"),
        (KbMode::CursorLoop, "already visited"),
        (KbMode::BrokenNextLink, "is not a URL"),
        (KbMode::MissingNextLink, "has no next-page link"),
    ];
    for (m, error) in cases {
        *mode.lock().expect("lock") = m;
        let report = sync_kb(&app).await;
        assert!(!report.reconciled, "{m:?}: {report:?}");
        assert_eq!(report.counts.deleted, 0, "{m:?}: {report:?}");
        assert!(report.counts.failed >= 1, "{m:?}: {report:?}");
        assert!(
            report.lines.iter().any(|l| matches!(&l.outcome,
                cairn_ingest::pipeline::Outcome::Failed { error: e } if e.contains(error))),
            "{m:?}: no failed line saying `{error}`: {:?}",
            report.lines
        );
        // Nothing indexed by the earlier complete sync is gone, and all of it still serves.
        assert_eq!(kb_ids(&app), all, "{m:?}");
        for id in 1..=4 {
            let hits = app
                .engine
                .search(
                    &format!("kbword{id}"),
                    5,
                    Default::default(),
                    cairn_index::SearchMode::Bm25,
                )
                .expect("search");
            assert!(
                hits.iter().any(|h| h.document.id == format!("kb:{id}")),
                "{m:?}: kb:{id} no longer found"
            );
        }
    }

    // The same API with a real removal and a complete listing does reconcile (so the checks
    // above could have failed).
    *mode.lock().expect("lock") = KbMode::Article2Removed;
    let report = sync_kb(&app).await;
    assert!(report.reconciled, "{report:?}");
    assert_eq!(report.counts.deleted, 1, "{report:?}");
    assert_eq!(kb_ids(&app), ["kb:1", "kb:3", "kb:4"]);
}
