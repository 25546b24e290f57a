//! Added latency of the provider layer: time-to-first-token and total stream time through
//! `Router::stream` (gateway + OpenAI-compatible mapping + SSE parsing) versus a bare `reqwest`
//! read of the same fake upstream, in the same run, at 1, 64 and 512 concurrent streams.
//!
//! Run: `cargo bench --bench gateway`. For each concurrency level it runs rounds of `n`
//! concurrent streams, alternating which path goes first, and prints p50/p99 of TTFT and total
//! time for both paths, the added latency (layer − direct, per percentile) and throughput
//! (streams/s over the rounds' wall time). Criterion then times one batch per path and level
//! (its `thrpt` line is streams/s). The fake upstream runs on its own runtime so the server's
//! work is not scheduled between the clients' polls.
//!
//! Two upstreams are measured, each in the same run for both paths: one that sends every
//! event as fast as it can (so 64 and 512 streams saturate the two cores and the figures are
//! throughput-bound), and one that paces its tokens [`GAP`] apart like a real model, where
//! the added latency is the layer's own per-event delay rather than queueing for the CPU.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn::providers::config::{BudgetConfig, ProviderConfig, ProviderKind};
use cairn::providers::{ChatEvent, ChatRequest, Message, Role, Router};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use support::{Fake, Frame, Reply, Vendor};
use tokio_util::sync::CancellationToken;

/// Text deltas per stream.
const TOKENS: usize = 32;
/// Time between tokens of the paced upstream.
const GAP: Duration = Duration::from_millis(2);
/// The first token's text, which the direct path looks for in the raw body.
const FIRST: &[u8] = b"tok0 ";

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![Message {
            role: Role::User,
            content: "hi".into(),
        }],
        max_tokens: Some(64),
        ..ChatRequest::default()
    }
}

fn router(fake: &Fake) -> Router {
    let mut p = ProviderConfig::new(
        "bench",
        ProviderKind::OpenaiCompatible,
        Some(&format!("{}/v1", fake.base)),
    );
    p.settings.max_concurrency = 4096;
    let providers = BTreeMap::from([("bench".to_string(), p)]);
    let routes = BTreeMap::from([(
        "answer".to_string(),
        vec![("bench".to_string(), "smollm2".to_string())],
    )]);
    Router::from_config_with_budget(&providers, &routes, &BudgetConfig::default()).expect("router")
}

/// (time to first token, total) through the provider layer.
async fn via_layer(r: &Router) -> (Duration, Duration) {
    let t = Instant::now();
    let (mut s, _) = r
        .stream("answer", &request(), CancellationToken::new())
        .await
        .expect("stream");
    let mut first = None;
    let mut tokens = 0;
    while let Some(ev) = s.next().await {
        if let ChatEvent::TextDelta(_) = ev.expect("event") {
            tokens += 1;
            first.get_or_insert_with(|| t.elapsed());
        }
    }
    assert_eq!(tokens, TOKENS, "every token arrives through the layer");
    (first.expect("a first token"), t.elapsed())
}

/// (time until the first token's bytes arrived, total) reading the upstream body directly.
async fn direct(client: &reqwest::Client, url: &str) -> (Duration, Duration) {
    let t = Instant::now();
    let resp = client
        .post(url)
        .json(&serde_json::json!({"model":"smollm2","messages":[{"role":"user","content":"hi"}],"stream":true}))
        .send()
        .await
        .expect("send");
    let mut body = resp.bytes_stream();
    let mut first = None;
    let mut seen = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        if first.is_none() {
            seen.extend_from_slice(&chunk);
            if seen.windows(FIRST.len()).any(|w| w == FIRST) {
                first = Some(t.elapsed());
            }
        }
    }
    (first.expect("a first token"), t.elapsed())
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

/// Per-stream (TTFT, total) samples of one path and the wall time its rounds took.
#[derive(Default)]
struct Samples {
    ttft: Vec<Duration>,
    total: Vec<Duration>,
    wall: Duration,
}

impl Samples {
    fn add(&mut self, batch: Vec<(Duration, Duration)>, wall: Duration) {
        for (a, b) in batch {
            self.ttft.push(a);
            self.total.push(b);
        }
        self.wall += wall;
    }

