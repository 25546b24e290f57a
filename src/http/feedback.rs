//! Feedback on answers: `POST /feedback`, where the caller that received an answer rates it
//! (`up` / `down`, a comment, the documents that should have answered), and the admin view:
//! `GET /admin/feedback` (recent down ratings, counts per time bucket) and
//! `GET /admin/feedback/export` (the golden questions `cairn feedback export` writes).
//! [`create`] is the one place a rating is stored.
//!
//! Who may rate: the key the answer's trace names, or a caller owning the thread whose turn
//! holds the trace (how anonymous callers show they received the answer); anyone else gets
//! the 404 of a trace that does not exist.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::engine::Engine;
use crate::http::auth::{Caller, Scope};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::observe::feedback::{
    BucketSize, Feedback, MAX_COMMENT_CHARS, MAX_CORRECT_SOURCES, Rating, buckets, golden,
};
use crate::observe::trace::Trace;

/// `POST /feedback`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    pub trace_id: String,
    pub rating: Rating,
    #[serde(default)]
    pub comment: Option<String>,
    /// Document ids that answer the question (as citations and hits name them).
    #[serde(default)]
    pub correct_sources: Vec<String>,
    /// The thread the answer belongs to: how an anonymous caller shows it received it.
    #[serde(default)]
    pub thread_id: Option<String>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "feedback store failed");
    ApiError::Internal
}

/// Runs blocking store or index work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

/// The body's own limits: a trace id, the comment's length, how many sources.
fn check_body(body: &mut FeedbackBody) -> Result<(), ApiError> {
    if body.trace_id.trim().is_empty() {
        return Err(ApiError::InvalidRequest(
            "`trace_id` is empty: send the trace_id of the answer's `done` event or JSON body"
                .into(),
        ));
    }
    body.comment = body.comment.take().filter(|c| !c.trim().is_empty());
    if let Some(chars) = body.comment.as_ref().map(|c| c.chars().count())
        && chars > MAX_COMMENT_CHARS
    {
        return Err(ApiError::CommentTooLong {
            chars,
            limit: MAX_COMMENT_CHARS,
        });
    }
    if body.correct_sources.len() > MAX_CORRECT_SOURCES {
        return Err(ApiError::InvalidRequest(format!(
            "`correct_sources` names {} documents; the limit is {MAX_CORRECT_SOURCES}: keep the ones that answer the question",
            body.correct_sources.len()
        )));
    }
    Ok(())
}

/// The trace `body` rates, when `caller` received its answer; otherwise the 404 of an
/// unknown trace (so other callers' trace ids cannot be probed).
fn rated_trace(engine: &Engine, body: &FeedbackBody, caller: &Caller) -> Result<Trace, ApiError> {
    let not_found = || ApiError::NotFound(format!("trace `{}`", body.trace_id));
    let trace = engine.traces.get(&body.trace_id).ok_or_else(not_found)?;
    if !caller.anonymous && trace.caller == caller.name {
        return Ok(trace);
    }
    let Some(thread_id) = &body.thread_id else {
        return Err(not_found());
    };
    let thread = match crate::http::threads::owned(engine, thread_id, caller) {
        Ok(t) => t,
        Err(ApiError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e),
    };
    if thread.turns.iter().any(|t| t.trace_id == trace.id) {
        Ok(trace)
    } else {
        Err(not_found())
    }
}

/// Refuses `ids` naming a document that is not indexed or that `groups` may not read (both
/// alike, so restricted documents cannot be probed).
fn check_documents(engine: &Engine, ids: &[String], groups: &[String]) -> Result<(), ApiError> {
    let mut unknown = Vec::new();
    for id in ids {
        let readable = match engine.index.document(id).map_err(internal)? {
            Some(doc) => {
                doc.access_groups.is_empty() || doc.access_groups.iter().any(|g| groups.contains(g))
            }
            None => false,
        };
        if !readable {
            unknown.push(format!("`{}`", id.chars().take(200).collect::<String>()));
        }
    }
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::UnknownDocument(unknown.join(", ")))
    }
}

/// The record of `body` by `caller` rating `trace`.
fn record(body: FeedbackBody, caller: &Caller, trace: Trace) -> Feedback {
    Feedback {
        trace_id: trace.id,
        rating: body.rating,
        comment: body.comment,
        correct_sources: body.correct_sources,
        at: chrono::Utc::now().to_rfc3339(),
        caller: caller.name.clone(),
        thread_id: body.thread_id,
        groups: caller.groups.clone(),
        answered_at: trace.at,
        outcome: trace.outcome,
        question: trace.question,
        answer: trace.answer,
        cited: trace.cited,
    }
}

