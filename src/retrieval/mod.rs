//! Retrieval: the question's embedding (on its own threads, batched), the reranker, and the
//! retrieve-then-rerank step an answer starts with.
//!
//! Must not: call a provider except through the gateway (the remote reranker), or add a hit
//! the index did not return for the caller.

pub mod query_embed;
pub mod rerank;
