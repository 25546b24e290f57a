//! Background work of a running server: admin reindex jobs, the quality gate a reindex
//! passes before its generation is switched in, signed webhooks of events, scheduled
//! source syncs, and batches of questions answered in the background.
//!
//! Must not: hold a request open (jobs run on their own thread and report through their
//! record; webhooks are delivered by their own task from a persisted queue).

pub mod batches;
pub mod gate;
pub mod jobs;
pub mod schedule;
pub mod webhooks;
