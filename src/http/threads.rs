//! Threads on the HTTP surface: `thread_id` on `/ask` and `/v1/chat/completions` continues one
//! (without it a new one starts); every completed answer is appended; `GET /threads/{id}` shows
//! the turns and `DELETE /threads/{id}` erases them and their traces' text. A thread belongs to
//! the caller that started it (anonymous ones to anonymous callers, through their id); any
//! other caller gets 404, as for an expired thread. What a thread is and where it is kept:
//! [`crate::answer::threads`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;

use crate::answer::events::AnswerEvent;
use crate::answer::threads::{Thread, ThreadTurn, Threads};
use crate::engine::Engine;
use crate::http::auth::{Caller, Scope};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// The response header naming the thread an answer belongs to.
pub const THREAD_HEADER: &str = "cairn-thread-id";

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("thread `{id}`"))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "thread store failed");
    ApiError::Internal
}

fn threads(engine: &Engine) -> Result<Arc<Threads>, ApiError> {
    engine.threads().map_err(internal)
}

/// Thread `id` when `caller` owns it; 404 when absent, expired or another caller's.
pub(super) fn owned(engine: &Engine, id: &str, caller: &Caller) -> Result<Thread, ApiError> {
    threads(engine)?
        .load(id, &caller.name)
        .map_err(internal)?
        .ok_or_else(|| not_found(id))
}

/// The thread an answer continues (`thread_id`), or a new one for `caller`: its id and turns.
pub fn open(
    engine: &Engine,
    thread_id: Option<String>,
    caller: &Caller,
) -> Result<(String, Thread), ApiError> {
    match thread_id {
        Some(id) => Ok((id.clone(), owned(engine, &id, caller)?)),
        None => Ok(threads(engine)?.start(&caller.name)),
    }
}

/// Relays an answer's events and, when it completes (`done`), appends it to the thread; a
/// client that leaves ends the relay (and so the answer).
pub fn recording(
    engine: Arc<Engine>,
    (id, thread): (String, Thread),
    question: String,
    mut rx: mpsc::Receiver<AnswerEvent>,
) -> mpsc::Receiver<AnswerEvent> {
    let (tx, out) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut turn = ThreadTurn {
            question,
            answer: String::new(),
            citations: Vec::new(),
            trace_id: String::new(),
        };
        // A client that leaves drops `out`: stop relaying so the pipeline sees it gone too.
        loop {
            let next = tokio::select! {
                ev = rx.recv() => ev,
                _ = tx.closed() => None,
            };
            let Some(ev) = next else { break };
            match &ev {
                AnswerEvent::Token(t) => turn.answer.push_str(t),
                AnswerEvent::Citation(c) => turn.citations.push(json!(c)),
                AnswerEvent::Done { trace_id, .. } => {
                    turn.trace_id = trace_id.clone();
                    let appended = threads(&engine)
                        .map_err(|e| e.to_string())
                        .and_then(|t| t.append(&id, &thread, turn.clone()));
                    if let Err(e) = appended {
                        tracing::error!(error = %e, thread = %id, "the thread could not be saved");
                    }
                }
                _ => {}
            }
            if tx.send(ev).await.is_err() {
                break;
            }
        }
    });
    out
}

/// `GET /threads/{id}`: the turns with their citations and trace ids.
pub(super) async fn get_thread(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let thread = owned(&s.engine, &id, &caller)?;
    Ok(Json(json!({
        "thread_id": id,
        "created_at": thread.created_at,
        "last_active": thread.active_at(),
        "turns": thread.turns,
    }))
    .into_response())
}

/// `DELETE /threads/{id}`: erases the thread from the store, the question, query and
/// answer text of its turns' traces, and the text of its answers' ratings (204).
pub(super) async fn delete_thread(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let thread = owned(&s.engine, &id, &caller)?;
    threads(&s.engine)?.erase(&id).map_err(internal)?;
    let turn_traces: Vec<&str> = thread.turns.iter().map(|t| t.trace_id.as_str()).collect();
    s.engine.traces.erase_text(|t| {
        t.thread_id.as_deref() == Some(id.as_str()) || turn_traces.contains(&t.id.as_str())
    });
    let traces: Vec<String> = thread.turns.into_iter().map(|t| t.trace_id).collect();
    s.engine
        .feedback()
        .and_then(|f| f.erase_text(&traces))
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
