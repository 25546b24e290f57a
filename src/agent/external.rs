//! External tools (`[[agent.tools]]`): cairn as a Model Context Protocol client of a
//! company's own tool servers, over Streamable HTTP with the `rmcp` SDK. Owns listing each
//! server's tools (cached per process), offering the allow-listed ones under the name
//! `<server>__<tool>` with the input schema the server gives, calling one within a deadline,
//! and turning what it returned into text for the model.
//!
//! Each list and each call opens its own MCP session (initialise, request, close): no session
//! outlives a request, so a restarted server needs nothing from cairn.
//!
//! Must not: offer or call a tool that `allow` does not name, send a header value anywhere but
//! its server, wait past the deadline it is given, or panic on what a server sends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;

use crate::agent::settings::{ExternalServer, SEPARATOR};
use crate::providers::Tool;

/// How long a server's tool list is used before it is listed again.
pub const LIST_TTL: Duration = Duration::from_secs(60);
/// How long a server whose listing failed is left out before it is tried again (so a server
/// that is down does not slow every run).
pub const FAILED_LIST_TTL: Duration = Duration::from_secs(10);
/// The most characters of one result the model reads.
pub const MAX_RESULT_CHARS: usize = 8_000;

/// One allow-listed tool of a server as the model is offered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub server: String,
    /// The tool's name on its server.
    pub tool: String,
    /// `<server>__<tool>`, with the server's description and input schema.
    pub offered: Tool,
}

/// What a call of an external tool came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The tool's text (not yet fenced or truncated).
    Output(String),
    /// The tool ran and said it failed (`isError`), with its text.
    ToolError(String),
    /// No result: the server could not be reached, refused, sent an MCP error or took too
    /// long. The message says which, for the model and the step summary.
    Failed(String),
}

