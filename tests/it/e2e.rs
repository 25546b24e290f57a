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
            "quote_start",
            "quote_end",
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
            StatusCode::BAD_REQUEST,
            "empty_query",
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

/// Context selection through /ask: a mirrored copy of a page is left out as a near-duplicate,
/// and a chunk cut mid-sentence reaches the model completed by the chunk after it.
#[tokio::test]
async fn ask_context_drops_mirrored_pages_and_completes_cut_sentences() {
    let app = TestApp::with_setup(|dir| {
        let manual = dir.join("manual");
        std::fs::create_dir_all(&manual).expect("mkdir");
        let page = "# Zebra care\n\nZebras in the north paddock are fed hay at seven in the morning and again at five in the evening.\n";
        std::fs::write(manual.join("zebras.md"), page).expect("write");
        std::fs::write(manual.join("zebras-mirror.md"), page).expect("write");
        std::fs::write(
            manual.join("generator.md"),
            "# Generator\n\nThe emergency generator in building nine is started by pressing the red lever twice, waiting for the amber lamp to glow steadily, and then turning the brass key clockwise until the small display reads READY.\n",
        )
        .expect("write");
        format!(
            "[chunking]\nmax_tokens = 24\noverlap_tokens = 4\nmin_tokens = 4\n[retrieval]\nmin_similarity = 0.95\n[[sources]]\nname = \"manual\"\nkind = \"files\"\npath = {manual:?}\n"
        )
    });
    let ask = |q: &str| {
        support::post_json(
            "/ask",
            &serde_json::json!({"question": q, "stream": false}).to_string(),
        )
    };

    let resp = app
        .router()
        .oneshot(ask("When are the zebras in the north paddock fed hay?"))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let json = body_json(resp).await;
    let trace = &app.engine.traces.recent(1)[0];
    assert!(trace.context_near_duplicates >= 1, "{trace:?}");
    let zebra_docs: std::collections::HashSet<&str> = json["citations"]
        .as_array()
        .expect("citations")
        .iter()
        .filter_map(|c| c["doc_id"].as_str())
        .filter(|d| d.contains("zebras"))
        .collect();
    assert_eq!(zebra_docs.len(), 1, "{json}");

    // The generator sentence is longer than a chunk: its first chunk ends mid-sentence.
    let chunks = app
        .engine
        .index
        .chunks_of("manual:generator.md")
        .expect("chunks");
    assert!(chunks.len() >= 2, "{chunks:?}");
    let head = chunks
        .iter()
        .find(|c| c.text.contains("emergency generator"))
        .expect("the chunk naming the generator");
    let next = chunks
        .iter()
        .find(|c| c.ordinal == head.ordinal + 1)
        .expect("the chunk after it");
    let only_next: Vec<&str> = next
        .text
        .split_whitespace()
        .filter(|w| !head.text.contains(w))
        .collect();
    assert!(!only_next.is_empty(), "{head:?} {next:?}");
    let resp = app
        .router()
        .oneshot(ask(
            "How is the emergency generator in building nine started?",
        ))
        .await
        .expect("response");
    let json = body_json(resp).await;
    let answer = json["answer"].as_str().expect("answer");
    assert!(
        only_next.iter().any(|w| answer.contains(w)),
        "answer lacks the continuation {only_next:?}: {answer}"
    );
    let trace = &app.engine.traces.recent(1)[0];
    // Only word matches clear the relevance gate here (min_similarity 0.95), and the chunk
    // after shares no word with the question: it can only have come in as a neighbour.
    assert!(trace.context_neighbours >= 1, "{trace:?}");
}

/// `bench serve --duration 1 --route search`: one level per client count, /search only, run
/// until the deadline (however many requests that took), without errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_runs_for_a_duration_on_the_chosen_route() {
    let app = TestApp::new();
    let options = cairn::bench::loadgen::LoadOptions {
        queries: vec!["How long do refunds take?".into()],
        clients: vec![2],
        requests: 1,
        duration: Some(std::time::Duration::from_secs(1)),
        routes: vec!["search".into()],
    };
    let levels = cairn::bench::loadgen::run(app.engine.clone(), &options)
        .await
        .expect("load run");
    assert_eq!(levels.len(), 1);
    assert_eq!((levels[0].route, levels[0].clients), ("search", 2));
    assert!(levels[0].requests >= 1, "{:?}", levels[0]);
    assert_eq!(levels[0].errors, 0, "{:?}", levels[0]);
}

/// `cairn bench serve`'s load generator completes every request of every level over loopback
/// and finds each /ask's trace (its server-side stages) by the trace id of the `done` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_runs_every_level_and_reads_server_traces() {
    let app = TestApp::new();
    let options = cairn::bench::loadgen::LoadOptions {
        queries: vec![
            "How long do refunds take?".into(),
            "Is shipping free?".into(),
        ],
        clients: vec![1, 3],
        requests: 6,
        duration: None,
        routes: vec!["search".into(), "ask".into()],
    };
    let levels = cairn::bench::loadgen::run(app.engine.clone(), &options)
        .await
        .expect("load run");
    let shape: Vec<(&str, usize, usize)> = levels
        .iter()
        .map(|l| (l.route, l.clients, l.requests))
        .collect();
    assert_eq!(
        shape,
        [
            ("search", 1, 6),
            ("search", 3, 12),
            ("ask", 1, 6),
            ("ask", 3, 12)
        ]
    );
    for l in &levels {
        assert_eq!(l.errors, 0, "{l:?}");
        assert!(
            l.client_p50_ms > 0.0 && l.client_p99_ms >= l.client_p50_ms,
            "{l:?}"
        );
        assert!(l.server_p50_ms > 0.0, "{l:?}");
    }
    let ask = &levels[2];
    assert!(
        ask.server_retrieve_p50_ms.is_some_and(|r| r > 0.0),
        "{ask:?}"
    );
    // Each stream ends after its first token, so every order statistic of the totals is larger.
    assert!(
        ask.client_total_p50_ms
            .is_some_and(|t| t >= ask.client_p50_ms),
        "{ask:?}"
    );
}
