//! `[agent]`: the route agent mode calls and its budgets (model calls, tool calls, tokens,
//! cost, wall time), how one request narrows them, and the external tool servers
//! (`[[agent.tools]]`) the agent may call, checked with their `env:` header references
//! resolved.
//!
//! Must not: import the composed `Config` or the agent loop (the config loader imports this).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::section::{Check, ConfigError};

/// What one agent run may spend. Every limit is a ceiling the loop checks before each model
/// or tool call; the first one reached ends the tool loop (`budget_exhausted`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentBudget {
    /// Model calls, the closing answer included.
    pub max_steps: u32,
    /// Tool executions (`search`, `get_document`, `list_sources`).
    pub max_tool_calls: u32,
    /// Input plus output tokens over every model call of the run.
    pub max_tokens: u64,
    /// US dollars over every model call of the run (as the gateway meters them).
    pub max_cost_usd: f64,
    /// Seconds from the start of the run to the end of its tool loop.
    pub max_wall_secs: u64,
}

impl Default for AgentBudget {
    fn default() -> Self {
        AgentBudget {
            max_steps: 6,
            max_tool_calls: 8,
            max_tokens: 40_000,
            max_cost_usd: 0.10,
            max_wall_secs: 30,
        }
    }
}

/// A request's own limits (`"agent": {...}` on `/ask`): each may only lower the configured
/// one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    pub max_steps: Option<u32>,
    pub max_tool_calls: Option<u32>,
    pub max_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
    pub max_wall_secs: Option<u64>,
}

/// A request limit above the configured maximum (or not positive): which key, what was asked,
/// what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "`agent.{key}` is {asked}; this server allows 1 to {max} (`[agent] {key}`): send a value within it or leave it out"
)]
pub struct BudgetTooHigh {
    pub key: &'static str,
    pub asked: String,
    pub max: String,
}

