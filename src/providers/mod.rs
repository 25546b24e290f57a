//! The provider layer: one internal model interface over every vendor.
//!
//! Owns the internal chat types ([`ChatRequest`], [`ChatEvent`], [`Usage`], [`FinishReason`]),
//! the closed [`Provider`] enum with one module per vendor, and the [`Router`] that resolves a
//! route (`answer = ["local", ...]`) to providers tried in order. Application code never sees a
//! vendor type; vendor modules own their wire structs and pure mapping functions.
//!
//! The gateway ([`Router::stream`], [`Router::complete`], [`Router::complete_json`],
//! [`Router::embed`], [`Router::rerank`]) wraps every call in retries ([`retry`]), a circuit
//! breaker and a concurrency limit per provider ([`breaker`]), time-outs, fallback across the
//! route's targets before the first token, and cost/budget accounting ([`cost`]).

pub mod anthropic;
pub mod breaker;
pub mod config;
pub mod cost;
pub mod extractive;
pub mod gateway;
pub mod gemini;
pub mod http;
pub mod mistral;
pub mod openai;
pub mod openai_compatible;
pub mod retry;

pub use gateway::{GatewayError, TargetInfo};

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// A retrieved passage given to the model, numbered as the prompt numbers it (`[n]`).
/// Remote providers see it only through the rendered prompt; the extractive provider reads it
/// directly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContextPassage {
    pub n: usize,
    pub title: String,
    pub text: String,
}

/// A tool the model may call, with its parameters as a JSON Schema object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// How the model may use the tools.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    #[default]
    Auto,
    None,
    Required,
    /// Must call this tool.
    Tool(String),
}

/// A requested structured output: the answer must be one JSON value matching `schema`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSchema {
    /// A short identifier (`^[a-zA-Z0-9_-]+$`), sent to vendors that want one.
    pub name: String,
    pub schema: serde_json::Value,
}

/// A complete tool call (assembled from [`ChatEvent::ToolCallDelta`]s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the JSON text the model produced.
    pub arguments: String,
}

/// What a tool returned for one call, handed back to the model in the next request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The id of the call this answers ([`ToolCall::id`]).
    pub call_id: String,
    /// The tool's name (Gemini matches results to calls by name).
    pub name: String,
    /// The result as text (JSON or fenced passages); the model reads it as data.
    pub content: String,
    /// The call failed or was refused; `content` says why.
    pub is_error: bool,
}

/// One model turn of tool use, replayed after the messages in the next request: the text and
/// calls the model produced, then one result per call in the same order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolRound {
    /// Text the model wrote alongside its calls (often empty).
    pub text: String,
    pub calls: Vec<ToolCall>,
    pub results: Vec<ToolResult>,
}

impl ToolRound {
    /// A call's arguments as a JSON object, as vendors that take parsed arguments want them
    /// (text that is not a JSON object becomes `{}`: the model is told in the call's result).
    pub fn arguments_object(call: &ToolCall) -> serde_json::Value {
        match serde_json::from_str::<serde_json::Value>(&call.arguments) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => serde_json::Value::Object(serde_json::Map::new()),
        }
    }
}

/// A provider-neutral chat request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatRequest {
    pub system: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub stop: Vec<String>,
    /// The question being answered, when the request is a grounded answer.
    pub question: Option<String>,
    /// What retrieval searched for when it is not the question: a follow-up made standalone
    /// with the earlier turns (`[retrieval] condense`). The extractive provider picks the
    /// sentences that cover it; other providers read only the rendered messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub context: Vec<ContextPassage>,
    /// Tools offered to the model (empty: none).
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    /// Earlier turns of tool use, after `messages` (the agent loop's history).
    pub tool_rounds: Vec<ToolRound>,
    /// Ask for JSON output matching this schema.
    pub output_schema: Option<OutputSchema>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ContentFilter,
    ToolCalls,
    Error,
}

/// Token counts of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
}

/// One streamed event.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    TextDelta(String),
    /// A piece of a tool call. The first piece of call `index` carries `id` and `name`; later
    /// pieces append to `arguments`.
    ToolCallDelta {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    Usage(Usage),
    Finish(FinishReason),
}

impl ChatEvent {
    /// Whether the event is model output (text or tool call): after it, no retry or fallback.
    pub fn is_output(&self) -> bool {
        matches!(
            self,
            ChatEvent::TextDelta(_) | ChatEvent::ToolCallDelta { .. }
        )
    }
}

/// A whole (non-streamed) chat response, collected from a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatResponse {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub finish: Option<FinishReason>,
}

