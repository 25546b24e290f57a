//! Batches shared by replicas through PostgreSQL: a batch submitted through one replica is
//! shown, cancelled and read through another; two replicas running one batch at once answer
//! every request exactly once and announce its end once; a replica that stops mid-batch, or
//! dies holding a claimed request, leaves the rest to the other once the claim's lease ends.
//! Needs `CAIRN_PG_URL`, like `replicas.rs` (whose per-test schema these tests use).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::replicas::{Schema, pg_url};
use crate::support::{self, ADMIN, BOT, TestApp};
use crate::webhooks::Receiver;

/// Config text after the schema's: an `admin` and a `bot` key, `[batches]` with `batches`,
/// and, when given, one webhook endpoint for the batch events.
fn replica_config(schema: &Schema, batches: &str, hook: Option<&str>) -> String {
    let mut extra = format!(
        "[auth]\nanonymous_scopes = []\n[[auth.keys]]\nname = \"admin\"\nhash = \"{}\"\nscopes = [\"admin\", \"ask\"]\nburst = 1000\n[[auth.keys]]\nname = \"bot\"\nhash = \"{}\"\nscopes = [\"ask\"]\nburst = 1000\n[batches]\n{batches}\n",
        cairn::http::auth::hash_key(ADMIN),
        cairn::http::auth::hash_key(BOT),
    );
    if let Some(url) = hook {
        extra.push_str(&format!(
            "[webhooks]\nallow_private_addresses = true\n[[webhooks.endpoints]]\nurl = \"{url}\"\nevents = [\"batch.completed\", \"batch.failed\"]\nsecret = \"env:{}\"\n",
            support::TEST_SECRETS[0].0
        ));
    }
    schema.config(&extra)
}

/// `n` distinct questions over the sample corpus, as requests `q0`, `q1`, ….
fn requests(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"custom_id": format!("q{i}"), "question": format!("How long do refunds take for order {i}?")}))
        .collect()
}

async fn submit(app: &TestApp, n: usize) -> String {
    let body = json!({"requests": requests(n)});
    let (status, v) = support::post_as(app, Some(ADMIN), "/batches", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    v["id"].as_str().expect("id").to_string()
}

async fn status(app: &TestApp, id: &str) -> Value {
    let (code, v) = support::call(app, Some(ADMIN), "GET", &format!("/batches/{id}")).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    v
}

/// Polls batch `id` through `app` until it ended (`limit` at most).
async fn until_ended(app: &TestApp, id: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let b = status(app, id).await;
        if b["state"] != "queued" && b["state"] != "running" {
            return b;
        }
        assert!(
            start.elapsed() < limit,
            "batch did not end in {limit:?}: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The result lines of batch `id` through `app`.
async fn results(app: &TestApp, id: &str) -> Vec<Value> {
    use tower::ServiceExt;
    let req = support::with_key(support::get(&format!("/batches/{id}/results")), ADMIN);
    let resp = app.router().oneshot(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .expect("body");
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON result line"))
        .collect()
}

/// Asserts that `lines` hold one result per request of an `n`-request batch, all answered.
fn assert_each_answered_once(lines: &[Value], n: usize) {
    let ids: BTreeSet<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().expect("custom_id"))
        .collect();
    assert_eq!((lines.len(), ids.len()), (n, n), "{lines:#?}");
    assert!(
        lines.iter().all(|l| l["error"].is_null()),
        "a request failed: {lines:#?}"
    );
}

/// Runs a synchronous PostgreSQL call on a thread of its own (not on a runtime's thread).
fn blocking<T: Send>(call: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(call).join().expect("the call panicked"))
}

/// Submitted through A while A's workers wait (an interactive answer holds them): B shows the
/// batch queued, refuses it to another key, cancels it, and A sees it cancelled; a second
/// batch runs and its results read the same through B as through A.
#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn replicas_show_cancel_and_read_each_others_batches() {
    let schema = Schema::fresh(pg_url(), "batch_share");
    let config = replica_config(&schema, "", None);
    let a = TestApp::with_config(&config);
    let b = TestApp::with_config(&config);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let holding = a.engine.load.enter();
        let id = submit(&a, 3).await;
        let seen = status(&b, &id).await;
        assert_eq!(
            (seen["state"].as_str(), seen["total"].as_u64()),
            (Some("queued"), Some(3)),
            "{seen}"
        );
        let (code, v) = support::call(&b, Some(BOT), "GET", &format!("/batches/{id}")).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
        let (code, v) = support::call(&b, Some(BOT), "DELETE", &format!("/batches/{id}")).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
        let (code, cancelled) =
            support::call(&b, Some(ADMIN), "DELETE", &format!("/batches/{id}")).await;
        assert_eq!(code, StatusCode::OK, "{cancelled}");
        assert_eq!(cancelled["state"], "cancelled");
        drop(holding);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = status(&a, &id).await;
        assert_eq!(
            (after["state"].as_str(), after["done"].as_u64()),
            (Some("cancelled"), Some(0)),
            "{after}"
        );
        assert!(results(&b, &id).await.is_empty());

        let next = submit(&a, 3).await;
        let ended = until_ended(&b, &next, Duration::from_secs(60)).await;
        assert_eq!(
            (ended["state"].as_str(), ended["done"].as_u64()),
            (Some("completed"), Some(3)),
            "{ended}"
        );
        let through_b = results(&b, &next).await;
        assert_each_answered_once(&through_b, 3);
        assert_eq!(through_b, results(&a, &next).await);
    });
}