impl AgentBudget {
    /// The configured budget narrowed by a request's own limits.
    pub fn narrowed(&self, req: &BudgetRequest) -> Result<AgentBudget, BudgetTooHigh> {
        fn pick<T: PartialOrd + Copy + ToString + Default>(
            key: &'static str,
            asked: Option<T>,
            max: T,
        ) -> Result<T, BudgetTooHigh> {
            match asked {
                None => Ok(max),
                Some(v) if v > T::default() && v <= max => Ok(v),
                Some(v) => Err(BudgetTooHigh {
                    key,
                    asked: v.to_string(),
                    max: max.to_string(),
                }),
            }
        }
        Ok(AgentBudget {
            max_steps: pick("max_steps", req.max_steps, self.max_steps)?,
            max_tool_calls: pick("max_tool_calls", req.max_tool_calls, self.max_tool_calls)?,
            max_tokens: pick("max_tokens", req.max_tokens, self.max_tokens)?,
            max_cost_usd: pick("max_cost_usd", req.max_cost_usd, self.max_cost_usd)?,
            max_wall_secs: pick("max_wall_secs", req.max_wall_secs, self.max_wall_secs)?,
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAgent {
    /// The route in `[routes]` agent turns use; unset: `[answer] route`.
    pub route: Option<String>,
    pub max_steps: Option<u32>,
    pub max_tool_calls: Option<u32>,
    pub max_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
    pub max_wall_secs: Option<u64>,
    /// External MCP tool servers (`[[agent.tools]]`).
    pub tools: Vec<RawExternalServer>,
}

/// One `[[agent.tools]]` table as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternalServer {
    pub name: String,
    pub kind: String,
    pub url: String,
    #[serde(default)]
    pub allow: Vec<String>,
    /// Header name → `env:VARIABLE` reference.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub timeout_ms: Option<u64>,
}

/// The one `kind` of external tool server: MCP over Streamable HTTP.
pub const KIND_MCP: &str = "mcp";
/// Between a server's name and its tool's in the name the model is offered
/// (`orders__order_status`).
pub const SEPARATOR: &str = "__";
/// The longest tool name every vendor accepts (`^[a-zA-Z0-9_-]{1,64}$`).
const MAX_OFFERED_NAME: usize = 64;
/// The longest server name.
const MAX_SERVER_NAME: usize = 32;
/// How long one list or call of an external tool may take unless `timeout_ms` says.
const DEFAULT_TOOL_TIMEOUT_MS: u64 = 10_000;
/// Headers the MCP transport sets itself.
const RESERVED_HEADERS: [&str; 6] = [
    "accept",
    "content-type",
    "host",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// A `[[agent.tools]]` server checked: its headers resolved (values are secrets: never
/// logged, printed or serialised).
#[derive(Clone, PartialEq)]
pub struct ExternalServer {
    pub name: String,
    pub url: String,
    /// The tools of the server the model may be offered (MCP names).
    pub allow: Vec<String>,
    /// Header name (lowercase) and resolved value.
    pub headers: Vec<(String, String)>,
    /// The most one list or call may take (the run's wall time may cut it shorter).
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for ExternalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ExternalServer")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("allow", &self.allow)
            .field("headers", &names)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Serialize for ExternalServer {
    /// Header names only: their values are secrets.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        let mut st = s.serialize_struct("ExternalServer", 4)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("url", &self.url)?;
        st.serialize_field("allow", &self.allow)?;
        st.serialize_field("headers", &names)?;
        st.end()
    }
}

/// `[agent]` checked: its route resolved, its budget complete, its tool servers checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgentSettings {
    pub route: String,
    pub budget: AgentBudget,
    pub tools: Vec<ExternalServer>,
}

impl RawAgent {
    /// Resolves the route (the answer route when unset; it must exist) and checks that every
    /// limit is positive and that the tool loop ends before the request deadline, leaving
    /// time for the closing answer.
    pub fn validate<T>(
        self,
        cx: &Check,
        routes: &BTreeMap<String, T>,
        answer_route: &str,
        request_timeout_secs: u64,
    ) -> Result<AgentSettings, ConfigError> {
        let route = self.route.unwrap_or_else(|| answer_route.to_string());
        let wall_set = self.max_wall_secs.is_some();
        if !routes.contains_key(&route) {
            return Err(cx.key_err(
                "agent.route",
                format!("route `{route}` is not defined in [routes]"),
            ));
        }
        let d = AgentBudget::default();
        let budget = AgentBudget {
            max_steps: self.max_steps.unwrap_or(d.max_steps),
            max_tool_calls: self.max_tool_calls.unwrap_or(d.max_tool_calls),
            max_tokens: self.max_tokens.unwrap_or(d.max_tokens),
            max_cost_usd: self.max_cost_usd.unwrap_or(d.max_cost_usd),
            // The default leaves the closing answer half of a short request deadline (at
            // least a second: a one-second deadline must not refuse a config without
            // `[agent]`; its agent runs end at the request deadline instead).
            max_wall_secs: self
                .max_wall_secs
                .unwrap_or(d.max_wall_secs.min(request_timeout_secs / 2).max(1)),
        };
        for (key, positive) in [
            ("agent.max_steps", budget.max_steps > 0),
            ("agent.max_tool_calls", budget.max_tool_calls > 0),
            ("agent.max_tokens", budget.max_tokens > 0),
            ("agent.max_cost_usd", budget.max_cost_usd > 0.0),
            ("agent.max_wall_secs", budget.max_wall_secs > 0),
        ] {
            if !positive {
                return Err(cx.key_err(key, "must be greater than 0".to_string()));
            }
        }
        if wall_set && budget.max_wall_secs >= request_timeout_secs {
            return Err(cx.key_err(
                "agent.max_wall_secs",
                format!(
                    "{} s leaves no time for the closing answer within `[server] request_timeout_secs` ({request_timeout_secs} s); use less",
                    budget.max_wall_secs
                ),
            ));
        }
        let tools = check_servers(self.tools, cx)?;
        Ok(AgentSettings {
            route,
            budget,
            tools,
        })
    }
}

/// Checks every `[[agent.tools]]` table; names must be distinct.
fn check_servers(
    raw: Vec<RawExternalServer>,
    cx: &Check,
) -> Result<Vec<ExternalServer>, ConfigError> {
    let mut servers: Vec<ExternalServer> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("agent.tools[{i}]");
        if servers.iter().any(|s| s.name == r.name) {
            return Err(cx.key_err(
                &format!("{at}.name"),
                format!(
                    "`{}` names two tool servers; give each its own name",
                    r.name
                ),
            ));
        }
        servers.push(r.check(&at, cx)?);
    }
    Ok(servers)
}

impl RawExternalServer {
    /// Checks one table found at `at` (`agent.tools[0]`).
    fn check(self, at: &str, cx: &Check) -> Result<ExternalServer, ConfigError> {
        let err = |field: &str, message: String| cx.key_err(&format!("{at}.{field}"), message);
        if let Some(problem) = server_name_problem(&self.name) {
            return Err(err("name", format!("`{}` {problem}", self.name)));
        }
        if self.kind != KIND_MCP {
            return Err(err(
                "kind",
                format!(
                    "`{}` is not a tool server kind; the one kind is \"{KIND_MCP}\" (a Model Context Protocol server over Streamable HTTP)",
                    self.kind
                ),
            ));
        }
        check_url(&self.url).map_err(|m| err("url", m))?;
        if self.allow.is_empty() {
            return Err(err(
                "allow",
                "lists no tool: name the tools of this server the agent may call (only those are offered)".into(),
            ));
        }
        for tool in &self.allow {
            if let Some(problem) = tool_name_problem(&self.name, tool) {
                return Err(err("allow", format!("`{tool}` {problem}")));
            }
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, reference) in &self.headers {
            let key = format!("{at}.headers.{name}");
            headers.push(check_header(name, reference, &key, cx)?);
        }
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TOOL_TIMEOUT_MS);
        if timeout_ms == 0 {
            return Err(err("timeout_ms", "must be greater than 0".into()));
        }
        let mut allow = self.allow;
        allow.dedup();
        Ok(ExternalServer {
            name: self.name,
            url: self.url,
            allow,
            headers,
            timeout: std::time::Duration::from_millis(timeout_ms),
        })
    }
}

/// Why `name` cannot name a tool server: offered names are `<name>__<tool>` and must start
/// with a letter (Gemini) and split at the first `__`.
fn server_name_problem(name: &str) -> Option<String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if name.is_empty() || name.len() > MAX_SERVER_NAME || !ok_chars {
        Some(format!(
            "is not a tool server name: use 1 to {MAX_SERVER_NAME} letters, digits, `_` or `-`"
        ))
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("must start with a letter".into())
    } else if name.contains(SEPARATOR) || name.ends_with('_') {
        Some(format!(
            "may not contain `{SEPARATOR}` or end with `_` (it separates the server from its tool in offered names)"
        ))
    } else {
        None
    }
}

