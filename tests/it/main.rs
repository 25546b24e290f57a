//! cairn's end-to-end tests, linked into one binary (faster to build than one per file).

mod agent;
mod agent_tools;
mod answer;
mod batches;
mod browser;
mod cli;
mod condense;
mod contract;
mod crash;
mod e2e;
mod faults;
mod feedback;
mod gate;
mod gateway;
mod health;
mod hostile;
mod llama;
mod load;
mod mcp;
mod multihop;
mod otlp;
mod privacy;
mod promises;
mod replica_batches;
mod replicas;
mod schedule;
mod server;
mod support;
mod support_bot;
mod threads;
#[path = "../support/mod.rs"]
mod vendors;
mod webhooks;
