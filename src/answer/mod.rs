//! The answer pipeline behind `/ask`, `/v1/chat/completions` and `cairn ask`: retrieve →
//! relevance gate → context → prompt → the gateway's [`crate::providers::Router::stream_until`]
//! (retries, time-outs, breakers, budget, cost; fallback only before the first token) →
//! citation verification → typed events. Producers send [`AnswerEvent`]s into a channel; a
//! closed channel (client gone) stops the pipeline and cancels the upstream call.
//!
//! Must not: call a provider directly (every model call goes through the gateway), or show a
//! client an `[n]` that was not given to the model.

pub mod cache;
pub mod citations;
pub mod context;
pub mod events;
pub mod handoff;
pub mod load;
pub mod privacy;
pub mod prompt;
pub mod settings;
pub mod threads;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use cairn_index::Hit;

use crate::answer::cache::{Cached, HitKind};
use crate::answer::citations::{CitationFilter, best_quote};
use crate::answer::context::{ContextOptions, Passage, SelectionStats};
use crate::answer::events::{AnswerEvent, AskRequest, Citation, ModeView, UsageView};
use crate::answer::privacy::Unmasker;
use crate::engine::Engine;
use crate::observe::audit::AuditEvent;
use crate::observe::trace::{CondenseTrace, RetrievedChunk, Trace};
use crate::providers::Role;
use crate::providers::cost::Exhausted;
use crate::providers::gateway::Attempt;
use crate::providers::{
    ChatEvent, ChatRequest, ChatStream, ContextPassage, FinishReason, GatewayError, TargetInfo,
};
use crate::retrieval::HitView;
use crate::retrieval::condense::{self, Condense};
use crate::retrieval::condense_model::{self, Fallback};

/// Whether a hit is relevant enough to ground an answer.
pub(crate) fn relevant(hit: &Hit, min_similarity: f32) -> bool {
    hit.breakdown.bm25_score.is_some_and(|s| s > 0.0)
        || hit
            .breakdown
            .vector_similarity
            .is_some_and(|s| s >= min_similarity)
}

/// Sends events to the client and records what was sent for the trace.
pub(crate) struct Out {
    pub(crate) tx: mpsc::Sender<AnswerEvent>,
    /// The client left (its receiver is closed).
    pub(crate) gone: bool,
    /// Documents of the citations sent, in order of first citation (the trace's `cited`).
    pub(crate) cited: Vec<String>,
    /// The hand-off the answer ended with (its `done` or `error` event), for the
    /// `answer.handoff` webhook.
    pub(crate) handoff: Option<handoff::Handoff>,
}

impl Out {
    pub(crate) fn new(tx: mpsc::Sender<AnswerEvent>) -> Out {
        Out {
            tx,
            gone: false,
            cited: Vec::new(),
            handoff: None,
        }
    }

    /// Tells the client an internal error happened (details stay in the log).
    pub(crate) async fn internal_error(&mut self) -> &'static str {
        self.send(AnswerEvent::Error {
            code: "internal",
            message: "An internal error occurred.".into(),
        })
        .await;
        "internal"
    }

    pub(crate) async fn send(&mut self, ev: AnswerEvent) -> bool {
        match &ev {
            AnswerEvent::Done { handoff, .. } => self.handoff = *handoff,
            AnswerEvent::Error { code, .. } => self.handoff = Some(handoff::of_error(code)),
            _ => {}
        }
        if self.gone {
            return false;
        }
        if let AnswerEvent::Citation(c) = &ev
            && !self.cited.contains(&c.doc_id)
        {
            self.cited.push(c.doc_id.clone());
        }
        if self.tx.send(ev).await.is_err() {
            self.gone = true;
        }
        !self.gone
    }
}

/// Runs the pipeline, sending events to `tx`, and records a trace whatever the outcome.
/// Returns when done or when the receiver is gone (client disconnected).
pub async fn answer(
    engine: Arc<Engine>,
    req: AskRequest,
    caller: String,
    tx: mpsc::Sender<AnswerEvent>,
) {
    answer_on(engine, req, caller, None, tx).await
}

/// As [`answer`] for a question that came in on the HTTP route `http_route` (kept in the
/// trace): the retrieve-then-answer pipeline, recording a trace whatever the outcome. Every
/// answer of the server starts at [`crate::agent::answer_as`], which picks the mode and counts
/// interactive load.
pub async fn answer_on(
    engine: Arc<Engine>,
    req: AskRequest,
    caller: String,
    http_route: Option<&'static str>,
    tx: mpsc::Sender<AnswerEvent>,
) {
    let started = Instant::now();
    let mut trace = start_trace(&engine, &req, caller, http_route, &engine.prompt.version);
    let mut out = Out::new(tx);
    let deadline = request_deadline(&engine);
    let outcome = tokio::time::timeout(deadline, run(&engine, &req, &mut trace, &mut out, started))
        .await
        .ok();
    end_trace(&engine, trace, &mut out, outcome, started).await;
}

