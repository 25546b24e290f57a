//! The engine: everything a running cairn holds (config, index, embedder, chunker, providers,
//! prompt) and the operations the CLI and the server share — ingest, search and each source's
//! sync state (files in the data directory, or rows in PostgreSQL shared by every replica, with
//! a per-source claim so two replicas never ingest one source at once).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::Serialize;

use cairn_index::{
    ChunkRecord, EmbedderInfo, Filter, Hit, Index, IndexBackend, IndexError, IndexOptions,
    SearchMode, SearchRequest,
};
use cairn_ingest::connectors::crm::CrmConnector;
use cairn_ingest::connectors::files::{FilesConnector, FilesOptions};
use cairn_ingest::connectors::kb_api::KbApiConnector;
use cairn_ingest::embed_cache::EmbeddingCache;
use cairn_ingest::extract::PdfOptions;
use cairn_ingest::pipeline::{self, Gate, PipelineOptions, Progress, Report};
use cairn_ingest::rerank::Reranker;
use cairn_ingest::{Chunker, Connector, Embedder, SyncState};

use crate::agent::external::ExternalTools;
use crate::answer::cache::AnswerCache;
use crate::answer::load::AnswerLoad;
use crate::answer::prompt::Prompt;
use crate::answer::threads::{Thread, ThreadFile, ThreadStore, Threads};
use crate::config::Config;
use crate::config::ingest::RawSource;
use crate::embedder::Feedback;
use crate::observe::audit::AuditLog;
use crate::observe::feedback::FeedbackStore;
use crate::observe::traces::Traces;
use crate::ops::gate::{GoldenSet, QualityGate};
use crate::ops::webhooks::Webhooks;
use crate::providers::Router;
use crate::providers::cost::{SHARED_SPEND_REFRESH, SpendStore};
use crate::providers::gateway::TimeBudget;
use crate::retrieval::Retriever;
use crate::retrieval::condense::Condense;
use crate::retrieval::condense_model::CondensePrompt;
use crate::retrieval::query_embed::QueryEmbedder;

/// One source as a caller may see it ([`Engine::readable_sources`]).
#[derive(Debug, Clone, Serialize)]
pub struct SourceSummary {
    pub name: String,
    pub kind: String,
    pub documents: usize,
    /// When its last sync finished (RFC 3339), if this process saw one.
    pub last_sync: Option<String>,
}

/// A document's text from its chunks in order; overlapping chunks are joined at the end of
/// the text already taken (chunk offsets are in characters of the extracted text).
pub fn document_text(chunks: &[ChunkRecord]) -> String {
    let mut sorted: Vec<&ChunkRecord> = chunks.iter().collect();
    sorted.sort_by_key(|c| c.ordinal);
    let mut text = String::new();
    let mut end = 0usize;
    for c in sorted {
        let skip = end.saturating_sub(c.char_start);
        if !text.is_empty() && skip == 0 {
            text.push_str("\n\n");
        }
        text.extend(c.text.chars().skip(skip));
        end = end.max(c.char_end);
    }
    text
}

