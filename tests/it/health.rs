//! Readiness follows the process's health: a stalled index store fails its reindex job with
//! `store_stalled` and makes `/readyz` answer 503 with the reason until the write ends.

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

    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["reason"]["code"], "store_stalled", "{body}");
    assert!(
        body["reason"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("commit"),
        "{body}"
    );

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
