//! The one error shape of every route, `{"error": {"code", "message"}}` (OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` under `/v1/`): [`ApiError`], its
//! exhaustive code → status table, and the middleware that gives responses axum produces on
//! its own (405, 413, …) the same shape. A message says what to do; clients never see a raw
//! provider body or a panic message.

use axum::Json;
use axum::extract::Request;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::providers::cost::Exhausted;

/// Errors a client can get, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// An empty or whitespace-only query, question or last user message (400: there is
    /// nothing to search for).
    #[error("{0}")]
    EmptyQuery(String),
    /// A conversation turn whose role is not one the route takes (400: the conversation
    /// itself is malformed).
    #[error("{0}")]
    InvalidRole(String),
    #[error("the question is {chars} characters; the limit is {limit}")]
    QuestionTooLong { chars: usize, limit: usize },
    /// `what` is `turns` or `characters`, with the `[server]` key that limits it.
    #[error(
        "the conversation has {value} {what}; the limit is {limit} (`[server] {key}`): send only the most recent turns"
    )]
    ConversationTooLong {
        what: &'static str,
        key: &'static str,
        value: usize,
        limit: usize,
    },
    /// A per-request agent limit above the `[agent]` maximum (or not positive).
    #[error("{0}")]
    AgentBudgetTooHigh(crate::agent::settings::BudgetTooHigh),
    #[error(
        "unknown source `{0}` in filters: no source of that name can be read with this key; check the name, or ask the operator which sources the key may read"
    )]
    UnknownSource(String),
    /// A feedback `comment` over the limit.
    #[error(
        "the comment is {chars} characters; the limit is {limit}: shorten it (the question and answer are already linked through trace_id)"
    )]
    CommentTooLong { chars: usize, limit: usize },
    /// Document ids (`correct_sources`) that are not indexed or not readable with the key,
    /// refused alike so restricted documents cannot be probed.
    #[error(
        "unknown document id(s) in correct_sources: {0}; name documents as citations and search hits do (`doc_id`, e.g. `samples:refunds.md`) that this key can read"
    )]
    UnknownDocument(String),
    #[error(
        "the request body could not be read or is larger than the server's limit (`[server] max_body_bytes`)"
    )]
    BodyTooLarge,
    #[error("send the body as JSON with `content-type: application/json`")]
    UnsupportedMediaType,
    #[error("{method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("this endpoint needs an API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(&'static str),
    /// A browser page of another origin (`/mcp`'s DNS-rebinding check).
    #[error(
        "requests from origin `{0}` are refused; only loopback origins and those in `[server] allowed_origins` may call this endpoint"
    )]
    OriginNotAllowed(String),
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
    /// More requests are in flight than `[server] max_concurrent_requests` (`Retry-After: 1`).
    #[error("the server is handling as many requests as it is configured for; retry in a second")]
    Overloaded,
    /// No response within `[server] request_timeout_secs`.
    #[error(
        "no response within {0} s (`[server] request_timeout_secs`); retry, or ask a narrower question"
    )]
    DeadlineExceeded(u64),
    /// An answer ended with an error event before any complete answer: `code` is the event's
    /// (its status comes from [`answer_error_status`]); `fallback` holds what the client can
    /// still show (`answer`, `citations`, `retrieval`).
    #[error("{message}")]
    AnswerFailed {
        code: &'static str,
        message: String,
        fallback: Value,
    },
    #[error("internal error; the operator can find details in the server log")]
    Internal,
    /// A request of a batch failed its check (`at`: `requests[3]` or `line 4`); the status
    /// and code are the check's own.
    #[error("{at}: {inner}")]
    InBatch { at: String, inner: Box<ApiError> },
    #[error("the batch holds no requests; send at least one")]
    EmptyBatch,
    #[error(
        "the batch holds {count} requests; the limit is {limit} (`[batches] max_requests`): split it"
    )]
    BatchTooManyRequests { count: usize, limit: usize },
    #[error(
        "the batch body is larger than {limit} bytes (`[batches] max_bytes`): split it into smaller batches"
    )]
    BatchTooLarge { limit: usize },
    #[error(
        "`custom_id` `{custom_id}` is used by {first} and again by {again}; each request needs its own"
    )]
    DuplicateCustomId {
        custom_id: String,
        first: String,
        again: String,
    },
    #[error(
        "this key already has {0} batches queued or running (`[batches] max_active_per_key`); wait for one to finish or cancel one"
    )]
    TooManyBatches(usize),
    #[error(
        "send the batch as JSON (`content-type: application/json`) or as JSON lines (`content-type: application/x-ndjson`)"
    )]
    UnsupportedBatchMediaType,
}