pub struct Engine {
    pub config: Config,
    /// The configured index backend (`[index] backend`): embedded or PostgreSQL.
    pub index: Arc<dyn IndexBackend>,
    /// The PostgreSQL backend when configured: it also holds the source state and claims that
    /// replicas share (otherwise those are files in the data directory).
    pg: Option<Arc<cairn_pg::PgIndex>>,
    /// The embedded index when configured (the same object as `index`), for test hooks.
    embedded: Option<Arc<Index>>,
    pub embedder: Arc<dyn Embedder>,
    pub chunker: Chunker,
    pub router: Router,
    pub reranker: Arc<dyn Reranker>,
    pub prompt: Prompt,
    /// The condense prompt, loaded when `[retrieval] condense = "model"`.
    pub condense_prompt: Option<CondensePrompt>,
    pub cache: AnswerCache,
    pub traces: Traces,
    /// `[audit]`: admin actions and what was sent to which provider.
    pub audit: AuditLog,
    /// `[[agent.tools]]`: the external MCP tool servers and their cached tool lists.
    pub external: ExternalTools,
    embed_cache: Arc<EmbeddingCache>,
    /// Query embeddings run here (own threads, concurrent questions batched), not on the
    /// global pool that ingest embedding saturates.
    queries: QueryEmbedder,
    ingest_lock: Mutex<()>,
    /// The reindex quality gate's golden questions (`[quality_gate] file`), when configured.
    pub golden: Option<GoldenSet>,
    /// `[webhooks]`: events delivered to the configured endpoints (`emit` is a no-op without
    /// any); the server starts their delivery task.
    pub webhooks: Arc<Webhooks>,
    /// Conversation threads (`state/threads.redb`, or PostgreSQL's `threads` table), opened on
    /// first use.
    threads: Mutex<Option<Arc<Threads>>>,
    /// Ratings of answers (`state/feedback.redb`), opened on first use.
    feedback: Mutex<Option<Arc<FeedbackStore>>>,
    /// Interactive answers in flight: background work (batches) gives way to them.
    pub load: Arc<AnswerLoad>,
}

/// Start-up choices for [`Engine::open_with`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// How model downloads are reported.
    pub feedback: Feedback,
    /// When the index was built with another embedder, move it to `index.previous` and start
    /// an empty one (a full reindex follows) instead of refusing to open.
    pub replace_index_on_new_embedder: bool,
    /// When the embedded index is in an old on-disk format, move it to `index.old-format` and
    /// start an empty one (a full reindex of every source follows) instead of refusing to open.
    pub replace_old_format: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            feedback: Feedback::Log,
            replace_index_on_new_embedder: false,
            replace_old_format: false,
        }
    }
}

/// Index options for `config` and an embedder: the ones the main index uses.
pub fn index_options(config: &Config, embedder: EmbedderInfo) -> IndexOptions {
    let mut options = IndexOptions::new(embedder);
    options.candidates = config.index.candidates;
    options.fusion = config.index.fusion.clone();
    options.vectors = config.index.vectors.clone();
    options.stall = config.index.stall();
    options
}

/// Opens the embedded index in the data directory; see [`OpenOptions`] for a changed embedder.
/// The index `config` names: PostgreSQL (returned twice: as the backend and as itself, for
/// what replicas share) or the embedded one (likewise).
type OpenedIndex = (
    Arc<dyn IndexBackend>,
    Option<Arc<cairn_pg::PgIndex>>,
    Option<Arc<Index>>,
);

fn open_index(
    config: &Config,
    options: IndexOptions,
    open: &OpenOptions,
) -> anyhow::Result<OpenedIndex> {
    match &config.postgres {
        Some(pg) => {
            let opened = Arc::new(cairn_pg::PgIndex::open(pg, &options).with_context(|| {
                format!(
                    "opening the PostgreSQL index (schema `{}` at {})",
                    pg.schema,
                    cairn_pg::redact_url(&pg.url)
                )
            })?);
            Ok((opened.clone(), Some(opened), None))
        }
        None => {
            let opened = Arc::new(open_embedded(config, options, open)?);
            Ok((opened.clone(), None, Some(opened)))
        }
    }
}

/// The provider gateway of `config` with its time budget, its spend kept in PostgreSQL when
/// `pg` is given (shared by replicas) or in `state/budget.redb`; warns about unpriced models.
fn build_router(config: &Config, pg: Option<&Arc<cairn_pg::PgIndex>>) -> anyhow::Result<Router> {
    let router = Router::from_config_with_budget(&config.providers, &config.routes, &config.budget)
        .map_err(|e| anyhow::anyhow!("config {}: {e}", config.origin))?
        .with_time(TimeBudget {
            request: std::time::Duration::from_secs(config.server.request_timeout_secs.max(1)),
            fallback_share: config.gateway.fallback_share,
        });
    match pg {
        Some(pg) => router.budget.persist(Box::new(PgSpend(pg.clone()))),
        None => router
            .budget
            .persist_to(&config.data_dir.join("state").join("budget.redb")),
    }
    .map_err(|e| anyhow::anyhow!("[budget]: {e}"))?;
    for (provider, model) in router.unpriced() {
        tracing::warn!(%provider, %model, "routed model has no price: its calls count as $0 in costs and [budget]; add a price table for it");
    }
    Ok(router)
}

