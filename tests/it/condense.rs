//! `[retrieval] condense = "model"` (issue #20): a small model on the `[routes] condense` route
//! rewrites a follow-up into the query retrieval runs on (shown as `query`, recorded in the
//! trace with the call's tokens and cost, charged to the budget) and says whether the caller
//! asks for a person (hand-off `requested`). Every failure — a time-out, a 5xx, a reply that is
//! not the JSON asked for, a budget refusal — falls back to the heuristic with its reason in
//! the trace, and the answer is given as usual. The fakes speak the vendors' wire formats.

use std::time::Duration;

use crate::support::{self, TestApp, post_as as post};
use crate::vendors::{Fake, Frame, Reply, Vendor};
use axum::http::StatusCode;
use serde_json::{Value, json};

const FINAL_SALE: &str = "I bought something marked final sale.";
const SEND_BACK: &str = "Can I send it back?";
const REWRITE: &str = "Can I return an item marked final sale?";
const REFUNDS: &str = "samples:help-center/refunds.md";

/// An app whose answers come from the offline provider and whose `condense` route is the fake
/// model `fake` speaking `v`'s wire format (priced at $1000 per million tokens each way), with
/// the condense time limit `timeout_ms` and `extra` config.
fn app(v: Vendor, fake: &Fake, timeout_ms: u64, extra: &str) -> TestApp {
    let retrieval = format!("condense_timeout_ms = {timeout_ms}");
    app_priced(v, fake, &retrieval, (1000.0, 1000.0), extra)
}

/// [`app`] with `retrieval` lines in `[retrieval]` and the condense model's (input, output)
/// prices in dollars per million tokens.
fn app_priced(
    v: Vendor,
    fake: &Fake,
    retrieval: &str,
    (input, output): (f64, f64),
    extra: &str,
) -> TestApp {
    let kind = match v {
        Vendor::Anthropic => "anthropic",
        _ => "openai_compatible",
    };
    TestApp::with_config(&format!(
        r#"
[traces]
record_text = true
[retrieval]
condense = "model"
{retrieval}
[providers.remote]
kind = "{kind}"
base_url = "{}{}"
max_retries = 0
timeout_first_token_ms = 5000
[providers.remote.prices."{model}"]
input_per_mtok = {input:?}
output_per_mtok = {output:?}
[routes]
answer = ["local"]
condense = ["remote:{model}"]
{extra}
"#,
        fake.base,
        v.base_path(),
        model = v.model(),
    ))
}

/// The condense model's reply `json`, streamed in two pieces (usage: 21 in, 7 out).
fn says(json: &str) -> Reply {
    let (a, b) = json.split_at(json.len() / 2);
    Reply::sse(Vendor::Compatible.success(&[a, b]))
}

/// `/ask` (not streaming) of `question` after the user turn `earlier` and an assistant turn.
fn follow_up(earlier: &str, question: &str) -> Value {
    json!({"question": question, "stream": false, "conversation": [
        {"role": "user", "content": earlier},
        {"role": "assistant", "content": "Final sale items are marked on the receipt."},
    ]})
}

/// The condense record of the newest trace.
fn last_condense(app: &TestApp) -> Value {
    let trace = &app.engine.traces.recent(1)[0];
    serde_json::to_value(&trace.condense).expect("json")
}

#[tokio::test]
async fn the_models_rewrite_is_the_query_and_its_call_is_traced_and_charged() {
    let fake = Fake::start(vec![says(&format!(
        r#"{{"query": "{REWRITE}", "human": false}}"#
    ))])
    .await;
    let app = app(Vendor::Compatible, &fake, 5000, "");
    let (status, got) = post(&app, None, "/ask", follow_up(FINAL_SALE, SEND_BACK)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["query"], REWRITE, "{got}");
    assert_eq!(got["outcome"], "answered", "{got}");
    assert_eq!(got["retrieval"][0]["doc_id"], REFUNDS, "{got}");
    let c = last_condense(&app);
    assert_eq!(c["condenser"], "model", "{c}");
    assert_eq!(c.get("fallback"), None, "{c}");
    assert_eq!(c["prompt_version"], "condense.v1", "{c}");
    assert_eq!(
        (c["input_tokens"].as_u64(), c["output_tokens"].as_u64()),
        (Some(21), Some(7)),
        "{c}"
    );
    let cost = c["cost_usd"].as_f64().expect("cost");
    assert!((cost - 0.028).abs() < 1e-9, "{c}");
    // The answer route is the free offline provider: all of the day's spend is the condense call.
    let spent = app.engine.router.budget.spent_today();
    assert!((spent - 0.028).abs() < 1e-9, "spent {spent}");
    assert_eq!(
        app.engine.traces.recent(1)[0].query.as_deref(),
        Some(REWRITE)
    );

    // What the model was sent: the caller's turn and question, no assistant turn, a JSON
    // schema for the reply and the condense token limit.
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let body = &seen[0].body;
    let sent = body["messages"].to_string();
    assert!(
        sent.contains(FINAL_SALE) && sent.contains(SEND_BACK),
        "{body}"
    );
    assert!(!sent.contains("marked on the receipt"), "{body}");
    assert_eq!(body["response_format"]["type"], "json_schema", "{body}");
    assert_eq!(body["max_tokens"], 96, "{body}");

    // Streaming: the `retrieval` event carries the model's query.
    let mut body = follow_up(FINAL_SALE, SEND_BACK);
    body["stream"] = json!(true);
    let data = support::first_streamed(&app, &body, "retrieval").await;
    assert_eq!(data["query"], REWRITE, "{data}");
}

