//! `cairn feedback export`: callers' ratings turned into golden questions for the reindex
//! quality gate. Reads the feedback file of the data directory without opening the index.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::observe::feedback::{FeedbackStore, golden};

#[derive(Debug, Subcommand)]
pub enum FeedbackCommand {
    /// Write down-rated answers that name `correct_sources`, and up-rated answers with the
    /// documents they cited, as golden questions (`[quality_gate] file` format).
    #[command(
        after_help = "Needs question text in the traces (`[traces] record_text = true`) when the answers were rated;\nthe feedback file is held by a running `cairn serve`: stop it, or fetch GET /admin/feedback/export.\nExample:\n  cairn feedback export --out golden.jsonl"
    )]
    Export {
        /// The file to write (replaced).
        #[arg(long)]
        out: PathBuf,
    },
}

pub(super) fn run(config: &Config, cmd: &FeedbackCommand) -> anyhow::Result<ExitCode> {
    let FeedbackCommand::Export { out } = cmd;
    let path = FeedbackStore::path_in(&config.data_dir);
    anyhow::ensure!(
        path.exists(),
        "no feedback yet: {} does not exist (answers are rated with POST /feedback)",
        path.display()
    );
    let store = FeedbackStore::open(&path)?;
    let export = golden(&store.all()?);
    std::fs::write(out, export.jsonl()).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{} golden questions written to {}",
        export.lines.len(),
        out.display()
    );
    if export.without_question > 0 {
        eprintln!(
            "{} ratings left out: their answers' traces kept no question text (set [traces] record_text = true)",
            export.without_question
        );
    }
    if export.without_sources > 0 {
        eprintln!(
            "{} ratings left out: down ratings without correct_sources, or up ratings of answers that cited nothing",
            export.without_sources
        );
    }
    if export.lines.is_empty() {
        eprintln!("the file holds no question: the quality gate refuses an empty file");
    }
    Ok(ExitCode::SUCCESS)
}