/// The status of an answer that ended with the error event `code`: the model side failed
/// (502), ran out of time (504), was shed (503) or refused by a quota (429); a cairn fault
/// is 500.
pub fn answer_error_status(code: &str) -> StatusCode {
    match code {
        "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
        "overloaded" => StatusCode::SERVICE_UNAVAILABLE,
        "budget_exhausted" => StatusCode::TOO_MANY_REQUESTS,
        "internal" | "no_route" | "schema_invalid" => StatusCode::INTERNAL_SERVER_ERROR,
        // providers_unavailable, provider_stream_failed and any code the pipeline adds later:
        // the model side did not produce an answer.
        _ => StatusCode::BAD_GATEWAY,
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::EmptyQuery(_) => (StatusCode::BAD_REQUEST, "empty_query"),
            ApiError::InvalidRole(_) => (StatusCode::BAD_REQUEST, "invalid_role"),
            ApiError::QuestionTooLong { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "question_too_long")
            }
            ApiError::ConversationTooLong { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "conversation_too_long")
            }
            ApiError::UnknownSource(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_filter"),
            ApiError::CommentTooLong { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "comment_too_long")
            }
            ApiError::UnknownDocument(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_document"),
            ApiError::AgentBudgetTooHigh(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "agent_budget_too_high")
            }
            ApiError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidKey => (StatusCode::UNAUTHORIZED, "invalid_key"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::OriginNotAllowed(_) => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::JobRunning(_) => (StatusCode::CONFLICT, "job_running"),
            ApiError::BudgetExhausted(_) => (StatusCode::TOO_MANY_REQUESTS, "budget_exhausted"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            ApiError::AnswerFailed { code, .. } => (answer_error_status(code), code),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::InBatch { inner, .. } => inner.status_and_code(),
            ApiError::EmptyBatch => (StatusCode::UNPROCESSABLE_ENTITY, "empty_batch"),
            ApiError::BatchTooManyRequests { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_many_requests")
            }
            ApiError::BatchTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large"),
            ApiError::DuplicateCustomId { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "duplicate_custom_id")
            }
            ApiError::TooManyBatches(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_batches"),
            ApiError::UnsupportedBatchMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
        }
    }

    /// The stable code (`not_found`, `forbidden`, ...), for surfaces that carry errors in
    /// their own envelope (MCP tool errors).
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    /// The response in OpenAI's error shape (`/v1/` routes), so OpenAI SDKs raise it:
    /// `{"error": {"message", "type", "param": null, "code"}}`, plus `fallback` for a failed
    /// answer.
    pub fn openai_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut error = json!({
            "message": self.to_string(),
            "type": openai_type(status),
            "param": null,
            "code": code,
        });
        self.finish(status, &mut error)
    }

    /// Adds what only some errors carry (`fallback`, `Retry-After`, `Allow`) and builds the
    /// response around `error`.
    fn finish(self, status: StatusCode, error: &mut Value) -> Response {
        if let (ApiError::AnswerFailed { fallback, .. }, Some(obj)) = (&self, error.as_object_mut())
        {
            obj.insert("fallback".into(), fallback.clone());
        }
        let mut resp = (status, Json(json!({ "error": error }))).into_response();
        let retry_after = match &self {
            ApiError::RateLimited(secs) => Some(*secs),
            ApiError::BudgetExhausted(e) => e.retry_after_secs(),
            ApiError::Overloaded => Some(1),
            _ => None,
        };
        let headers = resp.headers_mut();
        if let Some(secs) = retry_after
            && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        if let ApiError::MethodNotAllowed { allow, .. } = &self
            && !allow.is_empty()
            && let Ok(v) = header::HeaderValue::from_str(allow)
        {
            headers.insert(header::ALLOW, v);
        }
        resp
    }

    /// The response in the shape of the route at `path`: OpenAI's under `/v1/`, cairn's
    /// elsewhere.
    pub fn response_for(self, path: &str) -> Response {
        if path.starts_with("/v1/") {
            self.openai_response()
        } else {
            self.into_response()
        }
    }
}

/// OpenAI's error `type` for a status.
fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut error = json!({"code": code, "message": self.to_string()});
        self.finish(status, &mut error)
    }
}

/// Middleware: a non-2xx response that is not JSON (axum's own 405, 413 and 415, which have
/// empty or text bodies) gets the error shape of its route; headers such as `Allow` are kept.
pub async fn error_shape(req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(resp.headers()) {
        return resp;
    }
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed {
            allow: resp
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            method,
            path: path.clone(),
        },
        StatusCode::NOT_FOUND => ApiError::NotFound(format!("route {path}")),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        s if s.is_server_error() => ApiError::Internal,
        s => ApiError::InvalidRequest(format!("the request was refused ({s})")),
    };
    let mut shaped = error.response_for(&path);
    for (name, value) in resp.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"))
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::InvalidRequest(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::InvalidJson(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(_) => ApiError::BodyTooLarge,
            other => ApiError::InvalidJson(other.body_text()),
        }
    }
}
