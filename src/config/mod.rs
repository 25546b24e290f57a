//! Configuration: `config.toml` (every key optional) < environment (`CAIRN__SECTION__KEY`) <
//! command-line flags, deserialised into raw structs with `deny_unknown_fields`, then validated
//! and resolved by [`Config::load`]. A bad value stops startup naming the file, key and reason.
//!
//! Relative paths in a config file are resolved against that file's directory. Secrets are
//! references (`api_key = "env:VARIABLE"`) resolved at load, never literals.
//!
//! This module composes the file: each section's type lives with the module it configures and
//! checks itself against [`section::Check`]; here are only the layering, the order of the
//! checks, and what spans sections. The member crates' sections (`[index]`, `[[sources]]`,
//! `[chunking]`) live in `index.rs` and `ingest.rs`, since those crates know no config file.
//!
//! Must not: be imported by a section (sections import `section` only).

pub mod index;
pub mod ingest;
pub mod section;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use cairn_ingest::ChunkerOptions;

use crate::agent::settings::{AgentSettings, RawAgent};
use crate::answer::cache::RawCache;
use crate::answer::privacy::{Masker, RawPrivacy};
use crate::answer::settings::RawAnswer;
use crate::answer::threads::{RawThreads, ThreadSettings};
use crate::config::index::RawIndex;
use crate::config::ingest::{RawSource, check_chunking, validate_sources};
use crate::config::section::{Check, ConfigError, resolve_path};
use crate::embedder::RawEmbedder;
use crate::http::auth::RawAuth;
use crate::http::settings::RawServer;
use crate::observe::audit::RawAudit;
use crate::observe::traces::RawTraces;
use crate::ops::batches::settings::RawBatches;
use crate::ops::gate::RawQualityGate;
use crate::ops::webhooks::settings::{RawWebhooks, WebhookSettings};
use crate::providers::config::{
    BudgetConfig, GatewayConfig, ProviderConfig, ProviderKind, RawProvider, check_prices,
    check_route_deadline,
};
use crate::retrieval::RawRetrieval;
use crate::retrieval::rerank::RawRerank;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// Where the index, job state and caches live.
    pub data_dir: PathBuf,
    pub server: RawServer,
    pub embedder: RawEmbedder,
    pub rerank: RawRerank,
    pub chunking: ChunkerOptions,
    pub index: RawIndex,
    pub retrieval: RawRetrieval,
    pub answer: RawAnswer,
    /// Agent mode: its route and budgets.
    pub agent: RawAgent,
    pub providers: BTreeMap<String, RawProvider>,
    pub routes: BTreeMap<String, Vec<String>>,
    /// How a request's deadline is shared across its route.
    pub gateway: GatewayConfig,
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
    /// Conversation threads: how long an idle one lives, how many turns it keeps.
    pub threads: RawThreads,
    /// Signed webhooks of events (no endpoints by default).
    pub webhooks: RawWebhooks,
    /// Batches of questions answered in the background.
    pub batches: RawBatches,
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
            rerank: RawRerank::default(),
            chunking: ChunkerOptions::default(),
            index: RawIndex::default(),
            retrieval: RawRetrieval::default(),
            answer: RawAnswer::default(),
            agent: RawAgent::default(),
            providers,
            routes,
            gateway: GatewayConfig::default(),
            budget: BudgetConfig::default(),
            auth: RawAuth::default(),
            cache: RawCache::default(),
            traces: RawTraces::default(),
            quality_gate: RawQualityGate::default(),
            privacy: RawPrivacy::default(),
            audit: RawAudit::default(),
            threads: RawThreads::default(),
            webhooks: RawWebhooks::default(),
            batches: RawBatches::default(),
            sources: Vec::new(),
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
    pub rerank: RawRerank,
    pub chunking: ChunkerOptions,
    pub index: RawIndex,
    /// The PostgreSQL connection settings with the URL resolved, when `backend = "postgres"`.
    pub postgres: Option<cairn_pg::PgOptions>,
    pub retrieval: RawRetrieval,
    pub answer: RawAnswer,
    pub agent: AgentSettings,
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Route → (provider name, model) in order.
    pub routes: Routes,
    pub gateway: GatewayConfig,
    pub budget: BudgetConfig,
    pub auth: RawAuth,
    pub cache: RawCache,
    pub traces: RawTraces,
    pub quality_gate: RawQualityGate,
    /// The compiled `[privacy]` rules.
    pub privacy: Masker,
    /// `[audit]` with `path` resolved (empty: `<data_dir>/audit.jsonl`).
    pub audit: RawAudit,
    pub threads: ThreadSettings,
    /// `[webhooks]` with durations parsed and endpoint secrets decoded.
    pub webhooks: WebhookSettings,
    pub batches: RawBatches,
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
        let cx = Check {
            origin: &origin,
            base: &base,
            env: &env,
        };
        validate(raw, &cx)
    }
}

