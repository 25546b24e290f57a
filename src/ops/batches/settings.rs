//! `[batches]`: how many batch requests run at once, when they give way to interactive
//! answers, and the limits of one batch and of one key.
//!
//! Must not: import the composed `Config` or the runner (the config loader imports this).

use serde::{Deserialize, Serialize};

use crate::config::section::{Check, ConfigError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBatches {
    /// Batch requests answered at once (by this process).
    pub concurrency: usize,
    /// A batch request starts only while at most this many interactive answers (`/ask`,
    /// `/v1/chat/completions`, MCP `ask`) are in flight; otherwise it waits for them.
    pub max_interactive: usize,
    /// Requests in one batch.
    pub max_requests: usize,
    /// Bytes of one `POST /batches` body.
    pub max_bytes: usize,
    /// Batches one key may have queued or running at once.
    pub max_active_per_key: usize,
}

impl Default for RawBatches {
    fn default() -> Self {
        RawBatches {
            concurrency: 2,
            max_interactive: 0,
            max_requests: 1000,
            max_bytes: 4 << 20,
            max_active_per_key: 2,
        }
    }
}

impl RawBatches {
    /// Every count is at least 1 (`max_interactive` may be 0).
    pub fn validate(&self, cx: &Check) -> Result<(), ConfigError> {
        for (key, value) in [
            ("batches.concurrency", self.concurrency),
            ("batches.max_requests", self.max_requests),
            ("batches.max_bytes", self.max_bytes),
            ("batches.max_active_per_key", self.max_active_per_key),
        ] {
            if value == 0 {
                return Err(cx.key_err(key, "must be at least 1"));
            }
        }
        if self.max_requests > u32::MAX as usize {
            return Err(cx.key_err("batches.max_requests", "must be below 2^32"));
        }
        Ok(())
    }
}
