//! Mistral La Plateforme: `POST /v1/chat/completions` (streamed) and `POST /v1/embeddings`.
//!
//! The wire format is OpenAI's Chat Completions with these differences, per the Mistral API
//! reference (v1, 2025): no `stream_options` (usage always arrives on the last chunk),
//! `max_tokens` instead of `max_completion_tokens`, `tool_choice = "any"` for "must call a
//! tool", tool calls arrive whole in one chunk, extra finish reasons `model_length` and
//! `error`, and embeddings take `output_dimension` instead of `dimensions`. Chunks are decoded
//! by [`super::openai::ChunkDecoder`] via [`Flavor::Mistral`].

use serde::Serialize;

use super::http::Endpoint;
use super::openai::{EmbedWire, Flavor, OpenAi, map_embeddings};
use super::{ChatRequest, ChatStream, EmbedRequest, EmbedResponse, ProviderError};

pub const DEFAULT_BASE_URL: &str = "https://api.mistral.ai/v1";

#[derive(Debug, Clone)]
pub struct Mistral {
    pub inner: OpenAi,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct EmbedBody {
    pub model: String,
    pub input: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dimension: Option<u32>,
}

/// Builds a Mistral embeddings body (pure).
pub fn embed_body(model: &str, req: &EmbedRequest) -> EmbedBody {
    EmbedBody {
        model: model.into(),
        input: req.inputs.clone(),
        output_dimension: req.dimensions,
    }
}

impl Mistral {
    pub fn new(endpoint: Endpoint) -> Mistral {
        Mistral {
            inner: OpenAi {
                endpoint,
                flavor: Flavor::Mistral,
            },
        }
    }

    pub async fn chat_stream(
        &self,
        model: &str,
        req: &ChatRequest,
    ) -> Result<ChatStream, ProviderError> {
        self.inner.chat_stream(model, req).await
    }

    pub async fn embed(
        &self,
        model: &str,
        req: &EmbedRequest,
    ) -> Result<EmbedResponse, ProviderError> {
        let ep = &self.inner.endpoint;
        let w: EmbedWire = ep
            .post_json("/embeddings", &embed_body(model, req), model)
            .await?;
        map_embeddings(w, req.inputs.len()).map_err(|e| ep.malformed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::http::SseDecoder;
    use crate::providers::openai::ChunkDecoder;
    use crate::providers::{ChatResponse, FinishReason};

    #[test]
    fn whole_tool_call_and_model_length() {
        let mut d = ChunkDecoder::new("mi");
        let mut r = ChatResponse::default();
        for c in [
            r#"{"id":"a1","object":"chat.completion.chunk","created":1,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"a1","object":"chat.completion.chunk","created":1,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"tool_calls":[{"id":"D681PevKs","function":{"name":"get_weather","arguments":"{\"city\": \"Oslo\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":70,"total_tokens":91,"completion_tokens":21}}"#,
        ] {
            d.decode("", c)
                .expect("ok")
                .events
                .into_iter()
                .for_each(|e| r.push(e));
        }
        assert_eq!(r.tool_calls[0].id, "D681PevKs");
        assert_eq!(r.tool_calls[0].arguments, r#"{"city": "Oslo"}"#);
        assert_eq!(r.usage.input_tokens, 70);
        assert_eq!(
            crate::providers::openai::finish_reason("model_length"),
            FinishReason::Length
        );
        let b = serde_json::to_value(embed_body(
            "mistral-embed",
            &EmbedRequest {
                inputs: vec!["x".into()],
                dimensions: Some(8),
            },
        ))
        .expect("json");
        assert_eq!(b["output_dimension"], 8);
    }
}
