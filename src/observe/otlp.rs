//! OTLP export of request traces (`[traces.otlp]`): each finished [`Trace`] becomes one span
//! tree — the request, its retrieval (with embed and rerank) and the model call — sent over
//! OTLP/HTTP (protobuf) by the SDK's batch processor on its own thread. The request path only
//! enqueues into a bounded queue (spans are dropped when it is full), so an answer never waits
//! on the collector. Export failures are counted (`cairn_otlp_export_failures_total`) and
//! logged at most once a minute; they never fail a request.
//!
//! The OTLP trace id is the cairn trace id (a UUID) as 16 bytes, so the id a client sees in the
//! `done` event finds the trace in the collector. Question and answer text leave the process
//! only when `[traces] record_text = true`. Header values (often credentials) are never logged.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SpanData, SpanEvents, SpanExporter, SpanLinks, SpanProcessor,
};
use serde::{Deserialize, Serialize};

use crate::config::section::{ConfigError, resolve_secret};
use crate::observe::trace::Trace;
use crate::providers::config::{ProviderConfig, ProviderKind};

/// Where the OTLP signal path goes under the configured base URL.
const TRACES_PATH: &str = "/v1/traces";
/// At most one warning about failed exports per this interval (the counter counts them all).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// `[traces.otlp]` as written. Export is off while `endpoint` is empty.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawOtlp {
    /// OTLP/HTTP base URL such as `http://collector:4318`; spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// Extra request headers. A value `env:VARIABLE` is read from the environment at load
    /// (use that for credentials); other values are sent as written.
    pub headers: BTreeMap<String, String>,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Time limit of one export request, retries included.
    pub timeout_ms: u64,
}

impl Default for RawOtlp {
    fn default() -> Self {
        RawOtlp {
            endpoint: String::new(),
            headers: BTreeMap::new(),
            service_name: "cairn".into(),
            timeout_ms: 10_000,
        }
    }
}

/// Header values are often credentials: `Debug` shows only their names.
impl std::fmt::Debug for RawOtlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawOtlp")
            .field("endpoint", &self.endpoint)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("service_name", &self.service_name)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl RawOtlp {
    pub fn enabled(&self) -> bool {
        !self.endpoint.trim().is_empty()
    }
}

