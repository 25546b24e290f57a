//! Provider configuration: the `[providers.<name>]` tables (raw and resolved) and the route
//! targets built from them. Owned by the provider layer so vendor settings (timeouts, retries,
//! prices) live next to the code that uses them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Gemini,
    Mistral,
    OpenaiCompatible,
    Extractive,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: Option<String>,
    /// A reference such as `env:OPENAI_API_KEY`, never the key itself.
    #[serde(default)]
    pub api_key: Option<String>,
}

/// A provider with its secret resolved.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    /// The resolved key (never logged; `Debug` of the config is not printed).
    pub api_key: Option<String>,
}