/// `[budget]` caps must be usable: a token cap below what an answer asks for would refuse every
/// question, and a spend cap must be a non-negative number of dollars. (A check across
/// sections: the budget against the answer's request.)
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

/// `[retrieval] condense = "model"` needs its route, a time limit inside the request deadline
/// and a token limit the budget allows. (A check across sections: retrieval, routes, server,
/// budget.)
fn check_condense(
    r: &RawRetrieval,
    routes: &Routes,
    budget: &BudgetConfig,
    deadline_ms: u64,
) -> Result<(), (&'static str, String)> {
    use crate::retrieval::condense::Condense;
    use crate::retrieval::condense_model::ROUTE;
    if r.condense != Condense::Model {
        return Ok(());
    }
    if !routes.contains_key(ROUTE) {
        return Err((
            "routes.condense",
            format!(
                "[retrieval] condense = \"model\" calls the `{ROUTE}` route, which [routes] does not define; add `{ROUTE} = [\"provider:model\"]` (a small, fast model) or set condense = \"heuristic\""
            ),
        ));
    }
    if r.condense_timeout_ms >= deadline_ms {
        return Err((
            "retrieval.condense_timeout_ms",
            format!(
                "{} ms leaves nothing of the {deadline_ms} ms request deadline ([server] request_timeout_secs) for the answer; use a shorter time",
                r.condense_timeout_ms
            ),
        ));
    }
    if let Some(cap) = budget.max_tokens_per_request
        && cap < r.condense_max_tokens
    {
        return Err((
            "retrieval.condense_max_tokens",
            format!(
                "{} is above [budget] max_tokens_per_request ({cap}), so every condense call would be refused",
                r.condense_max_tokens
            ),
        ));
    }
    Ok(())
}

/// Route name → (provider name, model) in order.
pub type Routes = BTreeMap<String, Vec<(String, String)>>;

/// Providers with their key references resolved, and routes whose targets each name a defined
/// provider. (A check across sections: routes name providers.)
fn providers_and_routes(
    raw_providers: &BTreeMap<String, RawProvider>,
    raw_routes: &BTreeMap<String, Vec<String>>,
    cx: &Check,
) -> Result<(BTreeMap<String, ProviderConfig>, Routes), ConfigError> {
    let mut providers = BTreeMap::new();
    for (name, p) in raw_providers {
        let api_key = match &p.api_key {
            Some(r) => Some(cx.secret(r, &format!("providers.{name}.api_key"))?),
            None => None,
        };
        providers.insert(name.clone(), ProviderConfig::resolve(name, p, api_key));
    }
    let mut routes = BTreeMap::new();
    for (route, targets) in raw_routes {
        let mut resolved = Vec::new();
        for t in targets {
            let (name, model) = t.split_once(':').unwrap_or((t.as_str(), ""));
            if !providers.contains_key(name) {
                return Err(cx.key_err(
                    &format!("routes.{route}"),
                    format!(
                        "`{t}` names provider `{name}`, which no [providers.{name}] table defines"
                    ),
                ));
            }
            resolved.push((name.to_string(), model.to_string()));
        }
        if resolved.is_empty() {
            return Err(cx.key_err(&format!("routes.{route}"), "needs at least one provider"));
        }
        routes.insert(route.clone(), resolved);
    }
    Ok((providers, routes))
}

