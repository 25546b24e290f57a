//! `POST /v1/chat/completions`: the RAG pipeline behind the OpenAI Chat Completions shape, so
//! OpenAI SDKs and bot frameworks can use cairn unchanged. The last user message is the
//! question, earlier turns are the conversation. Citations ride in an extra top-level
//! `citations` field (on the final chunk when streaming); clients that do not know it ignore it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::answer::answer_on;
use crate::answer::events::AnswerEvent;
use crate::http::ask::{AskBody, AskResponse, Turn, validate_ask};
use crate::http::auth::Scope;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::providers::Role;

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A string, or an array of `{type: "text", text}` parts.
    pub content: Value,
}

/// The accepted subset of the OpenAI request; unknown fields (temperature, user, …) are
/// accepted and ignored, as OpenAI-compatible servers commonly do.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn to_ask(req: &ChatCompletionRequest) -> Result<AskBody, ApiError> {
    let last_user = req
        .messages
        .iter()
        .rposition(|m| m.role == "user")
        .ok_or_else(|| ApiError::InvalidRequest("`messages` needs a user message".into()))?;
    let conversation = req.messages[..last_user]
        .iter()
        .filter_map(|m| {
            let role = match m.role.as_str() {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                _ => return None, // system prompts are cairn's own
            };
            Some(Turn {
                role,
                content: text_of(&m.content),
            })
        })
        .collect();
    Ok(AskBody {
        question: text_of(&req.messages[last_user].content),
        filters: None,
        top_k: None,
        stream: Some(req.stream),
        conversation,
    })
}

pub async fn chat_completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let Json(req) = body?;
    let (ask, stream) = validate_ask(&s.engine, to_ask(&req)?, &caller)?;
    let completion = Completion {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: chrono::Utc::now().timestamp(),
        model: req.model.clone().unwrap_or_else(|| "cairn".into()),
    };
    let (tx, rx) = mpsc::channel::<AnswerEvent>(64);
    tokio::spawn(answer_on(
        s.engine.clone(),
        ask,
        caller.name,
        Some("/v1/chat/completions"),
        tx,
    ));
    if stream {
        Ok(streamed(completion, rx))
    } else {
        Ok(whole(completion, rx).await)
    }
}

/// What every chunk (or the one response) of a completion carries.
struct Completion {
    id: String,
    created: i64,
    model: String,
}

impl Completion {
    /// One `chat.completion.chunk` event with `delta`, an optional finish reason and an
    /// optional extra top-level field.
    fn chunk(&self, delta: Value, finish: Option<&str>, extra: Option<(&str, Value)>) -> Event {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let (Some((k, x)), Some(obj)) = (extra, v.as_object_mut()) {
            obj.insert(k.to_string(), x);
        }
        Event::default().data(v.to_string())
    }
}

/// `stream: false`: the whole answer as one `chat.completion` object.
async fn whole(c: Completion, mut rx: mpsc::Receiver<AnswerEvent>) -> Response {
    let mut resp = AskResponse::default();
    while let Some(ev) = rx.recv().await {
        resp.apply(ev);
    }
    let usage = resp.usage.as_ref();
    let (pt, ct) = usage.map_or((0, 0), |u| (u.input_tokens, u.output_tokens));
    let content = match (&resp.error, resp.answer.is_empty()) {
        (Some(e), true) => e["message"].as_str().unwrap_or_default().to_string(),
        _ => resp.answer.clone(),
    };
    Json(json!({
        "id": c.id,
        "object": "chat.completion",
        "created": c.created,
        "model": c.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": if resp.error.is_some() { "error" } else { "stop" },
        }],
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        "citations": resp.citations,
        "cairn": {"trace_id": resp.trace_id, "outcome": resp.outcome, "error": resp.error},
    }))
    .into_response()
}

/// `stream: true`: server-sent `chat.completion.chunk` events, citations on the final one,
/// then `[DONE]`.
fn streamed(c: Completion, rx: mpsc::Receiver<AnswerEvent>) -> Response {
    let mut citations: Vec<Value> = Vec::new();
    let mut first = true;
    let events = ReceiverStream::new(rx).filter_map(move |ev| {
        let out = chunks_of(&c, ev, &mut first, &mut citations);
        futures::future::ready(if out.is_empty() { None } else { Some(out) })
    });
    let flat =
        events.flat_map(|v| futures::stream::iter(v.into_iter().map(Ok::<Event, Infallible>)));
    Sse::new(flat)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The chunks one answer event becomes: a content delta per token (the first names the
/// role), nothing for citations (collected for the final chunk), and a final chunk plus
/// `[DONE]` at the end or on an error.
fn chunks_of(
    c: &Completion,
    ev: AnswerEvent,
    first: &mut bool,
    citations: &mut Vec<Value>,
) -> Vec<Event> {
    match ev {
        AnswerEvent::Token(t) => {
            let delta = if *first {
                json!({"role": "assistant", "content": t})
            } else {
                json!({"content": t})
            };
            *first = false;
            vec![c.chunk(delta, None, None)]
        }
        AnswerEvent::Citation(x) => {
            citations.push(json!(x));
            vec![]
        }
        AnswerEvent::Error { code, message } => vec![
            c.chunk(
                json!({"content": message}),
                Some("error"),
                Some(("error", json!({"code": code}))),
            ),
            Event::default().data("[DONE]"),
        ],
        AnswerEvent::Done { .. } => vec![
            c.chunk(
                json!({}),
                Some("stop"),
                Some(("citations", Value::Array(std::mem::take(citations)))),
            ),
            Event::default().data("[DONE]"),
        ],
        AnswerEvent::Retrieval(_) | AnswerEvent::Usage(_) => vec![],
    }
}