/// Stores a rating (replacing an earlier one of the same trace) and counts it: the one place
/// a feedback is created. Whether one was replaced.
pub async fn create(engine: &Arc<Engine>, feedback: &Feedback) -> Result<bool, ApiError> {
    let (e, f) = (engine.clone(), feedback.clone());
    let replaced = blocking(move || e.feedback().and_then(|s| s.put(&f)).map_err(internal)).await?;
    metrics::counter!(crate::observe::metrics::FEEDBACK, "rating" => feedback.rating.label())
        .increment(1);
    engine
        .webhooks
        .emit("feedback.created", feedback_event(feedback, replaced));
    Ok(replaced)
}

/// The `feedback.created` webhook's data: the rating as stored (question and answer text only
/// when the trace kept them) without the caller's access groups, and whether it replaced one.
fn feedback_event(feedback: &Feedback, replaced: bool) -> serde_json::Value {
    let mut data = json!(feedback);
    if let Some(fields) = data.as_object_mut() {
        fields.remove("groups");
    }
    data["replaced"] = json!(replaced);
    data
}

/// `POST /feedback`: 201 with the stored rating and whether it replaced one.
pub(super) async fn post_feedback(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<FeedbackBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let Json(mut body) = body?;
    check_body(&mut body)?;
    let trace = rated_trace(&s.engine, &body, &caller)?;
    let (engine, ids, groups) = (
        s.engine.clone(),
        body.correct_sources.clone(),
        caller.groups.clone(),
    );
    blocking(move || check_documents(&engine, &ids, &groups)).await?;
    let feedback = record(body, &caller, trace);
    let replaced = create(&s.engine, &feedback).await?;
    let mut shown = json!(feedback);
    shown["replaced"] = json!(replaced);
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

/// `GET /admin/feedback`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFeedbackParams {
    /// Down ratings listed, newest first (default 50, at most 1000).
    pub limit: Option<usize>,
    /// `hour` or `day` (default).
    pub bucket: Option<BucketSize>,
    /// How many buckets, ending with the current one (default 48 hours or 30 days).
    pub buckets: Option<usize>,
}

async fn all_feedback(engine: &Arc<Engine>) -> Result<Vec<Feedback>, ApiError> {
    let e = engine.clone();
    blocking(move || e.feedback().and_then(|s| s.all()).map_err(internal)).await
}

/// `GET /admin/feedback`: totals, the recent down ratings with question, answer (when traces
/// keep text), cited sources and comment, and the ratings per time bucket.
pub(super) async fn admin_feedback(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<AdminFeedbackParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    s.authorize_scope(&headers, Scope::Admin)?;
    let Query(p) = params.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let size = p.bucket.unwrap_or(BucketSize::Day);
    let default_n = match size {
        BucketSize::Hour => 48,
        BucketSize::Day => 30,
    };
    let n = p.buckets.unwrap_or(default_n).clamp(1, 1000);
    let all = all_feedback(&s.engine).await?;
    let up = all.iter().filter(|f| f.rating == Rating::Up).count();
    let recent_down: Vec<&Feedback> = all
        .iter()
        .rev()
        .filter(|f| f.rating == Rating::Down)
        .take(p.limit.unwrap_or(50).min(1000))
        .collect();
    Ok(Json(json!({
        "totals": {"up": up, "down": all.len() - up},
        "record_text": s.engine.traces.record_text(),
        "recent_down": recent_down,
        "bucket": size,
        "buckets": buckets(&all, size, n, chrono::Utc::now()),
    }))
    .into_response())
}

/// `GET /admin/feedback/export`: the golden questions of `cairn feedback export` as JSON
/// lines; headers say how many ratings were left out and why.
pub(super) async fn admin_feedback_export(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize_scope(&headers, Scope::Admin)?;
    let export = golden(&all_feedback(&s.engine).await?);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (
                header::HeaderName::from_static("cairn-skipped-without-question"),
                export.without_question.to_string(),
            ),
            (
                header::HeaderName::from_static("cairn-skipped-without-sources"),
                export.without_sources.to_string(),
            ),
        ],
        export.jsonl(),
    )
        .into_response())
}
