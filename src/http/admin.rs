//! The operator's routes: `/admin/reindex`, `/admin/jobs`, `/admin/sources`, `/admin/traces`,
//! `/admin/webhooks/deliveries` (admin scope, audited), and `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::engine::Engine;
use crate::http::auth::Scope;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::observe::audit::AuditEvent;
use crate::ops::jobs::{StartError, Trigger};
use crate::ops::schedule;

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

/// `GET /metrics`: the Prometheus text, for callers with the `metrics` scope (anonymous ones
/// by default).
pub(super) async fn metrics_text(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize_scope(&headers, Scope::Metrics)?;
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
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReindexBody {
    pub source: Option<String>,
    #[serde(default)]
    pub full: bool,
}

/// The reindex request: no body at all means every source, incrementally; a body must be
/// JSON sent as `application/json`, so a body that cannot be read is refused (415, 400, 422,
/// 413) and never taken for "every source".
fn reindex_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<ReindexBody, ApiError> {
    let bytes = body.map_err(|_| ApiError::BodyTooLarge)?;
    if bytes.is_empty() {
        return Ok(ReindexBody::default());
    }
    if !is_json_content_type(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let Json(body) = Json::<ReindexBody>::from_bytes(&bytes)?;
    Ok(body)
}

/// `application/json` or a `+json` media type, parameters ignored.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .map(|mime| mime.trim().to_ascii_lowercase())
        .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"))
}

pub(super) async fn admin_reindex(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Admin)?;
    let body = reindex_body(&headers, body)?;
    let (jobs, engine, source) = (s.jobs.clone(), s.engine.clone(), body.source.clone());
    let job =
        tokio::task::spawn_blocking(move || jobs.start(engine, source, body.full, Trigger::Manual))
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

/// An admin listing's checks: the `admin` scope, then the query's `limit` (default 50, at most
/// 1000), the number of newest entries it shows.
fn admin_listing_limit(
    s: &AppState,
    headers: &HeaderMap,
    params: Result<Query<LimitParams>, QueryRejection>,
) -> Result<usize, ApiError> {
    s.authorize_scope(headers, Scope::Admin)?;
    let Query(p) = params.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    Ok(p.limit.unwrap_or(50).min(1000))
}

pub(super) async fn admin_jobs(
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

pub(super) async fn admin_job(
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

pub(super) async fn admin_sources(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize_scope(&headers, Scope::Admin)?;
    let (engine, schedules) = (s.engine.clone(), s.schedules.clone());
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
                    "schedule": schedules.view(name, report.as_ref().and_then(schedule::finished)),
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|_| ApiError::Internal)?;
    Ok(Json(json!({"sources": sources})).into_response())
}

/// `GET /admin/webhooks/deliveries`: the newest deliveries (`limit`, default 50, at most
/// 1000) with every attempt, and the endpoints with whether a receiver disabled them.
pub(super) async fn admin_webhook_deliveries(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<LimitParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let limit = admin_listing_limit(&s, &headers, params)?;
    let hooks = s.engine.webhooks.clone();
    let read = tokio::task::spawn_blocking(move || {
        anyhow::Ok((hooks.deliveries(limit)?, hooks.endpoints()?))
    })
    .await;
    let (deliveries, endpoints) = match read {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "cannot read the webhook deliveries");
            return Err(ApiError::Internal);
        }
        Err(_) => return Err(ApiError::Internal),
    };
    Ok(Json(json!({"endpoints": endpoints, "deliveries": deliveries})).into_response())
}

pub(super) async fn admin_traces(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<LimitParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let limit = admin_listing_limit(&s, &headers, params)?;
    Ok(Json(json!({"traces": s.engine.traces.recent(limit)})).into_response())
}

pub(super) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Why questions cannot be embedded, if they cannot: while the query embedder reports a model
/// that keeps panicking, one probe question decides (a success makes it healthy again).
async fn embedder_failing(engine: &Arc<Engine>) -> Option<String> {
    let reason = engine.query_embedder_health()?;
    let probe = engine.clone();
    match tokio::task::spawn_blocking(move || probe.embed_query("readiness probe")).await {
        Ok(Ok(_)) => None,
        _ => Some(format!(
            "{reason}; /search and /ask fail until it recovers (see the server log)"
        )),
    }
}

/// Ready when the index answers; 503 otherwise, so a load balancer routes around a replica
/// that lost its database.
/// Ready when the index answers, its writes are making progress and questions can be
/// embedded. A 503 carries `reason`
/// (`{"code","message"}`) naming what is wrong, so an operator can act on it.
pub(super) async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let backend = s.engine.index.kind();
    let unavailable = |code: &str, message: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "reason": {"code": code, "message": message},
                "index": {"backend": backend},
            })),
        )
            .into_response()
    };
    if let cairn_index::Health::Stalled { operation, since } = s.engine.index.health() {
        let secs = since.elapsed().map_or(0, |d| d.as_secs());
        return unavailable(
            "store_stalled",
            format!(
                "an index store write ({operation}) has made no progress for {secs} s; \
                 ingests fail until it ends; check the disk holding the data directory"
            ),
        );
    }
    if let Some(reason) = embedder_failing(&s.engine).await {
        return unavailable("embedder_failing", reason);
    }
    match index_stats(&s.engine).await {
        Some(stats) => Json(json!({
            "status": "ready",
            "index": {"backend": backend, "generation": stats.generation, "documents": stats.documents, "chunks": stats.chunks},
            "embedder": stats.embedder,
        }))
        .into_response(),
        None => unavailable(
            "index_unavailable",
            "the index cannot answer (see the server log)".into(),
        ),
    }
}
