//! Prometheus metrics: one process-wide recorder, names in one place, rendered by
//! `GET /metrics`. Gauges that describe state (index size, running jobs) are set on render.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

pub const REQUESTS: &str = "cairn_requests_total";
pub const REQUEST_SECONDS: &str = "cairn_request_duration_seconds";
pub const FIRST_TOKEN_SECONDS: &str = "cairn_time_to_first_token_seconds";
pub const TOKENS: &str = "cairn_tokens_total";
pub const COST: &str = "cairn_cost_usd_total";
pub const CACHE_HITS: &str = "cairn_answer_cache_hits_total";
pub const NO_ANSWER: &str = "cairn_no_answer_total";
pub const DROPPED_CITATIONS: &str = "cairn_dropped_citations_total";
pub const PROVIDER_ERRORS: &str = "cairn_provider_errors_total";
pub const INDEX_DOCUMENTS: &str = "cairn_index_documents";
pub const INDEX_CHUNKS: &str = "cairn_index_chunks";
pub const INDEX_GENERATION: &str = "cairn_index_generation";
pub const JOBS_RUNNING: &str = "cairn_jobs_running";
/// Requests refused with 503 `overloaded` (`[server] max_concurrent_requests`).
pub const SHED: &str = "cairn_requests_shed_total";
/// Ratings received on `POST /feedback`, by `rating` (`up`, `down`); a replaced rating counts
/// again.
pub const FEEDBACK: &str = "cairn_feedback_total";
/// Failed OTLP trace export requests (their spans are dropped).
pub const OTLP_EXPORT_FAILURES: &str = "cairn_otlp_export_failures_total";

/// Installs the recorder once per process (later calls reuse it).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ])
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Counts a finished request.
pub fn request(route: &'static str, outcome: &str, seconds: f64) {
    metrics::counter!(REQUESTS, "route" => route, "outcome" => outcome.to_string()).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route).record(seconds);
}
