//! What every handler holds: the engine, the API keys, the job queue, the sources'
//! schedules and the batches, and the check of a request's key against the scope its route
//! needs. Building it starts the server's background tasks (webhook delivery, scheduled syncs,
//! the batch runner).

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, header};

use crate::engine::Engine;
use crate::http::auth::{Auth, AuthError, Caller, Scope};
use crate::http::error::ApiError;
use crate::ops::batches::Batches;
use crate::ops::jobs::Jobs;
use crate::ops::schedule::Schedules;

pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Arc<Auth>,
    pub jobs: Arc<Jobs>,
    /// The `refresh` schedules of the sources (their task runs while this state lives).
    pub schedules: Arc<Schedules>,
    /// Batches and their runner (started here when a runtime is running, else by the first
    /// batch; stopped when the state is dropped).
    pub batches: Batches,
    /// Test-only fault injection, see [`AppState::inject_answer_panic`].
    answer_panic: OnceLock<String>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> anyhow::Result<Arc<AppState>> {
        let auth = Auth::new(&engine.config.auth);
        let jobs = Jobs::open_for(&engine)?;
        engine.webhooks.start()?;
        let schedules = Schedules::start(&engine, &jobs);
        let batches = Batches::new(&engine);
        batches.start();
        Ok(Arc::new(AppState {
            engine,
            auth,
            jobs,
            schedules,
            batches,
            answer_panic: OnceLock::new(),
        }))
    }

    /// Test-only: from now on, the answer task of a question containing `marker` panics, so
    /// tests can check how a panicking answer ends. Nothing in the config or a request can
    /// set it; only code holding the state can (the end-to-end tests).
    #[doc(hidden)]
    pub fn inject_answer_panic(&self, marker: &str) {
        let _ = self.answer_panic.set(marker.to_string());
    }

    /// Whether the test-only panic hook fires for `question`.
    pub(super) fn answer_panics(&self, question: &str) -> bool {
        self.answer_panic
            .get()
            .is_some_and(|m| question.contains(m.as_str()))
    }

    pub fn authorize_scope(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.auth.check(value, scope).map_err(|e| match e {
            AuthError::Missing => ApiError::Unauthorized,
            AuthError::Invalid => ApiError::InvalidKey,
            AuthError::Forbidden(s) => ApiError::Forbidden(match s {
                Scope::Ask => "ask",
                Scope::Search => "search",
                Scope::Admin => "admin",
                Scope::Metrics => "metrics",
            }),
            AuthError::RateLimited { retry_after_secs } => ApiError::RateLimited(retry_after_secs),
        })
    }
}
