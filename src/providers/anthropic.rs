//! Anthropic: the Messages API (`POST /v1/messages` with `stream: true`), header
//! `anthropic-version: 2023-06-01`.
//!
//! Stream events mapped: `message_start` (input usage), `content_block_start` (text or
//! `tool_use` blocks), `content_block_delta` (`text_delta`, `input_json_delta`),
//! `content_block_stop`, `message_delta` (`stop_reason` and cumulative output usage),
//! `message_stop` (end marker), `ping` (ignored) and `error` (e.g. `overloaded_error`, the
//! in-stream form of HTTP 529). Other event types are logged and skipped, as the versioning
//! policy allows new ones. Structured output has no stable native form in this API version,
//! so it is requested as a forced tool whose input schema is the output schema; that tool's
//! input is streamed back as text.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::http::{Decoded, Endpoint, SseDecoder, sse_stream};
use super::{
    ChatEvent, ChatRequest, ChatStream, FinishReason, ProviderError, Role, ToolChoice, ToolRound,
    Usage,
};

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the API; used when the request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

#[derive(Debug, Clone)]
pub struct Anthropic {
    pub endpoint: Endpoint,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WireMessage {
    pub role: &'static str,
    /// A string, or content blocks (`text`, `tool_use`, `tool_result`) in tool rounds.
    pub content: Value,
}

/// The messages of earlier tool rounds: an assistant message with its `text` and `tool_use`
/// blocks, then one user message holding a `tool_result` block per call (pure).
pub fn round_messages(rounds: &[ToolRound]) -> Vec<WireMessage> {
    let mut out = Vec::new();
    for r in rounds {
        let mut blocks = Vec::new();
        if !r.text.is_empty() {
            blocks.push(json!({"type": "text", "text": r.text}));
        }
        for c in &r.calls {
            blocks.push(json!({
                "type": "tool_use",
                "id": c.id,
                "name": c.name,
                "input": ToolRound::arguments_object(c),
            }));
        }
        out.push(WireMessage {
            role: "assistant",
            content: Value::Array(blocks),
        });
        let results = r
            .results
            .iter()
            .map(|res| {
                let mut b = json!({
                    "type": "tool_result",
                    "tool_use_id": res.call_id,
                    "content": res.content,
                });
                if res.is_error {
                    b["is_error"] = json!(true);
                }
                b
            })
            .collect();
        out.push(WireMessage {
            role: "user",
            content: Value::Array(results),
        });
    }
    out
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WireTool {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MessagesBody {
    pub model: String,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub system: String,
    pub messages: Vec<WireMessage>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<WireTool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
}

/// Builds the request body (pure).
pub fn messages_body(model: &str, req: &ChatRequest) -> MessagesBody {
    let mut tools: Vec<WireTool> = req
        .tools
        .iter()
        .map(|t| WireTool {
            name: t.name.clone(),
            description: t.description.clone(),
            input_schema: t.parameters.clone(),
        })
        .collect();
    let mut tool_choice = (!tools.is_empty()).then(|| match &req.tool_choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Tool(n) => json!({"type": "tool", "name": n}),
    });
    if let Some(s) = &req.output_schema {
        tools.push(WireTool {
            name: s.name.clone(),
            description: "Reply by calling this tool with the answer as its input.".into(),
            input_schema: s.schema.clone(),
        });
        tool_choice = Some(json!({"type": "tool", "name": s.name}));
    }
    MessagesBody {
        model: model.to_string(),
        max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system: req.system.clone(),
        messages: req
            .messages
            .iter()
            .map(|m| WireMessage {
                role: match m.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                },
                content: Value::String(m.content.clone()),
            })
            .chain(round_messages(&req.tool_rounds))
            .collect(),
        stream: true,
        temperature: req.temperature,
        stop_sequences: req.stop.clone(),
        tools,
        tool_choice,
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
pub struct WireUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: ErrorBody,
    },
}

#[derive(Debug, Deserialize)]
pub struct StartMessage {
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
pub struct MessageDeltaBody {
    #[serde(default)]
    pub stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub message: String,
}

/// Maps `stop_reason`.
pub fn stop_reason(s: &str) -> FinishReason {
    match s {
        "end_turn" | "stop_sequence" | "pause_turn" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Error,
    }
}

/// Decoder state of one Messages stream.
#[derive(Debug)]
pub struct EventDecoder {
    provider: String,
    model: String,
    /// Name of the forced structured-output tool, whose input is streamed as text.
    schema_tool: Option<String>,
    /// Content block index → (tool call ordinal, is the schema tool).
    tool_blocks: HashMap<usize, (usize, bool)>,
    tools_seen: usize,
    usage: Usage,
    /// A structured-output reply ends with `tool_use`, reported as a normal stop.
    schema_reply: bool,
}

impl EventDecoder {
    pub fn new(provider: &str, model: &str, schema_tool: Option<String>) -> EventDecoder {
        EventDecoder {
            provider: provider.into(),
            model: model.into(),
            schema_tool,
            tool_blocks: HashMap::new(),
            tools_seen: 0,
            usage: Usage::default(),
            schema_reply: false,
        }
    }

