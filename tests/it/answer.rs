//! Guarantees of the answer pipeline at its edges: what the answer cache may serve (the
//! conversation and the serving model are part of its key), which outcome an answer that did
//! not complete carries, which citation markers may be shown, verbatim quotes, filters that
//! name sources the caller cannot read, and the audit line of every prompt handed over.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::gateway::app_with_remote;
use crate::support::{
    ADMIN, HR, TestApp, body_json, get, keyed_app, post_json, read_until, wiki_with_remote_model,
    with_first_token_ms, with_key,
};
use crate::vendors::{Fake, Frame, Reply, Vendor};

const BOT: &str = "bot-key-456";

/// `POST /ask` (not streaming) with `body`, as `key` when given; the status and JSON body.
async fn ask(app: &TestApp, key: Option<&str>, body: Value) -> (StatusCode, Value) {
    let req = post_json("/ask", &body.to_string());
    let req = match key {
        Some(k) => with_key(req, k),
        None => req,
    };
    let resp = app.router().oneshot(req).await.expect("response");
    (resp.status(), body_json(resp).await)
}

/// The newest trace's cache hit kind and serving provider.
fn last_trace(app: &TestApp) -> (Option<String>, Option<String>, String) {
    let t = &app.engine.traces.recent(1)[0];
    (t.cache_hit.clone(), t.provider.clone(), t.outcome.clone())
}

