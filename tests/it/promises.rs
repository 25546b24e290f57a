//! Promises of README.md and ARCHITECTURE.md that no other test held to account (the table in
//! RELIABILITY.md, "Invariants and the tests that fail when they break", names each): one admin
//! job at a time, provider error bodies never shown to clients, no question or answer text in
//! the trace file by default, reranking that cannot add a hit, masked remote rerank requests,
//! the command line's `hash-key`, exit status, `--full` embedder switch and flag precedence, API
//! keys kept out of the process logs, and answers that go on when the audit log cannot be written.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use crate::support::{self, ADMIN, TestApp, body_json, get, post_json, with_key};
use crate::vendors::{Fake, Frame, Reply, Vendor};

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

/// The whole response as text, whatever its status (a stream is read to its end).
async fn response_text(app: &TestApp, req: axum::http::Request<axum::body::Body>) -> String {
    let resp = app.router().oneshot(req).await.expect("response");
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body");
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---- one admin job at a time (README "Keys, admin and operations": 409 `job_running`)

/// One knowledge-base article; the page answers after `delay` while `slow` is set.
async fn slow_kb(slow: Arc<AtomicBool>) -> Fake {
    Fake::responding(move |_| {
        let page = json!({
            "articles": [{"id": 1, "html_url": "https://kb.example.com/articles/1", "draft": false,
                "updated_at": "2026-01-01T00:00:00Z", "title": "Article 1",
                "body": "<p>Kbword one explains the help center.</p>"}],
            "meta": {"has_more": false, "after_cursor": null},
            "links": {"next": null},
        })
        .to_string();
        let mut reply = Reply::json(200, &page);
        if slow.load(Ordering::SeqCst) {
            reply.frames.insert(0, Frame::Delay(Duration::from_secs(3)));
        }
        reply
    })
    .await
}

async fn reindex(app: &TestApp, body: &str) -> (StatusCode, Value) {
    let resp = app
        .router()
        .oneshot(with_key(post_json("/admin/reindex", body), ADMIN))
        .await
        .expect("response");
    (resp.status(), body_json(resp).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reindex_while_one_runs_is_409_job_running() {
    let slow = Arc::new(AtomicBool::new(false));
    let kb = slow_kb(slow.clone()).await;
    let config = format!(
        "[[auth.keys]]\nname = \"admin\"\nhash = \"{}\"\nscopes = [\"admin\"]\nburst = 400\n\
         [[sources]]\nname = \"kb\"\nkind = \"kb_api\"\nurl = \"{}/articles.json\"\ntimeout_secs = 10.0\n",
        cairn::http::auth::hash_key(ADMIN),
        kb.base
    );
    // The start-up ingest reads the API with a blocking client: off the async threads.
    // (The burst covers the status polling below, so the last request is not rate limited.)
    let app = tokio::task::spawn_blocking(move || TestApp::with_config(&config))
        .await
        .expect("app");
    slow.store(true, Ordering::SeqCst);
    let (status, first) = reindex(&app, r#"{"source":"kb"}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    // The first job waits 3 s for its page: a second one, for any source, is refused.
    let (status, busy) = reindex(&app, r#"{"source":"samples"}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "{busy}");
    assert_eq!(busy["error"]["code"], "job_running", "{busy}");
    assert!(
        busy["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{busy}"
    );
    let listed = response_text(&app, with_key(get("/admin/jobs"), ADMIN)).await;
    let jobs: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(
        jobs["jobs"].as_array().map(Vec::len),
        Some(1),
        "the refused job must not be queued: {jobs}"
    );

    // Once the first has ended, the next is accepted.
    slow.store(false, Ordering::SeqCst);
    let id = first["id"].as_str().expect("id");
    let mut state = Value::Null;
    for _ in 0..200 {
        let job = response_text(&app, with_key(get(&format!("/admin/jobs/{id}")), ADMIN)).await;
        state = serde_json::from_str::<Value>(&job).expect("json")["state"].clone();
        if state != "queued" && state != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(state != "queued" && state != "running", "{state}");
    let (status, next) = reindex(&app, r#"{"source":"samples"}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{next}");
}

// ---- clients never see a raw provider body (ARCHITECTURE.md "Invariants")

const UPSTREAM_SECRET: &str = "upstream-secret-7c1e at db-internal.example:5432";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_body_never_reaches_the_client() {
    let mid_stream = Arc::new(AtomicBool::new(false));
    let m = mid_stream.clone();
    let fake = Fake::responding(move |_| {
        let error = Vendor::Compatible.error_body(UPSTREAM_SECRET);
        if m.load(Ordering::SeqCst) {
            // Some text, then the vendor's error object in the stream.
            let mut frames = Vendor::Compatible.preamble();
            frames.push(Vendor::Compatible.text_frame("Refunds take "));
            frames.push(Frame::Bytes(format!("data: {error}\n\n")));
            Reply::sse(frames)
        } else {
            Reply::json(500, &error)
        }
    })
    .await;
    let app = TestApp::with_setup(|dir| {
        support::wiki_with_remote_model(
            dir,
            &fake.base,
            ("refunds.md", "# Refunds\n\nRefunds take 5 business days.\n"),
            "",
        )
    });
    let question = "How long do refunds take?";
    let requests = || {
        let chat = |stream: bool| {
            json!({"model": "cairn", "stream": stream, "messages": [{"role": "user", "content": question}]})
                .to_string()
        };
        vec![
            post_json(
                "/ask",
                &json!({"question": question, "stream": false}).to_string(),
            ),
            post_json("/ask", &json!({"question": question}).to_string()),
            post_json("/v1/chat/completions", &chat(false)),
            post_json("/v1/chat/completions", &chat(true)),
        ]
    };
    for phase in ["error status before output", "error event after output"] {
        mid_stream.store(phase.contains("after"), Ordering::SeqCst);
        let before = fake.hits();
        for req in requests() {
            let uri = req.uri().clone();
            let text = response_text(&app, req).await;
            assert!(
                !text.contains("upstream-secret") && !text.contains("db-internal"),
                "{phase}, {uri}: the provider's body reached the client: {text}"
            );
            assert!(!text.is_empty(), "{phase}, {uri}");
        }
        // Every request really reached the failing provider (so the checks above could fail).
        assert_eq!(fake.hits() - before, 4, "{phase}");
    }
}

// ---- no question or answer text in the trace file by default (ARCHITECTURE.md, README)

fn trace_file(app: &TestApp) -> String {
    std::fs::read_to_string(app.dir.path().join("data/state/traces.jsonl")).expect("trace file")
}

#[tokio::test]
async fn the_trace_file_keeps_no_question_or_answer_text_by_default() {
    let question = "How long do refunds take for order quokka-5521?";
    let app = TestApp::new();
    let answer = support::ask_json(&app, question).await;
    let text = answer["answer"].as_str().expect("answer");
    assert!(text.contains("5 business days"), "{answer}");
    let file = trace_file(&app);
    let trace_id = answer["trace_id"].as_str().expect("trace id");
    assert!(file.contains(trace_id), "the trace was not written: {file}");
    assert!(
        !file.contains("quokka-5521"),
        "question text in the trace file"
    );
    assert!(
        !file.contains("5 business days"),
        "answer text in the trace file"
    );

    // The control: with record_text both are written, so the checks above could fail.
    let app = TestApp::with_config("[traces]\nrecord_text = true\n");
    support::ask_json(&app, question).await;
    let file = trace_file(&app);
    assert!(
        file.contains("quokka-5521") && file.contains("5 business days"),
        "{file}"
    );
}

// ---- reranking reorders, never adds (ARCHITECTURE.md "Invariants")

fn hit(doc: &str, text: &str) -> cairn_index::Hit {
    cairn_index::Hit {
        chunk_id: format!("{doc}#0"),
        score: 1.0,
        breakdown: Default::default(),
        chunk: cairn_index::ChunkRecord {
            doc_id: doc.into(),
            ordinal: 0,
            text: text.into(),
            heading_path: Vec::new(),
            page: None,
            char_start: 0,
            char_end: text.chars().count(),
        },
        document: cairn_index::DocumentRecord {
            id: doc.into(),
            source: "s".into(),
            external_id: doc.into(),
            title: doc.into(),
            url: None,
            updated_at: None,
            metadata: Default::default(),
            access_groups: Vec::new(),
            content_hash: "h".into(),
        },
        snippet: None,
    }
}

/// A reranker that scores more passages than it was given (a misbehaving remote API).
struct Overeager;

impl cairn_ingest::rerank::Reranker for Overeager {
    fn name(&self) -> String {
        "overeager".into()
    }
    fn rerank(
        &self,
        _query: &str,
        passages: &[&str],
    ) -> Result<Vec<f32>, cairn_ingest::IngestError> {
        // Reverse order, plus scores for passages that do not exist.
        let mut s: Vec<f32> = (0..passages.len()).map(|i| i as f32).collect();
        s.extend([100.0, 200.0]);
        Ok(s)
    }
}

#[test]
fn reranking_reorders_and_never_adds_a_hit() {
    let hits = vec![hit("s:a", "alpha"), hit("s:b", "beta"), hit("s:c", "gamma")];
    let out = cairn::retrieval::rerank::apply(&Overeager, "q", hits.clone(), 10).expect("rerank");
    let ids: Vec<&str> = out.iter().map(|h| h.chunk_id.as_str()).collect();
    assert_eq!(ids, ["s:c#0", "s:b#0", "s:a#0"]);
    for h in &out {
        assert!(
            hits.iter()
                .any(|o| o.chunk_id == h.chunk_id && o.chunk == h.chunk),
            "{h:?}"
        );
        assert!(h.breakdown.rerank.is_some());
    }
    let kept = cairn::retrieval::rerank::apply(&Overeager, "q", hits, 2).expect("rerank");
    assert_eq!(kept.len(), 2);
}

// ---- remote rerank requests are masked (README "Personal data")

const EMAIL: &str = "billing.disputes@acme-corp.example";
const PHONE: &str = "+1 415 555 2671";
const ASKER: &str = "jane.roe@customer.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_rerank_requests_are_masked() {
    let fake = Fake::responding(|body| {
        // TEI's shape: every document scored, in reverse order.
        let n = body["documents"].as_array().map_or(0, Vec::len);
        let scores: Vec<Value> = (0..n)
            .map(|i| json!({"index": i, "score": i as f64 / 10.0}))
            .collect();
        Reply::json(200, &Value::from(scores).to_string())
    })
    .await;
    let app = TestApp::with_setup(|dir| {
        let wiki = dir.join("wiki");
        std::fs::create_dir_all(&wiki).expect("mkdir");
        std::fs::write(
            wiki.join("billing.md"),
            format!("# Billing disputes\n\nBilling disputes are handled by email at {EMAIL} or by phone at {PHONE}.\n"),
        )
        .expect("write");
        format!(
            "[providers.remote]\nkind = \"openai_compatible\"\nbase_url = \"{}/v1\"\nmax_retries = 0\n\
             [providers.local]\nkind = \"extractive\"\n\
             [routes]\nanswer = [\"local\"]\nrerank = [\"remote:bge-reranker\"]\n\
             [rerank]\nkind = \"provider\"\nroute = \"rerank\"\ncandidates = 5\n\
             [[sources]]\nname = \"wiki\"\nkind = \"files\"\npath = {wiki:?}\n",
            fake.base
        )
    });
    let answer = support::ask_json(
        &app,
        &format!("Who handles billing disputes? Reply to {ASKER}"),
    )
    .await;
    let seen = fake.seen();
    assert!(
        !seen.is_empty(),
        "the remote reranker was not called: {answer}"
    );
    for s in &seen {
        assert_eq!(s.path_and_query, "/v1/rerank");
        let sent = s.body.to_string();
        for secret in [EMAIL, PHONE, ASKER, "555 2671"] {
            assert!(
                !sent.contains(secret),
                "{secret} reached the reranker: {sent}"
            );
        }
    }
    let sent: String = seen.iter().map(|s| s.body.to_string()).collect();
    assert!(
        sent.contains("[email-") && sent.contains("[phone-"),
        "the document was not in the rerank request: {sent}"
    );
}

// ---- the command line

#[tokio::test]
async fn cli_hash_key_prints_a_hash_that_authenticates_the_key() {
    let key = "k3y-for-the-hash-test";
    let out = cairn().args(["hash-key", key]).output().expect("run");
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        printed,
        format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
    );
    assert!(!printed.contains(key));
    // Configured as printed, it lets the key in and no other.
    let app = TestApp::with_config(&format!(
        "[auth]\nanonymous_scopes = [\"ask\"]\n[[auth.keys]]\nname = \"ops\"\nhash = \"{printed}\"\nscopes = [\"search\"]\n"
    ));
    let status = |k: &str| {
        let req = with_key(get("/search?q=refund"), k);
        let router = app.router();
        async move { router.oneshot(req).await.expect("response").status() }
    };
    assert_eq!(status(key).await, StatusCode::OK);
    assert_eq!(status("another-key").await, StatusCode::UNAUTHORIZED);
}

fn hash_config(dir: &Path, dimension: usize, extra: &str) -> std::path::PathBuf {
    support::write_config(
        dir,
        &format!("[embedder]\nkind = \"hash\"\ndimension = {dimension}\n{extra}"),
    )
}

fn run(config: &Path, args: &[&str]) -> std::process::Output {
    cairn()
        .arg("--config")
        .arg(config)
        .arg("-q")
        .args(args)
        .output()
        .expect("run cairn")
}

/// Runs cairn; returns its exit code and what it printed (stdout, then stderr).
fn exit_code(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = run(config, args);
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), said)
}

#[cfg(unix)]
#[test]
fn cli_ingest_exits_1_when_a_document_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).expect("mkdir");
    std::fs::write(docs.join("ok.md"), "# Fine\n\nA page that reads well.\n").expect("write");
    let source = format!("[[sources]]\nname = \"docs\"\nkind = \"files\"\npath = {docs:?}\n");
    let config = hash_config(dir.path(), 64, &source);
    let (code, said) = exit_code(&config, &["ingest"]);
    assert_eq!(code, Some(0), "{said}");
    // A symlink loop cannot be read: that document fails, the run exits 1.
    std::os::unix::fs::symlink("loop-b.md", docs.join("loop-a.md")).expect("symlink");
    std::os::unix::fs::symlink("loop-a.md", docs.join("loop-b.md")).expect("symlink");
    let (code, said) = exit_code(&config, &["ingest"]);
    assert_eq!(code, Some(1), "{said}");
}

#[test]
fn ingest_full_with_another_embedder_moves_the_old_index_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = hash_config(dir.path(), 64, "");
    assert!(run(&config, &["ingest"]).status.success());
    let data = dir.path().join("data");
    assert!(!data.join("index.previous").exists());

    // Another embedder: a plain ingest refuses the index, `--full` moves it aside and rebuilds.
    let config = hash_config(dir.path(), 96, "");
    let out = run(&config, &["ingest"]);
    assert!(
        !out.status.success(),
        "an index of another embedder was used"
    );
    let out = run(&config, &["ingest", "--full"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.join("index.previous").is_dir());
    let out = run(&config, &["search", "refund", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        json["hits"].as_array().is_some_and(|h| !h.is_empty()),
        "{json}"
    );
}

#[test]
fn a_flag_overrides_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = hash_config(dir.path(), 64, "");
    let (flag, env) = (dir.path().join("from-flag"), dir.path().join("from-env"));
    let out = cairn()
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&flag)
        .args(["-q", "ingest"])
        .env("CAIRN__DATA_DIR", &env)
        .output()
        .expect("run cairn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        flag.join("index").is_dir(),
        "the flag's data dir was not used"
    );
    assert!(!env.exists(), "the environment's data dir was used");
}

// ---- API keys are never logged (ARCHITECTURE.md "Invariants")

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_reach_the_process_logs() {
    let port = support::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = "wr0ng-key-9f3a";
    let config = hash_config(
        dir.path(),
        64,
        &format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\n[[auth.keys]]\nname = \"ops\"\nhash = \"{}\"\nscopes = [\"ask\", \"search\", \"admin\"]\n",
            cairn::http::auth::hash_key(ADMIN)
        ),
    );
    let log = dir.path().join("serve.log");
    // Debug level for every crate: what an operator turns on to chase a problem.
    let mut child = cairn()
        .arg("--config")
        .arg(&config)
        .args(["-vv", "serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start cairn serve");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    support::wait_until_serving(&client, &base, &mut child).await;
    let ask = json!({"question": "How long do refunds take?", "stream": false});
    for key in [ADMIN, wrong] {
        let requests = [
            client.get(format!("{base}/search?q=refund")),
            client.post(format!("{base}/ask")).json(&ask),
            client.get(format!("{base}/admin/traces")),
            client
                .post(format!("{base}/admin/reindex"))
                .json(&json!({"source": "samples"})),
        ];
        for req in requests {
            req.bearer_auth(key).send().await.expect("request");
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("DEBUG"), "no debug lines were logged: {text}");
    for key in [ADMIN, wrong] {
        assert!(!text.contains(key), "the key {key} is in the log");
    }
}

// ---- `cairn ingest` exits 1 when the quality gate refused a run (README "Command line")

#[test]
fn cli_ingest_exits_1_when_the_quality_gate_refuses_a_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kb = dir.path().join("kb");
    std::fs::create_dir_all(&kb).expect("mkdir");
    let otters = kb.join("otters.md");
    std::fs::write(
        &otters,
        "# Sea otters\n\nSea otters hold hands while they sleep so that the current does not carry them apart.",
    )
    .expect("write");
    std::fs::write(
        kb.join("badgers.md"),
        "# Badgers\n\nBadgers dig large burrow systems called setts.",
    )
    .expect("write");
    let golden = dir.path().join("golden.jsonl");
    std::fs::write(
        &golden,
        concat!(
            r#"{"question": "Why do sea otters hold hands when sleeping?", "sources": ["kb:otters.md"]}"#,
            "\n",
            r#"{"question": "What is a badger burrow called?", "sources": ["kb:badgers.md"]}"#,
            "\n",
        ),
    )
    .expect("write golden");
    let config = hash_config(
        dir.path(),
        64,
        &format!(
            "[quality_gate]\nfile = {golden:?}\nmax_drop = 0.05\n[[sources]]\nname = \"kb\"\nkind = \"files\"\npath = {kb:?}\n"
        ),
    );
    let (code, said) = exit_code(&config, &["ingest"]);
    assert_eq!(code, Some(0), "{said}");
    // The otters page loses its answer: the gate refuses the run and the command says so.
    std::fs::write(
        &otters,
        "# Quarterly budget\n\nThe finance team reviews travel spending every quarter.",
    )
    .expect("write");
    let (code, said) = exit_code(&config, &["ingest", "--source", "kb"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("gate"), "the refusal is not named: {said}");
}

// ---- a failed audit write does not stop the answer (README "audit log")

#[tokio::test]
async fn a_failed_audit_write_does_not_stop_the_answer() {
    let app = TestApp::with_setup(|dir| {
        let path = dir.join("audit/audit.jsonl");
        format!("[cache]\nenabled = false\n[audit]\npath = {path:?}\nmax_bytes = 1024\n")
    });
    // The log's directory disappears: appends go to the unlinked file until it must rotate,
    // and from then on every write fails (the rotation cannot rename the file).
    std::fs::remove_dir_all(app.dir.path().join("audit")).expect("remove the audit dir");
    let probe = cairn::observe::audit::AuditEvent::Admin {
        action: "probe".into(),
        caller: "test".into(),
        detail: Value::Null,
    };
    let broken = (0..32).any(|_| app.engine.audit.record(&probe).is_err());
    assert!(broken, "the audit log never failed");
    for _ in 0..3 {
        let answer = support::ask_refunds(&app).await;
        assert_eq!(answer["outcome"], "answered", "{answer}");
        let text = answer["answer"].as_str().expect("answer");
        assert!(text.contains("5 business days"), "{answer}");
    }
    assert!(app.engine.audit.record(&probe).is_err(), "the log healed");
}
