//! `/batches`: a batch of 100 questions that completes through a SIGKILL of the `cairn serve`
//! process in the middle (every request answered once: one result per custom id, each with its
//! own trace), ownership, cancellation, JSON lines input, the limits with their typed errors,
//! and priority (a batch waits while an interactive answer is in flight).

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{self, ADMIN, BOT, HR, Server, TestApp, get, with_key};

/// The sample QA questions, each asked `per` times with a different order number, as batch
/// requests `q0`, `q1`, ….
fn questions(per: usize) -> Vec<Value> {
    let qa = std::fs::read_to_string(support::repo().join("samples/qa.jsonl")).expect("qa");
    let base: Vec<String> = qa
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("qa line")["question"]
                .as_str()
                .expect("q")
                .to_string()
        })
        .collect();
    (0..base.len() * per)
        .map(|i| json!({"custom_id": format!("q{i}"), "question": format!("{} (order {i})", base[i % base.len()])}))
        .collect()
}

fn ndjson(requests: &[Value]) -> String {
    requests.iter().map(|r| format!("{r}\n")).collect()
}

fn post(
    uri: &str,
    content_type: &str,
    body: String,
    key: &str,
) -> axum::http::Request<axum::body::Body> {
    let req = axum::http::Request::post(uri)
        .header("content-type", content_type)
        .body(axum::body::Body::from(body))
        .expect("request");
    with_key(req, key)
}