#[tokio::test]
async fn the_same_question_in_another_conversation_is_not_served_from_the_cache() {
    let app = TestApp::new();
    let conversation = |about: &str| {
        json!([
            {"role": "user", "content": format!("I have a question about {about}.")},
            {"role": "assistant", "content": "Sure, go ahead."},
        ])
    };
    let question = "How long do refunds take?";
    let first = json!({"question": question, "stream": false, "conversation": conversation("my order 123")});
    let (status, json) = ask(&app, None, first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(last_trace(&app).0, None);

    // Another caller's follow-up: same question, another conversation. Not a hit.
    let other =
        json!({"question": question, "stream": false, "conversation": conversation("a gift card")});
    let (status, json) = ask(&app, None, other).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(
        last_trace(&app).0,
        None,
        "an answer to another conversation was served from the cache"
    );
    // One turn less is another conversation too.
    let shorter = json!({"question": question, "stream": false,
        "conversation": [{"role": "user", "content": "I have a question about my order 123."}]});
    ask(&app, None, shorter).await;
    assert_eq!(last_trace(&app).0, None, "a shorter conversation was a hit");

    // The very same conversation again is a hit: the cache works, it just keys on the turns.
    ask(&app, None, first).await;
    assert_eq!(last_trace(&app).0.as_deref(), Some("exact"));
}

/// A compatible vendor's whole stream of `parts` ending with `finish_reason`.
fn ending_with(parts: &[&str], finish_reason: &str) -> Reply {
    let frames = Vendor::Compatible
        .success(parts)
        .into_iter()
        .map(|f| match f {
            Frame::Bytes(b) => Frame::Bytes(b.replace(
                r#""finish_reason":"stop""#,
                &format!(r#""finish_reason":"{finish_reason}""#),
            )),
            other => other,
        })
        .collect();
    Reply::sse(frames)
}

fn complete_answer() -> Reply {
    Reply::sse(Vendor::Compatible.success(&["Refunds take ", "5 business days [1]."]))
}

#[tokio::test]
async fn an_answer_served_by_a_fallback_is_not_cached_as_the_primary_models() {
    // The remote fails twice (first try and its retry), so the extractive fallback serves;
    // then the remote heals.
    let overloaded = Reply::json(503, &Vendor::Compatible.error_body("overloaded"));
    let fake = Fake::start(vec![overloaded.clone(), overloaded, complete_answer()]).await;
    let app = app_with_remote(&fake, "");
    let body = json!({"question": "How long do refunds take?", "stream": false});
    let (_, json) = ask(&app, Some(BOT), body.clone()).await;
    assert_eq!(json["usage"]["provider"], "local", "{json}");

    let (_, json) = ask(&app, Some(BOT), body.clone()).await;
    assert_eq!(
        last_trace(&app).0,
        None,
        "the fallback's answer was served from the cache: {json}"
    );
    assert_eq!(json["usage"]["provider"], "remote", "{json}");
    assert_eq!(fake.hits(), 3);

    // The primary's own answer is cached and served as the primary's.
    let (_, json) = ask(&app, Some(BOT), body).await;
    assert_eq!(last_trace(&app).0.as_deref(), Some("exact"));
    assert_eq!(json["usage"]["provider"], "remote", "{json}");
    assert_eq!(fake.hits(), 3);
}

#[tokio::test]
async fn an_answer_cut_short_carries_its_own_outcome_and_is_not_cached() {
    let cases = [
        ("length", "truncated"),
        ("content_filter", "filtered"),
        ("error", "provider_error"),
    ];
    for (finish_reason, outcome) in cases {
        let fake = Fake::start(vec![ending_with(
            &["Refunds take ", "5 business days [1]"],
            finish_reason,
        )])
        .await;
        let app = app_with_remote(&fake, "");
        let body = json!({"question": "How long do refunds take?", "stream": false});
        let (_, json) = ask(&app, Some(BOT), body.clone()).await;
        let (_, provider, traced) = last_trace(&app);
        assert_eq!(provider.as_deref(), Some("remote"), "{finish_reason}");
        assert_eq!(traced, outcome, "{finish_reason}: {json}");
        match outcome {
            // The model's own error: an error event (as for a stream cut by the network).
            "provider_error" => assert_eq!(json["error"]["code"], outcome, "{json}"),
            _ => assert_eq!(json["outcome"], outcome, "{json}"),
        }
        // The partial text: beside the outcome, or inside the error's fallback when the
        // model's own error means no complete answer was produced (a 5xx).
        let partial = match outcome {
            "provider_error" => &json["error"]["fallback"]["answer"],
            _ => &json["answer"],
        };
        assert!(
            partial
                .as_str()
                .is_some_and(|a| a.contains("5 business days")),
            "{json}"
        );
        // Not cached: the same question calls the model again.
        ask(&app, Some(BOT), body).await;
        assert_eq!(
            last_trace(&app).0,
            None,
            "{finish_reason}: served from cache"
        );
        assert_eq!(fake.hits(), 2, "{finish_reason}");
    }
}

/// The status and the body with the probed source name replaced by `<name>`.
async fn probe(
    app: &TestApp,
    req: axum::http::Request<axum::body::Body>,
    name: &str,
) -> (StatusCode, String) {
    let resp = app.router().oneshot(req).await.expect("response");
    let status = resp.status();
    let body = body_json(resp).await.to_string().replace(name, "<name>");
    (status, body)
}

#[tokio::test]
async fn a_source_the_caller_cannot_read_looks_exactly_like_one_that_does_not_exist() {
    let app = keyed_app();
    for key in [Some(ADMIN), None] {
        let mut seen = Vec::new();
        for name in ["hr", "no-such-source"] {
            let search = get(&format!("/search?q=salary+band&source={name}"));
            let search = match key {
                Some(k) => with_key(search, k),
                None => search,
            };
            let body = json!({"question": "What is the salary band?", "stream": false,
                "filters": {"source": [name]}});
            let ask = with_key(post_json("/ask", &body.to_string()), ADMIN);
            seen.push((
                probe(&app, search, name).await,
                probe(&app, ask, name).await,
            ));
        }
        assert_eq!(
            seen[0], seen[1],
            "{key:?}: a restricted source answers differently from an unknown one"
        );
        let ((status, body), _) = &seen[0];
        assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains("unknown_filter"), "{body}");
    }
    // A key holding the source's group still filters on it.
    let json = {
        let resp = app
            .router()
            .oneshot(with_key(get("/search?q=salary+band&source=hr"), HR))
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        body_json(resp).await
    };
    assert!(
        json["hits"].as_array().is_some_and(|h| !h.is_empty()),
        "{json}"
    );
}

#[tokio::test]
async fn every_citation_quote_is_the_chunk_text_at_its_offsets() {
    let app = TestApp::new();
    let qa = std::fs::read_to_string(crate::support::repo().join("samples/qa.jsonl")).expect("qa");
    let mut questions: Vec<String> = qa
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("qa line");
            v["question"].as_str().expect("question").to_string()
        })
        .collect();
    // Sentences that wrap over lines and sit under headings.
    questions.push("How long do card refunds take to appear on my statement?".into());
    questions.push("How do I exchange a size or colour?".into());
    let mut checked = 0;
    let mut multi_line = 0;
    for question in &questions {
        let (status, json) = ask(&app, None, json!({"question": question, "stream": false})).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        for c in json["citations"].as_array().expect("citations") {
            let doc_id = c["doc_id"].as_str().expect("doc_id");
            let chunks = app.engine.index.chunks_of(doc_id).expect("chunks");
            let chunk = chunks
                .iter()
                .find(|k| k.chunk_id() == c["chunk_id"])
                .unwrap_or_else(|| panic!("cited chunk not in the index: {c}"));
            let quote = c["quote"].as_str().expect("quote");
            assert!(
                chunk.text.contains(quote),
                "{question}: the quote is not in the chunk text: {quote:?}"
            );
            let (start, end) = (
                c["quote_start"].as_u64().expect("quote_start") as usize,
                c["quote_end"].as_u64().expect("quote_end") as usize,
            );
            let at: String = chunk.text.chars().skip(start).take(end - start).collect();
            assert_eq!(at, quote, "{question}: {c}");
            assert!(!quote.trim().is_empty(), "{question}: empty quote {c}");
            multi_line += usize::from(quote.contains('\n'));
            checked += 1;
        }
    }
    assert!(
        checked >= questions.len(),
        "only {checked} citations checked"
    );
    assert!(
        multi_line > 0,
        "no quote spanned a line break; the corpus case is not covered"
    );
}

