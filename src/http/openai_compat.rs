//! `POST /v1/chat/completions`: the RAG pipeline behind the OpenAI Chat Completions shape, so
//! OpenAI SDKs and bot frameworks can use cairn unchanged. The last user message is the
//! question, earlier turns are the conversation. Citations ride in an extra top-level
//! `citations` field and whether a human should take over in `handoff` (on the final chunk when
//! streaming); clients that do not know them ignore them. An optional `thread_id` (cairn's
//! extension) continues a thread: its stored turns come before the messages, and every response
//! names its thread (`thread_id`, and the `cairn-thread-id` header).

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
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::answer::events::{AnswerEvent, Mode, UsageView};
use crate::answer::handoff;
use crate::http::ask::{AskBody, AskResponse, Threaded, Turn, start_in_thread, until_terminal};
use crate::http::auth::Scope;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::http::threads::THREAD_HEADER;

/// One message. `name` and an assistant's `refusal` are accepted and ignored; `tool_calls` and
/// `tool_call_id` are refused (cairn offers no tools).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    /// A string, or an array of `{type: "text", text}` parts.
    #[serde(default)]
    pub content: Value,
    pub name: Option<IgnoredAny>,
    pub refusal: Option<IgnoredAny>,
    pub tool_calls: Option<IgnoredAny>,
    pub tool_call_id: Option<IgnoredAny>,
}

/// The Chat Completions request as cairn reads it. `messages` and `stream` are used; `model`
/// only chooses the mode (`cairn-agent`: agent mode; anything else: plain RAG) — the route
/// decides which model serves, and the response names it.
/// OpenAI's sampling and bookkeeping fields are accepted and ignored; fields that would
/// change what is returned (`n` > 1, tools, a non-text `response_format`) and fields OpenAI
/// does not define are refused with 422 naming them. README lists both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub n: Option<u32>,
    pub response_format: Option<Value>,
    pub tools: Option<IgnoredAny>,
    pub tool_choice: Option<IgnoredAny>,
    pub functions: Option<IgnoredAny>,
    pub function_call: Option<IgnoredAny>,
    // Accepted and ignored.
    pub temperature: Option<IgnoredAny>,
    pub top_p: Option<IgnoredAny>,
    pub max_tokens: Option<IgnoredAny>,
    pub max_completion_tokens: Option<IgnoredAny>,
    pub presence_penalty: Option<IgnoredAny>,
    pub frequency_penalty: Option<IgnoredAny>,
    pub logit_bias: Option<IgnoredAny>,
    pub logprobs: Option<IgnoredAny>,
    pub top_logprobs: Option<IgnoredAny>,
    pub seed: Option<IgnoredAny>,
    pub stop: Option<IgnoredAny>,
    pub user: Option<IgnoredAny>,
    pub metadata: Option<IgnoredAny>,
    pub store: Option<IgnoredAny>,
    pub stream_options: Option<IgnoredAny>,
    pub parallel_tool_calls: Option<IgnoredAny>,
    pub service_tier: Option<IgnoredAny>,
    pub reasoning_effort: Option<IgnoredAny>,
    /// cairn's extension: continue this thread (its stored turns come before `messages`).
    pub thread_id: Option<String>,
}

impl ChatCompletionRequest {
    /// Refuses what cairn cannot honour: more than one choice, tools, structured output.
    fn check_supported(&self) -> Result<(), ApiError> {
        let refuse = |field: &str, why: &str| {
            Err(ApiError::InvalidRequest(format!(
                "`{field}` is not supported by cairn's endpoint: {why}; remove it"
            )))
        };
        if self.n.is_some_and(|n| n != 1) {
            return refuse("n", "one answer is returned per request");
        }
        if self.tools.is_some()
            || self.tool_choice.is_some()
            || self.functions.is_some()
            || self.function_call.is_some()
        {
            return refuse("tools", "cairn offers no tools or functions");
        }
        match &self.response_format {
            Some(f) if f.get("type").and_then(Value::as_str) != Some("text") => {
                refuse("response_format", "answers are text with citations")
            }
            _ => Ok(()),
        }
    }
}