/// The trace of an answer starting now.
pub(crate) fn start_trace(
    engine: &Engine,
    req: &AskRequest,
    caller: String,
    http_route: Option<&'static str>,
    prompt_version: &str,
) -> Trace {
    Trace {
        id: uuid::Uuid::new_v4().to_string(),
        at: chrono::Utc::now().to_rfc3339(),
        route: engine.config.answer.route.clone(),
        http_route: http_route.map(str::to_string),
        caller,
        thread_id: req.thread_id.clone(),
        prompt_version: prompt_version.to_string(),
        question: Some(req.question.clone()),
        ..Trace::default()
    }
}

/// How long an answer may take (`[server] request_timeout_secs`).
pub(crate) fn request_deadline(engine: &Engine) -> std::time::Duration {
    std::time::Duration::from_secs(engine.config.server.request_timeout_secs.max(1))
}

/// Ends an answer's trace: `outcome` is `None` when the request deadline stopped it (the client
/// is told), the outcome and total time are recorded, with metrics and one log line.
pub(crate) async fn end_trace(
    engine: &Engine,
    mut trace: Trace,
    out: &mut Out,
    outcome: Option<&'static str>,
    started: Instant,
) {
    let outcome = match outcome {
        Some(outcome) => outcome,
        None => {
            // Dropping the pipeline future cancelled the upstream call.
            let secs = request_deadline(engine).as_secs();
            let _ = out
                .send(AnswerEvent::Error {
                    code: "deadline_exceeded",
                    message: format!(
                        "The answer took longer than {secs} s and was stopped; try again or ask a narrower question."
                    ),
                })
                .await;
            "deadline_exceeded"
        }
    };
    trace.outcome = match (out.gone, outcome) {
        (true, _) => "client_disconnected".to_string(),
        (false, o) => o.to_string(),
    };
    trace.cited = std::mem::take(&mut out.cited);
    trace.timings.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    crate::observe::metrics::request("ask", &trace.outcome, started.elapsed().as_secs_f64());
    if let Some(t) = trace.timings.first_token_ms {
        metrics::histogram!(crate::observe::metrics::FIRST_TOKEN_SECONDS).record(t / 1000.0);
    }
    tracing::info!(
        trace_id = %trace.id,
        prompt_version = %trace.prompt_version,
        provider = trace.provider.as_deref().unwrap_or(""),
        outcome = %trace.outcome,
        ms = trace.timings.total_ms as u64,
        "answer"
    );
    if let Some(h) = out.handoff {
        announce_handoff(engine, &trace, h);
    }
    engine.traces.push(trace);
}

/// Emits `answer.handoff` for an answer a human should take over: the trace id, the reason,
/// the outcome and the caller; the question only with `[traces] record_text` (question text
/// leaves the process only then).
fn announce_handoff(engine: &Engine, trace: &Trace, h: handoff::Handoff) {
    let mut data = serde_json::json!({
        "trace_id": trace.id,
        "reason": h.reason,
        "outcome": trace.outcome,
        "caller": trace.caller,
        "at": trace.at,
    });
    if engine.config.traces.record_text {
        data["question"] = serde_json::json!(trace.question);
    }
    engine.webhooks.emit("answer.handoff", data);
}

pub(crate) fn no_usage() -> UsageView {
    UsageView {
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: 0.0,
        model: String::new(),
        provider: String::new(),
        cache_hit: false,
    }
}

/// What a client is told when the budget refuses a call: which cap, and when to come back.
pub fn budget_message(e: &Exhausted) -> String {
    match e.retry_after_secs() {
        Some(_) => format!(
            "The answer budget is used up ({e}); it resets at 00:00 UTC. Ask the operator to raise [budget] if this is too low."
        ),
        None => format!(
            "The answer budget refuses this request ({e}); ask the operator to adjust [budget]."
        ),
    }
}

/// Providers tried before the one that served (or before giving up), for the trace and metrics.
pub(crate) fn record_attempts(attempts: &[Attempt], trace: &mut Trace) {
    for a in attempts {
        match &a.error {
            Some(e) => {
                metrics::counter!(crate::observe::metrics::PROVIDER_ERRORS, "provider" => a.provider.clone())
                    .increment(1);
                trace.provider_errors.push(format!("{}: {e}", a.provider));
            }
            None => trace
                .provider_errors
                .push(format!("{}: circuit breaker open, not called", a.provider)),
        }
    }
}

/// Tokens and cost of the serving call (as metered by the gateway) into the trace and metrics.
fn record_usage(info: &TargetInfo, trace: &mut Trace) {
    let usage = info.usage();
    trace.input_tokens = usage.input_tokens;
    trace.output_tokens = usage.output_tokens;
    trace.cost_usd = info.cost_usd();
    count_usage(info);
}

/// Adds a served call's tokens and cost to the metrics.
pub(crate) fn count_usage(info: &TargetInfo) {
    let usage = info.usage();
    metrics::counter!(crate::observe::metrics::TOKENS, "kind" => "input")
        .increment(usage.input_tokens);
    metrics::counter!(crate::observe::metrics::TOKENS, "kind" => "output")
        .increment(usage.output_tokens);
    // Dollars are fractional, so the running total is a gauge only ever increased.
    metrics::gauge!(crate::observe::metrics::COST, "provider" => info.provider_name.clone())
        .increment(info.cost_usd());
}

