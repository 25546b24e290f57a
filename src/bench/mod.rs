//! Benchmarks run by `cairn bench`: ingest throughput, the loopback load generator for
//! /search and /ask, many concurrent slow streams, interactive latency beside a running batch,
//! the index soak, and the cost of an agent step.
//!
//! Must not: be used by the server; everything here drives it from outside.

pub mod agent;
pub mod batches;
pub mod ingest;
pub mod loadgen;
pub mod soak;
pub mod streams;

use std::sync::Arc;

use crate::config::Config;
use crate::engine::{Engine, OpenOptions};

/// Opens `config` to a load of anonymous requests: the `ask` scope, no rate limit, and the
/// answer cache off (every request runs the pipeline).
fn open_to_anonymous_load(config: &mut Config) {
    config.cache.enabled = false;
    config.auth.anonymous_rate_per_minute = u32::MAX / 2;
    if !config
        .auth
        .anonymous_scopes
        .contains(&crate::http::auth::Scope::Ask)
    {
        config
            .auth
            .anonymous_scopes
            .push(crate::http::auth::Scope::Ask);
    }
}

/// Opens the engine; an empty index ingests the configured sources first.
fn open_ingested(config: Config, open: &OpenOptions) -> anyhow::Result<Arc<Engine>> {
    let engine = Arc::new(Engine::open_with(config, open)?);
    engine.ingest_if_empty()?;
    Ok(engine)
}
