//! Admin reindex jobs shared by replicas: one row per job in the `jobs` table, so a job
//! started through any replica is visible through all of them.
//!
//! A job is inserted `queued`; at most one job is queued or running at a time (a partial
//! unique index makes two concurrent inserts from different replicas safe). Replicas claim a
//! queued job with `SELECT … FOR UPDATE SKIP LOCKED`, so exactly one of them runs it. The
//! claimer also takes a session-level advisory lock named after the job, inside the claiming
//! transaction, and holds it on one connection for the length of the run: the lock is the
//! liveness signal. When the replica dies its connection closes, PostgreSQL releases the lock,
//! and any replica then finds a `running` job whose lock it can take and marks it
//! `interrupted` (ingest being incremental, starting it again resumes it). `heartbeat` is the
//! time the owner last wrote the row, for operators; no decision depends on clocks.
//!
//! The job itself is opaque JSON here (the admin API's shape, owned by the caller); this module
//! only reads and writes the columns claiming and listing need.

use std::sync::Mutex;

use cairn_index::Result;
use serde_json::Value;

use crate::connect::{self, Conn, pg_error};
use crate::index::PgIndex;

/// The run of one claimed job: holds the job's lock (released on drop, or when the replica
/// dies) and writes the job's row on the connection that holds it.
pub struct JobClaim {
    conn: Mutex<Conn>,
    key: String,
    id: String,
    owner: String,
}

impl std::fmt::Debug for JobClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobClaim")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl JobClaim {
    /// The claimed job's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Writes the job's state and JSON and refreshes the heartbeat. `Ok(false)` when the row
    /// is no longer this replica's running job (another replica marked it interrupted after
    /// this one lost its connection): the caller should stop reporting.
    pub fn update(&self, state: &str, job: &Value) -> Result<bool> {
        let mut conn = match self.conn.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let n = conn
            .execute(
                "UPDATE jobs SET state = $3, job = $4, heartbeat = now(), updated_at = now()
                 WHERE id = $1 AND owner = $2 AND state = 'running'",
                &[&self.id, &self.owner, &state, job],
            )
            .map_err(|e| pg_error("updating a job", &e))?;
        Ok(n == 1)
    }
}

impl Drop for JobClaim {
    fn drop(&mut self) {
        let conn = match self.conn.get_mut() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        connect::advisory_unlock(&mut **conn, &self.key);
    }
}

impl PgIndex {
    fn job_key(&self, id: &str) -> String {
        format!("cairn-job:{}:{id}", self.schema())
    }

    /// Inserts a queued job. `Ok(Err(id))` when another job is queued or running (its id).
    pub fn insert_job(
        &self,
        id: &str,
        source: Option<&str>,
        job: &Value,
    ) -> Result<std::result::Result<(), String>> {
        let mut conn = connect::get(self.pool())?;
        // The active job may finish between a refused insert and the look-up; try again then.
        for _ in 0..3 {
            let inserted = conn
                .execute(
                    "INSERT INTO jobs (id, source, state, job) VALUES ($1, $2, 'queued', $3)
                     ON CONFLICT DO NOTHING",
                    &[&id, &source, job],
                )
                .map_err(|e| pg_error("queueing a job", &e))?;
            if inserted == 1 {
                return Ok(Ok(()));
            }
            let active = conn
                .query_opt(
                    "SELECT id FROM jobs WHERE state IN ('queued', 'running')",
                    &[],
                )
                .map_err(|e| pg_error("reading the active job", &e))?;
            if let Some(row) = active {
                return Ok(Err(row.get(0)));
            }
        }
        Err(connect::backend_error(
            "could not queue the job: jobs kept starting and finishing; try again".into(),
        ))
    }

