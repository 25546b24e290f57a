//! The HTTP server: routes, request validation, SSE framing, and the one error shape
//! `{"error": {"code", "message"}}` with an exhaustive status mapping.

pub mod auth;
pub mod openai_compat;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use cairn_index::{Filter, SearchMode, TimeRange};

use crate::answer::{AnswerEvent, AskRequest, Citation, UsageView, answer_on};
use crate::engine::{Engine, HitView};
use crate::http::auth::{Auth, AuthError, Caller, Scope};
use crate::observe::audit::AuditEvent;
use crate::ops::jobs::{Jobs, StartError};
use crate::providers::cost::Exhausted;
use crate::providers::{Message, Role};

/// Errors a client can get, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the question is {chars} characters; the limit is {limit}")]
    QuestionTooLong { chars: usize, limit: usize },
    #[error("unknown source `{0}` in filters; see GET /search for the available sources")]
    UnknownSource(String),
    #[error(
        "the request body could not be read or is larger than the server's limit (`[server] max_body_bytes`)"
    )]
    BodyTooLarge,
    #[error("this endpoint needs an API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(&'static str),
    #[error("rate limit reached; retry in {0} s")]
    RateLimited(u64),
    #[error("{0} not found")]
    NotFound(String),
    #[error("job {0} is still running; wait for it (GET /admin/jobs/{0}) before starting another")]
    JobRunning(String),
    /// A `[budget]` cap refuses new model calls (429: it is a quota; `Retry-After` says when a
    /// daily cap resets).
    #[error("{}", crate::answer::budget_message(.0))]
    BudgetExhausted(Exhausted),
    #[error("internal error; the operator can find details in the server log")]
    Internal,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::QuestionTooLong { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "question_too_long")
            }
            ApiError::UnknownSource(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_filter"),
            ApiError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidKey => (StatusCode::UNAUTHORIZED, "invalid_key"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::JobRunning(_) => (StatusCode::CONFLICT, "job_running"),
            ApiError::BudgetExhausted(_) => (StatusCode::TOO_MANY_REQUESTS, "budget_exhausted"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut resp = (
            status,
            Json(json!({"error": {"code": code, "message": self.to_string()}})),
        )
            .into_response();
        let retry_after = match &self {
            ApiError::RateLimited(secs) => Some(*secs),
            ApiError::BudgetExhausted(e) => e.retry_after_secs(),
            _ => None,
        };
        if let Some(secs) = retry_after
            && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::InvalidRequest(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::InvalidJson(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::InvalidJson("send the body with `content-type: application/json`".into())
            }
            JsonRejection::BytesRejection(_) => ApiError::BodyTooLarge,
            other => ApiError::InvalidJson(other.body_text()),
        }
    }
}

pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Arc<Auth>,
    pub jobs: Arc<Jobs>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> anyhow::Result<Arc<AppState>> {
        let auth = Auth::new(&engine.config.auth);
        let jobs = Jobs::open_for(&engine)?;
        Ok(Arc::new(AppState { engine, auth, jobs }))
    }

    pub fn authorize_scope(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.auth.check(value, scope).map_err(|e| match e {
            AuthError::Missing => ApiError::Unauthorized,
            AuthError::Invalid => ApiError::InvalidKey,
            AuthError::Forbidden(s) => ApiError::Forbidden(match s {
                Scope::Ask => "ask",
                Scope::Search => "search",
                Scope::Admin => "admin",
            }),
            AuthError::RateLimited { retry_after_secs } => ApiError::RateLimited(retry_after_secs),
        })
    }
}

/// Builds the router (tests drive it in-process with `oneshot`).
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.engine.config.server.max_body_bytes;
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/search", get(search))
        .route("/ask", post(ask))
        .route(
            "/v1/chat/completions",
            post(crate::http::openai_compat::chat_completions),
        )
        .route("/metrics", get(metrics_text))
        .route("/admin/reindex", post(admin_reindex))
        .route("/admin/jobs", get(admin_jobs))
        .route("/admin/jobs/{id}", get(admin_job))
        .route("/admin/sources", get(admin_sources))
        .route("/admin/traces", get(admin_traces))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(include_str!("page/index.html")),
    )
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("route {}", uri.path()))
}

