//! `[agent]`: the route agent mode calls and its budgets (model calls, tool calls, tokens,
//! cost, wall time), and how one request narrows them.
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
}

/// `[agent]` checked: its route resolved and its budget complete.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgentSettings {
    pub route: String,
    pub budget: AgentBudget,
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
        Ok(AgentSettings { route, budget })
    }
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
