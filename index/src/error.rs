//! The index's error type: every failure a caller can act on, with the file or value involved.

use std::path::{Path, PathBuf};

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
    /// The document store (redb) failed: permissions, a lock, a full disk (the message then
    /// contains `No space left on device`).
    #[error("storage error in {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A store write made no progress for the configured stall time (`IndexOptions::stall`).
    /// The write may still finish later; [`crate::Index::health`] says when it has, and the
    /// index reconciles itself with the store before the next commit.
    #[error(
        "the index store made no progress for {secs} s while trying to {operation}; the write was \
         given up (it may still finish); check the disk holding the data directory"
    )]
    Stalled { operation: &'static str, secs: u64 },
    /// The index directory was written by an older cairn whose on-disk format this one cannot
    /// read (`found` says which), e.g. the sled store of format 1.
    #[error(
        "index at {path} uses an old on-disk format ({found}); this cairn reads format \
         {expected}: `cairn ingest --full` rebuilds it from the sources"
    )]
    OldFormat {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    /// `hint` is empty, or says the file system is nearly full (tantivy reports a write that
    /// failed for lack of space as a killed writer thread, without the `ENOSPC`).
    #[error("full-text index error in {path}: {source}{hint}")]
    Bm25 {
        path: PathBuf,
        #[source]
        source: tantivy::TantivyError,
        hint: String,
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

/// Below this much free space on the file system holding the BM25 files, a BM25 error says
/// the disk is probably full: tantivy needs room for a whole new segment before it commits.
const LOW_SPACE_BYTES: u64 = 64 << 20;

impl IndexError {
    /// A stable, machine-readable name for the error (for API responses and metrics).
    pub fn code(&self) -> &'static str {
        match self {
            IndexError::EmbedderMismatch { .. } => "embedder_mismatch",
            IndexError::Corrupt { .. } => "index_corrupt",
            IndexError::WrongDimension { .. } => "wrong_dimension",
            IndexError::InvalidVector { .. } => "invalid_vector",
            IndexError::EmptyText { .. } => "empty_text",
            IndexError::InvalidDocument(_) => "invalid_document",
            IndexError::Store { .. } => "store_error",
            IndexError::Stalled { .. } => "store_stalled",
            IndexError::OldFormat { .. } => "index_old_format",
            IndexError::Bm25 { .. } => "bm25_error",
            IndexError::Backend { .. } => "backend_error",
            IndexError::Io { .. } => "io_error",
        }
    }

    /// A BM25 (tantivy) error at `path`, with a hint when the file system holding it is
    /// nearly full, the usual cause of a writer thread that died mid-commit.
    pub fn bm25(path: &Path, source: tantivy::TantivyError) -> IndexError {
        let hint = match fs4::available_space(path) {
            Ok(free) if free < LOW_SPACE_BYTES => format!(
                " (only {} KiB free on the file system holding {}: the disk is probably \
                 full; free space, then rerun the ingest)",
                free >> 10,
                path.display()
            ),
            _ => String::new(),
        };
        IndexError::Bm25 {
            path: path.to_path_buf(),
            source,
            hint,
        }
    }
}
