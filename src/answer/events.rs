//! The answer pipeline's vocabulary, shared by the pipeline, its cache and every surface that
//! shows an answer: the request ([`AskRequest`]) and the typed events it produces.
//!
//! Must not: depend on the engine or the pipeline (the cache below them stores these types).

use rmcp::schemars;
use serde::Serialize;

use cairn_index::Filter;

use crate::answer::handoff::Handoff;
use crate::providers::Message;
use crate::retrieval::HitView;

/// One verified citation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Citation {
    pub n: usize,
    pub doc_id: String,
    pub chunk_id: String,
    pub title: String,
    pub url: Option<String>,
    pub page: Option<u32>,
    /// The chunk's place in its document, in characters.
    pub char_start: usize,
    pub char_end: usize,
    /// The sentence of the chunk that best supports the answer text citing it, verbatim: the
    /// chunk's text from character `quote_start` to `quote_end`.
    pub quote: String,
    /// Where `quote` lies in the chunk's text as stored (not the document), in characters
    /// (Unicode scalar values), end exclusive.
    pub quote_start: usize,
    pub quote_end: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsageView {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub model: String,
    pub provider: String,
    pub cache_hit: bool,
}

/// How an answer was produced, as its `done` event tells it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ModeView {
    /// `rag` (one retrieval, one model call) or `agent` (a tool loop).
    pub mode: &'static str,
    /// Tool calls made (the `step` events); agent mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Model calls made, the closing answer included; agent mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_calls: Option<u32>,
    /// The `[agent]` limit that ended the tool loop early (`max_steps`, `max_tool_calls`,
    /// `max_tokens`, `max_cost_usd`, `max_wall_secs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exhausted: Option<&'static str>,
    /// Why an agent request was answered in plain RAG mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_note: Option<String>,
}

impl ModeView {
    /// A plain RAG answer; `agent_asked` says the caller asked for agent mode and did not get it.
    pub fn rag(agent_asked: bool) -> ModeView {
        ModeView {
            mode: "rag",
            mode_note: agent_asked.then(|| {
                "The configured model cannot call tools (the offline extractive provider), so this question was answered in plain RAG mode.".to_string()
            }),
            ..ModeView::default()
        }
    }
}

/// One tool call of an agent run, as streamed before the answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepView {
    /// 1, 2, ... in the order the calls ran.
    pub n: usize,
    pub tool: String,
    /// The arguments the model sent (`{}` when they were not a JSON object).
    pub arguments: serde_json::Value,
    /// What the call returned, in a few words (or why it was refused).
    pub summary: String,
    pub ms: f64,
}

/// Typed events of an answer, in order: retrieval, token*, citation*, usage, done — or error.
/// An agent answer has `step` events where a plain one has `retrieval`.
#[derive(Debug, Clone)]
pub enum AnswerEvent {
    /// The query retrieval ran on (`[retrieval] condense`) and what it found.
    Retrieval {
        query: String,
        hits: Vec<HitView>,
    },
    /// A tool call of agent mode.
    Step(StepView),
    Token(String),
    Citation(Citation),
    Usage(UsageView),
    Done {
        trace_id: String,
        outcome: &'static str,
        dropped_citations: usize,
        /// Whether a human should take over, and why.
        handoff: Option<Handoff>,
        mode: ModeView,
    },
    Error {
        code: &'static str,
        message: String,
    },
}

/// A question with its options.
#[derive(Debug, Clone)]
pub struct AskRequest {
    pub question: String,
    pub filter: Filter,
    pub top_k: usize,
    pub conversation: Vec<Message>,
    /// Whose daily spend cap (`[budget] daily_usd_per_key`) the model call counts against;
    /// `None` counts against the global cap only.
    pub budget_key: Option<String>,
    /// The thread the answer is appended to (kept in its trace).
    pub thread_id: Option<String>,
    /// Agent mode with this run's budget (`"mode": "agent"`); `None`: plain RAG.
    pub agent: Option<crate::agent::settings::AgentBudget>,
}

/// How a question is answered: one retrieval and one model call (`rag`, the default) or a tool
/// loop (`agent`) — on `/ask`, MCP `ask` and in batches.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Rag,
    Agent,
}

impl Mode {
    /// The mode's name as requests and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Rag => "rag",
            Mode::Agent => "agent",
        }
    }
}
