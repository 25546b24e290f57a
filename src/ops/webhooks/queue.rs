//! The persisted delivery queue: `<data_dir>/state/webhooks.redb`, one record per (event,
//! endpoint) with every attempt, the body it signs, the pending ones by their next attempt,
//! and the endpoints a receiver disabled (410). Each change is one durable write transaction,
//! so a delivery acknowledged by `emit` survives a crash and a restart resumes it.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

/// Record key (`<created ms, 20 digits>-<id>`, so keys sort by age) → record JSON.
const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");
/// Record key → the body it signs (kept while the delivery is pending).
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("bodies");
/// Record key of a pending delivery → its next attempt (Unix milliseconds).
const PENDING: TableDefinition<&str, i64> = TableDefinition::new("pending");
/// Endpoint URL → why and when it was disabled (JSON).
const DISABLED: TableDefinition<&str, &[u8]> = TableDefinition::new("disabled");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

/// One attempt: when, the receiver's status (none when no response came) or the error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub at: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub ms: u64,
}

/// One event's delivery to one endpoint, as `/admin/webhooks/deliveries` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// The record's key (sorts by creation).
    pub id: String,
    /// The `webhook-id` header: the same on every attempt, so receivers can deduplicate.
    pub message_id: String,
    pub event_type: String,
    pub endpoint: String,
    pub created_at: String,
    pub state: DeliveryState,
    pub attempts: Vec<Attempt>,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<String>,
    /// Why the delivery gave up (failed deliveries).
    pub error: Option<String>,
}

/// Why and when a receiver disabled its endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disabled {
    pub at: String,
    pub reason: String,
}

pub struct Queue {
    db: Database,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `ms` (Unix milliseconds) as RFC 3339, UTC, milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn err(e: impl Into<redb::Error>) -> anyhow::Error {
    anyhow::Error::from(e.into())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes)
        .inspect_err(|e| tracing::warn!(error = %e, "ignoring an unreadable webhook record"))
        .ok()
}

