//! Feedback on answers (issue #20): only the caller that received an answer rates it (its key,
//! or its thread for anonymous callers), one rating per trace, typed refusals, counts in
//! `/metrics`, the admin view, and the export the quality gate reads.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{self, TestApp, body_json, get, post_json, with_key};

const ADMIN: &str = "fb-admin-key-1";
const BOT: &str = "fb-bot-key-2";
const OTHER: &str = "fb-other-key-3";
const HR: &str = "fb-hr-key-4";
const REFUNDS: &str = "samples:help-center/refunds.md";
const SALARIES: &str = "hr:salaries.md";

/// Keys `admin`, `bot`, `other` (ask) and `hr` (ask, group `hr`), anonymous ask; an `hr`
/// source of group `hr`; traces keep text when `record_text`.
fn app(record_text: bool) -> TestApp {
    TestApp::with_setup(|dir| config(dir, record_text))
}

fn config(dir: &Path, record_text: bool) -> String {
    let hr = support::hr_source(
        dir,
        "# Salary bands\n\nSalary bands are reviewed every March.",
    );
    let key = |name: &str, k: &str, scopes: &str, groups: &str| {
        format!(
            "[[auth.keys]]\nname = \"{name}\"\nhash = \"{}\"\nscopes = {scopes}\naccess_groups = {groups}\nburst = 100\n",
            cairn::http::auth::hash_key(k)
        )
    };
    format!(
        "[traces]\nrecord_text = {record_text}\n[auth]\nanonymous_scopes = [\"ask\", \"search\", \"metrics\"]\n{}{}{}{}{hr}",
        key("admin", ADMIN, r#"["admin", "ask", "search"]"#, "[]"),
        key("bot", BOT, r#"["ask", "search"]"#, "[]"),
        key("other", OTHER, r#"["ask", "search"]"#, "[]"),
        key("hr", HR, r#"["ask", "search"]"#, r#"["hr"]"#),
    )
}

/// `method uri` with `body`, as `key` when given: the status and the JSON body (or text).
async fn call(
    app: &TestApp,
    key: Option<&str>,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = match body {
        Some(b) => post_json(uri, &b.to_string()),
        None => get(uri),
    };
    let req = match key {
        Some(k) => with_key(req, k),
        None => req,
    };
    let resp = app.router().oneshot(req).await.expect("response");
    (resp.status(), body_json(resp).await)
}

/// Asks `question` (non-streaming) as `key`, in `thread` when given; the JSON answer.
async fn ask(app: &TestApp, key: Option<&str>, question: &str, thread: Option<&str>) -> Value {
    let mut body = json!({"question": question, "stream": false});
    if let Some(t) = thread {
        body["thread_id"] = json!(t);
    }
    let (status, answer) = call(app, key, "/ask", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["trace_id"].is_string(), "{answer}");
    answer
}

async fn rate(app: &TestApp, key: Option<&str>, body: Value) -> (StatusCode, Value) {
    call(app, key, "/feedback", Some(body)).await
}

fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn only_the_key_that_received_an_answer_rates_it_and_a_second_rating_replaces_the_first() {
    let app = app(true);
    let answer = ask(&app, Some(BOT), "How long do refunds take?", None).await;
    let trace = answer["trace_id"].as_str().expect("trace");

    // Another key, an anonymous caller and an unknown id all get the same 404.
    let up = json!({"trace_id": trace, "rating": "up"});
    for key in [Some(OTHER), Some(ADMIN), None] {
        assert_error(
            &rate(&app, key, up.clone()).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    let unknown = json!({"trace_id": "no-such-trace", "rating": "up"});
    assert_error(
        &rate(&app, Some(BOT), unknown).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let (status, first) = rate(&app, Some(BOT), up).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["rating"], "up");
    assert_eq!(first["replaced"], false);
    assert_eq!(first["question"], "How long do refunds take?");
    assert_eq!(first["answer"], answer["answer"]);
    let cited: Vec<&str> = answer["citations"]
        .as_array()
        .expect("citations")
        .iter()
        .filter_map(|c| c["doc_id"].as_str())
        .collect();
    assert!(!cited.is_empty(), "{answer}");
    assert_eq!(first["cited"][0], cited[0]);

    let down = json!({"trace_id": trace, "rating": "down", "comment": "too vague", "correct_sources": [REFUNDS]});
    let (status, second) = rate(&app, Some(BOT), down).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["replaced"], true);

    // One rating per trace, kept across a restart (the trace store reloads its file too).
    let app = app.reopen();
    let (status, view) = call(&app, Some(ADMIN), "/admin/feedback", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["totals"], json!({"up": 0, "down": 1}));
    let listed = &view["recent_down"][0];
    assert_eq!(listed["trace_id"], trace);
    assert_eq!(listed["comment"], "too vague");
    assert_eq!(listed["correct_sources"], json!([REFUNDS]));
    assert_eq!(listed["question"], "How long do refunds take?");
    assert!(listed["answer"].as_str().is_some_and(|a| !a.is_empty()));
    let buckets = view["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 30);
    assert_eq!(
        buckets.last().map(|b| (&b["up"], &b["down"])),
        Some((&json!(0), &json!(1)))
    );

    // The admin view is for admin keys only.
    let (status, _) = call(&app, Some(BOT), "/admin/feedback", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn anonymous_callers_rate_through_the_thread_that_holds_the_answer() {
    let app = app(true);
    let mine = ask(&app, None, "How long do refunds take?", None).await;
    let theirs = ask(&app, None, "How do I reset my password?", None).await;
    let trace = mine["trace_id"].as_str().expect("trace");
    let my_thread = mine["thread_id"].as_str().expect("thread");
    let their_thread = theirs["thread_id"].as_str().expect("thread");

    // Every anonymous caller has the same name: without the thread, nobody may rate.
    let bare = json!({"trace_id": trace, "rating": "down"});
    assert_error(
        &rate(&app, None, bare).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Another thread, even one the caller holds, does not hold this answer.
    for thread in [their_thread, "no-such-thread"] {
        let body = json!({"trace_id": trace, "rating": "down", "thread_id": thread});
        assert_error(
            &rate(&app, None, body).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    let body = json!({"trace_id": trace, "rating": "down", "thread_id": my_thread});
    let (status, stored) = rate(&app, None, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    assert_eq!(stored["thread_id"], my_thread);
    // A key holds no anonymous thread.
    assert_error(
        &rate(&app, Some(BOT), body).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn bad_ratings_are_refused_with_typed_errors() {
    let app = app(true);
    let answer = ask(&app, Some(BOT), "How long do refunds take?", None).await;
    let trace = answer["trace_id"].as_str().expect("trace");
    let cases = [
        (
            json!({"trace_id": trace, "rating": "sideways"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"trace_id": trace}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"trace_id": trace, "rating": "up", "stars": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"trace_id": " ", "rating": "up"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"trace_id": trace, "rating": "up", "comment": "x".repeat(2001)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "comment_too_long",
        ),
        (
            json!({"trace_id": trace, "rating": "down", "correct_sources": ["samples:nope.md"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_document",
        ),
        (
            json!({"trace_id": trace, "rating": "down", "correct_sources": vec![REFUNDS; 21]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let got = rate(&app, Some(BOT), body.clone()).await;
        assert_error(&got, status, code);
    }
    // A document the key may not read is refused exactly like one that does not exist.
    let hidden = rate(
        &app,
        Some(BOT),
        json!({"trace_id": trace, "rating": "down", "correct_sources": [SALARIES]}),
    )
    .await;
    let missing = rate(
        &app,
        Some(BOT),
        json!({"trace_id": trace, "rating": "down", "correct_sources": ["hr:missing.md"]}),
    )
    .await;
    assert_error(
        &hidden,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_document",
    );
    let shape = |v: &Value, id: &str| {
        v["error"]["message"]
            .as_str()
            .expect("message")
            .replace(id, "ID")
    };
    assert_eq!(
        shape(&hidden.1, SALARIES),
        shape(&missing.1, "hr:missing.md")
    );
    // Nothing was stored by the refusals; the comment limit itself is accepted.
    let ok = json!({"trace_id": trace, "rating": "up", "comment": "y".repeat(2000)});
    let (status, stored) = rate(&app, Some(BOT), ok).await;
    assert_eq!(
        (status, &stored["replaced"]),
        (StatusCode::CREATED, &json!(false)),
        "{stored}"
    );
    // A key of the group names its documents.
    let hr = ask(&app, Some(HR), "When are salary bands reviewed?", None).await;
    let body = json!({"trace_id": hr["trace_id"], "rating": "down", "correct_sources": [SALARIES]});
    assert_eq!(rate(&app, Some(HR), body).await.0, StatusCode::CREATED);
}

/// The value of the series `name{labels}` in Prometheus text (0 when absent).
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn ratings_are_counted_in_metrics() {
    let app = app(false);
    let before = support::metrics_text(&app).await;
    let answer = ask(&app, Some(BOT), "How long do refunds take?", None).await;
    let trace = &answer["trace_id"];
    for rating in ["down", "up", "up"] {
        let (status, _) = rate(
            &app,
            Some(BOT),
            json!({"trace_id": trace, "rating": rating}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let after = support::metrics_text(&app).await;
    let delta = |s: &str| series(&after, s) - series(&before, s);
    // Other tests of this binary may rate at the same time: at least ours are counted.
    assert!(
        delta(r#"cairn_feedback_total{rating="up"}"#) >= 2.0,
        "{after}"
    );
    assert!(
        delta(r#"cairn_feedback_total{rating="down"}"#) >= 1.0,
        "{after}"
    );
}

#[tokio::test]
async fn without_trace_text_ratings_keep_no_question_and_a_deleted_thread_erases_theirs() {
    let app = app(false);
    let answer = ask(&app, Some(BOT), "How long do refunds take?", None).await;
    let body = json!({"trace_id": answer["trace_id"], "rating": "down", "comment": "wrong"});
    let (status, stored) = rate(&app, Some(BOT), body).await;
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    assert_eq!(
        (&stored["question"], &stored["answer"]),
        (&Value::Null, &Value::Null)
    );
    let (_, view) = call(&app, Some(ADMIN), "/admin/feedback", None).await;
    assert_eq!(view["record_text"], false);
    assert_eq!(view["recent_down"][0]["question"], Value::Null);

    let app = self::app(true);
    let answer = ask(&app, Some(BOT), "How long do refunds take?", None).await;
    let thread = answer["thread_id"].as_str().expect("thread");
    let body =
        json!({"trace_id": answer["trace_id"], "rating": "down", "comment": "my order 1234"});
    assert_eq!(rate(&app, Some(BOT), body).await.0, StatusCode::CREATED);
    let req = with_key(
        axum::http::Request::delete(format!("/threads/{thread}"))
            .body(axum::body::Body::empty())
            .expect("request"),
        BOT,
    );
    let resp = app.router().oneshot(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (_, view) = call(&app, Some(ADMIN), "/admin/feedback", None).await;
    let listed = &view["recent_down"][0];
    assert_eq!(listed["trace_id"], answer["trace_id"]);
    for field in ["question", "answer", "comment"] {
        assert_eq!(listed[field], Value::Null, "{field}: {listed}");
    }
}

#[tokio::test]
async fn exported_feedback_becomes_the_golden_set_the_quality_gate_scores() {
    let app = app(true);
    // A correction, a helpful answer (its cited documents) and a bare down rating.
    let wrong = ask(&app, Some(BOT), "Can I get my money back?", None).await;
    let body =
        json!({"trace_id": wrong["trace_id"], "rating": "down", "correct_sources": [REFUNDS]});
    assert_eq!(rate(&app, Some(BOT), body).await.0, StatusCode::CREATED);
    let good = ask(&app, Some(BOT), "How do I reset my password?", None).await;
    let body = json!({"trace_id": good["trace_id"], "rating": "up"});
    assert_eq!(rate(&app, Some(BOT), body).await.0, StatusCode::CREATED);
    let bare = ask(&app, Some(BOT), "How long does shipping take?", None).await;
    let body = json!({"trace_id": bare["trace_id"], "rating": "down"});
    assert_eq!(rate(&app, Some(BOT), body).await.0, StatusCode::CREATED);
    let good_cited = good["citations"][0]["doc_id"].clone();
    assert!(good_cited.is_string(), "{good}");

    let resp = app
        .router()
        .oneshot(with_key(get("/admin/feedback/export"), ADMIN))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cairn-skipped-without-sources"], "1");
    let served = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");

    // The CLI reads the store once the server has let go of it.
    let TestApp { dir, engine, state } = app;
    drop(state);
    drop(engine);
    let out = dir.path().join("golden.jsonl");
    let run = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .args(["-q", "feedback", "export", "--out"])
        .arg(&out)
        .output()
        .expect("run cairn");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("exported file");
    assert_eq!(
        text.as_bytes(),
        &served[..],
        "the CLI and the route export the same lines"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let mut got: Vec<(&str, &Value)> = lines
        .iter()
        .map(|l| (l["question"].as_str().expect("question"), &l["sources"]))
        .collect();
    got.sort_by_key(|(q, _)| *q);
    assert_eq!(
        got,
        [
            ("Can I get my money back?", &json!([REFUNDS])),
            ("How do I reset my password?", &json!([good_cited])),
        ]
    );

    // A deployment gated on the exported file loads it and scores a reindex with it.
    let gated = TestApp::with_setup(|d| {
        std::fs::copy(&out, d.join("golden.jsonl")).expect("copy");
        std::fs::create_dir_all(d.join("kb")).expect("mkdir");
        format!(
            "[quality_gate]\nfile = {:?}\n[[sources]]\nname = \"kb\"\nkind = \"files\"\npath = {:?}\n",
            d.join("golden.jsonl"),
            d.join("kb")
        )
    });
    assert_eq!(gated.engine.golden.as_ref().map(|g| g.len()), Some(2));
    std::fs::write(
        gated.dir.path().join("kb/otters.md"),
        "# Otters\n\nOtters hold hands.",
    )
    .expect("write");
    let report = gated
        .engine
        .ingest(Some("kb"), false, &|_, _| {}, &AtomicBool::new(false))
        .expect("ingest")
        .pop()
        .expect("report");
    let gate = report.gate.expect("the gate judged the run");
    assert_eq!(gate.questions, 2);
    assert!(gate.passed, "{}", gate.reason);
    assert!(gate.scores["recall@10"].serving > 0.0, "{:?}", gate.scores);
}
