//! `GET /search`: hybrid (or BM25-only, vector-only) search with the caller's access groups.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use cairn_index::{Filter, SearchMode};

use crate::engine::Engine;
use crate::http::auth::Scope;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::retrieval::HitView;

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

/// Every source a filter names must exist and be readable with the caller's `groups`; a source
/// it may not read is refused exactly like one that does not exist, so probing filters does
/// not list restricted sources.
pub(super) fn check_sources(
    engine: &Engine,
    groups: &[String],
    sources: &[String],
) -> Result<(), ApiError> {
    for s in sources {
        let known = engine.config.sources.iter().find(|c| c.name() == s);
        if !known.is_some_and(|c| c.readable_by(groups)) {
            return Err(ApiError::UnknownSource(s.clone()));
        }
    }
    Ok(())
}

pub(super) async fn search(
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
    if p.q.trim().is_empty() {
        return Err(ApiError::EmptyQuery(
            "`q` is empty; send the words to search for, e.g. `/search?q=refund`".into(),
        ));
    }
    let limit = s.engine.config.server.max_question_chars;
    let chars = p.q.chars().count();
    if chars > limit {
        return Err(ApiError::QuestionTooLong { chars, limit });
    }
    let sources: Vec<String> = p.source.into_iter().filter(|x| !x.is_empty()).collect();
    check_sources(&s.engine, &caller.groups, &sources)?;
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
