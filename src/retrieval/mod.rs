//! Retrieval: the question's embedding (on its own threads, batched), the reranker, and the
//! retrieve-then-rerank step an answer starts with.
//!
//! Must not: call a provider except through the gateway (the remote reranker), or add a hit
//! the index did not return for the caller.

pub mod query_embed;
pub mod rerank;

use serde::Serialize;

use cairn_index::Hit;

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
