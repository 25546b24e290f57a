//! `cairn bench ingest | serve | streams | batches | soak | agent`: throughput and load figures (nothing is
//! kept, except a soak's index in `--dir`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use crate::config::Config;
use crate::engine::{Engine, OpenOptions};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Ingest a BEIR corpus twice into a temporary index: documents/s, chunks/s, peak RSS,
    /// stage shares, and the unchanged second run's time.
    #[command(after_help = "Example:\n  cairn bench ingest --dataset ../data/scifact --json")]
    Ingest {
        /// Folder with corpus.jsonl.
        #[arg(long)]
        dataset: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Serve on loopback and drive /search and streaming /ask with 1, 16 and 128 concurrent
    /// clients: client-side p50/p99 (time to first token for /ask) and the server-side share.
    #[command(
        after_help = "The index must hold the corpus already, or --dataset ingests its corpus.jsonl first.\nSet CAIRN__CACHE__ENABLED=false to measure the answer pipeline rather than the cache.\nExample:\n  cairn --data-dir /var/tmp/scifact bench serve --dataset ../data/scifact --json"
    )]
    Serve {
        /// A BEIR folder: its queries.jsonl is the workload; its corpus.jsonl is ingested when
        /// the index is empty.
        #[arg(long)]
        dataset: PathBuf,
        /// Concurrent clients per level (repeatable).
        #[arg(long, default_values_t = [1, 16, 128])]
        clients: Vec<usize>,
        /// Requests per level (at least 4 per client).
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Run each level for this many seconds (clients loop over the queries) instead of a
        /// request count.
        #[arg(long)]
        duration: Option<u64>,
        /// Routes to drive (repeatable): `search`, `ask`.
        #[arg(long = "route", value_parser = ["search", "ask"], default_values_t = ["search".to_string(), "ask".to_string()])]
        routes: Vec<String>,
        /// One JSON object per level, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Hold many streaming /ask requests open at once against a slow fake provider: completion,
    /// time to first token, memory, open file descriptors and tokio tasks before and after.
    #[command(
        after_help = "Uses the configured index (an empty one ingests the configured sources first); the answer route is pointed at a fake OpenAI-compatible provider started in-process.\nExits with status 1 when a stream did not complete or descriptors or tasks leaked.\nExample:\n  cairn --data-dir /var/tmp/streams bench streams --streams 1000 --tokens 20 --gap-ms 50"
    )]
    Streams {
        /// Concurrent streams.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Text deltas the fake provider sends per answer.
        #[arg(long, default_value_t = 20)]
        tokens: usize,
        /// Milliseconds between two deltas.
        #[arg(long, default_value_t = 50)]
        gap_ms: u64,
        /// The question every stream asks (the index must hold something relevant to it).
        #[arg(long, default_value = "How long do refunds take?")]
        question: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Interactive /ask latency under a fixed load, without and then with a batch running in
    /// the same process: p50/p99 of each phase and their ratio.
    #[command(
        after_help = "Uses the configured index and answer route (an empty index ingests the configured sources first); the answer cache is turned off and anonymous callers get `ask` without a rate limit for the run.\nExample:\n  cairn --data-dir /var/tmp/batchbench bench batches --rate 4 --seconds 30"
    )]
    Batches {
        /// Interactive requests per second (sent on schedule, whatever the answers do).
        #[arg(long, default_value_t = 4.0)]
        rate: f64,
        /// Seconds per phase.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Requests in the batch (it should outlast the second phase).
        #[arg(long, default_value_t = 2000)]
        batch: usize,
        /// JSON lines with a "question" each (the workload of both the client and the batch).
        #[arg(long, default_value = "samples/qa.jsonl")]
        questions: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Commit ingest-sized batches to a fresh embedded index while two threads search, for a
    /// set time: commits/s, chunks/s, p99 commit and search latency, peak RSS, bytes on disk
    /// and stalls (synthetic vectors: the store and index are measured, not a model).
    #[command(
        after_help = "Exits with status 1 when a write stalled (past [index] stall_secs) or a commit or search failed.\nExample:\n  cairn bench soak --minutes 10 --json"
    )]
    Soak {
        /// Run at least this long (fractions allowed: 0.2 is 12 s).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// ...and until at least this many chunks were committed (at most 6 × --minutes).
        #[arg(long, default_value_t = 100_000)]
        min_chunks: u64,
        /// Keep the index in this (empty or new) directory; a temporary one otherwise.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The time an agent step adds beyond the model's own: plain answers and agent answers of
    /// 1, 2 and 4 searches against an instant scripted model on loopback, medians per variant.
    #[command(
        after_help = "Uses the configured index (an empty one ingests the configured sources first); the answer and agent routes are pointed at the built-in scripted planner, the answer cache is off.\nExample:\n  cairn --data-dir /var/tmp/agentbench bench agent --runs 50 --json"
    )]
    Agent {
        /// Measured iterations (each asks every variant once).
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Unmeasured iterations first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Searches per agent variant (repeatable).
        #[arg(long, default_values_t = [1, 2, 4])]
        steps: Vec<usize>,
        /// The question of the plain baseline.
        #[arg(long, default_value = "How long do refunds take?")]
        question: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `cairn bench agent`: opens its own engine with the routes on the scripted planner.
pub(super) fn agent(
    config: Config,
    open: &OpenOptions,
    cmd: &BenchCommand,
) -> anyhow::Result<ExitCode> {
    let BenchCommand::Agent {
        runs,
        warmup,
        steps,
        question,
        json,
    } = cmd
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let options = crate::bench::agent::AgentBenchOptions {
        runs: *runs,
        warmup: *warmup,
        steps: steps.clone(),
        question: question.clone(),
    };
    let report = crate::bench::agent::run(config, open, &options)?;
    if *json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        crate::bench::agent::print(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn bench soak`: needs no engine (no model), only `[index] stall_secs`.
pub(super) fn soak(config: &Config, cmd: &BenchCommand) -> anyhow::Result<ExitCode> {
    let BenchCommand::Soak {
        minutes,
        min_chunks,
        dir,
        json,
    } = cmd
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let report = crate::bench::soak::run(&crate::bench::soak::SoakRequest {
        minutes: *minutes,
        min_chunks: *min_chunks,
        dir: dir.as_deref(),
        stall: config.index.stall(),
    })?;
    if *json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        crate::bench::soak::print(&report);
    }
    Ok(if report.stalls == 0 && report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs `cairn bench ingest` or `cairn bench serve` (streams opens its own engine: see
/// [`streams`]).
pub(super) fn run(
    engine: &Arc<Engine>,
    runtime: &tokio::runtime::Runtime,
    cmd: BenchCommand,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Ingest { dataset, json } => ingest(engine, &dataset, quiet, json),
        BenchCommand::Serve {
            dataset,
            clients,
            requests,
            duration,
            routes,
            json,
        } => {
            anyhow::ensure!(
                !clients.is_empty() && clients.iter().all(|c| *c > 0),
                "--clients must be at least 1"
            );
            ingest_if_empty(engine, &dataset)?;
            let options = crate::bench::loadgen::LoadOptions {
                queries: crate::bench::loadgen::read_queries(&dataset.join("queries.jsonl"))?,
                clients,
                requests,
                duration: duration.map(Duration::from_secs),
                routes,
            };
            serve(engine, runtime, &options, json)
        }
        BenchCommand::Streams { .. }
        | BenchCommand::Soak { .. }
        | BenchCommand::Batches { .. }
        | BenchCommand::Agent { .. } => Ok(ExitCode::SUCCESS),
    }
}

fn ingest(engine: &Engine, dataset: &Path, quiet: bool, json: bool) -> anyhow::Result<ExitCode> {
    let figures = crate::bench::ingest::ingest(engine, dataset, quiet || json)?;
    if json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        crate::bench::ingest::print(&figures);
    }
    Ok(ExitCode::SUCCESS)
}

/// Ingests the dataset's corpus when the index is empty (`bench serve` needs something to
/// find).
fn ingest_if_empty(engine: &Engine, dataset: &Path) -> anyhow::Result<()> {
    if engine.index.stats()?.documents == 0 {
        eprintln!(
            "the index is empty: ingesting {}",
            dataset.join("corpus.jsonl").display()
        );
        // With the data directory's embedding cache, like `eval retrieval`, so a
        // corpus embedded once is not embedded again.
        let options = cairn_ingest::pipeline::PipelineOptions {
            embedding_cache: Some(engine.embedding_cache()),
            ..Default::default()
        };
        crate::eval::ingest_corpus(
            engine,
            &dataset.join("corpus.jsonl"),
            engine.index.as_ref(),
            &options,
            &|_| {},
        )?;
    }
    Ok(())
}

/// Drives the loopback server level by level; exits 1 when a request failed.
fn serve(
    engine: &Arc<Engine>,
    runtime: &tokio::runtime::Runtime,
    options: &crate::bench::loadgen::LoadOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let levels = runtime.block_on(crate::bench::loadgen::run(engine.clone(), options))?;
    engine.traces.flush_export();
    if json {
        for l in &levels {
            println!("{}", serde_json::to_string(l)?);
        }
    } else {
        crate::bench::loadgen::print(&levels);
    }
    let errors: usize = levels.iter().map(|l| l.errors).sum();
    if errors > 0 {
        eprintln!("error: {errors} requests failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn bench streams`: starts its own engine with the answer route pointed at a fake.
pub(super) fn streams(
    config: Config,
    open: &OpenOptions,
    cmd: &BenchCommand,
) -> anyhow::Result<ExitCode> {
    let BenchCommand::Streams {
        streams,
        tokens,
        gap_ms,
        question,
        json,
    } = cmd
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let options = crate::bench::streams::StreamsOptions {
        streams: *streams,
        tokens: *tokens,
        gap: Duration::from_millis(*gap_ms),
        question: question.clone(),
    };
    let report = crate::bench::streams::run(config, open, &options)?;
    if *json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        crate::bench::streams::print(&report);
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `cairn bench batches`: starts its own engine (cache off, anonymous `ask` unlimited).
pub(super) fn batches(
    config: Config,
    open: &OpenOptions,
    cmd: &BenchCommand,
) -> anyhow::Result<ExitCode> {
    let BenchCommand::Batches {
        rate,
        seconds,
        batch,
        questions,
        json,
    } = cmd
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let options = crate::bench::batches::BatchBenchOptions {
        rate: *rate,
        seconds: *seconds,
        batch: *batch,
        questions: crate::bench::batches::read_questions(questions)?,
    };
    let report = crate::bench::batches::run(config, open, &options)?;
    if *json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        crate::bench::batches::print(&report);
    }
    let errors = report.without_batch.errors + report.with_batch.errors;
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: {errors} interactive requests failed");
        ExitCode::from(1)
    })
}
