//! Background work of a running server: admin reindex jobs and the quality gate a reindex
//! passes before its generation is switched in.
//!
//! Must not: hold a request open (jobs run on their own thread and report through their
//! record).

pub mod gate;
pub mod jobs;
