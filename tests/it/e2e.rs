//! End-to-end tests of the root package: the router in-process (`oneshot`), SSE over a real
//! TCP port, and the `cairn` binary's CLI contract.

use crate::support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use support::{TestApp, body_json};

#[tokio::test]
async fn search_returns_ranked_hits_with_the_contract_fields() {
    let app = TestApp::new();
    let json = support::get_json(&app, "/search?q=refund%20card&k=3").await;
    let hits = json["hits"].as_array().expect("hits");
    assert!(!hits.is_empty() && hits.len() <= 3);
    for key in [
        "doc_id",
        "chunk_id",
        "title",
        "url",
        "score",
        "snippet",
        "breakdown",
    ] {
        assert!(hits[0].get(key).is_some(), "missing {key} in {}", hits[0]);
    }
    assert_eq!(hits[0]["doc_id"], "samples:help-center/refunds.md");
    assert!(
        hits[0]["snippet"]
            .as_str()
            .expect("snippet")
            .contains("<mark>")
    );
    let scores: Vec<f64> = hits
        .iter()
        .map(|h| h["score"].as_f64().expect("score"))
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "not ranked: {scores:?}"
    );
}

#[tokio::test]
async fn ask_json_answers_with_citations_into_the_corpus() {
    let app = TestApp::new();
    let json = support::ask_refunds(&app).await;
    let answer = json["answer"].as_str().expect("answer");
    assert!(answer.contains("5 business days"), "{answer}");
    let citations = json["citations"].as_array().expect("citations");
    assert!(!citations.is_empty());
    for c in citations {
        for key in [
            "doc_id",
            "chunk_id",
            "title",
            "url",
            "quote",
            "char_start",
            "char_end",
        ] {
            assert!(c.get(key).is_some(), "missing {key} in {c}");
        }
        let n = c["n"].as_u64().expect("n");
        assert!(
            answer.contains(&format!("[{n}]")),
            "citation [{n}] not in answer"
        );
    }
    assert_eq!(citations[0]["doc_id"], "samples:help-center/refunds.md");
    assert_eq!(json["outcome"], "answered");
}

#[tokio::test]
async fn ask_without_relevant_sources_says_i_dont_know_without_a_model() {
    let app = TestApp::new();
    let resp = app
        .router()
        .oneshot(support::post_json(
            "/ask",
            r#"{"question":"zygomorphic xylophones","stream":false}"#,
        ))
        .await
        .expect("response");
    let json = body_json(resp).await;
    assert_eq!(json["outcome"], "no_answer");
    assert!(
        json["answer"]
            .as_str()
            .expect("answer")
            .starts_with("I don't know")
    );
    assert_eq!(json["citations"].as_array().map(Vec::len), Some(0));
    assert_eq!(json["usage"]["output_tokens"], 0);
}

#[tokio::test]
async fn ask_streams_typed_events_with_ids_over_tcp() {
    let app = TestApp::new();
    let addr = app.serve().await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/ask"))
        .json(&serde_json::json!({"question": "What does express shipping cost?"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/event-stream")
    );
    let text = resp.text().await.expect("body");
    let events = support::parse_sse(&text);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"retrieval"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    assert!(
        names.iter().filter(|n| **n == "token").count() > 3,
        "{names:?}"
    );
    assert!(
        names.contains(&"citation") && names.contains(&"usage"),
        "{names:?}"
    );
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e.id.parse().expect("numeric id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids {ids:?}");
    let answer = support::streamed_answer(&events);
    assert!(answer.contains("12 euros"), "{answer}");
}

#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let app = TestApp::new();
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            support::post_json("/ask", "{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            support::post_json("/ask", r#"{"stream":false}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            support::post_json("/ask", r#"{"question":"x","bogus":1}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            support::post_json("/ask", r#"{"question":"   "}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            support::post_json(
                "/ask",
                r#"{"question":"refunds","filters":{"source":["nope"]}}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_filter",
        ),
        (
            support::post_json("/ask", &format!(r#"{{"question":"{}"}}"#, "a".repeat(3000))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "question_too_long",
        ),
        (
            support::post_json(
                "/ask",
                &format!(r#"{{"question":"{}"}}"#, "a".repeat(200_000)),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            Request::get("/search?k=5")
                .body(Body::empty())
                .expect("request"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            Request::get("/search?q=x&k=0")
                .body(Body::empty())
                .expect("request"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ];
    for (req, status, code) in cases {
        let uri = req.uri().clone();
        let resp = app.router().oneshot(req).await.expect("response");
        assert_eq!(resp.status(), status, "{uri}");
        let json = body_json(resp).await;
        assert_eq!(json["error"]["code"], code, "{uri}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}

#[tokio::test]
async fn health_ready_and_page() {
    let app = TestApp::new();
    let r = app
        .router()
        .oneshot(Request::get("/healthz").body(Body::empty()).expect("r"))
        .await
        .expect("resp");
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .router()
        .oneshot(Request::get("/readyz").body(Body::empty()).expect("r"))
        .await
        .expect("resp");
    let json = body_json(r).await;
    assert!(json["index"]["documents"].as_u64().expect("docs") >= 6);
    let r = app
        .router()
        .oneshot(Request::get("/").body(Body::empty()).expect("r"))
        .await
        .expect("resp");
    assert_eq!(r.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .expect("body");
    assert!(std::str::from_utf8(&bytes).expect("utf8").contains("<html"));
}

/// With `[rerank] kind = "lexical"` the answer path scores the fused candidates, shows the
/// rerank score in each hit's breakdown, and records the rerank time in the trace. A paraphrase
/// with no word in common with the gold passage title still finds it (MiniLM dense side).
#[tokio::test]
async fn ask_with_a_reranker_records_scores_and_timing() {
    let app = TestApp::with_config("[rerank]\nkind = \"lexical\"\ncandidates = 10\n");
    let resp = app
        .router()
        .oneshot(support::post_json(
            "/ask",
            r#"{"question":"How long until I get my money back after returning something?","stream":false}"#,
        ))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let json = body_json(resp).await;
    assert_eq!(json["outcome"], "answered", "{json:#}");
    let citations = json["citations"].as_array().expect("citations");
    assert_eq!(citations[0]["doc_id"], "samples:help-center/refunds.md");
    let trace = app.engine.traces.recent(1).pop().expect("trace");
    assert!(trace.timings.rerank_ms > 0.0, "{:?}", trace.timings);
    assert!(trace.timings.embed_ms > 0.0, "{:?}", trace.timings);
    let hits = app
        .engine
        .retrieve(
            "How long until I get my money back after returning something?",
            app.engine
                .embed_query("How long until I get my money back after returning something?")
                .expect("embed"),
            3,
            Default::default(),
        )
        .expect("retrieve")
        .0;
    assert_eq!(hits.len(), 3);
    let scores: Vec<f32> = hits
        .iter()
        .map(|h| h.breakdown.rerank.expect("rerank score"))
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
}
