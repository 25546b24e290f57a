//! Embedding throughput and latency of all-MiniLM-L6-v2 on the CPU.
//!
//! `cargo bench --bench embed` prints a Markdown table: passages/s for 128- and 256-token
//! passages at batch 1, 8 and 32, query latency p50/p99, model load time and resident memory,
//! and for each row the ratio to a plain loop (one passage at a time, one thread) measured in
//! the same run by a child process started with `RAYON_NUM_THREADS=1`.
//!
//! The model comes from the user model cache (fetched there if missing). Environment: `CAIRN_BENCH_PASSAGES`
//! (passages per row, default 48), `CAIRN_BENCH_QUERIES` (default 200).

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::retrieval::query_embed::QueryEmbedder;

use cairn_ingest::Embedder;
use cairn_ingest::embed::MiniLmEmbedder;
use cairn_ingest::models;

const BASELINE_FLAG: &str = "--cairn-embed-baseline";
const LENGTHS: [usize; 2] = [128, 256];
const BATCHES: [usize; 3] = [1, 8, 32];

const WORDS: &[&str] = &[
    "invoice",
    "customer",
    "shipment",
    "arrived",
    "damaged",
    "refund",
    "requested",
    "within",
    "thirty",
    "days",
    "policy",
    "support",
    "ticket",
    "escalated",
    "warehouse",
    "inventory",
    "quarterly",
    "report",
    "revenue",
    "increased",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "for",
    "was",
    "with",
    "subscription",
    "renewal",
    "cancelled",
    "account",
    "password",
    "reset",
    "configuration",
    "server",
    "latency",
    "database",
    "backup",
    "restored",
    "successfully",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn rss_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `count` passages of exactly `tokens` word-pieces including `[CLS]`/`[SEP]`.
fn passages(e: &MiniLmEmbedder, tokens: usize, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let mut words: Vec<&str> = Vec::new();
            let mut k = i * 7;
            // Grow past the target, then drop words until it fits.
            while e.count_tokens(&words.join(" ")) + 2 < tokens {
                words.push(WORDS[k % WORDS.len()]);
                k = k.wrapping_mul(31).wrapping_add(17);
            }
            while e.count_tokens(&words.join(" ")) + 2 > tokens {
                words.pop();
            }
            words.join(" ")
        })
        .collect()
}