#[tokio::test]
async fn an_anthropic_condense_model_answers_through_its_forced_tool() {
    let reply = format!(r#"{{"query": "{REWRITE}", "human": false}}"#);
    let (a, b) = reply.split_at(20);
    let frames = Vendor::Anthropic.tool_calls(&[("toolu_01", "condensed", &[a, b])]);
    let fake = Fake::start(vec![Reply::sse(frames)]).await;
    let app = app(Vendor::Anthropic, &fake, 5000, "");
    let (status, got) = post(&app, None, "/ask", follow_up(FINAL_SALE, SEND_BACK)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["query"], REWRITE, "{got}");
    assert_eq!(last_condense(&app)["condenser"], "model");
    let body = &fake.seen()[0].body;
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "condensed"}),
        "{body}"
    );
}

/// Asks the follow-up on an app whose condense model replies `reply` within `timeout_ms`, and
/// checks that the heuristic made the query for `reason` and the answer was given as usual;
/// returns the trace's condense record with the request's total time (ms) as `total_ms`.
async fn falls_back(reply: Reply, timeout_ms: u64, reason: &str) -> Value {
    let fake = Fake::start(vec![reply]).await;
    let app = app(Vendor::Compatible, &fake, timeout_ms, "");
    let (status, got) = post(&app, None, "/ask", follow_up(FINAL_SALE, SEND_BACK)).await;
    assert_eq!(status, StatusCode::OK, "{reason}: {got}");
    assert_eq!(got["outcome"], "answered", "{reason}: {got}");
    assert!(
        !got["answer"].as_str().unwrap_or_default().is_empty(),
        "{got}"
    );
    let query = got["query"].as_str().unwrap_or_default();
    assert!(
        query.starts_with(SEND_BACK) && query.contains("final sale"),
        "{reason}: the heuristic's query expected: {got}"
    );
    assert_eq!(got["retrieval"][0]["doc_id"], REFUNDS, "{got}");
    let c = last_condense(&app);
    assert_eq!(c["condenser"], "heuristic", "{c}");
    assert_eq!(c["fallback"], reason, "{c}");
    let mut c = c;
    c["total_ms"] = json!(app.engine.traces.recent(1)[0].timings.total_ms);
    c
}