impl Queue {
    /// Opens (or creates) the queue file. Retries for a moment while a previous instance of
    /// this process still holds it (a restart in the same process).
    pub fn open(path: &Path) -> anyhow::Result<Queue> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut tries = 0;
        let db = loop {
            match Database::create(path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => break other.map_err(err)?,
            }
        };
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(DELIVERIES).map_err(err)?;
        txn.open_table(BODIES).map_err(err)?;
        txn.open_table(PENDING).map_err(err)?;
        txn.open_table(DISABLED).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Queue { db })
    }

    /// Adds pending deliveries with their bodies, due at once; one transaction.
    pub fn enqueue(&self, items: &[(Delivery, String)], now_ms: i64) -> anyhow::Result<()> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut records = txn.open_table(DELIVERIES).map_err(err)?;
            let mut bodies = txn.open_table(BODIES).map_err(err)?;
            let mut pending = txn.open_table(PENDING).map_err(err)?;
            for (d, body) in items {
                let json = serde_json::to_vec(d)?;
                records
                    .insert(d.id.as_str(), json.as_slice())
                    .map_err(err)?;
                bodies.insert(d.id.as_str(), body.as_bytes()).map_err(err)?;
                pending.insert(d.id.as_str(), now_ms).map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        Ok(())
    }

    /// Pending deliveries due at `now_ms` with their bodies, the most overdue first.
    pub fn due(&self, now_ms: i64, limit: usize) -> anyhow::Result<Vec<(Delivery, String)>> {
        let txn = self.db.begin_read().map_err(err)?;
        let pending = txn.open_table(PENDING).map_err(err)?;
        let mut keys: Vec<(i64, String)> = Vec::new();
        for row in pending.iter().map_err(err)? {
            let (k, at) = row.map_err(err)?;
            if at.value() <= now_ms {
                keys.push((at.value(), k.value().to_string()));
            }
        }
        keys.sort();
        keys.truncate(limit);
        let records = txn.open_table(DELIVERIES).map_err(err)?;
        let bodies = txn.open_table(BODIES).map_err(err)?;
        let mut out = Vec::new();
        for (_, key) in keys {
            let record = records.get(key.as_str()).map_err(err)?;
            let body = bodies.get(key.as_str()).map_err(err)?;
            if let (Some(r), Some(b)) = (record, body)
                && let Some(d) = decode::<Delivery>(r.value())
            {
                out.push((d, String::from_utf8_lossy(b.value()).into_owned()));
            }
        }
        Ok(out)
    }

    /// When the next pending delivery is due, if any is pending.
    pub fn next_due(&self) -> anyhow::Result<Option<i64>> {
        let txn = self.db.begin_read().map_err(err)?;
        let pending = txn.open_table(PENDING).map_err(err)?;
        let mut next: Option<i64> = None;
        for row in pending.iter().map_err(err)? {
            let at = row.map_err(err)?.1.value();
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        Ok(next)
    }

    /// Stores a delivery after an attempt: still pending at `next_ms`, or finished (its body
    /// dropped, the oldest finished records beyond `keep` pruned).
    pub fn record(&self, d: &Delivery, next_ms: Option<i64>, keep: usize) -> anyhow::Result<()> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut records = txn.open_table(DELIVERIES).map_err(err)?;
            let mut bodies = txn.open_table(BODIES).map_err(err)?;
            let mut pending = txn.open_table(PENDING).map_err(err)?;
            records
                .insert(d.id.as_str(), serde_json::to_vec(d)?.as_slice())
                .map_err(err)?;
            match next_ms {
                Some(at) => {
                    pending.insert(d.id.as_str(), at).map_err(err)?;
                }
                None => {
                    pending.remove(d.id.as_str()).map_err(err)?;
                    bodies.remove(d.id.as_str()).map_err(err)?;
                    prune(&mut records, &pending, keep)?;
                }
            }
        }
        txn.commit().map_err(err)?;
        Ok(())
    }

    /// The newest `limit` deliveries first.
    pub fn list(&self, limit: usize) -> anyhow::Result<Vec<Delivery>> {
        let txn = self.db.begin_read().map_err(err)?;
        let records = txn.open_table(DELIVERIES).map_err(err)?;
        let mut out = Vec::new();
        for row in records.iter().map_err(err)?.rev().take(limit) {
            if let Some(d) = decode(row.map_err(err)?.1.value()) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Records that the receiver at `url` disabled its endpoint.
    pub fn disable(&self, url: &str, why: &Disabled) -> anyhow::Result<()> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut disabled = txn.open_table(DISABLED).map_err(err)?;
            disabled
                .insert(url, serde_json::to_vec(why)?.as_slice())
                .map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(())
    }

    /// Why `url` was disabled, if it was.
    pub fn disabled(&self, url: &str) -> anyhow::Result<Option<Disabled>> {
        let txn = self.db.begin_read().map_err(err)?;
        let disabled = txn.open_table(DISABLED).map_err(err)?;
        let found = disabled.get(url).map_err(err)?;
        Ok(found.and_then(|v| decode(v.value())))
    }
}

/// Deletes the oldest finished records until at most `keep` finished ones remain.
fn prune(
    records: &mut redb::Table<'_, &'static str, &'static [u8]>,
    pending: &redb::Table<'_, &'static str, i64>,
    keep: usize,
) -> anyhow::Result<()> {
    let finished = records
        .len()
        .map_err(err)?
        .saturating_sub(pending.len().map_err(err)?);
    let mut excess = usize::try_from(finished)
        .unwrap_or(usize::MAX)
        .saturating_sub(keep);
    if excess == 0 {
        return Ok(());
    }
    let mut doomed = Vec::new();
    for row in records.iter().map_err(err)? {
        if excess == 0 {
            break;
        }
        let key = row.map_err(err)?.0.value().to_string();
        if pending.get(key.as_str()).map_err(err)?.is_none() {
            doomed.push(key);
            excess -= 1;
        }
    }
    for key in doomed {
        records.remove(key.as_str()).map_err(err)?;
    }
    Ok(())
}