/// Why `tool` of server `server` cannot be offered under a vendor's tool-name rules.
fn tool_name_problem(server: &str, tool: &str) -> Option<String> {
    let ok_chars = tool
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let offered = server.len() + SEPARATOR.len() + tool.len();
    if tool.is_empty() || !ok_chars {
        Some("is not a tool name models accept: use letters, digits, `_` or `-`".into())
    } else if offered > MAX_OFFERED_NAME {
        Some(format!(
            "is too long: `{server}{SEPARATOR}{tool}` is {offered} characters, models accept {MAX_OFFERED_NAME}; shorten the server name"
        ))
    } else {
        None
    }
}

/// An `http://` or `https://` URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "`{url}` must be an http:// or https:// URL of the server's MCP endpoint"
        ));
    }
    Ok(())
}

/// One header: a valid name the transport does not set itself, its value an `env:`
/// reference resolved now into a valid header value.
fn check_header(
    name: &str,
    reference: &str,
    key: &str,
    cx: &Check,
) -> Result<(String, String), ConfigError> {
    let lower = name.to_ascii_lowercase();
    if axum::http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        return Err(cx.key_err(key, format!("`{name}` is not an HTTP header name")));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(cx.key_err(
            key,
            format!("`{name}` is set by the MCP transport itself; remove it"),
        ));
    }
    let value = cx.reference(reference, key, "export it or remove the header")?;
    if axum::http::HeaderValue::from_str(&value).is_err() {
        return Err(cx.key_err(
            key,
            "the variable's value is not a valid header value (a line break or control character?)",
        ));
    }
    Ok((lower, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_may_lower_each_limit_but_not_raise_it() {
        let max = AgentBudget::default();
        let lower = BudgetRequest {
            max_steps: Some(2),
            max_cost_usd: Some(0.01),
            ..BudgetRequest::default()
        };
        let b = max.narrowed(&lower).expect("within");
        assert_eq!((b.max_steps, b.max_tool_calls), (2, max.max_tool_calls));
        assert_eq!(b.max_cost_usd, 0.01);
        let high = BudgetRequest {
            max_tool_calls: Some(max.max_tool_calls + 1),
            ..BudgetRequest::default()
        };
        let e = max.narrowed(&high).expect_err("above");
        assert_eq!(e.key, "max_tool_calls");
        let zero = BudgetRequest {
            max_steps: Some(0),
            ..BudgetRequest::default()
        };
        assert_eq!(max.narrowed(&zero).expect_err("zero").key, "max_steps");
    }

    fn checked(raw: RawAgent, request_timeout_secs: u64) -> Result<AgentSettings, ConfigError> {
        let cx = Check {
            origin: "cairn.toml",
            base: std::path::Path::new("."),
            env: &|_| None,
        };
        let routes = BTreeMap::from([("default".to_string(), ())]);
        raw.validate(&cx, &routes, "default", request_timeout_secs)
    }

    /// `[agent]` holding the tool servers of `toml` (`[[tools]]` tables), checked with
    /// `ORDERS_TOKEN` set.
    fn with_tools(toml: &str) -> Result<AgentSettings, ConfigError> {
        let raw: RawAgent = toml::from_str(toml).expect("parses");
        let cx = Check {
            origin: "cairn.toml",
            base: std::path::Path::new("."),
            env: &|v| (v == "ORDERS_TOKEN").then(|| "Bearer s3cret".to_string()),
        };
        let routes = BTreeMap::from([("default".to_string(), ())]);
        raw.validate(&cx, &routes, "default", 60)
    }

    const ORDERS: &str = "[[tools]]\nname = \"orders\"\nkind = \"mcp\"\nurl = \"http://127.0.0.1:9/mcp\"\nallow = [\"order_status\"]\nheaders = { \"Authorization\" = \"env:ORDERS_TOKEN\" }\n";

    #[test]
    fn a_tool_server_resolves_its_header_references_and_keeps_them_out_of_debug_output() {
        let s = with_tools(ORDERS).expect("valid");
        let t = &s.tools[0];
        assert_eq!(t.name, "orders");
        assert_eq!(t.allow, vec!["order_status".to_string()]);
        assert_eq!(
            t.headers,
            vec![("authorization".to_string(), "Bearer s3cret".to_string())]
        );
        assert_eq!(t.timeout, std::time::Duration::from_millis(10_000));
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&s).expect("json").contains("s3cret"));
    }

    #[test]
    fn bad_tool_servers_are_refused_naming_the_key() {
        let cases = [
            (
                ORDERS.replace("\"mcp\"", "\"openapi\""),
                "agent.tools[0].kind",
                "\"mcp\"",
            ),
            (
                ORDERS.replace("[\"order_status\"]", "[]"),
                "agent.tools[0].allow",
                "lists no tool",
            ),
            (
                format!("{ORDERS}{ORDERS}"),
                "agent.tools[1].name",
                "names two tool servers",
            ),
            (
                ORDERS.replace("http://127.0.0.1:9/mcp", "file:///etc/passwd"),
                "agent.tools[0].url",
                "http://",
            ),
            (
                ORDERS.replace("http://127.0.0.1:9/mcp", "not a url"),
                "agent.tools[0].url",
                "not a URL",
            ),
            (
                ORDERS.replace("env:ORDERS_TOKEN", "Bearer literal"),
                "agent.tools[0].headers.Authorization",
                "env:",
            ),
            (
                ORDERS.replace("env:ORDERS_TOKEN", "env:UNSET_TOKEN"),
                "agent.tools[0].headers.Authorization",
                "UNSET_TOKEN is not set",
            ),
            (
                ORDERS.replace("\"Authorization\"", "\"Mcp-Session-Id\""),
                "agent.tools[0].headers.Mcp-Session-Id",
                "transport",
            ),
            (
                ORDERS.replace("\"orders\"", "\"or__ders\""),
                "agent.tools[0].name",
                "__",
            ),
            (
                ORDERS.replace("\"orders\"", "\"9orders\""),
                "agent.tools[0].name",
                "letter",
            ),
            (
                ORDERS.replace("\"order_status\"", "\"order.status\""),
                "agent.tools[0].allow",
                "letters, digits",
            ),
            (
                ORDERS.replace("\"order_status\"", &format!("\"{}\"", "x".repeat(60))),
                "agent.tools[0].allow",
                "too long",
            ),
            (
                format!("{ORDERS}timeout_ms = 0\n"),
                "agent.tools[0].timeout_ms",
                "greater than 0",
            ),
        ];
        for (toml, key, needle) in cases {
            let e = with_tools(&toml).expect_err(key).to_string();
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn a_short_request_deadline_needs_no_agent_section_but_a_wall_time_past_it_is_refused() {
        let s = checked(RawAgent::default(), 1).expect("no [agent]");
        assert_eq!(s.budget.max_wall_secs, 1);
        assert_eq!(
            checked(RawAgent::default(), 60)
                .unwrap()
                .budget
                .max_wall_secs,
            30
        );
        let past = RawAgent {
            max_wall_secs: Some(10),
            ..RawAgent::default()
        };
        let e = checked(past, 10).expect_err("wall time equal to the deadline");
        assert!(e.to_string().contains("agent.max_wall_secs"), "{e}");
    }
}
