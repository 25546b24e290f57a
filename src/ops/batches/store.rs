//! Where batches live: one redb file (`<data_dir>/state/batches.redb`) holding each batch's
//! record, its requests and the results of those that finished. A result and the batch's
//! counters are written in ONE write transaction, so a request is counted done exactly when
//! its result is stored, and a result already stored is never stored again: after a restart the
//! runner resumes with the requests that have none.
//!
//! Must not: run anything (the runner in `mod.rs` does), or know about HTTP.

use std::path::{Path, PathBuf};

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::answer::events::Mode;

const BATCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("batches");
const REQUESTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("batch_requests");
const RESULTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("batch_results");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl BatchState {
    /// Whether the runner still has work in a batch of this state.
    pub fn active(self) -> bool {
        matches!(self, BatchState::Queued | BatchState::Running)
    }

    /// The state's name, as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Queued => "queued",
            BatchState::Running => "running",
            BatchState::Completed => "completed",
            BatchState::Failed => "failed",
            BatchState::Cancelled => "cancelled",
        }
    }
}

/// A batch: what `GET /batches/{id}` shows, and what it runs with (its key's name, access
/// groups and budget bucket, which are never shown).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub id: String,
    pub state: BatchState,
    pub total: usize,
    /// Requests finished, answered or not.
    pub done: usize,
    /// Of `done`, those that ended with an error.
    pub failed: usize,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// What the finished requests' model calls cost.
    pub cost_usd: f64,
    /// The caller's own `metadata`, returned as given.
    pub metadata: Value,
    pub owner: String,
    pub groups: Vec<String>,
    pub budget_key: String,
}

impl Batch {
    /// The batch as the API shows it.
    pub fn view(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "state": self.state,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "cost_usd": self.cost_usd,
            "metadata": self.metadata,
        })
    }
}

/// One request of a batch, checked when the batch was accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchItem {
    pub custom_id: String,
    pub question: String,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    pub updated_after: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_before: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub mode: Mode,
}

/// The result of one finished request: one line of `GET /batches/{id}/results`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchResult {
    pub custom_id: String,
    /// The answer's outcome (`answered`, `no_answer`, …) or, when it ended with an error,
    /// the error's code.
    pub outcome: String,
    /// The answer text shown (for a failed request, the part shown before the error, or
    /// `null`).
    pub answer: Option<String>,
    pub citations: Vec<Value>,
    pub handoff: Option<Value>,
    /// `{"code", "message"}` when the request ended with an error.
    pub error: Option<Value>,
    pub trace_id: Option<String>,
    /// What the request's model call cost (summed into the batch; not shown per line).
    #[serde(skip_serializing, default)]
    pub cost_usd: f64,
}

/// The batch store of one data directory.
pub struct BatchStore {
    path: PathBuf,
    db: Database,
}

