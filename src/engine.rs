//! The engine: everything a running cairn holds (config, index, embedder, chunker, providers,
//! prompt) and the operations the CLI and the server share — ingest, search and the
//! source-state files.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::Serialize;

use cairn_index::{EmbedderInfo, Filter, Hit, Index, IndexOptions, SearchMode, SearchRequest};
use cairn_ingest::connectors::crm::CrmConnector;
use cairn_ingest::connectors::files::{FilesConnector, FilesOptions};
use cairn_ingest::connectors::kb_api::KbApiConnector;
use cairn_ingest::embed_cache::EmbeddingCache;
use cairn_ingest::extract::PdfOptions;
use cairn_ingest::pipeline::{self, PipelineOptions, Progress, Report};
use cairn_ingest::{Chunker, Connector, Embedder, HashEmbedder, SyncState};

use crate::cache::AnswerCache;
use crate::config::{Config, RawSource};
use crate::prompt::Prompt;
use crate::providers::Router;
use crate::trace::Traces;

pub struct Engine {
    pub config: Config,
    pub index: Arc<Index>,
    pub embedder: Arc<dyn Embedder>,
    pub chunker: Chunker,
    pub router: Router,
    pub prompt: Prompt,
    pub cache: AnswerCache,
    pub traces: Traces,
    embed_cache: Arc<EmbeddingCache>,
    ingest_lock: Mutex<()>,
}

/// A search hit as the API and CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct HitView {
    pub doc_id: String,
    pub chunk_id: String,
    pub title: String,
    pub url: Option<String>,
    pub source: String,
    pub score: f32,
    pub snippet: String,
    pub page: Option<u32>,
    pub heading_path: Vec<String>,
    pub updated_at: Option<String>,
    pub breakdown: cairn_index::ScoreBreakdown,
}

impl HitView {
    pub fn from_hit(h: &Hit) -> HitView {
        HitView {
            doc_id: h.document.id.clone(),
            chunk_id: h.chunk_id.clone(),
            title: h.document.title.clone(),
            url: h.document.url.clone(),
            source: h.document.source.clone(),
            score: h.score,
            snippet: h.snippet.clone().unwrap_or_default(),
            page: h.chunk.page,
            heading_path: h.chunk.heading_path.clone(),
            updated_at: h.document.updated_at.map(|t| t.to_rfc3339()),
            breakdown: h.breakdown.clone(),
        }
    }
}

/// Index options for `config` and an embedder: the ones the main index uses.
pub fn index_options(config: &Config, embedder: EmbedderInfo) -> IndexOptions {
    let mut options = IndexOptions::new(embedder);
    options.candidates = config.index.candidates;
    options.fusion = config.index.fusion.clone();
    options.vectors = config.index.vectors.clone();
    options
}

