//! cairn: a self-hosted retrieval-augmented question-answering server.
//!
//! The root package glues the crates together; its folders are its layers (ARCHITECTURE.md
//! draws which may use which): `http` (the surfaces) → `answer` (the pipeline) and `ops`
//! (background work) → `engine` (what a running cairn holds) → `retrieval`, `providers`,
//! `observe` and the answer's parts → `config`. `cli`, `eval` and `bench` drive the layers
//! from the command line. Indexing lives in `cairn-index`, ingestion in `cairn-ingest`.

pub mod agent;
pub mod answer;
pub mod bench;
pub mod cli;
pub mod config;
pub mod embedder;
pub mod engine;
pub mod eval;
pub mod http;
pub mod observe;
pub mod ops;
pub mod providers;
pub mod retrieval;
