//! Google Gemini API (v1beta): `models/{model}:streamGenerateContent?alt=sse` for chat and
//! `models/{model}:batchEmbedContents` (the batch form of `embedContent`) for embeddings; the key
//! goes in the `x-goog-api-key` header.
//!
//! Each SSE event is one `GenerateContentResponse`: text and `functionCall`s in
//! `candidates[0].content.parts`, `finishReason` on the last candidate chunk, `usageMetadata`
//! (prompt, candidates, cached counts). There is no `[DONE]` marker: the body ending after a
//! finish reason is a clean end. Safety-type finish reasons and `promptFeedback.blockReason`
//! map to [`FinishReason::ContentFilter`]. Mapping follows the v1beta reference as of 2025.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::http::{Decoded, Endpoint, SseDecoder, sse_stream};
use super::{
    ChatEvent, ChatRequest, ChatStream, EmbedRequest, EmbedResponse, FinishReason, ProviderError,
    Role, ToolChoice, ToolRound, Usage,
};

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

#[derive(Debug, Clone)]
pub struct Gemini {
    pub endpoint: Endpoint,
}

/// The contents of earlier tool rounds: a `model` turn with its text and `functionCall` parts,
/// then a `user` turn with one `functionResponse` part per call, matched by name and order
/// (pure). Ids are not sent back: the stream may not have carried any (the decoder makes them
/// up when it did not).
pub fn round_contents(rounds: &[ToolRound]) -> Vec<Value> {
    let mut out = Vec::new();
    for r in rounds {
        let mut parts = Vec::new();
        if !r.text.is_empty() {
            parts.push(json!({"text": r.text}));
        }
        for c in &r.calls {
            parts.push(
                json!({"functionCall": {"name": c.name, "args": ToolRound::arguments_object(c)}}),
            );
        }
        out.push(json!({"role": "model", "parts": parts}));
        let responses: Vec<Value> = r
            .results
            .iter()
            .map(|res| {
                let key = if res.is_error { "error" } else { "content" };
                json!({"functionResponse": {"name": res.name, "response": {key: res.content}}})
            })
            .collect();
        out.push(json!({"role": "user", "parts": responses}));
    }
    out
}

