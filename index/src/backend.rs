//! The index as an interface: what searches and the ingest pipeline need from any index
//! backend, so the embedded [`Index`] (the default) and a server-backed one (the `cairn-pg`
//! crate) are interchangeable. The input rules every backend applies the same way live in the
//! lower `input` module, so the embedded index can use them without importing this one.
//!
//! This module only declares behaviour; it performs no I/O itself and pulls no network or async
//! dependency into this crate.

use crate::index::{Health, Index, IndexStats, Prepared, Staged, Writer};
use crate::types::{ChunkInput, ChunkRecord, DocumentRecord, EmbedderInfo, Hit, SearchRequest};
use crate::{IndexError, Result};

/// A searchable, writable index. Object safe: callers hold `Arc<dyn IndexBackend>`.
///
/// Every implementation must keep the contract the shared behaviour tests check: a deleted or
/// replaced document is never returned again by any retriever; filters and deny-by-default
/// access groups apply inside each retriever; hits carry the same [`crate::ScoreBreakdown`]
/// (both rankings fused with [`crate::fuse`]).
pub trait IndexBackend: Send + Sync {
    /// A short name for logs and status pages: `embedded`, `postgres`.
    fn kind(&self) -> &'static str;
    /// The embedder whose vectors this index holds.
    fn embedder(&self) -> &EmbedderInfo;
    /// Hybrid (or single-retriever) search with filters applied inside each retriever.
    fn search(&self, req: &SearchRequest) -> Result<Vec<Hit>>;
    /// The stored document, if indexed.
    fn document(&self, doc_id: &str) -> Result<Option<DocumentRecord>>;
    /// Content hash of an indexed document (for incremental ingest).
    fn content_hash(&self, doc_id: &str) -> Result<Option<String>>;
    /// Ids of the indexed documents of `source`.
    fn document_ids(&self, source: &str) -> Result<Vec<String>>;
    /// Chunks of a document in order.
    fn chunks_of(&self, doc_id: &str) -> Result<Vec<ChunkRecord>>;
    /// Counts for status pages and metrics.
    fn stats(&self) -> Result<IndexStats>;
    /// The last committed generation.
    fn generation(&self) -> Result<u64>;
    /// A writer that stages changes and publishes them atomically on commit. Backends allow
    /// one writer at a time; this may block until another writer is done.
    fn writer(&self) -> Result<Box<dyn IndexWriter + '_>>;
    /// Whether writes are making progress (for a readiness probe): the embedded index reports
    /// a store write stalled past `IndexOptions::stall`; backends without such a watchdog are
    /// always healthy.
    fn health(&self) -> Health {
        Health::Healthy
    }
}

/// Stages upserts and deletes; [`IndexWriter::commit`] publishes them as one new generation.
/// Dropping a writer without committing discards them.
pub trait IndexWriter {
    /// Stages a document and its chunks, replacing any previous version; rejects invalid input
    /// (see [`crate::validate_upsert`]) without staging anything.
    fn upsert(&mut self, doc: DocumentRecord, chunks: Vec<ChunkInput>) -> Result<()>;
    /// Stages the removal of a document.
    fn delete(&mut self, doc_id: &str);
    /// Staged documents (upserts plus deletes).
    fn pending(&self) -> usize;
    /// Publishes the staged changes and returns the new generation number; with nothing staged
    /// it returns the current one. On error nothing is published.
    fn commit(self: Box<Self>) -> Result<u64>;
    /// Writes the staged changes as a generation that searches do not see until it is
    /// published, so it can be evaluated first (the reindex quality gate). `Ok(None)` when
    /// nothing is staged. Backends that cannot hold a generation back return an error.
    fn prepare<'w>(self: Box<Self>) -> Result<Option<Box<dyn PreparedGeneration + 'w>>>
    where
        Self: 'w,
    {
        Err(IndexError::Backend {
            backend: "index",
            message: "this index backend cannot hold a generation back for evaluation; \
                      remove [quality_gate] file or use the embedded backend"
                .into(),
        })
    }
}

/// A written generation that is not serving yet (see [`IndexWriter::prepare`]). Dropping it
/// discards it.
pub trait PreparedGeneration {
    /// The number it gets when published.
    fn generation(&self) -> u64;
    /// Searches it exactly as the index will once it is published.
    fn search(&self, req: &SearchRequest) -> Result<Vec<Hit>>;
    /// Switches it in; returns its number.
    fn publish(self: Box<Self>) -> Result<u64>;
    /// Drops it; the serving generation stays.
    fn discard(self: Box<Self>) -> Result<()>;
}

impl IndexBackend for Index {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn embedder(&self) -> &EmbedderInfo {
        &self.options().embedder
    }

    fn search(&self, req: &SearchRequest) -> Result<Vec<Hit>> {
        Index::search(self, req)
    }

    fn document(&self, doc_id: &str) -> Result<Option<DocumentRecord>> {
        Index::document(self, doc_id)
    }

    fn content_hash(&self, doc_id: &str) -> Result<Option<String>> {
        Index::content_hash(self, doc_id)
    }

    fn document_ids(&self, source: &str) -> Result<Vec<String>> {
        Index::document_ids(self, source)
    }

    fn chunks_of(&self, doc_id: &str) -> Result<Vec<ChunkRecord>> {
        Index::chunks_of(self, doc_id)
    }

    fn stats(&self) -> Result<IndexStats> {
        Ok(Index::stats(self))
    }

    fn generation(&self) -> Result<u64> {
        Ok(Index::generation(self))
    }

    fn writer(&self) -> Result<Box<dyn IndexWriter + '_>> {
        Ok(Box::new(Index::writer(self)))
    }

    fn health(&self) -> Health {
        Index::health(self)
    }
}

impl IndexWriter for Writer<'_> {
    fn upsert(&mut self, doc: DocumentRecord, chunks: Vec<ChunkInput>) -> Result<()> {
        Writer::upsert(self, doc, chunks)
    }

    fn delete(&mut self, doc_id: &str) {
        Writer::delete(self, doc_id)
    }

    fn pending(&self) -> usize {
        Writer::pending(self)
    }

    fn commit(self: Box<Self>) -> Result<u64> {
        Writer::commit(*self)
    }

    fn prepare<'w>(self: Box<Self>) -> Result<Option<Box<dyn PreparedGeneration + 'w>>>
    where
        Self: 'w,
    {
        Ok(match Writer::prepare(*self)? {
            Staged::Nothing(_) => None,
            Staged::Prepared(p) => Some(Box::new(p)),
        })
    }
}

impl PreparedGeneration for Prepared<'_> {
    fn generation(&self) -> u64 {
        Prepared::generation(self)
    }

    fn search(&self, req: &SearchRequest) -> Result<Vec<Hit>> {
        Prepared::search(self, req)
    }

    fn publish(self: Box<Self>) -> Result<u64> {
        Prepared::publish(*self)
    }

    fn discard(self: Box<Self>) -> Result<()> {
        Prepared::discard(*self)
    }
}
