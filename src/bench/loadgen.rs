//! `cairn bench serve`: a load generator over loopback against cairn's own HTTP server.
//!
//! The server is started in-process on `127.0.0.1:0` with the configured engine (its index must
//! already hold the corpus, or `--dataset` ingests the BEIR corpus into it first), then `GET
//! /search` and streaming `POST /ask` are driven by `c` concurrent clients for each requested
//! `c`, each client taking the next query of `queries.jsonl` until the level's request count is
//! reached. Client-side figures are wall-clock times seen by a `reqwest` client (for /ask, time
//! to the first `token` event and to the end of the stream). Server-side figures come from the
//! server itself: `took_ms` of each /search response, and the request trace of each /ask (found
//! by the trace id of its `done` event): embedding, retrieval (embedding included), rerank and
//! time to first token. Percentiles are nearest-rank over the level's successful requests.
//! With `--duration`, each level runs for that long instead (sustained load), clients taking
//! queries round-robin. [`super::streams`] holds `cairn bench streams` (many long-lived /ask streams).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Serialize;

use crate::engine::Engine;
use crate::http::router;
use crate::http::state::AppState;

/// What one (route, concurrency) level measured. Times in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub route: &'static str,
    pub clients: usize,
    pub requests: usize,
    pub errors: usize,
    pub throughput_rps: f64,
    /// /search: whole response; /ask: time to the first token event.
    pub client_p50_ms: f64,
    pub client_p99_ms: f64,
    /// /ask only: time to the end of the stream.
    pub client_total_p50_ms: Option<f64>,
    /// /search: `took_ms`; /ask: the trace's time to first token.
    pub server_p50_ms: f64,
    pub server_p99_ms: f64,
    /// /ask only: medians of the trace's stages (embed, retrieve incl. embed, rerank).
    pub server_embed_p50_ms: Option<f64>,
    pub server_retrieve_p50_ms: Option<f64>,
    pub server_rerank_p50_ms: Option<f64>,
}

/// Options of `cairn bench serve`.
pub struct LoadOptions {
    pub queries: Vec<String>,
    pub clients: Vec<usize>,
    /// Requests per level: at least this many, and at least 4 per client.
    pub requests: usize,
    /// When set, each level runs this long instead of for `requests` requests.
    pub duration: Option<Duration>,
    /// The routes to drive, of `search` and `ask`, in that order.
    pub routes: Vec<String>,
}

/// When a level stops: after a number of requests, or at a deadline.
#[derive(Debug, Clone, Copy)]
enum Until {
    Requests(usize),
    Deadline(Instant),
}

/// Reads the query texts of a BEIR `queries.jsonl`.
pub fn read_queries(path: &Path) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Q {
        text: String,
    }
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let q: Q = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not a query object", path.display(), i + 1))?;
        out.push(q.text);
    }
    anyhow::ensure!(!out.is_empty(), "{} holds no query", path.display());
    Ok(out)
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(super) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// One request's outcome as the client saw it.
#[derive(Default)]
struct Sample {
    ok: bool,
    first_ms: f64,
    total_ms: f64,
    took_ms: f64,
    trace_id: Option<String>,
}

