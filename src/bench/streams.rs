//! `cairn bench streams`: many concurrent streaming `/ask` requests against a slow fake
//! provider, all over loopback in this process, with the process's resources read before,
//! during and after the run.
//!
//! The fake is an OpenAI-compatible chat endpoint started here on `127.0.0.1:0`: each call
//! streams `tokens` text deltas `gap` apart, then finish, usage and `[DONE]`, and answers with
//! `Connection: close` so the provider client keeps no idle connection (what remains open
//! after the run is then cairn's own doing). The answer route is pointed at it, the answer
//! cache is turned off (every stream goes upstream) and the anonymous rate limit is lifted.
//!
//! Figures: how many streams completed (a `done` event after the whole answer), client-side
//! time to the first `token` event (p50/p99), resident memory (`VmRSS` before, the highest
//! value sampled every 20 ms during the run, after; `VmHWM`), open file descriptors
//! (`/proc/self/fd`) and live tokio tasks before and after. The command fails when a stream did
//! not complete or descriptors or tasks stay above their starting count by more than a small
//! tolerance once the clients are gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::Response;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Serialize;

use super::loadgen::{percentile, serve_loopback, sorted};
use crate::config::Config;
use crate::engine::{Engine, OpenOptions};
use crate::http::router;
use crate::http::state::AppState;
use crate::providers::config::{ProviderConfig, ProviderKind};

/// Options of `cairn bench streams`.
#[derive(Debug, Clone)]
pub struct StreamsOptions {
    pub streams: usize,
    pub tokens: usize,
    pub gap: Duration,
    pub question: String,
}

/// Descriptors or tasks above the starting count that still count as "no leak" (connections
/// the kernel is still closing, the sampler task).
const TOLERANCE: usize = 8;

/// What the run measured. Memory in KiB, times in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct StreamsReport {
    pub streams: usize,
    pub tokens_per_stream: usize,
    pub gap_ms: u64,
    pub completed: usize,
    pub failed: usize,
    pub wall_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub total_p50_ms: f64,
    pub total_p99_ms: f64,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_after_kib: u64,
    pub hwm_kib: u64,
    pub fds_before: usize,
    pub fds_peak: usize,
    pub fds_after: usize,
    pub tasks_before: usize,
    pub tasks_after: usize,
    /// Set when the run failed its own checks: incomplete streams or a leak.
    pub problems: Vec<String>,
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name| crate::bench::ingest::status_kib(&status, name).unwrap_or(0);
    (field("VmRSS"), field("VmHWM"))
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The soft limit on open files, from `/proc/self/limits`.
fn fd_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

