//! The query server's operational contract: keys, scopes, access groups, rate limits, admin
//! jobs, traces, metrics, the answer cache and the OpenAI-compatible endpoint.

use axum::http::StatusCode;
use serde_json::Value;
use tower::ServiceExt;

use crate::support::{
    self, ADMIN, BOT, HR, TestApp, body_json, get, keyed_app, post_json, reindex_and_wait, with_key,
};

async fn status_code(
    app: &TestApp,
    req: axum::http::Request<axum::body::Body>,
) -> (StatusCode, Value) {
    let resp = app.router().oneshot(req).await.expect("response");
    let status = resp.status();
    (status, body_json(resp).await)
}

#[tokio::test]
async fn scopes_and_keys_are_enforced() {
    let app = keyed_app();
    let ask = r#"{"question":"refunds","stream":false}"#;
    let (s, j) = status_code(&app, post_json("/ask", ask)).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (s, j) = status_code(&app, with_key(post_json("/ask", ask), "wrong")).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_key"))
    );
    let (s, _) = status_code(&app, with_key(post_json("/ask", ask), BOT)).await;
    assert_eq!(s, StatusCode::OK);
    // Admin refuses every other scope and the anonymous page.
    for req in [
        with_key(get("/admin/sources"), BOT),
        with_key(post_json("/admin/reindex", "{}"), BOT),
    ] {
        let (s, j) = status_code(&app, req).await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );
    }
    let (s, _) = status_code(&app, get("/admin/traces")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Anonymous search is allowed by this config.
    let (s, _) = status_code(&app, get("/search?q=refund")).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn access_groups_hold_in_search_ask_and_chat_completions() {
    let app = keyed_app();
    let q = "/search?q=salary%20band%20senior%20engineers";
    let (_, anon) = status_code(&app, get(q)).await;
    assert!(
        anon["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .all(|h| h["source"] != "hr"),
        "{anon}"
    );
    let (_, hr) = status_code(&app, with_key(get(q), HR)).await;
    assert_eq!(hr["hits"][0]["source"], "hr", "{hr}");

    // A bot asking for the HR document by filtering on the source is refused as if the
    // source did not exist, and gets nothing from it.
    let body = r#"{"question":"What is the salary band for senior engineers?","stream":false,"filters":{"source":["hr"]}}"#;
    let (status, bot) = status_code(&app, with_key(post_json("/ask", body), BOT)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bot}");
    assert_eq!(bot["error"]["code"], "unknown_filter", "{bot}");
    assert!(!bot.to_string().contains("confidential"));
    let (_, hr) = status_code(&app, with_key(post_json("/ask", body), HR)).await;
    assert_eq!(hr["citations"][0]["doc_id"], "hr:salaries.md", "{hr}");

    // The cached HR answer is never served to the bot (different retrieved chunk set).
    let body = r#"{"question":"What is the salary band for senior engineers?","stream":false}"#;
    let (_, hr1) = status_code(&app, with_key(post_json("/ask", body), HR)).await;
    assert!(hr1.to_string().contains("confidential"));
    let (_, bot2) = status_code(&app, with_key(post_json("/ask", body), BOT)).await;
    assert!(!bot2.to_string().contains("confidential"), "{bot2}");

    let chat = r#"{"model":"x","messages":[{"role":"user","content":"What is the salary band for senior engineers?"}]}"#;
    let (_, c) = status_code(&app, with_key(post_json("/v1/chat/completions", chat), BOT)).await;
    assert!(!c.to_string().contains("confidential"), "{c}");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let app = keyed_app();
    let mut limited = None;
    for _ in 0..10 {
        let resp = app
            .router()
            .oneshot(with_key(get("/search?q=refund"), BOT))
            .await
            .expect("response");
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("the bot key (burst 3) must be limited within 10 requests");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!(retry >= 1);
    assert_eq!(body_json(resp).await["error"]["code"], "rate_limited");
}

#[tokio::test]
async fn reindex_job_runs_in_background_and_reports() {
    let app = keyed_app();
    let last = reindex_and_wait(&app, r#"{"source":"samples","full":true}"#).await;
    assert_eq!(last["state"], "succeeded", "{last}");
    assert_eq!(last["counts"]["indexed"], 6, "{last}");
    assert_eq!(last["reports"][0]["source"], "samples");

    let (s, j) = status_code(
        &app,
        with_key(post_json("/admin/reindex", r#"{"source":"nope"}"#), ADMIN),
    )
    .await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_filter"))
    );
    let (s, _) = status_code(&app, with_key(get("/admin/jobs/missing"), ADMIN)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (_, sources) = status_code(&app, with_key(get("/admin/sources"), ADMIN)).await;
    let samples = sources["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|s| s["name"] == "samples")
        .expect("samples")
        .clone();
    assert_eq!(samples["documents"], 6);
    assert!(samples["last_reconciled"].is_string(), "{samples}");
}

#[tokio::test]
async fn interrupted_job_is_reported_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs_dir = dir.path().join("state/jobs");
    std::fs::create_dir_all(&jobs_dir).expect("mkdir");
    std::fs::write(
        jobs_dir.join("j1.json"),
        r#"{"id":"j1","source":null,"full":false,"state":"running","created_at":"2026-01-01T00:00:00Z","started_at":null,"finished_at":null,"progress":{"source":null,"listed":3,"processed":2,"chunks":4},"counts":{"indexed":0,"unchanged":0,"skipped":0,"failed":0,"deleted":0,"chunks":0},"reports":[],"error":null}"#,
    )
    .expect("write");
    let jobs = cairn::ops::jobs::Jobs::open(dir.path()).expect("open");
    let j = jobs.get("j1").expect("read").expect("job");
    assert_eq!(j.state, cairn::ops::jobs::JobState::Interrupted);
    assert!(j.error.expect("reason").contains("start it again"));
}

#[tokio::test]
async fn traces_metrics_and_cache() {
    let app = keyed_app();
    let body = r#"{"question":"What does express shipping cost?","stream":false}"#;
    let (_, first) = status_code(&app, with_key(post_json("/ask", body), BOT)).await;
    assert_eq!(first["usage"]["cache_hit"], false);
    let (_, second) = status_code(&app, with_key(post_json("/ask", body), BOT)).await;
    assert_eq!(second["usage"]["cache_hit"], true, "{second}");
    assert_eq!(second["answer"], first["answer"]);
    assert_eq!(second["citations"], first["citations"]);

    let (_, traces) = status_code(&app, with_key(get("/admin/traces?limit=5"), ADMIN)).await;
    let t = &traces["traces"][0];
    assert_eq!(t["cache_hit"], "exact", "{t}");
    assert_eq!(t["prompt_version"], "answer.v1");
    assert_eq!(t["caller"], "bot");
    assert!(
        t["question"].is_null(),
        "question text must not be kept by default"
    );
    assert!(!t["retrieved"].as_array().expect("retrieved").is_empty());
    assert_eq!(traces["traces"][1]["outcome"], "answered");

    cairn::observe::metrics::handle();
    let _ = status_code(&app, with_key(post_json("/ask", body), BOT)).await;
    let text = support::metrics_text_as(&app, Some(ADMIN)).await;
    assert!(text.contains("cairn_requests_total"), "{text}");
    assert!(text.contains("cairn_answer_cache_hits_total"), "{text}");
    assert!(text.contains("cairn_index_documents"), "{text}");
}

#[tokio::test]
async fn openai_compatible_endpoint_json_and_stream() {
    let app = TestApp::new();
    let body = r#"{"model":"cairn","messages":[{"role":"system","content":"be nice"},{"role":"user","content":"How long do refunds take?"}]}"#;
    let (s, j) = status_code(&app, post_json("/v1/chat/completions", body)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["object"], "chat.completion");
    let content = j["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(content.contains("5 business days"), "{content}");
    assert_eq!(
        j["citations"][0]["doc_id"],
        "samples:help-center/refunds.md"
    );

    let addr = app.serve().await;
    let text = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.replace("\"messages\"", "\"stream\":true,\"messages\""))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    let events = support::parse_sse(&text);
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.data).expect("json"))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, content);
    let last = chunks.last().expect("final chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        last["citations"][0]["doc_id"],
        "samples:help-center/refunds.md"
    );
}

#[tokio::test]
async fn unknown_route_is_a_typed_404() {
    let app = TestApp::new();
    let (s, j) = status_code(&app, get("/nope")).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

/// A run in which a document failed is not a plain success: the job ends
/// `succeeded_with_failures` (the CLI exits 1 for the same run), with the failed document in
/// its report; a run without failures still ends `succeeded`.
#[tokio::test]
async fn a_job_whose_run_had_failed_documents_ends_succeeded_with_failures() {
    let (app, reports) = TestApp::with_setup_reports(|dir| {
        std::fs::write(dir.join("crm.csv"), "Id,Name\n1,Eve\n2,Bob,extra,fields\n").expect("csv");
        format!(
            "[[auth.keys]]\nname = \"admin\"\nhash = \"{}\"\nscopes = [\"admin\"]\n[[sources]]\nname = \"crm\"\nkind = \"crm\"\npath = {:?}\nid = \"Id\"\n",
            cairn::http::auth::hash_key(ADMIN),
            dir.join("crm.csv")
        )
    });
    let crm = reports
        .iter()
        .find(|r| r.source == "crm")
        .expect("crm report");
    assert_eq!((crm.counts.indexed, crm.counts.failed), (1, 1), "{crm:?}");

    let job = reindex_and_wait(&app, r#"{"source":"crm","full":true}"#).await;
    assert_eq!(job["state"], "succeeded_with_failures", "{job}");
    assert_eq!(job["counts"]["failed"], 1, "{job}");
    assert_eq!(job["counts"]["indexed"], 1, "{job}");
    let job = reindex_and_wait(&app, r#"{"source":"samples"}"#).await;
    assert_eq!(job["state"], "succeeded", "{job}");
}
