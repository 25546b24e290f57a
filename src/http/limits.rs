//! What every request meets before a handler: load shedding (`[server]
//! max_concurrent_requests`: over it, a typed 503 `overloaded` with `Retry-After`) and the
//! whole-request deadline (`[server] request_timeout_secs`: a 504 `deadline_exceeded` when no
//! response has started by then).
//!
//! An answer stream holds its slot until its body ends, so open streams count. Probes
//! (`/healthz`, `/readyz`) and `/metrics` are never shed: an overloaded server must still say
//! so. The deadline covers the time until the response starts; a stream's own length is
//! bounded by the answer pipeline, which stops at the same deadline with an in-stream
//! `deadline_exceeded` error.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::http::error::ApiError;
use crate::http::settings::RawServer;

/// Extra time the whole-request deadline gives a handler past `request_timeout_secs`, so an
/// answer that stops at its own deadline (and carries its fallback) is the one reported.
const GRACE: Duration = Duration::from_secs(1);

/// Routes that are never shed.
const NEVER_SHED: &[&str] = &["/healthz", "/readyz", "/metrics"];

struct Limits {
    slots: Arc<Semaphore>,
    deadline_secs: u64,
}

/// Wraps `router` with the server's concurrency limit and whole-request deadline.
pub fn guard(router: Router, server: &RawServer) -> Router {
    let limits = Arc::new(Limits {
        slots: Arc::new(Semaphore::new(server.max_concurrent_requests.max(1))),
        deadline_secs: server.request_timeout_secs.max(1),
    });
    router.layer(axum::middleware::from_fn_with_state(limits, limit))
}

async fn limit(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let permit = if NEVER_SHED.contains(&path.as_str()) {
        None
    } else {
        match limits.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                metrics::counter!(crate::observe::metrics::SHED).increment(1);
                return ApiError::Overloaded.response_for(&path);
            }
        }
    };
    let deadline = Duration::from_secs(limits.deadline_secs) + GRACE;
    let resp = match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => return ApiError::DeadlineExceeded(limits.deadline_secs).response_for(&path),
    };
    match permit {
        Some(permit) if is_stream(&resp) => {
            // The slot is freed when the stream's body is dropped (ended or client gone).
            resp.map(|body| {
                Body::from_stream(body.into_data_stream().map(move |chunk| {
                    let _held = &permit;
                    chunk
                }))
            })
        }
        _ => resp,
    }
}

fn is_stream(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}