impl Engine {
    /// Opens the index and everything around it. Fails with a message naming what to fix.
    pub fn open(config: Config) -> anyhow::Result<Engine> {
        let embedder: Arc<dyn Embedder> = Arc::new(HashEmbedder::new(config.embedder.dimension));
        let options = index_options(&config, embedder.info());
        let index_dir = config.data_dir.join("index");
        let index = Index::open(&index_dir, options)
            .with_context(|| format!("opening the index in {}", index_dir.display()))?;
        let prompt = Prompt::load(&config.answer.prompt).map_err(anyhow::Error::msg)?;
        let router = Router::from_config(&config.providers, &config.routes)
            .map_err(|e| anyhow::anyhow!("config {}: {e}", config.origin))?;
        let chunker = Chunker::new(config.chunking.clone(), embedder.clone());
        let cache = AnswerCache::new(config.cache.clone());
        let traces = Traces::open(&config.data_dir, config.traces.clone())?;
        let embed_cache = Arc::new(
            EmbeddingCache::open(&config.data_dir.join("embed-cache"))
                .context("opening the embedding cache")?,
        );
        Ok(Engine {
            config,
            index: Arc::new(index),
            embedder,
            chunker,
            router,
            prompt,
            cache,
            traces,
            embed_cache,
            ingest_lock: Mutex::new(()),
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.config.data_dir.join("state")
    }

    /// The persisted sync state of a source.
    pub fn source_state(&self, name: &str) -> SyncState {
        let path = self.state_dir().join(format!("{name}.state.json"));
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The last report of a source, if it ever ran.
    pub fn last_report(&self, name: &str) -> Option<Report> {
        let path = self.state_dir().join(format!("{name}.report.json"));
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    fn write_atomic(&self, file: &str, value: &impl Serialize) -> anyhow::Result<()> {
        let dir = self.state_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(".{file}.tmp"));
        let dst = dir.join(file);
        std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &dst).with_context(|| format!("replacing {}", dst.display()))?;
        Ok(())
    }

    fn connector(&self, source: &RawSource) -> anyhow::Result<Box<dyn Connector>> {
        Ok(match source {
            RawSource::Files(f) => Box::new(FilesConnector::new(
                &f.name,
                FilesOptions {
                    root: f.path.clone(),
                    include: f.include.clone(),
                    exclude: f.exclude.clone(),
                    max_file_bytes: f.max_file_bytes,
                    url_base: f.url_base.clone(),
                    access_groups: f.access_groups.clone(),
                    pdf: PdfOptions {
                        timeout: std::time::Duration::from_secs(f.pdf_timeout_secs.max(1)),
                        pdftotext_fallback: f.pdftotext_fallback,
                    },
                },
            )?),
            RawSource::Crm(c) => Box::new(CrmConnector::new(&c.name, c.options.clone())?),
            RawSource::KbApi(k) => Box::new(KbApiConnector::new(&k.name, k.options.clone())?),
        })
    }

    /// Runs the named source (or all) into the index, one at a time, keeping each report.
    pub fn ingest(
        &self,
        only: Option<&str>,
        full: bool,
        progress: &(dyn Fn(&str, &Progress) + Sync),
        cancel: &AtomicBool,
    ) -> anyhow::Result<Vec<Report>> {
        let _guard = self
            .ingest_lock
            .lock()
            .map_err(|_| anyhow::anyhow!("a previous ingest panicked"))?;
        let sources: Vec<&RawSource> = self
            .config
            .sources
            .iter()
            .filter(|s| only.is_none_or(|n| s.name() == n))
            .collect();
        if let Some(n) = only
            && sources.is_empty()
        {
            anyhow::bail!("no source named `{n}` in {}", self.config.origin);
        }
        let mut reports = Vec::new();
        for source in sources {
            let name = source.name().to_string();
            let mut connector = self.connector(source)?;
            let state = self.source_state(&name);
            let options = PipelineOptions {
                full,
                embedding_cache: Some(self.embed_cache.clone()),
                ..PipelineOptions::default()
            };
            let report = pipeline::run(
                connector.as_mut(),
                &self.index,
                &self.chunker,
                &self.embedder,
                &state,
                &options,
                pipeline::Control {
                    progress: &|p| progress(&name, p),
                    cancel,
                },
            )
            .with_context(|| format!("ingesting source `{name}`"))?;
            self.write_atomic(&format!("{name}.state.json"), &report.state)?;
            self.write_atomic(&format!("{name}.report.json"), &report)?;
            reports.push(report);
        }
        Ok(reports)
    }

    /// Hybrid search with snippets (blocking; call from a blocking thread in async code).
    pub fn search(
        &self,
        text: &str,
        k: usize,
        filter: Filter,
        mode: SearchMode,
    ) -> anyhow::Result<Vec<Hit>> {
        let vector = match mode {
            SearchMode::Bm25 => None,
            _ => Some(self.embedder.embed_query(text)?),
        };
        self.search_with_vector(text, vector, k, filter, mode)
    }

    /// As [`Engine::search`] with the query already embedded.
    pub fn search_with_vector(
        &self,
        text: &str,
        vector: Option<Vec<f32>>,
        k: usize,
        filter: Filter,
        mode: SearchMode,
    ) -> anyhow::Result<Vec<Hit>> {
        Ok(self.index.search(&SearchRequest {
            text: text.to_string(),
            vector,
            k,
            mode,
            filter,
            snippets: true,
        })?)
    }
}