async fn call(app: &TestApp, req: axum::http::Request<axum::body::Body>) -> (StatusCode, Value) {
    let resp = app.router().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Submits `requests` as JSON with `key`; the accepted batch's id.
async fn submit(app: &TestApp, requests: &[Value], key: &str) -> String {
    let body = json!({"requests": requests, "metadata": {"run": "test"}}).to_string();
    let (status, v) = call(app, post("/batches", "application/json", body, key)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "queued");
    assert_eq!(v["total"], requests.len());
    v["id"].as_str().expect("id").to_string()
}

async fn batch(app: &TestApp, id: &str, key: &str) -> Value {
    let (status, v) = call(app, with_key(get(&format!("/batches/{id}")), key)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

/// Polls the batch until it is no longer queued or running (60 s at most).
async fn until_ended(app: &TestApp, id: &str, key: &str) -> Value {
    for _ in 0..400 {
        let b = batch(app, id, key).await;
        if b["state"] != "queued" && b["state"] != "running" {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!("batch {id} did not end within 60 s");
}

fn result_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("result line {l:?}: {e}")))
        .collect()
}

async fn results(app: &TestApp, id: &str, key: &str) -> Vec<Value> {
    let resp = app
        .router()
        .oneshot(with_key(get(&format!("/batches/{id}/results")), key))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .expect("body");
    result_lines(&String::from_utf8_lossy(&bytes))
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

fn batch_config(dir: &std::path::Path, batches: &str) -> std::path::PathBuf {
    let keys = format!(
        "[auth]\nanonymous_scopes = []\n[[auth.keys]]\nname = \"admin\"\nhash = \"{}\"\nscopes = [\"admin\", \"ask\"]\nburst = 1000\n[batches]\n{batches}\n",
        cairn::http::auth::hash_key(ADMIN)
    );
    support::write_config(dir, &keys)
}

/// A `cairn serve` process (sample corpus, one batch worker) is SIGKILLed while a batch of 100
/// questions runs and started again: the batch completes, and every request has exactly one
/// result, with its own trace id that names a trace of the batch route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_100_completes_through_a_restart_answering_each_request_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = batch_config(dir.path(), "concurrency = 1");
    let client = Server::client();
    let server = Server::start(&config);
    let base = server.base.clone();
    let requests = questions(10);
    assert_eq!(requests.len(), 100);
    let accepted: Value = client
        .post(format!("{base}/batches"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/x-ndjson")
        .body(ndjson(&requests))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let id = accepted["id"].as_str().expect("id").to_string();
    let status = |base: String| {
        let (client, id) = (client.clone(), id.clone());
        async move {
            client
                .get(format!("{base}/batches/{id}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("status")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    // Kill it once some, not all, requests are done.
    let mut before = Value::Null;
    for _ in 0..2000 {
        before = status(base.clone()).await;
        if before["done"].as_u64().unwrap_or(0) >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let done_before = before["done"].as_u64().expect("done");
    assert!(
        (10..100).contains(&done_before),
        "the kill should land mid-batch: {before}"
    );

    let server = Server::start(&config);
    let base = server.base.clone();
    let mut after = Value::Null;
    for _ in 0..1200 {
        after = status(base.clone()).await;
        if after["state"] != "queued" && after["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after["state"], "completed", "{after}");
    assert_eq!(
        (
            after["total"].as_u64(),
            after["done"].as_u64(),
            after["failed"].as_u64()
        ),
        (Some(100), Some(100), Some(0)),
        "{after}"
    );
    assert!(after["finished_at"].is_string(), "{after}");

    let text = client
        .get(format!("{base}/batches/{id}/results"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("results")
        .text()
        .await
        .expect("text");
    let lines = result_lines(&text);
    assert_eq!(lines.len(), 100, "one line per request");
    let ids: BTreeSet<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().expect("custom_id"))
        .collect();
    let expected: BTreeSet<String> = (0..100).map(|i| format!("q{i}")).collect();
    assert_eq!(
        ids,
        expected
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<&str>>(),
        "each request exactly once"
    );
    let traces: HashSet<&str> = lines
        .iter()
        .map(|l| l["trace_id"].as_str().expect("trace id"))
        .collect();
    assert_eq!(traces.len(), 100, "each result has its own trace");
    for l in &lines {
        assert!(l["error"].is_null() && l["answer"].is_string(), "{l}");
        assert!(
            l["outcome"] == "answered" || l["outcome"] == "no_answer",
            "{l}"
        );
    }
    // Every result's trace was recorded by the pipeline, under the batch route; at most the
    // one request in flight at the kill was answered a second time (and stored once).
    let recorded: Value = client
        .get(format!("{base}/admin/traces?limit=1000"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("traces")
        .json()
        .await
        .expect("json");
    let batch_traces: HashSet<&str> = recorded["traces"]
        .as_array()
        .expect("traces")
        .iter()
        .filter(|t| t["http_route"] == "/batches")
        .map(|t| t["id"].as_str().expect("trace id"))
        .collect();
    assert!(
        traces.is_subset(&batch_traces),
        "a result names a trace the pipeline never recorded"
    );
    assert!(
        batch_traces.len() <= 101,
        "{} batch answers for 100 requests",
        batch_traces.len()
    );
    drop(server);
}

/// A batch belongs to its key: another key gets 404 for its status, results and cancel, and a
/// request without a key 401.
#[tokio::test]
async fn another_key_gets_404_for_a_batch() {
    let app = support::keyed_app();
    let id = submit(&app, &questions(1)[..2], ADMIN).await;
    for req in [
        get(&format!("/batches/{id}")),
        get(&format!("/batches/{id}/results")),
        axum::http::Request::delete(format!("/batches/{id}"))
            .body(axum::body::Body::empty())
            .expect("req"),
    ] {
        let uri = req.uri().to_string();
        let (status, v) = call(&app, with_key(req, BOT)).await;
        assert_eq!(
            (status, error_code(&v)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{uri}: {v}"
        );
    }
    let (status, _) = call(&app, get(&format!("/batches/{id}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let ended = until_ended(&app, &id, ADMIN).await;
    assert_eq!(ended["state"], "completed", "{ended}");
    assert_eq!(ended["metadata"], json!({"run": "test"}));
    assert_eq!(results(&app, &id, ADMIN).await.len(), 2);
}

/// A batch runs with its key's access groups: the `hr` key's batch cites its restricted
/// source, the `admin` key's (no groups) same question does not.
#[tokio::test]
async fn a_batch_runs_with_its_keys_access_groups() {
    let app = support::keyed_app();
    let q = [
        json!({"custom_id": "salary", "question": "What is the salary band for senior engineers?"}),
    ];
    let hr = submit(&app, &q, HR).await;
    let admin = submit(&app, &q, ADMIN).await;
    until_ended(&app, &hr, HR).await;
    until_ended(&app, &admin, ADMIN).await;
    let cites_salaries = |r: &Value| {
        r["citations"]
            .as_array()
            .expect("citations")
            .iter()
            .any(|c| c["title"].as_str().unwrap_or_default().contains("Salary"))
    };
    assert!(cites_salaries(&results(&app, &hr, HR).await[0]));
    assert!(!cites_salaries(&results(&app, &admin, ADMIN).await[0]));
}

/// While an interactive answer is in flight (`max_interactive = 0`), a batch waits; cancelling
/// it then leaves every request unstarted, and nothing runs after the interactive answer ends.
#[tokio::test]
async fn a_batch_waits_for_interactive_answers_and_cancel_stops_what_has_not_started() {
    let app = support::keyed_app();
    let interactive = app.engine.load.enter();
    let id = submit(&app, &questions(1), ADMIN).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let waiting = batch(&app, &id, ADMIN).await;
    assert_eq!(
        (waiting["state"].as_str(), waiting["done"].as_u64()),
        (Some("queued"), Some(0)),
        "{waiting}"
    );
    let del = axum::http::Request::delete(format!("/batches/{id}"))
        .body(axum::body::Body::empty())
        .expect("req");
    let (status, cancelled) = call(&app, with_key(del, ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert!(cancelled["finished_at"].is_string());
    drop(interactive);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = batch(&app, &id, ADMIN).await;
    assert_eq!(
        (after["state"].as_str(), after["done"].as_u64()),
        (Some("cancelled"), Some(0)),
        "{after}"
    );
    assert!(results(&app, &id, ADMIN).await.is_empty());

    // The next batch runs once no interactive answer is in flight.
    let next = submit(&app, &questions(1)[..3], ADMIN).await;
    let ended = until_ended(&app, &next, ADMIN).await;
    assert_eq!(
        (ended["state"].as_str(), ended["done"].as_u64()),
        (Some("completed"), Some(3)),
        "{ended}"
    );
}

/// JSON lines input (blank lines skipped); results come back in request order; `mode:
/// "agent"` is accepted and, with the offline default model (which calls no tools), answered
/// in RAG mode as `/ask` answers it.
#[tokio::test]
async fn json_lines_input_runs_and_results_keep_request_order() {
    let app = support::keyed_app();
    let mut requests = questions(1)[..3].to_vec();
    requests.push(
        json!({"custom_id": "agentic", "question": "How long do refunds take?", "mode": "agent"}),
    );
    let body = ndjson(&requests).replacen('\n', "\n\n", 1);
    let (status, v) = call(&app, post("/batches", "application/x-ndjson", body, ADMIN)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["total"], 4);
    let id = v["id"].as_str().expect("id");
    let ended = until_ended(&app, id, ADMIN).await;
    assert_eq!(
        (ended["done"].as_u64(), ended["failed"].as_u64()),
        (Some(4), Some(0)),
        "{ended}"
    );
    let lines = results(&app, id, ADMIN).await;
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["q0", "q1", "q2", "agentic"]);
    for l in &lines {
        assert!(
            l["trace_id"].is_string() && !l["citations"].as_array().expect("citations").is_empty(),
            "{l}"
        );
    }
    assert_eq!(lines[3]["outcome"], "answered", "{}", lines[3]);
    assert!(lines[3]["error"].is_null(), "{}", lines[3]);
}

/// Bad batches are refused with typed errors that name the request or line.
#[tokio::test]
async fn batch_limits_and_bad_requests_are_typed_errors() {
    let app = support::keyed_app_with(
        "[batches]\nmax_requests = 3\nmax_bytes = 2000\nmax_active_per_key = 1",
    );
    let send = |body: String, ct: &'static str| post("/batches", ct, body, ADMIN);
    let json_body = |requests: Value| json!({"requests": requests}).to_string();
    let cases: Vec<(axum::http::Request<axum::body::Body>, StatusCode, &str, &str)> = vec![
        (send(json_body(json!([])), "application/json"), StatusCode::UNPROCESSABLE_ENTITY, "empty_batch", "no requests"),
        (send(json_body(json!(questions(1)[..4])), "application/json"), StatusCode::PAYLOAD_TOO_LARGE, "batch_too_many_requests", "max_requests"),
        (send(json_body(json!([{"custom_id": "a", "question": "x".repeat(3000)}])), "application/json"), StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", "max_bytes"),
        (send(json_body(json!([{"custom_id": "a", "question": "q one"}, {"custom_id": "a", "question": "q two"}])), "application/json"), StatusCode::UNPROCESSABLE_ENTITY, "duplicate_custom_id", "requests[0] and again by requests[1]"),
        (send(json_body(json!([{"custom_id": "a", "question": "ok"}, {"custom_id": "b", "question": "  "}])), "application/json"), StatusCode::BAD_REQUEST, "empty_query", "requests[1]"),
        (send(json_body(json!([{"custom_id": "a", "question": "ok", "filters": {"source": ["nope"]}}])), "application/json"), StatusCode::UNPROCESSABLE_ENTITY, "unknown_filter", "requests[0]"),
        (send(json_body(json!([{"custom_id": "a", "question": "ok", "mode": "magic"}])), "application/json"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "requests[0]"),
        (send(json_body(json!([{"question": "no id"}])), "application/json"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "custom_id"),
        (send("{\"custom_id\":\"a\",\"question\":\"ok\"}\n{\"custom_id\":\"b\",\"question\":\"ok\"}\n{not json\n".into(), "application/x-ndjson"), StatusCode::BAD_REQUEST, "invalid_json", "line 3"),
        (send("{\"requests\": [".into(), "application/json"), StatusCode::BAD_REQUEST, "invalid_json", ""),
        (send(json_body(json!([{"custom_id": "a", "question": "ok"}])), "text/plain"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "x-ndjson"),
    ];
    for (req, status, code, needle) in cases {
        let (got, v) = call(&app, req).await;
        assert_eq!((got, error_code(&v)), (status, code), "{v}");
        let message = v["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(needle),
            "{code}: {message:?} should name {needle:?}"
        );
    }
    // One active batch per key: a second is refused while the first waits.
    let interactive = app.engine.load.enter();
    submit(&app, &questions(1)[..1], ADMIN).await;
    let (got, v) = call(
        &app,
        send(json_body(json!(questions(1)[..1])), "application/json"),
    )
    .await;
    assert_eq!(
        (got, error_code(&v)),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_batches"),
        "{v}"
    );
    drop(interactive);
}
