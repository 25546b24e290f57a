//! OpenAI-compatible servers (Ollama, vLLM, llama.cpp `llama-server`, LiteLLM, TEI for rerank):
//! a required `base_url` (e.g. `http://127.0.0.1:8080/v1`), an optional key, the OpenAI Chat
//! Completions and Embeddings mapping of [`super::openai`] with `max_tokens` (the older field
//! these servers all accept), plus `POST {base_url}/rerank` in the shape shared by Cohere v2,
//! Jina and Hugging Face TEI: request `{model, query, documents, top_n}`, response either
//! `{results: [{index, relevance_score}]}` (Cohere/Jina) or `[{index, score}]` (TEI).

use serde::{Deserialize, Serialize};

use super::http::Endpoint;
use super::openai::{Flavor, OpenAi};
use super::{
    ChatRequest, ChatStream, EmbedRequest, EmbedResponse, ProviderError, RerankRequest,
    RerankResponse,
};

#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    pub inner: OpenAi,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RerankBody {
    pub model: String,
    pub query: String,
    pub documents: Vec<String>,
    /// TEI's name for the documents.
    pub texts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_n: Option<usize>,
}

pub fn rerank_body(model: &str, req: &RerankRequest) -> RerankBody {
    RerankBody {
        model: model.into(),
        query: req.query.clone(),
        documents: req.documents.clone(),
        texts: req.documents.clone(),
        top_n: req.top_n,
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RerankWire {
    Results { results: Vec<RerankItem> },
    Bare(Vec<RerankItem>),
}

#[derive(Debug, Deserialize)]
pub struct RerankItem {
    pub index: usize,
    #[serde(default, alias = "score")]
    pub relevance_score: f32,
}

/// Maps either response shape, sorted by decreasing score and cut to `top_n` (pure).
pub fn map_rerank(w: RerankWire, top_n: Option<usize>) -> RerankResponse {
    let mut items = match w {
        RerankWire::Results { results } => results,
        RerankWire::Bare(v) => v,
    };
    items.sort_by(|a, b| b.relevance_score.total_cmp(&a.relevance_score));
    if let Some(n) = top_n {
        items.truncate(n);
    }
    RerankResponse {
        results: items
            .into_iter()
            .map(|i| (i.index, i.relevance_score))
            .collect(),
    }
}

impl OpenAiCompatible {
    pub fn new(endpoint: Endpoint) -> OpenAiCompatible {
        OpenAiCompatible {
            inner: OpenAi {
                endpoint,
                flavor: Flavor::Compatible,
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
        self.inner.embed(model, req).await
    }

    pub async fn rerank(
        &self,
        model: &str,
        req: &RerankRequest,
    ) -> Result<RerankResponse, ProviderError> {
        let w: RerankWire = self
            .inner
            .endpoint
            .post_json("/rerank", &rerank_body(model, req), model)
            .await?;
        Ok(map_rerank(w, req.top_n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerank_both_shapes() {
        let cohere: RerankWire = serde_json::from_str(r#"{"id":"x","results":[{"index":1,"relevance_score":0.2},{"index":0,"relevance_score":0.9}],"meta":{}}"#).expect("cohere");
        assert_eq!(map_rerank(cohere, Some(1)).results, vec![(0, 0.9)]);
        let tei: RerankWire =
            serde_json::from_str(r#"[{"index":0,"score":0.1},{"index":1,"score":0.7}]"#)
                .expect("tei");
        assert_eq!(map_rerank(tei, None).results, vec![(1, 0.7), (0, 0.1)]);
    }
}