/// Builds the `generateContent` request body (pure).
pub fn generate_body(req: &ChatRequest) -> Value {
    let mut contents: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            json!({
                "role": match m.role { Role::User => "user", Role::Assistant => "model" },
                "parts": [{"text": m.content}],
            })
        })
        .collect();
    contents.extend(round_contents(&req.tool_rounds));
    let mut body = json!({ "contents": contents });
    if !req.system.is_empty() {
        body["systemInstruction"] = json!({"parts": [{"text": req.system}]});
    }
    let mut gen_cfg = serde_json::Map::new();
    if let Some(n) = req.max_tokens {
        gen_cfg.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        gen_cfg.insert("temperature".into(), json!(t));
    }
    if !req.stop.is_empty() {
        gen_cfg.insert("stopSequences".into(), json!(req.stop));
    }
    if let Some(s) = &req.output_schema {
        gen_cfg.insert("responseMimeType".into(), json!("application/json"));
        gen_cfg.insert("responseJsonSchema".into(), s.schema.clone());
    }
    if !gen_cfg.is_empty() {
        body["generationConfig"] = Value::Object(gen_cfg);
    }
    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
            .collect();
        body["tools"] = json!([{ "functionDeclarations": decls }]);
        let calling = match &req.tool_choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(n) => json!({"mode": "ANY", "allowedFunctionNames": [n]}),
        };
        body["toolConfig"] = json!({ "functionCallingConfig": calling });
    }
    body
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResponse {
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    pub prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Content {
    #[serde(default)]
    pub parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub thought: Option<bool>,
    #[serde(default)]
    pub function_call: Option<FunctionCall>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub candidates_token_count: u64,
    #[serde(default)]
    pub thoughts_token_count: u64,
    #[serde(default)]
    pub cached_content_token_count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    #[serde(default)]
    pub block_reason: Option<String>,
}

/// Maps a `finishReason`.
pub fn finish_reason(s: &str) -> FinishReason {
    match s {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
        | "LANGUAGE" => FinishReason::ContentFilter,
        _ => FinishReason::Error,
    }
}

/// Decoder state of one Gemini stream.
#[derive(Debug)]
pub struct ResponseDecoder {
    provider: String,
    tools_seen: usize,
    finished: bool,
}

impl ResponseDecoder {
    pub fn new(provider: &str) -> ResponseDecoder {
        ResponseDecoder {
            provider: provider.into(),
            tools_seen: 0,
            finished: false,
        }
    }

    /// Maps one response chunk (pure apart from the decoder's own state).
    pub fn map_response(&mut self, r: GenerateResponse) -> Result<Vec<ChatEvent>, ProviderError> {
        if let Some(err) = r.error {
            let code = err.get("code").and_then(Value::as_u64).unwrap_or(500);
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            return Err(if code == 429 {
                ProviderError::RateLimited {
                    provider: self.provider.clone(),
                    retry_after_ms: None,
                }
            } else {
                ProviderError::Unavailable {
                    provider: self.provider.clone(),
                    message,
                }
            });
        }
        let mut out = Vec::new();
        let mut finish = None;
        if let Some(block) = r.prompt_feedback.and_then(|p| p.block_reason) {
            tracing::info!(provider = %self.provider, reason = %block, "prompt blocked");
            finish = Some(FinishReason::ContentFilter);
        }
        if let Some(c) = r.candidates.into_iter().next() {
            for p in c.content.map(|c| c.parts).unwrap_or_default() {
                if p.thought == Some(true) {
                    continue;
                }
                if let Some(t) = p.text
                    && !t.is_empty()
                {
                    out.push(ChatEvent::TextDelta(t));
                }
                if let Some(fc) = p.function_call {
                    let index = self.tools_seen;
                    self.tools_seen += 1;
                    out.push(ChatEvent::ToolCallDelta {
                        index,
                        id: Some(fc.id.unwrap_or_else(|| format!("call_{index}"))),
                        name: Some(fc.name),
                        arguments: fc.args.to_string(),
                    });
                }
            }
            if let Some(f) = c.finish_reason {
                let mut f = finish_reason(&f);
                if f == FinishReason::Stop && self.tools_seen > 0 {
                    f = FinishReason::ToolCalls;
                }
                finish = Some(f);
            }
        }
        if let Some(u) = r.usage_metadata {
            out.push(ChatEvent::Usage(Usage {
                input_tokens: u.prompt_token_count,
                output_tokens: u.candidates_token_count + u.thoughts_token_count,
                cached_tokens: u.cached_content_token_count,
            }));
        }
        if let Some(f) = finish {
            self.finished = true;
            out.push(ChatEvent::Finish(f));
        }
        Ok(out)
    }
}

impl SseDecoder for ResponseDecoder {
    fn decode(&mut self, _event: &str, data: &str) -> Result<Decoded, ProviderError> {
        if data.trim().is_empty() {
            return Ok(Decoded::default());
        }
        let r: GenerateResponse =
            serde_json::from_str(data).map_err(|e| ProviderError::Malformed {
                provider: self.provider.clone(),
                message: format!("chunk is not valid JSON: {e}"),
            })?;
        Ok(Decoded {
            events: self.map_response(r)?,
            done: false,
        })
    }

    fn clean_eof(&self) -> bool {
        self.finished
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedItem {
    model: String,
    content: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
}

/// Builds a `batchEmbedContents` body (pure).
pub fn embed_body(model: &str, req: &EmbedRequest) -> Value {
    let requests: Vec<EmbedItem> = req
        .inputs
        .iter()
        .map(|t| EmbedItem {
            model: format!("models/{model}"),
            content: json!({"parts": [{"text": t}]}),
            output_dimensionality: req.dimensions,
        })
        .collect();
    json!({ "requests": requests })
}

#[derive(Debug, Deserialize)]
pub struct EmbedWire {
    #[serde(default)]
    pub embeddings: Vec<Embedding>,
}

#[derive(Debug, Deserialize)]
pub struct Embedding {
    pub values: Vec<f32>,
}

pub fn map_embeddings(w: EmbedWire, n: usize) -> Result<EmbedResponse, String> {
    if w.embeddings.len() != n {
        return Err(format!("{} vectors for {n} inputs", w.embeddings.len()));
    }
    Ok(EmbedResponse {
        vectors: w.embeddings.into_iter().map(|e| e.values).collect(),
        usage: Usage::default(),
    })
}

impl Gemini {
    pub async fn chat_stream(
        &self,
        model: &str,
        req: &ChatRequest,
    ) -> Result<ChatStream, ProviderError> {
        let url = self
            .endpoint
            .url(&format!("/models/{model}:streamGenerateContent?alt=sse"));
        let mut rb = self.endpoint.client.post(url).json(&generate_body(req));
        if let Some(k) = &self.endpoint.api_key {
            rb = rb.header("x-goog-api-key", k);
        }
        let resp = self.endpoint.send(rb, model).await?;
        Ok(sse_stream(
            self.endpoint.name.clone(),
            resp,
            ResponseDecoder::new(&self.endpoint.name),
        ))
    }

    pub async fn embed(
        &self,
        model: &str,
        req: &EmbedRequest,
    ) -> Result<EmbedResponse, ProviderError> {
        let url = self
            .endpoint
            .url(&format!("/models/{model}:batchEmbedContents"));
        let mut rb = self.endpoint.client.post(url).json(&embed_body(model, req));
        if let Some(k) = &self.endpoint.api_key {
            rb = rb.header("x-goog-api-key", k);
        }
        let resp = self.endpoint.send(rb, model).await?;
        let w: EmbedWire = resp
            .json()
            .await
            .map_err(|e| self.endpoint.malformed(e.to_string()))?;
        map_embeddings(w, req.inputs.len()).map_err(|e| self.endpoint.malformed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{ChatResponse, Message, OutputSchema, Tool};

    fn run(chunks: &[&str]) -> (ChatResponse, bool) {
        let mut d = ResponseDecoder::new("g");
        let mut r = ChatResponse::default();
        for c in chunks {
            d.decode("", c)
                .expect("decodes")
                .events
                .into_iter()
                .for_each(|e| r.push(e));
        }
        (r, d.clean_eof())
    }

    #[test]
    fn body_shape() {
        let req = ChatRequest {
            system: "sys".into(),
            messages: vec![
                Message {
                    role: Role::User,
                    content: "hi".into(),
                },
                Message {
                    role: Role::Assistant,
                    content: "hello".into(),
                },
            ],
            max_tokens: Some(100),
            tools: vec![Tool {
                name: "f".into(),
                description: "d".into(),
                parameters: json!({"type":"object"}),
            }],
            tool_choice: ToolChoice::Tool("f".into()),
            output_schema: Some(OutputSchema {
                name: "o".into(),
                schema: json!({"type":"object"}),
            }),
            ..ChatRequest::default()
        };
        let b = generate_body(&req);
        assert_eq!(b["contents"][1]["role"], "model");
        assert_eq!(b["systemInstruction"]["parts"][0]["text"], "sys");
        assert_eq!(b["generationConfig"]["maxOutputTokens"], 100);
        assert_eq!(
            b["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert_eq!(b["tools"][0]["functionDeclarations"][0]["name"], "f");
        assert_eq!(
            b["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"][0],
            "f"
        );
    }

    #[test]
    fn text_chunks_with_usage_on_last() {
        let (r, clean) = run(&[
            r#"{"candidates": [{"content": {"parts": [{"text": "The sky"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},"modelVersion": "gemini-2.0-flash"}"#,
            r#"{"candidates": [{"content": {"parts": [{"text": " is blue."}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 5,"totalTokenCount": 13,"cachedContentTokenCount": 2},"modelVersion": "gemini-2.0-flash"}"#,
        ]);
        assert!(clean);
        assert_eq!(r.text, "The sky is blue.");
        assert_eq!(r.finish, Some(FinishReason::Stop));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 8,
                output_tokens: 5,
                cached_tokens: 2
            }
        );
    }

    #[test]
    fn safety_and_prompt_block_are_content_filter() {
        let (r, _) = run(&[
            r#"{"candidates":[{"content":{"parts":[],"role":"model"},"finishReason":"SAFETY","safetyRatings":[{"category":"HARM_CATEGORY_DANGEROUS_CONTENT","probability":"HIGH","blocked":true}]}]}"#,
        ]);
        assert_eq!(r.finish, Some(FinishReason::ContentFilter));
        let (r, clean) = run(&[
            r#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{"promptTokenCount":12,"totalTokenCount":12}}"#,
        ]);
        assert!(clean);
        assert_eq!(r.finish, Some(FinishReason::ContentFilter));
    }

    #[test]
    fn function_calls_and_errors() {
        let (r, _) = run(&[
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Oslo"}}}],"role":"model"},"finishReason":"STOP"}]}"#,
        ]);
        assert_eq!(r.tool_calls[0].name, "get_weather");
        assert_eq!(r.tool_calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(r.finish, Some(FinishReason::ToolCalls));
        let mut d = ResponseDecoder::new("g");
        assert!(matches!(
            d.decode("", "{\"candidates\":[").unwrap_err(),
            ProviderError::Malformed { .. }
        ));
        assert!(d.decode("", r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#).unwrap_err().retryable());
        assert!(!d.clean_eof());
    }

    #[test]
    fn embeddings() {
        let b = embed_body(
            "text-embedding-004",
            &EmbedRequest {
                inputs: vec!["a".into(), "b".into()],
                dimensions: None,
            },
        );
        assert_eq!(b["requests"][1]["model"], "models/text-embedding-004");
        let w: EmbedWire =
            serde_json::from_str(r#"{"embeddings":[{"values":[0.1,0.2]},{"values":[0.3,0.4]}]}"#)
                .expect("parse");
        assert_eq!(
            map_embeddings(w, 2).expect("map").vectors[1],
            vec![0.3, 0.4]
        );
    }
}