/// The `provider_request` audit lines of the trace `trace_id`.
fn provider_requests(app: &TestApp, trace_id: &str) -> Vec<Value> {
    cairn::observe::audit::read(app.engine.audit.path())
        .expect("audit log")
        .into_iter()
        .filter(|l| l["event"] == "provider_request" && l["trace_id"] == trace_id)
        .collect()
}

/// An app whose only answer model is the remote at `fake` (no fallback, no retry), plus `extra`.
fn app_with_only_remote(fake: &Fake, extra: &str) -> TestApp {
    TestApp::with_setup(|dir| {
        wiki_with_remote_model(
            dir,
            &fake.base,
            (
                "refunds.md",
                "# Refunds\n\nRefunds take 5 business days after we receive the parcel.",
            ),
            extra,
        )
    })
}

/// A remote that accepts the call and never sends a token.
async fn hanging_remote() -> Fake {
    let mut hang = Vendor::Compatible.preamble();
    hang.push(Frame::Delay(Duration::from_secs(120)));
    Fake::start(vec![Reply::sse(hang)]).await
}

#[tokio::test]
async fn a_prompt_cut_off_by_the_deadline_is_audited() {
    let fake = hanging_remote().await;
    let app = TestApp::with_setup(|dir| {
        with_first_token_ms(
            wiki_with_remote_model(
                dir,
                &fake.base,
                ("refunds.md", "# Refunds\n\nRefunds take 5 business days."),
                "[server]\nrequest_timeout_secs = 1\n",
            ),
            1000,
        )
    });
    let body = json!({"question": "How long do refunds take?", "stream": false});
    let (_, json) = ask(&app, None, body).await;
    assert!(json["error"]["code"].is_string(), "{json}");
    let trace = app.engine.traces.recent(1)[0].clone();
    assert_ne!(trace.outcome, "answered", "{json}");
    assert_eq!(fake.hits(), 1, "the prompt reached the provider");
    let lines = provider_requests(&app, &trace.id);
    assert_eq!(
        lines.len(),
        1,
        "the prompt handed to the provider before the deadline is not audited: {lines:?}"
    );
    assert!(
        ["cancelled", "deadline_exceeded"].contains(&lines[0]["outcome"].as_str().unwrap_or("")),
        "{lines:?}"
    );
    assert!(
        lines[0]["prompt_sha256"]
            .as_str()
            .is_some_and(|h| h.len() == 64)
    );
}

#[tokio::test]
async fn a_prompt_whose_client_left_before_the_first_token_is_audited() {
    let fake = hanging_remote().await;
    let app = app_with_only_remote(&fake, "");
    let addr = app.serve().await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/ask"))
        .json(&json!({"question": "How long do refunds take?"}))
        .send()
        .await
        .expect("send");
    let mut body = resp.bytes_stream();
    read_until(&mut body, "event: retrieval").await;
    let waited = Instant::now();
    while fake.hits() == 0 && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.hits(), 1, "the prompt reached the provider");
    drop(body);
    let waited = Instant::now();
    let trace = loop {
        let t = app.engine.traces.recent(1).first().cloned();
        if let Some(t) = t.filter(|t| t.outcome == "client_disconnected") {
            break t;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "no trace of the disconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines = provider_requests(&app, &trace.id);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "client_disconnected", "{lines:?}");
}

#[tokio::test]
async fn a_prompt_refused_by_the_budget_is_audited_as_refused() {
    let fake = Fake::start(vec![complete_answer()]).await;
    let app = app_with_remote(&fake, "[budget]\ndaily_usd = 0.01\n");
    // `cairn ask` runs the pipeline without the HTTP check, so the gateway itself refuses.
    let mut outcome = String::new();
    for question in [
        "How long do refunds take?",
        "What does express shipping cost?",
    ] {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let req = cairn::answer::events::AskRequest {
            question: question.into(),
            filter: Default::default(),
            top_k: 5,
            conversation: Vec::new(),
            budget_key: None,
            thread_id: None,
            agent: None,
        };
        tokio::spawn(cairn::answer::answer(
            app.engine.clone(),
            req,
            "cli".into(),
            tx,
        ));
        while rx.recv().await.is_some() {}
        outcome = app.engine.traces.recent(1)[0].outcome.clone();
        if outcome == "budget_exhausted" {
            break;
        }
    }
    assert_eq!(outcome, "budget_exhausted");
    let trace = app.engine.traces.recent(1)[0].clone();
    let lines = provider_requests(&app, &trace.id);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "budget_exhausted", "{lines:?}");
    assert!(lines[0]["provider"].is_null(), "{lines:?}");
}