/// Checks `[traces.otlp]` and resolves `env:` header values in place, so a bad URL, header or
/// missing variable stops startup instead of surfacing as failed exports later.
pub fn validate(
    raw: &mut RawOtlp,
    origin: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let key_err = |key: &str, message: String| ConfigError::Key {
        file: origin.into(),
        key: format!("traces.otlp.{key}"),
        message,
    };
    raw.endpoint = raw.endpoint.trim().trim_end_matches('/').to_string();
    if !raw.enabled() {
        return Ok(());
    }
    let url = reqwest::Url::parse(&raw.endpoint).map_err(|e| {
        key_err(
            "endpoint",
            format!(
                "`{}` is not a URL like http://collector:4318 ({e})",
                raw.endpoint
            ),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(key_err(
            "endpoint",
            format!(
                "`{}` must be an http:// or https:// URL (OTLP over HTTP; gRPC is not supported)",
                raw.endpoint
            ),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(key_err(
            "endpoint",
            "must not carry credentials; put them in [traces.otlp.headers] as an env: reference"
                .into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(key_err(
            "endpoint",
            format!("`{}` must not have a query or fragment", raw.endpoint),
        ));
    }
    if url.path().ends_with(TRACES_PATH) {
        return Err(key_err(
            "endpoint",
            format!(
                "give the collector's base URL; cairn appends {TRACES_PATH} (`{}`)",
                raw.endpoint
            ),
        ));
    }
    if raw.service_name.trim().is_empty() {
        return Err(key_err("service_name", "must not be empty".into()));
    }
    if raw.timeout_ms == 0 {
        return Err(key_err("timeout_ms", "must be at least 1".into()));
    }
    for (name, value) in raw.headers.iter_mut() {
        let key = format!("headers.{name}");
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(key_err(
                &key,
                format!("`{name}` is not a valid header name"),
            ));
        }
        if value.starts_with("env:") {
            *value = resolve_secret(value, &format!("traces.otlp.{key}"), origin, env)?;
        }
        // The value is not echoed: it may be a credential.
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(key_err(
                &key,
                "the value is not a valid header value (control characters or non-ASCII)".into(),
            ));
        }
    }
    Ok(())
}

/// The running exporter: the batch processor (queue + export thread) and what the span
/// conversion needs.
pub struct OtlpExport {
    processor: BatchSpanProcessor,
    /// Provider name → vendor, for `gen_ai.provider.name`.
    kinds: BTreeMap<String, ProviderKind>,
    record_text: bool,
    timeout: Duration,
}

impl OtlpExport {
    /// Starts the exporter when `raw` (already validated) names an endpoint.
    pub fn start(
        raw: &RawOtlp,
        record_text: bool,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> anyhow::Result<Option<OtlpExport>> {
        if !raw.enabled() {
            return Ok(None);
        }
        let url = format!("{}{TRACES_PATH}", raw.endpoint);
        let timeout = Duration::from_millis(raw.timeout_ms);
        let headers: HashMap<String, String> = raw
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| anyhow::anyhow!("[traces.otlp]: cannot build the exporter: {e}"))?;
        let mut processor = BatchSpanProcessor::builder(CountingExporter {
            inner: exporter,
            endpoint: url.clone(),
            warned: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        })
        .build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(raw.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        tracing::info!(endpoint = %url, headers = raw.headers.len(), "exporting traces over OTLP");
        Ok(Some(OtlpExport {
            processor,
            kinds: providers.iter().map(|(n, p)| (n.clone(), p.kind)).collect(),
            record_text,
            timeout,
        }))
    }

    /// Enqueues the spans of a finished trace (never blocks; dropped if the queue is full).
    pub fn export(&self, trace: &Trace) {
        for span in spans(trace, &self.kinds, self.record_text, random_span_id) {
            self.processor.on_end(span);
        }
    }

    /// Sends what is queued and waits for the result (blocking; call off the async workers).
    pub fn flush(&self) -> OTelSdkResult {
        self.processor.force_flush()
    }

    /// Flushes and stops the export thread (blocking; call off the async workers).
    pub fn shutdown(&self) -> OTelSdkResult {
        self.processor.shutdown_with_timeout(self.timeout * 2)
    }
}

/// The OTLP exporter plus failure accounting: every failed export is counted, and a warning
/// is logged at most once per [`WARN_EVERY`] with how many were not logged in between.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    endpoint: String,
    warned: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            metrics::counter!(crate::observe::metrics::OTLP_EXPORT_FAILURES).increment(1);
            let now = Instant::now();
            let mut warned = match self.warned.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if warned.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
                *warned = Some(now);
                let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
                tracing::warn!(
                    endpoint = %self.endpoint,
                    spans,
                    error = %e,
                    failures_not_logged = suppressed,
                    "cannot export traces over OTLP; the spans are dropped"
                );
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

fn random_span_id() -> SpanId {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

/// `gen_ai.provider.name` of a configured provider: the convention's well-known value for
/// the vendor, the configured name for self-hosted OpenAI-compatible servers.
fn gen_ai_provider(name: &str, kinds: &BTreeMap<String, ProviderKind>) -> String {
    match kinds.get(name) {
        Some(ProviderKind::Openai) => "openai".into(),
        Some(ProviderKind::Anthropic) => "anthropic".into(),
        Some(ProviderKind::Gemini) => "gcp.gemini".into(),
        Some(ProviderKind::Mistral) => "mistral_ai".into(),
        Some(ProviderKind::Extractive) => "cairn.extractive".into(),
        Some(ProviderKind::OpenaiCompatible) | None => name.into(),
    }
}

/// Outcomes that are not failures of the request (a client leaving is its own choice).
fn is_error(outcome: &str) -> bool {
    !matches!(outcome, "answered" | "no_answer" | "client_disconnected")
}

fn strings(items: impl IntoIterator<Item = String>) -> Value {
    Value::Array(Array::String(
        items.into_iter().map(StringValue::from).collect(),
    ))
}

fn ms(d: f64) -> Duration {
    Duration::from_secs_f64((d.max(0.0)) / 1000.0)
}

/// The span tree of one trace: the request (root), `retrieve` with `embed` and `rerank` under
/// it, and the model call (`chat <model>`) when a provider answered (not on a cache hit).
/// Stage times are offsets from the trace's start, so the tree lines up in a waterfall view.
fn spans(
    trace: &Trace,
    kinds: &BTreeMap<String, ProviderKind>,
    record_text: bool,
    mut new_span_id: impl FnMut() -> SpanId,
) -> Vec<SpanData> {
    let tree = SpanTree::of(trace);
    let gen_ai = gen_ai_attributes(trace, kinds);
    let root_id = new_span_id();
    let mut out = vec![root_span(&tree, trace, root_id, record_text, &gen_ai)];
    retrieval_spans(&tree, trace, root_id, &mut new_span_id, &mut out);
    if let Some(call) = model_call_span(&tree, trace, root_id, &mut new_span_id, gen_ai) {
        out.push(call);
    }
    out
}

/// What every span of one trace shares: its trace id, its start and the scope.
struct SpanTree {
    trace_id: TraceId,
    start: SystemTime,
    scope: InstrumentationScope,
}

impl SpanTree {
    fn of(trace: &Trace) -> SpanTree {
        let trace_id = uuid::Uuid::parse_str(&trace.id)
            .map(|u| TraceId::from_bytes(u.into_bytes()))
            .unwrap_or_else(|_| TraceId::from_bytes(uuid::Uuid::new_v4().into_bytes()));
        let start: SystemTime = chrono::DateTime::parse_from_rfc3339(&trace.at)
            .map(SystemTime::from)
            .unwrap_or_else(|_| SystemTime::now() - ms(trace.timings.total_ms));
        let scope = InstrumentationScope::builder("cairn")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        SpanTree {
            trace_id,
            start,
            scope,
        }
    }

    /// The time `offset_ms` after the trace's start.
    fn at(&self, offset_ms: f64) -> SystemTime {
        self.start + ms(offset_ms)
    }

    /// A span from `from` to `to` (ms after the start) under `parent`.
    fn span(
        &self,
        name: Cow<'static, str>,
        (id, parent): (SpanId, SpanId),
        kind: SpanKind,
        (from, to): (f64, f64),
        attributes: Vec<KeyValue>,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: kind,
            name,
            start_time: self.at(from),
            end_time: self.at(to),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// The GenAI semantic-convention attributes of the model call (also set on the root).
fn gen_ai_attributes(trace: &Trace, kinds: &BTreeMap<String, ProviderKind>) -> Vec<KeyValue> {
    let mut gen_ai = Vec::new();
    if let Some(p) = trace.provider.as_deref().map(|p| gen_ai_provider(p, kinds)) {
        gen_ai.push(KeyValue::new("gen_ai.provider.name", p));
    }
    if let Some(m) = &trace.model {
        gen_ai.push(KeyValue::new("gen_ai.request.model", m.clone()));
    }
    gen_ai.push(KeyValue::new(
        "gen_ai.usage.input_tokens",
        trace.input_tokens as i64,
    ));
    gen_ai.push(KeyValue::new(
        "gen_ai.usage.output_tokens",
        trace.output_tokens as i64,
    ));
    gen_ai
}

/// The request's own attributes: cairn's trace fields, text only with `record_text`.
fn request_attributes(trace: &Trace, record_text: bool) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("cairn.trace_id", trace.id.clone()),
        KeyValue::new("cairn.outcome", trace.outcome.clone()),
        KeyValue::new("cairn.caller", trace.caller.clone()),
        KeyValue::new("cairn.route", trace.route.clone()),
        KeyValue::new("cairn.prompt_version", trace.prompt_version.clone()),
        KeyValue::new("cairn.cost_usd", trace.cost_usd),
        KeyValue::new("cairn.cache_hit", trace.cache_hit.is_some()),
        KeyValue::new("cairn.dropped_citations", trace.dropped_citations as i64),
        KeyValue::new(
            "cairn.context.near_duplicates",
            trace.context_near_duplicates as i64,
        ),
        KeyValue::new("cairn.context.neighbours", trace.context_neighbours as i64),
        KeyValue::new(
            "cairn.retrieved.chunk_ids",
            strings(trace.retrieved.iter().map(|c| c.chunk_id.clone())),
        ),
        KeyValue::new(
            "cairn.retrieved.scores",
            Value::Array(Array::F64(
                trace.retrieved.iter().map(|c| f64::from(c.score)).collect(),
            )),
        ),
    ];
    if let Some(kind) = &trace.cache_hit {
        attrs.push(KeyValue::new("cairn.cache_hit.kind", kind.clone()));
    }
    if let Some(p) = &trace.provider {
        attrs.push(KeyValue::new("cairn.provider", p.clone()));
    }
    if !trace.provider_errors.is_empty() {
        attrs.push(KeyValue::new(
            "cairn.provider_errors",
            strings(trace.provider_errors.iter().cloned()),
        ));
    }
    if let Some(ttft) = trace.timings.first_token_ms {
        attrs.push(KeyValue::new("cairn.time_to_first_token_ms", ttft));
    }
    if let Some(c) = &trace.condense {
        attrs.push(KeyValue::new(
            "cairn.condense.condenser",
            c.condenser.clone(),
        ));
        if let Some(f) = &c.fallback {
            attrs.push(KeyValue::new("cairn.condense.fallback", f.clone()));
        }
        attrs.push(KeyValue::new("cairn.condense.cost_usd", c.cost_usd));
    }
    if record_text {
        if let Some(q) = &trace.question {
            attrs.push(KeyValue::new("cairn.question", q.clone()));
        }
        if let Some(a) = &trace.answer {
            attrs.push(KeyValue::new("cairn.answer", a.clone()));
        }
    }
    attrs
}

/// The root span: the HTTP request (`POST /ask`) or, from the CLI, `cairn.answer`; an error
/// status for failed outcomes and a `first_token` event.
fn root_span(
    tree: &SpanTree,
    trace: &Trace,
    root_id: SpanId,
    record_text: bool,
    gen_ai: &[KeyValue],
) -> SpanData {
    let t = &trace.timings;
    let mut attrs = request_attributes(trace, record_text);
    attrs.extend(gen_ai.iter().cloned());
    let (name, kind) = match &trace.http_route {
        Some(route) => {
            attrs.push(KeyValue::new("http.request.method", "POST"));
            attrs.push(KeyValue::new("http.route", route.clone()));
            (Cow::Owned(format!("POST {route}")), SpanKind::Server)
        }
        None => (Cow::Borrowed("cairn.answer"), SpanKind::Internal),
    };
    if is_error(&trace.outcome) {
        attrs.push(KeyValue::new("error.type", trace.outcome.clone()));
    }
    let mut root = tree.span(
        name,
        (root_id, SpanId::INVALID),
        kind,
        (0.0, t.total_ms),
        attrs,
    );
    if is_error(&trace.outcome) {
        root.status = Status::error(trace.outcome.clone());
    }
    if let Some(ttft) = t.first_token_ms {
        root.events
            .events
            .push(Event::new("first_token", tree.at(ttft), Vec::new(), 0));
    }
    root
}

/// `retrieve` under the root, with `embed` opening it and `rerank` closing it (each only when
/// it took time).
fn retrieval_spans(
    tree: &SpanTree,
    trace: &Trace,
    root_id: SpanId,
    new_span_id: &mut impl FnMut() -> SpanId,
    out: &mut Vec<SpanData>,
) {
    let t = &trace.timings;
    if t.retrieve_ms <= 0.0 {
        return;
    }
    let retrieve_id = new_span_id();
    out.push(tree.span(
        Cow::Borrowed("retrieve"),
        (retrieve_id, root_id),
        SpanKind::Internal,
        (0.0, t.retrieve_ms),
        vec![KeyValue::new(
            "cairn.retrieved.count",
            trace.retrieved.len() as i64,
        )],
    ));
    // Embedding opens retrieval and reranking closes it.
    let stages = [
        ("embed", 0.0, t.embed_ms),
        ("rerank", t.retrieve_ms - t.rerank_ms, t.rerank_ms),
    ];
    for (name, from, took) in stages {
        if took > 0.0 {
            out.push(tree.span(
                Cow::Borrowed(name),
                (new_span_id(), retrieve_id),
                SpanKind::Internal,
                (from.max(0.0), from.max(0.0) + took),
                Vec::new(),
            ));
        }
    }
}

/// The model call (`chat <model>`, a client span) when a provider answered — none on a cache
/// hit or when no model was called.
fn model_call_span(
    tree: &SpanTree,
    trace: &Trace,
    root_id: SpanId,
    new_span_id: &mut impl FnMut() -> SpanId,
    gen_ai: Vec<KeyValue>,
) -> Option<SpanData> {
    let t = &trace.timings;
    let model = trace.model.as_ref().filter(|_| trace.cache_hit.is_none())?;
    let mut attrs = vec![KeyValue::new("gen_ai.operation.name", "chat")];
    attrs.extend(gen_ai);
    if let Some(ttft) = t.first_token_ms {
        attrs.push(KeyValue::new("cairn.time_to_first_token_ms", ttft));
    }
    // The convention's span name is "{operation} {model}".
    let name = match model.as_str() {
        "" => Cow::Borrowed("chat"),
        m => Cow::Owned(format!("chat {m}")),
    };
    let mut call = tree.span(
        name,
        (new_span_id(), root_id),
        SpanKind::Client,
        (t.retrieve_ms, t.total_ms),
        attrs,
    );
    if let Some(ttft) = t.first_token_ms {
        call.events
            .events
            .push(Event::new("first_token", tree.at(ttft), Vec::new(), 0));
    }
    Some(call)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::trace::{RetrievedChunk, Timings};

    fn sample() -> Trace {
        Trace {
            id: "0b6f8a52-3c1e-4f7a-9d2b-5e8c1a7f4d30".into(),
            at: "2026-01-02T03:04:05.000Z".into(),
            route: "answer".into(),
            http_route: Some("/ask".into()),
            caller: "anonymous".into(),
            thread_id: None,
            timings: Timings {
                embed_ms: 10.0,
                retrieve_ms: 40.0,
                rerank_ms: 15.0,
                first_token_ms: Some(90.0),
                total_ms: 200.0,
            },
            provider: Some("oa".into()),
            model: Some("gpt-4o-mini".into()),
            provider_errors: vec!["first: upstream 503".into()],
            input_tokens: 812,
            output_tokens: 64,
            cost_usd: 0.0012,
            retrieved: vec![
                RetrievedChunk {
                    chunk_id: "c1".into(),
                    score: 0.9,
                },
                RetrievedChunk {
                    chunk_id: "c2".into(),
                    score: 0.5,
                },
            ],
            prompt_version: "answer.v1".into(),
            cache_hit: None,
            dropped_citations: 1,
            context_near_duplicates: 2,
            context_neighbours: 1,
            outcome: "answered".into(),
            question: Some("secret question".into()),
            query: Some("secret question".into()),
            answer: Some("secret answer".into()),
            ..Trace::default()
        }
    }

    fn kinds() -> BTreeMap<String, ProviderKind> {
        BTreeMap::from([("oa".to_string(), ProviderKind::Openai)])
    }

    fn ids() -> impl FnMut() -> SpanId {
        let mut n = 0u64;
        move || {
            n += 1;
            SpanId::from(n)
        }
    }

    fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn a_trace_becomes_a_span_tree_with_its_stage_times() {
        let out = spans(&sample(), &kinds(), false, ids());
        let names: Vec<&str> = out.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "POST /ask",
                "retrieve",
                "embed",
                "rerank",
                "chat gpt-4o-mini"
            ]
        );
        let root = &out[0];
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(root.span_kind, SpanKind::Server);
        // The OTLP trace id is the cairn id's 16 bytes.
        assert_eq!(
            root.span_context.trace_id().to_string(),
            "0b6f8a523c1e4f7a9d2b5e8c1a7f4d30"
        );
        assert!(
            out.iter()
                .all(|s| s.span_context.trace_id() == root.span_context.trace_id())
        );
        let start = root.start_time;
        let offset = |t: SystemTime| t.duration_since(start).unwrap().as_secs_f64() * 1000.0;
        assert!((offset(root.end_time) - 200.0).abs() < 1e-6);
        let (retrieve, embed, rerank, chat) = (&out[1], &out[2], &out[3], &out[4]);
        assert_eq!(retrieve.parent_span_id, root.span_context.span_id());
        assert_eq!(embed.parent_span_id, retrieve.span_context.span_id());
        assert_eq!(rerank.parent_span_id, retrieve.span_context.span_id());
        assert_eq!(chat.parent_span_id, root.span_context.span_id());
        assert!((offset(embed.end_time) - 10.0).abs() < 1e-6);
        assert!((offset(rerank.start_time) - 25.0).abs() < 1e-6);
        assert!((offset(rerank.end_time) - 40.0).abs() < 1e-6);
        assert!((offset(chat.start_time) - 40.0).abs() < 1e-6);
        assert_eq!(chat.span_kind, SpanKind::Client);
        assert_eq!(chat.events.len(), 1);
        assert!((offset(chat.events[0].timestamp) - 90.0).abs() < 1e-6);
    }

    #[test]
    fn attributes_follow_the_conventions_and_leave_text_out_by_default() {
        let out = spans(&sample(), &kinds(), false, ids());
        let root = &out[0];
        assert_eq!(
            attr(root, "gen_ai.provider.name"),
            Some(&Value::from("openai"))
        );
        assert_eq!(
            attr(root, "gen_ai.request.model"),
            Some(&Value::from("gpt-4o-mini"))
        );
        assert_eq!(
            attr(root, "gen_ai.usage.input_tokens"),
            Some(&Value::I64(812))
        );
        assert_eq!(
            attr(root, "gen_ai.usage.output_tokens"),
            Some(&Value::I64(64))
        );
        assert_eq!(attr(root, "http.route"), Some(&Value::from("/ask")));
        assert_eq!(attr(root, "cairn.outcome"), Some(&Value::from("answered")));
        assert_eq!(attr(root, "cairn.dropped_citations"), Some(&Value::I64(1)));
        assert_eq!(
            attr(root, "cairn.context.near_duplicates"),
            Some(&Value::I64(2))
        );
        assert_eq!(
            attr(root, "cairn.retrieved.chunk_ids"),
            Some(&strings(["c1".to_string(), "c2".to_string()]))
        );
        assert_eq!(attr(root, "error.type"), None);
        assert_eq!(root.status, Status::Unset);
        assert_eq!(
            attr(&out[4], "gen_ai.operation.name"),
            Some(&Value::from("chat"))
        );
        for s in &out {
            assert_eq!(attr(s, "cairn.question"), None);
            assert_eq!(attr(s, "cairn.answer"), None);
        }
        let with_text = spans(&sample(), &kinds(), true, ids());
        assert_eq!(
            attr(&with_text[0], "cairn.question"),
            Some(&Value::from("secret question"))
        );
    }

    #[test]
    fn a_cache_hit_has_no_model_call_and_a_failure_is_an_error() {
        let mut t = sample();
        t.cache_hit = Some("semantic".into());
        t.http_route = None;
        let out = spans(&t, &kinds(), false, ids());
        assert!(out.iter().all(|s| !s.name.starts_with("chat")));
        assert_eq!(out[0].name, "cairn.answer");
        assert_eq!(
            attr(&out[0], "cairn.cache_hit.kind"),
            Some(&Value::from("semantic"))
        );

        let mut t = sample();
        t.outcome = "retrieval_failed".into();
        t.timings = Timings {
            total_ms: 5.0,
            ..Timings::default()
        };
        t.model = None;
        let out = spans(&t, &kinds(), false, ids());
        assert_eq!(out.len(), 1, "no stage ran, so only the request span");
        assert_eq!(out[0].status, Status::error("retrieval_failed"));
        assert_eq!(
            attr(&out[0], "error.type"),
            Some(&Value::from("retrieval_failed"))
        );
    }

    fn check(raw: &mut RawOtlp, env: &[(&str, &str)]) -> Result<(), String> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        validate(raw, "config.toml", &|k| env.get(k).cloned()).map_err(|e| e.to_string())
    }

    #[test]
    fn endpoint_and_headers_are_validated_and_resolved() {
        let mut off = RawOtlp::default();
        assert_eq!(check(&mut off, &[]), Ok(()));
        assert!(!off.enabled());

        let mut ok = RawOtlp {
            endpoint: " http://collector:4318/ ".into(),
            headers: BTreeMap::from([
                ("authorization".to_string(), "env:OTLP_TOKEN".to_string()),
                ("x-scope-orgid".to_string(), "tenant-a".to_string()),
            ]),
            ..RawOtlp::default()
        };
        assert_eq!(check(&mut ok, &[("OTLP_TOKEN", "Bearer t0k")]), Ok(()));
        assert_eq!(ok.endpoint, "http://collector:4318");
        assert_eq!(ok.headers["authorization"], "Bearer t0k");
        assert_eq!(ok.headers["x-scope-orgid"], "tenant-a");
        assert!(!format!("{ok:?}").contains("t0k"), "Debug hides values");

        let bad = |endpoint: &str| {
            check(
                &mut RawOtlp {
                    endpoint: endpoint.into(),
                    ..RawOtlp::default()
                },
                &[],
            )
            .unwrap_err()
        };
        let e = bad("collector:4318");
        assert!(e.contains("traces.otlp.endpoint"), "{e}");
        assert!(bad("not a url").contains("is not a URL"));
        assert!(bad("grpc://collector:4317").contains("http://"));
        assert!(bad("http://u:p@collector:4318").contains("credentials"));
        assert!(bad("http://collector:4318/v1/traces").contains("appends /v1/traces"));

        let mut missing = RawOtlp {
            endpoint: "http://collector:4318".into(),
            headers: BTreeMap::from([("authorization".to_string(), "env:NOPE".to_string())]),
            ..RawOtlp::default()
        };
        let e = check(&mut missing, &[]).unwrap_err();
        assert!(
            e.contains("traces.otlp.headers.authorization") && e.contains("NOPE"),
            "{e}"
        );

        let mut bad_name = RawOtlp {
            endpoint: "http://collector:4318".into(),
            headers: BTreeMap::from([("bad header".to_string(), "x".to_string())]),
            ..RawOtlp::default()
        };
        assert!(
            check(&mut bad_name, &[])
                .unwrap_err()
                .contains("header name")
        );
    }
}