/// A prompt handed to the gateway, for the audit log: written exactly once, whatever happens
/// after — by [`SentPrompt::record`] when the gateway answered, or when dropped unrecorded
/// (the request's deadline or a panic ended the pipeline first), as `cancelled`: the prompt may
/// have reached any provider of the route by then.
pub(crate) struct SentPrompt<'a> {
    engine: &'a Engine,
    trace_id: String,
    caller: String,
    route: &'a str,
    chat: &'a ChatRequest,
    chunk_ids: Vec<String>,
    masked: BTreeMap<String, usize>,
    recorded: bool,
}

impl<'a> SentPrompt<'a> {
    /// The prompt `chat` of `trace`'s request, handed to `route`; not yet recorded.
    pub(crate) fn new(
        engine: &'a Engine,
        trace: &Trace,
        (route, chat): (&'a str, &'a ChatRequest),
        chunk_ids: Vec<String>,
        masked: BTreeMap<String, usize>,
    ) -> SentPrompt<'a> {
        SentPrompt {
            engine,
            trace_id: trace.id.clone(),
            caller: trace.caller.clone(),
            route,
            chat,
            chunk_ids,
            masked,
            recorded: false,
        }
    }

    /// Records which provider received the prompt (`served`, and the `attempts` that were
    /// called and failed) and what became of it (`outcome`).
    pub(crate) fn record(
        mut self,
        served: Option<&TargetInfo>,
        attempts: &[Attempt],
        outcome: &str,
    ) {
        self.recorded = true;
        self.write(served, attempts, outcome);
    }

    /// One `provider_request` line: ids and the prompt's hash, its text only if configured.
    fn write(&self, served: Option<&TargetInfo>, attempts: &[Attempt], outcome: &str) {
        let audit = &self.engine.audit;
        // Assembling and hashing the prompt is per request: skip it when nothing is recorded.
        if !audit.enabled() {
            return;
        }
        let text = crate::observe::audit::prompt_text(self.chat);
        audit.record_or_warn(&AuditEvent::ProviderRequest {
            trace_id: self.trace_id.clone(),
            caller: self.caller.clone(),
            route: self.route.to_string(),
            provider: served.map(|i| i.provider_name.clone()),
            model: served.map(|i| i.model.clone()),
            tried: attempts
                .iter()
                .filter(|a| a.error.is_some())
                .map(|a| a.provider.clone())
                .collect(),
            chunk_ids: self.chunk_ids.clone(),
            prompt_sha256: crate::observe::audit::sha256_hex(&text),
            prompt_chars: text.chars().count(),
            masked: self.masked.clone(),
            outcome: outcome.to_string(),
            prompt: audit.records_text().then_some(text),
        });
    }
}

impl Drop for SentPrompt<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.write(None, &[], "cancelled");
        }
    }
}

/// Ends an answer the gateway gave no stream for, with the error's stable code.
pub(crate) async fn refused(
    engine: &Engine,
    e: GatewayError,
    trace: &mut Trace,
    out: &mut Out,
) -> &'static str {
    let code = e.code();
    let message = match &e {
        GatewayError::AllFailed { attempts, .. } => {
            record_attempts(attempts, trace);
            tracing::warn!(errors = ?trace.provider_errors, "every provider of the route failed");
            engine.config.answer.fallback_text.clone()
        }
        GatewayError::BudgetExhausted(x) => {
            tracing::info!(cap = %x, "answer refused by the budget");
            budget_message(x)
        }
        GatewayError::Cancelled => "The answer was cancelled.".into(),
        // Config validation guarantees the answer route; a stream never reports the other two.
        GatewayError::NoRoute(_)
        | GatewayError::SchemaInvalid(_)
        | GatewayError::Interrupted(_) => {
            tracing::error!(error = %e, "answer route unusable");
            "An internal error occurred.".into()
        }
    };
    let _ = out.send(AnswerEvent::Error { code, message }).await;
    code
}

/// The pipeline as its stages; returns the outcome recorded in the trace. Authorisation and
/// request checks happened before (`http::ask::validate_ask`, or the CLI's own request).
async fn run(
    engine: &Arc<Engine>,
    req: &AskRequest,
    trace: &mut Trace,
    out: &mut Out,
    started: Instant,
) -> &'static str {
    let query = condense_query(engine, req, trace, started).await;
    let retrieved = match retrieve(engine, req, query, trace, out, started).await {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    if !announce_hits(&retrieved, trace, out).await {
        return "client_disconnected";
    }
    if retrieved.context.is_empty() {
        return no_answer(engine, req, trace, out).await;
    }
    let key = CacheKey::of(engine, req, &retrieved.context);
    if let Some((cached, kind)) = engine
        .cache
        .get(&req.question, &retrieved.question_vec, &key.key)
    {
        return replay_cached(engine, req, (cached, kind), trace, out, started).await;
    }
    let prompt = mask_and_render(engine, req, &retrieved.query, &retrieved.context);
    // Dropping the guard (any return below) cancels an upstream call still running.
    let cancel = CancellationToken::new();
    let _cancel_on_exit = cancel.clone().drop_guard();
    let deadline = started + engine.router.time.request;
    let opened = open_stream(engine, req, &prompt, &key, (cancel, deadline), trace, out).await;
    let (stream, info) = match opened {
        Ok(opened) => opened,
        Err(outcome) => return outcome,
    };
    let generated = match generate(engine, stream, info, prompt, trace, out, started).await {
        Ok(g) => g,
        Err(outcome) => return outcome,
    };
    finish(engine, req, &retrieved, &key, generated, trace, out).await
}

