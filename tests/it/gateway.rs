//! The answer pipeline through the provider gateway: a remote provider (a scripted fake
//! OpenAI-compatible server) in front of the offline extractive one, retries and fallback
//! before the first token, cost in usage and traces, and `[budget]` refusals.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

use cairn::answer::answer;
use cairn::answer::events::{AnswerEvent, AskRequest};

use crate::support::{self, TestApp, body_json, post_json, with_key};
use crate::vendors::{Fake, Frame, Reply, Vendor};

const BOT: &str = "bot-key-456";
const HR: &str = "hr-key-789";

/// An app whose answer route is `remote` (the fake; one retry, no backoff to speak of) then
/// `local`; the remote model costs $1000 per million tokens in and out, so the fake's 21 + 7
/// tokens cost $0.028.
pub(crate) fn app_with_remote(fake: &Fake, extra: &str) -> TestApp {
    app_with_remote_priced(fake, 1000.0, extra)
}

/// [`app_with_remote`] with the remote's input price set to `input_per_mtok` (output stays at
/// $1000 per million tokens).
fn app_with_remote_priced(fake: &Fake, input_per_mtok: f64, extra: &str) -> TestApp {
    TestApp::with_config(&format!(
        r#"
[providers.remote]
kind = "openai_compatible"
base_url = "{}/v1"
max_retries = 1
retry_base_ms = 1
timeout_first_token_ms = 2000
[providers.remote.prices."smollm2"]
input_per_mtok = {input_per_mtok:?}
output_per_mtok = 1000.0
[routes]
answer = ["remote:smollm2", "local"]
[[auth.keys]]
name = "bot"
hash = "{}"
scopes = ["ask"]
[[auth.keys]]
name = "hr"
hash = "{}"
scopes = ["ask"]
{extra}
"#,
        fake.base,
        cairn::http::auth::hash_key(BOT),
        cairn::http::auth::hash_key(HR),
    ))
}

fn remote_answer() -> Reply {
    Reply::sse(Vendor::Compatible.success(&["Refunds take ", "5 business days [1]", " [9]."]))
}

async fn ask_json(app: &TestApp, key: &str, question: &str) -> (StatusCode, Value, Option<String>) {
    let body = serde_json::json!({"question": question, "stream": false}).to_string();
    let resp = app
        .router()
        .oneshot(with_key(post_json("/ask", &body), key))
        .await
        .expect("response");
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, body_json(resp).await, retry_after)
}