impl ChatResponse {
    /// Applies one event.
    pub fn push(&mut self, ev: ChatEvent) {
        match ev {
            ChatEvent::TextDelta(t) => self.text.push_str(&t),
            ChatEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                if self.tool_calls.len() <= index {
                    self.tool_calls.resize(index + 1, ToolCall::default());
                }
                let call = &mut self.tool_calls[index];
                if let Some(id) = id {
                    call.id = id;
                }
                if let Some(name) = name {
                    call.name = name;
                }
                call.arguments.push_str(&arguments);
            }
            ChatEvent::Usage(u) => self.usage = u,
            ChatEvent::Finish(f) => self.finish = Some(f),
        }
    }

    /// Drains a stream into a response; the first error ends it.
    pub async fn collect(mut stream: ChatStream) -> Result<ChatResponse, ProviderError> {
        use futures::StreamExt;
        let mut out = ChatResponse::default();
        while let Some(ev) = stream.next().await {
            out.push(ev?);
        }
        Ok(out)
    }
}

/// Texts to embed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EmbedRequest {
    pub inputs: Vec<String>,
    /// Requested output dimension, for models that can shorten their vectors.
    pub dimensions: Option<u32>,
}

/// One vector per input, in input order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EmbedResponse {
    pub vectors: Vec<Vec<f32>>,
    pub usage: Usage,
}

/// A rerank request in the shape shared by Cohere, Jina and TEI `/rerank`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RerankRequest {
    pub query: String,
    pub documents: Vec<String>,
    pub top_n: Option<usize>,
}

/// Documents by decreasing relevance: `(index into the request's documents, score)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RerankResponse {
    pub results: Vec<(usize, f32)>,
}

/// Provider failures, typed so the gateway can decide on retries and fallbacks.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProviderError {
    #[error(
        "provider `{provider}` rejected the credentials; check the key in environment variable {key_var}"
    )]
    Auth { provider: String, key_var: String },
    #[error("provider `{provider}` is rate limited")]
    RateLimited {
        provider: String,
        retry_after_ms: Option<u64>,
    },
    #[error("provider `{provider}` is unavailable: {message}")]
    Unavailable { provider: String, message: String },
    #[error("provider `{provider}` timed out ({stage})")]
    Timeout { provider: String, stage: String },
    #[error("provider `{provider}` sent a malformed response: {message}")]
    Malformed { provider: String, message: String },
    #[error("the request is too long for model `{model}`")]
    ContextTooLong { model: String },
    #[error("the request is invalid for provider `{provider}`: {message}")]
    BadRequest { provider: String, message: String },
    #[error("provider `{provider}` does not support {what}")]
    Unsupported { provider: String, what: String },
}

impl ProviderError {
    /// Whether the same call may succeed if retried.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Unavailable { .. }
                | ProviderError::Timeout { .. }
        )
    }

    /// Server-requested wait before retrying, if any.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ProviderError::RateLimited { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }
}

/// A stream of events from one provider call.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, ProviderError>> + Send>>;

/// The closed set of providers.
#[derive(Debug, Clone)]
pub enum Provider {
    Extractive(extractive::Extractive),
    OpenAi(openai::OpenAi),
    Anthropic(anthropic::Anthropic),
    Gemini(gemini::Gemini),
    Mistral(mistral::Mistral),
    OpenAiCompatible(openai_compatible::OpenAiCompatible),
}

impl Provider {
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Extractive(_) => "extractive",
            Provider::OpenAi(_) => "openai",
            Provider::Anthropic(_) => "anthropic",
            Provider::Gemini(_) => "gemini",
            Provider::Mistral(_) => "mistral",
            Provider::OpenAiCompatible(_) => "openai_compatible",
        }
    }

    /// Builds the provider of a `[providers.<name>]` table.
    pub fn from_config(cfg: &config::ProviderConfig) -> Result<Provider, String> {
        use config::ProviderKind as K;
        Ok(match cfg.kind {
            K::Extractive => Provider::Extractive(extractive::Extractive::default()),
            K::Openai => Provider::OpenAi(openai::OpenAi {
                endpoint: http::Endpoint::new(cfg, openai::DEFAULT_BASE_URL)?,
                flavor: openai::Flavor::OpenAi,
            }),
            K::Anthropic => Provider::Anthropic(anthropic::Anthropic {
                endpoint: http::Endpoint::new(cfg, anthropic::DEFAULT_BASE_URL)?,
            }),
            K::Gemini => Provider::Gemini(gemini::Gemini {
                endpoint: http::Endpoint::new(cfg, gemini::DEFAULT_BASE_URL)?,
            }),
            K::Mistral => Provider::Mistral(mistral::Mistral::new(http::Endpoint::new(
                cfg,
                mistral::DEFAULT_BASE_URL,
            )?)),
            K::OpenaiCompatible => {
                let Some(base) = cfg.base_url.as_deref() else {
                    return Err(format!(
                        "providers.{}: kind = \"openai_compatible\" needs base_url (e.g. http://127.0.0.1:8080/v1)",
                        cfg.name
                    ));
                };
                Provider::OpenAiCompatible(openai_compatible::OpenAiCompatible::new(
                    http::Endpoint::new(cfg, base)?,
                ))
            }
        })
    }

    /// Starts a streaming chat call (no retries, time-outs or fallback: see [`Router::stream`]).
    pub async fn chat_stream(
        &self,
        model: &str,
        req: &ChatRequest,
    ) -> Result<ChatStream, ProviderError> {
        match self {
            Provider::Extractive(p) => Ok(p.stream(model, req)),
            Provider::OpenAi(p) => p.chat_stream(model, req).await,
            Provider::Anthropic(p) => p.chat_stream(model, req).await,
            Provider::Gemini(p) => p.chat_stream(model, req).await,
            Provider::Mistral(p) => p.chat_stream(model, req).await,
            Provider::OpenAiCompatible(p) => p.chat_stream(model, req).await,
        }
    }

    /// Embeds texts.
    pub async fn embed(
        &self,
        model: &str,
        req: &EmbedRequest,
    ) -> Result<EmbedResponse, ProviderError> {
        match self {
            Provider::OpenAi(p) => p.embed(model, req).await,
            Provider::Gemini(p) => p.embed(model, req).await,
            Provider::Mistral(p) => p.embed(model, req).await,
            Provider::OpenAiCompatible(p) => p.embed(model, req).await,
            Provider::Extractive(_) | Provider::Anthropic(_) => Err(ProviderError::Unsupported {
                provider: self.kind().into(),
                what: "embeddings".into(),
            }),
        }
    }

    /// Reranks documents against a query.
    pub async fn rerank(
        &self,
        model: &str,
        req: &RerankRequest,
    ) -> Result<RerankResponse, ProviderError> {
        match self {
            Provider::OpenAiCompatible(p) => p.rerank(model, req).await,
            _ => Err(ProviderError::Unsupported {
                provider: self.kind().into(),
                what: "rerank".into(),
            }),
        }
    }
}

