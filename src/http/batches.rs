//! `/batches`: questions submitted together and answered in the background (`ops::batches`
//! runs them). `POST /batches` takes `{"requests": [...], "metadata"}` as JSON or the requests
//! as JSON lines (`application/x-ndjson`), checks every request as `/ask` checks its body
//! (naming the request or line that fails) and answers `202`; `GET /batches/{id}` shows the
//! counts, `GET /batches/{id}/results` the finished requests as JSON lines, `DELETE
//! /batches/{id}` cancels what has not started. A batch belongs to the key that submitted it;
//! any other caller gets 404.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::answer::events::Mode;
use crate::engine::Engine;
use crate::http::ask::{AskFilters, budget_key_with_room, caller_filter, checked_question};
use crate::http::auth::{Caller, Scope};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::ops::batches::store::BatchItem;
use crate::ops::batches::{SubmitError, Submitter};

/// The longest `custom_id`, in characters.
const MAX_CUSTOM_ID_CHARS: usize = 256;

/// A JSON batch body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatchBody {
    /// Read one by one, so an error names the request.
    requests: Vec<Value>,
    #[serde(default)]
    metadata: Value,
}

/// One request of a batch, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatchRequest {
    custom_id: String,
    question: String,
    filters: Option<AskFilters>,
    #[serde(default)]
    mode: Mode,
}

/// Where a request sits in the body, for messages: `requests[3]` or `line 4`.
fn position(ndjson: bool, i: usize, line: usize) -> String {
    if ndjson {
        format!("line {line}")
    } else {
        format!("requests[{i}]")
    }
}

fn in_batch(at: String, inner: ApiError) -> ApiError {
    ApiError::InBatch {
        at,
        inner: Box::new(inner),
    }
}

/// The body's requests with where each sat (`requests[i]` or `line n`), and its metadata.
fn parse_body(bytes: &[u8], ndjson: bool) -> Result<(Vec<(String, Value)>, Value), ApiError> {
    if !ndjson {
        let body: RawBatchBody = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_data() {
                ApiError::InvalidRequest(e.to_string())
            } else {
                ApiError::InvalidJson(e.to_string())
            }
        })?;
        let requests = body.requests.into_iter().enumerate();
        let requests = requests.map(|(i, v)| (position(false, i, 0), v)).collect();
        return Ok((requests, body.metadata));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::InvalidJson(format!("the body is not UTF-8: {e}")))?;
    let mut requests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = position(true, 0, i + 1);
        let value: Value = serde_json::from_str(line)
            .map_err(|e| in_batch(at.clone(), ApiError::InvalidJson(e.to_string())))?;
        requests.push((at, value));
    }
    Ok((requests, Value::Null))
}

/// Checks every request as `/ask` checks its body: custom ids present and unique, questions
/// and filters valid for `caller`.
fn check_requests(
    engine: &Engine,
    caller: &Caller,
    requests: Vec<(String, Value)>,
) -> Result<Vec<BatchItem>, ApiError> {
    let limits = &engine.config.batches;
    if requests.is_empty() {
        return Err(ApiError::EmptyBatch);
    }
    if requests.len() > limits.max_requests {
        return Err(ApiError::BatchTooManyRequests {
            count: requests.len(),
            limit: limits.max_requests,
        });
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut items = Vec::with_capacity(requests.len());
    for (at, value) in requests {
        let raw: RawBatchRequest = serde_json::from_value(value)
            .map_err(|e| in_batch(at.clone(), ApiError::InvalidRequest(e.to_string())))?;
        let chars = raw.custom_id.chars().count();
        if raw.custom_id.trim().is_empty() || chars > MAX_CUSTOM_ID_CHARS {
            let message = format!(
                "`custom_id` must be 1 to {MAX_CUSTOM_ID_CHARS} characters, not blank; it names the request's result"
            );
            return Err(in_batch(at, ApiError::InvalidRequest(message)));
        }
        if let Some(first) = seen.insert(raw.custom_id.clone(), at.clone()) {
            return Err(ApiError::DuplicateCustomId {
                custom_id: raw.custom_id,
                first,
                again: at,
            });
        }
        items.push(check_request(engine, caller, raw).map_err(|e| in_batch(at, e))?);
    }
    Ok(items)
}

/// One request checked for `caller`: its question and filters as `/ask` checks them.
fn check_request(
    engine: &Engine,
    caller: &Caller,
    raw: RawBatchRequest,
) -> Result<BatchItem, ApiError> {
    let question = checked_question(engine, &raw.question)?;
    let filter = caller_filter(engine, caller, raw.filters)?;
    let (updated_after, updated_before) = match filter.updated {
        Some(range) => (range.from, range.to),
        None => (None, None),
    };
    Ok(BatchItem {
        custom_id: raw.custom_id,
        question,
        sources: filter.sources,
        metadata: filter.metadata,
        updated_after,
        updated_before,
        mode: raw.mode,
    })
}

/// Whether the body is JSON lines (`application/x-ndjson` or `application/jsonl`), JSON, or
/// neither (415).
fn is_ndjson(headers: &HeaderMap) -> Result<bool, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or_default().trim();
    match essence {
        "application/x-ndjson" | "application/jsonl" => Ok(true),
        "application/json" => Ok(false),
        _ => Err(ApiError::UnsupportedBatchMediaType),
    }
}

/// `POST /batches`: checks and queues a batch; `202 {"id", "state": "queued", "total"}`.
pub(super) async fn create_batch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let ndjson = is_ndjson(&headers)?;
    let limit = s.batches.settings().max_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::BatchTooLarge { limit })?;
    let (requests, metadata) = parse_body(&bytes, ndjson)?;
    let items = check_requests(&s.engine, &caller, requests)?;
    let budget_key = budget_key_with_room(&s.engine, &caller)?;
    let who = Submitter {
        name: caller.name.clone(),
        groups: caller.groups.clone(),
        budget_key,
    };
    let batch = s
        .batches
        .submit(&who, items, metadata)
        .await
        .map_err(|e| match e {
            SubmitError::TooManyActive(limit) => ApiError::TooManyBatches(limit),
            SubmitError::Store(e) => internal(e),
        })?;
    let location = format!("/batches/{}", batch.id);
    let body = json!({"id": batch.id, "state": batch.state, "total": batch.total});
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "batch store failed");
    ApiError::Internal
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("batch `{id}`"))
}

/// `GET /batches/{id}`: state and counts.
pub(super) async fn get_batch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let batch = s.batches.get(&id, &caller.name).map_err(internal)?;
    let batch = batch.ok_or_else(|| not_found(&id))?;
    Ok(Json(batch.view()).into_response())
}

/// `GET /batches/{id}/results`: one JSON line per finished request, in request order.
pub(super) async fn batch_results(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let results = s.batches.results(&id, &caller.name).map_err(internal)?;
    let results = results.ok_or_else(|| not_found(&id))?;
    let mut body = String::new();
    for r in &results {
        body.push_str(&serde_json::to_string(r).map_err(internal)?);
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// `DELETE /batches/{id}`: cancels the requests not started; the batch as it is then.
pub(super) async fn cancel_batch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let batch = s.batches.cancel(&id, &caller.name).map_err(internal)?;
    let batch = batch.ok_or_else(|| not_found(&id))?;
    Ok(Json(batch.view()).into_response())
}
