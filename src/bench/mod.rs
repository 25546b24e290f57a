//! Benchmarks run by `cairn bench`: ingest throughput, the loopback load generator for
//! /search and /ask, many concurrent slow streams, the index soak, and the cost of an agent
//! step.
//!
//! Must not: be used by the server; everything here drives it from outside.

pub mod agent;
pub mod ingest;
pub mod loadgen;
pub mod soak;
pub mod streams;