fn open_embedded(
    config: &Config,
    mut options: IndexOptions,
    open: &OpenOptions,
) -> anyhow::Result<Index> {
    options.replace_old_format = open.replace_old_format;
    let index_dir = config.data_dir.join("index");
    match Index::open(&index_dir, options.clone()) {
        Err(IndexError::EmbedderMismatch { found, .. }) if open.replace_index_on_new_embedder => {
            // Kept until the next replacement, so a mistaken switch can be undone by hand.
            let aside = config.data_dir.join("index.previous");
            if aside.exists() {
                std::fs::remove_dir_all(&aside)
                    .with_context(|| format!("removing {}", aside.display()))?;
            }
            std::fs::rename(&index_dir, &aside).with_context(|| {
                format!(
                    "moving {} aside to {}",
                    index_dir.display(),
                    aside.display()
                )
            })?;
            tracing::warn!(
                old = %found,
                new = %options.embedder,
                kept = %aside.display(),
                "the embedder changed: rebuilding the index from the sources"
            );
            Index::open(&index_dir, options)
        }
        other => other,
    }
    .with_context(|| format!("opening the index in {}", index_dir.display()))
}

/// Spend kept in the PostgreSQL schema the replicas share (`[budget]`'s store when that backend
/// is on): every replica adds its charges and re-reads the day's sums every
/// [`SHARED_SPEND_REFRESH`].
struct PgSpend(Arc<cairn_pg::PgIndex>);

/// Runs a PostgreSQL call through [`cairn_pg::off_runtime`]: the budget, threads and batches
/// are called from async tasks (the call blocks for its round trip, as the spend file's writes
/// do); errors as text.
pub(crate) fn off_runtime<T: Send>(
    call: impl FnOnce() -> Result<T, IndexError> + Send,
) -> Result<T, String> {
    match cairn_pg::off_runtime(call) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("the PostgreSQL call panicked".to_string()),
    }
}

impl std::fmt::Debug for PgSpend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SpendStore for PgSpend {
    fn load(&self, day: u64) -> Result<Vec<(String, f64)>, String> {
        let day = i64::try_from(day).map_err(|e| e.to_string())?;
        off_runtime(|| self.0.spend_of_day(day))
    }

    fn add(&self, day: u64, charges: &[(&str, f64)]) -> Result<(), String> {
        let day = i64::try_from(day).map_err(|e| e.to_string())?;
        off_runtime(|| self.0.add_spend(day, charges))
    }

    fn refresh_every(&self) -> Option<std::time::Duration> {
        Some(SHARED_SPEND_REFRESH)
    }

    fn describe(&self) -> String {
        format!(
            "the PostgreSQL `spend` table (schema `{}`)",
            self.0.schema()
        )
    }
}

/// Threads kept in the PostgreSQL schema the replicas share, so any replica continues any
/// thread.
struct PgThreads(Arc<cairn_pg::PgIndex>);

impl ThreadStore for PgThreads {
    fn get(&self, id: &str) -> Result<Option<Thread>, String> {
        match off_runtime(|| self.0.thread(id))? {
            Some(record) => serde_json::from_value(record)
                .map(Some)
                .map_err(|e| format!("thread `{id}` is unreadable: {e}")),
            None => Ok(None),
        }
    }

    fn put(&self, id: &str, thread: &Thread) -> Result<(), String> {
        let record = serde_json::to_value(thread).map_err(|e| e.to_string())?;
        let active = thread.active_at();
        off_runtime(|| self.0.put_thread(id, &thread.owner, active, &record))
    }

    fn remove(&self, id: &str) -> Result<bool, String> {
        off_runtime(|| self.0.remove_thread(id))
    }

    fn purge_idle(&self, before: chrono::DateTime<chrono::Utc>) -> Result<usize, String> {
        off_runtime(|| self.0.purge_threads(before)).map(|n| n as usize)
    }
}

