//! The answer pipeline's vocabulary, shared by the pipeline, its cache and every surface that
//! shows an answer: the request ([`AskRequest`]) and the typed events it produces.
//!
//! Must not: depend on the engine or the pipeline (the cache below them stores these types).

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

/// Typed events of an answer, in order: retrieval, token*, citation*, usage, done — or error.
#[derive(Debug, Clone)]
pub enum AnswerEvent {
    /// The query retrieval ran on (`[retrieval] condense`) and what it found.
    Retrieval {
        query: String,
        hits: Vec<HitView>,
    },
    Token(String),
    Citation(Citation),
    Usage(UsageView),
    Done {
        trace_id: String,
        outcome: &'static str,
        dropped_citations: usize,
        /// Whether a human should take over, and why.
        handoff: Option<Handoff>,
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
}

/// How a question is answered: `rag` (retrieve once, then answer: the pipeline of this
/// module) or `agent` (a tool loop; not available in this build, so it ends with the typed
/// error [`Mode::unavailable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Rag,
    Agent,
}

impl Mode {
    /// The error an answer in `mode` ends with when this build cannot answer in it: the code
    /// and wording `/ask` gives a mode it does not know.
    pub fn unavailable(self) -> Option<AnswerEvent> {
        match self {
            Mode::Rag => None,
            Mode::Agent => Some(AnswerEvent::Error {
                code: "invalid_request",
                message: "`mode` \"agent\" is not available on this server; use \"rag\"".into(),
            }),
        }
    }
}
