//! cairn-index: the in-process hybrid index.
//!
//! Owns documents and chunks (redb), vectors (hnsw_rs plus an exact scan), words (tantivy BM25),
//! filters, access control at search time, and score fusion. It is synchronous (rayon inside)
//! and never performs network I/O: it must not depend on tokio, axum or reqwest.
//!
//! The single entry point is [`Index`]: readers call [`Index::search`] on the current committed
//! generation while one [`Writer`] stages upserts and deletes and publishes a new generation
//! atomically on [`Writer::commit`].

mod backend;
mod bm25;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod fusion;
mod index;
mod input;
mod live;
pub mod soak;
mod store;
mod threads;
mod types;
mod vectors;

pub use backend::{IndexBackend, IndexWriter, PreparedGeneration};
pub use bm25::{body_text, html_escape};
pub use error::IndexError;
pub use fusion::{Fusion, fuse, single};
pub use index::{Health, Index, IndexOptions, IndexStats, Prepared, Staged, Writer};
pub use input::{validate_query, validate_upsert};
pub use threads::ThreadStore;
pub use types::{
    ChunkInput, ChunkRecord, DocumentRecord, EmbedderInfo, Filter, Hit, ScoreBreakdown, SearchMode,
    SearchRequest, TimeRange, chunk_id_string,
};
pub use vectors::VectorOptions;

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, IndexError>;
