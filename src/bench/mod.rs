//! Benchmarks run by `cairn bench`: ingest throughput, the loopback load generator for
//! /search and /ask, many concurrent slow streams, and the index soak.
//!
//! Must not: be used by the server; everything here drives it from outside.

pub mod ingest;
pub mod loadgen;
pub mod soak;
pub mod streams;