#[tokio::test]
async fn failure_before_the_first_token_is_retried_then_falls_back_to_the_next_target() {
    // First call: 503. Retry: the stream opens (200, role chunk) and drops before any text.
    let mut dropped = Vendor::Compatible.preamble();
    dropped.push(Frame::Drop);
    let fake = Fake::start(vec![
        Reply::json(503, &Vendor::Compatible.error_body("overloaded")),
        Reply::sse(dropped),
    ])
    .await;
    let app = app_with_remote(&fake, "");
    let addr = app.serve().await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/ask"))
        .bearer_auth(BOT)
        .json(&serde_json::json!({"question": "How long do refunds take?"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let events = support::parse_sse(&resp.text().await.expect("body"));
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert!(!names.contains(&"error"), "{names:?}");
    assert_eq!(names.first(), Some(&"retrieval"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    let answer = support::streamed_answer(&events);
    assert!(answer.contains("5 business days"), "{answer}");
    let usage: Value = serde_json::from_str(
        &events
            .iter()
            .find(|e| e.event == "usage")
            .expect("usage")
            .data,
    )
    .expect("json");
    assert_eq!(usage["provider"], "local", "{usage}");

    // The gateway tried the remote twice (one retry), then the extractive provider served.
    assert_eq!(fake.hits(), 2);
    let trace = &app.engine.traces.recent(1)[0];
    assert_eq!(trace.provider.as_deref(), Some("local"));
    assert_eq!(trace.outcome, "answered");
    assert_eq!(
        trace.provider_errors.len(),
        2,
        "{:?}",
        trace.provider_errors
    );
    assert!(
        trace
            .provider_errors
            .iter()
            .all(|e| e.starts_with("remote: ")),
        "{:?}",
        trace.provider_errors
    );
}

#[tokio::test]
async fn remote_answer_carries_cost_and_filtered_citations() {
    let fake = Fake::start(vec![remote_answer()]).await;
    let app = app_with_remote(&fake, "");
    let (status, json, _) = ask_json(&app, BOT, "How long do refunds take?").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    // `[9]` was not given to the model: dropped, with the space before it.
    assert_eq!(
        json["answer"], "Refunds take 5 business days [1].",
        "{json}"
    );
    assert_eq!(json["usage"]["provider"], "remote");
    assert_eq!(json["usage"]["model"], "smollm2");
    assert_eq!(json["usage"]["input_tokens"], 21);
    assert_eq!(json["usage"]["output_tokens"], 7);
    let cost = json["usage"]["cost_usd"].as_f64().expect("cost");
    assert!((cost - 0.028).abs() < 1e-9, "{cost}");
    assert_eq!(json["citations"].as_array().map(Vec::len), Some(1));
    let trace = &app.engine.traces.recent(1)[0];
    assert!((trace.cost_usd - 0.028).abs() < 1e-9, "{}", trace.cost_usd);
    assert_eq!(trace.dropped_citations, 1);
    assert!((app.engine.router.budget.spent_today() - 0.028).abs() < 1e-9);
}

/// A client that leaves mid-answer closes the upstream call: the fake sees its response body
/// dropped before the last frame, long before its scripted 60 s pause would have ended.
#[tokio::test]
async fn client_disconnect_mid_stream_closes_the_upstream_call() {
    let mut frames = Vendor::Compatible.success(&["Refunds take ", "5 business days [1]."]);
    let first_text = frames
        .iter()
        .position(|f| matches!(f, Frame::Bytes(b) if b.contains("Refunds take")))
        .expect("text frame");
    frames.insert(first_text + 1, Frame::Delay(Duration::from_secs(60)));
    let fake = Fake::start(vec![Reply::sse(frames)]).await;
    let app = app_with_remote(&fake, "");
    let body = serde_json::json!({"question": "How long do refunds take?"}).to_string();
    let resp = app
        .router()
        .oneshot(with_key(post_json("/ask", &body), BOT))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let received = support::read_until(&mut body, "event: token").await;
    assert!(received.contains("Refunds take"), "{received}");
    assert_eq!(
        fake.abandoned(),
        0,
        "upstream closed while the client listened"
    );

    drop(body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.abandoned() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fake.abandoned(),
        1,
        "the upstream response was still open 10 s after the client left"
    );
    assert_eq!(fake.hits(), 1, "no retry or fallback after the client left");
}

#[tokio::test]
async fn per_key_daily_cap_refuses_with_429_and_a_typed_code() {
    let fake = Fake::start(vec![remote_answer()]).await;
    // Free input, so a call's reservation is its 512 output tokens at $1000/M: $0.512; its
    // cost is 7 output tokens: $0.007. The cap holds one reservation, not a cost and another.
    let app = app_with_remote_priced(
        &fake,
        0.0,
        "[budget]\ndaily_usd_per_key = 0.515\ndaily_usd = 2.0\n",
    );
    let (status, json, _) = ask_json(&app, BOT, "How long do refunds take?").await;
    assert_eq!(
        (status, &json["outcome"]),
        (StatusCode::OK, &Value::from("answered"))
    );
    // $0.007 spent by `bot`: the next answer's reservation does not fit, so its next question
    // is refused before anything runs.
    let (status, json, retry_after) = ask_json(&app, BOT, "What does express shipping cost?").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["error"]["code"], "budget_exhausted");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("00:00 UTC")),
        "{json}"
    );
    let secs: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=86_400).contains(&secs), "{secs}");
    // Another key has its own allowance; the OpenAI-compatible endpoint applies the same cap.
    let (status, _, _) = ask_json(&app, HR, "What does express shipping cost?").await;
    assert_eq!(status, StatusCode::OK);
    let chat = r#"{"messages":[{"role":"user","content":"How long do refunds take?"}]}"#;
    let resp = app
        .router()
        .oneshot(with_key(post_json("/v1/chat/completions", chat), BOT))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body_json(resp).await["error"]["code"], "budget_exhausted");
    assert_eq!(fake.hits(), 2, "refused questions never reach the provider");
}

