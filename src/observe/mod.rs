//! What an operator sees of a running cairn: request traces and their OTLP export, Prometheus
//! metrics, the audit log, and callers' feedback on answers.
//!
//! Must not: delay or fail a request (exports are queued, metrics are counters), or record
//! question and answer text unless configured.

pub mod audit;
pub mod feedback;
pub mod metrics;
pub mod otlp;
pub mod trace;
pub mod traces;