impl Engine {
    /// The threads, opened on first use (a process that never serves threads never locks
    /// the file): PostgreSQL's `threads` table with that backend, else `state/threads.redb`.
    pub fn threads(&self) -> anyhow::Result<Arc<Threads>> {
        let mut slot = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let store: Box<dyn ThreadStore> = match &self.pg {
            Some(pg) => Box::new(PgThreads(pg.clone())),
            None => {
                let path = self.config.data_dir.join("state").join("threads.redb");
                Box::new(ThreadFile::open(&path).map_err(anyhow::Error::msg)?)
            }
        };
        let opened = Arc::new(Threads::new(store, self.config.threads));
        *slot = Some(opened.clone());
        Ok(opened)
    }

    /// The feedback store, opened on first use (so `cairn feedback export` can read it while
    /// a server that was never rated runs).
    pub fn feedback(&self) -> anyhow::Result<Arc<FeedbackStore>> {
        let mut slot = self.feedback.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let opened = Arc::new(FeedbackStore::open(&FeedbackStore::path_in(
            &self.config.data_dir,
        ))?);
        *slot = Some(opened.clone());
        Ok(opened)
    }

    /// Opens the index and everything around it. Fails with a message naming what to fix.
    pub fn open(config: Config) -> anyhow::Result<Engine> {
        Engine::open_with(config, &OpenOptions::default())
    }

    /// [`Engine::open`] with start-up choices (see [`OpenOptions`]).
    pub fn open_with(config: Config, open: &OpenOptions) -> anyhow::Result<Engine> {
        let embedder = crate::embedder::build(&config.embedder, open.feedback)?;
        let options = index_options(&config, embedder.info());
        let (index, pg, embedded) = open_index(&config, options, open)?;
        let prompt = Prompt::load(config.answer.prompt.as_deref()).map_err(anyhow::Error::msg)?;
        let condense_prompt = match config.retrieval.condense {
            Condense::Model => Some(
                CondensePrompt::load(config.retrieval.condense_prompt.as_deref())
                    .map_err(anyhow::Error::msg)?,
            ),
            Condense::Heuristic | Condense::Off => None,
        };
        let router = build_router(&config, pg.as_ref())?;
        let reranker = crate::retrieval::rerank::build(&config.rerank, &router, &config.privacy)
            .with_context(|| format!("config {}: [rerank]", config.origin))?;
        let chunker = Chunker::new(config.chunking.clone(), embedder.clone());
        let cache = AnswerCache::new(config.cache.clone());
        let traces = Traces::open(&config.data_dir, config.traces.clone(), &config.providers)?;
        let audit = AuditLog::open(&config.audit, &config.data_dir)
            .with_context(|| format!("config {}: [audit]", config.origin))?;
        let embed_cache = Arc::new(
            EmbeddingCache::open(&config.data_dir.join("embed-cache"))
                .context("opening the embedding cache")?,
        );
        let queries = QueryEmbedder::start(embedder.clone(), 2)
            .context("starting the query-embedding threads")?;
        let golden = match &config.quality_gate.file {
            Some(file) => Some(
                GoldenSet::load(file, config.quality_gate.max_drop)
                    .with_context(|| format!("config {}: [quality_gate] file", config.origin))?,
            ),
            None => None,
        };
        let webhooks = Webhooks::open(config.webhooks.clone(), &config.data_dir)
            .with_context(|| format!("config {}: [webhooks]", config.origin))?;
        let external = ExternalTools::new(&config.agent.tools);
        Ok(Engine {
            webhooks,
            config,
            index,
            pg,
            embedded,
            embedder,
            chunker,
            router,
            reranker,
            prompt,
            condense_prompt,
            cache,
            traces,
            threads: Mutex::new(None),
            feedback: Mutex::new(None),
            load: Arc::default(),
            audit,
            external,
            embed_cache,
            queries,
            ingest_lock: Mutex::new(()),
            golden,
        })
    }

    /// The PostgreSQL backend when configured: replicas share jobs and source state through it.
    pub fn postgres(&self) -> Option<&Arc<cairn_pg::PgIndex>> {
        self.pg.as_ref()
    }