/// The text of a message's `content`: a string, or the text parts of an array (null is empty);
/// any other JSON type is a wrong shape.
fn text_of(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n")),
        Value::Null => Ok(String::new()),
        _ => Err(ApiError::InvalidRequest(
            "a message's `content` must be a string or an array of content parts".into(),
        )),
    }
}

/// The role a message takes in cairn's conversation: user and assistant as they are; system
/// and developer messages become caller turns (they carry the caller's authority, never
/// cairn's system prompt's); tool messages and tool calls are refused, an unknown role is 400
/// `invalid_role`.
fn role_of(m: &ChatMessage) -> Result<&'static str, ApiError> {
    let tools = |what: &str| {
        ApiError::InvalidRequest(format!(
            "a `{what}` message is not supported: cairn offers no tools; send the conversation without tool turns"
        ))
    };
    match m.role.as_str() {
        "user" | "system" | "developer" => Ok("user"),
        "assistant" if m.tool_calls.is_some() => Err(tools("tool_calls")),
        "assistant" => Ok("assistant"),
        "tool" | "function" => Err(tools(&m.role)),
        other => Err(ApiError::InvalidRole(format!(
            "unknown message role `{}`; use user, assistant, system or developer",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

/// The `/ask` body of a request: the last user message is the question, the messages before
/// it are the conversation, messages after it are ignored.
fn to_ask(req: &ChatCompletionRequest) -> Result<AskBody, ApiError> {
    req.check_supported()?;
    let last_user = req
        .messages
        .iter()
        .rposition(|m| m.role == "user")
        .ok_or_else(|| ApiError::InvalidRequest("`messages` needs a user message".into()))?;
    let conversation = req.messages[..last_user]
        .iter()
        .map(|m| {
            Ok(Turn {
                role: role_of(m)?.to_string(),
                content: text_of(&m.content)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let question = text_of(&req.messages[last_user].content)?;
    if question.trim().is_empty() {
        return Err(ApiError::EmptyQuery(
            "the last `user` message has no text; put the question there".into(),
        ));
    }
    Ok(AskBody {
        question,
        filters: None,
        top_k: None,
        stream: Some(req.stream),
        conversation,
        thread_id: req.thread_id.clone(),
        mode: if req.model.as_deref() == Some(AGENT_MODEL) {
            Mode::Agent
        } else {
            Mode::Rag
        },
        agent: None,
    })
}

/// The `model` that asks for agent mode (the tool loop within `[agent]`'s budget); any other
/// model name answers in plain RAG mode.
pub const AGENT_MODEL: &str = "cairn-agent";

/// `POST /v1/chat/completions`; errors in OpenAI's shape, so OpenAI SDKs raise them.
pub async fn chat_completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Response {
    complete(s, headers, body)
        .await
        .unwrap_or_else(ApiError::openai_response)
}

async fn complete(
    s: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = s.authorize_scope(&headers, Scope::Ask)?;
    let Json(req) = body?;
    let Threaded {
        rx,
        thread_id,
        stream,
    } = start_in_thread(&s, to_ask(&req)?, &caller, "/v1/chat/completions")?;
    let completion = Completion {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: chrono::Utc::now().timestamp(),
        model: UNKNOWN_MODEL.into(),
        thread_id: thread_id.clone(),
    };
    let header = [(THREAD_HEADER, thread_id)];
    if stream {
        Ok((header, streamed(completion, rx)).into_response())
    } else {
        let fallback = &s.engine.config.answer.fallback_text;
        Ok((header, whole(completion, rx, fallback).await?).into_response())
    }
}

/// `model` of a response no model served (no answer was found), and of stream chunks sent
/// before the serving model is known.
const UNKNOWN_MODEL: &str = "cairn";

/// The model that served an answer, as its usage names it.
fn serving_model(usage: Option<&UsageView>) -> String {
    usage
        .map(|u| u.model.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| UNKNOWN_MODEL.into())
}

/// What every chunk (or the one response) of a completion carries.
struct Completion {
    id: String,
    created: i64,
    model: String,
    /// The thread the answer belongs to.
    thread_id: String,
}

impl Completion {
    /// One `chat.completion.chunk` event with `delta`, an optional finish reason and extra
    /// top-level fields.
    fn chunk(&self, delta: Value, finish: Option<&str>, extra: Vec<(&str, Value)>) -> Event {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let Some(obj) = v.as_object_mut() {
            for (k, x) in extra {
                obj.insert(k.to_string(), x);
            }
        }
        Event::default().data(v.to_string())
    }
}

/// `stream: false`: the whole answer as one `chat.completion` object, or the error that
/// ended it.
async fn whole(
    c: Completion,
    mut rx: mpsc::Receiver<AnswerEvent>,
    fallback_text: &str,
) -> Result<Response, ApiError> {
    let mut resp = AskResponse::default();
    while let Some(ev) = rx.recv().await {
        resp.apply(ev);
    }
    let resp = resp.completed(fallback_text)?;
    let usage = resp.usage.as_ref();
    let (pt, ct) = usage.map_or((0, 0), |u| (u.input_tokens, u.output_tokens));
    Ok(Json(json!({
        "id": c.id,
        "object": "chat.completion",
        "created": c.created,
        "model": serving_model(resp.usage.as_ref()),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": resp.answer},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        "citations": resp.citations,
        "handoff": resp.handoff,
        "thread_id": c.thread_id,
        "cairn": {
            "trace_id": resp.trace_id,
            "outcome": resp.outcome,
            "mode": resp.mode.as_ref().map(|m| m.mode),
            "steps": resp.mode.as_ref().and_then(|m| m.steps),
        },
    }))
    .into_response())
}

/// `stream: true`: server-sent `chat.completion.chunk` events, citations, hand-off and thread
/// id on the final one, then `[DONE]`.
fn streamed(mut c: Completion, rx: mpsc::Receiver<AnswerEvent>) -> Response {
    let mut citations: Vec<Value> = Vec::new();
    let mut first = true;
    let events = until_terminal(ReceiverStream::new(rx)).filter_map(move |ev| {
        let out = chunks_of(&mut c, ev, &mut first, &mut citations);
        futures::future::ready(if out.is_empty() { None } else { Some(out) })
    });
    let flat =
        events.flat_map(|v| futures::stream::iter(v.into_iter().map(Ok::<Event, Infallible>)));
    Sse::new(flat)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The chunks one answer event becomes: a content delta per token (the first names the
/// role), nothing for citations (collected for the final chunk) or usage (which names the
/// serving model: chunks before it say `cairn`, the final one names the model), and a final
/// chunk plus `[DONE]` at the end or on an error.
fn chunks_of(
    c: &mut Completion,
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
            vec![c.chunk(delta, None, vec![])]
        }
        AnswerEvent::Citation(x) => {
            citations.push(json!(x));
            vec![]
        }
        AnswerEvent::Error { code, message } => vec![
            c.chunk(
                json!({"content": message}),
                Some("error"),
                vec![
                    ("error", json!({"code": code})),
                    ("handoff", json!(handoff::of_error(code))),
                ],
            ),
            Event::default().data("[DONE]"),
        ],
        AnswerEvent::Done { handoff, mode, .. } => vec![
            c.chunk(
                json!({}),
                Some("stop"),
                vec![
                    ("citations", Value::Array(std::mem::take(citations))),
                    ("handoff", json!(handoff)),
                    ("thread_id", json!(c.thread_id)),
                    ("cairn", json!({"mode": mode.mode, "steps": mode.steps})),
                ],
            ),
            Event::default().data("[DONE]"),
        ],
        AnswerEvent::Usage(u) => {
            c.model = serving_model(Some(&u));
            vec![]
        }
        AnswerEvent::Retrieval { .. } | AnswerEvent::Step(_) => vec![],
    }
}
