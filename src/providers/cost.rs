//! Cost and budgets. Every call's [`Usage`] is priced with the provider's price table
//! (`[providers.<name>.prices."<model>"]`, US dollars per million tokens); the [`Budget`] holds
//! the per-request token cap and the daily spend caps (global and per API key of cairn's own
//! clients). Before a call the gateway reserves an upper-bound estimate ([`estimate_usd`]) and
//! refuses the call with [`super::GatewayError::BudgetExhausted`] when it does not fit next to
//! today's spend and the other reservations; when the call ends the reservation is settled to
//! the metered cost. Settled spend is written through to a [`SpendStore`]: the [`SpendFile`] in
//! the data dir (restarts share it), or PostgreSQL when that backend is on (restarts and
//! replicas share it; each replica re-reads today's sums every [`SHARED_SPEND_REFRESH`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// Where settled spend is kept, by UTC day and bucket ([`TOTAL`], or a caller's key as the
/// HTTP layer names it). Writes are increments, so several processes adding to one store add up.
pub trait SpendStore: Send + Sync + std::fmt::Debug {
    /// What is recorded for `day`, by bucket, in US dollars.
    fn load(&self, day: u64) -> Result<Vec<(String, f64)>, String>;
    /// Adds each `(bucket, usd)` to `day`'s spend.
    fn add(&self, day: u64, charges: &[(&str, f64)]) -> Result<(), String>;
    /// How long a loaded copy of today's spend may be used before reading the store again:
    /// `None` when this process is the store's only writer (its copy is always current).
    fn refresh_every(&self) -> Option<Duration>;
    /// Where the spend is kept, for log lines.
    fn describe(&self) -> String;
}

/// How long a replica uses its copy of today's spend from a store shared with other replicas
/// before reading it again (before a reservation or a check). Calls settled on other replicas
/// within this window can take the day's spend past a cap by at most what they cost.
pub const SHARED_SPEND_REFRESH: Duration = Duration::from_secs(1);

/// The bucket of the day's total spend (the others are callers' keys).
pub const TOTAL: &str = "total";

/// Today's spend and what calls in flight have reserved, in US dollars.
#[derive(Debug, Default)]
struct Spend {
    day: u64,
    total: f64,
    per_key: HashMap<String, f64>,
    reserved: f64,
    reserved_per_key: HashMap<String, f64>,
    /// When `total` and `per_key` were last read from the store.
    loaded_at: Option<Instant>,
}

impl Spend {
    /// Takes the store's sums for this day, never lowering what this process already counts
    /// (a charge whose write failed stays counted here). Reservations are this process's own
    /// and are kept.
    fn merge(&mut self, rows: Vec<(String, f64)>) {
        for (bucket, usd) in rows {
            let slot = if bucket == TOTAL {
                &mut self.total
            } else {
                self.per_key.entry(bucket).or_insert(0.0)
            };
            *slot = slot.max(usd);
        }
    }

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
/// [`SpendStore`] attached, every settled charge is written through, so a restart (and, with a
/// shared store, every replica) starts from what was already spent.
#[derive(Debug, Default)]
pub struct Budget {
    pub config: BudgetConfig,
    spend: Mutex<Spend>,
    /// The highest output price of any routed model (US dollars per million tokens): what the
    /// pre-check before retrieval assumes the answer's output tokens cost.
    output_price_per_mtok: f64,
    store: OnceLock<Box<dyn SpendStore>>,
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

/// The bytes of one tool round as the model reads them: its text, calls and results.
fn round_bytes(r: &super::ToolRound) -> usize {
    r.text.len()
        + r.calls
            .iter()
            .map(|c| c.name.len() + c.arguments.len())
            .sum::<usize>()
        + r.results.iter().map(|x| x.content.len()).sum::<usize>()
}

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
            .sum::<usize>()
        + req.tool_rounds.iter().map(round_bytes).sum::<usize>()
        + req
            .tools
            .iter()
            .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
            .sum::<usize>();
    let turns = req.messages.len() + 2 * req.tool_rounds.len() + 1;
    let input = (bytes / 2 + 8 * turns) as u64;
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

    /// Today's spend, as of the last read of the store (a new day starts from the store).
    fn today(&self) -> std::sync::MutexGuard<'_, Spend> {
        let mut s = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        let day = utc_day();
        if s.day != day {
            *s = Spend {
                day,
                ..Spend::default()
            };
            self.load(&mut s);
        }
        s
    }

    /// Today's spend, read again from a shared store when the copy is older than the store's
    /// refresh interval: what reservations and checks decide on.
    fn current(&self) -> std::sync::MutexGuard<'_, Spend> {
        let mut s = self.today();
        let stale = match (
            self.store.get().and_then(|st| st.refresh_every()),
            s.loaded_at,
        ) {
            (Some(every), Some(at)) => at.elapsed() >= every,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if stale {
            self.load(&mut s);
        }
        s
    }

