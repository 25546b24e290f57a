//! The MCP surface: `search`, `ask`, `get_document` and `list_sources` as Model Context
//! Protocol tools with JSON Schema input and structured output, served over Streamable HTTP
//! at `/mcp` (behind the Origin check) and over stdio by `cairn mcp`. The protocol itself is
//! the `rmcp` SDK's; this file maps tool calls onto the same checks and calls as the HTTP
//! routes: keys, scopes, access groups and rate limits per call, the answer pipeline with its
//! traces.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    ErrorData, Implementation, ListResourceTemplatesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ResourceContents,
    ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{Json, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use cairn_index::{Filter, SearchMode};

use crate::engine::Engine;
use crate::http::ask::{AskBody, AskResponse, validate_ask};
use crate::http::auth::{Caller, Scope};
use crate::http::error::ApiError;
use crate::http::search::check_sources;
use crate::http::state::AppState;

/// Documents are resources `cairn://doc/{doc_id}`.
pub const DOC_URI: &str = "cairn://doc/";

/// The route the Streamable HTTP transport is mounted at.
pub const ROUTE: &str = "/mcp";

/// `/mcp` on cairn's router: the SDK's Streamable HTTP service behind the Origin check.
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let server = CairnMcp::over_http(state.clone());
    // The Origin check is ours (cairn's error shape, `[server] allowed_origins`); the SDK's
    // Host allow-list is off because cairn is served under any host name its operator picks.
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_cancellation_token(tokio_util::sync::CancellationToken::new());
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new()
        .route_service(ROUTE, service)
        .layer(axum::middleware::from_fn_with_state(state, check_origin))
}

/// Refuses a request whose `Origin` is neither loopback nor listed in `[server]
/// allowed_origins`: a web page the user visits must not drive the tools through the user's
/// browser (DNS rebinding). Requests without `Origin` (desktop and server clients) pass.
async fn check_origin(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).map(|v| v.to_str());
    match origin {
        None => next.run(req).await,
        Some(Ok(o)) if origin_allowed(o, &s.engine.config.server.allowed_origins) => {
            next.run(req).await
        }
        Some(o) => {
            let shown = o.unwrap_or("(not text)").to_string();
            tracing::warn!(origin = %shown, "mcp: refused a request from a foreign origin");
            ApiError::OriginNotAllowed(shown).into_response()
        }
    }
}

/// Whether `origin` (`scheme://host[:port]`) is a loopback origin or one of `allowed`.
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(h, _)| h).unwrap_or(""),
        None => rest.split(':').next().unwrap_or(""),
    };
    matches!(
        host.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "::1"
    )
}

/// The MCP server: the HTTP state, and for stdio the caller named on the command line.
#[derive(Clone)]
pub struct CairnMcp {
    state: Arc<AppState>,
    /// `Some` over stdio: every call runs as this caller. `None` over HTTP: each call's
    /// `Authorization` header names the caller.
    fixed: Option<Caller>,
    tool_router: ToolRouter<Self>,
}

/// `search` input.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// The words to search for.
    pub query: String,
    /// Number of hits, 1 to 100 (default 10).
    pub k: Option<usize>,
    pub filters: Option<Filters>,
}

/// Narrows a search or an answer; the caller's access groups always apply as well.
#[derive(Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Only these sources (names from `list_sources`).
    #[serde(default)]
    pub source: Vec<String>,
    /// Every pair must equal the document's metadata value.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339 time: only documents updated after it (`ask` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_after: Option<String>,
    /// RFC 3339 time: only documents updated before it (`ask` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_before: Option<String>,
}

/// One earlier turn of the conversation.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// `ask` input.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AskArgs {
    pub question: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
    /// Earlier turns, oldest first.
    #[serde(default)]
    pub conversation: Vec<Turn>,
    /// `rag` (default: one retrieval, one model call) or `agent` (the model looks things up
    /// with tools, within the server's `[agent]` budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::answer::events::Mode>,
}

/// `get_document` input.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DocArgs {
    /// A `doc_id` from `search` or `ask`.
    pub doc_id: String,
}

