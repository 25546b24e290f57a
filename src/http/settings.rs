//! `[server]`: where the server listens and the limits every request meets.
//!
//! Must not: import the composed `Config` or the handlers (the config loader imports this).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::section::{Check, ConfigError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    pub bind: String,
    pub max_body_bytes: usize,
    pub max_question_chars: usize,
    /// Turns an `/ask` `conversation` (or the messages before the question on
    /// `/v1/chat/completions`) may hold, and their characters in all; more is 413
    /// `conversation_too_long`.
    pub max_conversation_turns: usize,
    pub max_conversation_chars: usize,
    /// Whole-request deadline: an answer stops at it (`deadline_exceeded`), and any route
    /// whose response has not started a second later answers 504 `deadline_exceeded`.
    pub request_timeout_secs: u64,
    /// Requests handled at once (open answer streams count until they end); more get 503
    /// `overloaded` with `Retry-After: 1`. `/healthz`, `/readyz` and `/metrics` are never shed.
    pub max_concurrent_requests: usize,
    pub keep_alive_secs: u64,
    /// On SIGTERM/Ctrl-C, in-flight streams get this long to finish.
    pub shutdown_grace_secs: u64,
    /// Browser origins (`https://kb.example.com`) besides loopback ones that may call `/mcp`;
    /// requests with any other `Origin` header are refused (DNS-rebinding protection).
    pub allowed_origins: Vec<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            bind: "127.0.0.1:7700".into(),
            max_body_bytes: 64 * 1024,
            max_question_chars: 2000,
            max_conversation_turns: 20,
            max_conversation_chars: 16000,
            request_timeout_secs: 60,
            max_concurrent_requests: 1024,
            keep_alive_secs: 15,
            shutdown_grace_secs: 20,
            allowed_origins: Vec::new(),
        }
    }
}

impl RawServer {
    /// The listen address; a value that is not a socket address, or a limit of 0, stops
    /// startup.
    pub fn validate(&self, cx: &Check) -> Result<SocketAddr, ConfigError> {
        if self.max_concurrent_requests == 0 {
            return Err(cx.key_err(
                "server.max_concurrent_requests",
                "must be at least 1 (0 would refuse every request)",
            ));
        }
        self.bind.parse().map_err(|e| {
            cx.key_err(
                "server.bind",
                format!(
                    "`{}` is not a socket address like 127.0.0.1:7700 ({e})",
                    self.bind
                ),
            )
        })
    }
}
