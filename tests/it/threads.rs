//! Threads (issue #20): continued on `/v1/chat/completions` as on `/ask`, every answer naming
//! its thread (body, `done` event, final chunk, `cairn-thread-id` header); another key's thread
//! is 404; `[threads] ttl` expires idle threads (404, and purged), `max_turns` keeps the newest
//! turns; erasing a thread erases its traces' text.

use axum::http::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{self, ADMIN, HR, TestApp, body_json, post_json, with_key};

const FINAL_SALE: &str = "I bought something marked final sale.";
const SEND_BACK: &str = "Can I send it back?";

/// `POST uri` with `body` as `key`: the status, the `cairn-thread-id` header and the body
/// (JSON, or the raw text of a stream as a JSON string).
async fn post(app: &TestApp, key: &str, uri: &str, body: Value) -> (StatusCode, String, Value) {
    let req = with_key(post_json(uri, &body.to_string()), key);
    let resp = app.router().oneshot(req).await.expect("response");
    let status = resp.status();
    let header = resp
        .headers()
        .get("cairn-thread-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, header, body)
}

fn chat(content: &str, thread: Option<&str>, stream: bool) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": content}], "stream": stream});
    if let Some(t) = thread {
        body["thread_id"] = json!(t);
    }
    body
}

/// The questions of thread `id`'s turns, as `key` reads them.
async fn questions(app: &TestApp, key: &str, id: &str) -> Vec<String> {
    let (status, thread) = support::call(app, Some(key), "GET", &format!("/threads/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{thread}");
    thread["turns"]
        .as_array()
        .expect("turns")
        .iter()
        .map(|t| t["question"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// An app with keys that keeps question text in traces, plus `extra` config.
fn app_with(extra: &str) -> TestApp {
    support::keyed_app_with(&format!("[traces]\nrecord_text = true\n{extra}"))
}

#[tokio::test]
async fn a_thread_continues_on_chat_completions_with_only_the_new_message() {
    let app = app_with("");
    let uri = "/v1/chat/completions";
    let (status, header, got) = post(&app, ADMIN, uri, chat(FINAL_SALE, None, false)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let id = got["thread_id"].as_str().expect("thread_id").to_string();
    assert_eq!(header, id);

    let (status, header, got) = post(&app, ADMIN, uri, chat(SEND_BACK, Some(&id), false)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(
        (header.as_str(), &got["thread_id"]),
        (id.as_str(), &json!(id))
    );
    let trace = &app.engine.traces.recent(1)[0];
    assert_eq!(trace.thread_id.as_deref(), Some(id.as_str()));
    assert!(
        trace
            .query
            .as_deref()
            .is_some_and(|q| q.contains("final sale")),
        "the stored turn did not reach retrieval: {trace:?}"
    );
    assert_eq!(questions(&app, ADMIN, &id).await, [FINAL_SALE, SEND_BACK]);

    // Streaming: the header, and the thread id on the final chunk.
    let (status, header, got) = post(&app, ADMIN, uri, chat(SEND_BACK, Some(&id), true)).await;
    assert_eq!((status, header.as_str()), (StatusCode::OK, id.as_str()));
    let text = got.as_str().expect("stream text");
    let last = support::parse_sse(text)
        .into_iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .next_back()
        .expect("a final chunk");
    assert_eq!(last["thread_id"], id.as_str(), "{text}");
    assert_eq!(questions(&app, ADMIN, &id).await.len(), 3);

    // Another key's thread does not exist for it.
    let (status, _, got) = post(&app, HR, uri, chat(SEND_BACK, Some(&id), false)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{got}");
    assert_eq!(got["error"]["code"], "not_found", "{got}");
}

#[tokio::test]
async fn ask_names_its_thread_in_the_header_the_body_and_the_done_event() {
    let app = app_with("");
    let ask = json!({"question": FINAL_SALE, "stream": false});
    let (status, header, got) = post(&app, ADMIN, "/ask", ask).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["thread_id"], header.as_str(), "{got}");
    let ask = json!({"question": SEND_BACK, "thread_id": header});
    let (status, streamed_header, got) = post(&app, ADMIN, "/ask", ask).await;
    assert_eq!((status, &streamed_header), (StatusCode::OK, &header));
    let events = support::parse_sse(got.as_str().expect("stream text"));
    let done = events.iter().find(|e| e.event == "done").expect("done");
    let done: Value = serde_json::from_str(&done.data).expect("json");
    assert_eq!(done["thread_id"], header.as_str(), "{done}");
}

#[tokio::test]
async fn an_idle_thread_expires_after_the_ttl_and_is_purged() {
    let app = app_with("[threads]\nttl = \"3s\"\n");
    let ask = |thread: Option<&str>| json!({"question": FINAL_SALE, "stream": false, "thread_id": thread});
    let (_, old, _) = post(&app, ADMIN, "/ask", ask(None)).await;
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    // Starting a thread sweeps: the idle one is gone from the store without being asked for.
    let (_, new, _) = post(&app, ADMIN, "/ask", ask(None)).await;
    let threads = app.engine.threads().expect("threads");
    assert!(!threads.erase(&old).expect("erase"), "{old} was not purged");
    assert_eq!(questions(&app, ADMIN, &new).await, [FINAL_SALE]);
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let (status, _) = support::call(&app, Some(ADMIN), "GET", &format!("/threads/{new}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, got) = post(&app, ADMIN, "/ask", ask(Some(&new))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{got}");
    assert!(!threads.erase(&new).expect("erase"), "{new} was not purged");
}

#[tokio::test]
async fn a_full_thread_keeps_its_newest_turns() {
    let app = app_with("[threads]\nmax_turns = 2\n");
    let (_, id, _) = post(
        &app,
        ADMIN,
        "/ask",
        json!({"question": "refunds?", "stream": false}),
    )
    .await;
    for q in ["And shipping?", "And the warranty?"] {
        let body = json!({"question": q, "stream": false, "thread_id": id});
        let (status, _, got) = post(&app, ADMIN, "/ask", body).await;
        assert_eq!(status, StatusCode::OK, "{got}");
    }
    assert_eq!(
        questions(&app, ADMIN, &id).await,
        ["And shipping?", "And the warranty?"]
    );
}

#[tokio::test]
async fn erasing_a_thread_erases_the_text_of_its_traces() {
    let app = app_with("");
    let (_, id, first) = post(
        &app,
        ADMIN,
        "/ask",
        json!({"question": FINAL_SALE, "stream": false}),
    )
    .await;
    let next = json!({"question": SEND_BACK, "stream": false, "thread_id": id});
    let (_, _, second) = post(&app, ADMIN, "/ask", next).await;
    let other = json!({"question": "How long do refunds take?", "stream": false});
    let (_, _, unrelated) = post(&app, ADMIN, "/ask", other).await;
    let ids = [&first["trace_id"], &second["trace_id"]];

    let traces = |app: &TestApp| {
        let app = app.router();
        async move {
            let req = with_key(support::get("/admin/traces?limit=50"), ADMIN);
            let resp = app.oneshot(req).await.expect("response");
            assert_eq!(resp.status(), StatusCode::OK);
            body_json(resp).await
        }
    };
    let before = traces(&app).await.to_string();
    assert!(
        before.contains(FINAL_SALE) && before.contains(SEND_BACK),
        "{before}"
    );

    let (status, _) = support::call(&app, Some(ADMIN), "DELETE", &format!("/threads/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let after = traces(&app).await;
    let list = after
        .as_array()
        .or_else(|| after["traces"].as_array())
        .expect("a list of traces");
    for trace_id in ids {
        let t = list
            .iter()
            .find(|t| &t["id"] == trace_id)
            .unwrap_or_else(|| panic!("trace {trace_id} is kept: {after}"));
        for field in ["question", "query", "answer"] {
            assert!(t[field].is_null(), "{field} kept in {t}");
        }
        assert!(t["timings"]["total_ms"].is_number(), "{t}");
    }
    let kept = list
        .iter()
        .find(|t| t["id"] == unrelated["trace_id"])
        .expect("the other trace");
    assert_eq!(kept["question"], "How long do refunds take?", "{kept}");
    let file = std::fs::read_to_string(app.dir.path().join("data/state/traces.jsonl"))
        .expect("trace file");
    assert!(
        !file.contains(SEND_BACK) && !file.contains(FINAL_SALE),
        "{file}"
    );
}
