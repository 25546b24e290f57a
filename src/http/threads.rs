//! Threads: a conversation cairn keeps, so a bot may send only the new question.
//! `thread_id` on `/ask` continues one (without it a new one starts); every completed answer
//! is appended; `GET /threads/{id}` shows the turns and `DELETE /threads/{id}` erases them. A
//! thread belongs to the caller that started it (anonymous ones to anonymous callers, through
//! their id); any other caller gets 404.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::answer::events::AnswerEvent;
use crate::engine::Engine;
use crate::http::auth::{Caller, Scope};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::providers::{Message, Role};

/// One answered question of a thread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreadTurn {
    pub question: String,
    pub answer: String,
    pub citations: Vec<Value>,
    pub trace_id: String,
}

/// A stored thread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Thread {
    /// The caller's key name that started it.
    pub owner: String,
    pub created_at: String,
    pub turns: Vec<ThreadTurn>,
}

impl Thread {
    /// The turns as conversation messages, at most the newest `max_turns` messages.
    pub fn messages(&self, max_turns: usize) -> Vec<Message> {
        let all: Vec<Message> = self
            .turns
            .iter()
            .flat_map(|t| {
                [
                    Message {
                        role: Role::User,
                        content: t.question.clone(),
                    },
                    Message {
                        role: Role::Assistant,
                        content: t.answer.clone(),
                    },
                ]
            })
            .collect();
        all[all.len().saturating_sub(max_turns)..].to_vec()
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("thread `{id}`"))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "thread store failed");
    ApiError::Internal
}

/// Thread `id` when `caller` owns it; 404 when absent or another caller's.
pub(super) fn owned(engine: &Engine, id: &str, caller: &Caller) -> Result<Thread, ApiError> {
    let bytes = engine.threads().map_err(internal)?;
    let Some(bytes) = bytes.get(id).map_err(internal)? else {
        return Err(not_found(id));
    };
    let thread: Thread = serde_json::from_slice(&bytes).map_err(internal)?;
    if thread.owner != caller.name {
        return Err(not_found(id));
    }
    Ok(thread)
}

/// The thread an `/ask` continues (`thread_id`), or a new one for `caller`: its id and turns.
pub fn open(
    engine: &Engine,
    thread_id: Option<String>,
    caller: &Caller,
) -> Result<(String, Thread), ApiError> {
    match thread_id {
        Some(id) => Ok((id.clone(), owned(engine, &id, caller)?)),
        None => Ok((
            uuid::Uuid::new_v4().to_string(),
            Thread {
                owner: caller.name.clone(),
                created_at: chrono::Utc::now().to_rfc3339(),
                turns: Vec::new(),
            },
        )),
    }
}

/// Relays an answer's events and, when it completes (`done`), appends it to the thread; a
/// client that leaves ends the relay (and so the answer).
pub fn recording(
    engine: Arc<Engine>,
    (id, mut thread): (String, Thread),
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
                    thread.turns.push(turn.clone());
                    if let Err(e) = store(&engine, &id, &thread) {
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

fn store(engine: &Engine, id: &str, thread: &Thread) -> anyhow::Result<()> {
    engine.threads()?.put(id, &serde_json::to_vec(thread)?)?;
    Ok(())
}

/// `GET /threads/{id}`: the turns with their citations and trace ids.
pub(super) async fn get_thread(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let thread = owned(&s.engine, &id, &caller)?;
    Ok(
        Json(json!({"thread_id": id, "created_at": thread.created_at, "turns": thread.turns}))
            .into_response(),
    )
}

/// `DELETE /threads/{id}`: erases the thread's text from the store, and from the ratings of
/// its answers (204).
pub(super) async fn delete_thread(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let thread = owned(&s.engine, &id, &caller)?;
    s.engine
        .threads()
        .map_err(internal)?
        .remove(&id)
        .map_err(internal)?;
    let traces: Vec<String> = thread.turns.into_iter().map(|t| t.trace_id).collect();
    s.engine
        .feedback()
        .and_then(|f| f.erase_text(&traces))
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
