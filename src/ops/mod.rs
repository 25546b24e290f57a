//! Background work of a running server: admin reindex jobs, the quality gate a reindex
//! passes before its generation is switched in, and batches of questions answered in the
//! background.
//!
//! Must not: hold a request open (jobs run on their own thread and report through their
//! record).

pub mod batches;
pub mod gate;
pub mod jobs;
