//! Terminal progress bars for ingest runs (indicatif): one line of documents, one of chunks.
//!
//! While a source's document count is unknown the documents line is a spinner with a count
//! and a rate; once the pipeline reports a total (the connector counted up front, or the
//! listing finished) it becomes a bar with an ETA. Drawing goes to stderr, and nowhere when
//! quiet. This module only draws: it never decides anything about the run.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use cairn_ingest::pipeline::Progress;

const SPINNER: &str = "{spinner} {prefix}: {pos} documents ({per_sec}, {elapsed})";
const BAR: &str =
    "{spinner} {prefix}: [{bar:30}] {pos}/{len} documents ({per_sec}, {elapsed}, ETA {eta})";
const CHUNKS: &str = "  {pos} chunks ({per_sec})";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ")
}

/// The bars of one `cairn ingest` (or `cairn bench ingest`) run, over any number of sources.
pub struct IngestBars {
    _multi: MultiProgress,
    documents: ProgressBar,
    chunks: ProgressBar,
    /// The source the bars currently show; a new name restarts them.
    current: Mutex<String>,
}

impl IngestBars {
    pub fn new(quiet: bool) -> IngestBars {
        let multi = MultiProgress::new();
        if quiet {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        let documents = multi.add(ProgressBar::no_length().with_style(style(SPINNER)));
        let chunks = multi.add(ProgressBar::no_length().with_style(style(CHUNKS)));
        documents.enable_steady_tick(Duration::from_millis(120));
        IngestBars {
            _multi: multi,
            documents,
            chunks,
            current: Mutex::new(String::new()),
        }
    }

    /// Shows `progress` of source `name`.
    pub fn update(&self, name: &str, progress: &Progress) {
        if let Ok(mut current) = self.current.lock()
            && *current != name
        {
            name.clone_into(&mut current);
            self.documents.reset();
            self.documents.unset_length();
            self.documents.set_style(style(SPINNER));
            self.documents.set_prefix(name.to_string());
            self.chunks.reset();
        }
        if let Some(total) = progress.total
            && self.documents.length() != Some(total as u64)
        {
            self.documents.set_length(total as u64);
            self.documents.set_style(style(BAR));
        }
        self.documents.set_position(progress.processed as u64);
        self.chunks.set_position(progress.chunks as u64);
    }

    /// Removes the bars (the summary table follows).
    pub fn finish(&self) {
        self.documents.finish_and_clear();
        self.chunks.finish_and_clear();
    }
}
