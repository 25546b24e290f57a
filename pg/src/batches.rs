//! Batches shared by replicas: one row per batch in `batches` and one per request in
//! `batch_requests`, so a batch submitted through any replica is shown, cancelled and run by
//! any of them.
//!
//! A replica claims the oldest open request of an active batch with `SELECT … FOR UPDATE SKIP
//! LOCKED` and stamps `claimed_at`: the lease. A request claimed longer ago than the lease the
//! caller passes may be claimed again, so a replica that died mid-request strands nothing.
//! Storing a result and counting it into its batch is ONE transaction that locks the batch row
//! first and sets the result only where none is stored, so a request is counted once even when
//! two replicas answered it on an expired lease, and the call that counts the last request is
//! the only one told so (the batch's end is reported once across replicas).
//!
//! The batch record and the requests are opaque JSON here (cairn owns their shapes and the
//! counting); this module reads and writes the columns claiming and listing need.

use std::time::Duration;

use cairn_index::Result;
use serde_json::Value;

use crate::connect::{self, pg_error};
use crate::index::PgIndex;

/// A request claimed by this replica: its batch's record at the claim, and the request.
#[derive(Debug, Clone)]
pub struct BatchClaim {
    pub batch_id: String,
    pub n: i32,
    pub item: Value,
    pub record: Value,
}

/// The states in which a batch still has work.
const ACTIVE: &str = "state IN ('queued', 'running')";

impl PgIndex {
    fn owner_key(&self, owner: &str) -> String {
        format!("cairn-batch-owner:{}:{owner}", self.schema())
    }

    /// Inserts a batch with its requests, in one transaction, unless `owner` already has
    /// `limit` active batches (`Ok(false)`). Submissions of one owner are serialised across
    /// replicas by a transaction advisory lock, so the limit cannot be raced past.
    pub fn insert_batch(
        &self,
        (id, owner, state): (&str, &str, &str),
        record: &Value,
        items: &[Value],
        limit: usize,
    ) -> Result<bool> {
        let mut conn = connect::get(self.pool())?;
        let mut tx = conn
            .transaction()
            .map_err(|e| pg_error("storing a batch", &e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&self.owner_key(owner)],
        )
        .map_err(|e| pg_error("storing a batch", &e))?;
        let active: i64 = tx
            .query_one(
                &format!("SELECT count(*) FROM batches WHERE owner = $1 AND {ACTIVE}"),
                &[&owner],
            )
            .map_err(|e| pg_error("counting a key's batches", &e))?
            .get(0);
        if usize::try_from(active).unwrap_or(usize::MAX) >= limit {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO batches (id, owner, state, record) VALUES ($1, $2, $3, $4)",
            &[&id, &owner, &state, record],
        )
        .map_err(|e| pg_error("storing a batch", &e))?;
        for (n, item) in (0i32..).zip(items) {
            tx.execute(
                "INSERT INTO batch_requests (batch_id, n, item) VALUES ($1, $2, $3)",
                &[&id, &n, item],
            )
            .map_err(|e| pg_error("storing a batch's requests", &e))?;
        }
        tx.commit().map_err(|e| pg_error("storing a batch", &e))?;
        Ok(true)
    }

