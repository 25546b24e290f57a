//! The provider layer: one internal model interface over every vendor.
//!
//! Owns the internal chat types ([`ChatRequest`], [`ChatEvent`], [`Usage`], [`FinishReason`]),
//! the closed [`Provider`] enum with one module per vendor, and the [`Router`] that resolves a
//! route (`answer = ["local", ...]`) to providers tried in order. Application code never sees a
//! vendor type; vendor modules own their wire structs and pure mapping functions.

pub mod config;
pub mod extractive;

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
    pub context: Vec<ContextPassage>,
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
    Usage(Usage),
    Finish(FinishReason),
}

/// Provider failures, typed so the gateway can decide on retries and fallbacks.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProviderError {
    #[error(
        "provider `{provider}` rejected the credentials; check the variable named in its `api_key`"
    )]
    Auth { provider: String },
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
}

/// A stream of events from one provider call.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, ProviderError>> + Send>>;

/// The closed set of providers.
#[derive(Debug, Clone)]
pub enum Provider {
    Extractive(extractive::Extractive),
}

impl Provider {
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Extractive(_) => "extractive",
        }
    }

    /// Starts a streaming chat call.
    pub async fn chat_stream(
        &self,
        model: &str,
        req: &ChatRequest,
    ) -> Result<ChatStream, ProviderError> {
        match self {
            Provider::Extractive(p) => Ok(p.stream(model, req)),
        }
    }
}

/// A provider and model to try for a route.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider_name: String,
    pub model: String,
    pub provider: Provider,
}

/// Routes resolved at startup: route name → targets in fallback order.
#[derive(Debug, Clone, Default)]
pub struct Router {
    pub routes: BTreeMap<String, Vec<Target>>,
}

impl Router {
    pub fn targets(&self, route: &str) -> &[Target] {
        self.routes.get(route).map(Vec::as_slice).unwrap_or(&[])
    }
}

impl Router {
    /// Resolves every route's `(provider name, model)` targets to providers.
    pub fn from_config(
        providers: &BTreeMap<String, config::ProviderConfig>,
        routes: &BTreeMap<String, Vec<(String, String)>>,
    ) -> Result<Router, String> {
        let mut router = Router::default();
        for (route, targets) in routes {
            let mut out = Vec::new();
            for (name, model) in targets {
                let p = providers
                    .get(name)
                    .ok_or_else(|| format!("routes.{route}: no provider named `{name}`"))?;
                let provider = match p.kind {
                    config::ProviderKind::Extractive => {
                        Provider::Extractive(extractive::Extractive::default())
                    }
                    other => {
                        return Err(format!(
                            "providers.{name}: kind {other:?} is not available in this build; use kind = \"extractive\""
                        ));
                    }
                };
                out.push(Target {
                    provider_name: name.clone(),
                    model: if model.is_empty() {
                        "extractive".to_string()
                    } else {
                        model.clone()
                    },
                    provider,
                });
            }
            router.routes.insert(route.clone(), out);
        }
        Ok(router)
    }
}
