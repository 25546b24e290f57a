//! The HTTP server: the router over one file per surface (`ask`, `search`, `admin`,
//! `openai_compat`, `mcp`, `threads`, `feedback`, `batches`), the shared state, the one error shape with its exhaustive status
//! table (`error`), and load shedding with the whole-request deadline (`limits`). Handlers parse, authorise and call the layer below; they hold no pipeline
//! logic.

pub mod admin;
pub mod ask;
pub mod auth;
pub mod batches;
pub mod error;
pub mod feedback;
pub mod limits;
pub mod mcp;
pub mod openai_compat;
pub mod search;
pub mod settings;
pub mod state;
pub mod threads;

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Builds the router (tests drive it in-process with `oneshot`).
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.engine.config.server.max_body_bytes;
    let routes = Router::new()
        .route("/", get(page))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/search", get(search::search))
        .route("/ask", post(ask::ask))
        .route(
            "/v1/chat/completions",
            post(openai_compat::chat_completions),
        )
        .route("/batches", post(batches::create_batch))
        .route(
            "/batches/{id}",
            get(batches::get_batch).delete(batches::cancel_batch),
        )
        .route("/batches/{id}/results", get(batches::batch_results))
        .route(
            "/threads/{id}",
            get(threads::get_thread).delete(threads::delete_thread),
        )
        .route("/feedback", post(feedback::post_feedback))
        .route("/metrics", get(admin::metrics_text))
        .route("/admin/reindex", post(admin::admin_reindex))
        .route("/admin/jobs", get(admin::admin_jobs))
        .route("/admin/jobs/{id}", get(admin::admin_job))
        .route("/admin/sources", get(admin::admin_sources))
        .route("/admin/traces", get(admin::admin_traces))
        .route("/admin/feedback", get(feedback::admin_feedback))
        .route(
            "/admin/feedback/export",
            get(feedback::admin_feedback_export),
        )
        .route(
            "/admin/webhooks/deliveries",
            get(admin::admin_webhook_deliveries),
        )
        .merge(mcp::router(state.clone()))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state.clone());
    // `Router::layer` wraps each route's handlers one by one; wrapped as one service, the
    // middleware also sees what the router adds itself (a 405's `Allow` header).
    let app = Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn(error::error_shape));
    limits::guard(app, &state.engine.config.server)
}

async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(include_str!("page/index.html")),
    )
}

async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    ApiError::NotFound(format!("route {}", uri.path())).response_for(uri.path())
}