    /// The record of batch `id`, if stored.
    pub fn batch(&self, id: &str) -> Result<Option<Value>> {
        let row = connect::get(self.pool())?
            .query_opt("SELECT record FROM batches WHERE id = $1", &[&id])
            .map_err(|e| pg_error("reading a batch", &e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The stored results of batch `id`, in request order.
    pub fn batch_results(&self, id: &str) -> Result<Vec<Value>> {
        let rows = connect::get(self.pool())?
            .query(
                "SELECT result FROM batch_requests WHERE batch_id = $1 AND result IS NOT NULL
                 ORDER BY n",
                &[&id],
            )
            .map_err(|e| pg_error("reading a batch's results", &e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Replaces batch `id`'s record and state with what `f` makes of the record, under the
    /// row's lock; the record as stored.
    pub fn update_batch(
        &self,
        id: &str,
        f: impl FnOnce(Value) -> (Value, String),
    ) -> Result<Option<Value>> {
        let mut conn = connect::get(self.pool())?;
        let mut tx = conn
            .transaction()
            .map_err(|e| pg_error("updating a batch", &e))?;
        let row = tx
            .query_opt(
                "SELECT record FROM batches WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .map_err(|e| pg_error("updating a batch", &e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (record, state) = f(row.get(0));
        tx.execute(
            "UPDATE batches SET record = $2, state = $3 WHERE id = $1",
            &[&id, &record, &state],
        )
        .map_err(|e| pg_error("updating a batch", &e))?;
        tx.commit().map_err(|e| pg_error("updating a batch", &e))?;
        Ok(Some(record))
    }

    /// Claims the next open request (no result, not claimed within `lease`) of the oldest
    /// active batch, and stamps its lease. `None` when there is none free.
    pub fn claim_batch_request(&self, lease: Duration) -> Result<Option<BatchClaim>> {
        let mut conn = connect::get(self.pool())?;
        let mut tx = conn
            .transaction()
            .map_err(|e| pg_error("claiming a batch request", &e))?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT r.batch_id, r.n, r.item, b.record
                     FROM batch_requests r JOIN batches b ON b.id = r.batch_id
                     WHERE b.{ACTIVE} AND r.result IS NULL
                       AND (r.claimed_at IS NULL
                            OR r.claimed_at < now() - make_interval(secs => $1))
                     ORDER BY b.created_at, b.id, r.n LIMIT 1
                     FOR UPDATE OF r SKIP LOCKED"
                ),
                &[&lease.as_secs_f64()],
            )
            .map_err(|e| pg_error("claiming a batch request", &e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let claim = BatchClaim {
            batch_id: row.get(0),
            n: row.get(1),
            item: row.get(2),
            record: row.get(3),
        };
        tx.execute(
            "UPDATE batch_requests SET claimed_at = now() WHERE batch_id = $1 AND n = $2",
            &[&claim.batch_id, &claim.n],
        )
        .map_err(|e| pg_error("claiming a batch request", &e))?;
        tx.commit()
            .map_err(|e| pg_error("claiming a batch request", &e))?;
        Ok(Some(claim))
    }

    /// Stores `result` as request `n` of batch `id` unless one is stored already, and in the
    /// same transaction replaces the batch's record and state with what `count` makes of the
    /// record. Returns the record as stored, and `count`'s verdict when this call stored the
    /// result (`None`: another replica had, and nothing changed).
    pub fn record_batch_result<T>(
        &self,
        (id, n): (&str, i32),
        result: &Value,
        count: impl FnOnce(Value) -> (Value, String, T),
    ) -> Result<(Value, Option<T>)> {
        let mut conn = connect::get(self.pool())?;
        let mut tx = conn
            .transaction()
            .map_err(|e| pg_error("storing a batch result", &e))?;
        // The batch row first: every writer of a batch locks it before its requests.
        let record: Value = tx
            .query_opt(
                "SELECT record FROM batches WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .map_err(|e| pg_error("storing a batch result", &e))?
            .ok_or_else(|| connect::backend_error(format!("batch {id} vanished while it ran")))?
            .get(0);
        let stored = tx
            .execute(
                "UPDATE batch_requests SET result = $3
                 WHERE batch_id = $1 AND n = $2 AND result IS NULL",
                &[&id, &n, result],
            )
            .map_err(|e| pg_error("storing a batch result", &e))?;
        if stored == 0 {
            return Ok((record, None));
        }
        let (record, state, verdict) = count(record);
        tx.execute(
            "UPDATE batches SET record = $2, state = $3 WHERE id = $1",
            &[&id, &record, &state],
        )
        .map_err(|e| pg_error("storing a batch result", &e))?;
        tx.commit()
            .map_err(|e| pg_error("storing a batch result", &e))?;
        Ok((record, Some(verdict)))
    }
}