    /// Merges the store's record of `s.day` into `s`. A failed read is logged and retried after
    /// the refresh interval; the spend this process knows keeps enforcing the caps.
    fn load(&self, s: &mut Spend) {
        let Some(store) = self.store.get() else {
            return;
        };
        s.loaded_at = Some(Instant::now());
        match store.load(s.day) {
            Ok(rows) => s.merge(rows),
            Err(e) => {
                tracing::warn!(store = %store.describe(), error = %e, "cannot read today's spend; the spend this process knows keeps enforcing the caps");
            }
        }
    }

    /// Keeps spend in `path` (a redb file, created if missing): see [`Budget::persist`].
    pub fn persist_to(&self, path: &Path) -> Result<(), String> {
        self.persist(Box::new(SpendFile::open(path)?))
    }

    /// Keeps spend in `store`: today's spend already recorded there is loaded now, and every
    /// charge from here on is added to it. Once per budget.
    pub fn persist(&self, store: Box<dyn SpendStore>) -> Result<(), String> {
        let what = store.describe();
        self.store
            .set(store)
            .map_err(|_| format!("the budget already keeps its spend elsewhere than {what}"))?;
        let mut s = self.today();
        if s.loaded_at.is_none() {
            self.load(&mut s);
        }
        Ok(())
    }

    /// Refuses a call that would break a cap: more output tokens than a request may ask for,
    /// or a daily cap without room for `max_tokens` at the highest routed output price (the
    /// gateway's reservation, made when the prompt is known, is the exact check).
    pub fn check(&self, max_tokens: Option<u32>, key: Option<&str>) -> Result<(), Exhausted> {
        self.check_tokens(max_tokens)?;
        let floor = f64::from(max_tokens.unwrap_or(0)) * self.output_price_per_mtok / 1e6;
        self.current().fits(&self.config, floor, key)
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
        let mut s = self.current();
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

    /// Adds a finished call's cost to today's spend (and to the store). A failed write is
    /// logged: the spend stays counted in this process.
    pub fn charge(&self, usd: f64, key: Option<&str>) {
        let mut s = self.today();
        s.total += usd;
        if let Some(k) = key {
            *s.per_key.entry(k.to_string()).or_insert(0.0) += usd;
        }
        let Some(store) = self.store.get() else {
            return;
        };
        let mut charges = vec![(TOTAL, usd)];
        charges.extend(key.map(|k| (k, usd)));
        if let Err(e) = store.add(s.day, &charges) {
            tracing::warn!(store = %store.describe(), error = %e, "cannot record spend; it is kept in memory");
        }
    }

    fn release(&self, usd: f64, key: Option<&str>, day: u64) {
        let mut s = self.today();
        if s.day == day {
            s.add_reserved(-usd, key);
        }
    }

    /// Today's total spend in US dollars (settled calls only; with a shared store, as of the
    /// last refresh).
    pub fn spent_today(&self) -> f64 {
        self.current().total
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

/// Spend by UTC day and bucket in a small redb file of the data dir, so restarts share it. Only
/// this process writes it (redb locks the file), so its copy of today's spend is always current.
#[derive(Debug)]
pub struct SpendFile {
    db: redb::Database,
    path: std::path::PathBuf,
}

const SPEND: redb::TableDefinition<&str, f64> = redb::TableDefinition::new("spend");

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

    fn read(&self, day: u64) -> Result<Vec<(String, f64)>, redb::Error> {
        use redb::{ReadableDatabase, ReadableTable};
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
    }

    /// Adds to `day`'s buckets and drops earlier days, in one write transaction.
    fn write(&self, day: u64, charges: &[(&str, f64)]) -> Result<(), redb::Error> {
        use redb::ReadableTable;
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(SPEND)?;
            for (bucket, usd) in charges {
                let key = spend_key(day, bucket);
                let was = t.get(key.as_str())?.map(|v| v.value()).unwrap_or(0.0);
                t.insert(key.as_str(), was + usd)?;
            }
            let today = format!("{day}/");
            t.retain(|k, _| k >= today.as_str())?;
        }
        txn.commit()?;
        Ok(())
    }
}

impl SpendStore for SpendFile {
    fn load(&self, day: u64) -> Result<Vec<(String, f64)>, String> {
        self.read(day).map_err(|e| e.to_string())
    }

    fn add(&self, day: u64, charges: &[(&str, f64)]) -> Result<(), String> {
        self.write(day, charges).map_err(|e| e.to_string())
    }

    fn refresh_every(&self) -> Option<Duration> {
        None
    }

    fn describe(&self) -> String {
        format!("the spend file {}", self.path.display())
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
