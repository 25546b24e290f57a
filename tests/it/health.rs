//! Readiness follows the process's health: a stalled index store fails its reindex job with
//! `store_stalled` and makes `/readyz` answer 503 with the reason until the write ends; a
//! panicking query embedder fails only the searches it held, keeps serving, and `/readyz` says
//! when its model keeps panicking.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;
use tower::ServiceExt;

use crate::support::*;

/// An app whose store gives up on a write after 1 s, with an `ADMIN` key.
fn stall_app() -> TestApp {
    TestApp::with_config(&format!(
        "[index]\nstall_secs = 1\n[[auth.keys]]\nname = \"admin\"\nhash = \"{}\"\nscopes = [\"admin\", \"ask\", \"search\"]\n",
        cairn::http::auth::hash_key(ADMIN)
    ))
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let res = app
        .router()
        .oneshot(get("/readyz"))
        .await
        .expect("response");
    let status = res.status();
    (status, body_json(res).await)
}

/// Checks that `/readyz` answers 503 with the reason `code`, whose message mentions `word`.
async fn assert_unready(app: &TestApp, code: &str, word: &str) {
    let (status, body) = readyz(app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["reason"]["code"], code, "{body}");
    let message = body["reason"]["message"].as_str().unwrap_or("");
    assert!(message.contains(word), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_fails_the_job_with_store_stalled_and_readyz_says_so_until_it_recovers() {
    let app = stall_app();
    assert_eq!(readyz(&app).await.0, StatusCode::OK);
    // The next store write hangs for 6 s; the store gives up on it after 1 s.
    assert!(
        app.engine.inject_store_stall(Duration::from_secs(6)),
        "the embedded index takes an injected stall"
    );
    let job = reindex_and_wait(&app, r#"{"full":true}"#).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error_code"], "store_stalled", "{job}");
    assert!(
        job["error"].as_str().unwrap_or("").contains("no progress"),
        "{job}"
    );

    assert_unready(&app, "store_stalled", "commit").await;

    // Once the stuck write ends, the process is ready again and a reindex succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(&app).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "still unready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = reindex_and_wait(&app, r#"{"full":true}"#).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job.get("error_code").is_none_or(Value::is_null), "{job}");
}

async fn search_status(app: &TestApp) -> StatusCode {
    let res = app
        .router()
        .oneshot(get("/search?q=refund%20window"))
        .await
        .expect("response");
    res.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_query_embedder_fails_one_search_keeps_serving_and_readyz_reflects_it() {
    use cairn::retrieval::query_embed::{FAILING_AFTER, PanicSite};
    let app = TestApp::new();
    assert_eq!(search_status(&app).await, StatusCode::OK);
    let embedder = app.engine.query_embedder();

    // One panic in the model: that search fails with a typed error, the next one is served.
    embedder.inject_panic(PanicSite::Model, 1);
    let res = app
        .router()
        .oneshot(get("/search?q=refund%20window"))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body_json(res).await["error"]["code"], "internal");
    assert_eq!(
        search_status(&app).await,
        StatusCode::OK,
        "served after a panic"
    );
    assert_eq!(readyz(&app).await.0, StatusCode::OK);

    // A panic outside a model call: the coordinator restarts.
    embedder.inject_panic(PanicSite::Coordinator, 1);
    assert_eq!(search_status(&app).await, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        search_status(&app).await,
        StatusCode::OK,
        "served after a restart"
    );

    // A model that keeps panicking: not ready, with the reason, until it works again.
    embedder.inject_panic(PanicSite::Model, 1000);
    for _ in 0..FAILING_AFTER {
        assert_eq!(search_status(&app).await, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_unready(&app, "embedder_failing", "panicked").await;
    embedder.inject_panic(PanicSite::Model, 0);
    assert_eq!(readyz(&app).await.0, StatusCode::OK);
    assert_eq!(search_status(&app).await, StatusCode::OK);
}
