//! Cost and budgets. Every call's [`Usage`] is priced with the provider's price table
//! (`[providers.<name>.prices."<model>"]`, US dollars per million tokens); the [`Budget`] holds
//! the per-request token cap and the daily spend caps (global and per API key of cairn's own
//! clients). Before a call the gateway reserves an upper-bound estimate ([`estimate_usd`]) and
//! refuses the call with [`super::GatewayError::BudgetExhausted`] when it does not fit next to
//! today's spend and the other reservations; when the call ends the reservation is settled to
//! the metered cost. Spend is kept in a [`SpendFile`] in the data dir, so restarts share it.
//! (Replicas of a PostgreSQL deployment each keep their own: see PROVIDERS.md.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

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

/// Today's spend and what calls in flight have reserved, in US dollars.
#[derive(Debug, Default)]
struct Spend {
    day: u64,
    total: f64,
    per_key: HashMap<String, f64>,
    reserved: f64,
    reserved_per_key: HashMap<String, f64>,
}

impl Spend {
    fn key_total(&self, key: &str) -> f64 {
        self.per_key.get(key).copied().unwrap_or(0.0)
            + self.reserved_per_key.get(key).copied().unwrap_or(0.0)
    }

    /// Refuses `usd` more when it would take today's spend and reservations past a cap.
    fn fits(&self, config: &BudgetConfig, usd: f64, key: Option<&str>) -> Result<(), Exhausted> {
        if let Some(cap) = config.daily_usd
            && (self.total + self.reserved + usd > cap || self.total >= cap)
        {
            return Err(Exhausted::Daily {
                spent_usd: self.total + self.reserved,
                cap_usd: cap,
            });
        }
        if let (Some(cap), Some(key)) = (config.daily_usd_per_key, key) {
            let spent = self.key_total(key);
            if spent + usd > cap || spent >= cap {
                return Err(Exhausted::DailyPerKey {
                    spent_usd: spent,
                    cap_usd: cap,
                });
            }
        }
        Ok(())
    }

    fn add_reserved(&mut self, usd: f64, key: Option<&str>) {
        self.reserved = (self.reserved + usd).max(0.0);
        if let Some(k) = key {
            let r = self.reserved_per_key.entry(k.to_string()).or_insert(0.0);
            *r = (*r + usd).max(0.0);
        }
    }
}

/// Spending limits, today's spend, and the reservations of calls in flight. With a
/// [`SpendFile`] attached, every settled charge is written through, so a restart starts the day
/// with what was already spent.
#[derive(Debug, Default)]
pub struct Budget {
    pub config: BudgetConfig,
    spend: Mutex<Spend>,
    /// The highest output price of any routed model (US dollars per million tokens): what the
    /// pre-check before retrieval assumes the answer's output tokens cost.
    output_price_per_mtok: f64,
    file: OnceLock<SpendFile>,
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
            Exhausted::Daily { spent_usd, cap_usd } => write!(
                f,
                "daily spend ${spent_usd:.4} (with calls in flight) leaves no room for another answer under the cap ${cap_usd:.4}"
            ),
            Exhausted::DailyPerKey { spent_usd, cap_usd } => write!(
                f,
                "this key's daily spend ${spent_usd:.4} (with calls in flight) leaves no room for another answer under its cap ${cap_usd:.4}"
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

/// Output tokens reserved for a call that sets no `max_tokens`.
pub const DEFAULT_RESERVED_OUTPUT_TOKENS: u32 = 4096;

/// An upper-bound estimate of a call's cost, reserved before the call: one input token per two
/// bytes of prompt plus 8 per message (real text runs 3–4 bytes a token), and every output token
/// the request allows.
pub fn estimate_usd(price: &Price, req: &super::ChatRequest) -> f64 {
    let bytes: usize = req.system.len()
        + req.messages.iter().map(|m| m.content.len()).sum::<usize>()
        + req
            .context
            .iter()
            .map(|c| c.title.len() + c.text.len())
            .sum::<usize>();
    let input = (bytes / 2 + 8 * (req.messages.len() + 1)) as u64;
    let output = u64::from(req.max_tokens.unwrap_or(DEFAULT_RESERVED_OUTPUT_TOKENS));
    cost_usd(
        price,
        &Usage {
            input_tokens: input,
            output_tokens: output,
            cached_tokens: 0,
        },
    )
}

impl Budget {
    pub fn new(config: BudgetConfig) -> Budget {
        Budget {
            config,
            ..Budget::default()
        }
    }

    /// The budget with the output price the pre-check assumes (see [`Budget::check`]).
    pub fn with_output_price(mut self, usd_per_mtok: f64) -> Budget {
        self.output_price_per_mtok = usd_per_mtok;
        self
    }

    fn today(&self) -> std::sync::MutexGuard<'_, Spend> {
        let mut s = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        let day = utc_day();
        if s.day != day {
            *s = Spend {
                day,
                ..Spend::default()
            };
            if let Some(f) = self.file.get() {
                f.load(day, &mut s);
            }
        }
        s
    }

    /// Keeps spend in `path` (a redb file, created if missing): today's spend already recorded
    /// there is loaded now, and every charge from here on is written through. Once per budget.
    pub fn persist_to(&self, path: &Path) -> Result<(), String> {
        let file = SpendFile::open(path)?;
        let mut s = self.today();
        file.load(s.day, &mut s);
        drop(s);
        self.file
            .set(file)
            .map_err(|_| "the budget already keeps its spend in a file".to_string())
    }

    /// Refuses a call that would break a cap: more output tokens than a request may ask for,
    /// or a daily cap without room for `max_tokens` at the highest routed output price (the
    /// gateway's reservation, made when the prompt is known, is the exact check).
    pub fn check(&self, max_tokens: Option<u32>, key: Option<&str>) -> Result<(), Exhausted> {
        self.check_tokens(max_tokens)?;
        let floor = f64::from(max_tokens.unwrap_or(0)) * self.output_price_per_mtok / 1e6;
        self.today().fits(&self.config, floor, key)
    }

    /// Refuses a request asking for more output tokens than `max_tokens_per_request`.
    pub fn check_tokens(&self, max_tokens: Option<u32>) -> Result<(), Exhausted> {
        match (self.config.max_tokens_per_request, max_tokens) {
            (Some(cap), Some(asked)) if asked > cap => {
                Err(Exhausted::TokensPerRequest { asked, cap })
            }
            _ => Ok(()),
        }
    }

    /// Reserves `usd` for a call about to be made, or refuses it when the reservation would
    /// take today's spend (with every reservation in flight) past a cap. Concurrent calls
    /// therefore never spend past a cap as long as each costs at most what it reserved.
    pub fn reserve(
        self: &Arc<Self>,
        usd: f64,
        key: Option<&str>,
    ) -> Result<Reservation, Exhausted> {
        let mut s = self.today();
        s.fits(&self.config, usd, key)?;
        s.add_reserved(usd, key);
        Ok(Reservation {
            budget: self.clone(),
            usd,
            key: key.map(str::to_string),
            day: s.day,
            settled: false,
        })
    }

    /// Adds a finished call's cost to today's spend (and to the spend file).
    pub fn charge(&self, usd: f64, key: Option<&str>) {
        let mut s = self.today();
        s.total += usd;
        if let Some(k) = key {
            *s.per_key.entry(k.to_string()).or_insert(0.0) += usd;
        }
        if let Some(f) = self.file.get() {
            f.store(&s, key);
        }
    }

    fn release(&self, usd: f64, key: Option<&str>, day: u64) {
        let mut s = self.today();
        if s.day == day {
            s.add_reserved(-usd, key);
        }
    }

    /// Today's total spend in US dollars (settled calls only).
    pub fn spent_today(&self) -> f64 {
        self.today().total
    }
}

/// Money held for a call in flight. [`Reservation::settle`] charges what the call cost and
/// frees the rest; dropping it unsettled (the call failed before any output) frees it all.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    usd: f64,
    key: Option<String>,
    day: u64,
    settled: bool,
}