    /// `None` while question embedding works; the reason while its model keeps panicking.
    pub fn query_embedder_health(&self) -> Option<String> {
        self.queries.health()
    }

    /// The question embedder, for its test hook ([`QueryEmbedder::inject_panic`]).
    #[doc(hidden)]
    pub fn query_embedder(&self) -> &QueryEmbedder {
        &self.queries
    }

    /// Test hook (no config key or route reaches it): the embedded store's next write sleeps
    /// `d` before it commits, so tests can watch a stall through the server. False with the
    /// PostgreSQL backend, which has no such store.
    #[doc(hidden)]
    pub fn inject_store_stall(&self, d: std::time::Duration) -> bool {
        match &self.embedded {
            Some(index) => {
                index.inject_write_stall(d);
                true
            }
            None => false,
        }
    }

    /// Chunk vectors by content hash, shared by every ingest of this data directory.
    pub fn embedding_cache(&self) -> Arc<EmbeddingCache> {
        self.embed_cache.clone()
    }

    fn state_dir(&self) -> PathBuf {
        self.config.data_dir.join("state")
    }

    /// The persisted sync state of a source (shared through PostgreSQL with that backend).
    pub fn source_state(&self, name: &str) -> SyncState {
        if let Some(pg) = &self.pg {
            return match pg.source_state(name) {
                Ok(Some((state, _))) => serde_json::from_value(state).unwrap_or_default(),
                Ok(None) => SyncState::default(),
                Err(e) => {
                    tracing::warn!(source = name, error = %e, "source state unavailable; running from the start");
                    SyncState::default()
                }
            };
        }
        let path = self.state_dir().join(format!("{name}.state.json"));
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The last report of a source, if it ever ran.
    pub fn last_report(&self, name: &str) -> Option<Report> {
        if let Some(pg) = &self.pg {
            let (_, report) = pg.source_state(name).ok().flatten()?;
            return serde_json::from_value(report?).ok();
        }
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

    /// Ingests every configured source when the index holds no document (the benchmarks and
    /// evaluations that open their own engine), saying so on stderr.
    pub fn ingest_if_empty(&self) -> anyhow::Result<()> {
        if self.index.stats()?.documents == 0 {
            eprintln!("the index is empty: ingesting the configured sources");
            self.ingest(
                None,
                false,
                &|_, _| {},
                &std::sync::atomic::AtomicBool::new(false),
            )?;
        }
        Ok(())
    }

    /// Runs the named source (or all) into the index, one at a time, keeping each report.
    pub fn ingest(
        &self,
        only: Option<&str>,
        full: bool,
        progress: &(dyn Fn(&str, &Progress) + Sync),
        cancel: &AtomicBool,
    ) -> anyhow::Result<Vec<Report>> {
        // The lock only serialises runs and guards no data, so a run that panicked (and
        // poisoned it) must not stop every later one.
        let _guard = self
            .ingest_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        let gate = self.golden.as_ref().map(|golden| QualityGate {
            index: self.index.as_ref(),
            embedder: self.embedder.as_ref(),
            golden,
        });
        let mut reports = Vec::new();
        for source in sources {
            let name = source.name().to_string();
            // With PostgreSQL, one replica at a time runs a source; the claim dies with it.
            let _claim = match &self.pg {
                Some(pg) => match pg.claim_source(&name)? {
                    Some(claim) => Some(claim),
                    None if only.is_some() => anyhow::bail!(
                        "source `{name}` is being ingested by another cairn process; \
                         try again when that run has finished"
                    ),
                    None => {
                        tracing::warn!(
                            source = %name,
                            "another cairn process is ingesting this source; skipped"
                        );
                        continue;
                    }
                },
                None => None,
            };
            let mut connector = self.connector(source)?;
            let state = self.source_state(&name);
            let options = PipelineOptions {
                full,
                embedding_cache: Some(self.embed_cache.clone()),
                ..PipelineOptions::default()
            };
            let report = pipeline::run(
                connector.as_mut(),
                self.index.as_ref(),
                &self.chunker,
                &self.embedder,
                &state,
                &options,
                pipeline::Control {
                    progress: &|p| progress(&name, p),
                    cancel,
                    gate: gate.as_ref().map(|g| g as &dyn Gate),
                },
            )
            .with_context(|| format!("ingesting source `{name}`"))?;
            match &self.pg {
                Some(pg) => pg.put_source_state(
                    &name,
                    &serde_json::to_value(&report.state)?,
                    &serde_json::to_value(&report)?,
                )?,
                None => {
                    self.write_atomic(&format!("{name}.state.json"), &report.state)?;
                    self.write_atomic(&format!("{name}.report.json"), &report)?;
                }
            }
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
            _ => Some(self.embed_query(text)?),
        };
        self.search_with_vector(text, vector, k, filter, mode)
    }

    /// Embeds a question on the query threads, so searches stay fast while a reindex keeps
    /// the global pool busy; questions waiting together share one batch. Blocking.
    pub fn embed_query(&self, text: &str) -> anyhow::Result<Vec<f32>> {
        Ok(self.queries.embed(text)?)
    }

    /// A document's chunks in order, for completing a passage — empty when the document is gone
    /// or has changed since it was retrieved (its content hash differs). Blocking.
    pub fn neighbour_chunks(&self, doc: &cairn_index::DocumentRecord) -> Vec<ChunkRecord> {
        match self.index.content_hash(&doc.id) {
            Ok(Some(h)) if h == doc.content_hash => {
                self.index.chunks_of(&doc.id).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// A document the caller's access `groups` may read, with its chunks in order; `None` when
    /// it does not exist or may not be read (the two are not told apart). Blocking.
    pub fn readable_document(
        &self,
        doc_id: &str,
        groups: &[String],
    ) -> anyhow::Result<Option<(cairn_index::DocumentRecord, Vec<ChunkRecord>)>> {
        let Some(doc) = self.index.document(doc_id)? else {
            return Ok(None);
        };
        let visible =
            doc.access_groups.is_empty() || doc.access_groups.iter().any(|g| groups.contains(g));
        if !visible {
            return Ok(None);
        }
        let mut chunks = self.index.chunks_of(&doc.id)?;
        chunks.sort_by_key(|c| c.ordinal);
        Ok(Some((doc, chunks)))
    }

    /// The sources the caller's access `groups` may read: name, kind, document count and when
    /// this process last saw a sync of it finish. Blocking.
    pub fn readable_sources(&self, groups: &[String]) -> Vec<SourceSummary> {
        self.config
            .sources
            .iter()
            .filter(|src| src.readable_by(groups))
            .map(|src| SourceSummary {
                name: src.name().to_string(),
                kind: src.kind().to_string(),
                documents: self.index.document_ids(src.name()).map_or(0, |v| v.len()),
                last_sync: self.last_report(src.name()).map(|r| r.finished_at.clone()),
            })
            .collect()
    }

    /// The retrieve-then-rerank step over this engine's index and reranker.
    pub fn retriever(&self) -> Retriever<'_> {
        Retriever {
            index: self.index.as_ref(),
            reranker: self.reranker.as_ref(),
            rerank: &self.config.rerank,
        }
    }

    /// [`Retriever::retrieve`] over this engine's index and reranker (hits for an answer and
    /// the milliseconds spent reranking). Blocking.
    pub fn retrieve(
        &self,
        text: &str,
        vector: Vec<f32>,
        k: usize,
        filter: Filter,
    ) -> anyhow::Result<(Vec<Hit>, f64)> {
        self.retriever().retrieve(text, vector, k, filter)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    #[test]
    fn index_options_carry_the_stall_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[index]\nstall_secs = 7\n").expect("write");
        let config = Config::load_with_env(&path, true, &Overrides::default(), |_| None, false)
            .expect("valid");
        let info = EmbedderInfo {
            name: "hash".into(),
            version: "1".into(),
            dimension: 8,
        };
        let options = index_options(&config, info);
        assert_eq!(options.stall, std::time::Duration::from_secs(7));
    }
}