#[tokio::test]
async fn a_slow_condense_model_falls_back_to_the_heuristic_within_its_time_limit() {
    let mut frames = vec![Frame::Delay(Duration::from_secs(3))];
    frames.extend(Vendor::Compatible.success(&[r#"{"query": "late", "human": false}"#]));
    let c = falls_back(Reply::sse(frames), 300, "timeout").await;
    // The answer did not wait for the 3 s reply.
    assert!(c["ms"].as_f64().expect("ms") < 1500.0, "{c}");
    assert!(c["total_ms"].as_f64().expect("total") < 2500.0, "{c}");
}

#[tokio::test]
async fn a_failing_condense_model_falls_back_with_the_error_in_the_trace() {
    let reply = Reply::json(500, &Vendor::Compatible.error_body("boom"));
    let c = falls_back(reply, 5000, "provider_error").await;
    assert!(
        c["error"].as_str().unwrap_or_default().contains("500"),
        "{c}"
    );
    assert_eq!(c["cost_usd"], 0.0, "{c}");
}

#[tokio::test]
async fn garbage_from_the_condense_model_falls_back_and_the_call_is_still_charged() {
    let c = falls_back(says("Sure, happy to help with that!"), 5000, "unparsable").await;
    assert!(c["cost_usd"].as_f64().expect("cost") > 0.0, "{c}");
    let unrelated = says(r#"{"query": "What is the capital of France?", "human": false}"#);
    falls_back(unrelated, 5000, "unrelated").await;
    let long = format!(
        r#"{{"query": "final sale {}", "human": false}}"#,
        "refund ".repeat(80)
    );
    falls_back(says(&long), 5000, "too_long").await;
}

#[tokio::test]
async fn a_condense_call_the_budget_refuses_falls_back_without_calling_the_model() {
    let fake_reply = says(&format!(r#"{{"query": "{REWRITE}", "human": false}}"#));
    let fake = Fake::start(vec![fake_reply]).await;
    // $1 an input token: the condense prompt's reservation is far over the $1 cap, while the
    // answer's pre-check (output tokens at the highest routed output price, 0) passes.
    let app = app_priced(
        Vendor::Compatible,
        &fake,
        "condense_timeout_ms = 5000",
        (1e6, 0.0),
        "[budget]\ndaily_usd = 1.0\n",
    );
    let (status, got) = post(&app, None, "/ask", follow_up(FINAL_SALE, SEND_BACK)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert!(
        got["query"]
            .as_str()
            .unwrap_or_default()
            .contains("final sale"),
        "{got}"
    );
    assert_eq!(last_condense(&app)["fallback"], "budget_exhausted");
    assert_eq!(fake.hits(), 0);
}

#[tokio::test]
async fn the_condense_model_hearing_a_wish_for_a_person_hands_off_as_requested() {
    // No phrase of the list: only the model can tell.
    let question = "Nothing here helps with my refund, let me speak to somebody from your team.";
    let fake = Fake::start(vec![says(
        r#"{"query": "refund help from the team", "human": true}"#,
    )])
    .await;
    let app = app(Vendor::Compatible, &fake, 5000, "");
    let body = json!({"question": question, "stream": false});
    let (status, got) = post(&app, None, "/ask", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["handoff"], json!({"reason": "requested"}), "{got}");
    // A first question is retrieved as asked: the model was called to hear the wish.
    assert_eq!(got["query"], question, "{got}");
    let c = last_condense(&app);
    assert_eq!(
        (&c["condenser"], &c["human"]),
        (&json!("model"), &json!(true)),
        "{c}"
    );

    let heuristic = TestApp::new();
    let (_, got) = post(&heuristic, None, "/ask", body.clone()).await;
    assert_ne!(got["handoff"], json!({"reason": "requested"}), "{got}");
    // `condense_handoff = false`: the model's word is recorded, not acted on.
    let fake = Fake::start(vec![says(
        r#"{"query": "refund help from the team", "human": true}"#,
    )])
    .await;
    let ignoring = app_priced(
        Vendor::Compatible,
        &fake,
        "condense_timeout_ms = 5000\ncondense_handoff = false",
        (1000.0, 1000.0),
        "",
    );
    let (_, got) = post(&ignoring, None, "/ask", body).await;
    assert_eq!(got["handoff"], Value::Null, "{got}");
    assert_eq!(last_condense(&ignoring)["human"], true);
}

#[test]
fn condense_model_without_its_route_or_with_bad_limits_stops_startup() {
    let load = |extra: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = support::write_config(dir.path(), extra);
        cairn::config::Config::load(&path, true, &Default::default())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let e = load("[retrieval]\ncondense = \"model\"\n").expect_err("no route");
    assert!(e.contains("routes.condense"), "{e}");
    let routes = "[routes]\nanswer = [\"local\"]\ncondense = [\"local\"]\n";
    for (bad, key) in [
        ("condense_timeout_ms = 0", "retrieval.condense_timeout_ms"),
        (
            "condense_max_tokens = 5000",
            "retrieval.condense_max_tokens",
        ),
    ] {
        let e = load(&format!(
            "[retrieval]\ncondense = \"model\"\n{bad}\n{routes}"
        ))
        .expect_err(bad);
        assert!(e.contains(key), "{bad}: {e}");
    }
    load(&format!("[retrieval]\ncondense = \"model\"\n{routes}")).expect("valid");
}

#[tokio::test]
async fn the_condense_model_sees_placeholders_and_its_query_gets_the_values_back() {
    // The model echoes the caller's masked e-mail address into its query.
    let fake = Fake::start(vec![says(
        r#"{"query": "final sale refund for [email-1]", "human": false}"#,
    )])
    .await;
    let app = app(Vendor::Compatible, &fake, 5000, "");
    let earlier = "I bought something marked final sale, my address is jo.doe@example.org";
    let (status, got) = post(&app, None, "/ask", follow_up(earlier, SEND_BACK)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let sent = fake.seen()[0].body["messages"].to_string();
    assert!(!sent.contains("jo.doe@example.org"), "{sent}");
    assert!(sent.contains("[email-1]"), "{sent}");
    assert_eq!(
        got["query"], "final sale refund for jo.doe@example.org",
        "{got}"
    );
    // The condense prompt is audited like the answer's: route, provider, hash, no text.
    let trace_id = got["trace_id"].as_str().expect("trace id");
    let lines = cairn::observe::audit::read(app.engine.audit.path()).expect("audit log");
    let rec = lines
        .iter()
        .find(|l| l["event"] == "provider_request" && l["route"] == "condense")
        .unwrap_or_else(|| panic!("no condense audit record: {lines:?}"));
    assert_eq!(rec["trace_id"], trace_id, "{rec}");
    assert_eq!(
        (&rec["provider"], &rec["outcome"]),
        (&json!("remote"), &json!("served")),
        "{rec}"
    );
    assert_eq!(rec["masked"]["email"], 1, "{rec}");
    assert!(!rec.to_string().contains("jo.doe"), "{rec}");
}