/// A batch of 20 run by two replicas at once (both held until it is queued, then released
/// together): it completes with every request answered exactly once, both replicas answered
/// some of it (each result's trace is in exactly one replica's traces), and `batch.completed`
/// is delivered once, by one replica.
#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn two_replicas_run_one_batch_answering_each_request_once() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (receiver, addr) = runtime.block_on(Receiver::start(&[]));
    let schema = Schema::fresh(pg_url(), "batch_race");
    let config = replica_config(
        &schema,
        "concurrency = 2",
        Some(&format!("http://{addr}/hook")),
    );
    let a = TestApp::with_config(&config);
    let b = TestApp::with_config(&config);
    runtime.block_on(async {
        // Built outside the runtime, the apps start their delivery tasks here.
        for app in [&a, &b] {
            app.engine.webhooks.start().expect("webhook delivery");
        }
        let (hold_a, hold_b) = (a.engine.load.enter(), b.engine.load.enter());
        let id = submit(&a, 20).await;
        b.state.batches.start();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop((hold_a, hold_b));
        let ended = until_ended(&b, &id, Duration::from_secs(120)).await;
        assert_eq!(
            (
                ended["state"].as_str(),
                ended["done"].as_u64(),
                ended["failed"].as_u64()
            ),
            (Some("completed"), Some(20), Some(0)),
            "{ended}"
        );
        let lines = results(&a, &id).await;
        assert_each_answered_once(&lines, 20);
        let (mut by_a, mut by_b) = (0, 0);
        for line in &lines {
            let trace = line["trace_id"].as_str().expect("trace_id");
            match (a.engine.traces.get(trace), b.engine.traces.get(trace)) {
                (Some(_), None) => by_a += 1,
                (None, Some(_)) => by_b += 1,
                other => panic!("trace {trace} is in {other:?}"),
            }
        }
        assert!(by_a > 0 && by_b > 0, "A answered {by_a}, B {by_b}");

        receiver.wait_for(1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let announced: Vec<Value> = receiver
            .got()
            .iter()
            .map(|r| r.json())
            .filter(|e| e["data"]["id"] == id.as_str())
            .collect();
        assert_eq!(announced.len(), 1, "{announced:#?}");
        assert_eq!(announced[0]["type"], "batch.completed");
        assert_eq!(announced[0]["data"]["done"], 20);
    });
}

/// A replica that dies holding claimed requests (claimed straight in the database, never
/// answered) and a replica stopped mid-batch (its app dropped) leave the rest to the other:
/// the batch completes through B, the dead claims answered once its lease (2 × `[server]
/// request_timeout_secs`) ended, each request once. Recording a result again afterwards (a
/// late replica on an expired lease) changes neither the results nor the counts.
#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn a_replica_stopped_mid_batch_leaves_the_rest_to_the_other() {
    let schema = Schema::fresh(pg_url(), "batch_stop");
    let config = replica_config(&schema, "concurrency = 1", None)
        .replace("[auth]\n", "[server]\nrequest_timeout_secs = 2\n[auth]\n");
    let a = TestApp::with_config(&config);
    let b = TestApp::with_config(&config);
    // Held outside the runtime: the last handle on the pool must not drop on a runtime thread.
    let pg: Arc<cairn_pg::PgIndex> = a.engine.postgres().expect("postgres").clone();
    let pg = &pg;
    let mut a = Some(a);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let replica_a = a.as_ref().expect("A");
        let holding = replica_a.engine.load.enter();
        let id = submit(replica_a, 20).await;
        let lease = Duration::from_secs(4);
        let dead = blocking(|| pg.claim_batch_request(lease))
            .expect("claim")
            .expect("a request to claim");
        assert_eq!((dead.batch_id.as_str(), dead.n), (id.as_str(), 0));
        // Within its lease a claimed request is not handed out again.
        let next = blocking(|| pg.claim_batch_request(lease))
            .expect("claim")
            .expect("a request to claim");
        assert_eq!(next.n, 1, "request 0 was handed out twice within its lease");
        drop(holding);
        let start = Instant::now();
        loop {
            let s = status(replica_a, &id).await;
            if s["done"].as_u64().unwrap_or(0) >= 3 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A stops (its current request, if any, still finishes); B takes over.
        tokio::task::block_in_place(|| drop(a.take()));
        b.state.batches.start();
        let ended = until_ended(&b, &id, Duration::from_secs(120)).await;
        assert_eq!(
            (ended["state"].as_str(), ended["done"].as_u64()),
            (Some("completed"), Some(20)),
            "{ended}"
        );
        let lines = results(&b, &id).await;
        assert_each_answered_once(&lines, 20);
        assert_eq!(
            (
                lines[0]["custom_id"].as_str(),
                lines[1]["custom_id"].as_str()
            ),
            (Some("q0"), Some("q1"))
        );

        let late = json!({"custom_id": "q0", "outcome": "answered", "answer": "late"});
        let (record, counted) =
            blocking(|| pg.record_batch_result((&id, 0), &late, |r| (r, "running".into(), ())))
                .expect("record");
        assert!(counted.is_none(), "a second result was counted");
        assert_eq!(
            (record["state"].as_str(), record["done"].as_u64()),
            (Some("completed"), Some(20))
        );
        assert_eq!(results(&b, &id).await, lines);
    });
}