/// Each section checks itself, in the order the file reads; what spans sections (routes and
/// providers, the budget against the answer) is checked here.
fn validate(raw: RawConfig, cx: &Check) -> Result<Config, ConfigError> {
    let bind = raw.server.validate(cx)?;
    let embedder = raw.embedder.validate(cx)?;
    let retrieval = raw.retrieval.validate(cx)?;
    check_chunking(&raw.chunking, cx)?;
    raw.index.validate(cx)?;
    let postgres = raw.index.postgres_options(cx)?;
    let quality_gate = raw.quality_gate.validate(cx, postgres.is_some())?;
    let (providers, routes) = providers_and_routes(&raw.providers, &raw.routes, cx)?;
    let answer = raw.answer.validate(cx, &routes)?;
    let agent = raw.agent.validate(
        cx,
        &routes,
        &answer.route,
        raw.server.request_timeout_secs.max(1),
    )?;
    raw.gateway
        .check()
        .map_err(|(key, message)| cx.key_err(key, message))?;
    let deadline_ms = raw.server.request_timeout_secs.max(1).saturating_mul(1000);
    if let Some(targets) = routes.get(&answer.route) {
        check_route_deadline(&answer.route, targets, &providers, deadline_ms)
            .map_err(|message| cx.key_err(&format!("routes.{}", answer.route), message))?;
    }
    check_budget(&raw.budget).map_err(|(key, message)| cx.key_err(key, message))?;
    check_condense(&retrieval, &routes, &raw.budget, deadline_ms)
        .map_err(|(key, message)| cx.key_err(key, message))?;
    check_prices(&raw.budget, &routes, &providers)
        .map_err(|(key, message)| cx.key_err(&key, message))?;
    let sources = validate_sources(raw.sources, cx)?;
    raw.auth.validate(cx)?;
    raw.cache.validate(cx)?;
    let traces = raw.traces.validate(cx)?;
    let privacy = Masker::from_config(&raw.privacy, cx.origin)?;
    let audit = raw.audit.validate(cx);
    let threads = raw.threads.validate(cx)?;
    let webhooks = raw.webhooks.validate(cx)?;
    let rerank = raw.rerank.validate(cx)?;
    raw.batches.validate(cx)?;
    Ok(Config {
        origin: cx.origin.into(),
        data_dir: resolve_path(cx.base, &raw.data_dir),
        bind,
        server: raw.server,
        embedder,
        rerank,
        chunking: raw.chunking,
        index: raw.index,
        postgres,
        retrieval,
        answer,
        agent,
        providers,
        routes,
        gateway: raw.gateway,
        budget: raw.budget,
        auth: raw.auth,
        cache: raw.cache,
        traces,
        quality_gate,
        privacy,
        audit,
        threads,
        webhooks,
        batches: raw.batches,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::index::BackendKind;
    use crate::observe::otlp::RawOtlp;
    use cairn_index::Fusion;

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
    fn condense_is_heuristic_by_default_and_model_needs_its_route_and_limits() {
        use crate::retrieval::condense::Condense;
        let c = load("", &[]).expect("valid");
        assert_eq!(c.retrieval.condense, Condense::Heuristic);
        let c = load("[retrieval]\ncondense = \"off\"\n", &[]).expect("valid");
        assert_eq!(c.retrieval.condense, Condense::Off);
        let model = "[retrieval]\ncondense = \"model\"\n";
        let e = load(model, &[]).expect_err("no route");
        assert!(e.to_string().contains("routes.condense"), "{e}");
        let routes = "[routes]\nanswer = [\"local\"]\ncondense = [\"local\"]\n";
        let c = load(&format!("{model}{routes}"), &[]).expect("valid");
        assert_eq!(c.retrieval.condense, Condense::Model);
        assert_eq!(c.retrieval.condense_max_tokens, 96);
        for (bad, key) in [
            ("condense_timeout_ms = 0", "retrieval.condense_timeout_ms"),
            (
                "condense_timeout_ms = 60000",
                "retrieval.condense_timeout_ms",
            ),
            ("condense_max_tokens = 0", "retrieval.condense_max_tokens"),
        ] {
            let e = load(&format!("{model}{bad}\n{routes}"), &[]).expect_err(bad);
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
        let capped = format!("{model}{routes}[budget]\nmax_tokens_per_request = 600\n");
        load(&capped, &[]).expect("96 tokens fit the cap");
        let e = load(
            &format!(
                "{model}condense_max_tokens = 700\n{routes}[budget]\nmax_tokens_per_request = 600\n"
            ),
            &[],
        )
        .expect_err("over the cap");
        assert!(
            e.to_string().contains("retrieval.condense_max_tokens"),
            "{e}"
        );
    }

    #[test]
    fn threads_ttl_is_a_humantime_duration_and_max_turns_at_least_one() {
        let c = load("", &[]).expect("valid");
        assert_eq!(c.threads.ttl, std::time::Duration::from_secs(30 * 86_400));
        assert_eq!(c.threads.max_turns, 50);
        let c = load("[threads]\nttl = \"12h 30m\"\nmax_turns = 3\n", &[]).expect("valid");
        assert_eq!(c.threads.ttl, std::time::Duration::from_secs(45_000));
        assert_eq!(c.threads.max_turns, 3);
        for bad in ["ttl = \"soon\"", "ttl = \"0s\"", "max_turns = 0"] {
            let e = load(&format!("[threads]\n{bad}\n"), &[]).expect_err(bad);
            assert!(e.to_string().contains("threads."), "{bad}: {e}");
        }
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
    fn a_concurrency_limit_of_zero_is_refused() {
        let e = load("[server]\nmax_concurrent_requests = 0\n", &[]).expect_err("must fail");
        let msg = e.to_string();
        assert!(msg.contains("server.max_concurrent_requests"), "{msg}");
        let c = load("[server]\nmax_concurrent_requests = 2\n", &[]).expect("loads");
        assert_eq!(c.server.max_concurrent_requests, 2);
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
    fn index_stall_secs_defaults_to_120_and_must_be_positive() {
        // That it reaches the index: `engine::tests::index_options_carry_the_stall_time`.
        let c = load("", &[]).expect("valid");
        assert_eq!(c.index.stall(), std::time::Duration::from_secs(120));
        let c = load("[index]\nstall_secs = 7\n", &[]).expect("valid");
        assert_eq!(c.index.stall(), std::time::Duration::from_secs(7));
        let e = load("[index]\nstall_secs = 0\n", &[]).expect_err("0 must be refused");
        assert!(e.to_string().contains("index.stall_secs"), "{e}");
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

    /// Two remote targets with 30 s first-token waits and two retries each need 180 s before
    /// the route gives up, three times the 60 s request deadline: refused, naming the numbers.
    #[test]
    fn a_route_whose_worst_case_exceeds_the_request_deadline_is_refused() {
        let remote = |name: &str| {
            format!(
                "[providers.{name}]\nkind = \"openai_compatible\"\nbase_url = \"http://127.0.0.1:1/v1\"\ntimeout_first_token_ms = 30000\nmax_retries = 2\nretry_budget_ms = 0\n"
            )
        };
        let with = |deadline: u64, routes: &str| {
            format!(
                "[server]\nrequest_timeout_secs = {deadline}\n{}{}[routes]\n{routes}\n",
                remote("a"),
                remote("b")
            )
        };
        let slow = "answer = [\"a:m\", \"b:m\", \"local\"]";
        let e = load(&with(60, slow), &[]).expect_err("a route that cannot fit its deadline");
        let msg = e.to_string();
        for part in ["routes.answer", "180", "60", "request_timeout_secs"] {
            assert!(msg.contains(part), "`{part}` missing from: {msg}");
        }
        load(&with(180, slow), &[]).expect("180 s holds 2 targets × 3 tries × 30 s");
        // Only the route answers use carries the request deadline.
        let elsewhere = "answer = [\"local\"]\nbatch = [\"a:m\", \"b:m\"]";
        load(&with(60, elsewhere), &[]).expect("not the answer route");
    }

    /// The shipped defaults hold a route of two remote providers and the local fallback within
    /// the default 60 s deadline.
    #[test]
    fn default_timeouts_fit_two_remote_targets_in_the_default_deadline() {
        let remote = |name: &str| {
            format!(
                "[providers.{name}]\nkind = \"openai_compatible\"\nbase_url = \"http://127.0.0.1:1/v1\"\n"
            )
        };
        let toml = format!(
            "{}{}[routes]\nanswer = [\"a:m\", \"b:m\", \"local\"]\n",
            remote("a"),
            remote("b")
        );
        load(&toml, &[]).expect("defaults fit");
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

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let config = crate::config::Config::load_with_env(
            &path,
            true,
            &crate::config::Overrides::default(),
            |_| None,
            false,
        )
        .expect("the root config.toml loads");
        assert_eq!(config.traces.otlp, RawOtlp::default());
    }

    #[test]
    fn webhook_endpoints_need_known_events_and_a_whsec_secret() {
        let endpoint = |events: &str, secret: &str| {
            format!(
                "[[webhooks.endpoints]]\nurl = \"https://hooks.example.com/c\"\nevents = {events}\nsecret = \"{secret}\"\n"
            )
        };
        let good = ("HOOK", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let c = load(&endpoint(r#"["job.completed"]"#, "env:HOOK"), &[good]).expect("valid");
        assert_eq!(c.webhooks.endpoints[0].key.len(), 24);
        let e = load(&endpoint(r#"["job.done"]"#, "env:HOOK"), &[good]).expect_err("unknown");
        assert!(
            e.to_string().contains("webhooks.endpoints[0].events"),
            "{e}"
        );
        let e = load(
            &endpoint(r#"["job.completed"]"#, "env:HOOK"),
            &[("HOOK", "hunter2")],
        )
        .expect_err("not whsec");
        assert!(e.to_string().contains("whsec_"), "{e}");
        let e = load(&endpoint(r#"["job.completed"]"#, "whsec_abc"), &[]).expect_err("literal");
        assert!(e.to_string().contains("env:"), "{e}");
        let e = load("[webhooks]\nretry_window = \"soon\"\n", &[]).expect_err("duration");
        assert!(e.to_string().contains("webhooks.retry_window"), "{e}");
    }

    #[test]
    fn a_source_refresh_is_a_duration_above_zero() {
        let source = |refresh: &str| {
            format!(
                "[[sources]]\nname = \"s\"\nkind = \"files\"\npath = \"x\"\nrefresh = \"{refresh}\"\n"
            )
        };
        let c = load(&source("15m"), &[]).expect("valid");
        assert_eq!(
            c.sources[0].refresh(),
            Some(std::time::Duration::from_secs(900))
        );
        assert!(load(&source("10s"), &[]).is_ok(), "short ones are allowed");
        let e = load(&source("0s"), &[]).expect_err("zero");
        assert!(e.to_string().contains("sources[0].refresh"), "{e}");
        let e = load(&source("often"), &[]).expect_err("not a duration");
        assert!(e.to_string().contains("sources[0].refresh"), "{e}");
        let crm = "[[sources]]\nname = \"c\"\nkind = \"crm\"\npath = \"a.csv\"\nid = \"Id\"\nrefresh = \"1h\"\n";
        let c = load(crm, &[]).expect("crm takes refresh too");
        assert_eq!(c.sources[0].refresh_text(), Some("1h"));
    }
}
