//! Benchmarks run by `cairn bench`: ingest throughput, the loopback load generator for
//! /search and /ask, and many concurrent slow streams.
//!
//! Must not: be used by the server; everything here drives it from outside.

pub mod ingest;
pub mod loadgen;
pub mod streams;
