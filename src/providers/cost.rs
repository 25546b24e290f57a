//! Cost and budgets. Every call's [`Usage`] is priced with the provider's price table
//! (`[providers.<name>.prices."<model>"]`, US dollars per million tokens); the [`Budget`] holds
//! the per-request token cap and the daily spend caps (global and per API key of cairn's own
//! clients), refusing calls with [`super::GatewayError::BudgetExhausted`] once spent.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Usage;
use super::config::{BudgetConfig, Price};

/// The price of one call. Cached input tokens are priced at the cached rate, not also as input.
pub fn cost_usd(price: &Price, usage: &Usage) -> f64 {
    let cached = usage.cached_tokens.min(usage.input_tokens);
    let fresh = usage.input_tokens - cached;
    (fresh as f64 * price.input_per_mtok
        + cached as f64 * price.cached_per_mtok
        + usage.output_tokens as f64 * price.output_per_mtok)
        / 1_000_000.0
}

const DAY_SECS: u64 = 86_400;

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Days since the Unix epoch (UTC), the unit of the daily caps.
fn utc_day() -> u64 {
    unix_secs() / DAY_SECS
}

#[derive(Debug, Default)]
struct Spend {
    day: u64,
    total: f64,
    per_key: HashMap<String, f64>,
}

/// Spending limits and today's spend.
#[derive(Debug, Default)]
pub struct Budget {
    pub config: BudgetConfig,
    spend: Mutex<Spend>,
}

/// Which cap refused a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Exhausted {
    TokensPerRequest { asked: u32, cap: u32 },
    Daily { spent_usd: f64, cap_usd: f64 },
    DailyPerKey { spent_usd: f64, cap_usd: f64 },
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exhausted::TokensPerRequest { asked, cap } => {
                write!(f, "{asked} output tokens asked, at most {cap} per request")
            }
            Exhausted::Daily { spent_usd, cap_usd } => {
                write!(
                    f,
                    "daily spend ${spent_usd:.4} reached the cap ${cap_usd:.4}"
                )
            }
            Exhausted::DailyPerKey { spent_usd, cap_usd } => write!(
                f,
                "this key's daily spend ${spent_usd:.4} reached its cap ${cap_usd:.4}"
            ),
        }
    }
}

impl Exhausted {
    /// Seconds until the cap that refused resets (the next 00:00 UTC), for `Retry-After`;
    /// `None` when waiting does not help (the request itself is over a cap).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Exhausted::TokensPerRequest { .. } => None,
            Exhausted::Daily { .. } | Exhausted::DailyPerKey { .. } => {
                Some(DAY_SECS - unix_secs() % DAY_SECS)
            }
        }
    }
}

impl Budget {
    pub fn new(config: BudgetConfig) -> Budget {
        Budget {
            config,
            spend: Mutex::new(Spend::default()),
        }
    }

    fn today(&self) -> std::sync::MutexGuard<'_, Spend> {
        let mut s = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        let day = utc_day();
        if s.day != day {
            *s = Spend {
                day,
                ..Spend::default()
            };
        }
        s
    }

    /// Refuses a call that would break a cap.
    pub fn check(&self, max_tokens: Option<u32>, key: Option<&str>) -> Result<(), Exhausted> {
        if let (Some(cap), Some(asked)) = (self.config.max_tokens_per_request, max_tokens)
            && asked > cap
        {
            return Err(Exhausted::TokensPerRequest { asked, cap });
        }
        let s = self.today();
        if let Some(cap) = self.config.daily_usd
            && s.total >= cap
        {
            return Err(Exhausted::Daily {
                spent_usd: s.total,
                cap_usd: cap,
            });
        }
        if let (Some(cap), Some(key)) = (self.config.daily_usd_per_key, key) {
            let spent = s.per_key.get(key).copied().unwrap_or(0.0);
            if spent >= cap {
                return Err(Exhausted::DailyPerKey {
                    spent_usd: spent,
                    cap_usd: cap,
                });
            }
        }
        Ok(())
    }

    /// Adds a finished call's cost to today's spend.
    pub fn charge(&self, usd: f64, key: Option<&str>) {
        let mut s = self.today();
        s.total += usd;
        if let Some(k) = key {
            *s.per_key.entry(k.to_string()).or_insert(0.0) += usd;
        }
    }

    /// Today's total spend in US dollars.
    pub fn spent_today(&self) -> f64 {
        self.today().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_cached_tokens_once() {
        let p = Price {
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
            cached_per_mtok: 0.5,
        };
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            cached_tokens: 400_000,
        };
        let c = cost_usd(&p, &u);
        assert!((c - (1.2 + 0.2 + 4.0)).abs() < 1e-9, "{c}");
    }

    #[test]
    fn caps_refuse() {
        let b = Budget::new(BudgetConfig {
            max_tokens_per_request: Some(100),
            daily_usd: Some(1.0),
            daily_usd_per_key: Some(0.25),
        });
        assert!(b.check(Some(100), None).is_ok());
        assert!(matches!(
            b.check(Some(101), None),
            Err(Exhausted::TokensPerRequest { .. })
        ));
        b.charge(0.3, Some("k1"));
        assert!(matches!(
            b.check(None, Some("k1")),
            Err(Exhausted::DailyPerKey { .. })
        ));
        assert!(b.check(None, Some("k2")).is_ok());
        b.charge(0.8, None);
        assert!(matches!(
            b.check(None, Some("k2")),
            Err(Exhausted::Daily { .. })
        ));
    }
}
