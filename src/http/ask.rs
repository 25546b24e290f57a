//! `POST /ask`: the answer pipeline as server-sent events (or one JSON body with
//! `stream: false`, never a 200 when the answer ended with an error), and what
//! `/v1/chat/completions` shares: the request checks and the answer task, whose panic is
//! caught and still ends the request with one terminal event and one trace.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use cairn_index::{Filter, TimeRange};

use crate::agent::settings::{AgentBudget, BudgetRequest};
use crate::answer::events::{
    AnswerEvent, AskRequest, Citation, Mode, ModeView, StepView, UsageView,
};
use crate::answer::handoff::{self, Handoff};
use crate::answer::load::Lane;
use crate::engine::Engine;
use crate::http::auth::{Caller, Scope};
use crate::http::error::ApiError;
use crate::http::search::check_sources;
use crate::http::state::AppState;
use crate::http::threads;
use crate::observe::trace::Trace;
use crate::providers::{Message, Role};
use crate::retrieval::HitView;

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
    /// `user` or `assistant`; anything else is refused by [`checked_conversation`] with the
    /// turn's place (400 `invalid_role`).
    pub role: String,
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
    /// Continue this thread (its turns come before `conversation`); without it a new one
    /// starts.
    pub thread_id: Option<String>,
    /// `agent` runs the tool loop (`[agent]`).
    #[serde(default)]
    pub mode: Mode,
    /// Agent mode's limits for this request, each at most the `[agent]` one.
    pub agent: Option<BudgetRequest>,
}

/// The non-streaming `/ask` response.
#[derive(Debug, Serialize, Default)]
pub struct AskResponse {
    pub answer: String,
    pub citations: Vec<Citation>,
    pub retrieval: Vec<HitView>,
    /// The query retrieval ran on (`[retrieval] condense`).
    pub query: Option<String>,
    pub usage: Option<UsageView>,
    pub trace_id: Option<String>,
    /// The thread this answer was appended to (`/ask`; continue it with `thread_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    pub outcome: Option<String>,
    /// Whether a human should take over, and why (`null` when the answer stands).
    pub handoff: Option<Handoff>,
    /// `rag` or `agent`, with an agent run's step count and the limit that stopped it.
    #[serde(flatten)]
    pub mode: Option<ModeView>,
    /// Agent mode: the tool calls, in order (the `step` events).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepView>,
    /// The error that ended the answer (`cairn ask --json` shows it; over HTTP an answer that
    /// ended with one is not a 200, see [`AskResponse::completed`]).
    pub error: Option<serde_json::Value>,
    #[serde(skip)]
    failed: Option<(&'static str, String)>,
    /// A terminal event (`done` or `error`) arrived; later events are ignored.
    #[serde(skip)]
    ended: bool,
}

impl AskResponse {
    pub fn apply(&mut self, ev: AnswerEvent) {
        if self.ended {
            return;
        }
        self.ended = is_terminal(&ev);
        match ev {
            AnswerEvent::Retrieval { query, hits } => {
                self.query = Some(query);
                self.retrieval = hits;
            }
            AnswerEvent::Step(s) => self.steps.push(s),
            AnswerEvent::Token(t) => self.answer.push_str(&t),
            AnswerEvent::Citation(c) => self.citations.push(c),
            AnswerEvent::Usage(u) => self.usage = Some(u),
            AnswerEvent::Done {
                trace_id,
                outcome,
                handoff,
                mode,
                ..
            } => {
                self.trace_id = Some(trace_id);
                self.outcome = Some(outcome.to_string());
                self.handoff = handoff;
                self.mode = Some(mode);
            }
            AnswerEvent::Error { code, message } => {
                self.error = Some(json!({"code": code, "message": message}));
                self.failed = Some((code, message));
            }
        }
    }