impl Outcome {
    /// The audit log's word for it.
    pub fn code(&self) -> &'static str {
        match self {
            Outcome::Output(_) => "ok",
            Outcome::ToolError(_) => "tool_error",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// A server's listing as cached: when, and the offers or why there are none.
struct Listed {
    at: Instant,
    offers: Result<Vec<Offer>, String>,
}

/// The configured tool servers and their cached listings.
pub struct ExternalTools {
    servers: Vec<ExternalServer>,
    listed: Mutex<HashMap<String, Listed>>,
    http: reqwest::Client,
}

impl ExternalTools {
    pub fn new(servers: &[ExternalServer]) -> ExternalTools {
        // No redirects: a header is sent to the URL it was configured for, nowhere else.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "agent tools: the HTTP client could not be configured; using the default");
                reqwest::Client::new()
            });
        ExternalTools {
            servers: servers.to_vec(),
            listed: Mutex::new(HashMap::new()),
            http,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The offers of every server, listing (concurrently) those whose cached listing is stale,
    /// each within its timeout and `deadline`. A server that cannot be listed offers nothing.
    pub async fn offers(&self, deadline: Instant) -> Vec<Offer> {
        let stale: Vec<&ExternalServer> = self
            .servers
            .iter()
            .filter(|s| self.is_stale(&s.name))
            .collect();
        let fresh = futures::future::join_all(stale.iter().map(|s| self.list(s, deadline))).await;
        {
            let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
            for (s, offers) in stale.iter().zip(fresh) {
                if let Err(e) = &offers {
                    tracing::warn!(server = %s.name, error = %e, "agent tools: listing failed; its tools are not offered");
                }
                let at = Instant::now();
                listed.insert(s.name.clone(), Listed { at, offers });
            }
        }
        let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        self.servers
            .iter()
            .filter_map(|s| listed.get(&s.name)?.offers.as_ref().ok())
            .flatten()
            .cloned()
            .collect()
    }

    fn is_stale(&self, server: &str) -> bool {
        let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        match listed.get(server) {
            None => true,
            Some(l) => {
                let ttl = if l.offers.is_ok() {
                    LIST_TTL
                } else {
                    FAILED_LIST_TTL
                };
                l.at.elapsed() >= ttl
            }
        }
    }

    /// Lists `server`'s tools and keeps the allow-listed ones.
    async fn list(&self, server: &ExternalServer, deadline: Instant) -> Result<Vec<Offer>, String> {
        let until = (Instant::now() + server.timeout).min(deadline);
        let listing = async {
            let client = self.connect(server).await?;
            let tools = client
                .list_all_tools()
                .await
                .map_err(|e| format!("listing its tools failed: {e}"));
            close(client);
            tools
        };
        let tools = tokio::time::timeout_at(until.into(), listing)
            .await
            .map_err(|_| format!("`{}` did not list its tools in time", server.name))??;
        Ok(offers_of(server, tools))
    }

    /// Calls `offer` with `arguments` within its server's timeout and `deadline`.
    pub async fn call(&self, offer: &Offer, arguments: Value, deadline: Instant) -> Outcome {
        let Some(server) = self.servers.iter().find(|s| s.name == offer.server) else {
            return Outcome::Failed(format!("there is no tool server `{}`", offer.server));
        };
        let Value::Object(arguments) = arguments else {
            return Outcome::Failed("the arguments must be a JSON object".into());
        };
        let until = (Instant::now() + server.timeout).min(deadline);
        let params = CallToolRequestParams::new(offer.tool.clone()).with_arguments(arguments);
        let calling = async {
            let client = self.connect(server).await?;
            let result = client
                .call_tool(params)
                .await
                .map_err(|e| format!("`{}` answered with an error: {e}", server.name));
            close(client);
            result
        };
        match tokio::time::timeout_at(until.into(), calling).await {
            Err(_) => Outcome::Failed(format!(
                "`{}` did not answer in time (its limit is {} ms, and the run's wall time)",
                server.name,
                server.timeout.as_millis()
            )),
            Ok(Err(message)) => Outcome::Failed(message),
            Ok(Ok(result)) => outcome_of(result),
        }
    }

    /// An initialised MCP session with `server`, its headers on every request.
    async fn connect(
        &self,
        server: &ExternalServer,
    ) -> Result<rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>, String> {
        let mut headers = HashMap::new();
        for (name, value) in &server.headers {
            // Checked at start-up; a pair that fails here is left out, never logged.
            if let (Ok(n), Ok(v)) = (
                axum::http::HeaderName::from_bytes(name.as_bytes()),
                axum::http::HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
        let config = StreamableHttpClientTransportConfig::with_uri(server.url.as_str())
            .custom_headers(headers)
            .reinit_on_expired_session(false);
        let transport = StreamableHttpClientTransport::with_client(self.http.clone(), config);
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("cairn", env!("CARGO_PKG_VERSION")),
        );
        info.serve(transport)
            .await
            .map_err(|e| format!("`{}` could not be reached: {e}", server.name))
    }
}

/// Ends a session in the background: its result is in, and closing (bounded by the
/// transport's own control timeout) must not hold it back.
fn close(client: rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>) {
    tokio::spawn(async move {
        let _ = client.cancel().await;
    });
}

/// The allow-listed tools among those `server` listed, offered as `<server>__<tool>`.
pub fn offers_of(server: &ExternalServer, tools: Vec<rmcp::model::Tool>) -> Vec<Offer> {
    let mut seen = std::collections::HashSet::new();
    tools
        .into_iter()
        .filter(|t| server.allow.iter().any(|a| a == t.name.as_ref()))
        // A server listing a name twice is offered it once.
        .filter(|t| seen.insert(t.name.to_string()))
        .map(|t| {
            let mut schema = Value::Object((*t.input_schema).clone());
            if let Value::Object(o) = &mut schema {
                // Some vendors refuse a schema naming its own dialect.
                o.remove("$schema");
            }
            let description = t
                .description
                .as_deref()
                .or(t.title.as_deref())
                .unwrap_or("(no description)");
            Offer {
                server: server.name.clone(),
                tool: t.name.to_string(),
                offered: Tool {
                    name: format!("{}{SEPARATOR}{}", server.name, t.name),
                    description: format!(
                        "A tool of the `{}` system (its output is not a citable passage): {description}",
                        server.name
                    ),
                    parameters: schema,
                },
            }
        })
        .collect()
}

/// A tool's result as text: its text blocks, else its structured content as JSON.
fn outcome_of(result: CallToolResult) -> Outcome {
    let mut parts: Vec<String> = Vec::new();
    for block in &result.content {
        match block {
            ContentBlock::Text(t) => parts.push(t.text.clone()),
            _ => parts.push("(a non-text item was left out)".into()),
        }
    }
    let has_text = result
        .content
        .iter()
        .any(|b| matches!(b, ContentBlock::Text(_)));
    if !has_text && let Some(v) = &result.structured_content {
        parts.push(v.to_string());
    }
    let text = parts.join("\n");
    if result.is_error == Some(true) {
        Outcome::ToolError(text)
    } else {
        Outcome::Output(text)
    }
}

/// `text` cut to [`MAX_RESULT_CHARS`] characters, saying so when it was cut.
pub fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_RESULT_CHARS) {
        None => text.to_string(),
        Some((at, _)) => format!(
            "{}\n(the rest of this result, {} characters, is not shown)",
            &text[..at],
            text[at..].chars().count()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allow_listed_tools_are_offered_under_the_server_name() {
        let server = ExternalServer {
            name: "orders".into(),
            url: "http://127.0.0.1:9/mcp".into(),
            allow: vec!["order_status".into()],
            headers: vec![],
            timeout: Duration::from_secs(1),
        };
        let schema: serde_json::Map<String, Value> = serde_json::from_value(
            serde_json::json!({"$schema": "x", "type": "object", "properties": {"id": {"type": "string"}}}),
        )
        .expect("object");
        let tool = |name: &'static str| {
            rmcp::model::Tool::new(
                name,
                "Looks an order up",
                std::sync::Arc::new(schema.clone()),
            )
        };
        let offers = offers_of(&server, vec![tool("order_status"), tool("cancel_order")]);
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].offered.name, "orders__order_status");
        assert_eq!(offers[0].tool, "order_status");
        assert!(offers[0].offered.parameters.get("$schema").is_none());
        assert_eq!(offers[0].offered.parameters["type"], "object");
    }

    #[test]
    fn long_results_are_cut_and_say_so() {
        let long = "é".repeat(MAX_RESULT_CHARS + 5);
        let cut = bounded(&long);
        assert!(cut.starts_with(&"é".repeat(MAX_RESULT_CHARS)));
        assert!(cut.ends_with("5 characters, is not shown)"), "{cut}");
        assert_eq!(bounded("short"), "short");
    }
}