    fn streams_per_sec(&self) -> f64 {
        self.total.len() as f64 / self.wall.as_secs_f64()
    }
}

fn bench(c: &mut Criterion) {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("server runtime");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let parts: Vec<String> = (0..TOKENS).map(|i| format!("tok{i} ")).collect();
    let parts_ref: Vec<&str> = parts.iter().map(String::as_str).collect();
    let burst = Vendor::Compatible.success(&parts_ref);
    // The same events with a pause before each token.
    let paced: Vec<Frame> = burst
        .iter()
        .flat_map(|f| match f {
            Frame::Bytes(b) if b.contains("tok") => vec![Frame::Delay(GAP), f.clone()],
            _ => vec![f.clone()],
        })
        .collect();
    println!(
        "streams of {TOKENS} tokens; added = layer - direct at the same percentile; times in µs"
    );
    let mut group = c.benchmark_group("gateway");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let paced_note = format!("{} ms between tokens", GAP.as_millis());
    // (name, what it sends, frames, whether criterion also times it)
    for (label, note, frames, timed) in [
        ("burst", "every event at once", burst, true),
        ("paced", paced_note.as_str(), paced, false),
    ] {
        let fake = server_rt.block_on(Fake::start(vec![Reply::sse(frames)]));
        let r = router(&fake);
        let client = reqwest::Client::new();
        let url = format!("{}/v1/chat/completions", fake.base);
        let layer_batch =
            |n: usize| rt.block_on(futures::future::join_all((0..n).map(|_| via_layer(&r))));
        let direct_batch = |n: usize| {
            rt.block_on(futures::future::join_all(
                (0..n).map(|_| direct(&client, &url)),
            ))
        };
        println!("== upstream: {label} ({note})");
        for &(n, rounds) in &[(1usize, 400usize), (64, 40), (512, 6)] {
            // Warm both connection pools to this concurrency before measuring.
            layer_batch(n);
            direct_batch(n);
            let (mut layer, mut raw) = (Samples::default(), Samples::default());
            for round in 0..rounds {
                // Alternate the order so neither path always runs on a warmer machine.
                for layer_turn in [round % 2 == 0, round % 2 == 1] {
                    let t = Instant::now();
                    if layer_turn {
                        let b = layer_batch(n);
                        layer.add(b, t.elapsed());
                    } else {
                        let b = direct_batch(n);
                        raw.add(b, t.elapsed());
                    }
                }
            }
            report(n, &mut layer, &mut raw);
            if timed {
                group.throughput(Throughput::Elements(n as u64));
                group.bench_function(format!("layer_batch_{n}"), |b| b.iter(|| layer_batch(n)));
                group.bench_function(format!("direct_batch_{n}"), |b| b.iter(|| direct_batch(n)));
            }
        }
        drop(fake);
    }
    group.finish();
}

/// Prints one concurrency level's percentiles, differences and throughput.
fn report(n: usize, layer: &mut Samples, raw: &mut Samples) {
    let samples = layer.total.len();
    let (l50, l99) = (pct(&mut layer.ttft, 0.5), pct(&mut layer.ttft, 0.99));
    let (d50, d99) = (pct(&mut raw.ttft, 0.5), pct(&mut raw.ttft, 0.99));
    let (lt50, lt99) = (pct(&mut layer.total, 0.5), pct(&mut layer.total, 0.99));
    let (dt50, dt99) = (pct(&mut raw.total, 0.5), pct(&mut raw.total, 0.99));
    println!(
        "concurrency {n:>3} ({samples} streams per path)\n  TTFT   p50 layer {l50:>8.0} direct {d50:>8.0} added {:>+7.0} | p99 layer {l99:>8.0} direct {d99:>8.0} added {:>+7.0}\n  total  p50 layer {lt50:>8.0} direct {dt50:>8.0} added {:>+7.0} | p99 layer {lt99:>8.0} direct {dt99:>8.0} added {:>+7.0}\n  throughput layer {:.0} streams/s, direct {:.0} streams/s (layer/direct {:.2})",
        l50 - d50,
        l99 - d99,
        lt50 - dt50,
        lt99 - dt99,
        layer.streams_per_sec(),
        raw.streams_per_sec(),
        layer.streams_per_sec() / raw.streams_per_sec(),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