/// One `search` hit.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Hit {
    pub doc_id: String,
    pub chunk_id: String,
    pub title: String,
    pub url: Option<String>,
    pub source: String,
    pub snippet: String,
    pub score: f32,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SearchOutput {
    pub hits: Vec<Hit>,
}

/// `ask` output: the answer, its verified citations (as `/ask` gives them), the outcome.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct AskOutput {
    pub answer: String,
    /// `{n, doc_id, chunk_id, title, url, page, char_start, char_end, quote, quote_start,
    /// quote_end}` per cited passage.
    pub citations: Vec<Value>,
    /// `answered`, `no_answer`, ... as in `/ask`'s `done` event.
    pub outcome: Option<String>,
    /// `rag` or `agent` (an agent request the configured model cannot serve runs as `rag`).
    pub mode: Option<String>,
    /// Agent mode: tool calls made.
    pub steps: Option<usize>,
    pub trace_id: Option<String>,
}

/// `get_document` output.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DocumentOutput {
    pub doc_id: String,
    pub source: String,
    pub title: String,
    pub url: Option<String>,
    pub updated_at: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The document's text: its chunks in order.
    pub text: String,
}

/// One source the caller may read.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SourceOutput {
    pub name: String,
    pub kind: String,
    pub documents: usize,
    /// When its last sync finished (RFC 3339), if this process saw one.
    pub last_sync: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SourcesOutput {
    pub sources: Vec<SourceOutput>,
}

/// A refused or failed call: the HTTP error's code and message, as tool error text. (Tools
/// spell out `Result<Json<T>, String>`: the SDK's macro finds the output schema in it.)
fn tool_error(e: ApiError) -> String {
    format!("{}: {e}", e.code())
}

impl CairnMcp {
    pub fn over_http(state: Arc<AppState>) -> CairnMcp {
        CairnMcp {
            state,
            fixed: None,
            tool_router: Self::tool_router(),
        }
    }

    /// The stdio server: every call runs with `caller`'s scopes and groups.
    pub fn for_caller(state: Arc<AppState>, caller: Caller) -> CairnMcp {
        CairnMcp {
            state,
            fixed: Some(caller),
            tool_router: Self::tool_router(),
        }
    }

    /// The caller of one tool call, checked for `scope` (and, over HTTP, its rate limit).
    fn caller(&self, cx: &RequestContext<RoleServer>, scope: Scope) -> Result<Caller, ApiError> {
        if let Some(c) = &self.fixed {
            return if c.can(scope) {
                Ok(c.clone())
            } else {
                Err(ApiError::Forbidden(scope_name(scope)))
            };
        }
        let empty = HeaderMap::new();
        let headers = cx
            .extensions
            .get::<axum::http::request::Parts>()
            .map_or(&empty, |p| &p.headers);
        self.state.authorize_scope(headers, scope)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        tokio::task::spawn_blocking(f).await.map_err(|e| {
            tracing::error!(error = %e, "mcp: tool task panicked");
            ApiError::Internal
        })?
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Ask => "ask",
        Scope::Search => "search",
        Scope::Admin => "admin",
        Scope::Metrics => "metrics",
    }
}

