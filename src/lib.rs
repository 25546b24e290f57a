//! cairn: a self-hosted retrieval-augmented question-answering server.
//!
//! The root package glues the crates together: configuration, the provider layer, the answer
//! pipeline, and the HTTP server. Indexing lives in `cairn-index`, ingestion in `cairn-ingest`.

pub mod answer;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod config;
pub mod context;
pub mod embedder;
pub mod engine;
pub mod eval;
pub mod gate;
pub mod jobs;
pub mod loadgen;
pub mod metrics;
pub mod openai_compat;
pub mod otlp;
pub mod privacy;
pub mod progress;
pub mod prompt;
pub mod providers;
pub mod query_embed;
pub mod rerank;
pub mod server;
pub mod trace;