    fn add_usage(&mut self, u: &WireUsage) {
        let cached = u.cache_read_input_tokens.unwrap_or(0);
        if let Some(i) = u.input_tokens {
            self.usage.input_tokens = i + cached + u.cache_creation_input_tokens.unwrap_or(0);
            self.usage.cached_tokens = cached;
        }
        if let Some(o) = u.output_tokens {
            self.usage.output_tokens = o;
        }
    }

    /// Maps one typed event (pure apart from the decoder's own state).
    pub fn map_event(&mut self, ev: StreamEvent) -> Result<Decoded, ProviderError> {
        let mut out = Decoded::default();
        match ev {
            StreamEvent::MessageStart { message } => {
                if let Some(u) = message.usage {
                    self.add_usage(&u);
                }
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                Block::Text { text } if !text.is_empty() => {
                    out.events.push(ChatEvent::TextDelta(text))
                }
                Block::ToolUse { id, name } => {
                    let is_schema = self.schema_tool.as_deref() == Some(name.as_str());
                    self.tool_blocks.insert(index, (self.tools_seen, is_schema));
                    if is_schema {
                        self.schema_reply = true;
                    } else {
                        out.events.push(ChatEvent::ToolCallDelta {
                            index: self.tools_seen,
                            id: Some(id),
                            name: Some(name),
                            arguments: String::new(),
                        });
                        self.tools_seen += 1;
                    }
                }
                _ => {}
            },
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => out.events.push(ChatEvent::TextDelta(text)),
                BlockDelta::InputJsonDelta { partial_json } => match self.tool_blocks.get(&index) {
                    Some((_, true)) => out.events.push(ChatEvent::TextDelta(partial_json)),
                    Some((n, false)) => out.events.push(ChatEvent::ToolCallDelta {
                        index: *n,
                        id: None,
                        name: None,
                        arguments: partial_json,
                    }),
                    None => {
                        return Err(ProviderError::Malformed {
                            provider: self.provider.clone(),
                            message: format!("input_json_delta for unknown block {index}"),
                        });
                    }
                },
                BlockDelta::Other => {
                    tracing::debug!(provider = %self.provider, "skipping unknown content delta type")
                }
            },
            StreamEvent::ContentBlockStop { .. } | StreamEvent::Ping => {}
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.add_usage(&u);
                    out.events.push(ChatEvent::Usage(self.usage));
                }
                if let Some(r) = delta.stop_reason {
                    let mut f = stop_reason(&r);
                    if f == FinishReason::ToolCalls && self.schema_reply && self.tools_seen == 0 {
                        f = FinishReason::Stop;
                    }
                    out.events.push(ChatEvent::Finish(f));
                }
            }
            StreamEvent::MessageStop => out.done = true,
            StreamEvent::Error { error } => {
                return Err(match error.kind.as_str() {
                    "overloaded_error" | "api_error" => ProviderError::Unavailable {
                        provider: self.provider.clone(),
                        message: format!("{}: {}", error.kind, error.message),
                    },
                    "rate_limit_error" => ProviderError::RateLimited {
                        provider: self.provider.clone(),
                        retry_after_ms: None,
                    },
                    "invalid_request_error" if super::http::is_context_length(&error.message) => {
                        ProviderError::ContextTooLong {
                            model: self.model.clone(),
                        }
                    }
                    _ => ProviderError::BadRequest {
                        provider: self.provider.clone(),
                        message: format!("{}: {}", error.kind, error.message),
                    },
                });
            }
        }
        Ok(out)
    }
}

const KNOWN: &[&str] = &[
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

impl SseDecoder for EventDecoder {
    fn decode(&mut self, event: &str, data: &str) -> Result<Decoded, ProviderError> {
        let value: Value = serde_json::from_str(data).map_err(|e| ProviderError::Malformed {
            provider: self.provider.clone(),
            message: format!("event `{event}` is not valid JSON: {e}"),
        })?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event)
            .to_string();
        if !KNOWN.contains(&kind.as_str()) {
            tracing::debug!(provider = %self.provider, event = %kind, "skipping unknown stream event");
            return Ok(Decoded::default());
        }
        let ev: StreamEvent =
            serde_json::from_value(value).map_err(|e| ProviderError::Malformed {
                provider: self.provider.clone(),
                message: format!("event `{kind}` has an unexpected shape: {e}"),
            })?;
        self.map_event(ev)
    }
}