/// What retrieval produced for one question.
struct Retrieved {
    /// The query retrieval ran on: the question, or a follow-up made standalone.
    query: String,
    hits: Vec<Hit>,
    /// The relevant hits as numbered passages (`[n]` is the position + 1).
    context: Vec<Passage>,
    selection: SelectionStats,
    question_vec: Vec<f32>,
}

/// Stage: embed the question, retrieve (and rerank), and select the context — CPU-bound
/// (embedding, index, neighbour lookups in the store), so on a blocking thread. Failures are
/// told to the client; the error is the outcome.
async fn retrieve(
    engine: &Arc<Engine>,
    req: &AskRequest,
    query: String,
    trace: &mut Trace,
    out: &mut Out,
    started: Instant,
) -> Result<Retrieved, &'static str> {
    let eng = engine.clone();
    let retrieval = &engine.config.retrieval;
    let (filter, k) = (req.filter.clone(), req.top_k);
    let min_sim = retrieval.min_similarity;
    let options = ContextOptions {
        max_words: retrieval.max_context_words,
        near_duplicate: retrieval.near_duplicate,
        neighbours: retrieval.neighbours,
    };
    let done = tokio::task::spawn_blocking(move || {
        let embed_started = Instant::now();
        let question_vec = eng.embed_query(&query)?;
        let embed_ms = embed_started.elapsed().as_secs_f64() * 1000.0;
        let (hits, rerank_ms) =
            eng.retriever()
                .retrieve(&query, question_vec.clone(), k, filter)?;
        let retrieve_ms = started.elapsed().as_secs_f64() * 1000.0;
        // Context: relevant hits as passages (near-duplicates out, cut chunks completed by
        // their neighbours), within the word budget.
        let candidates: Vec<&Hit> = hits.iter().filter(|h| relevant(h, min_sim)).collect();
        let (context, selection) =
            context::select(&candidates, &options, &mut |doc| eng.neighbour_chunks(doc));
        let retrieved = Retrieved {
            query,
            hits,
            context,
            selection,
            question_vec,
        };
        Ok::<_, anyhow::Error>((retrieved, [embed_ms, rerank_ms, retrieve_ms]))
    })
    .await;
    match done {
        Ok(Ok((retrieved, [embed_ms, rerank_ms, retrieve_ms]))) => {
            trace.timings.embed_ms = embed_ms;
            trace.timings.rerank_ms = rerank_ms;
            trace.timings.retrieve_ms = retrieve_ms;
            Ok(retrieved)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "retrieval failed");
            out.send(AnswerEvent::Error {
                code: "retrieval_failed",
                message:
                    "Searching the index failed; try again, and tell the operator if it persists."
                        .into(),
            })
            .await;
            Err("retrieval_failed")
        }
        Err(e) => {
            tracing::error!(error = %e, "retrieval task panicked");
            Err(out.internal_error().await)
        }
    }
}

/// Stage: the query retrieval runs on for `req` — its question, made standalone from the
/// caller's earlier turns as `[retrieval] condense` says (assistant turns never steer
/// retrieval); with `model`, the condense model's rewrite, or the heuristic's when the model
/// failed. Which condenser ran, why it fell back and what the call cost go to the trace.
async fn condense_query(
    engine: &Engine,
    req: &AskRequest,
    trace: &mut Trace,
    started: Instant,
) -> String {
    let earlier: Vec<&str> = req
        .conversation
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .collect();
    let mode = engine.config.retrieval.condense;
    let (query, record) = match mode {
        Condense::Model => condense_by_model(engine, req, &earlier, trace, started).await,
        Condense::Heuristic | Condense::Off => (
            None,
            CondenseTrace {
                condenser: mode.label().into(),
                ..CondenseTrace::default()
            },
        ),
    };
    trace.condense = Some(record);
    query.unwrap_or_else(|| {
        let mode = if mode == Condense::Off {
            mode
        } else {
            Condense::Heuristic
        };
        condense::standalone_query(mode, &req.question, &earlier)
    })
}

