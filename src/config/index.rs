//! `[index]` and `[index.postgres]`: which index backend serves and how it is built. The types
//! configure the member crates (`cairn-index`, `cairn-pg`), which know nothing of config
//! files, so their section lives here.

use serde::{Deserialize, Serialize};

use cairn_index::{Fusion, VectorOptions};

use crate::config::section::{Check, ConfigError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIndex {
    /// Where the index lives: in-process (the default) or in PostgreSQL.
    pub backend: BackendKind,
    pub candidates: usize,
    /// Not serialised into the layering base: fusion methods have different keys, and merging
    /// a file's `method = "rrf"` table over the default convex one would mix the two. A missing
    /// table takes the struct default.
    #[serde(skip_serializing)]
    pub fusion: Fusion,
    pub vectors: VectorOptions,
    pub postgres: RawPostgres,
    /// Seconds a store write may go without progress before the ingest or job fails with
    /// `store_stalled` and `/readyz` answers 503 (embedded backend).
    pub stall_secs: u64,
}

impl Default for RawIndex {
    fn default() -> Self {
        RawIndex {
            backend: BackendKind::Embedded,
            candidates: 100,
            fusion: Fusion::default(),
            vectors: VectorOptions::default(),
            postgres: RawPostgres::default(),
            stall_secs: 120,
        }
    }
}

/// `[index] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// redb + tantivy + HNSW in the data directory: one process, fastest.
    Embedded,
    /// PostgreSQL with pgvector, shared by many cairn processes.
    Postgres,
}

/// `[index.postgres]`: used when `backend = "postgres"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPostgres {
    /// Connection URL as a reference, `env:VARIABLE` (it usually holds a password).
    pub url: String,
    /// Schema holding cairn's tables.
    pub schema: String,
    /// Connections per cairn process.
    pub pool_size: u32,
    pub connect_timeout_secs: u64,
    /// HNSW build parameters, used when the schema is created.
    pub hnsw_m: u32,
    pub hnsw_ef_construction: u32,
}

impl Default for RawPostgres {
    fn default() -> Self {
        RawPostgres {
            url: "env:CAIRN_PG_URL".into(),
            schema: "cairn".into(),
            pool_size: 8,
            connect_timeout_secs: 5,
            hnsw_m: 16,
            hnsw_ef_construction: 64,
        }
    }
}

impl RawIndex {
    /// Checks what the section holds on its own (the PostgreSQL settings are checked by
    /// [`RawIndex::postgres_options`]).
    pub fn validate(&self, cx: &Check) -> Result<(), ConfigError> {
        if self.stall_secs == 0 {
            return Err(cx.key_err(
                "index.stall_secs",
                "must be at least 1 (seconds a store write may go without progress)",
            ));
        }
        Ok(())
    }

    /// How long a store write may go without progress (`stall_secs`).
    pub fn stall(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.stall_secs)
    }

    /// The PostgreSQL connection settings with the URL resolved, when `backend = "postgres"`.
    pub fn postgres_options(&self, cx: &Check) -> Result<Option<cairn_pg::PgOptions>, ConfigError> {
        if self.backend == BackendKind::Embedded {
            return Ok(None);
        }
        let p = &self.postgres;
        let url = cx.reference(
            &p.url,
            "index.postgres.url",
            "export it with the server's connection URL, or set [index] backend = \"embedded\"",
        )?;
        // A running admin job holds two (its claim and its source's); writes need a third.
        if p.pool_size < 3 {
            return Err(cx.key_err(
                "index.postgres.pool_size",
                "must be at least 3 (a running job holds two connections)",
            ));
        }
        Ok(Some(cairn_pg::PgOptions {
            url,
            schema: p.schema.clone(),
            pool_size: p.pool_size,
            connect_timeout: std::time::Duration::from_secs(p.connect_timeout_secs.max(1)),
            hnsw_m: p.hnsw_m,
            hnsw_ef_construction: p.hnsw_ef_construction,
        }))
    }
}