impl BatchStore {
    /// Opens (or creates) the store file `path`.
    pub fn open(path: &Path) -> anyhow::Result<BatchStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path)
            .with_context(|| format!("opening the batch store {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(BATCHES)?;
        txn.open_table(REQUESTS)?;
        txn.open_table(RESULTS)?;
        txn.commit()?;
        Ok(BatchStore {
            path: path.to_path_buf(),
            db,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores a new batch with its requests, durably, in one transaction.
    pub fn create(&self, batch: &Batch, items: &[BatchItem]) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut batches = txn.open_table(BATCHES)?;
            batches.insert(batch.id.as_str(), serde_json::to_vec(batch)?.as_slice())?;
            let mut requests = txn.open_table(REQUESTS)?;
            for (i, item) in items.iter().enumerate() {
                let key = (batch.id.as_str(), u32::try_from(i)?);
                requests.insert(key, serde_json::to_vec(item)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> anyhow::Result<Option<Batch>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BATCHES)?;
        let value = table.get(id)?;
        value
            .map(|v| serde_json::from_slice(v.value()).map_err(Into::into))
            .transpose()
    }

    /// Every batch, oldest first.
    pub fn all(&self) -> anyhow::Result<Vec<Batch>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BATCHES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            match serde_json::from_slice::<Batch>(v.value()) {
                Ok(b) => out.push(b),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a stored batch this cairn cannot read")
                }
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The requests of batch `id` that have no result yet, in order.
    pub fn pending(&self, id: &str) -> anyhow::Result<Vec<(u32, BatchItem)>> {
        let txn = self.db.begin_read()?;
        let requests = txn.open_table(REQUESTS)?;
        let results = txn.open_table(RESULTS)?;
        let mut out = Vec::new();
        for row in requests.range((id, 0)..=(id, u32::MAX))? {
            let (k, v) = row?;
            let (_, n) = k.value();
            if results.get((id, n))?.is_none() {
                out.push((n, serde_json::from_slice(v.value())?));
            }
        }
        Ok(out)
    }

    /// The stored result lines of batch `id`, in request order.
    pub fn results(&self, id: &str) -> anyhow::Result<Vec<BatchResult>> {
        let txn = self.db.begin_read()?;
        let results = txn.open_table(RESULTS)?;
        let mut out = Vec::new();
        for row in results.range((id, 0)..=(id, u32::MAX))? {
            let (_, v) = row?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// Applies `f` to batch `id` and stores it, in one transaction; the batch as stored.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Batch)) -> anyhow::Result<Option<Batch>> {
        let txn = self.db.begin_write()?;
        let batch = {
            let mut batches = txn.open_table(BATCHES)?;
            let Some(mut batch) = read_batch(&batches, id)? else {
                return Ok(None);
            };
            f(&mut batch);
            batches.insert(id, serde_json::to_vec(&batch)?.as_slice())?;
            batch
        };
        txn.commit()?;
        Ok(Some(batch))
    }

    /// Stores the result of request `n` of batch `id` and counts it, in one transaction; a
    /// batch whose last request this was becomes `completed` (or `failed` when every request
    /// failed). A result already stored is left as it is and not counted again. Returns the
    /// batch as stored, and whether this call finished it.
    pub fn record(&self, id: &str, n: u32, result: &BatchResult) -> anyhow::Result<(Batch, bool)> {
        let txn = self.db.begin_write()?;
        let outcome = {
            let mut batches = txn.open_table(BATCHES)?;
            let mut results = txn.open_table(RESULTS)?;
            let mut batch = read_batch(&batches, id)?
                .with_context(|| format!("batch {id} vanished while it ran"))?;
            if results.get((id, n))?.is_some() {
                return Ok((batch, false));
            }
            results.insert((id, n), serde_json::to_vec(result)?.as_slice())?;
            let finished = count(&mut batch, result);
            batches.insert(id, serde_json::to_vec(&batch)?.as_slice())?;
            (batch, finished)
        };
        txn.commit()?;
        Ok(outcome)
    }
}

/// Counts `result` into `batch`; whether the batch just finished.
pub fn count(batch: &mut Batch, result: &BatchResult) -> bool {
    batch.done += 1;
    if result.error.is_some() {
        batch.failed += 1;
    }
    batch.cost_usd += result.cost_usd;
    if batch.done < batch.total || !batch.state.active() {
        return false;
    }
    batch.state = if batch.failed == batch.total {
        BatchState::Failed
    } else {
        BatchState::Completed
    };
    batch.finished_at = Some(chrono::Utc::now().to_rfc3339());
    true
}

fn read_batch(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> anyhow::Result<Option<Batch>> {
    let value = table.get(id)?;
    value
        .map(|v| serde_json::from_slice(v.value()).map_err(Into::into))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: &str, total: usize) -> Batch {
        Batch {
            id: id.into(),
            state: BatchState::Queued,
            total,
            done: 0,
            failed: 0,
            created_at: chrono::Utc::now().to_rfc3339(),
            finished_at: None,
            cost_usd: 0.0,
            metadata: Value::Null,
            owner: "bot".into(),
            groups: vec![],
            budget_key: "key:bot".into(),
        }
    }

    fn item(n: usize) -> BatchItem {
        BatchItem {
            custom_id: format!("q{n}"),
            question: format!("question {n}"),
            sources: vec![],
            metadata: Default::default(),
            updated_after: None,
            updated_before: None,
            mode: Mode::Rag,
        }
    }

    fn result(n: usize, error: bool) -> BatchResult {
        BatchResult {
            custom_id: format!("q{n}"),
            outcome: if error { "internal" } else { "answered" }.into(),
            answer: Some("a".into()),
            citations: vec![],
            handoff: None,
            error: error.then(|| serde_json::json!({"code": "internal", "message": "m"})),
            trace_id: Some(format!("t{n}")),
            cost_usd: 0.5,
        }
    }

    #[test]
    fn a_result_is_counted_once_and_pending_requests_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("batches.redb");
        let store = BatchStore::open(&path).expect("open");
        let items: Vec<BatchItem> = (0..3).map(item).collect();
        store.create(&batch("b1", 3), &items).expect("create");
        let (b, finished) = store.record("b1", 1, &result(1, false)).expect("record");
        assert_eq!((b.done, finished), (1, false));
        // Recording the same request again (a resumed run) changes nothing.
        let (b, _) = store.record("b1", 1, &result(1, false)).expect("again");
        assert_eq!((b.done, b.cost_usd), (1, 0.5));
        drop(store);
        let store = BatchStore::open(&path).expect("reopen");
        let pending: Vec<u32> = store
            .pending("b1")
            .expect("pending")
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(pending, vec![0, 2]);
        store.record("b1", 0, &result(0, true)).expect("record");
        let (b, finished) = store.record("b1", 2, &result(2, false)).expect("record");
        assert!(finished);
        assert_eq!((b.state, b.done, b.failed), (BatchState::Completed, 3, 1));
        assert!(b.finished_at.is_some());
        let ids: Vec<String> = store
            .results("b1")
            .expect("results")
            .into_iter()
            .map(|r| r.custom_id)
            .collect();
        assert_eq!(ids, vec!["q0", "q1", "q2"]);
    }

    #[test]
    fn a_batch_whose_every_request_failed_is_failed_and_a_cancelled_one_stays_cancelled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BatchStore::open(&dir.path().join("b.redb")).expect("open");
        store.create(&batch("f", 1), &[item(0)]).expect("create");
        let (b, _) = store.record("f", 0, &result(0, true)).expect("record");
        assert_eq!(b.state, BatchState::Failed);
        store
            .create(&batch("c", 2), &[item(0), item(1)])
            .expect("create");
        store
            .update("c", |b| b.state = BatchState::Cancelled)
            .expect("cancel");
        let (b, finished) = store.record("c", 0, &result(0, false)).expect("record");
        assert_eq!(
            (b.state, finished, b.done),
            (BatchState::Cancelled, false, 1)
        );
    }
}
