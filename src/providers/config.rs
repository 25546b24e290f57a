//! Provider configuration: the `[providers.<name>]` tables (raw and resolved) and the route
//! targets built from them. Owned by the provider layer so vendor settings (timeouts, retries,
//! prices) live next to the code that uses them. Every gateway key is optional.

use std::collections::BTreeMap;

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

/// Price of one model in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Cached input tokens (prompt cache hits); they are not also charged as input.
    #[serde(default)]
    pub cached_per_mtok: f64,
}

/// One `[providers.<name>]` table as written. Gateway keys are optional (see
/// [`ProviderSettings`] for their meaning and defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: Option<String>,
    /// A reference such as `env:OPENAI_API_KEY`, never the key itself.
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub timeout_connect_ms: Option<u64>,
    #[serde(default)]
    pub timeout_first_token_ms: Option<u64>,
    #[serde(default)]
    pub timeout_idle_ms: Option<u64>,
    #[serde(default)]
    pub timeout_total_ms: Option<u64>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub retry_base_ms: Option<u64>,
    #[serde(default)]
    pub retry_max_delay_ms: Option<u64>,
    #[serde(default)]
    pub retry_budget_ms: Option<u64>,
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    #[serde(default)]
    pub breaker_failures: Option<u32>,
    #[serde(default)]
    pub breaker_cooldown_ms: Option<u64>,
    /// `[providers.<name>.prices."<model>"]`
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

impl Default for RawProvider {
    fn default() -> Self {
        RawProvider {
            kind: ProviderKind::Extractive,
            base_url: None,
            api_key: None,
            timeout_connect_ms: None,
            timeout_first_token_ms: None,
            timeout_idle_ms: None,
            timeout_total_ms: None,
            max_retries: None,
            retry_base_ms: None,
            retry_max_delay_ms: None,
            retry_budget_ms: None,
            max_concurrency: None,
            breaker_failures: None,
            breaker_cooldown_ms: None,
            prices: BTreeMap::new(),
        }
    }
}

impl RawProvider {
    /// The gateway settings with defaults filled in.
    pub fn settings(&self) -> ProviderSettings {
        let d = ProviderSettings::default();
        ProviderSettings {
            timeout_connect_ms: self.timeout_connect_ms.unwrap_or(d.timeout_connect_ms),
            timeout_first_token_ms: self
                .timeout_first_token_ms
                .unwrap_or(d.timeout_first_token_ms),
            timeout_idle_ms: self.timeout_idle_ms.unwrap_or(d.timeout_idle_ms),
            timeout_total_ms: self.timeout_total_ms.unwrap_or(d.timeout_total_ms),
            max_retries: self.max_retries.unwrap_or(d.max_retries),
            retry_base_ms: self.retry_base_ms.unwrap_or(d.retry_base_ms),
            retry_max_delay_ms: self.retry_max_delay_ms.unwrap_or(d.retry_max_delay_ms),
            retry_budget_ms: self.retry_budget_ms.unwrap_or(d.retry_budget_ms),
            max_concurrency: self.max_concurrency.unwrap_or(d.max_concurrency).max(1),
            breaker_failures: self.breaker_failures.unwrap_or(d.breaker_failures).max(1),
            breaker_cooldown_ms: self.breaker_cooldown_ms.unwrap_or(d.breaker_cooldown_ms),
            prices: self.prices.clone(),
        }
    }
}