    /// The answer when it completed; otherwise the error that ended it, carrying what the
    /// client can still show: the part of the answer shown before the failure (or
    /// `fallback_text` when there was none), its citations and the retrieved sources.
    pub fn completed(self, fallback_text: &str) -> Result<AskResponse, ApiError> {
        let Some((code, message)) = self.failed else {
            return Ok(self);
        };
        let answer = if self.answer.trim().is_empty() {
            fallback_text
        } else {
            &self.answer
        };
        Err(ApiError::AnswerFailed {
            code,
            message,
            fallback: json!({
                "answer": answer,
                "citations": self.citations,
                "retrieval": self.retrieval,
                "query": self.query,
                "handoff": handoff::of_error(code),
            }),
        })
    }
}

/// Whether `ev` ends an answer (`done` or `error`): exactly one is shown per request.
pub(super) fn is_terminal(ev: &AnswerEvent) -> bool {
    matches!(ev, AnswerEvent::Done { .. } | AnswerEvent::Error { .. })
}

/// Ends `events` after its first terminal event, so a client never sees two.
pub(super) fn until_terminal(
    events: impl futures::Stream<Item = AnswerEvent>,
) -> impl futures::Stream<Item = AnswerEvent> {
    events.scan(false, |ended, ev| {
        let next = (!*ended).then(|| {
            *ended = is_terminal(&ev);
            ev
        });
        futures::future::ready(next)
    })
}

/// Validates an `/ask` body for `caller`, refuses it when the caller's `[budget]` allowance is
/// spent, and builds the pipeline request.
pub fn validate_ask(
    engine: &Engine,
    body: AskBody,
    caller: &Caller,
) -> Result<(AskRequest, bool), ApiError> {
    let question = checked_question(engine, &body.question)?;
    let top_k = body.top_k.unwrap_or(engine.config.retrieval.top_k);
    if top_k == 0 || top_k > 50 {
        return Err(ApiError::InvalidRequest(
            "`top_k` must be between 1 and 50".into(),
        ));
    }
    let filter = caller_filter(engine, caller, body.filters)?;
    // Refuse before retrieval so the status says it; a cap reached while this answer is
    // being prepared still ends it with an in-stream `budget_exhausted` error.
    let budget_key = budget_key_with_room(engine, caller)?;
    let conversation = checked_conversation(engine, body.conversation)?;
    let agent = agent_budget(engine, body.mode, body.agent)?;
    Ok((
        AskRequest {
            question,
            filter,
            top_k,
            conversation,
            budget_key: Some(budget_key),
            thread_id: None,
            agent,
        },
        body.stream.unwrap_or(true),
    ))
}

/// Agent mode's budget for this request: the `[agent]` one, narrowed by the body's `agent`
/// limits (none may exceed it); `None` in RAG mode, where `agent` limits are refused.
fn agent_budget(
    engine: &Engine,
    mode: Mode,
    limits: Option<BudgetRequest>,
) -> Result<Option<AgentBudget>, ApiError> {
    match mode {
        Mode::Rag if limits.is_some() => Err(ApiError::InvalidRequest(
            "`agent` limits apply only with `\"mode\": \"agent\"`; add it or leave `agent` out"
                .into(),
        )),
        Mode::Rag => Ok(None),
        Mode::Agent => engine
            .config
            .agent
            .budget
            .narrowed(&limits.unwrap_or_default())
            .map(Some)
            .map_err(ApiError::AgentBudgetTooHigh),
    }
}

/// `caller`'s `[budget]` bucket ([`budget_key`]) when it has room for one more answer; 429
/// `budget_exhausted` when it has not.
pub(super) fn budget_key_with_room(engine: &Engine, caller: &Caller) -> Result<String, ApiError> {
    let key = budget_key(caller);
    engine
        .router
        .budget
        .check(Some(crate::answer::prompt::ANSWER_MAX_TOKENS), Some(&key))
        .map_err(ApiError::BudgetExhausted)?;
    Ok(key)
}

/// The `[budget]` bucket `caller` is charged in: keys by name; anonymous callers share one
/// bucket (a name no key can have, because key buckets are prefixed).
pub(super) fn budget_key(caller: &Caller) -> String {
    if caller.anonymous {
        "anonymous".to_string()
    } else {
        format!("key:{}", caller.name)
    }
}

/// The conversation as messages: user and assistant turns only (400 `invalid_role` naming
/// the turn), within `[server] max_conversation_turns` and `max_conversation_chars`.
fn checked_conversation(engine: &Engine, turns: Vec<Turn>) -> Result<Vec<Message>, ApiError> {
    let server = &engine.config.server;
    let too_long = |what, key, value, limit| {
        Err(ApiError::ConversationTooLong {
            what,
            key,
            value,
            limit,
        })
    };
    if turns.len() > server.max_conversation_turns {
        let (n, limit) = (turns.len(), server.max_conversation_turns);
        return too_long("turns", "max_conversation_turns", n, limit);
    }
    let chars: usize = turns.iter().map(|t| t.content.chars().count()).sum();
    if chars > server.max_conversation_chars {
        let limit = server.max_conversation_chars;
        return too_long("characters", "max_conversation_chars", chars, limit);
    }
    turns
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let role = match t.role.as_str() {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    let shown: String = other.chars().take(40).collect();
                    return Err(ApiError::InvalidRole(format!(
                        "`conversation[{i}].role` is `{shown}`; a conversation holds `user` and `assistant` turns only: put instructions in the question"
                    )));
                }
            };
            Ok(Message {
                role,
                content: t.content,
            })
        })
        .collect()
}

