//! OpenAI: Chat Completions (`POST /v1/chat/completions`, streamed `chat.completion.chunk`
//! events ending with `data: [DONE]`) and Embeddings (`POST /v1/embeddings`).
//!
//! Mapping follows the OpenAI API reference for REST API v1 as published in 2025
//! (`stream_options.include_usage`, `max_completion_tokens`, function tools,
//! `response_format: {type: "json_schema"}`, `prompt_tokens_details.cached_tokens`).
//! The same wire structs and decoder serve Mistral and OpenAI-compatible servers through
//! [`Flavor`]; their differences are listed in their own modules.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::http::{Decoded, Endpoint, SseDecoder, sse_stream};
use super::{
    ChatEvent, ChatRequest, ChatStream, EmbedRequest, EmbedResponse, FinishReason, ProviderError,
    Role, ToolChoice, ToolRound, Usage,
};

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Which dialect of the Chat Completions wire format an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Mistral,
    Compatible,
}

/// A Chat Completions endpoint.
#[derive(Debug, Clone)]
pub struct OpenAi {
    pub endpoint: Endpoint,
    pub flavor: Flavor,
}

// ---- request wire structs ----

#[derive(Debug, Serialize, PartialEq)]
pub struct WireMessage {
    pub role: &'static str,
    /// `null` on an assistant turn that only calls tools.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<WireToolCall>,
    /// On a `tool` message: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// On a `tool` message to Mistral: the function's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl WireMessage {
    fn text(role: &'static str, content: &str) -> WireMessage {
        WireMessage {
            role,
            content: Some(content.to_string()),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// A call the assistant made, as replayed in a later request.
#[derive(Debug, Serialize, PartialEq)]
pub struct WireToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: WireCalled,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WireCalled {
    pub name: String,
    /// The arguments as the JSON text the model produced.
    pub arguments: String,
}

/// The messages of earlier tool rounds: an assistant message with its `tool_calls`, then one
/// `tool` message per result (pure).
pub fn round_messages(flavor: Flavor, rounds: &[ToolRound]) -> Vec<WireMessage> {
    let mut out = Vec::new();
    for r in rounds {
        out.push(WireMessage {
            role: "assistant",
            content: (!r.text.is_empty()).then(|| r.text.clone()),
            tool_calls: r
                .calls
                .iter()
                .map(|c| WireToolCall {
                    id: c.id.clone(),
                    kind: "function",
                    function: WireCalled {
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    },
                })
                .collect(),
            tool_call_id: None,
            name: None,
        });
        for res in &r.results {
            out.push(WireMessage {
                role: "tool",
                content: Some(res.content.clone()),
                tool_calls: Vec::new(),
                tool_call_id: Some(res.call_id.clone()),
                name: (flavor == Flavor::Mistral).then(|| res.name.clone()),
            });
        }
    }
    out
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WireFunction {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WireTool {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: WireFunction,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct StreamOptions {
    pub include_usage: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ChatBody {
    pub model: String,
    pub messages: Vec<WireMessage>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<WireTool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
}

/// Builds the streaming request body (pure).
pub fn chat_body(flavor: Flavor, model: &str, req: &ChatRequest) -> ChatBody {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if !req.system.is_empty() {
        messages.push(WireMessage::text("system", &req.system));
    }
    for m in &req.messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        messages.push(WireMessage::text(role, &m.content));
    }
    messages.extend(round_messages(flavor, &req.tool_rounds));
    let tools: Vec<WireTool> = req
        .tools
        .iter()
        .map(|t| WireTool {
            kind: "function",
            function: WireFunction {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            },
        })
        .collect();
    let tool_choice = (!tools.is_empty()).then(|| match &req.tool_choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        // Mistral spells "must call some tool" as "any".
        ToolChoice::Required if flavor == Flavor::Mistral => json!("any"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
    });
    let response_format = req.output_schema.as_ref().map(|s| {
        json!({
            "type": "json_schema",
            "json_schema": {"name": s.name, "schema": s.schema, "strict": true}
        })
    });
    let (max_completion_tokens, max_tokens) = match flavor {
        Flavor::OpenAi => (req.max_tokens, None),
        Flavor::Mistral | Flavor::Compatible => (None, req.max_tokens),
    };
    ChatBody {
        model: model.to_string(),
        messages,
        stream: true,
        // Mistral always sends usage on the last chunk and rejects unknown fields.
        stream_options: (flavor != Flavor::Mistral).then_some(StreamOptions {
            include_usage: true,
        }),
        max_completion_tokens,
        max_tokens,
        temperature: req.temperature,
        stop: req.stop.clone(),
        tools,
        tool_choice,
        response_format,
    }
}

// ---- response wire structs ----

#[derive(Debug, Deserialize)]
pub struct Chunk {
    #[serde(default)]
    pub choices: Option<Vec<ChunkChoice>>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallChunk>>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCallChunk {
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionChunk>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionChunk {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: u64,
}

impl WireUsage {
    pub fn internal(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .map_or(0, |d| d.cached_tokens),
        }
    }
}

/// Maps a `finish_reason` string (OpenAI, Mistral, compatible servers).
pub fn finish_reason(s: &str) -> FinishReason {
    match s {
        "stop" | "eos" => FinishReason::Stop,
        "length" | "model_length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Error,
    }
}

/// Decoder state of one Chat Completions stream.
#[derive(Debug)]
pub struct ChunkDecoder {
    pub provider: String,
    /// Next synthetic tool-call index for servers that send whole calls without `index`.
    next_tool: usize,
}

impl ChunkDecoder {
    pub fn new(provider: &str) -> ChunkDecoder {
        ChunkDecoder {
            provider: provider.to_string(),
            next_tool: 0,
        }
    }

    /// Maps one parsed chunk to internal events (pure).
    pub fn map_chunk(&mut self, chunk: Chunk) -> Result<Vec<ChatEvent>, ProviderError> {
        if let Some(err) = chunk.error {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error event")
                .to_string();
            return Err(ProviderError::Unavailable {
                provider: self.provider.clone(),
                message,
            });
        }
        let mut out = Vec::new();
        for choice in chunk.choices.unwrap_or_default() {
            if let Some(delta) = choice.delta {
                if let Some(t) = delta.content
                    && !t.is_empty()
                {
                    out.push(ChatEvent::TextDelta(t));
                }
                for tc in delta.tool_calls.unwrap_or_default() {
                    let index = match tc.index {
                        Some(i) => {
                            self.next_tool = self.next_tool.max(i + 1);
                            i
                        }
                        None => {
                            self.next_tool += 1;
                            self.next_tool - 1
                        }
                    };
                    let (name, arguments) = match tc.function {
                        Some(f) => (f.name, f.arguments.unwrap_or_default()),
                        None => (None, String::new()),
                    };
                    out.push(ChatEvent::ToolCallDelta {
                        index,
                        id: tc.id,
                        name,
                        arguments,
                    });
                }
            }
            if let Some(f) = choice.finish_reason {
                out.push(ChatEvent::Finish(finish_reason(&f)));
            }
        }
        if let Some(u) = chunk.usage {
            out.push(ChatEvent::Usage(u.internal()));
        }
        Ok(out)
    }
}

impl SseDecoder for ChunkDecoder {
    fn decode(&mut self, _event: &str, data: &str) -> Result<Decoded, ProviderError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(Decoded {
                events: Vec::new(),
                done: true,
            });
        }
        if data.is_empty() {
            return Ok(Decoded::default());
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| ProviderError::Malformed {
            provider: self.provider.clone(),
            message: format!("chunk is not valid JSON: {e}"),
        })?;
        Ok(Decoded {
            events: self.map_chunk(chunk)?,
            done: false,
        })
    }
}

// ---- embeddings ----

#[derive(Debug, Serialize, PartialEq)]
pub struct EmbedBody {
    pub model: String,
    pub input: Vec<String>,
    pub encoding_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
}

pub fn embed_body(model: &str, req: &EmbedRequest) -> EmbedBody {
    EmbedBody {
        model: model.to_string(),
        input: req.inputs.clone(),
        encoding_format: "float",
        dimensions: req.dimensions,
    }
}

#[derive(Debug, Deserialize)]
pub struct EmbedWire {
    pub data: Vec<EmbedItem>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
pub struct EmbedItem {
    #[serde(default)]
    pub index: usize,
    pub embedding: Vec<f32>,
}

/// Maps an embeddings response, ordering vectors by `index` (pure).
pub fn map_embeddings(wire: EmbedWire, n_inputs: usize) -> Result<EmbedResponse, String> {
    let mut items = wire.data;
    items.sort_by_key(|i| i.index);
    if items.len() != n_inputs {
        return Err(format!("{} vectors for {} inputs", items.len(), n_inputs));
    }
    Ok(EmbedResponse {
        vectors: items.into_iter().map(|i| i.embedding).collect(),
        usage: wire.usage.map(|u| u.internal()).unwrap_or_default(),
    })
}

impl OpenAi {
    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.endpoint.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    pub async fn chat_stream(
        &self,
        model: &str,
        req: &ChatRequest,
    ) -> Result<ChatStream, ProviderError> {
        let body = chat_body(self.flavor, model, req);
        let rb = self
            .authed(
                self.endpoint
                    .client
                    .post(self.endpoint.url("/chat/completions")),
            )
            .header("accept", "text/event-stream")
            .json(&body);
        let resp = self.endpoint.send(rb, model).await?;
        Ok(sse_stream(
            self.endpoint.name.clone(),
            resp,
            ChunkDecoder::new(&self.endpoint.name),
        ))
    }

    pub async fn embed(
        &self,
        model: &str,
        req: &EmbedRequest,
    ) -> Result<EmbedResponse, ProviderError> {
        let rb = self
            .authed(self.endpoint.client.post(self.endpoint.url("/embeddings")))
            .json(&embed_body(model, req));
        let resp = self.endpoint.send(rb, model).await?;
        let wire: EmbedWire = resp
            .json()
            .await
            .map_err(|e| self.endpoint.malformed(e.to_string()))?;
        map_embeddings(wire, req.inputs.len()).map_err(|e| self.endpoint.malformed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Message, OutputSchema, Tool};

    fn decode_all(lines: &[&str]) -> (Vec<ChatEvent>, bool) {
        let mut d = ChunkDecoder::new("oa");
        let mut out = Vec::new();
        let mut done = false;
        for l in lines {
            let r = d.decode("", l).expect("decodes");
            out.extend(r.events);
            done |= r.done;
        }
        (out, done)
    }

    #[test]
    fn body_has_stream_usage_tools_and_schema() {
        let req = ChatRequest {
            system: "Be brief.".into(),
            messages: vec![Message {
                role: Role::User,
                content: "Weather in Oslo?".into(),
            }],
            max_tokens: Some(64),
            tools: vec![Tool {
                name: "get_weather".into(),
                description: "Current weather".into(),
                parameters: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
            }],
            output_schema: Some(OutputSchema {
                name: "answer".into(),
                schema: json!({"type":"object"}),
            }),
            ..ChatRequest::default()
        };
        let v = serde_json::to_value(chat_body(Flavor::OpenAi, "gpt-4o-mini", &req)).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["max_completion_tokens"], 64);
        assert!(v.get("max_tokens").is_none());
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(v["tool_choice"], "auto");
        assert_eq!(v["response_format"]["type"], "json_schema");
        assert_eq!(v["response_format"]["json_schema"]["strict"], true);
        let m =
            serde_json::to_value(chat_body(Flavor::Mistral, "mistral-small", &req)).expect("json");
        assert!(m.get("stream_options").is_none());
        assert_eq!(m["max_tokens"], 64);
    }

    #[test]
    fn text_then_usage_only_final_chunk() {
        let (ev, done) = decode_all(&[
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}"#,
            "[DONE]",
        ]);
        assert!(done);
        assert_eq!(
            ev,
            vec![
                ChatEvent::TextDelta("Hello".into()),
                ChatEvent::Finish(FinishReason::Stop),
                ChatEvent::Usage(Usage {
                    input_tokens: 12,
                    output_tokens: 3,
                    cached_tokens: 4
                }),
            ]
        );
    }

    #[test]
    fn tool_call_fragments_and_content_filter() {
        let (ev, _) = decode_all(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Oslo\"}"}}]},"finish_reason":"tool_calls"}]}"#,
        ]);
        let mut r = crate::providers::ChatResponse::default();
        ev.into_iter().for_each(|e| r.push(e));
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].id, "call_abc");
        assert_eq!(r.tool_calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(r.finish, Some(FinishReason::ToolCalls));
        let (ev, _) = decode_all(&[
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}"#,
        ]);
        assert_eq!(ev, vec![ChatEvent::Finish(FinishReason::ContentFilter)]);
    }

    #[test]
    fn malformed_chunk_and_error_object_are_typed() {
        let mut d = ChunkDecoder::new("oa");
        assert!(matches!(
            d.decode("", "{\"choices\": [").unwrap_err(),
            ProviderError::Malformed { .. }
        ));
        assert!(matches!(
            d.decode(
                "",
                r#"{"error":{"message":"overloaded","type":"server_error"}}"#
            )
            .unwrap_err(),
            ProviderError::Unavailable { .. }
        ));
    }

    #[test]
    fn embeddings_are_ordered_by_index() {
        let wire: EmbedWire = serde_json::from_str(
            r#"{"object":"list","data":[{"object":"embedding","index":1,"embedding":[0.5,0.5]},{"object":"embedding","index":0,"embedding":[1.0,0.0]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
        )
        .expect("parse");
        let r = map_embeddings(wire, 2).expect("map");
        assert_eq!(r.vectors[0], vec![1.0, 0.0]);
        assert_eq!(r.usage.input_tokens, 8);
        let body = serde_json::to_value(embed_body(
            "m",
            &EmbedRequest {
                inputs: vec!["a".into()],
                dimensions: Some(256),
            },
        ))
        .expect("json");
        assert_eq!(body["dimensions"], 256);
        assert_eq!(body["encoding_format"], "float");
    }
}
