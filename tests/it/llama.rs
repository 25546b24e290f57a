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