/// The condense model's query for `req` (`None`: the heuristic makes it) and the trace of the
/// call. The model sees the question and the caller's `earlier` turns masked (`[privacy]`);
/// its query is mapped back. A first question (no earlier turns) is retrieved as asked: the
/// model is called for it only to hear whether the caller asks for a person.
async fn condense_by_model(
    engine: &Engine,
    req: &AskRequest,
    earlier: &[&str],
    trace: &Trace,
    started: Instant,
) -> (Option<String>, CondenseTrace) {
    let settings = &engine.config.retrieval;
    let mut record = CondenseTrace {
        condenser: Condense::Heuristic.label().into(),
        ..CondenseTrace::default()
    };
    let Some(prompt) = &engine.condense_prompt else {
        // The engine loads the prompt whenever condense = "model".
        record.fallback = Some(Fallback::ProviderError.reason().into());
        return (None, record);
    };
    record.prompt_version = Some(prompt.version.clone());
    let mut masking = engine.config.privacy.start();
    let question = masking.mask_caller(&req.question);
    let turns: Vec<String> = earlier.iter().map(|t| masking.mask_caller(t)).collect();
    let chat = prompt.render(&question, &turns, settings.condense_max_tokens);
    let route = (condense_model::ROUTE, &chat);
    let sent = SentPrompt::new(engine, trace, route, Vec::new(), masking.counts().clone());
    let began = Instant::now();
    let timeout = std::time::Duration::from_millis(settings.condense_timeout_ms);
    let deadline = started + engine.router.time.request;
    let budget_key = req.budget_key.as_deref();
    let call = condense_model::call(&engine.router, &chat, budget_key, timeout, deadline).await;
    record.ms = began.elapsed().as_secs_f64() * 1000.0;
    let outcome = match &call.reply {
        Ok(_) => "served",
        Err(f) => f.reason(),
    };
    sent.record(call.info.as_ref(), &call.attempts, outcome);
    if let Some(info) = &call.info {
        record_condense_usage(&mut record, info);
    }
    record.error = call.error;
    let read = call
        .reply
        .and_then(|r| condense_model::read_reply(&r.text, r.finish, &question, &turns));
    // A first question is retrieved as asked; a follow-up's query gets the masked values back.
    let original = earlier.is_empty().then_some(req.question.as_str());
    let query = adopt_condensed(read, &mut record, original, masking.unmasker());
    (query, record)
}

/// Tokens, cost and the serving provider of the condense call into its trace and the metrics.
fn record_condense_usage(record: &mut CondenseTrace, info: &TargetInfo) {
    let usage = info.usage();
    record.provider = Some(info.provider_name.clone());
    record.model = Some(info.model.clone());
    (record.input_tokens, record.output_tokens) = (usage.input_tokens, usage.output_tokens);
    record.cost_usd = info.cost_usd();
    count_usage(info);
}

/// The query the condense model's reply gives (`original` when given, else the reply's query
/// unmasked), recording whether it asked for a person; `None` with the fallback reason
/// recorded when the reply cannot be used.
fn adopt_condensed(
    read: Result<condense_model::Reply, Fallback>,
    record: &mut CondenseTrace,
    original: Option<&str>,
    mut unmasker: Unmasker,
) -> Option<String> {
    let query = read.and_then(|reply| {
        record.human = reply.human;
        reply.query
    });
    match query {
        Ok(query) => {
            record.condenser = Condense::Model.label().into();
            Some(original.map_or_else(|| unmasker.apply(&query), str::to_string))
        }
        Err(f) => {
            tracing::info!(
                reason = f.reason(),
                "condense model not used; the heuristic makes the query"
            );
            record.fallback = Some(f.reason().into());
            None
        }
    }
}

/// Records the query, the hits and the context selection in the trace and sends the query and
/// hits; false when the client is gone.
async fn announce_hits(retrieved: &Retrieved, trace: &mut Trace, out: &mut Out) -> bool {
    trace.query = Some(retrieved.query.clone());
    trace.retrieved = retrieved
        .hits
        .iter()
        .map(|h| RetrievedChunk {
            chunk_id: h.chunk_id.clone(),
            score: h.score,
        })
        .collect();
    let hits = retrieved.hits.iter().map(HitView::from_hit).collect();
    let query = retrieved.query.clone();
    if !out.send(AnswerEvent::Retrieval { query, hits }).await {
        return false;
    }
    trace.context_near_duplicates = retrieved.selection.near_duplicates;
    trace.context_neighbours = retrieved.selection.neighbours_added;
    true
}

/// The `done` event of a plain answer that ended with `outcome`, saying whether a human
/// should take over (and, for an agent request answered this way, why it ran as plain RAG).
fn done(
    engine: &Engine,
    req: &AskRequest,
    trace: &Trace,
    outcome: &'static str,
    dropped_citations: usize,
) -> AnswerEvent {
    let phrases = &engine.config.answer.handoff_phrases;
    let requested = handoff::requested(&req.question, phrases)
        || (engine.config.retrieval.condense_handoff
            && trace.condense.as_ref().is_some_and(|c| c.human));
    AnswerEvent::Done {
        trace_id: trace.id.clone(),
        outcome,
        dropped_citations,
        handoff: handoff::of_done(requested, outcome, dropped_citations),
        mode: ModeView::rag(req.agent.is_some()),
    }
}

/// Stage: nothing cleared the relevance gate — say so without calling a model.
async fn no_answer(
    engine: &Engine,
    req: &AskRequest,
    trace: &mut Trace,
    out: &mut Out,
) -> &'static str {
    metrics::counter!(crate::observe::metrics::NO_ANSWER).increment(1);
    let text = engine.config.answer.no_answer_text.clone();
    trace.answer = Some(text.clone());
    let _ = out.send(AnswerEvent::Token(text)).await;
    let _ = out.send(AnswerEvent::Usage(no_usage())).await;
    let _ = out.send(done(engine, req, trace, "no_answer", 0)).await;
    "no_answer"
}