/// Index counts, read on a blocking thread (a server-backed index does I/O); `None`, logged,
/// when the index cannot answer.
async fn index_stats(engine: &Arc<Engine>) -> Option<cairn_index::IndexStats> {
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || engine.index.stats()).await {
        Ok(Ok(stats)) => Some(stats),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "index statistics unavailable");
            None
        }
        Err(_) => None,
    }
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    if let Some(stats) = index_stats(&s.engine).await {
        metrics::gauge!(crate::observe::metrics::INDEX_DOCUMENTS).set(stats.documents as f64);
        metrics::gauge!(crate::observe::metrics::INDEX_CHUNKS).set(stats.chunks as f64);
        metrics::gauge!(crate::observe::metrics::INDEX_GENERATION).set(stats.generation as f64);
    }
    let jobs = s.jobs.clone();
    match tokio::task::spawn_blocking(move || jobs.running()).await {
        Ok(Ok(running)) => metrics::gauge!(crate::observe::metrics::JOBS_RUNNING)
            .set(if running.is_some() { 1.0 } else { 0.0 }),
        Ok(Err(e)) => tracing::warn!(error = %e, "job state unavailable"),
        Err(_) => {}
    }
    let body = crate::observe::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReindexBody {
    pub source: Option<String>,
    #[serde(default)]
    pub full: bool,
}

async fn admin_reindex(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Option<Json<ReindexBody>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Admin)?;
    let body = body?.map(|Json(b)| b).unwrap_or_default();
    let (jobs, engine, source) = (s.jobs.clone(), s.engine.clone(), body.source.clone());
    let job = tokio::task::spawn_blocking(move || jobs.start(engine, source, body.full))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| match e {
            StartError::UnknownSource(n) => ApiError::UnknownSource(n),
            StartError::Busy(id) => ApiError::JobRunning(id),
            StartError::Store(reason) => {
                tracing::error!(error = %reason, "cannot queue a reindex job");
                ApiError::Internal
            }
        })?;
    tracing::info!(audit = "reindex", caller = %caller.name, job = %job.id, source = ?body.source, full = body.full, "admin action");
    s.engine.audit.record_or_warn(&AuditEvent::Admin {
        action: "reindex".into(),
        caller: caller.name.clone(),
        detail: serde_json::json!({ "job": job.id, "source": body.source, "full": body.full }),
    });
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitParams {
    pub limit: Option<usize>,
}

async fn admin_jobs(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<LimitParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    s.authorize_scope(&headers, Scope::Admin)?;
    let Query(p) = params.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let jobs = s.jobs.clone();
    let list =
        job_store(tokio::task::spawn_blocking(move || jobs.list(p.limit.unwrap_or(50))).await)?;
    Ok(Json(json!({"jobs": list})).into_response())
}

async fn admin_job(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<axum::extract::Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    s.authorize_scope(&headers, Scope::Admin)?;
    let axum::extract::Path(id) = id.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let jobs = s.jobs.clone();
    let found = {
        let id = id.clone();
        job_store(tokio::task::spawn_blocking(move || jobs.get(&id)).await)?
    };
    let job = found.ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    Ok(Json(job).into_response())
}

/// A job-store read run on a blocking thread; a failure is logged and answered as internal.
fn job_store<T>(result: Result<anyhow::Result<T>, tokio::task::JoinError>) -> Result<T, ApiError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "cannot read the jobs");
            Err(ApiError::Internal)
        }
        Err(_) => Err(ApiError::Internal),
    }
}

