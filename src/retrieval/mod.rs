//! Retrieval: the question's embedding (on its own threads, batched), the reranker, and the
//! retrieve-then-rerank step an answer starts with.
//!
//! Must not: call a provider except through the gateway (the remote reranker), or add a hit
//! the index did not return for the caller.

pub mod condense;
pub mod condense_model;
pub mod query_embed;
pub mod rerank;

use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use cairn_index::{Filter, Hit, IndexBackend, SearchMode, SearchRequest};
use cairn_ingest::rerank::Reranker;

use crate::config::section::{Check, ConfigError};
use crate::retrieval::condense::Condense;
use crate::retrieval::rerank::RawRerank;

/// The retrieve-then-rerank step an answer starts with: hybrid search over the index, then
/// the configured reranker over the widened candidate list.
pub struct Retriever<'a> {
    pub index: &'a dyn IndexBackend,
    pub reranker: &'a dyn Reranker,
    pub rerank: &'a RawRerank,
}

impl Retriever<'_> {
    /// Hits for an answer: the fused top `k`, or, with a reranker configured, the best `k` of
    /// the fused top `[rerank] candidates` by the reranker's scores. Also returns the time
    /// spent reranking in milliseconds. Blocking.
    pub fn retrieve(
        &self,
        text: &str,
        vector: Vec<f32>,
        k: usize,
        filter: Filter,
    ) -> anyhow::Result<(Vec<Hit>, f64)> {
        if self.rerank.kind == "none" {
            return Ok((self.hybrid(text, vector, k, filter)?, 0.0));
        }
        let wide = k.max(self.rerank.candidates);
        let hits = self.hybrid(text, vector, wide, filter)?;
        let started = Instant::now();
        let hits = rerank::apply(self.reranker, text, hits, k)
            .with_context(|| format!("reranking with {}", self.reranker.name()))?;
        Ok((hits, started.elapsed().as_secs_f64() * 1000.0))
    }

    /// Hybrid search with snippets.
    fn hybrid(
        &self,
        text: &str,
        vector: Vec<f32>,
        k: usize,
        filter: Filter,
    ) -> anyhow::Result<Vec<Hit>> {
        Ok(self.index.search(&SearchRequest {
            text: text.to_string(),
            vector: Some(vector),
            k,
            mode: SearchMode::Hybrid,
            filter,
            snippets: true,
        })?)
    }
}

/// A search hit as the API and CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct HitView {
    pub doc_id: String,
    pub chunk_id: String,
    pub title: String,
    pub url: Option<String>,
    pub source: String,
    pub score: f32,
    pub snippet: String,
    pub page: Option<u32>,
    pub heading_path: Vec<String>,
    pub updated_at: Option<String>,
    pub breakdown: cairn_index::ScoreBreakdown,
}

impl HitView {
    pub fn from_hit(h: &Hit) -> HitView {
        HitView {
            doc_id: h.document.id.clone(),
            chunk_id: h.chunk_id.clone(),
            title: h.document.title.clone(),
            url: h.document.url.clone(),
            source: h.document.source.clone(),
            score: h.score,
            snippet: h.snippet.clone().unwrap_or_default(),
            page: h.chunk.page,
            heading_path: h.chunk.heading_path.clone(),
            updated_at: h.document.updated_at.map(|t| t.to_rfc3339()),
            breakdown: h.breakdown.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRetrieval {
    /// Chunks given to the model.
    pub top_k: usize,
    /// A hit counts as relevant when it matched words (BM25) or its cosine similarity is at
    /// least this; with no relevant hit, /ask answers "I don't know" without calling a model.
    pub min_similarity: f32,
    /// Upper bound on context words sent to the model.
    pub max_context_words: usize,
    /// Jaccard similarity of word 3-shingles at or above which a hit repeats an already chosen
    /// one and is left out of the context (1 = only hits whose words repeat exactly).
    pub near_duplicate: f32,
    /// Complete a chunk cut mid-sentence with its neighbour of the same section.
    pub neighbours: bool,
    /// How a follow-up question becomes the query retrieval runs on.
    pub condense: Condense,
    /// `condense = "model"`: a versioned condense prompt file; unset: the built-in one
    /// (`prompts/condense.v1.toml`).
    pub condense_prompt: Option<std::path::PathBuf>,
    /// `condense = "model"`: output tokens the condense call may use.
    pub condense_max_tokens: u32,
    /// `condense = "model"`: how long the condense call may take before the heuristic runs
    /// instead, in milliseconds.
    pub condense_timeout_ms: u64,
    /// `condense = "model"`: the model's `"human": true` hands the answer off as `requested`
    /// (as a handoff phrase does). Off for a model too small to tell.
    pub condense_handoff: bool,
}

impl Default for RawRetrieval {
    fn default() -> Self {
        RawRetrieval {
            top_k: 5,
            min_similarity: 0.5,
            max_context_words: 1500,
            near_duplicate: 0.8,
            neighbours: true,
            condense: Condense::Heuristic,
            condense_prompt: None,
            condense_max_tokens: 96,
            condense_timeout_ms: 3000,
            condense_handoff: true,
        }
    }
}

impl RawRetrieval {
    /// Checks the limits and resolves the condense prompt's path (when one is configured).
    /// That the `condense` route exists is checked with the routes (`config::validate`).
    pub fn validate(mut self, cx: &Check) -> Result<RawRetrieval, ConfigError> {
        if self.top_k == 0 || self.top_k > 50 {
            return Err(cx.key_err("retrieval.top_k", "must be between 1 and 50"));
        }
        if self.condense_max_tokens == 0 || self.condense_max_tokens > 1024 {
            return Err(cx.key_err(
                "retrieval.condense_max_tokens",
                "must be between 1 and 1024 (the reply is one short JSON line)",
            ));
        }
        if self.condense_timeout_ms == 0 {
            return Err(cx.key_err(
                "retrieval.condense_timeout_ms",
                "must be at least 1 (milliseconds the condense call may take)",
            ));
        }
        if !(self.near_duplicate > 0.0 && self.near_duplicate <= 1.0) {
            return Err(cx.key_err(
                "retrieval.near_duplicate",
                "must be above 0 and at most 1 (1 = leave out only hits whose words repeat exactly)",
            ));
        }
        self.condense_prompt = self.condense_prompt.map(|p| cx.path(&p));
        Ok(self)
    }
}