#[tokio::test]
async fn global_cap_reached_ends_the_answer_with_a_typed_error() {
    let fake = Fake::start(vec![remote_answer()]).await;
    let app = app_with_remote_priced(&fake, 0.0, "[budget]\ndaily_usd = 0.515\n");
    // `cairn ask` runs the pipeline without the HTTP check, so the gateway itself refuses.
    let run = |question: &str| {
        let (tx, mut rx) = mpsc::channel(64);
        let req = AskRequest {
            question: question.into(),
            filter: Default::default(),
            top_k: 5,
            conversation: Vec::new(),
            budget_key: None,
            thread_id: None,
            agent: None,
        };
        let engine = app.engine.clone();
        async move {
            tokio::spawn(answer(engine, req, "cli".into(), tx));
            let mut events = Vec::new();
            while let Some(ev) = rx.recv().await {
                events.push(ev);
            }
            events
        }
    };
    let first = run("How long do refunds take?").await;
    assert!(
        first.iter().any(|e| matches!(
            e,
            AnswerEvent::Done {
                outcome: "answered",
                ..
            }
        )),
        "{first:?}"
    );
    let second = run("What does express shipping cost?").await;
    match second.last() {
        Some(AnswerEvent::Error { code, message }) => {
            assert_eq!(*code, "budget_exhausted");
            assert!(message.contains("daily spend"), "{message}");
        }
        other => panic!("expected a budget error, got {other:?}"),
    }
    assert!(
        !second.iter().any(|e| matches!(e, AnswerEvent::Token(_))),
        "{second:?}"
    );
    assert_eq!(fake.hits(), 1);
    assert_eq!(app.engine.traces.recent(1)[0].outcome, "budget_exhausted");
}

/// A remote that answers 200 with a well-formed stream holding no tokens has not answered: the
/// route falls back, and the answer comes from the next target.
#[tokio::test]
async fn an_empty_200_from_the_remote_falls_back_to_the_next_target() {
    let fake = Fake::start(vec![Reply::sse(Vendor::Compatible.success(&[]))]).await;
    let app = app_with_remote(&fake, "");
    let (status, json, _) = ask_json(&app, BOT, "How long do refunds take?").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["usage"]["provider"], "local", "{json}");
    assert!(
        json["answer"].as_str().is_some_and(|a| !a.is_empty()),
        "{json}"
    );
    let trace = &app.engine.traces.recent(1)[0];
    assert_eq!(trace.provider.as_deref(), Some("local"));
    assert!(
        trace
            .provider_errors
            .iter()
            .any(|e| e.starts_with("remote: ")),
        "{:?}",
        trace.provider_errors
    );
}

