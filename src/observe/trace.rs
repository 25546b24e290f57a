//! One request's trace record (timings, provider, tokens, cost, retrieved chunks, prompt
//! version, cache hit, outcome): what the answer pipeline fills in, the trace store keeps and
//! the OTLP exporter turns into spans.
//!
//! Must not: depend on where traces go (the store and the exporter sit above this record).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// Embedding the question.
    #[serde(default)]
    pub embed_ms: f64,
    /// From the start of the request to the reranked hits (embedding included).
    pub retrieve_ms: f64,
    /// The rerank step alone (0 without a reranker).
    #[serde(default)]
    pub rerank_ms: f64,
    pub first_token_ms: Option<f64>,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RetrievedChunk {
    pub chunk_id: String,
    pub score: f32,
}

/// One tool call of an agent run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentStep {
    /// 1, 2, ... as the `step` events number them.
    pub n: usize,
    /// The model call (1, 2, ...) that asked for it.
    pub turn: u32,
    pub tool: String,
    /// The arguments the model sent; kept only with `[traces] record_text` (a search query
    /// is the caller's words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// What the call returned: chunk ids (`search`, `get_document`) or source names.
    pub result_ids: Vec<String>,
    /// Why the call was refused or failed, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ms: f64,
    /// Tokens and cost of the model call that asked for it (on the first step of that call
    /// only, so the steps sum to the run's tool-loop spend).
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// How the query was made (`[retrieval] condense`), and what the condense model call cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CondenseTrace {
    /// The condenser whose query retrieval ran on: `model`, `heuristic` or `off`.
    pub condenser: String,
    /// `condense = "model"`: why the heuristic ran instead (`timeout`, `provider_error`,
    /// `budget_exhausted`, `empty`, `unparsable`, `too_long`, `unrelated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// The error behind a `timeout` or `provider_error` fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The condense model said the caller asks for a person (hand-off `requested`).
    #[serde(default)]
    pub human: bool,
    /// The condense prompt's version, when the model was called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_version: Option<String>,
    /// The target that served the condense call, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tokens and cost of the condense call (charged to the budget like the answer's), and
    /// how long it took.
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Trace {
    pub id: String,
    pub at: String,
    pub route: String,
    /// The HTTP route the question came in on (`/ask`, `/v1/chat/completions`); none from the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route: Option<String>,
    pub caller: String,
    /// The thread the answer belongs to (`/ask`, `/v1/chat/completions`); erasing the thread
    /// erases the text of its traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    pub timings: Timings,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// Providers tried before the one that served, with their errors.
    pub provider_errors: Vec<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub retrieved: Vec<RetrievedChunk>,
    pub prompt_version: String,
    pub cache_hit: Option<String>,
    pub dropped_citations: usize,
    /// Relevant hits left out of the context as near-duplicates of a chosen one.
    #[serde(default)]
    pub context_near_duplicates: usize,
    /// Neighbouring chunks added to complete a passage cut mid-sentence.
    #[serde(default)]
    pub context_neighbours: usize,
    pub outcome: String,
    pub question: Option<String>,
    /// The query retrieval ran on (`[retrieval] condense`: the question, or the question with
    /// words of the caller's earlier turns); kept only with the question text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// How `query` was made; none for agent runs (they search with the model's own queries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condense: Option<CondenseTrace>,
    pub answer: Option<String>,
    /// The documents the answer cited, in order of first citation (feedback and its export
    /// name them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cited: Vec<String>,
    /// Agent mode: every tool call, in order (empty for a plain answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_steps: Vec<AgentStep>,
    /// Agent mode: the model calls made and the `[agent]` limit that ended the loop, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_model_calls: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_exhausted: Option<String>,
}