fn live_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The fake provider's SSE body: role, `tokens` deltas `gap` apart, finish, usage, done.
fn slow_body(tokens: usize, gap: Duration) -> Body {
    let chunk = |delta: &str| {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"slow\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]}}\n\n"
        )
    };
    let head = futures::stream::iter([chunk(r#"{"role":"assistant","content":""}"#)]);
    let words = futures::stream::iter(0..tokens).then(move |i| async move {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        chunk(&format!(r#"{{"content":"word{i} "}}"#))
    });
    let tail = futures::stream::iter([
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"slow\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".to_string(),
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"slow\",\"choices\":[],\"usage\":{{\"prompt_tokens\":100,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
            100 + tokens
        ),
        "data: [DONE]\n\n".to_string(),
    ]);
    Body::from_stream(
        head.chain(words)
            .chain(tail)
            .map(|s| Ok::<_, std::convert::Infallible>(Bytes::from(s))),
    )
}

/// Starts the fake provider; returns its base URL and its task.
async fn start_fake(
    tokens: usize,
    gap: Duration,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().fallback(move || async move {
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("connection", "close")
            .body(slow_body(tokens, gap))
            .unwrap_or_else(|_| Response::new(Body::empty()))
    });
    let (addr, task) = serve_loopback(app).await?;
    Ok((format!("http://{addr}/v1"), task))
}

/// Points the answer route at the fake and lifts what would throttle the run.
fn configure(config: &mut Config, base: &str, streams: usize) {
    let mut p = ProviderConfig::new("slow", ProviderKind::OpenaiCompatible, Some(base));
    p.settings.max_concurrency = streams.max(1);
    p.settings.max_retries = 0;
    p.settings.timeout_first_token_ms = 120_000;
    p.settings.timeout_idle_ms = 60_000;
    config.providers.insert("slow".into(), p);
    config.routes.insert(
        config.answer.route.clone(),
        vec![("slow".into(), "slow".into())],
    );
    config.cache.enabled = false;
    config.server.max_concurrent_requests = config.server.max_concurrent_requests.max(streams + 16);
    config.auth.anonymous_rate_per_minute = u32::MAX / 2;
    if !config
        .auth
        .anonymous_scopes
        .contains(&crate::http::auth::Scope::Ask)
    {
        config
            .auth
            .anonymous_scopes
            .push(crate::http::auth::Scope::Ask);
    }
    config.traces.keep = config.traces.keep.max(streams);
}

/// One stream: time to the first token event and to the end; `None` unless it completed.
async fn one_stream(
    client: &reqwest::Client,
    url: &str,
    question: &str,
    expected: &str,
) -> Option<(f64, f64)> {
    let started = Instant::now();
    let resp = client
        .post(url)
        .json(&serde_json::json!({"question": question, "stream": true}))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut first = None;
    let mut text = String::new();
    let mut events = resp.bytes_stream().eventsource();
    while let Some(ev) = events.next().await {
        let ev = ev.ok()?;
        match ev.event.as_str() {
            "token" => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
                let v: serde_json::Value = serde_json::from_str(&ev.data).ok()?;
                text.push_str(v["text"].as_str()?);
            }
            "done" => {
                let total = started.elapsed().as_secs_f64() * 1000.0;
                return (text.trim() == expected.trim()).then_some((first?, total));
            }
            "error" => return None,
            _ => {}
        }
    }
    None
}

/// Opens the engine with the answer route on a fake slow provider, ingests the configured
/// sources when the index is empty, and runs the streams.
pub fn run(
    mut config: Config,
    open: &OpenOptions,
    o: &StreamsOptions,
) -> anyhow::Result<StreamsReport> {
    anyhow::ensure!(o.streams > 0, "--streams must be at least 1");
    // Each stream holds a client and a server socket here, plus the upstream pair.
    let needed = 4 * o.streams as u64 + 256;
    if let Some(limit) = fd_limit() {
        anyhow::ensure!(
            limit >= needed,
            "{} streams need about {needed} open files but the limit is {limit}; raise it (e.g. `ulimit -n {needed}`) and run again",
            o.streams
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (base, fake) = runtime.block_on(start_fake(o.tokens, o.gap))?;
    configure(&mut config, &base, o.streams);
    let engine = Arc::new(Engine::open_with(config, open)?);
    engine.ingest_if_empty()?;
    let report = runtime.block_on(drive(engine, o));
    fake.abort();
    report
}

/// Serves on loopback, warms up, reads the baseline, runs the streams while sampling the
/// peaks, waits for the server to settle, and reports.
async fn drive(engine: Arc<Engine>, o: &StreamsOptions) -> anyhow::Result<StreamsReport> {
    let (addr, server) = serve_loopback(router(AppState::new(engine)?)).await?;
    let url = format!("http://{addr}/ask");
    let expected: String = (0..o.tokens).map(|i| format!("word{i} ")).collect();
    warm_up(&url, &o.question, &expected).await?;
    let before = Resources::now();
    let peaks = Peaks::sample(&before);
    let (done, wall_s) = run_streams(o, &url, &expected).await?;
    peaks.stop();
    settle(&before).await;
    let after = Resources::now();
    server.abort();
    Ok(report(o, &done, wall_s, &before, &peaks, &after))
}

/// One warm-up stream (connection set-up, lazy statics) before the baseline is read.
async fn warm_up(url: &str, question: &str, expected: &str) -> anyhow::Result<()> {
    let warm = reqwest::Client::new();
    one_stream(&warm, url, question, expected)
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the warm-up stream did not complete: does the index answer {question:?}?"
            )
        })?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// The process's resources at one moment.
struct Resources {
    rss_kib: u64,
    hwm_kib: u64,
    fds: usize,
    tasks: usize,
}

impl Resources {
    fn now() -> Resources {
        let (rss_kib, hwm_kib) = memory_kib();
        Resources {
            rss_kib,
            hwm_kib,
            fds: open_fds(),
            tasks: live_tasks(),
        }
    }
}

/// The highest memory and descriptor counts, sampled every 20 ms while the streams run.
struct Peaks {
    rss_kib: Arc<AtomicU64>,
    fds: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Peaks {
    fn sample(before: &Resources) -> Peaks {
        let rss_kib = Arc::new(AtomicU64::new(before.rss_kib));
        let fds = Arc::new(AtomicU64::new(before.fds as u64));
        let sampler = {
            let (peak_rss, peak_fds) = (rss_kib.clone(), fds.clone());
            tokio::spawn(async move {
                loop {
                    peak_rss.fetch_max(memory_kib().0, Ordering::Relaxed);
                    peak_fds.fetch_max(open_fds() as u64, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Peaks {
            rss_kib,
            fds,
            sampler,
        }
    }

    fn stop(&self) {
        self.sampler.abort();
    }
}

/// Runs every stream at once; each one's (time to first token, total) when it completed, and
/// the wall time of the run.
async fn run_streams(
    o: &StreamsOptions,
    url: &str,
    expected: &str,
) -> anyhow::Result<(Vec<Option<(f64, f64)>>, f64)> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(300))
        .build()?;
    let started = Instant::now();
    let runs: Vec<_> = (0..o.streams)
        .map(|_| {
            let (client, url, q, e) = (
                client.clone(),
                url.to_string(),
                o.question.clone(),
                expected.to_string(),
            );
            tokio::spawn(async move { one_stream(&client, &url, &q, &e).await })
        })
        .collect();
    let mut done = Vec::with_capacity(o.streams);
    for r in futures::future::join_all(runs).await {
        done.push(r.ok().flatten());
    }
    Ok((done, started.elapsed().as_secs_f64()))
}

/// Connections close asynchronously: gives the server up to 10 s to get back to where it
/// started before the figures are read.
async fn settle(before: &Resources) {
    let settle = Instant::now();
    while (open_fds() > before.fds || live_tasks() > before.tasks)
        && settle.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The figures, and the problems that fail the command.
fn report(
    o: &StreamsOptions,
    done: &[Option<(f64, f64)>],
    wall_s: f64,
    before: &Resources,
    peaks: &Peaks,
    after: &Resources,
) -> StreamsReport {
    let ok: Vec<(f64, f64)> = done.iter().flatten().copied().collect();
    let ttft = sorted(ok.iter().map(|x| x.0).collect());
    let total = sorted(ok.iter().map(|x| x.1).collect());
    let mut report = StreamsReport {
        streams: o.streams,
        tokens_per_stream: o.tokens,
        gap_ms: o.gap.as_millis() as u64,
        completed: ok.len(),
        failed: o.streams - ok.len(),
        wall_s,
        ttft_p50_ms: percentile(&ttft, 0.5),
        ttft_p99_ms: percentile(&ttft, 0.99),
        total_p50_ms: percentile(&total, 0.5),
        total_p99_ms: percentile(&total, 0.99),
        rss_before_kib: before.rss_kib,
        rss_peak_kib: peaks.rss_kib.load(Ordering::Relaxed).max(after.rss_kib),
        rss_after_kib: after.rss_kib,
        hwm_kib: after.hwm_kib,
        fds_before: before.fds,
        fds_peak: peaks.fds.load(Ordering::Relaxed) as usize,
        fds_after: after.fds,
        tasks_before: before.tasks,
        tasks_after: after.tasks,
        problems: Vec::new(),
    };
    if report.failed > 0 {
        report.problems.push(format!(
            "{} of {} streams did not complete",
            report.failed, report.streams
        ));
    }
    let (fds_before, fds_after) = (before.fds, after.fds);
    if fds_after > fds_before + TOLERANCE {
        report.problems.push(format!(
            "open file descriptors: {fds_before} before, {fds_after} after the run"
        ));
    }
    let (tasks_before, tasks_after) = (before.tasks, after.tasks);
    if tasks_after > tasks_before + TOLERANCE {
        report.problems.push(format!(
            "live tokio tasks: {tasks_before} before, {tasks_after} after the run"
        ));
    }
    report
}

/// Prints the report as a short table.
pub fn print(r: &StreamsReport) {
    println!(
        "streams {} ({} tokens, {} ms apart): {} completed, {} failed in {:.1} s",
        r.streams, r.tokens_per_stream, r.gap_ms, r.completed, r.failed, r.wall_s
    );
    println!(
        "time to first token  p50 {:.1} ms  p99 {:.1} ms;  whole stream p50 {:.1} ms  p99 {:.1} ms",
        r.ttft_p50_ms, r.ttft_p99_ms, r.total_p50_ms, r.total_p99_ms
    );
    println!(
        "memory (VmRSS)       before {} MiB  peak {} MiB  after {} MiB  (VmHWM {} MiB)",
        r.rss_before_kib / 1024,
        r.rss_peak_kib / 1024,
        r.rss_after_kib / 1024,
        r.hwm_kib / 1024
    );
    println!(
        "file descriptors     before {}  peak {}  after {}",
        r.fds_before, r.fds_peak, r.fds_after
    );
    println!(
        "tokio tasks          before {}  after {}",
        r.tasks_before, r.tasks_after
    );
    for p in &r.problems {
        println!("PROBLEM: {p}");
    }
}