/// A provider and model to try for a route.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider_name: String,
    pub model: String,
    pub provider: Provider,
    /// Gateway state shared by every target of the same provider.
    pub gate: std::sync::Arc<gateway::Gate>,
}

/// Routes resolved at startup: route name → targets in fallback order, plus the gateway's
/// shared budget and how a request's deadline is shared across a route.
#[derive(Debug, Clone, Default)]
pub struct Router {
    pub routes: BTreeMap<String, Vec<Target>>,
    pub budget: std::sync::Arc<cost::Budget>,
    pub time: gateway::TimeBudget,
}

impl Router {
    /// The same routes under another time budget.
    pub fn with_time(mut self, time: gateway::TimeBudget) -> Router {
        self.time = time;
        self
    }

    pub fn targets(&self, route: &str) -> &[Target] {
        self.routes.get(route).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Routed `(provider, model)` pairs of remote providers with no price: their calls are
    /// counted as free, so start-up warns about them (and refuses them under a spend cap).
    pub fn unpriced(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .routes
            .values()
            .flatten()
            .filter(|t| !matches!(t.provider, Provider::Extractive(_)))
            .filter(|t| !t.gate.settings.prices.contains_key(&t.model))
            .map(|t| (t.provider_name.clone(), t.model.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Resolves every route's `(provider name, model)` targets to providers, with no budget.
    pub fn from_config(
        providers: &BTreeMap<String, config::ProviderConfig>,
        routes: &BTreeMap<String, Vec<(String, String)>>,
    ) -> Result<Router, String> {
        Router::from_config_with_budget(providers, routes, &config::BudgetConfig::default())
    }

    /// Like [`Router::from_config`], with spending limits.
    pub fn from_config_with_budget(
        providers: &BTreeMap<String, config::ProviderConfig>,
        routes: &BTreeMap<String, Vec<(String, String)>>,
        budget: &config::BudgetConfig,
    ) -> Result<Router, String> {
        let mut built: BTreeMap<String, (Provider, std::sync::Arc<gateway::Gate>)> =
            BTreeMap::new();
        let output_price = routes
            .values()
            .flatten()
            .filter_map(|(name, model)| providers.get(name)?.settings.prices.get(model))
            .map(|p| p.output_per_mtok)
            .fold(0.0, f64::max);
        let mut router = Router {
            routes: BTreeMap::new(),
            budget: std::sync::Arc::new(
                cost::Budget::new(budget.clone()).with_output_price(output_price),
            ),
            time: gateway::TimeBudget::default(),
        };
        for (route, targets) in routes {
            let mut out = Vec::new();
            for (name, model) in targets {
                let p = providers
                    .get(name)
                    .ok_or_else(|| format!("routes.{route}: no provider named `{name}`"))?;
                if !built.contains_key(name) {
                    let provider = Provider::from_config(p)?;
                    let gate = std::sync::Arc::new(gateway::Gate::new(&p.settings));
                    built.insert(name.clone(), (provider, gate));
                }
                let Some((provider, gate)) = built.get(name) else {
                    continue;
                };
                let model = if model.is_empty() {
                    match p.kind {
                        config::ProviderKind::Extractive => "extractive".to_string(),
                        _ => {
                            return Err(format!(
                                "routes.{route}: `{name}` needs a model (\"{name}:<model>\")"
                            ));
                        }
                    }
                } else {
                    model.clone()
                };
                out.push(Target {
                    provider_name: name.clone(),
                    model,
                    provider: provider.clone(),
                    gate: gate.clone(),
                });
            }
            router.routes.insert(route.clone(), out);
        }
        Ok(router)
    }
}
