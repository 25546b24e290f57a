//! Added latency of the provider layer: time-to-first-token and total stream time through
//! `Router::stream` (gateway + OpenAI mapping + SSE parsing) versus a bare `reqwest` read of
//! the same fake upstream, in the same run, at 1, 64 and 512 concurrent streams.
//!
//! Run: `cargo bench --bench gateway`. Besides criterion's timing of one batch per concurrency
//! level, it prints p50/p99 of TTFT and total time for both paths and the difference.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn::providers::config::{BudgetConfig, ProviderConfig, ProviderKind};
use cairn::providers::{ChatEvent, ChatRequest, Message, Role, Router};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use support::{Fake, Reply, Vendor};
use tokio_util::sync::CancellationToken;

const TOKENS: usize = 32;

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
    while let Some(ev) = s.next().await {
        if matches!(ev, Ok(ChatEvent::TextDelta(_))) && first.is_none() {
            first = Some(t.elapsed());
        }
    }
    (first.unwrap_or_default(), t.elapsed())
}

/// (time to first content byte, total) straight from the upstream.
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
        seen.extend_from_slice(&chunk);
        if first.is_none() && seen.windows(10).any(|w| w == b"\"content\":") {
            // Skip the role chunk's empty content: wait for a token's text.
            if seen.windows(5).any(|w| w == b"tok0 ") {
                first = Some(t.elapsed());
            }
        }
    }
    (first.unwrap_or_default(), t.elapsed())
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let parts: Vec<String> = (0..TOKENS).map(|i| format!("tok{i} ")).collect();
    let parts_ref: Vec<&str> = parts.iter().map(String::as_str).collect();
    let fake = rt.block_on(Fake::start(vec![Reply::sse(
        Vendor::Compatible.success(&parts_ref),
    )]));
    let r = router(&fake);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", fake.base);
    let mut group = c.benchmark_group("gateway");
    group.sample_size(10);
    for &n in &[1usize, 64, 512] {
        // Percentiles over several batches, both paths interleaved in the same run.
        let rounds = if n == 1 {
            200
        } else if n == 64 {
            10
        } else {
            3
        };
        let (mut lt, mut ltot, mut dt, mut dtot) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let layer = rt.block_on(futures::future::join_all((0..n).map(|_| via_layer(&r))));
            let raw = rt.block_on(futures::future::join_all(
                (0..n).map(|_| direct(&client, &url)),
            ));
            for (a, b) in layer {
                lt.push(a);
                ltot.push(b);
            }
            for (a, b) in raw {
                dt.push(a);
                dtot.push(b);
            }
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (l50, l99, d50, d99) = (
            pct(&mut lt, 0.5),
            pct(&mut lt, 0.99),
            pct(&mut dt, 0.5),
            pct(&mut dt, 0.99),
        );
        let (lt50, lt99, dt50, dt99) = (
            pct(&mut ltot, 0.5),
            pct(&mut ltot, 0.99),
            pct(&mut dtot, 0.5),
            pct(&mut dtot, 0.99),
        );
        println!(
            "concurrency {n:>3}: TTFT p50 {:.0}µs vs {:.0}µs direct (+{:.0}µs), p99 {:.0}µs vs {:.0}µs (+{:.0}µs); total p50 {:.0}µs vs {:.0}µs (+{:.0}µs), p99 {:.0}µs vs {:.0}µs (+{:.0}µs)",
            us(l50),
            us(d50),
            us(l50) - us(d50),
            us(l99),
            us(d99),
            us(l99) - us(d99),
            us(lt50),
            us(dt50),
            us(lt50) - us(dt50),
            us(lt99),
            us(dt99),
            us(lt99) - us(dt99),
        );
        group.bench_function(format!("layer_batch_{n}"), |b| {
            b.iter(|| rt.block_on(futures::future::join_all((0..n).map(|_| via_layer(&r)))))
        });
        group.bench_function(format!("direct_batch_{n}"), |b| {
            b.iter(|| {
                rt.block_on(futures::future::join_all(
                    (0..n).map(|_| direct(&client, &url)),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