/// The answer cache's key: the chunks given to the model with their documents' content
/// hashes, the conversation (every turn), the route's first target (provider and model) and
/// the prompt version. Only answers that target served are stored (see [`cacheable`]), so a
/// hit is always the first choice's own answer, never a fallback's.
struct CacheKey {
    /// (chunk id, content hash) of every chunk given to the model, in prompt order.
    versions: Vec<(String, String)>,
    key: String,
}

impl CacheKey {
    fn of(engine: &Engine, req: &AskRequest, context: &[Passage]) -> CacheKey {
        let first = engine
            .router
            .targets(&engine.config.answer.route)
            .first()
            .map(|t| (t.provider_name.as_str(), t.model.as_str()))
            .unwrap_or_default();
        let versions: Vec<(String, String)> = context
            .iter()
            .flat_map(|p| {
                p.chunks
                    .iter()
                    .map(|c| (c.chunk_id(), p.document.content_hash.clone()))
            })
            .collect();
        let key = crate::answer::cache::context_key(&crate::answer::cache::KeyParts {
            chunks: &versions,
            conversation: &req.conversation,
            target: first,
            prompt_version: &engine.prompt.version,
        });
        CacheKey { versions, key }
    }
}

/// Whether an answer may be stored in the cache: complete (`answered`, or the model's own
/// empty answer), served by the route's first target (the one the key names), and holding no
/// value that only this caller's question or conversation carried.
fn cacheable(outcome: &str, info: &TargetInfo, shown: &Shown) -> bool {
    matches!(outcome, "answered" | "no_answer")
        && info.target_index == 0
        && !shown.unmasker.used_caller_value()
}

/// Stage: a cache hit — the stored answer and citations, at no cost.
async fn replay_cached(
    engine: &Engine,
    req: &AskRequest,
    (cached, kind): (Cached, HitKind),
    trace: &mut Trace,
    out: &mut Out,
    started: Instant,
) -> &'static str {
    metrics::counter!(crate::observe::metrics::CACHE_HITS, "kind" => kind.label()).increment(1);
    trace.cache_hit = Some(kind.label().to_string());
    trace.timings.first_token_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    trace.answer = Some(cached.answer.clone());
    trace.model = Some(cached.usage.model.clone());
    trace.provider = Some(cached.usage.provider.clone());
    if !out.send(AnswerEvent::Token(cached.answer.clone())).await {
        return "client_disconnected";
    }
    for c in cached.citations {
        if !out.send(AnswerEvent::Citation(c)).await {
            return "client_disconnected";
        }
    }
    let mut usage = cached.usage;
    usage.cache_hit = true;
    usage.cost_usd = 0.0;
    let _ = out.send(AnswerEvent::Usage(usage)).await;
    let _ = out.send(done(engine, req, trace, cached.outcome, 0)).await;
    cached.outcome
}

/// The prompt as the model sees it, with what maps its answer back.
struct MaskedPrompt {
    chat: ChatRequest,
    /// Restores this request's own values in the answer.
    unmasker: Unmasker,
    /// Values masked, by kind (for the audit log).
    masked: BTreeMap<String, usize>,
    passages: usize,
}

/// Stage: mask and render. Data minimisation (`[privacy]`): the model sees placeholders for
/// personal data in the question, the conversation and the passages — every provider of the
/// route alike, as which one serves is only known after the call. Its answer is mapped back
/// with this request's own values, which the caller could see: they came from its question or
/// its access-filtered retrieval. Citations quote the unmasked chunks (`context`). A follow-up's
/// standalone `query` (the caller's words too) goes along for the extractive provider.
fn mask_and_render(
    engine: &Engine,
    req: &AskRequest,
    query: &str,
    context: &[Passage],
) -> MaskedPrompt {
    let mut masking = engine.config.privacy.start();
    let passages: Vec<ContextPassage> = context
        .iter()
        .enumerate()
        .map(|(i, p)| ContextPassage {
            n: i + 1,
            title: masking.mask(&p.document.title),
            text: masking.mask(&p.text),
        })
        .collect();
    let question = masking.mask_caller(&req.question);
    let conversation = masking.mask_turns(&req.conversation);
    let mut chat = engine.prompt.render(&question, &passages, &conversation);
    if query != req.question {
        chat.query = Some(masking.mask_caller(query));
    }
    MaskedPrompt {
        chat,
        unmasker: masking.unmasker(),
        masked: masking.counts().clone(),
        passages: passages.len(),
    }
}