async fn search_once(client: &reqwest::Client, base: &str, q: &str) -> Sample {
    let Ok(url) =
        reqwest::Url::parse_with_params(&format!("{base}/search"), [("q", q), ("k", "10")])
    else {
        return Sample::default();
    };
    let started = Instant::now();
    let resp = client.get(url).send().await;
    let Ok(resp) = resp else {
        return Sample::default();
    };
    if !resp.status().is_success() {
        return Sample::default();
    }
    let Ok(json) = resp.json::<serde_json::Value>().await else {
        return Sample::default();
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    Sample {
        ok: true,
        first_ms: ms,
        total_ms: ms,
        took_ms: json["took_ms"].as_f64().unwrap_or(f64::NAN),
        trace_id: None,
    }
}

async fn ask_once(client: &reqwest::Client, base: &str, q: &str) -> Sample {
    let started = Instant::now();
    let resp = client
        .post(format!("{base}/ask"))
        .json(&serde_json::json!({"question": q, "stream": true}))
        .send()
        .await;
    let Ok(resp) = resp else {
        return Sample::default();
    };
    if !resp.status().is_success() {
        return Sample::default();
    }
    let mut s = Sample::default();
    let mut events = resp.bytes_stream().eventsource();
    while let Some(ev) = events.next().await {
        let Ok(ev) = ev else { return Sample::default() };
        match ev.event.as_str() {
            "token" if s.first_ms == 0.0 => s.first_ms = started.elapsed().as_secs_f64() * 1000.0,
            "done" => {
                let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
                s.trace_id = v["trace_id"].as_str().map(str::to_string);
                s.ok = s.first_ms > 0.0;
            }
            "error" => return Sample::default(),
            _ => {}
        }
    }
    s.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    s
}

async fn run_level(
    engine: &Engine,
    base: &str,
    route: &'static str,
    clients: usize,
    until: Until,
    queries: &Arc<Vec<String>>,
    offset: usize,
) -> Level {
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("a default reqwest client builds");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (next, client, base, queries) = (
            next.clone(),
            client.clone(),
            base.to_string(),
            queries.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match until {
                    Until::Requests(n) if i >= n => break,
                    Until::Deadline(d) if Instant::now() >= d => break,
                    _ => {}
                }
                let q = &queries[(offset + i) % queries.len()];
                out.push(match route {
                    "search" => search_once(&client, &base, q).await,
                    _ => ask_once(&client, &base, q).await,
                });
            }
            out
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap_or_default());
    }
    let wall = started.elapsed().as_secs_f64();
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
    let first = sorted(ok.iter().map(|s| s.first_ms).collect());
    let mut level = Level {
        route,
        clients,
        requests: samples.len(),
        errors: samples.len() - ok.len(),
        throughput_rps: ok.len() as f64 / wall,
        client_p50_ms: percentile(&first, 0.5),
        client_p99_ms: percentile(&first, 0.99),
        client_total_p50_ms: None,
        server_p50_ms: f64::NAN,
        server_p99_ms: f64::NAN,
        server_embed_p50_ms: None,
        server_retrieve_p50_ms: None,
        server_rerank_p50_ms: None,
    };
    if route == "search" {
        let took = sorted(ok.iter().map(|s| s.took_ms).collect());
        level.server_p50_ms = percentile(&took, 0.5);
        level.server_p99_ms = percentile(&took, 0.99);
    } else {
        let total = sorted(ok.iter().map(|s| s.total_ms).collect());
        level.client_total_p50_ms = Some(percentile(&total, 0.5));
        let traces: HashMap<String, crate::observe::trace::Trace> = engine
            .traces
            .recent(usize::MAX)
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        let mine: Vec<&crate::observe::trace::Trace> = ok
            .iter()
            .filter_map(|s| s.trace_id.as_ref().and_then(|id| traces.get(id)))
            .collect();
        let stage = |f: &dyn Fn(&crate::observe::trace::Trace) -> f64| {
            sorted(mine.iter().map(|t| f(t)).collect())
        };
        let ttft = stage(&|t| t.timings.first_token_ms.unwrap_or(f64::NAN));
        level.server_p50_ms = percentile(&ttft, 0.5);
        level.server_p99_ms = percentile(&ttft, 0.99);
        level.server_embed_p50_ms = Some(percentile(&stage(&|t| t.timings.embed_ms), 0.5));
        level.server_retrieve_p50_ms = Some(percentile(&stage(&|t| t.timings.retrieve_ms), 0.5));
        level.server_rerank_p50_ms = Some(percentile(&stage(&|t| t.timings.rerank_ms), 0.5));
    }
    level
}

/// Serves `app` on `127.0.0.1:0` with `TCP_NODELAY`; returns the address and the server task.
pub(crate) async fn serve_loopback(
    app: axum::Router,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, server))
}

/// Serves `engine` on loopback and measures every (route, concurrency) level.
pub async fn run(engine: Arc<Engine>, options: &LoadOptions) -> anyhow::Result<Vec<Level>> {
    if engine.config.cache.enabled {
        eprintln!(
            "note: the answer cache is on; repeated questions are served from it (set CAIRN__CACHE__ENABLED=false to measure the pipeline)"
        );
    }
    let (addr, server) = serve_loopback(router(AppState::new(engine.clone())?)).await?;
    let base = format!("http://{addr}");
    let queries = Arc::new(options.queries.clone());
    let mut levels = Vec::new();
    let mut offset = 0;
    for route in ["search", "ask"] {
        if !options.routes.iter().any(|r| r == route) {
            continue;
        }
        for &c in &options.clients {
            let requests = options.requests.max(4 * c);
            let until = match options.duration {
                Some(d) => Until::Deadline(Instant::now() + d),
                None => Until::Requests(requests),
            };
            let level = run_level(&engine, &base, route, c, until, &queries, offset).await;
            offset += level.requests;
            levels.push(level);
        }
    }
    server.abort();
    Ok(levels)
}

/// Prints the levels as a table.
pub fn print(levels: &[Level]) {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!(
        "{:<7} {:>7} {:>8} {:>6} {:>8} {:>9} {:>9} {:>10} {:>9} {:>9} {:>8} {:>9} {:>8}",
        "route",
        "clients",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "total p50",
        "srv p50",
        "srv p99",
        "embed",
        "retrieve",
        "rerank"
    );
    for l in levels {
        println!(
            "{:<7} {:>7} {:>8} {:>6} {:>8.1} {:>9.1} {:>9.1} {:>10} {:>9.1} {:>9.1} {:>8} {:>9} {:>8}",
            l.route,
            l.clients,
            l.requests,
            l.errors,
            l.throughput_rps,
            l.client_p50_ms,
            l.client_p99_ms,
            f(l.client_total_p50_ms),
            l.server_p50_ms,
            l.server_p99_ms,
            f(l.server_embed_p50_ms),
            f(l.server_retrieve_p50_ms),
            f(l.server_rerank_p50_ms),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v = sorted(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.99), 5.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
