//! Errors of ingestion: a connector that cannot list, an embedder that fails, an index error.

/// Errors that stop a source's run (per-document problems are report lines, not errors).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("source `{source_name}`: {message}")]
    Connector {
        source_name: String,
        message: String,
    },
    #[error("embedder {embedder}: {message}")]
    Embed { embedder: String, message: String },
    #[error(transparent)]
    Index(#[from] cairn_index::IndexError),
    #[error("ingest was cancelled")]
    Cancelled,
}
