//! The command line: `cairn serve | ingest | search | ask | mcp | eval | models | feedback |
//! hash-key`, with progress bars and tables.

pub mod ask;
pub mod bench;
pub mod eval;
pub mod feedback;
pub mod ingest;
pub mod mcp;
pub mod models;
pub mod progress;
pub mod search;
pub mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::embedder::Feedback;
use crate::engine::{Engine, OpenOptions};

use bench::BenchCommand;
use eval::EvalCommand;
use feedback::FeedbackCommand;
use models::ModelsCommand;

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
        /// Re-chunk and re-embed every document, even unchanged ones. Without --source, also
        /// rebuilds an index written by another embedder or in an old on-disk format (the old
        /// one is moved aside to `index.previous` / `index.old-format`).
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
    /// Callers' ratings of answers (`POST /feedback`).
    #[command(subcommand)]
    Feedback(FeedbackCommand),
    /// Measure throughput on a dataset (nothing is kept).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print the hash to put in `[[auth.keys]] hash` for an API key (the key itself is never stored).
    #[command(
        name = "hash-key",
        after_help = "Example:\n  cairn hash-key \"$(openssl rand -hex 24)\""
    )]
    HashKey { key: String },
    /// Serve the MCP tools (search, ask, get_document, list_sources) over stdin/stdout for a
    /// desktop MCP client.
    #[command(after_help = "Example:\n  cairn mcp --key-name desktop")]
    Mcp {
        /// A configured `[[auth.keys]]` name: its scopes and access groups apply to every call.
        /// Without it, the anonymous scopes (`[auth] anonymous_scopes`) apply.
        #[arg(long)]
        key_name: Option<String>,
    },
    /// Ask a question; the answer streams to the terminal, then its numbered sources.
    #[command(after_help = "Example:\n  cairn ask \"How long do refunds take?\" --json")]
    Ask {
        question: String,
        /// Print the non-streaming /ask JSON instead.
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
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
            // The stable code first (`store_stalled`, `index_old_format`, …), as jobs carry it.
            match crate::ops::jobs::error_code(&e) {
                Some(code) => eprintln!("error [{code}]: {e:#}"),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::from(2)
        }
    }
}

/// Loads the configuration, opens the engine the command needs and runs the command's group.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::HashKey { key } = &cli.command {
        println!("{}", crate::http::auth::hash_key(key));
        return Ok(ExitCode::SUCCESS);
    }
    let config = load_config(&cli)?;
    let feedback = if cli.quiet {
        Feedback::Log
    } else {
        Feedback::Terminal
    };
    if let Command::Models(cmd) = &cli.command {
        return models::run(&config, cmd, feedback);
    }
    if let Command::Feedback(cmd) = &cli.command {
        return feedback::run(&config, cmd);
    }
    if let Command::Bench(cmd @ BenchCommand::Soak { .. }) = &cli.command {
        return bench::soak(&config, cmd);
    }
    // Only a full run of every source may start the index afresh: a rebuild of one source
    // would leave the others missing while their sync state says they are indexed.
    let rebuilds_everything = matches!(
        cli.command,
        Command::Ingest {
            source: None,
            full: true
        }
    );
    let open = OpenOptions {
        feedback,
        replace_index_on_new_embedder: rebuilds_everything,
        replace_old_format: rebuilds_everything,
    };
    if let Command::Bench(cmd @ BenchCommand::Streams { .. }) = &cli.command {
        return bench::streams(config, &open, cmd);
    }
    if let Command::Bench(cmd @ BenchCommand::Batches { .. }) = &cli.command {
        return bench::batches(config, &open, cmd);
    }
    if let Command::Bench(cmd @ BenchCommand::Agent { .. }) = &cli.command {
        return bench::agent(config, &open, cmd);
    }
    if let Command::Eval(EvalCommand::Answers { scripted: true, .. }) = &cli.command {
        let Command::Eval(cmd) = cli.command else {
            return Ok(ExitCode::SUCCESS);
        };
        return eval::scripted(config, &open, cmd);
    }
    let engine = Arc::new(Engine::open_with(config, &open)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve { .. } => serve::run(engine, &runtime, cli.quiet),
        Command::Ingest { source, full } => {
            ingest::run(&engine, source.as_deref(), full, cli.quiet)
        }
        Command::Search { query, k, json } => search::run(&engine, &query, k, json),
        Command::Ask { question, json } => runtime.block_on(ask::run(engine, question, json)),
        Command::Mcp { key_name } => runtime.block_on(mcp::run(engine, key_name.as_deref())),
        Command::Eval(cmd) => eval::run(&engine, &runtime, cmd),
        Command::Bench(cmd) => bench::run(&engine, &runtime, cmd, cli.quiet),
        Command::HashKey { .. } | Command::Models(_) | Command::Feedback(_) => {
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The configuration file (which may be absent only at the default path) with `--data-dir`
/// and `serve --bind` on top.
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let is_default = cli.config.as_os_str() == "config.toml";
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        bind: match &cli.command {
            Command::Serve { bind } => bind.clone(),
            _ => None,
        },
    };
    Ok(Config::load(&cli.config, !is_default, &overrides)?)
}
