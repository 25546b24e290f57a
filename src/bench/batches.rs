//! `cairn bench batches`: what a running batch costs interactive answers. One process serves
//! on loopback; an open-loop client sends non-streaming `/ask` requests at a fixed rate for a
//! fixed time, first with no batch, then while a batch (submitted through `POST /batches`)
//! runs in the same process; the answer cache is off and anonymous callers get `ask` without
//! a rate limit. Figures per phase: client-side p50/p99 of the whole answer, errors, and the
//! batch requests finished meanwhile; and the ratios with / without.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::loadgen::{percentile, serve_loopback, sorted};
use crate::config::Config;
use crate::engine::{Engine, OpenOptions};
use crate::http::router;
use crate::http::state::AppState;

/// Options of `cairn bench batches`.
#[derive(Debug, Clone)]
pub struct BatchBenchOptions {
    /// Interactive requests per second (open loop: sent on time whatever the answers do).
    pub rate: f64,
    /// Length of each phase.
    pub seconds: u64,
    /// Requests in the batch (enough to outlast the second phase).
    pub batch: usize,
    pub questions: Vec<String>,
}

/// One phase's interactive figures (milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub requests: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Batch requests finished during the phase.
    pub batch_done: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchBenchReport {
    pub rate: f64,
    pub seconds: u64,
    pub concurrency: usize,
    pub max_interactive: usize,
    pub without_batch: Phase,
    pub with_batch: Phase,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    /// Whether the batch was still running at the end of the second phase (otherwise part
    /// of that phase ran without it).
    pub batch_outlasted_phase: bool,
}

/// The `question` of every line of a JSON-lines file (`samples/qa.jsonl`'s shape).
pub fn read_questions(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let questions: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["question"].as_str().map(str::to_string))
        .collect();
    anyhow::ensure!(
        !questions.is_empty(),
        "{} holds no line with a \"question\"",
        path.display()
    );
    Ok(questions)
}

/// Opens its own engine (cache off, anonymous `ask` without a rate limit) and runs both phases.
pub fn run(
    mut config: Config,
    open: &OpenOptions,
    o: &BatchBenchOptions,
) -> anyhow::Result<BatchBenchReport> {
    anyhow::ensure!(
        o.rate > 0.0 && o.seconds > 0,
        "--rate and --seconds must be above 0"
    );
    super::open_to_anonymous_load(&mut config);
    config.batches.max_requests = config.batches.max_requests.max(o.batch);
    config.batches.max_bytes = config.batches.max_bytes.max(o.batch * 1024);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let engine = super::open_ingested(config, open)?;
    runtime.block_on(drive(engine, o))
}

async fn drive(engine: Arc<Engine>, o: &BatchBenchOptions) -> anyhow::Result<BatchBenchReport> {
    let settings = engine.config.batches.clone();
    let (addr, server) = serve_loopback(router(AppState::new(engine)?)).await?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    for q in o.questions.iter().take(3) {
        anyhow::ensure!(
            ask_once(&client, &base, q).await.is_some(),
            "the warm-up question {q:?} was not answered"
        );
    }
    let without_batch = phase(&client, &base, o, None).await;
    let id = submit(&client, &base, o).await?;
    let with_batch = phase(&client, &base, o, Some(&id)).await;
    let state = batch_status(&client, &base, &id).await;
    let _ = client.delete(format!("{base}/batches/{id}")).send().await;
    server.abort();
    Ok(BatchBenchReport {
        rate: o.rate,
        seconds: o.seconds,
        concurrency: settings.concurrency,
        max_interactive: settings.max_interactive,
        p50_ratio: with_batch.p50_ms / without_batch.p50_ms,
        p99_ratio: with_batch.p99_ms / without_batch.p99_ms,
        without_batch,
        with_batch,
        batch_outlasted_phase: state["state"] == "running" || state["state"] == "queued",
    })
}

/// Submits the batch: the questions cycled, each made distinct by a number.
async fn submit(
    client: &reqwest::Client,
    base: &str,
    o: &BatchBenchOptions,
) -> anyhow::Result<String> {
    let requests: Vec<Value> = (0..o.batch)
        .map(|i| {
            let q = &o.questions[i % o.questions.len()];
            json!({"custom_id": format!("b{i}"), "question": format!("{q} (batch {i})")})
        })
        .collect();
    let resp = client
        .post(format!("{base}/batches"))
        .json(&json!({"requests": requests}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    anyhow::ensure!(status.as_u16() == 202, "POST /batches: {status} {body}");
    body["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("POST /batches gave no id: {body}"))
}

async fn batch_status(client: &reqwest::Client, base: &str, id: &str) -> Value {
    let resp = client.get(format!("{base}/batches/{id}")).send().await;
    match resp {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    }
}

/// Sends `rate × seconds` requests on a fixed schedule and waits for all of them.
async fn phase(
    client: &reqwest::Client,
    base: &str,
    o: &BatchBenchOptions,
    batch: Option<&str>,
) -> Phase {
    let done_at = |v: &Value| v["done"].as_u64().unwrap_or(0);
    let before = match batch {
        Some(id) => done_at(&batch_status(client, base, id).await),
        None => 0,
    };
    let n = (o.rate * o.seconds as f64).round().max(1.0) as usize;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        ticks.tick().await;
        let q = format!("{} (request {i})", o.questions[i % o.questions.len()]);
        let (client, base) = (client.clone(), base.to_string());
        tasks.push(tokio::spawn(
            async move { ask_once(&client, &base, &q).await },
        ));
    }
    let mut took = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(ms)) = t.await {
            took.push(ms);
        }
    }
    let batch_done = match batch {
        Some(id) => done_at(&batch_status(client, base, id).await).saturating_sub(before),
        None => 0,
    };
    let took = sorted(took);
    Phase {
        requests: n,
        errors: n - took.len(),
        p50_ms: percentile(&took, 0.5),
        p99_ms: percentile(&took, 0.99),
        max_ms: took.last().copied().unwrap_or(f64::NAN),
        batch_done,
    }
}

/// One non-streaming `/ask`: its whole time in milliseconds, or `None` when it failed.
async fn ask_once(client: &reqwest::Client, base: &str, question: &str) -> Option<f64> {
    let started = Instant::now();
    let resp = client
        .post(format!("{base}/ask"))
        .json(&json!({"question": question, "stream": false}))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.bytes().await.ok()?;
    Some(started.elapsed().as_secs_f64() * 1000.0)
}

pub fn print(r: &BatchBenchReport) {
    println!(
        "interactive /ask at {} req/s for {} s per phase; batch concurrency {}, max_interactive {}",
        r.rate, r.seconds, r.concurrency, r.max_interactive
    );
    println!(
        "{:<14} {:>8} {:>6} {:>9} {:>9} {:>9} {:>11}",
        "phase", "requests", "errors", "p50 ms", "p99 ms", "max ms", "batch done"
    );
    for (name, p) in [
        ("without batch", &r.without_batch),
        ("with batch", &r.with_batch),
    ] {
        println!(
            "{:<14} {:>8} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>11}",
            name, p.requests, p.errors, p.p50_ms, p.p99_ms, p.max_ms, p.batch_done
        );
    }
    println!(
        "ratio with/without: p50 {:.2}, p99 {:.2}{}",
        r.p50_ratio,
        r.p99_ratio,
        if r.batch_outlasted_phase {
            ""
        } else {
            " (the batch ended before the phase did)"
        }
    );
}