fn queries(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let n = 4 + i % 8;
            (0..n)
                .map(|j| WORDS[(i * 13 + j * 5) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn passages_per_sec(e: &MiniLmEmbedder, texts: &[String], batch: usize) -> f64 {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let start = Instant::now();
    // Batches are handed over as the pipeline would: `batch` passages per call.
    for chunk in refs.chunks(batch) {
        if let Err(err) = e.embed_passages(chunk) {
            eprintln!("embed failed: {err}");
            std::process::exit(1);
        }
    }
    texts.len() as f64 / start.elapsed().as_secs_f64()
}

fn latencies(e: &MiniLmEmbedder, qs: &[String]) -> (Duration, Duration) {
    let mut times: Vec<Duration> = qs
        .iter()
        .map(|q| {
            let start = Instant::now();
            if let Err(err) = e.embed_query(q) {
                eprintln!("embed failed: {err}");
                std::process::exit(1);
            }
            start.elapsed()
        })
        .collect();
    times.sort();
    let at = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    (at(0.50), at(0.99))
}

fn load() -> Result<(MiniLmEmbedder, Duration), String> {
    let cache = models::default_cache_dir();
    let spec = models::minilm_l6_v2();
    // Fetch (if needed) outside the timed region; load time covers verify + read + build.
    models::ensure_model(&spec, &cache, &mut |_| {}).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let files = models::ensure_model(&spec, &cache, &mut |_| {}).map_err(|e| e.to_string())?;
    let e = MiniLmEmbedder::load(&files).map_err(|e| e.to_string())?;
    Ok((e, start.elapsed()))
}

/// Child mode: one thread, one passage per call; prints `key value` lines.
fn baseline(n: usize, nq: usize) -> ExitCode {
    let (e, _) = match load() {
        Ok(v) => v,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let e = e.with_batch_size(1);
    for len in LENGTHS {
        let texts = passages(&e, len, n);
        passages_per_sec(&e, &texts[..2.min(n)], 1);
        println!("pps{len} {}", passages_per_sec(&e, &texts, 1));
    }
    let (p50, p99) = latencies(&e, &queries(nq));
    println!("p50 {}", p50.as_secs_f64());
    println!("p99 {}", p99.as_secs_f64());
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let n = env_usize("CAIRN_BENCH_PASSAGES", 48);
    let nq = env_usize("CAIRN_BENCH_QUERIES", 200);
    if std::env::args().any(|a| a == BASELINE_FLAG) {
        return baseline(n, nq);
    }
    let rss_before = rss_kib("VmRSS:").unwrap_or(0);
    let (e, load_time) = match load() {
        Ok(v) => v,
        Err(err) => {
            eprintln!("embed bench: model unavailable: {err}");
            return ExitCode::FAILURE;
        }
    };
    let rss_loaded = rss_kib("VmRSS:").unwrap_or(0);
    // Calls carry `batch` passages; the embedder never splits a call below 32.
    let e = e.with_batch_size(32);

    // Same-run baseline in a child process (the thread count is read from the environment).
    let child = std::env::current_exe()
        .map_err(|e| e.to_string())
        .and_then(|exe| {
            Command::new(exe)
                .arg(BASELINE_FLAG)
                .env("RAYON_NUM_THREADS", "1")
                .output()
                .map_err(|e| e.to_string())
        });
    let base: Vec<(String, f64)> = match child {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
        Ok(out) => {
            eprintln!("baseline failed: {}", String::from_utf8_lossy(&out.stderr));
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("baseline failed: {err}");
            return ExitCode::FAILURE;
        }
    };
    let base_of = |k: &str| base.iter().find(|(key, _)| key == k).map(|(_, v)| *v);

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("\nall-MiniLM-L6-v2, candle CPU, {threads} hardware threads, {n} passages per row\n");
    println!("| passage tokens | batch | passages/s | × plain loop (1 thread, batch 1) |");
    println!("|---:|---:|---:|---:|");
    for len in LENGTHS {
        let texts = passages(&e, len, n);
        let base_pps = base_of(&format!("pps{len}"));
        for batch in BATCHES {
            passages_per_sec(&e, &texts[..2.min(n)], batch);
            let pps = passages_per_sec(&e, &texts, batch);
            let ratio = base_pps.map_or("n/a".into(), |b| format!("{:.2}", pps / b));
            println!("| {len} | {batch} | {pps:.1} | {ratio} |");
        }
        if let Some(b) = base_pps {
            println!("| {len} | plain loop | {b:.1} | 1.00 |");
        }
    }
    let (p50, p99) = latencies(&e, &queries(nq));
    let ms = |d: f64| d * 1e3;
    println!(
        "\nquery latency ({nq} short queries): p50 {:.1} ms, p99 {:.1} ms (plain loop: p50 {} ms, p99 {} ms)",
        ms(p50.as_secs_f64()),
        ms(p99.as_secs_f64()),
        base_of("p50").map_or("n/a".into(), |v| format!("{:.1}", ms(v))),
        base_of("p99").map_or("n/a".into(), |v| format!("{:.1}", ms(v))),
    );
    println!(
        "model load (verify sha256 + read + build): {:.2} s; RSS {} MiB before, {} MiB after load, peak {} MiB",
        load_time.as_secs_f64(),
        rss_before / 1024,
        rss_loaded / 1024,
        rss_kib("VmHWM:").unwrap_or(0) / 1024
    );
    concurrent_queries(Arc::new(e), &queries(nq));
    ExitCode::SUCCESS
}

/// Clients asking at once.
const CLIENTS: usize = 16;

/// `qs` asked by [`CLIENTS`] threads at once, each embedding through `embed`; returns
/// (queries/s, p50, p99 per question).
fn asked_together(
    qs: &[String],
    embed: &(dyn Fn(&str) -> Vec<f32> + Sync),
) -> (f64, Duration, Duration) {
    let start = Instant::now();
    let mut times: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = qs
            .chunks(qs.len().div_ceil(CLIENTS))
            .map(|mine| {
                s.spawn(move || {
                    mine.iter()
                        .map(|q| {
                            let t = Instant::now();
                            let v = embed(q);
                            assert_eq!(v.len(), 384);
                            t.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    let rate = qs.len() as f64 / start.elapsed().as_secs_f64();
    times.sort();
    let at = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    (rate, at(0.50), at(0.99))
}

/// The server's query path under concurrent questions: one call per question on a two-thread
/// pool (the path before batching) against `QueryEmbedder` (questions waiting together share a
/// call), alternated twice in this run.
fn concurrent_queries(e: Arc<MiniLmEmbedder>, qs: &[String]) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    let per_call = |q: &str| pool.install(|| e.embed_query(q)).expect("embed");
    let batcher = QueryEmbedder::start(e.clone(), 2).expect("query embedder");
    let batched = |q: &str| batcher.embed(q).expect("embed");
    println!(
        "\n{} short queries asked by {CLIENTS} clients at once:\n",
        qs.len()
    );
    println!("| path | round | queries/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    for round in 1..=2 {
        for (name, f) in [
            (
                "one call per question",
                &per_call as &(dyn Fn(&str) -> Vec<f32> + Sync),
            ),
            ("batched (QueryEmbedder)", &batched),
        ] {
            let (rate, p50, p99) = asked_together(qs, f);
            println!(
                "| {name} | {round} | {rate:.1} | {:.1} | {:.1} |",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
    }
}