/// A batch is answered on its key's allowance: its requests are charged like `/ask`, a request
/// whose reservation no longer fits ends `budget_exhausted` without reaching the provider, the
/// batch's `cost_usd` sums what was spent, and the key's next `/ask` and batch are refused while
/// another key keeps its own allowance.
#[tokio::test]
async fn a_batch_is_charged_to_its_keys_budget() {
    let fake = Fake::start(vec![remote_answer()]).await;
    // As in the per-key test: the cap holds one reservation ($0.512), not a cost ($0.007) and
    // another, so the first request is answered and the rest are refused.
    let app = app_with_remote_priced(
        &fake,
        0.0,
        "[budget]\ndaily_usd_per_key = 0.515\ndaily_usd = 2.0\n[batches]\nconcurrency = 1\n",
    );
    let requests: Vec<Value> = [
        "How long do refunds take?",
        "What does express shipping cost?",
        "Can I return a sale item?",
    ]
    .iter()
    .enumerate()
    .map(|(i, q)| serde_json::json!({"custom_id": format!("r{i}"), "question": q}))
    .collect();
    let body = serde_json::json!({ "requests": requests }).to_string();
    let resp = app
        .router()
        .oneshot(with_key(post_json("/batches", &body), BOT))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = body_json(resp).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let started = Instant::now();
    let batch = loop {
        let b = app
            .state
            .batches
            .get(&id, "bot")
            .expect("read")
            .expect("batch");
        if b.finished_at.is_some() {
            break b.view();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{}", b.view());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(batch["state"], "completed", "{batch}");
    assert_eq!(
        (&batch["done"], &batch["failed"]),
        (&Value::from(3), &Value::from(2)),
        "{batch}"
    );
    let cost = batch["cost_usd"].as_f64().expect("cost");
    assert!((cost - 0.007).abs() < 1e-9, "{batch}");
    let lines = app
        .state
        .batches
        .results(&id, "bot")
        .expect("read")
        .expect("results");
    let outcomes: Vec<&str> = lines.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["answered", "budget_exhausted", "budget_exhausted"],
        "{lines:?}"
    );
    assert_eq!(fake.hits(), 1, "refused requests never reach the provider");

    let (status, json, _) = ask_json(&app, BOT, "Do you ship to Norway?").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["error"]["code"], "budget_exhausted");
    let resp = app
        .router()
        .oneshot(with_key(post_json("/batches", &body), BOT))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body_json(resp).await["error"]["code"], "budget_exhausted");
    let (status, json, _) = ask_json(&app, HR, "Do you ship to Norway?").await;
    assert_eq!(status, StatusCode::OK, "{json}");
}

/// Spend is kept in the data dir: a restarted server starts the day with what was already
/// spent, and its cap counts it.
#[tokio::test]
async fn spend_survives_a_restart() {
    let fake = Fake::start(vec![remote_answer()]).await;
    let app = app_with_remote_priced(&fake, 0.0, "[budget]\ndaily_usd_per_key = 0.515\n");
    let (status, json, _) = ask_json(&app, BOT, "How long do refunds take?").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let spent = app.engine.router.budget.spent_today();
    assert!((spent - 0.007).abs() < 1e-9, "{spent}");

    let app = app.reopen();
    let after = app.engine.router.budget.spent_today();
    assert!(
        (after - spent).abs() < 1e-9,
        "spent ${spent} before the restart, ${after} after"
    );
    let (status, json, _) = ask_json(&app, BOT, "What does express shipping cost?").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(
        fake.hits(),
        1,
        "the restarted server knew the key's allowance was used"
    );
}

/// A spend cap cannot be kept for a model without a price: such a route stops startup, naming
/// the price table to add, instead of counting the model as free.
#[tokio::test]
async fn an_unpriced_model_under_a_spend_cap_stops_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "[providers.remote]\nkind = \"openai_compatible\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[routes]\nanswer = [\"remote:smollm2\", \"local\"]\n";
    let path = support::write_config(dir.path(), &format!("{config}[budget]\ndaily_usd = 5.0\n"));
    let e = cairn::config::Config::load(&path, true, &Default::default())
        .expect_err("an unpriced model under a cap");
    let msg = e.to_string();
    assert!(
        msg.contains("providers.remote.prices") && msg.contains("smollm2"),
        "{msg}"
    );
    // Without a cap the same route loads (and start-up logs a warning).
    let path = support::write_config(dir.path(), config);
    cairn::config::Config::load(&path, true, &Default::default()).expect("no cap, no error");
}
