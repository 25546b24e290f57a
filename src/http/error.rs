//! The one error shape of every route, `{"error": {"code", "message"}}`: [`ApiError`] and its
//! exhaustive code → status table. A message says what to do; clients never see a raw
//! provider body or a panic message.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::providers::cost::Exhausted;

/// Errors a client can get, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the question is {chars} characters; the limit is {limit}")]
    QuestionTooLong { chars: usize, limit: usize },
    #[error(
        "unknown source `{0}` in filters: no source of that name can be read with this key; check the name, or ask the operator which sources the key may read"
    )]
    UnknownSource(String),
    #[error(
        "the request body could not be read or is larger than the server's limit (`[server] max_body_bytes`)"
    )]
    BodyTooLarge,
    #[error("this endpoint needs an API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(&'static str),
    #[error("rate limit reached; retry in {0} s")]
    RateLimited(u64),
    #[error("{0} not found")]
    NotFound(String),
    #[error("job {0} is still running; wait for it (GET /admin/jobs/{0}) before starting another")]
    JobRunning(String),
    /// A `[budget]` cap refuses new model calls (429: it is a quota; `Retry-After` says when a
    /// daily cap resets).
    #[error("{}", crate::answer::budget_message(.0))]
    BudgetExhausted(Exhausted),
    #[error("internal error; the operator can find details in the server log")]
    Internal,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::QuestionTooLong { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "question_too_long")
            }
            ApiError::UnknownSource(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_filter"),
            ApiError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidKey => (StatusCode::UNAUTHORIZED, "invalid_key"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::JobRunning(_) => (StatusCode::CONFLICT, "job_running"),
            ApiError::BudgetExhausted(_) => (StatusCode::TOO_MANY_REQUESTS, "budget_exhausted"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut resp = (
            status,
            Json(json!({"error": {"code": code, "message": self.to_string()}})),
        )
            .into_response();
        let retry_after = match &self {
            ApiError::RateLimited(secs) => Some(*secs),
            ApiError::BudgetExhausted(e) => e.retry_after_secs(),
            _ => None,
        };
        if let Some(secs) = retry_after
            && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::InvalidRequest(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::InvalidJson(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::InvalidJson("send the body with `content-type: application/json`".into())
            }
            JsonRejection::BytesRejection(_) => ApiError::BodyTooLarge,
            other => ApiError::InvalidJson(other.body_text()),
        }
    }
}
