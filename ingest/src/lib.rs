//! cairn-ingest: turns sources into indexed chunks and loses nothing on the way.
//!
//! Owns the [`Connector`] trait and its implementations (files, CRM exports, knowledge-base
//! APIs), text extraction, normalisation, chunking, the [`Embedder`] trait with the local
//! all-MiniLM-L6-v2 model and its acquisition ([`models`]), the [`rerank::Reranker`] slot, and the incremental
//! [`pipeline`] that writes into `cairn-index`. Every document a connector reports ends as
//! indexed, unchanged, skipped (with a reason) or failed (with the error) in a [`pipeline::Report`].
//! It never serves HTTP.

pub mod chunking;
pub mod connectors;
pub mod embed;
pub mod embed_cache;
pub mod error;
pub mod extract;
pub mod models;
pub mod normalise;
pub mod pipeline;
pub mod rerank;
pub mod source;

pub use chunking::{Chunk, Chunker, ChunkerOptions};
pub use connectors::{Connector, Item, SyncState, SyncSummary};
pub use embed::{Embedder, HashEmbedder, MiniLmEmbedder};
pub use error::IngestError;
pub use source::{Body, SourceDocument};