/// Per-provider gateway settings (`[providers.<name>]`). The defaults are chosen so that a
/// route of two remote providers and the local fallback fits the default 60 s request deadline
/// (2 tries × 10 s + 5 s of backoff = 25 s per remote target; see [`WorstCase`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSettings {
    /// TCP/TLS connect time-out.
    pub timeout_connect_ms: u64,
    /// From sending the request to the first output token.
    pub timeout_first_token_ms: u64,
    /// Longest silence between two events once output started.
    pub timeout_idle_ms: u64,
    /// Whole call, first byte to last.
    pub timeout_total_ms: u64,
    /// Retries of one target after the first attempt (retryable errors, before any output).
    pub max_retries: u32,
    /// First backoff delay; doubled per retry, with full jitter.
    pub retry_base_ms: u64,
    /// Upper bound of one backoff delay (a longer `Retry-After` skips to the next target).
    pub retry_max_delay_ms: u64,
    /// Total time spent waiting between retries of one target at most.
    pub retry_budget_ms: u64,
    /// Calls in flight to this provider at most; further calls wait.
    pub max_concurrency: usize,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker rejects calls before letting one probe through.
    pub breaker_cooldown_ms: u64,
    /// Prices by model name.
    pub prices: BTreeMap<String, Price>,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            timeout_connect_ms: 5_000,
            timeout_first_token_ms: 10_000,
            timeout_idle_ms: 30_000,
            timeout_total_ms: 300_000,
            max_retries: 1,
            retry_base_ms: 250,
            retry_max_delay_ms: 5_000,
            retry_budget_ms: 5_000,
            max_concurrency: 64,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
            prices: BTreeMap::new(),
        }
    }
}

/// The longest a target can take before its output starts or the gateway moves on: every try
/// waiting its full first-token limit, plus the most backoff allowed between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorstCase {
    pub tries: u64,
    pub wait_ms: u64,
    pub backoff_ms: u64,
}

impl WorstCase {
    pub fn total_ms(&self) -> u64 {
        self.tries
            .saturating_mul(self.wait_ms)
            .saturating_add(self.backoff_ms)
    }
}

impl ProviderSettings {
    /// See [`WorstCase`].
    pub fn worst_case(&self) -> WorstCase {
        let retries = u64::from(self.max_retries);
        WorstCase {
            tries: retries + 1,
            wait_ms: self.timeout_first_token_ms.min(self.timeout_total_ms),
            backoff_ms: self
                .retry_budget_ms
                .min(retries.saturating_mul(self.retry_max_delay_ms)),
        }
    }
}

/// A provider with its secret resolved.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    /// The resolved key (never logged; `Debug` of the config is not printed).
    pub api_key: Option<String>,
    /// The variable the key came from, named in authentication errors.
    pub key_var: Option<String>,
    pub settings: ProviderSettings,
}

impl ProviderConfig {
    /// Builds the resolved provider from its raw table and the already-resolved key.
    pub fn resolve(name: &str, raw: &RawProvider, api_key: Option<String>) -> ProviderConfig {
        ProviderConfig {
            name: name.to_string(),
            kind: raw.kind,
            base_url: raw.base_url.clone(),
            api_key,
            key_var: raw
                .api_key
                .as_deref()
                .and_then(|r| r.strip_prefix("env:"))
                .map(str::to_string),
            settings: raw.settings(),
        }
    }

    /// A provider with default settings (tests, programmatic use).
    pub fn new(name: &str, kind: ProviderKind, base_url: Option<&str>) -> ProviderConfig {
        ProviderConfig {
            name: name.to_string(),
            kind,
            base_url: base_url.map(str::to_string),
            api_key: None,
            key_var: None,
            settings: ProviderSettings::default(),
        }
    }
}

impl ProviderConfig {
    /// [`ProviderSettings::worst_case`], or `None` for the extractive provider, which runs
    /// in-process with no network and no time-outs.
    pub fn worst_case(&self) -> Option<WorstCase> {
        match self.kind {
            ProviderKind::Extractive => None,
            _ => Some(self.settings.worst_case()),
        }
    }
}

/// The default of `[gateway] fallback_share`.
pub const DEFAULT_FALLBACK_SHARE: f64 = 0.5;

/// How the gateway shares a request's deadline across a route (`[gateway]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// While a target with fallbacks after it is tried, this part of the time left before the
    /// request deadline is kept for those fallbacks (0 < share < 1).
    pub fallback_share: f64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            fallback_share: DEFAULT_FALLBACK_SHARE,
        }
    }
}

impl GatewayConfig {
    /// `fallback_share` must leave time both to the target tried and to its fallbacks.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let f = self.fallback_share;
        if f.is_finite() && f > 0.0 && f < 1.0 {
            return Ok(());
        }
        Err((
            "gateway.fallback_share",
            format!(
                "{f} is not a fraction between 0 and 1 (both excluded); the default is {DEFAULT_FALLBACK_SHARE}"
            ),
        ))
    }
}

