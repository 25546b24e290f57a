//! cairn-pg: the PostgreSQL index backend, for many stateless cairn replicas over one corpus.
//!
//! Documents and chunks live in tables of one schema; vectors in a pgvector column with an HNSW
//! index (inner product on unit vectors); words in a `tsvector` column with a GIN index
//! (English configuration). Filters and deny-by-default access groups are SQL clauses inside
//! both retrievers; fusion happens in cairn with [`cairn_index::fuse`], so hits carry the same
//! score breakdown as the embedded index. [`PgIndex`] implements
//! [`cairn_index::IndexBackend`]. Also here: the pool, the versioned schema migrations, error
//! wording, and what replicas share besides the index (source state, source claims, admin
//! jobs, model spend, conversation threads, batches).
//!
//! The API is synchronous, like the index API and the ingest pipeline: async callers run it on
//! blocking threads, as they do the embedded index.

mod batches;
mod connect;
mod index;
mod jobs;
mod migrate;
mod shared;
mod spend;
mod threads;

pub use batches::BatchClaim;
pub use connect::{PgOptions, off_runtime, redact_url};
pub use index::PgIndex;
pub use jobs::JobClaim;
pub use migrate::SCHEMA_VERSION;
pub use shared::SourceClaim;

/// The backend name used in errors and status pages.
pub const BACKEND: &str = "postgres";