/// Stage: hand the prompt to the gateway, which retries, times out, breaks circuits, limits
/// concurrency, checks the budget and falls back across the route — only until the first
/// token, which it holds back until it hands the stream over. A client that leaves meanwhile
/// cancels the upstream call. Every prompt handed over is audited ([`SentPrompt`]).
async fn open_stream(
    engine: &Engine,
    req: &AskRequest,
    prompt: &MaskedPrompt,
    key: &CacheKey,
    (cancel, deadline): (CancellationToken, Instant),
    trace: &mut Trace,
    out: &mut Out,
) -> Result<(ChatStream, TargetInfo), &'static str> {
    let route = &engine.config.answer.route;
    let chunk_ids = key.versions.iter().map(|(id, _)| id.clone()).collect();
    let sent = SentPrompt::new(
        engine,
        trace,
        (route, &prompt.chat),
        chunk_ids,
        prompt.masked.clone(),
    );
    let budget_key = req.budget_key.as_deref();
    let opened = tokio::select! {
        r = engine.router.stream_until(route, &prompt.chat, cancel, budget_key, deadline) => r,
        _ = out.tx.closed() => {
            // The prompt may have reached a provider before the client left.
            sent.record(None, &[], "client_disconnected");
            out.gone = true;
            return Err("client_disconnected");
        }
    };
    match opened {
        Ok((stream, info)) => {
            sent.record(Some(&info), &info.attempts, "served");
            record_attempts(&info.attempts, trace);
            trace.provider = Some(info.provider_name.clone());
            trace.model = Some(info.model.clone());
            Ok((stream, info))
        }
        Err(e) => {
            let attempts = match &e {
                GatewayError::AllFailed { attempts, .. } => attempts.as_slice(),
                _ => &[],
            };
            sent.record(None, attempts, e.code());
            Err(refused(engine, e, trace, out).await)
        }
    }
}

/// The answer as the client sees it: the model's deltas through the unmasker (this request's
/// own values back in place of placeholders) and the citation filter.
struct Shown {
    text: String,
    /// The `[n]` markers shown (`used`) and dropped.
    filter: CitationFilter,
    unmasker: Unmasker,
}

impl Shown {
    /// Feeds a delta; returns the text that can be shown now.
    fn push(&mut self, delta: &str) -> String {
        let shown = self.filter.push(&self.unmasker.push(delta));
        self.text.push_str(&shown);
        shown
    }

    /// Flushes what the unmasker and the filter held back at the end of the stream.
    fn finish(&mut self) -> String {
        let mut tail = self.filter.push(&self.unmasker.finish());
        tail.push_str(&self.filter.finish());
        self.text.push_str(&tail);
        tail
    }
}

/// What the model said, as shown to the client, and the call that said it.
struct Generated {
    shown: Shown,
    info: TargetInfo,
    outcome: &'static str,
}

/// Stage: generate — stream the model's deltas through the unmasker and the citation filter
/// to the client, then meter the call. The outcome says how the model stopped: `answered`
/// (complete), `truncated` (length limit), `filtered` (content filter) — or, as an error,
/// `provider_error` (the model reported a failure) and `provider_stream_failed` (the stream
/// broke). A complete empty answer becomes the no-answer text (`no_answer`).
async fn generate(
    engine: &Engine,
    mut stream: ChatStream,
    info: TargetInfo,
    prompt: MaskedPrompt,
    trace: &mut Trace,
    out: &mut Out,
    started: Instant,
) -> Result<Generated, &'static str> {
    let mut shown = Shown {
        text: String::new(),
        filter: CitationFilter::new(1..=prompt.passages),
        unmasker: prompt.unmasker,
    };
    let streamed = relay(&mut stream, &info, &mut shown, trace, out, started).await;
    // Ending the call charges its cost to the budget and frees its concurrency permit.
    drop(stream);
    record_usage(&info, trace);
    let finish = match streamed {
        Ok(finish) => finish,
        Err(outcome) => return Err(cut_off(outcome, shown, trace, out).await),
    };
    let tail = shown.finish();
    if !tail.is_empty() && !out.send(AnswerEvent::Token(tail)).await {
        return Err("client_disconnected");
    }
    if finish == Some(FinishReason::Error) {
        return Err(cut_off("provider_error", shown, trace, out).await);
    }
    let outcome = match finish {
        Some(FinishReason::Length) => "truncated",
        Some(FinishReason::ContentFilter) => "filtered",
        _ if shown.text.trim().is_empty() => {
            metrics::counter!(crate::observe::metrics::NO_ANSWER).increment(1);
            shown.text = engine.config.answer.no_answer_text.clone();
            if !out.send(AnswerEvent::Token(shown.text.clone())).await {
                return Err("client_disconnected");
            }
            "no_answer"
        }
        _ => "answered",
    };
    Ok(Generated {
        shown,
        info,
        outcome,
    })
}

/// Ends an answer the provider did not complete: the text shown so far goes to the trace, and
/// the client is told the part it saw is incomplete (unless it left). Returns the outcome.
async fn cut_off(
    outcome: &'static str,
    shown: Shown,
    trace: &mut Trace,
    out: &mut Out,
) -> &'static str {
    trace.answer = Some(shown.text);
    let message = match outcome {
        "provider_stream_failed" => {
            "The answer was cut off by a provider error; the part above is incomplete."
        }
        "provider_error" => {
            "The model provider ended the answer with an error; the part above is incomplete."
        }
        _ => return outcome,
    };
    let _ = out
        .send(AnswerEvent::Error {
            code: outcome,
            message: message.into(),
        })
        .await;
    outcome
}

