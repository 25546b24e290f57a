//! The tools agent mode offers the model — `search`, `get_document`, `list_sources` — with
//! their JSON Schemas; reading a call's arguments; running it as the caller; and the passages
//! the run's results returned, numbered in the order they were first returned.
//!
//! Must not: widen what the caller may read. Every call runs with the caller's access groups
//! and the request's own filters; the model's filters may only narrow them, and a document or
//! source the caller may not read is refused exactly like one that does not exist.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::{Value, json};

use cairn_index::{ChunkRecord, DocumentRecord, Filter, Hit};

use crate::answer::context::Passage;
use crate::engine::{Engine, SourceSummary};
use crate::providers::{ContextPassage, Tool, ToolCall};

pub const SEARCH: &str = "search";
pub const GET_DOCUMENT: &str = "get_document";
pub const LIST_SOURCES: &str = "list_sources";

/// Passages a `search` returns unless the model asks for fewer or more.
const DEFAULT_K: usize = 5;
/// The most passages one `search` may return.
const MAX_K: usize = 10;
/// The most passages of one document `get_document` returns.
const MAX_DOCUMENT_PASSAGES: usize = 8;

/// The tools offered to the model.
pub fn offered() -> Vec<Tool> {
    let filters = json!({
        "type": "object",
        "description": "Narrow the search; the caller's own access rules always apply as well.",
        "properties": {
            "source": {"type": "array", "items": {"type": "string"}, "description": "Only these sources (names from list_sources)."},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Every pair must equal the document's metadata value."}
        },
        "additionalProperties": false
    });
    vec![
        Tool {
            name: SEARCH.into(),
            description: "Search the knowledge base. Returns numbered passages to cite.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for, in words."},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "description": "How many passages (default 5)."},
                    "filters": filters
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        },
        Tool {
            name: GET_DOCUMENT.into(),
            description:
                "Read one document (by a doc_id from search results) as numbered passages.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"doc_id": {"type": "string"}},
                "required": ["doc_id"],
                "additionalProperties": false
            }),
        },
        Tool {
            name: LIST_SOURCES.into(),
            description: "The sources this caller may read, with their document counts.".into(),
            parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
        },
    ]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchFilters {
    #[serde(default)]
    source: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    query: String,
    k: Option<usize>,
    filters: Option<SearchFilters>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocArgs {
    doc_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// A call read and checked against what the caller may do.
#[derive(Debug, Clone)]
pub enum Request {
    Search {
        query: String,
        k: usize,
        filter: Filter,
    },
    GetDocument {
        doc_id: String,
        filter: Filter,
    },
    ListSources {
        groups: Vec<String>,
    },
}

/// Reads `call` as one of the offered tools, with the request's `base` filter narrowed by the
/// model's; the error is told to the model as the call's result.
pub fn read(engine: &Engine, base: &Filter, call: &ToolCall) -> Result<Request, String> {
    let args = if call.arguments.trim().is_empty() {
        "{}"
    } else {
        call.arguments.as_str()
    };
    let bad = |e: serde_json::Error| format!("the arguments of `{}` are invalid: {e}", call.name);
    match call.name.as_str() {
        SEARCH => {
            let a: SearchArgs = serde_json::from_str(args).map_err(bad)?;
            if a.query.trim().is_empty() {
                return Err("`query` is empty".into());
            }
            let k = a.k.unwrap_or(DEFAULT_K);
            if k == 0 || k > MAX_K {
                return Err(format!("`k` must be between 1 and {MAX_K}"));
            }
            let filter = narrowed(engine, base, a.filters.unwrap_or_default())?;
            Ok(Request::Search {
                query: a.query,
                k,
                filter,
            })
        }
        GET_DOCUMENT => {
            let a: DocArgs = serde_json::from_str(args).map_err(bad)?;
            Ok(Request::GetDocument {
                doc_id: a.doc_id,
                filter: base.clone(),
            })
        }
        LIST_SOURCES => {
            let _: NoArgs = serde_json::from_str(args).map_err(bad)?;
            Ok(Request::ListSources {
                groups: base.caller_groups.clone(),
            })
        }
        other => Err(format!(
            "there is no tool named `{other}`; the tools are {SEARCH}, {GET_DOCUMENT} and {LIST_SOURCES}"
        )),
    }
}

/// The request's filter narrowed by the model's: a source must be readable by the caller and
/// allowed by the request (else it is unknown, as to the caller), and a metadata key the
/// request fixed keeps its value.
fn narrowed(engine: &Engine, base: &Filter, f: SearchFilters) -> Result<Filter, String> {
    let mut filter = base.clone();
    for name in &f.source {
        let readable = engine
            .config
            .sources
            .iter()
            .any(|s| s.name() == name && s.readable_by(&base.caller_groups));
        let allowed = base.sources.is_empty() || base.sources.contains(name);
        if !(readable && allowed) {
            return Err(format!(
                "unknown source `{name}`; call {LIST_SOURCES} for the names"
            ));
        }
    }
    if !f.source.is_empty() {
        filter.sources = f.source;
    }
    for (k, v) in f.metadata {
        match filter.metadata.get(&k) {
            Some(fixed) if *fixed != v => {
                return Err(format!(
                    "metadata `{k}` is fixed to `{fixed}` for this question"
                ));
            }
            _ => {
                filter.metadata.insert(k, v);
            }
        }
    }
    Ok(filter)
}

/// What a call fetched from the index (before numbering and rendering).
#[derive(Debug)]
pub enum Fetched {
    Hits(Vec<Hit>),
    /// A document, its first passages, and how many more it has.
    Document(Box<DocumentRecord>, Vec<ChunkRecord>, usize),
    Sources(Vec<SourceSummary>),
}

/// Runs a checked request against the index as the caller. Blocking.
pub fn fetch(engine: &Engine, req: Request) -> Result<Fetched, String> {
    match req {
        Request::Search { query, k, filter } => {
            let min_sim = engine.config.retrieval.min_similarity;
            let searched = engine
                .embed_query(&query)
                .and_then(|v| engine.retrieve(&query, v, k, filter));
            match searched {
                Ok((hits, _)) => Ok(Fetched::Hits(
                    hits.into_iter()
                        .filter(|h| crate::answer::relevant(h, min_sim))
                        .collect(),
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "agent: search failed");
                    Err("the search failed; try again or answer from what you have".into())
                }
            }
        }
        Request::GetDocument { doc_id, filter } => {
            let missing = || format!("no document with doc_id `{doc_id}`");
            let found = engine
                .readable_document(&doc_id, &filter.caller_groups)
                .map_err(|e| {
                    tracing::warn!(error = %e, "agent: reading a document failed");
                    "reading the document failed".to_string()
                })?;
            let Some((doc, mut chunks)) = found else {
                return Err(missing());
            };
            if !filter.sources.is_empty() && !filter.sources.contains(&doc.source) {
                return Err(missing());
            }
            let more = chunks.len().saturating_sub(MAX_DOCUMENT_PASSAGES);
            chunks.truncate(MAX_DOCUMENT_PASSAGES);
            Ok(Fetched::Document(Box::new(doc), chunks, more))
        }
        Request::ListSources { groups } => Ok(Fetched::Sources(engine.readable_sources(&groups))),
    }
}

/// The passages a run's tool results returned: numbered 1, 2, ... in the order they were first
/// returned; a chunk returned again keeps its number. `shown` holds each as the model saw it
/// (masked), `passages` as stored (citations quote these).
#[derive(Debug, Default)]
pub struct Gathered {
    pub passages: Vec<Passage>,
    pub shown: Vec<ContextPassage>,
    by_chunk: HashMap<String, usize>,
}

impl Gathered {
    /// The number of `chunk` of `document`, giving it the next one when it is new; `mask`
    /// turns stored text into the text the model may see.
    pub fn number(
        &mut self,
        document: &DocumentRecord,
        chunk: &ChunkRecord,
        mask: &mut dyn FnMut(&str) -> String,
    ) -> usize {
        let id = chunk.chunk_id();
        if let Some(n) = self.by_chunk.get(&id) {
            return *n;
        }
        let n = self.passages.len() + 1;
        self.shown.push(ContextPassage {
            n,
            title: mask(&document.title),
            text: mask(&chunk.text),
        });
        self.passages.push(Passage {
            document: document.clone(),
            chunks: vec![chunk.clone()],
            retrieved: vec![id.clone()],
            text: chunk.text.clone(),
        });
        self.by_chunk.insert(id, n);
        n
    }

    pub fn chunk_ids(&self) -> Vec<String> {
        self.passages
            .iter()
            .flat_map(|p| p.retrieved.iter().cloned())
            .collect()
    }
}

/// A call's result as the model reads it, with what the stream and the trace say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub content: String,
    pub summary: String,
    pub result_ids: Vec<String>,
}

/// Numbers what a call fetched and renders it: passages fenced as untrusted data in the
/// `passage` template (`{n}`, `{title}`, `{doc_id}`, `{source}`, `{text}`).
pub fn render(
    fetched: Fetched,
    template: &str,
    gathered: &mut Gathered,
    mask: &mut dyn FnMut(&str) -> String,
) -> Rendered {
    let mut blocks = Vec::new();
    let mut ids = Vec::new();
    let mut numbered = |doc: &DocumentRecord, chunk: &ChunkRecord, g: &mut Gathered| {
        let n = g.number(doc, chunk, mask);
        let p = &g.shown[n - 1];
        ids.push(chunk.chunk_id());
        blocks.push(passage(template, p, doc));
        n
    };
    match fetched {
        Fetched::Hits(hits) => {
            let ns: Vec<usize> = hits
                .iter()
                .map(|h| numbered(&h.document, &h.chunk, gathered))
                .collect();
            let summary = match ns.len() {
                0 => "no passages matched".to_string(),
                k => format!("{k} passages: {}", list(&ns, gathered)),
            };
            let content = if blocks.is_empty() {
                "No passages matched this search.".to_string()
            } else {
                blocks.join("\n")
            };
            Rendered {
                content,
                summary,
                result_ids: ids,
            }
        }
        Fetched::Document(doc, chunks, more) => {
            let ns: Vec<usize> = chunks.iter().map(|c| numbered(&doc, c, gathered)).collect();
            let mut content = blocks.join("\n");
            if more > 0 {
                content.push_str(&format!(
                    "\n({more} more passages of this document are not shown; search for them.)"
                ));
            }
            Rendered {
                content,
                summary: format!(
                    "{} passages of one document: {}",
                    ns.len(),
                    list(&ns, gathered)
                ),
                result_ids: ids,
            }
        }
        Fetched::Sources(sources) => {
            let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
            let rows: Vec<Value> = sources
                .iter()
                .map(|s| json!({"name": s.name, "kind": s.kind, "documents": s.documents}))
                .collect();
            Rendered {
                content: json!({ "sources": rows }).to_string(),
                summary: format!("{} sources", names.len()),
                result_ids: names,
            }
        }
    }
}

/// `[1] Title, [2] Title` for a summary.
fn list(ns: &[usize], gathered: &Gathered) -> String {
    ns.iter()
        .map(|n| format!("[{n}] {}", gathered.shown[n - 1].title))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One passage in the template, every inserted value escaped so it cannot close its element.
fn passage(template: &str, p: &ContextPassage, doc: &DocumentRecord) -> String {
    use crate::answer::prompt::{fence, fence_attribute};
    template
        .replace("{n}", &p.n.to_string())
        .replace("{title}", &fence_attribute(&p.title))
        .replace("{doc_id}", &fence_attribute(&doc.id))
        .replace("{source}", &fence_attribute(&doc.source))
        .replace("{text}", &fence(&p.text))
}
