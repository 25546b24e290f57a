//! Conversation threads shared by replicas: one row per thread in the `threads` table, so a
//! thread started through any replica continues through any other. The record is opaque JSON
//! here (cairn owns its shape and decides when a thread has expired); the columns are what
//! ownership and purging read.

use cairn_index::Result;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::connect::{self, pg_error};
use crate::index::PgIndex;

impl PgIndex {
    /// The record of thread `id`, if stored.
    pub fn thread(&self, id: &str) -> Result<Option<Value>> {
        let row = connect::get(self.pool())?
            .query_opt("SELECT record FROM threads WHERE id = $1", &[&id])
            .map_err(|e| pg_error("reading a thread", &e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Stores `record` as thread `id` of `owner`, last active at `active_at`, replacing it.
    pub fn put_thread(
        &self,
        id: &str,
        owner: &str,
        active_at: DateTime<Utc>,
        record: &Value,
    ) -> Result<()> {
        connect::get(self.pool())?
            .execute(
                "INSERT INTO threads (id, owner, active_at, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner,
                     active_at = EXCLUDED.active_at, record = EXCLUDED.record",
                &[&id, &owner, &active_at, record],
            )
            .map_err(|e| pg_error("saving a thread", &e))?;
        Ok(())
    }

    /// Erases thread `id`; whether it was stored.
    pub fn remove_thread(&self, id: &str) -> Result<bool> {
        let n = connect::get(self.pool())?
            .execute("DELETE FROM threads WHERE id = $1", &[&id])
            .map_err(|e| pg_error("erasing a thread", &e))?;
        Ok(n > 0)
    }

    /// Erases every thread last active before `before`; how many.
    pub fn purge_threads(&self, before: DateTime<Utc>) -> Result<u64> {
        connect::get(self.pool())?
            .execute("DELETE FROM threads WHERE active_at < $1", &[&before])
            .map_err(|e| pg_error("purging expired threads", &e))
    }
}
