//! The batches of replicas sharing PostgreSQL (`[index] backend = "postgres"`): the
//! [`BatchBackend`] over `cairn-pg`'s `batches` and `batch_requests` tables. Any replica shows,
//! cancels and runs any batch: each worker claims the next open request in the database, with
//! a lease (twice `[server] request_timeout_secs`) after which another replica may claim it
//! again, and a result is stored and counted in one transaction that counts it only if no
//! replica stored one before, so each request has one result and one replica finishes a batch.
//!
//! Must not: call the synchronous client on a runtime thread (every call goes through the
//! engine's `off_runtime`), or keep any queue of its own (the tables are the queue).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::engine::off_runtime;
use crate::ops::batches::store::{Batch, BatchItem, BatchResult, BatchState, count};
use crate::ops::batches::{BatchBackend, Claim, cancel_active};

/// The shared batches of one PostgreSQL schema.
pub struct PgBatches {
    pg: Arc<cairn_pg::PgIndex>,
    lease: Duration,
}

impl PgBatches {
    pub fn new(pg: Arc<cairn_pg::PgIndex>, lease: Duration) -> PgBatches {
        PgBatches { pg, lease }
    }
}

/// A stored batch record as a [`Batch`].
fn read(record: Value) -> anyhow::Result<Batch> {
    serde_json::from_value(record).context("a stored batch is unreadable")
}

/// Applies `f` to a stored record; the new record, its state, and what `f` said. A record
/// this build cannot read is left as it is.
fn apply<T: Default>(record: Value, f: impl FnOnce(&mut Batch) -> T) -> (Value, String, T) {
    let Ok(mut batch) = serde_json::from_value::<Batch>(record.clone()) else {
        let state = record["state"].as_str().unwrap_or("failed").to_string();
        return (record, state, T::default());
    };
    let said = f(&mut batch);
    let state = batch.state.as_str().to_string();
    match serde_json::to_value(&batch) {
        Ok(v) => (v, state, said),
        Err(_) => (record, state, T::default()),
    }
}

fn no_string(e: String) -> anyhow::Error {
    anyhow::anyhow!(e)
}

impl BatchBackend for PgBatches {
    fn create(&self, batch: &Batch, items: Vec<BatchItem>, limit: usize) -> anyhow::Result<bool> {
        let record = serde_json::to_value(batch)?;
        let items = items
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        let keys = (
            batch.id.as_str(),
            batch.owner.as_str(),
            batch.state.as_str(),
        );
        off_runtime(|| self.pg.insert_batch(keys, &record, &items, limit)).map_err(no_string)
    }

    fn get(&self, id: &str) -> anyhow::Result<Option<Batch>> {
        off_runtime(|| self.pg.batch(id))
            .map_err(no_string)?
            .map(read)
            .transpose()
    }

    fn results(&self, id: &str) -> anyhow::Result<Vec<BatchResult>> {
        off_runtime(|| self.pg.batch_results(id))
            .map_err(no_string)?
            .into_iter()
            .map(|v| serde_json::from_value(v).context("a stored batch result is unreadable"))
            .collect()
    }

    fn cancel(&self, id: &str) -> anyhow::Result<Option<Batch>> {
        let cancel = |record| {
            let (record, state, ()) = apply(record, cancel_active);
            (record, state)
        };
        off_runtime(|| self.pg.update_batch(id, cancel))
            .map_err(no_string)?
            .map(read)
            .transpose()
    }

    fn claim(&self) -> anyhow::Result<Option<Claim>> {
        let Some(claim) =
            off_runtime(|| self.pg.claim_batch_request(self.lease)).map_err(no_string)?
        else {
            return Ok(None);
        };
        let batch = read(claim.record)?;
        if batch.state == BatchState::Queued {
            let start = |record| {
                let (record, state, ()) = apply(record, |b| {
                    if b.state == BatchState::Queued {
                        b.state = BatchState::Running;
                    }
                });
                (record, state)
            };
            off_runtime(|| self.pg.update_batch(&batch.id, start)).map_err(no_string)?;
        }
        Ok(Some(Claim {
            batch: Arc::new(batch),
            n: u32::try_from(claim.n)?,
            item: serde_json::from_value(claim.item).context("a stored batch request")?,
        }))
    }

    fn record(&self, id: &str, n: u32, result: &BatchResult) -> anyhow::Result<(Batch, bool)> {
        // The cost is not part of a result line; it is counted into the batch here.
        let line = serde_json::to_value(result)?;
        let n = i32::try_from(n)?;
        let counted = |record| apply(record, |b| count(b, result));
        let (record, finished) =
            off_runtime(|| self.pg.record_batch_result((id, n), &line, counted))
                .map_err(no_string)?;
        Ok((read(record)?, finished.unwrap_or(false)))
    }
}