/// The question, trimmed: not empty, within `[server] max_question_chars`, no control
/// characters.
pub(super) fn checked_question(engine: &Engine, question: &str) -> Result<String, ApiError> {
    let question = question.trim().to_string();
    if question.is_empty() {
        return Err(ApiError::EmptyQuery(
            "`question` is empty or only whitespace; send the question to answer".into(),
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
    Ok(question)
}

/// The caller's access groups plus the body's filters (sources must exist and be readable by
/// the caller).
pub(super) fn caller_filter(
    engine: &Engine,
    caller: &Caller,
    filters: Option<AskFilters>,
) -> Result<Filter, ApiError> {
    let mut filter = Filter {
        caller_groups: caller.groups.clone(),
        ..Filter::default()
    };
    if let Some(f) = filters {
        check_sources(engine, &caller.groups, &f.source)?;
        filter.sources = f.source;
        filter.metadata = f.metadata;
        if f.updated_after.is_some() || f.updated_before.is_some() {
            filter.updated = Some(TimeRange {
                from: f.updated_after,
                to: f.updated_before,
            });
        }
    }
    Ok(filter)
}

fn sse_event(id: usize, ev: &AnswerEvent, thread_id: &str) -> Event {
    let (name, data) = match ev {
        AnswerEvent::Retrieval { query, hits } => {
            ("retrieval", json!({"query": query, "hits": hits}))
        }
        AnswerEvent::Step(s) => ("step", json!(s)),
        AnswerEvent::Token(t) => ("token", json!({"text": t})),
        AnswerEvent::Citation(c) => ("citation", json!(c)),
        AnswerEvent::Usage(u) => ("usage", json!(u)),
        AnswerEvent::Done {
            trace_id,
            outcome,
            dropped_citations,
            handoff,
            mode,
        } => {
            let mut done = json!({"trace_id": trace_id, "outcome": outcome, "dropped_citations": dropped_citations, "handoff": handoff, "thread_id": thread_id});
            if let (Some(d), Value::Object(m)) = (done.as_object_mut(), json!(mode)) {
                d.extend(m);
            }
            ("done", done)
        }
        AnswerEvent::Error { code, message } => (
            "error",
            json!({"code": code, "message": message, "handoff": handoff::of_error(code)}),
        ),
    };
    Event::default()
        .id(id.to_string())
        .event(name)
        .data(data.to_string())
}

/// Runs the answer pipeline for `req` on its own task; its events arrive on the returned
/// channel. A panic in the pipeline still ends the request with one `internal` error event and
/// one trace.
pub(super) fn start_answer(
    s: &AppState,
    req: AskRequest,
    caller: String,
    route: &'static str,
) -> mpsc::Receiver<AnswerEvent> {
    let (tx, rx) = mpsc::channel::<AnswerEvent>(64);
    let engine = s.engine.clone();
    let panics = s.answer_panics(&req.question);
    let thread_id = req.thread_id.clone();
    let task = {
        let (engine, caller, tx) = (engine.clone(), caller.clone(), tx.clone());
        tokio::spawn(async move {
            if panics {
                panic!("injected answer panic (test hook)");
            }
            let from = crate::agent::Origin {
                caller,
                http_route: Some(route),
                lane: Lane::Interactive,
            };
            crate::agent::answer_as(engine, req, from, tx).await
        })
    };
    tokio::spawn(supervise(task, engine, (caller, thread_id), route, tx));
    rx
}

/// Waits for an answer task; if it panicked (before its terminal event and trace), tells the
/// client with an `internal` error and records the trace the task could not.
async fn supervise(
    task: tokio::task::JoinHandle<()>,
    engine: Arc<Engine>,
    (caller, thread_id): (String, Option<String>),
    route: &'static str,
    tx: mpsc::Sender<AnswerEvent>,
) {
    let started = std::time::Instant::now();
    let Err(e) = task.await else { return };
    if !e.is_panic() {
        return; // cancelled: the runtime is shutting down
    }
    tracing::error!(
        http_route = route,
        "the answer task panicked; the request ends with an internal error"
    );
    let _ = tx
        .send(AnswerEvent::Error {
            code: "internal",
            message: "An internal error occurred; the operator can find details in the server log."
                .into(),
        })
        .await;
    crate::observe::metrics::request("ask", "internal", started.elapsed().as_secs_f64());
    engine.traces.push(Trace {
        id: uuid::Uuid::new_v4().to_string(),
        at: Utc::now().to_rfc3339(),
        route: engine.config.answer.route.clone(),
        http_route: Some(route.to_string()),
        caller,
        thread_id,
        prompt_version: engine.prompt.version.clone(),
        outcome: "internal".into(),
        ..Trace::default()
    });
}

/// An answer started in a thread: its events (each completed answer is appended to the
/// thread as it passes), the thread's id, and whether the caller asked for a stream.
pub(super) struct Threaded {
    pub rx: mpsc::Receiver<AnswerEvent>,
    pub thread_id: String,
    pub stream: bool,
}

/// Checks `body` for `caller` and starts its answer on `route` in the thread it names (404
/// unless the caller owns it and it has not expired) or in a new one: the thread's stored turns
/// come before the body's own conversation.
pub(super) fn start_in_thread(
    s: &AppState,
    mut body: AskBody,
    caller: &Caller,
    route: &'static str,
) -> Result<Threaded, ApiError> {
    let thread_id = body.thread_id.take();
    let (mut req, stream) = validate_ask(&s.engine, body, caller)?;
    let (thread_id, thread) = threads::open(&s.engine, thread_id, caller)?;
    let max_messages = s.engine.config.server.max_conversation_turns;
    let mut conversation = thread.messages(max_messages);
    conversation.append(&mut req.conversation);
    req.conversation = conversation;
    req.thread_id = Some(thread_id.clone());
    let question = req.question.clone();
    let rx = start_answer(s, req, caller.name.clone(), route);
    let rx = threads::recording(s.engine.clone(), (thread_id.clone(), thread), question, rx);
    Ok(Threaded {
        rx,
        thread_id,
        stream,
    })
}

pub(super) async fn ask(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<AskBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let Json(body) = body?;
    let Threaded {
        rx,
        thread_id,
        stream,
    } = start_in_thread(&s, body, &caller, "/ask")?;
    let header = [(threads::THREAD_HEADER, thread_id.clone())];
    if stream {
        let tid = thread_id.clone();
        let events = until_terminal(ReceiverStream::new(rx))
            .enumerate()
            .map(move |(i, ev)| Ok::<Event, Infallible>(sse_event(i + 1, &ev, &tid)));
        let keep_alive = KeepAlive::new()
            .interval(Duration::from_secs(
                s.engine.config.server.keep_alive_secs.max(1),
            ))
            .text("keep-alive");
        Ok((header, Sse::new(events).keep_alive(keep_alive)).into_response())
    } else {
        let mut resp = AskResponse::default();
        let mut rx = rx;
        while let Some(ev) = rx.recv().await {
            resp.apply(ev);
        }
        resp.thread_id = Some(thread_id);
        let resp = resp.completed(&s.engine.config.answer.fallback_text)?;
        Ok((header, Json(resp)).into_response())
    }
}