/// Relays the provider's stream to the client until it ends, the client leaves or the
/// provider fails; returns why the model stopped (`None`: the stream ended without saying).
async fn relay(
    stream: &mut ChatStream,
    info: &TargetInfo,
    shown: &mut Shown,
    trace: &mut Trace,
    out: &mut Out,
    started: Instant,
) -> Result<Option<FinishReason>, &'static str> {
    let mut finish = None;
    loop {
        let next = tokio::select! {
            ev = stream.next() => Some(ev),
            _ = out.tx.closed() => None,
        };
        let Some(ev) = next else {
            // Client gone: dropping the stream closes the upstream request.
            out.gone = true;
            return Err("client_disconnected");
        };
        let Some(ev) = ev else { return Ok(finish) };
        match ev {
            Ok(ChatEvent::TextDelta(d)) => {
                if trace.timings.first_token_ms.is_none() {
                    trace.timings.first_token_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                }
                let delta = shown.push(&d);
                if !delta.is_empty() && !out.send(AnswerEvent::Token(delta)).await {
                    return Err("client_disconnected");
                }
            }
            // Usage is metered by the gateway (`info`); the answer prompt offers no tools.
            Ok(ChatEvent::Usage(_) | ChatEvent::ToolCallDelta { .. }) => {}
            Ok(ChatEvent::Finish(FinishReason::Error)) => return Ok(Some(FinishReason::Error)),
            // Usage may still follow the finish reason.
            Ok(ChatEvent::Finish(f)) => finish = Some(f),
            Err(e) => {
                // Output had started, so the gateway did not fall back: the answer is cut off.
                tracing::warn!(provider = %info.provider_name, error = %e, "provider stream failed");
                metrics::counter!(crate::observe::metrics::PROVIDER_ERRORS, "provider" => info.provider_name.clone()).increment(1);
                trace
                    .provider_errors
                    .push(format!("{}: {e}", info.provider_name));
                return Err("provider_stream_failed");
            }
        }
    }
}

/// Stage: finish — the citations, usage and done events, the trace's answer, and the cache.
async fn finish(
    engine: &Engine,
    req: &AskRequest,
    retrieved: &Retrieved,
    key: &CacheKey,
    generated: Generated,
    trace: &mut Trace,
    out: &mut Out,
) -> &'static str {
    let Generated {
        shown,
        info,
        outcome,
    } = generated;
    let Some(citations) = send_citations(&retrieved.context, &shown, out).await else {
        return "client_disconnected";
    };
    let usage = info.usage();
    let usage_view = UsageView {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_usd: info.cost_usd(),
        model: info.model.clone(),
        provider: info.provider_name.clone(),
        cache_hit: false,
    };
    let dropped = shown.filter.dropped;
    trace.dropped_citations = dropped;
    trace.answer = Some(shown.text.clone());
    metrics::counter!(crate::observe::metrics::DROPPED_CITATIONS).increment(dropped as u64);
    // An answer carrying a value that only this caller's question held (their e-mail
    // address, say) is not cached: a semantic hit would show it to another caller.
    if cacheable(outcome, &info, &shown) {
        engine.cache.put(
            &req.question,
            retrieved.question_vec.clone(),
            &key.key,
            Cached {
                answer: shown.text,
                citations,
                usage: usage_view.clone(),
                outcome,
            },
        );
    }
    let _ = out.send(AnswerEvent::Usage(usage_view)).await;
    let _ = out.send(done(engine, req, trace, outcome, dropped)).await;
    outcome
}

/// Builds and sends a citation for every marker shown, naming the chunk that holds the quoted
/// sentence; `None` when the client left.
async fn send_citations(
    context: &[Passage],
    shown: &Shown,
    out: &mut Out,
) -> Option<Vec<Citation>> {
    let by_n: BTreeMap<usize, &Passage> = context
        .iter()
        .enumerate()
        .map(|(i, p)| (i + 1, p))
        .collect();
    let mut citations = Vec::new();
    for n in &shown.filter.used {
        let Some(p) = by_n.get(n) else { continue };
        let c = citation(*n, p, &shown.text);
        citations.push(c.clone());
        if !out.send(AnswerEvent::Citation(c)).await {
            return None;
        }
    }
    Some(citations)
}

/// The citation of passage `n` in `answer`: one chunk, the one holding the quoted sentence,
/// and the quote as a range of that chunk's own text.
pub(crate) fn citation(n: usize, p: &Passage, answer: &str) -> Citation {
    let chunks = p.chunks_retrieved_first();
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    let (chunk, bytes) = match best_quote(answer, n, &texts) {
        Some(q) => (chunks[q.text], q.bytes),
        None => (chunks[0], 0..0),
    };
    let quote_start = chunk.text[..bytes.start].chars().count();
    let quote = chunk.text[bytes].to_string();
    Citation {
        n,
        doc_id: p.document.id.clone(),
        chunk_id: chunk.chunk_id(),
        title: p.document.title.clone(),
        url: p.document.url.clone(),
        page: chunk.page,
        char_start: chunk.char_start,
        char_end: chunk.char_end,
        quote_end: quote_start + quote.chars().count(),
        quote_start,
        quote,
    }
}