#[tool_router]
impl CairnMcp {
    /// Hybrid search over the documents this key may read.
    #[tool(
        description = "Hybrid (keyword + semantic) search over the knowledge base. Returns hits with doc_id, chunk_id, title, url, snippet and score."
    )]
    async fn search(
        &self,
        Parameters(args): Parameters<SearchArgs>,
        cx: RequestContext<RoleServer>,
    ) -> Result<Json<SearchOutput>, String> {
        self.run_search(args, &cx).await.map_err(tool_error)
    }

    #[tool(
        description = "Answer a question from the knowledge base with verified citations; `outcome` says whether it answered."
    )]
    async fn ask(
        &self,
        Parameters(args): Parameters<AskArgs>,
        cx: RequestContext<RoleServer>,
    ) -> Result<Json<AskOutput>, String> {
        self.run_ask(args, &cx).await.map_err(tool_error)
    }

    #[tool(description = "A document's full text, title, URL and metadata by its doc_id.")]
    async fn get_document(
        &self,
        Parameters(args): Parameters<DocArgs>,
        cx: RequestContext<RoleServer>,
    ) -> Result<Json<DocumentOutput>, String> {
        self.run_get_document(args, &cx).await.map_err(tool_error)
    }

    #[tool(description = "The sources this key may read: name, kind, document count, last sync.")]
    async fn list_sources(
        &self,
        cx: RequestContext<RoleServer>,
    ) -> Result<Json<SourcesOutput>, String> {
        self.run_list_sources(&cx).await.map_err(tool_error)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CairnMcp {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .build();
        // Clients show this name and version (the SDK's own would say `rmcp`).
        let server = Implementation::new("cairn", env!("CARGO_PKG_VERSION"))
            .with_title("cairn knowledge base");
        ServerConfig::new(capabilities)
            .with_server_info(server)
            .with_instructions(
                "cairn: search the knowledge base, ask questions answered with verified citations, read documents (also as cairn://doc/{doc_id} resources).",
            )
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let template = ResourceTemplate::new(format!("{DOC_URI}{{doc_id}}"), "document")
            .with_description("A document's text by the doc_id that search and ask return.")
            .with_mime_type("text/plain");
        Ok(ListResourceTemplatesResult {
            resource_templates: vec![template],
            ..Default::default()
        })
    }

    /// `cairn://doc/{doc_id}`: the document's text, under the same checks as `get_document`.
    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let Some(doc_id) = request.uri.strip_prefix(DOC_URI).map(str::to_string) else {
            return Err(ErrorData::resource_not_found(
                format!("`{}` is not a cairn://doc/{{doc_id}} URI", request.uri),
                None,
            ));
        };
        let refused = |e: ApiError| match e {
            ApiError::NotFound(_) => ErrorData::resource_not_found(tool_error(e), None),
            ApiError::Internal => ErrorData::internal_error(tool_error(e), None),
            e => ErrorData::invalid_request(tool_error(e), None),
        };
        let caller = self.caller(&cx, Scope::Search).map_err(refused)?;
        let engine = self.state.engine.clone();
        let doc = self
            .blocking(move || read_document(&engine, &caller, &doc_id))
            .await
            .map_err(refused)?;
        let contents = ResourceContents::text(doc.text, request.uri).with_mime_type("text/plain");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

impl CairnMcp {
    async fn run_search(
        &self,
        args: SearchArgs,
        cx: &RequestContext<RoleServer>,
    ) -> Result<Json<SearchOutput>, ApiError> {
        let caller = self.caller(cx, Scope::Search)?;
        let engine = self.state.engine.clone();
        let k = args.k.unwrap_or(10);
        if k == 0 || k > 100 {
            return Err(ApiError::InvalidRequest(
                "`k` must be between 1 and 100".into(),
            ));
        }
        if args.query.trim().is_empty() {
            return Err(ApiError::InvalidRequest("`query` is empty".into()));
        }
        let limit = engine.config.server.max_question_chars;
        let chars = args.query.chars().count();
        if chars > limit {
            return Err(ApiError::QuestionTooLong { chars, limit });
        }
        let f = args.filters.unwrap_or_default();
        check_sources(&engine, &caller.groups, &f.source)?;
        let filter = Filter {
            sources: f.source,
            metadata: f.metadata,
            caller_groups: caller.groups,
            ..Filter::default()
        };
        let hits = self
            .blocking(move || {
                engine
                    .search(&args.query, k, filter, SearchMode::Hybrid)
                    .map_err(|e| {
                        tracing::warn!(error = %e, "mcp: search failed");
                        ApiError::Internal
                    })
            })
            .await?;
        let hits = hits
            .iter()
            .map(|h| Hit {
                doc_id: h.document.id.clone(),
                chunk_id: h.chunk_id.clone(),
                title: h.document.title.clone(),
                url: h.document.url.clone(),
                source: h.document.source.clone(),
                snippet: h.snippet.clone().unwrap_or_default(),
                score: h.score,
            })
            .collect();
        Ok(Json(SearchOutput { hits }))
    }

    /// Runs the answer pipeline to its end, exactly as a non-streaming `/ask`.
    async fn run_ask(
        &self,
        args: AskArgs,
        cx: &RequestContext<RoleServer>,
    ) -> Result<Json<AskOutput>, ApiError> {
        let caller = self.caller(cx, Scope::Ask)?;
        let engine = self.state.engine.clone();
        let body: AskBody = serde_json::from_value(json!(args))
            .map_err(|e| ApiError::InvalidRequest(format!("ask: {e}")))?;
        let (req, _) = validate_ask(&engine, body, &caller)?;
        let (tx, mut rx) = mpsc::channel(64);
        let from = crate::agent::Origin {
            caller: caller.name.clone(),
            http_route: None,
            lane: crate::answer::load::Lane::Interactive,
        };
        tokio::spawn(crate::agent::answer_as(engine, req, from, tx));
        let mut resp = AskResponse::default();
        while let Some(ev) = rx.recv().await {
            resp.apply(ev);
        }
        let resp = resp.completed("")?;
        Ok(Json(AskOutput {
            answer: resp.answer,
            citations: resp
                .citations
                .iter()
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                .collect(),
            outcome: resp.outcome,
            mode: resp.mode.as_ref().map(|m| m.mode.to_string()),
            steps: resp.mode.as_ref().and_then(|m| m.steps),
            trace_id: resp.trace_id,
        }))
    }

    async fn run_get_document(
        &self,
        args: DocArgs,
        cx: &RequestContext<RoleServer>,
    ) -> Result<Json<DocumentOutput>, ApiError> {
        let caller = self.caller(cx, Scope::Search)?;
        let engine = self.state.engine.clone();
        self.blocking(move || read_document(&engine, &caller, &args.doc_id))
            .await
            .map(Json)
    }

    async fn run_list_sources(
        &self,
        cx: &RequestContext<RoleServer>,
    ) -> Result<Json<SourcesOutput>, ApiError> {
        let caller = self.caller(cx, Scope::Search)?;
        let engine = self.state.engine.clone();
        self.blocking(move || {
            let sources = engine
                .readable_sources(&caller.groups)
                .into_iter()
                .map(|src| SourceOutput {
                    name: src.name,
                    kind: src.kind,
                    documents: src.documents,
                    last_sync: src.last_sync,
                })
                .collect();
            Ok(Json(SourcesOutput { sources }))
        })
        .await
    }
}

/// A document the caller may not read is refused exactly like one that does not exist.
/// Blocking.
fn read_document(
    engine: &Engine,
    caller: &Caller,
    doc_id: &str,
) -> Result<DocumentOutput, ApiError> {
    let (doc, chunks) = engine
        .readable_document(doc_id, &caller.groups)
        .map_err(|_| ApiError::Internal)?
        .ok_or_else(|| ApiError::NotFound(format!("document `{doc_id}`")))?;
    Ok(DocumentOutput {
        text: crate::engine::document_text(&chunks),
        doc_id: doc.id,
        source: doc.source,
        title: doc.title,
        url: doc.url,
        updated_at: doc.updated_at.map(|t| t.to_rfc3339()),
        metadata: doc.metadata,
    })
}

/// Serves the MCP tools over stdin/stdout as `caller` until the client disconnects.
pub async fn serve_stdio(state: Arc<AppState>, caller: Caller) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let server = CairnMcp::for_caller(state, caller)
        .serve(rmcp::transport::stdio())
        .await?;
    server.waiting().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_origins_pass_others_do_not() {
        let listed = vec!["https://kb.example.com".to_string()];
        for ok in [
            "http://localhost:7700",
            "http://127.0.0.1",
            "https://[::1]:8443",
            "https://kb.example.com",
        ] {
            assert!(origin_allowed(ok, &listed), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "http://localhost.evil.example",
            "null",
            "http://127.0.0.1.evil.example:80",
            "https://kb.example.com.evil.example",
        ] {
            assert!(!origin_allowed(bad, &listed), "{bad}");
        }
    }
}