impl Reservation {
    /// What was reserved.
    pub fn usd(&self) -> f64 {
        self.usd
    }

    pub fn settle(mut self, actual_usd: f64) {
        self.settled = true;
        self.budget.release(self.usd, self.key.as_deref(), self.day);
        self.budget.charge(actual_usd, self.key.as_deref());
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.budget.release(self.usd, self.key.as_deref(), self.day);
        }
    }
}

/// Spend by UTC day and bucket (`total`, or `key:<name>` as the HTTP layer names callers) in a
/// small redb file of the data dir, so restarts share it. Write errors are logged, not fatal:
/// the in-memory spend still enforces the caps for this process.
#[derive(Debug)]
pub struct SpendFile {
    db: redb::Database,
    path: std::path::PathBuf,
}

const SPEND: redb::TableDefinition<&str, f64> = redb::TableDefinition::new("spend");
const TOTAL: &str = "total";

fn spend_key(day: u64, bucket: &str) -> String {
    format!("{day}/{bucket}")
}

impl SpendFile {
    pub fn open(path: &Path) -> Result<SpendFile, String> {
        let what = |e: &dyn std::fmt::Display| format!("the spend file {}: {e}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| what(&e))?;
        }
        let db = redb::Database::create(path).map_err(|e| what(&e))?;
        let txn = db.begin_write().map_err(|e| what(&e))?;
        txn.open_table(SPEND).map_err(|e| what(&e))?;
        txn.commit().map_err(|e| what(&e))?;
        Ok(SpendFile {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Today's recorded spend into `s` (a fresh day's record).
    fn load(&self, day: u64, s: &mut Spend) {
        use redb::{ReadableDatabase, ReadableTable};
        let read = || -> Result<Vec<(String, f64)>, redb::Error> {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(SPEND)?;
            let prefix = format!("{day}/");
            let mut out = Vec::new();
            for row in t.range(prefix.as_str()..)? {
                let (k, v) = row?;
                let Some(bucket) = k.value().strip_prefix(&prefix) else {
                    break;
                };
                out.push((bucket.to_string(), v.value()));
            }
            Ok(out)
        };
        match read() {
            Ok(rows) => {
                for (bucket, usd) in rows {
                    if bucket == TOTAL {
                        s.total = usd;
                    } else {
                        s.per_key.insert(bucket, usd);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the spend file; today's spend starts at 0");
            }
        }
    }

    /// Writes today's total and `key`'s spend, and drops earlier days.
    fn store(&self, s: &Spend, key: Option<&str>) {
        let write = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut t = txn.open_table(SPEND)?;
                t.insert(spend_key(s.day, TOTAL).as_str(), s.total)?;
                if let Some(k) = key {
                    t.insert(
                        spend_key(s.day, k).as_str(),
                        s.per_key.get(k).copied().unwrap_or(0.0),
                    )?;
                }
                let today = format!("{}/", s.day);
                t.retain(|k, _| k >= today.as_str())?;
            }
            txn.commit()?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot record spend in the spend file; it is kept in memory");
        }
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
