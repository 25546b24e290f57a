//! Plain data types shared by the index API: documents, chunks, filters, requests and hits.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Identity of the embedding model whose vectors an index holds. Stored in the manifest:
/// opening an index with a different embedder is an error, never silent garbage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderInfo {
    pub name: String,
    pub version: String,
    pub dimension: usize,
}

impl std::fmt::Display for EmbedderInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} ({}-d)", self.name, self.version, self.dimension)
    }
}

/// A source document. `id` is stable: `<source>:<external id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub id: String,
    pub source: String,
    pub external_id: String,
    pub title: String,
    pub url: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Empty means visible to every caller; otherwise only to callers holding one of these.
    #[serde(default)]
    pub access_groups: Vec<String>,
    pub content_hash: String,
}

impl DocumentRecord {
    /// The stable document id for a source and an external id.
    pub fn make_id(source: &str, external_id: &str) -> String {
        format!("{source}:{external_id}")
    }
}

/// A chunk as stored: text plus where it sits in the original document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub doc_id: String,
    /// Position of the chunk in its document, from 0.
    pub ordinal: u32,
    pub text: String,
    #[serde(default)]
    pub heading_path: Vec<String>,
    pub page: Option<u32>,
    /// Char offsets (not bytes) of the chunk in the document's extracted text.
    pub char_start: usize,
    pub char_end: usize,
}

impl ChunkRecord {
    /// The public chunk id, `<doc id>#<ordinal>`.
    pub fn chunk_id(&self) -> String {
        chunk_id_string(&self.doc_id, self.ordinal)
    }
}

/// The public chunk id, `<doc id>#<ordinal>`.
pub fn chunk_id_string(doc_id: &str, ordinal: u32) -> String {
    format!("{doc_id}#{ordinal}")
}

/// A chunk to upsert with its embedding.
#[derive(Debug, Clone)]
pub struct ChunkInput {
    pub chunk: ChunkRecord,
    pub vector: Vec<f32>,
}

/// An inclusive range of `updated_at` times; either end may be open.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// What a caller may see and wants to see. Applied inside both searches, never after a top-k cut.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only these sources; empty means all.
    pub sources: Vec<String>,
    /// Every pair must equal the document's metadata value.
    pub metadata: BTreeMap<String, String>,
    pub updated: Option<TimeRange>,
    /// The caller's access groups. Documents with groups are visible only when one matches.
    pub caller_groups: Vec<String>,
}

/// Which retrievers to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    Bm25,
    Dense,
    #[default]
    Hybrid,
}

/// One search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub text: String,
    /// The query embedding; required for dense and hybrid modes.
    pub vector: Option<Vec<f32>>,
    pub k: usize,
    pub mode: SearchMode,
    pub filter: Filter,
    /// Produce highlighted snippets (costs a little time).
    pub snippets: bool,
}

/// Why a hit ranked where it did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreBreakdown {
    pub bm25_rank: Option<usize>,
    pub bm25_score: Option<f32>,
    pub vector_rank: Option<usize>,
    pub vector_similarity: Option<f32>,
    pub fused: f32,
    /// The reranker's score, when a rerank step reordered the fused list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<f32>,
}

/// A ranked chunk with its document.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub chunk_id: String,
    pub score: f32,
    pub breakdown: ScoreBreakdown,
    pub chunk: ChunkRecord,
    pub document: DocumentRecord,
    /// HTML-escaped text with `<mark>` around matched terms, when requested.
    pub snippet: Option<String>,
}