impl Anthropic {
    pub async fn chat_stream(
        &self,
        model: &str,
        req: &ChatRequest,
    ) -> Result<ChatStream, ProviderError> {
        let body = messages_body(model, req);
        let mut rb = self
            .endpoint
            .client
            .post(self.endpoint.url("/messages"))
            .header("anthropic-version", API_VERSION)
            .header("accept", "text/event-stream")
            .json(&body);
        if let Some(k) = &self.endpoint.api_key {
            rb = rb.header("x-api-key", k);
        }
        let resp = self.endpoint.send(rb, model).await?;
        let dec = EventDecoder::new(
            &self.endpoint.name,
            model,
            req.output_schema.as_ref().map(|s| s.name.clone()),
        );
        Ok(sse_stream(self.endpoint.name.clone(), resp, dec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{ChatResponse, OutputSchema, Tool};

    fn run(dec: &mut EventDecoder, events: &[(&str, &str)]) -> (ChatResponse, bool) {
        let mut r = ChatResponse::default();
        let mut done = false;
        for (name, data) in events {
            let d = dec.decode(name, data).expect("decodes");
            d.events.into_iter().for_each(|e| r.push(e));
            done |= d.done;
        }
        (r, done)
    }

    #[test]
    fn text_stream_with_usage_and_ping() {
        let mut dec = EventDecoder::new("an", "claude-sonnet-4-5", None);
        let (r, done) = run(
            &mut dec,
            &[
                (
                    "message_start",
                    r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                ),
                ("ping", r#"{"type": "ping"}"#),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}"#,
                ),
                (
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#,
                ),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
                ),
                ("message_stop", r#"{"type":"message_stop"}"#),
            ],
        );
        assert!(done);
        assert_eq!(r.text, "Hello there");
        assert_eq!(r.finish, Some(FinishReason::Stop));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 30,
                output_tokens: 15,
                cached_tokens: 5
            }
        );
    }

    #[test]
    fn tool_use_blocks_and_unknown_events() {
        let mut dec = EventDecoder::new("an", "m", None);
        let (r, _) = run(
            &mut dec,
            &[
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01","name":"get_weather","input":{}}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": "}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Oslo\"}"}}"#,
                ),
                ("brand_new_event", r#"{"type":"brand_new_event","x":1}"#),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
                ),
            ],
        );
        assert_eq!(r.tool_calls[0].name, "get_weather");
        assert_eq!(r.tool_calls[0].id, "toolu_01");
        assert_eq!(r.tool_calls[0].arguments, r#"{"city": "Oslo"}"#);
        assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    }

    #[test]
    fn structured_output_is_a_forced_tool_streamed_as_text() {
        let req = ChatRequest {
            output_schema: Some(OutputSchema {
                name: "answer".into(),
                schema: json!({"type":"object"}),
            }),
            tools: vec![Tool {
                name: "t".into(),
                description: "d".into(),
                parameters: json!({}),
            }],
            ..ChatRequest::default()
        };
        let body = serde_json::to_value(messages_body("m", &req)).expect("json");
        assert_eq!(body["tool_choice"], json!({"type":"tool","name":"answer"}));
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["tools"][1]["input_schema"], json!({"type":"object"}));
        let mut dec = EventDecoder::new("an", "m", Some("answer".into()));
        let (r, _) = run(
            &mut dec,
            &[
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_9","name":"answer","input":{}}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}"#,
                ),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":3}}"#,
                ),
            ],
        );
        assert_eq!(r.text, r#"{"a":1}"#);
        assert!(r.tool_calls.is_empty());
        assert_eq!(r.finish, Some(FinishReason::Stop));
    }

    #[test]
    fn error_events_are_typed() {
        let mut dec = EventDecoder::new("an", "m", None);
        let e = dec
            .decode(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            )
            .unwrap_err();
        assert!(e.retryable());
        assert!(matches!(
            dec.decode("message_delta", "{not json").unwrap_err(),
            ProviderError::Malformed { .. }
        ));
        let (r, _) = run(
            &mut dec,
            &[(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"refusal"}}"#,
            )],
        );
        assert_eq!(r.finish, Some(FinishReason::ContentFilter));
    }
}
