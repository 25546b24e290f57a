//! What every handler holds: the engine, the API keys and the job queue, and the check of a
//! request's key against the scope its route needs.

use std::sync::Arc;

use axum::http::{HeaderMap, header};

use crate::engine::Engine;
use crate::http::auth::{Auth, AuthError, Caller, Scope};
use crate::http::error::ApiError;
use crate::ops::jobs::Jobs;

pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Arc<Auth>,
    pub jobs: Arc<Jobs>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> anyhow::Result<Arc<AppState>> {
        let auth = Auth::new(&engine.config.auth);
        let jobs = Jobs::open_for(&engine)?;
        Ok(Arc::new(AppState { engine, auth, jobs }))
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
            }),
            AuthError::RateLimited { retry_after_secs } => ApiError::RateLimited(retry_after_secs),
        })
    }
}
