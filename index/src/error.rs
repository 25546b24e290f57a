//! The index's error type: every failure a caller can act on, with the file or value involved.

use std::path::PathBuf;

/// Errors raised by the index. Messages say what happened, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(
        "index at {path} was built with embedder {found} but {expected} is configured; \
         run `cairn ingest --full` to rebuild it with the configured embedder"
    )]
    EmbedderMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "index file {path} is corrupt or unreadable ({reason}); delete the data directory's `index` folder and run `cairn ingest` to rebuild"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("vector for {chunk} has dimension {got}, the index expects {expected}")]
    WrongDimension {
        chunk: String,
        got: usize,
        expected: usize,
    },
    #[error("vector for {chunk} contains NaN, infinite or all-zero values")]
    InvalidVector { chunk: String },
    #[error("chunk {chunk} has empty text")]
    EmptyText { chunk: String },
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    #[error("storage error in {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("full-text index error in {path}: {source}")]
    Bm25 {
        path: PathBuf,
        #[source]
        source: tantivy::TantivyError,
    },
    /// A failure of a server-backed index (connection, query, schema); the message names the
    /// server object and says what to do.
    #[error("{backend} index: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
