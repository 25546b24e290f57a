//! OTLP trace export end to end: a fake OTLP/HTTP collector receives the spans of a real
//! /ask, and an unreachable collector neither fails nor truncates the answer.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::support::{TestApp, body_json, metrics_text, post_json};

const QUESTION: &str = "How long do refunds take?";

/// What the fake collector received in one request.
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A fake OTLP/HTTP collector on a loopback port: `POST /v1/traces` with protobuf bodies.
async fn collector() -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                if headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes())
                    != Some(b"application/x-protobuf")
                {
                    return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                }
                let _ = tx.send(Received { headers, body });
                // An empty ExportTraceServiceResponse: full success.
                (StatusCode::OK, Vec::new())
            }
        }),
    );
    let addr = crate::support::serve_loopback(app).await;
    (format!("http://{addr}"), rx)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string(attrs: &[KeyValue], key: &str) -> String {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key}: expected a string, got {other:?}"),
    }
}

fn int(attrs: &[KeyValue], key: &str) -> i64 {
    match attr(attrs, key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("{key}: expected an integer, got {other:?}"),
    }
}

async fn ask(app: &TestApp) -> serde_json::Value {
    let body = format!(r#"{{"question":"{QUESTION}","stream":false}}"#);
    let resp = app
        .router()
        .oneshot(post_json("/ask", &body))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    body_json(resp).await
}

/// `cairn_otlp_export_failures_total` as `/metrics` shows it (0 before the first failure).
async fn export_failures(app: &TestApp) -> f64 {
    metrics_text(app)
        .await
        .lines()
        .find_map(|l| l.strip_prefix("cairn_otlp_export_failures_total "))
        .map(|v| v.trim().parse().expect("number"))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_exported_as_a_span_tree_without_its_text() {
    let (endpoint, mut rx) = collector().await;
    let app = TestApp::with_config(&format!(
        "[traces]\nrecord_text = false\n[traces.otlp]\nendpoint = \"{endpoint}\"\nservice_name = \"cairn-test\"\ntimeout_ms = 5000\nheaders = {{ x-scope-orgid = \"tenant-a\" }}\n"
    ));
    let answer = ask(&app).await;
    assert_eq!(answer["outcome"], "answered", "{answer}");
    let trace_id = answer["trace_id"].as_str().expect("trace id").to_string();

    // No flush: the batch processor ships on its own schedule. Collect requests until the
    // request span arrived (its children are enqueued with it, possibly in another batch).
    let mut spans: Vec<Span> = Vec::new();
    let mut bodies: Vec<Bytes> = Vec::new();
    let mut service_names = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !spans.iter().any(|s| s.name == "POST /ask") || spans.len() < 3 {
        let got = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the collector received the trace within 60 s")
            .expect("collector running");
        assert_eq!(
            got.headers.get("x-scope-orgid").map(|v| v.as_bytes()),
            Some(&b"tenant-a"[..])
        );
        let req = ExportTraceServiceRequest::decode(got.body.clone()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let resource = rs.resource.expect("resource");
            service_names.push(string(&resource.attributes, "service.name"));
            spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans));
        }
        bodies.push(got.body);
    }
    assert!(service_names.iter().all(|n| n == "cairn-test"));

    let root = spans
        .iter()
        .find(|s| s.name == "POST /ask")
        .expect("request span");
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert!(root.parent_span_id.is_empty());
    let uuid = uuid::Uuid::parse_str(&trace_id).expect("uuid");
    assert_eq!(
        root.trace_id,
        uuid.as_bytes().to_vec(),
        "OTLP trace id = cairn trace id"
    );
    assert!(root.end_time_unix_nano > root.start_time_unix_nano);
    let a = &root.attributes;
    let usage = &answer["usage"];
    assert_eq!(string(a, "cairn.trace_id"), trace_id);
    assert_eq!(string(a, "cairn.outcome"), "answered");
    assert_eq!(string(a, "http.route"), "/ask");
    assert_eq!(string(a, "gen_ai.request.model"), usage["model"]);
    assert_eq!(string(a, "gen_ai.provider.name"), "cairn.extractive");
    assert_eq!(
        int(a, "gen_ai.usage.input_tokens"),
        usage["input_tokens"].as_i64().expect("input tokens")
    );
    assert_eq!(
        int(a, "gen_ai.usage.output_tokens"),
        usage["output_tokens"].as_i64().expect("output tokens")
    );
    assert!(usage["output_tokens"].as_i64() > Some(0), "{usage}");
    let Some(Value::ArrayValue(ids)) = attr(a, "cairn.retrieved.chunk_ids") else {
        panic!("retrieved chunk ids missing");
    };
    assert_eq!(
        ids.values.len(),
        answer["retrieval"].as_array().expect("hits").len()
    );

    // Children: retrieval under the request, the model call under the request.
    let retrieve = spans
        .iter()
        .find(|s| s.name == "retrieve")
        .expect("retrieve span");
    assert_eq!(retrieve.parent_span_id, root.span_id);
    assert_eq!(retrieve.trace_id, root.trace_id);
    let call = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("model call span");
    assert_eq!(call.parent_span_id, root.span_id);
    assert_eq!(string(&call.attributes, "gen_ai.operation.name"), "chat");

    // record_text = false: neither the question nor the answer left the process.
    for s in &spans {
        assert!(attr(&s.attributes, "cairn.question").is_none());
        assert!(attr(&s.attributes, "cairn.answer").is_none());
    }
    let answer_text = answer["answer"].as_str().expect("answer");
    for body in &bodies {
        let raw = String::from_utf8_lossy(body);
        assert!(!raw.contains(QUESTION), "question text was exported");
        assert!(!raw.contains(answer_text), "answer text was exported");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_does_not_fail_the_answer_and_is_counted() {
    cairn::observe::metrics::handle();
    // A port nothing listens on: bind one, then free it.
    let port = crate::support::free_port();
    let app = TestApp::with_config(&format!(
        "[traces.otlp]\nendpoint = \"http://127.0.0.1:{port}\"\ntimeout_ms = 1000\n"
    ));
    let before = export_failures(&app).await;
    let answer = ask(&app).await;
    assert_eq!(answer["outcome"], "answered", "{answer}");
    assert!(answer["error"].is_null(), "{answer}");
    assert!(
        answer["answer"]
            .as_str()
            .expect("answer")
            .contains("5 business days"),
        "{answer}"
    );
    assert!(
        !answer["citations"]
            .as_array()
            .expect("citations")
            .is_empty()
    );

    // The graceful-shutdown path flushes what is queued; that export fails and is counted.
    let engine = app.engine.clone();
    tokio::task::spawn_blocking(move || engine.traces.shutdown_export())
        .await
        .expect("shutdown");
    let after = export_failures(&app).await;
    assert!(after > before, "failures {before} -> {after}");
}

/// `cairn serve` stopped by SIGTERM sends the spans still queued: with the batch schedule set
/// far beyond the test's length, only the shutdown flush can have delivered them.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_of_serve_flushes_queued_spans() {
    let (endpoint, mut rx) = collector().await;
    let port = crate::support::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = crate::support::write_config(
        dir.path(),
        &format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\n[traces.otlp]\nendpoint = \"{endpoint}\"\n"
        ),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--config")
        .arg(&config)
        .args(["-q", "serve"])
        // The SDK's batch schedule (standard variable): an hour.
        .env("OTEL_BSP_SCHEDULE_DELAY", "3600000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start cairn serve");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    crate::support::wait_until_serving(&client, &base, &mut child).await;
    let answer: serde_json::Value = client
        .post(format!("{base}/ask"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"question":"{QUESTION}","stream":false}}"#))
        .send()
        .await
        .expect("ask")
        .json()
        .await
        .expect("json");
    let trace_id = answer["trace_id"].as_str().expect("trace id").to_string();
    assert!(
        rx.try_recv().is_err(),
        "nothing is exported before the schedule or a flush"
    );

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");

    // The process is gone, so whatever it sent has been received.
    let mut exported = Vec::new();
    while let Ok(got) = rx.try_recv() {
        let req = ExportTraceServiceRequest::decode(got.body).expect("OTLP protobuf");
        exported.extend(
            req.resource_spans
                .into_iter()
                .flat_map(|rs| rs.scope_spans)
                .flat_map(|ss| ss.spans),
        );
    }
    let root = exported
        .iter()
        .find(|s| s.name == "POST /ask")
        .expect("the request span was flushed at shutdown");
    assert_eq!(string(&root.attributes, "cairn.trace_id"), trace_id);
}