    /// Claims the oldest queued job for `owner` and marks it running with the JSON `start`
    /// makes of it. `None` when no job is queued (or all are being claimed by others).
    pub fn claim_job(
        &self,
        owner: &str,
        start: impl FnOnce(Value) -> Value,
    ) -> Result<Option<(JobClaim, Value)>> {
        let mut conn = connect::get(self.pool())?;
        let mut tx = conn
            .transaction()
            .map_err(|e| pg_error("claiming a job", &e))?;
        let row = tx
            .query_opt(
                "SELECT id, job FROM jobs WHERE state = 'queued'
                 ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[],
            )
            .map_err(|e| pg_error("claiming a job", &e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: String = row.get(0);
        let key = self.job_key(&id);
        // Session-level: it outlives this transaction and is held until the claim drops.
        if !connect::try_advisory_lock(&mut tx, &key, "locking a job")? {
            return Ok(None);
        }
        let job = start(row.get(1));
        tx.execute(
            "UPDATE jobs SET state = 'running', owner = $2, job = $3, heartbeat = now(),
                 updated_at = now()
             WHERE id = $1",
            &[&id, &owner, &job],
        )
        .map_err(|e| pg_error("claiming a job", &e))?;
        let committed = tx.commit();
        let claim = JobClaim {
            conn: Mutex::new(conn),
            key,
            id,
            owner: owner.to_string(),
        };
        // On failure the claim still drops here, releasing the lock.
        committed.map_err(|e| pg_error("claiming a job", &e))?;
        Ok(Some((claim, job)))
    }

    /// Marks `running` jobs whose owner is gone (their lock is free) `interrupted`, with the
    /// JSON `interrupt` makes of each. Returns their ids.
    pub fn interrupt_orphaned_jobs(
        &self,
        interrupt: impl Fn(Value) -> Value,
    ) -> Result<Vec<String>> {
        let mut conn = connect::get(self.pool())?;
        let running: Vec<String> = conn
            .query("SELECT id FROM jobs WHERE state = 'running'", &[])
            .map_err(|e| pg_error("reading running jobs", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut interrupted = Vec::new();
        for id in running {
            let key = self.job_key(&id);
            if !connect::try_advisory_lock(&mut *conn, &key, "checking a job's owner")? {
                continue;
            }
            let marked = mark_interrupted(&mut conn, &id, &interrupt);
            connect::advisory_unlock(&mut *conn, &key);
            if marked? {
                interrupted.push(id);
            }
        }
        Ok(interrupted)
    }

    /// A job's JSON.
    pub fn job(&self, id: &str) -> Result<Option<Value>> {
        let row = connect::get(self.pool())?
            .query_opt("SELECT job FROM jobs WHERE id = $1", &[&id])
            .map_err(|e| pg_error("reading a job", &e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The most recent jobs' JSON, newest first.
    pub fn jobs(&self, limit: usize) -> Result<Vec<Value>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = connect::get(self.pool())?
            .query(
                "SELECT job FROM jobs ORDER BY created_at DESC, id LIMIT $1",
                &[&limit],
            )
            .map_err(|e| pg_error("listing jobs", &e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The queued or running job's JSON, if any.
    pub fn active_job(&self) -> Result<Option<Value>> {
        let row = connect::get(self.pool())?
            .query_opt(
                "SELECT job FROM jobs WHERE state IN ('queued', 'running')",
                &[],
            )
            .map_err(|e| pg_error("reading the active job", &e))?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// Marks one job interrupted if it is still running (checked under a row lock).
fn mark_interrupted(
    conn: &mut Conn,
    id: &str,
    interrupt: &impl Fn(Value) -> Value,
) -> Result<bool> {
    let mut tx = conn
        .transaction()
        .map_err(|e| pg_error("interrupting a job", &e))?;
    let row = tx
        .query_opt(
            "SELECT job FROM jobs WHERE id = $1 AND state = 'running' FOR UPDATE",
            &[&id],
        )
        .map_err(|e| pg_error("interrupting a job", &e))?;
    let Some(row) = row else {
        return Ok(false);
    };
    let job = interrupt(row.get(0));
    tx.execute(
        "UPDATE jobs SET state = 'interrupted', job = $2, updated_at = now() WHERE id = $1",
        &[&id, &job],
    )
    .map_err(|e| pg_error("interrupting a job", &e))?;
    tx.commit()
        .map_err(|e| pg_error("interrupting a job", &e))?;
    Ok(true)
}