async fn admin_sources(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize_scope(&headers, Scope::Admin)?;
    let engine = s.engine.clone();
    let sources = tokio::task::spawn_blocking(move || {
        engine
            .config
            .sources
            .iter()
            .map(|src| {
                let name = src.name();
                let state = engine.source_state(name);
                let report = engine.last_report(name);
                let documents = engine
                    .index
                    .document_ids(name)
                    .map(|v| v.len())
                    .unwrap_or(0);
                json!({
                    "name": name,
                    "kind": src.kind(),
                    "documents": documents,
                    "watermark": state.watermark,
                    "last_reconciled": state.last_reconciled,
                    "last_sync": report.as_ref().map(|r| r.finished_at.clone()),
                    "last_counts": report.as_ref().map(|r| r.counts.clone()),
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|_| ApiError::Internal)?;
    Ok(Json(json!({"sources": sources})).into_response())
}

async fn admin_traces(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<LimitParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    s.authorize_scope(&headers, Scope::Admin)?;
    let Query(p) = params.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let limit = p.limit.unwrap_or(50).min(1000);
    Ok(Json(json!({"traces": s.engine.traces.recent(limit)})).into_response())
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the index answers; 503 otherwise, so a load balancer routes around a replica
/// that lost its database.
async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    match index_stats(&s.engine).await {
        Some(stats) => Json(json!({
            "status": "ready",
            "index": {"backend": s.engine.index.kind(), "generation": stats.generation, "documents": stats.documents, "chunks": stats.chunks},
            "embedder": stats.embedder,
        }))
        .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "index": {"backend": s.engine.index.kind()}})),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    pub q: String,
    pub k: Option<usize>,
    pub source: Option<String>,
    pub mode: Option<SearchMode>,
}

#[derive(Debug, Serialize)]
pub struct SearchResponse {
    pub hits: Vec<HitView>,
    pub took_ms: f64,
}

fn check_sources(engine: &Engine, sources: &[String]) -> Result<(), ApiError> {
    for s in sources {
        if !engine.config.sources.iter().any(|c| c.name() == s) {
            return Err(ApiError::UnknownSource(s.clone()));
        }
    }
    Ok(())
}

async fn search(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Search)?;
    let Query(p) = params.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let k = p.k.unwrap_or(10);
    if k == 0 || k > 100 {
        return Err(ApiError::InvalidRequest(
            "`k` must be between 1 and 100".into(),
        ));
    }
    let limit = s.engine.config.server.max_question_chars;
    let chars = p.q.chars().count();
    if chars > limit {
        return Err(ApiError::QuestionTooLong { chars, limit });
    }
    let sources: Vec<String> = p.source.into_iter().filter(|x| !x.is_empty()).collect();
    check_sources(&s.engine, &sources)?;
    let filter = Filter {
        sources,
        caller_groups: caller.groups,
        ..Filter::default()
    };
    let engine = s.engine.clone();
    let mode = p.mode.unwrap_or_default();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || engine.search(&p.q, k, filter, mode))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "search task panicked");
            ApiError::Internal
        })
        .and_then(|r| {
            r.map_err(|e| {
                tracing::warn!(error = %e, "search failed");
                ApiError::Internal
            })
        });
    crate::observe::metrics::request(
        "search",
        if result.is_ok() { "ok" } else { "error" },
        started.elapsed().as_secs_f64(),
    );
    let hits = result?;
    Ok(Json(SearchResponse {
        hits: hits.iter().map(HitView::from_hit).collect(),
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskFilters {
    #[serde(default)]
    pub source: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub updated_after: Option<DateTime<Utc>>,
    pub updated_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskBody {
    pub question: String,
    pub filters: Option<AskFilters>,
    pub top_k: Option<usize>,
    pub stream: Option<bool>,
    #[serde(default)]
    pub conversation: Vec<Turn>,
}

/// The non-streaming `/ask` response.
#[derive(Debug, Serialize, Default)]
pub struct AskResponse {
    pub answer: String,
    pub citations: Vec<Citation>,
    pub retrieval: Vec<HitView>,
    pub usage: Option<UsageView>,
    pub trace_id: Option<String>,
    pub outcome: Option<String>,
    pub error: Option<serde_json::Value>,
}

impl AskResponse {
    pub fn apply(&mut self, ev: AnswerEvent) {
        match ev {
            AnswerEvent::Retrieval(h) => self.retrieval = h,
            AnswerEvent::Token(t) => self.answer.push_str(&t),
            AnswerEvent::Citation(c) => self.citations.push(c),
            AnswerEvent::Usage(u) => self.usage = Some(u),
            AnswerEvent::Done {
                trace_id, outcome, ..
            } => {
                self.trace_id = Some(trace_id);
                self.outcome = Some(outcome.to_string());
            }
            AnswerEvent::Error { code, message } => {
                self.error = Some(json!({"code": code, "message": message}));
            }
        }
    }
}

/// Validates an `/ask` body for `caller`, refuses it when the caller's `[budget]` allowance is
/// spent, and builds the pipeline request.
pub fn validate_ask(
    engine: &Engine,
    body: AskBody,
    caller: &Caller,
) -> Result<(AskRequest, bool), ApiError> {
    let question = body.question.trim().to_string();
    if question.is_empty() {
        return Err(ApiError::InvalidRequest(
            "`question` must not be empty".into(),
        ));
    }
    let limit = engine.config.server.max_question_chars;
    let chars = question.chars().count();
    if chars > limit {
        return Err(ApiError::QuestionTooLong { chars, limit });
    }
    if question
        .chars()
        .any(|c| c.is_control() && !c.is_whitespace())
    {
        return Err(ApiError::InvalidRequest(
            "`question` contains control characters".into(),
        ));
    }
    let top_k = body.top_k.unwrap_or(engine.config.retrieval.top_k);
    if top_k == 0 || top_k > 50 {
        return Err(ApiError::InvalidRequest(
            "`top_k` must be between 1 and 50".into(),
        ));
    }
    let mut filter = Filter {
        caller_groups: caller.groups.clone(),
        ..Filter::default()
    };
    if let Some(f) = body.filters {
        check_sources(engine, &f.source)?;
        filter.sources = f.source;
        filter.metadata = f.metadata;
        if f.updated_after.is_some() || f.updated_before.is_some() {
            filter.updated = Some(TimeRange {
                from: f.updated_after,
                to: f.updated_before,
            });
        }
    }
    // Keys are charged by name; anonymous callers share one bucket (a name no key can have,
    // because key buckets are prefixed).
    let budget_key = if caller.anonymous {
        "anonymous".to_string()
    } else {
        format!("key:{}", caller.name)
    };
    // Refuse before retrieval so the status says it; a cap reached while this answer is
    // being prepared still ends it with an in-stream `budget_exhausted` error.
    engine
        .router
        .budget
        .check(
            Some(crate::answer::prompt::ANSWER_MAX_TOKENS),
            Some(&budget_key),
        )
        .map_err(ApiError::BudgetExhausted)?;
    let conversation = body
        .conversation
        .into_iter()
        .map(|t| Message {
            role: t.role,
            content: t.content,
        })
        .collect();
    Ok((
        AskRequest {
            question,
            filter,
            top_k,
            conversation,
            budget_key: Some(budget_key),
        },
        body.stream.unwrap_or(true),
    ))
}

fn sse_event(id: usize, ev: &AnswerEvent) -> Event {
    let (name, data) = match ev {
        AnswerEvent::Retrieval(h) => ("retrieval", json!({"hits": h})),
        AnswerEvent::Token(t) => ("token", json!({"text": t})),
        AnswerEvent::Citation(c) => ("citation", json!(c)),
        AnswerEvent::Usage(u) => ("usage", json!(u)),
        AnswerEvent::Done {
            trace_id,
            outcome,
            dropped_citations,
        } => (
            "done",
            json!({"trace_id": trace_id, "outcome": outcome, "dropped_citations": dropped_citations}),
        ),
        AnswerEvent::Error { code, message } => {
            ("error", json!({"code": code, "message": message}))
        }
    };
    Event::default()
        .id(id.to_string())
        .event(name)
        .data(data.to_string())
}

async fn ask(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<AskBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let Json(body) = body?;
    let (req, stream) = validate_ask(&s.engine, body, &caller)?;
    let (tx, rx) = mpsc::channel::<AnswerEvent>(64);
    let engine = s.engine.clone();
    tokio::spawn(answer_on(engine, req, caller.name, Some("/ask"), tx));
    if stream {
        let events = ReceiverStream::new(rx)
            .enumerate()
            .map(|(i, ev)| Ok::<Event, Infallible>(sse_event(i + 1, &ev)));
        let keep_alive = KeepAlive::new()
            .interval(Duration::from_secs(
                s.engine.config.server.keep_alive_secs.max(1),
            ))
            .text("keep-alive");
        Ok(Sse::new(events).keep_alive(keep_alive).into_response())
    } else {
        let mut resp = AskResponse::default();
        let mut rx = rx;
        while let Some(ev) = rx.recv().await {
            resp.apply(ev);
        }
        Ok(Json(resp).into_response())
    }
}
