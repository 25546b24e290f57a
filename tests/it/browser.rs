//! Drives the bundled page in a real Chromium: starts cairn on a loopback port and runs the
//! Playwright scenarios in `tests/browser/page.test.mjs` with node's test runner.
//!
//! Needs `/usr/bin/chromium` and `node` (+ npm for the first `npm ci`), so the test is
//! `#[ignore]`d with that reason (a plain `cargo test` lists it as ignored); `--include-ignored`
//! runs it, and it fails when Chromium or Node.js is missing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use futures::StreamExt;

use crate::support::{TestApp, repo};

const CHROMIUM: &str = "/usr/bin/chromium";
const ADMIN_KEY: &str = "page-admin-key-0001";

/// Paces `/ask` event frames like a model producing tokens, so the browser sees the answer grow
/// (the offline extractive provider emits every word at once, and loopback would coalesce them).
async fn pace_answers(req: Request, next: Next) -> Response {
    let is_ask = req.uri().path() == "/ask";
    let resp = next.run(req).await;
    if !is_ask {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let paced = body.into_data_stream().then(|frame| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        frame
    });
    Response::from_parts(parts, Body::from_stream(paced))
}

fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn missing(why: &str) -> ! {
    panic!(
        "the browser test needs Chromium and Node.js, but {why} (scripts/test.sh installs both)"
    );
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's chromium and Node.js (scripts/test.sh installs them)"]
async fn page_works_in_chromium() {
    if !Path::new(CHROMIUM).exists() {
        missing(&format!(
            "{CHROMIUM} is missing (apt-get install -y chromium)"
        ));
    }
    if !node_available() {
        missing("`node` is not on PATH");
    }
    let dir = repo().join("tests/browser");
    if !dir.join("node_modules").exists() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            "npm ci in tests/browser",
        );
    }

    // A webhook receiver that accepts everything, so the admin view has a delivery to show.
    let hooks = crate::support::serve_loopback(axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async { axum::http::StatusCode::OK }),
    ))
    .await;
    let app = TestApp::with_config(&format!(
        "[[auth.keys]]\nname = \"page-admin\"\nhash = \"{}\"\nscopes = [\"admin\", \"ask\", \"search\"]\n\
         [webhooks]\nallow_private_addresses = true\n\
         [[webhooks.endpoints]]\nurl = \"http://{hooks}/hook\"\nevents = [\"job.completed\"]\nsecret = \"env:{}\"\n",
        cairn::http::auth::hash_key(ADMIN_KEY),
        crate::support::TEST_SECRETS[0].0,
    ));
    let addr =
        crate::support::serve_loopback(app.router().layer(middleware::from_fn(pace_answers))).await;

    let artifacts = repo().join("target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let script = dir.join("page.test.mjs");
    let status = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("--test")
            .arg("--test-reporter=spec")
            .arg(&script)
            .env("CAIRN_BASE_URL", format!("http://{addr}"))
            .env("CAIRN_ADMIN_KEY", ADMIN_KEY)
            .env("CAIRN_CHROMIUM", CHROMIUM)
            .env("CAIRN_ARTIFACTS", &artifacts)
            .status()
    })
    .await
    .expect("join")
    .expect("run node --test");
    assert!(status.success(), "browser scenarios failed: {status}");
}