/// The longest `targets` (in route order) can take before the route gives up, in milliseconds,
/// with each timed target's part spelled out.
pub fn route_worst_case_ms(
    targets: &[(String, String)],
    providers: &BTreeMap<String, ProviderConfig>,
) -> (u64, Vec<String>) {
    let mut total = 0u64;
    let mut parts = Vec::new();
    for (name, _) in targets {
        let Some(w) = providers.get(name).and_then(ProviderConfig::worst_case) else {
            continue;
        };
        total = total.saturating_add(w.total_ms());
        parts.push(format!(
            "{name}: {} tries × {} first-token wait + {} backoff = {}",
            w.tries,
            secs(w.wait_ms),
            secs(w.backoff_ms),
            secs(w.total_ms())
        ));
    }
    (total, parts)
}

/// Refuses a route whose worst case does not fit in the request deadline: a hung first
/// provider would use the whole deadline and the fallbacks would never be reached.
pub fn check_route_deadline(
    route: &str,
    targets: &[(String, String)],
    providers: &BTreeMap<String, ProviderConfig>,
    deadline_ms: u64,
) -> Result<(), String> {
    let (worst, parts) = route_worst_case_ms(targets, providers);
    if worst <= deadline_ms {
        return Ok(());
    }
    Err(format!(
        "route `{route}` can take {} before it gives up ({}), more than the {} request deadline ([server] request_timeout_secs); lower timeout_first_token_ms, max_retries or retry_budget_ms of those providers, or raise request_timeout_secs",
        secs(worst),
        parts.join("; "),
        secs(deadline_ms)
    ))
}

/// Under a spend cap every routed remote model needs a price: a model without one would be
/// counted as free and the cap would not hold. (An explicit price of 0 is accepted.)
pub fn check_prices(
    budget: &BudgetConfig,
    routes: &BTreeMap<String, Vec<(String, String)>>,
    providers: &BTreeMap<String, ProviderConfig>,
) -> Result<(), (String, String)> {
    if budget.daily_usd.is_none() && budget.daily_usd_per_key.is_none() {
        return Ok(());
    }
    for (route, targets) in routes {
        for (name, model) in targets {
            let Some(p) = providers.get(name) else {
                continue;
            };
            if p.kind == ProviderKind::Extractive || p.settings.prices.contains_key(model) {
                continue;
            }
            return Err((
                format!("routes.{route}"),
                format!(
                    "`{name}:{model}` has no price, so [budget] cannot count what it spends; add [providers.{name}.prices.\"{model}\"] (input_per_mtok, output_per_mtok; 0 for a free model) or remove the daily caps"
                ),
            ));
        }
    }
    Ok(())
}

/// Milliseconds as seconds for messages (`90 s`, `2.5 s`).
fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// Spending limits of the gateway (`[budget]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Requests asking for more output tokens are refused (`None`: no cap).
    pub max_tokens_per_request: Option<u32>,
    /// Spend across all providers per UTC day, in US dollars (`None`: no cap).
    pub daily_usd: Option<f64>,
    /// Spend per API key (of cairn's own clients) per UTC day (`None`: no cap).
    pub daily_usd_per_key: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_optional_and_unknown_keys_are_rejected() {
        let p: RawProvider = toml::from_str("kind = \"openai\"").expect("minimal");
        assert_eq!(p.settings(), ProviderSettings::default());
        let p: RawProvider = toml::from_str(
            "kind = \"anthropic\"\nmax_retries = 0\ntimeout_idle_ms = 5\n[prices.\"claude-x\"]\ninput_per_mtok = 3.0\noutput_per_mtok = 15.0\n",
        )
        .expect("full");
        assert_eq!(p.settings().max_retries, 0);
        assert_eq!(p.settings().prices["claude-x"].output_per_mtok, 15.0);
        assert!(toml::from_str::<RawProvider>("kind = \"openai\"\nmax_retry = 1").is_err());
    }
}
