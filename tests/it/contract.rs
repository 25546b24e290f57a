//! The HTTP contract at its edges (issue #19): every non-2xx carries the error shape (wrong
//! methods, unknown routes, unreadable bodies), empty queries are refused, an admin body that
//! cannot be read never means "every source", an answer no model produced is never a 200, a
//! panicking answer still ends with one terminal event and one trace, load shedding and the
//! whole-request deadline, what `/v1/chat/completions` uses of a request, and the `metrics`
//! scope.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{self, ADMIN, BOT, TestApp, keyed_app, post_json, with_key};
use crate::vendors::{Fake, Frame, Reply, Vendor};

/// What a response was: status, headers, the body as JSON (`Null` when it is not JSON) and
/// as text.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

async fn send(app: &TestApp, req: Request<Body>) -> Got {
    let resp = app.router().oneshot(req).await.expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body");
    Got {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn request(method: Method, uri: &str, content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Body::from(body.to_string())).expect("request")
}

/// `None` when `got` is `status` with `{"error": {"code": code, "message": <not empty>}}`
/// (plus OpenAI's `type` and `param` on `/v1/` routes); otherwise what was wrong.
fn shape_error(what: &str, got: &Got, status: StatusCode, code: &str) -> Option<String> {
    let e = &got.json["error"];
    let mut ok = got.status == status
        && e["code"] == code
        && e["message"].as_str().is_some_and(|m| !m.is_empty());
    if what.contains("/v1/") {
        ok &= e["type"].is_string() && e.get("param").is_some();
    }
    (!ok).then(|| {
        let shown: String = got.text.chars().take(300).collect();
        format!(
            "{what}: expected {status} {code}, got {} {shown}",
            got.status
        )
    })
}

const GET_ROUTES: &[&str] = &[
    "/",
    "/healthz",
    "/readyz",
    "/search?q=refund",
    "/metrics",
    "/admin/jobs",
    "/admin/jobs/nope",
    "/admin/sources",
    "/admin/traces",
    "/admin/feedback",
    "/admin/feedback/export",
    "/admin/webhooks/deliveries",
];
const POST_ROUTES: &[&str] = &[
    "/ask",
    "/v1/chat/completions",
    "/admin/reindex",
    "/feedback",
];

#[tokio::test]
async fn every_route_answers_wrong_methods_and_unreadable_bodies_with_the_error_shape() {
    let app = keyed_app();
    let mut failures = Vec::new();
    let walk = GET_ROUTES
        .iter()
        .flat_map(|p| [(Method::POST, *p, "GET"), (Method::DELETE, *p, "GET")])
        .chain(
            POST_ROUTES
                .iter()
                .flat_map(|p| [(Method::GET, *p, "POST"), (Method::PUT, *p, "POST")]),
        );
    for (method, path, allowed) in walk {
        let what = format!("{method} {path}");
        let got = send(&app, with_key(request(method, path, None, ""), ADMIN)).await;
        failures.extend(shape_error(
            &what,
            &got,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ));
        let allow = got.headers.get("allow").and_then(|v| v.to_str().ok());
        if !allow.is_some_and(|a| a.contains(allowed)) {
            failures.push(format!("{what}: Allow header {allow:?} lacks {allowed}"));
        }
    }
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::POST, "/v1/models"),
        (Method::DELETE, "/admin"),
    ] {
        let what = format!("{method} {path}");
        let got = send(&app, with_key(request(method, path, None, ""), ADMIN)).await;
        failures.extend(shape_error(&what, &got, StatusCode::NOT_FOUND, "not_found"));
    }
    let too_large = json!({ "question": "a".repeat(100_000) }).to_string();
    for path in POST_ROUTES {
        let bodies = [
            (
                "text/plain",
                Some("text/plain"),
                r#"{"question":"refunds"}"#,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            ),
            (
                "no content type",
                None,
                r#"{"question":"refunds"}"#,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            ),
            (
                "JSON syntax error",
                Some("application/json"),
                "{,}",
                StatusCode::BAD_REQUEST,
                "invalid_json",
            ),
            (
                "wrong shape",
                Some("application/json"),
                r#""a string""#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                "body too large",
                Some("application/json"),
                too_large.as_str(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
            ),
        ];
        for (name, ct, body, status, code) in bodies {
            let what = format!("POST {path} ({name})");
            let got = send(&app, with_key(request(Method::POST, path, ct, body), ADMIN)).await;
            failures.extend(shape_error(&what, &got, status, code));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn empty_or_blank_queries_are_refused_on_search_ask_and_chat() {
    let app = TestApp::new();
    let chat = |content: Value| {
        json!({"messages": [{"role": "user", "content": "How long do refunds take?"}, {"role": "assistant", "content": "5 days"}, {"role": "user", "content": content}]})
            .to_string()
    };
    let cases = [
        ("search: q empty", support::get("/search?q=")),
        ("search: q blank", support::get("/search?q=%20%09%20")),
        (
            "ask: blank question",
            post_json("/ask", r#"{"question":" \n\t ","stream":false}"#),
        ),
        (
            "chat: blank last user message",
            post_json("/v1/chat/completions", &chat(json!("   "))),
        ),
        (
            "chat: no text part",
            post_json("/v1/chat/completions", &chat(json!([]))),
        ),
        (
            "chat: blank text part",
            post_json(
                "/v1/chat/completions",
                &chat(json!([{"type": "text", "text": " "}])),
            ),
        ),
    ];
    let mut failures = Vec::new();
    for (what, req) in cases {
        let got = send(&app, req).await;
        failures.extend(shape_error(
            what,
            &got,
            StatusCode::BAD_REQUEST,
            "empty_query",
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_reindex_body_that_cannot_be_read_never_means_every_source() {
    let app = keyed_app();
    let refused = [
        (
            "no content type",
            None,
            r#"{"source":"samples"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "text/plain",
            Some("text/plain"),
            r#"{"source":"samples"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "no content type, not JSON",
            None,
            "source=samples",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "JSON syntax error",
            Some("application/json"),
            r#"{"source":"#,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "blank JSON body",
            Some("application/json"),
            "  ",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ];
    let mut failures = Vec::new();
    for (what, ct, body, status, code) in refused {
        let got = send(
            &app,
            with_key(request(Method::POST, "/admin/reindex", ct, body), ADMIN),
        )
        .await;
        failures.extend(shape_error(what, &got, status, code));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let jobs = send(&app, with_key(support::get("/admin/jobs"), ADMIN)).await;
    assert_eq!(jobs.json["jobs"], json!([]), "a refused body started a job");
    // No body at all still means every source (documented).
    let got = send(
        &app,
        with_key(request(Method::POST, "/admin/reindex", None, ""), ADMIN),
    )
    .await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "{}", got.text);
    assert_eq!(got.json["source"], Value::Null, "{}", got.text);
}

/// Asks `question` as a stream over TCP; returns the body and its terminal events (`done`,
/// `error`) with their data.
async fn terminal_events(app: &TestApp, question: &str) -> (String, Vec<(String, Value)>) {
    let addr = app.serve().await;
    let text = reqwest::Client::new()
        .post(format!("http://{addr}/ask"))
        .json(&json!({ "question": question }))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    let terminal = support::parse_sse(&text)
        .into_iter()
        .filter(|e| e.event == "done" || e.event == "error")
        .map(|e| (e.event, serde_json::from_str(&e.data).expect("json")))
        .collect();
    (text, terminal)
}

const FALLBACK: &str = "The answer service is unavailable right now. The sources below may help.";
const REFUNDS: (&str, &str) = (
    "refunds.md",
    "# Refunds\n\nRefunds take 5 business days after the returned item arrives.",
);

/// An app whose only answer provider is `fake` (no retries, no fallback provider), plus `extra`.
fn remote_only(fake: &Fake, extra: &str) -> TestApp {
    TestApp::with_setup(|dir| support::wiki_with_remote_model(dir, &fake.base, REFUNDS, extra))
}

#[tokio::test]
async fn an_answer_no_model_produced_is_a_5xx_with_the_fallback_inside_the_error() {
    let fake = Fake::start(vec![Reply::json(
        503,
        &Vendor::Compatible.error_body("overloaded"),
    )])
    .await;
    let app = remote_only(&fake, "");
    let ask = r#"{"question":"How long do refunds take?","stream":false}"#;
    let got = send(&app, post_json("/ask", ask)).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text);
    let e = &got.json["error"];
    assert_eq!(e["code"], "providers_unavailable", "{}", got.text);
    assert_eq!(e["message"], FALLBACK, "{}", got.text);
    assert_eq!(e["fallback"]["answer"], FALLBACK, "{}", got.text);
    assert_eq!(e["fallback"]["citations"], json!([]), "{}", got.text);
    assert!(
        e["fallback"]["retrieval"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["doc_id"] == "wiki:refunds.md")),
        "{}",
        got.text
    );
    assert_eq!(
        got.json.as_object().map(|o| o.len()),
        Some(1),
        "{}",
        got.text
    );

    // The OpenAI-compatible endpoint: OpenAI's error shape, field by field.
    let chat =
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"How long do refunds take?"}]}"#;
    let got = send(&app, post_json("/v1/chat/completions", chat)).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text);
    let e = &got.json["error"];
    let mut keys: Vec<&str> = e
        .as_object()
        .expect("error object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "fallback", "message", "param", "type"],
        "{}",
        got.text
    );
    assert_eq!(e["message"], FALLBACK);
    assert_eq!(e["type"], "server_error");
    assert_eq!(e["param"], Value::Null);
    assert_eq!(e["code"], "providers_unavailable");
    assert_eq!(e["fallback"]["answer"], FALLBACK);
    assert_eq!(
        got.json.as_object().map(|o| o.len()),
        Some(1),
        "{}",
        got.text
    );

    // A stream has sent its headers: it keeps ending with one `error` event.
    let (text, terminal) = terminal_events(&app, "How long do refunds take?").await;
    let names: Vec<&str> = terminal.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["error"], "{text}");
}

#[tokio::test]
async fn an_answer_past_the_deadline_is_a_504() {
    let mut slow = vec![Frame::Delay(Duration::from_secs(5))];
    slow.extend(Vendor::Compatible.success(&["Refunds take 5 business days [1]."]));
    let fake = Fake::start(vec![Reply::sse(slow)]).await;
    // The remote may wait up to the whole deadline for a first token, so it is the request's
    // deadline, not the remote's own wait, that ends the answer.
    let app = TestApp::with_setup(|dir| {
        support::with_first_token_ms(
            support::wiki_with_remote_model(
                dir,
                &fake.base,
                REFUNDS,
                "[server]\nrequest_timeout_secs = 1\n",
            ),
            1000,
        )
    });
    let ask = r#"{"question":"How long do refunds take?","stream":false}"#;
    let got = send(&app, post_json("/ask", ask)).await;
    assert!(
        shape_error(
            "ask",
            &got,
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded"
        )
        .is_none(),
        "{} {}",
        got.status,
        got.text
    );
    assert_eq!(
        got.json["error"]["fallback"]["answer"], FALLBACK,
        "{}",
        got.text
    );
}

#[tokio::test]
async fn a_panicking_answer_ends_with_one_terminal_event_and_one_trace() {
    let app = TestApp::new();
    app.state.inject_answer_panic("PANIC-HERE");
    let question = "How long do refunds take? PANIC-HERE";
    let before = app.engine.traces.recent(100).len();

    let got = send(
        &app,
        post_json(
            "/ask",
            &json!({"question": question, "stream": false}).to_string(),
        ),
    )
    .await;
    assert!(
        shape_error("ask", &got, StatusCode::INTERNAL_SERVER_ERROR, "internal").is_none(),
        "{} {}",
        got.status,
        got.text
    );
    assert!(!got.text.contains("PANIC-HERE"), "{}", got.text);
    let chat = json!({"messages": [{"role": "user", "content": question}]}).to_string();
    let got = send(&app, post_json("/v1/chat/completions", &chat)).await;
    assert!(
        shape_error(
            "/v1/ chat",
            &got,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal"
        )
        .is_none(),
        "{} {}",
        got.status,
        got.text
    );

    let (text, terminal) = terminal_events(&app, question).await;
    assert_eq!(terminal.len(), 1, "{text}");
    assert_eq!(terminal[0].0, "error", "{text}");
    assert_eq!(terminal[0].1["code"], "internal", "{text}");

    let traces = app.engine.traces.recent(100);
    assert_eq!(traces.len(), before + 3, "one trace per request");
    assert!(
        traces.iter().take(3).all(|t| t.outcome == "internal"),
        "{:?}",
        traces.iter().map(|t| &t.outcome).collect::<Vec<_>>()
    );
    // Other questions are untouched by the hook.
    let ok = support::ask_refunds(&app).await;
    assert_eq!(ok["outcome"], "answered", "{ok}");
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_shed_with_503_and_retry_after() {
    let mut slow = vec![Frame::Delay(Duration::from_millis(1500))];
    slow.extend(Vendor::Compatible.success(&["Refunds take 5 business days [1]."]));
    let fake = Fake::start(vec![Reply::sse(slow)]).await;
    let app = remote_only(&fake, "[server]\nmax_concurrent_requests = 1\n");
    let addr = app.serve().await;
    let client = reqwest::Client::new();
    // An open stream holds the one slot until it ends.
    let stream = client
        .post(format!("http://{addr}/ask"))
        .json(&json!({"question": "How long do refunds take?"}))
        .send()
        .await
        .expect("send");
    assert_eq!(stream.status(), 200);
    let shed = client
        .get(format!("http://{addr}/search?q=refund"))
        .send()
        .await
        .expect("send");
    assert_eq!(shed.status(), 503);
    let retry = shed.headers().get("retry-after").cloned();
    let body: Value = shed.json().await.expect("json");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let retry: u64 = retry
        .and_then(|v| v.to_str().ok().and_then(|s| s.parse().ok()))
        .expect("Retry-After in seconds");
    assert!(retry >= 1);
    // Probes are never shed.
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status(), 200);
    let text = stream.text().await.expect("stream");
    assert!(text.contains("event: done"), "{text}");
    let after = client
        .get(format!("http://{addr}/search?q=refund"))
        .send()
        .await
        .expect("send");
    assert_eq!(
        after.status(),
        200,
        "the slot is free once the stream ended"
    );
}

#[tokio::test]
async fn a_request_past_the_whole_request_deadline_is_a_504() {
    let settings = cairn::http::settings::RawServer {
        request_timeout_secs: 1,
        ..Default::default()
    };
    let slow = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let app = cairn::http::limits::guard(slow, &settings);
    let started = std::time::Instant::now();
    let resp = app.oneshot(support::get("/slow")).await.expect("response");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let json = support::body_json(resp).await;
    assert_eq!(json["error"]["code"], "deadline_exceeded", "{json}");
}

#[tokio::test]
async fn chat_completions_reports_the_serving_model_and_what_it_used() {
    let fake = Fake::start(vec![Reply::sse(
        Vendor::Compatible.success(&["Refunds take 5 business days [1]."]),
    )])
    .await;
    let app = remote_only(&fake, "");
    let body = json!({
        "model": "gpt-4o",
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "Answer like a pirate."},
            {"role": "developer", "content": "Keep it short."},
            {"role": "user", "content": "How long do refunds take?"},
        ],
    });
    let got = send(&app, post_json("/v1/chat/completions", &body.to_string())).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.json["model"], "smollm2", "{}", got.text);
    let prompt = fake.seen().last().expect("a model call").body.to_string();
    assert!(
        prompt.contains("Answer like a pirate.") && prompt.contains("Keep it short."),
        "system and developer turns reach the model as caller turns: {prompt}"
    );

    let refused = [
        (
            "tool turn",
            json!({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}, {"role": "user", "content": "refunds?"}]}),
            "tool",
        ),
        (
            "tools offered",
            json!({"tools": [], "messages": [{"role": "user", "content": "refunds?"}]}),
            "tools",
        ),
        (
            "n = 2",
            json!({"n": 2, "messages": [{"role": "user", "content": "refunds?"}]}),
            "n",
        ),
        (
            "unknown field",
            json!({"access_groups": ["hr"], "messages": [{"role": "user", "content": "refunds?"}]}),
            "access_groups",
        ),
    ];
    let mut failures = Vec::new();
    for (what, body, named) in refused {
        let got = send(&app, post_json("/v1/chat/completions", &body.to_string())).await;
        let what = format!("/v1/ {what}");
        failures.extend(shape_error(
            &what,
            &got,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ));
        if !got.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(named))
        {
            failures.push(format!(
                "{what}: message does not name `{named}`: {}",
                got.text
            ));
        }
    }
    // A role OpenAI's API does not have is a malformed conversation: 400, as on `/ask`.
    let wizard = json!({"messages": [{"role": "wizard", "content": "hi"}, {"role": "user", "content": "refunds?"}]});
    let got = send(&app, post_json("/v1/chat/completions", &wizard.to_string())).await;
    failures.extend(shape_error(
        "/v1/ unknown role",
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_role",
    ));
    if !got.text.contains("wizard") {
        failures.push(format!(
            "/v1/ unknown role: message does not name it: {}",
            got.text
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn metrics_need_the_metrics_scope_when_anonymous_callers_lack_it() {
    // keyed_app: anonymous callers may only search.
    let app = keyed_app();
    let got = send(&app, support::get("/metrics")).await;
    assert!(
        shape_error("metrics", &got, StatusCode::UNAUTHORIZED, "unauthorized").is_none(),
        "{} {}",
        got.status,
        got.text
    );
    let got = send(&app, with_key(support::get("/metrics"), BOT)).await;
    assert_eq!(got.status, StatusCode::FORBIDDEN, "{}", got.text);
    let got = send(&app, with_key(support::get("/metrics"), ADMIN)).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "admin implies metrics: {}",
        got.text
    );
    // The default anonymous scopes keep /metrics open, as before.
    let open = TestApp::new();
    assert_eq!(
        send(&open, support::get("/metrics")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_key_with_only_the_metrics_scope_reads_metrics_and_nothing_else() {
    let app = TestApp::with_config(&format!(
        "[auth]\nanonymous_scopes = []\n[[auth.keys]]\nname = \"prometheus\"\nhash = \"{}\"\nscopes = [\"metrics\"]\n",
        cairn::http::auth::hash_key("scrape-key-1")
    ));
    let got = send(&app, with_key(support::get("/metrics"), "scrape-key-1")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    let got = send(
        &app,
        with_key(support::get("/search?q=refund"), "scrape-key-1"),
    )
    .await;
    assert_eq!(got.status, StatusCode::FORBIDDEN, "{}", got.text);
    assert_eq!(
        send(&app, support::get("/metrics")).await.status,
        StatusCode::UNAUTHORIZED
    );
}
