//! What replicas share besides the index: each source's sync state (watermark) and last
//! report, and a per-source claim so two replicas never ingest the same source at once.
//!
//! A claim is a session-level advisory lock held on one pooled connection for the length of
//! the run: when the replica dies its connection closes and PostgreSQL releases the lock, so
//! the source can be run (and, ingest being incremental, resumed) from any other replica.

use cairn_index::Result;

use crate::connect::{self, Conn, pg_error};
use crate::index::PgIndex;

/// Held while a replica ingests one source; released on drop (or when the replica dies).
pub struct SourceClaim {
    conn: Conn,
    key: String,
}

impl Drop for SourceClaim {
    fn drop(&mut self) {
        connect::advisory_unlock(&mut *self.conn, &self.key);
    }
}

impl PgIndex {
    /// Claims `source` for ingest; `None` when another replica (or another run here) holds it.
    pub fn claim_source(&self, source: &str) -> Result<Option<SourceClaim>> {
        let mut conn = connect::get(self.pool())?;
        let key = format!("cairn-source:{}:{source}", self.schema());
        let got = connect::try_advisory_lock(&mut *conn, &key, "claiming a source")?;
        Ok(got.then_some(SourceClaim { conn, key }))
    }

    /// A source's stored sync state and last report (JSON), if it ever ran.
    pub fn source_state(
        &self,
        source: &str,
    ) -> Result<Option<(serde_json::Value, Option<serde_json::Value>)>> {
        let row = connect::get(self.pool())?
            .query_opt(
                "SELECT state, report FROM source_state WHERE name = $1",
                &[&source],
            )
            .map_err(|e| pg_error("reading a source's state", &e))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Stores a source's sync state and last report after a run.
    pub fn put_source_state(
        &self,
        source: &str,
        state: &serde_json::Value,
        report: &serde_json::Value,
    ) -> Result<()> {
        connect::get(self.pool())?
            .execute(
                "INSERT INTO source_state (name, state, report) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state,
                     report = EXCLUDED.report, updated_at = now()",
                &[&source, state, report],
            )
            .map_err(|e| pg_error("writing a source's state", &e))?;
        Ok(())
    }
}
