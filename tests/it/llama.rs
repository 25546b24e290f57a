//! `/ask` end to end through a real OpenAI-compatible model server: cairn configured with
//! `answer = ["llama:smollm2"]` against llama.cpp's `llama-server` (see `tests/support/llama.rs`;
//! `#[ignore]`d with that reason; `--include-ignored` runs it).

use serde_json::Value;

use crate::support::{self, TestApp};
use crate::vendors::llama::{LlamaServer, MODEL_ALIAS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server: eval \"$(scripts/fetch-llama.sh)\""]
async fn ask_streams_an_answer_generated_by_llama_server() {
    let llama = LlamaServer::start("ask_streams_an_answer_generated_by_llama_server").await;
    // A short context keeps prompt evaluation quick on a busy 2-core machine.
    let app = TestApp::with_config(&format!(
        "[server]\nrequest_timeout_secs = 300\n\
         [retrieval]\ntop_k = 2\nmax_context_words = 250\n\
         [providers.llama]\nkind = \"openai_compatible\"\nbase_url = \"{}\"\n\
         timeout_first_token_ms = 120000\nmax_retries = 0\n\
         [routes]\nanswer = [\"llama:{MODEL_ALIAS}\"]\n",
        llama.base_url()
    ));
    let addr = app.serve().await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/ask"))
        .json(&serde_json::json!({"question": "How long do refunds take?"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    let events = support::parse_sse(&text);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let log = llama.log_tail();
    assert_eq!(names.first(), Some(&"retrieval"), "{text}\n{log}");
    assert_eq!(names.last(), Some(&"done"), "{text}\n{log}");
    assert!(!names.contains(&"error"), "{text}\n{log}");
    let data = |name: &str| -> Value {
        let e = events.iter().find(|e| e.event == name).expect(name);
        serde_json::from_str(&e.data).expect("json")
    };
    let answer = support::streamed_answer(&events);
    assert!(!answer.trim().is_empty(), "{text}");
    assert_eq!(data("done")["outcome"], "answered", "{text}");
    // The usage event names the model server and carries its token counts, so the answer came
    // from llama-server and not from the offline extractive provider.
    let usage = data("usage");
    assert_eq!(usage["provider"], "llama", "{usage}");
    assert_eq!(usage["model"], MODEL_ALIAS, "{usage}");
    assert!(
        usage["input_tokens"].as_u64().expect("input") > 50,
        "{usage}"
    );
    assert!(
        usage["output_tokens"].as_u64().expect("output") > 0,
        "{usage}"
    );
}

/// `[retrieval] condense = "model"` through llama-server: whatever the tiny model replies, the
/// follow-up is answered, and the trace says which condenser made the query (with the
/// fallback's reason, or the model's call and tokens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server: eval \"$(scripts/fetch-llama.sh)\""]
async fn condense_model_through_llama_server_answers_and_traces_which_condenser_ran() {
    let test = "condense_model_through_llama_server_answers_and_traces_which_condenser_ran";
    let llama = LlamaServer::start(test).await;
    let app = TestApp::with_config(&format!(
        "[server]\nrequest_timeout_secs = 300\n[traces]\nrecord_text = true\n\
         [retrieval]\ncondense = \"model\"\ncondense_timeout_ms = 120000\n\
         [providers.llama]\nkind = \"openai_compatible\"\nbase_url = \"{}\"\n\
         timeout_first_token_ms = 120000\nmax_retries = 0\n\
         [routes]\nanswer = [\"local\"]\ncondense = [\"llama:{MODEL_ALIAS}\"]\n",
        llama.base_url()
    ));
    let body = serde_json::json!({
        "question": "Can I send it back?",
        "stream": false,
        "conversation": [{"role": "user", "content": "I bought something marked final sale."}],
    });
    let (status, got) = support::post_as(&app, None, "/ask", body).await;
    let log = llama.log_tail();
    assert_eq!(status, 200, "{got}\n{log}");
    assert_eq!(got["outcome"], "answered", "{got}\n{log}");
    assert!(
        !got["answer"].as_str().unwrap_or_default().is_empty(),
        "{got}"
    );
    let trace = &app.engine.traces.recent(1)[0];
    let c = trace.condense.as_ref().expect("condense record");
    assert_eq!(trace.query.as_deref(), got["query"].as_str(), "{got}");
    match c.condenser.as_str() {
        "model" => assert_eq!(c.fallback, None, "{c:?}"),
        "heuristic" => assert!(c.fallback.is_some(), "{c:?}"),
        other => panic!("unexpected condenser {other}: {c:?}"),
    }
    // Unless the call itself failed, llama-server served it and metered it.
    if !matches!(c.fallback.as_deref(), Some("timeout" | "provider_error")) {
        assert_eq!(c.provider.as_deref(), Some("llama"), "{c:?}\n{log}");
        assert!(c.input_tokens > 50 && c.output_tokens > 0, "{c:?}");
    }
    eprintln!(
        "condense through llama-server: {c:?}, query {:?}",
        got["query"]
    );
}
