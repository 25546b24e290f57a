//! Agent mode (`"mode": "agent"` on `/ask`, `model: "cairn-agent"` on `/v1/chat/completions`,
//! `mode` on MCP `ask`): the model is offered the tools of [`tools`] and calls them through
//! the gateway in a loop bounded by `[agent]` budgets ([`settings`]), then answers citing the
//! passages the tools returned — numbered in the order they were first returned, verified
//! with the same citation filter and quotes as a plain answer. When a limit is reached the
//! loop stops and the agent answers from what it has (`budget_exhausted`, with a hand-off).
//! A route whose first choice cannot call tools (the offline extractive provider) answers in
//! plain RAG mode and says so in `done`. External tools (`[[agent.tools]]`, [`external`]) are
//! offered next to cairn's own; a call of one is a step like the others (budgeted, streamed,
//! traced) and is audited; its output is fenced untrusted text, not a citable passage.
//!
//! Must not: call a provider directly (every model call goes through the gateway, audited as
//! answers are), or let a tool result widen what the run may do: results are fenced untrusted
//! data, tools run as the caller ([`tools::read`]), a call of a tool not offered is refused,
//! and every limit is checked here, never asked of the model.

pub mod external;
pub mod settings;
pub mod tools;

use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::external::{Offer, Outcome};
use crate::agent::settings::AgentBudget;
use crate::agent::tools::Gathered;
use crate::answer::citations::CitationFilter;
use crate::answer::events::{AnswerEvent, AskRequest, ModeView, StepView, UsageView};
use crate::answer::load::Lane;
use crate::answer::privacy::Masking;
use crate::answer::prompt::{ANSWER_MAX_TOKENS, fence};
use crate::answer::{
    Out, SentPrompt, answer_on, citation, count_usage, end_trace, record_attempts, refused,
    request_deadline, start_trace,
};
use crate::engine::Engine;
use crate::observe::audit::AuditEvent;
use crate::observe::trace::{AgentStep, Trace};
use crate::providers::extractive::Extractive;
use crate::providers::{
    ChatRequest, ChatResponse, FinishReason, GatewayError, Message, ProviderError, Role,
    TargetInfo, ToolCall, ToolChoice, ToolResult, ToolRound,
};

/// The agent prompt compiled into the binary (`prompts/agent.v2.toml`).
const BUILT_IN: &str = include_str!("../../prompts/agent.v2.toml");

/// The agent prompt: system text, the user turn, the closing instruction, the note on
/// external tools, and the templates of tool results (passages, external tool output).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPrompt {
    pub version: String,
    pub system: String,
    pub user: String,
    pub closing: String,
    pub external: String,
    pub tool_output: String,
    pub passage: String,
}

impl AgentPrompt {
    pub fn built_in() -> AgentPrompt {
        // The file is compiled in and checked by a unit test; a broken one is a build defect.
        toml::from_str(BUILT_IN).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the built-in agent prompt is invalid");
            AgentPrompt {
                version: "agent.invalid".into(),
                system: String::new(),
                user: "Question: {question}".into(),
                closing: String::new(),
                external: String::new(),
                tool_output: "<tool_output tool=\"{tool}\">\n{text}\n</tool_output>".into(),
                passage: "<source n=\"{n}\">\n{text}\n</source>".into(),
            }
        })
    }
}

/// Who asked: the caller's key name, the HTTP route (kept in the trace) and the lane.
pub struct Origin {
    pub caller: String,
    pub http_route: Option<&'static str>,
    pub lane: Lane,
}

/// The one entry point of the server's answers (`/ask`, `/v1/chat/completions`, MCP `ask`,
/// batches), whatever their mode and lane: an interactive answer is counted in the engine's
/// [`crate::answer::load::AnswerLoad`] while it runs, so background work gives way to it.
pub async fn answer_as(
    engine: Arc<Engine>,
    req: AskRequest,
    from: Origin,
    tx: mpsc::Sender<AnswerEvent>,
) {
    let _counted = (from.lane == Lane::Interactive).then(|| engine.load.enter());
    ask(engine, req, from.caller, from.http_route, tx).await
}

/// Answers `req`: in agent mode when it asks for it and the agent route can call tools,
/// otherwise as a plain answer (whose `done` says why an agent request ran as RAG).
async fn ask(
    engine: Arc<Engine>,
    req: AskRequest,
    caller: String,
    http_route: Option<&'static str>,
    tx: mpsc::Sender<AnswerEvent>,
) {
    match req.agent {
        Some(budget) if calls_tools(&engine) => {
            run_agent(engine, req, budget, caller, http_route, tx).await
        }
        _ => answer_on(engine, req, caller, http_route, tx).await,
    }
}

/// Whether the agent route's first choice can call tools: every vendor can but the offline
/// extractive provider.
pub fn calls_tools(engine: &Engine) -> bool {
    engine
        .router
        .targets(&engine.config.agent.route)
        .first()
        .is_some_and(|t| !matches!(t.provider, crate::providers::Provider::Extractive(_)))
}

/// Runs one agent answer under the request deadline and records its trace.
async fn run_agent(
    engine: Arc<Engine>,
    req: AskRequest,
    budget: AgentBudget,
    caller: String,
    http_route: Option<&'static str>,
    tx: mpsc::Sender<AnswerEvent>,
) {
    let started = Instant::now();
    let prompt = AgentPrompt::built_in();
    let mut trace = start_trace(&engine, &req, caller, http_route, &prompt.version);
    trace.route = engine.config.agent.route.clone();
    let mut out = Out::new(tx);
    let outcome = {
        let mut run = Run::new(&engine, &req, budget, &prompt, started);
        tokio::time::timeout(request_deadline(&engine), run.run(&mut trace, &mut out))
            .await
            .ok()
    };
    end_trace(&engine, trace, &mut out, outcome, started).await;
}

/// What a run has spent so far.
#[derive(Debug, Default, Clone, Copy)]
struct Spent {
    model_calls: u32,
    tool_calls: u32,
    tokens: u64,
    cost_usd: f64,
}

/// How a model call of the run ended.
enum Called {
    Answered(ChatResponse),
    /// The call could not finish within the tool loop's wall time.
    OutOfTime,
    /// The client was told (error event); the outcome.
    Failed(&'static str),
}

/// One agent run's state.
struct Run<'a> {
    engine: &'a Arc<Engine>,
    req: &'a AskRequest,
    budget: AgentBudget,
    prompt: &'a AgentPrompt,
    started: Instant,
    masking: Masking<'a>,
    /// The question and conversation as the model sees them (masked).
    question: String,
    conversation: Vec<Message>,
    gathered: Gathered,
    /// The external tools offered in this run (listed when it starts).
    external: Vec<Offer>,
    /// The run's trace id and caller, for the audit lines of external calls.
    trace_id: String,
    caller: String,
    rounds: Vec<ToolRound>,
    spent: Spent,
    steps: usize,
    /// The serving call of the last model turn (usage, model, provider).
    last: Option<TargetInfo>,
    cancel: CancellationToken,
}

impl<'a> Run<'a> {
    fn new(
        engine: &'a Arc<Engine>,
        req: &'a AskRequest,
        budget: AgentBudget,
        prompt: &'a AgentPrompt,
        started: Instant,
    ) -> Run<'a> {
        let mut masking = engine.config.privacy.start();
        let question = masking.mask_caller(&req.question);
        let conversation = masking.mask_turns(&req.conversation);
        Run {
            engine,
            req,
            budget,
            prompt,
            started,
            masking,
            question,
            conversation,
            gathered: Gathered::default(),
            external: Vec::new(),
            trace_id: String::new(),
            caller: String::new(),
            rounds: Vec::new(),
            spent: Spent::default(),
            steps: 0,
            last: None,
            cancel: CancellationToken::new(),
        }
    }

    /// The tool loop, then the answer; returns the outcome.
    async fn run(&mut self, trace: &mut Trace, out: &mut Out) -> &'static str {
        // Dropping the guard (any return) cancels an upstream call still running.
        let _cancel_on_exit = self.cancel.clone().drop_guard();
        self.trace_id = trace.id.clone();
        self.caller = trace.caller.clone();
        if !self.engine.external.is_empty() {
            self.external = self.engine.external.offers(self.wall_end()).await;
        }
        let mut exhausted = None;
        let answer = loop {
            if let Some(limit) = self.limit_reached() {
                exhausted = Some(limit);
                break None;
            }
            let resp = match self.call(ToolChoice::Auto, trace, out).await {
                Called::Answered(resp) => resp,
                Called::OutOfTime => {
                    exhausted = Some("max_wall_secs");
                    break None;
                }
                Called::Failed(outcome) => return outcome,
            };
            if resp.tool_calls.is_empty() {
                break Some(resp);
            }
            if let Err(outcome) = self.use_tools(resp, trace, out).await {
                return outcome;
            }
        };
        let answer = match answer {
            Some(resp) => resp,
            None => match self.closing(exhausted, trace, out).await {
                Ok(resp) => resp,
                Err(outcome) => return outcome,
            },
        };
        self.deliver(answer, exhausted, trace, out).await
    }

    /// The first `[agent]` limit the tool loop has reached, if any. One model call is kept
    /// for the closing answer.
    fn limit_reached(&self) -> Option<&'static str> {
        let b = &self.budget;
        let s = &self.spent;
        if s.model_calls + 1 >= b.max_steps {
            Some("max_steps")
        } else if s.tool_calls >= b.max_tool_calls {
            Some("max_tool_calls")
        } else if s.tokens >= b.max_tokens {
            Some("max_tokens")
        } else if s.cost_usd >= b.max_cost_usd {
            Some("max_cost_usd")
        } else if Instant::now() >= self.wall_end() {
            Some("max_wall_secs")
        } else {
            None
        }
    }

    fn wall_end(&self) -> Instant {
        self.started + std::time::Duration::from_secs(self.budget.max_wall_secs)
    }

    /// The request as the model sees it now.
    fn chat(&self, tool_choice: ToolChoice) -> ChatRequest {
        let mut system = self.prompt.system.trim().to_string();
        if !self.external.is_empty() {
            system.push_str("\n\n");
            system.push_str(self.prompt.external.trim());
        }
        if tool_choice == ToolChoice::None {
            system.push_str("\n\n");
            system.push_str(self.prompt.closing.trim());
        }
        let mut messages = self.conversation.clone();
        messages.push(Message {
            role: Role::User,
            content: self
                .prompt
                .user
                .replace("{question}", &fence(&self.question))
                .trim()
                .to_string(),
        });
        ChatRequest {
            system,
            messages,
            max_tokens: Some(ANSWER_MAX_TOKENS),
            temperature: Some(0.0),
            question: Some(self.question.clone()),
            // A fallback to the extractive provider answers from these.
            context: self.gathered.shown.clone(),
            tools: tools::offered()
                .into_iter()
                .chain(self.external.iter().map(|o| o.offered.clone()))
                .collect(),
            tool_choice,
            tool_rounds: self.rounds.clone(),
            ..ChatRequest::default()
        }
    }

    /// One model call through the gateway (audited like an answer's), metered into the run.
    /// Tool turns must finish within the loop's wall time; the closing answer may use what is
    /// left of the request deadline.
    async fn call(&mut self, choice: ToolChoice, trace: &mut Trace, out: &mut Out) -> Called {
        let engine: &'a Engine = self.engine;
        let closing = choice == ToolChoice::None;
        let chat = self.chat(choice);
        let route = &engine.config.agent.route;
        let sent = SentPrompt::new(
            engine,
            trace,
            (route, &chat),
            self.gathered.chunk_ids(),
            self.masking.counts().clone(),
        );
        let request_end = self.started + engine.router.time.request;
        let deadline = if closing {
            request_end
        } else {
            self.wall_end().min(request_end)
        };
        let key = self.req.budget_key.as_deref();
        let router = &engine.router;
        let called = tokio::select! {
            r = async {
                let (stream, info) = router.stream_until(route, &chat, self.cancel.clone(), key, deadline).await?;
                let resp = ChatResponse::collect(stream).await.map_err(GatewayError::Interrupted);
                Ok::<_, GatewayError>((resp, info))
            } => r,
            _ = out.tx.closed() => {
                sent.record(None, &[], "client_disconnected");
                out.gone = true;
                return Called::Failed("client_disconnected");
            }
        };
        match called {
            Ok((Ok(resp), info)) => {
                sent.record(Some(&info), &info.attempts, "served");
                self.meter(&info, trace);
                Called::Answered(resp)
            }
            Ok((Err(e), info)) => {
                sent.record(Some(&info), &info.attempts, e.code());
                self.meter(&info, trace);
                self.failed(e, closing, trace, out).await
            }
            Err(e) => {
                let attempts = match &e {
                    GatewayError::AllFailed { attempts, .. } => attempts.as_slice(),
                    _ => &[],
                };
                sent.record(None, attempts, e.code());
                self.failed(e, closing, trace, out).await
            }
        }
    }

    /// A failed call: out of the loop's time (a tool turn cut by the wall budget), or an error
    /// told to the client as a plain answer's would be.
    async fn failed(
        &self,
        e: GatewayError,
        closing: bool,
        trace: &mut Trace,
        out: &mut Out,
    ) -> Called {
        if !closing && Instant::now() + std::time::Duration::from_millis(50) >= self.wall_end() {
            let timed_out = matches!(
                &e,
                GatewayError::AllFailed {
                    last: Some(ProviderError::Timeout { .. }),
                    ..
                } | GatewayError::Interrupted(ProviderError::Timeout { .. })
            );
            if timed_out {
                if let GatewayError::AllFailed { attempts, .. } = &e {
                    record_attempts(attempts, trace);
                }
                return Called::OutOfTime;
            }
        }
        if let GatewayError::Interrupted(pe) = &e {
            trace.provider_errors.push(pe.to_string());
            let _ = out
                .send(AnswerEvent::Error {
                    code: "provider_stream_failed",
                    message: "The model's reply was cut off by a provider error; try again.".into(),
                })
                .await;
            return Called::Failed("provider_stream_failed");
        }
        Called::Failed(refused(self.engine, e, trace, out).await)
    }

    /// Adds a served call's tokens and cost to the run and the trace.
    fn meter(&mut self, info: &TargetInfo, trace: &mut Trace) {
        let usage = info.usage();
        self.spent.model_calls += 1;
        self.spent.tokens += usage.input_tokens + usage.output_tokens;
        self.spent.cost_usd += info.cost_usd();
        record_attempts(&info.attempts, trace);
        trace.provider = Some(info.provider_name.clone());
        trace.model = Some(info.model.clone());
        trace.input_tokens += usage.input_tokens;
        trace.output_tokens += usage.output_tokens;
        trace.cost_usd += info.cost_usd();
        count_usage(info);
        self.last = Some(info.clone());
    }

    /// Runs the calls of one model turn (within the tool-call budget; calls past it are
    /// refused), streams a `step` per call run, and keeps the round for the next turn.
    async fn use_tools(
        &mut self,
        resp: ChatResponse,
        trace: &mut Trace,
        out: &mut Out,
    ) -> Result<(), &'static str> {
        let turn = self.spent.model_calls;
        let mut first_of_turn = true;
        let mut results = Vec::with_capacity(resp.tool_calls.len());
        for call in &resp.tool_calls {
            if self.spent.tool_calls >= self.budget.max_tool_calls {
                results.push(refused_call(
                    call,
                    "the tool-call budget is spent; answer from the passages you have",
                ));
                continue;
            }
            self.spent.tool_calls += 1;
            let started = Instant::now();
            let (result, mut step, summary) = self.run_tool(call).await;
            step.ms = started.elapsed().as_secs_f64() * 1000.0;
            step.turn = turn;
            if first_of_turn {
                first_of_turn = false;
                if let Some(info) = &self.last {
                    step.input_tokens = info.usage().input_tokens;
                    step.output_tokens = info.usage().output_tokens;
                    step.cost_usd = info.cost_usd();
                }
            }
            self.steps += 1;
            step.n = self.steps;
            let view = StepView {
                n: step.n,
                tool: call.name.clone(),
                arguments: arguments_value(call),
                summary,
                ms: step.ms,
            };
            trace.agent_steps.push(step);
            results.push(result);
            if !out.send(AnswerEvent::Step(view)).await {
                return Err("client_disconnected");
            }
        }
        self.rounds.push(ToolRound {
            text: resp.text,
            calls: resp.tool_calls,
            results,
        });
        Ok(())
    }

    /// Reads, runs and renders one call as the caller; a refused or failed call is an error
    /// result the model reads. Returns the result, the trace step and the step's summary.
    async fn run_tool(&mut self, call: &ToolCall) -> (ToolResult, AgentStep, String) {
        let mut step = AgentStep {
            tool: call.name.clone(),
            arguments: Some(arguments_value(call)),
            ..AgentStep::default()
        };
        if let Some(offer) = self.external.iter().find(|o| o.offered.name == call.name) {
            let offer = offer.clone();
            return self.run_external(&offer, call, step).await;
        }
        let fetched = match tools::read(self.engine, &self.req.filter, call) {
            Ok(request) => {
                let engine = self.engine.clone();
                tokio::task::spawn_blocking(move || tools::fetch(&engine, request))
                    .await
                    .unwrap_or_else(|_| Err("the tool failed".into()))
            }
            Err(e) => Err(e),
        };
        let fetched = match fetched {
            Ok(f) => f,
            Err(message) => {
                let summary = format!("refused: {message}");
                step.error = Some(message.clone());
                return (refused_call(call, &message), step, summary);
            }
        };
        let masking = &mut self.masking;
        let rendered = tools::render(
            fetched,
            &self.prompt.passage,
            &mut self.gathered,
            &mut |t| masking.mask(t),
        );
        step.result_ids = rendered.result_ids;
        let result = ToolResult {
            call_id: call.id.clone(),
            name: call.name.clone(),
            content: rendered.content,
            is_error: false,
        };
        (result, step, rendered.summary)
    }

    /// Calls an offered external tool within its timeout and the loop's wall time, audits the
    /// call, and renders its output fenced (masked like a passage); a failure is an error
    /// result with a summary, never the end of the run.
    async fn run_external(
        &mut self,
        offer: &Offer,
        call: &ToolCall,
        mut step: AgentStep,
    ) -> (ToolResult, AgentStep, String) {
        let arguments = match object_arguments(call) {
            Some(v) => self.unmasked(v),
            None => {
                let message = format!("the arguments of `{}` are not a JSON object", call.name);
                step.error = Some(message.clone());
                let summary = format!("refused: {message}");
                return (refused_call(call, &message), step, summary);
            }
        };
        let started = Instant::now();
        let outcome = self
            .engine
            .external
            .call(offer, arguments.clone(), self.wall_end())
            .await;
        self.audit_external(offer, &arguments, &outcome, started);
        let (text, is_error, summary) = match outcome {
            Outcome::Output(text) => {
                let summary = format!(
                    "{} characters from `{}`",
                    text.chars().count(),
                    offer.server
                );
                (text, false, summary)
            }
            Outcome::ToolError(text) => {
                let message = format!("the tool reported an error: {}", first_line(&text));
                step.error = Some(message.clone());
                (text, true, format!("failed: {message}"))
            }
            Outcome::Failed(message) => {
                // An MCP error's message is the server's text: escaped and cut like output.
                let message: String = message.chars().take(500).collect();
                step.error = Some(message.clone());
                let summary = format!("failed: {message}");
                return (refused_call(call, &fence(&message)), step, summary);
            }
        };
        let masked = self.masking.mask(&external::bounded(&text));
        let content = self
            .prompt
            .tool_output
            .replace(
                "{tool}",
                &crate::answer::prompt::fence_attribute(&call.name),
            )
            .replace("{text}", &fence(&masked));
        let result = ToolResult {
            call_id: call.id.clone(),
            name: call.name.clone(),
            content,
            is_error,
        };
        (result, step, summary)
    }

    /// `v` with the masked values of this run put back in its strings: the company's own tool
    /// needs the caller's real order number or address, which only the model must not see.
    fn unmasked(&self, v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.masking.unmasker().apply(&s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|x| self.unmasked(x)).collect()),
            Value::Object(o) => {
                Value::Object(o.into_iter().map(|(k, x)| (k, self.unmasked(x))).collect())
            }
            other => other,
        }
    }

    /// One audit line for a call sent to an external tool server.
    fn audit_external(
        &self,
        offer: &Offer,
        arguments: &Value,
        outcome: &Outcome,
        started: Instant,
    ) {
        let audit = &self.engine.audit;
        if !audit.enabled() {
            return;
        }
        let sent = arguments.to_string();
        audit.record_or_warn(&AuditEvent::ExternalToolCall {
            trace_id: self.trace_id.clone(),
            caller: self.caller.clone(),
            server: offer.server.clone(),
            tool: offer.tool.clone(),
            arguments_sha256: crate::observe::audit::sha256_hex(&sent),
            outcome: outcome.code().to_string(),
            ms: started.elapsed().as_secs_f64() * 1000.0,
            arguments: audit.records_text().then(|| arguments.clone()),
        });
    }

    /// The answer after the loop stopped at `exhausted`: one model call offered no tool, while
    /// a model call, tokens and money are left; otherwise (or if the model still answers
    /// nothing) the offline extractive answer over the passages gathered.
    async fn closing(
        &mut self,
        exhausted: Option<&'static str>,
        trace: &mut Trace,
        out: &mut Out,
    ) -> Result<ChatResponse, &'static str> {
        let b = &self.budget;
        let can_call = self.spent.model_calls < b.max_steps
            && self.spent.tokens < b.max_tokens
            && self.spent.cost_usd < b.max_cost_usd;
        tracing::info!(
            limit = exhausted.unwrap_or(""),
            can_call,
            "agent: budget reached; answering from what it has"
        );
        if can_call {
            match self.call(ToolChoice::None, trace, out).await {
                Called::Answered(resp) if !resp.text.trim().is_empty() => return Ok(resp),
                Called::Answered(_) | Called::OutOfTime => {}
                Called::Failed(outcome) => return Err(outcome),
            }
        }
        let passages = &self.gathered.shown;
        let text = Extractive::default().compose(&self.question, passages);
        Ok(ChatResponse {
            text,
            finish: Some(FinishReason::Stop),
            ..ChatResponse::default()
        })
    }

    /// Shows the answer: unmasked, through the citation filter (markers must name a passage
    /// the tools returned), then citations, usage and `done`.
    async fn deliver(
        &mut self,
        resp: ChatResponse,
        exhausted: Option<&'static str>,
        trace: &mut Trace,
        out: &mut Out,
    ) -> &'static str {
        let mut filter = CitationFilter::new(1..=self.gathered.passages.len());
        let mut unmasker = self.masking.unmasker();
        let mut text = filter.push(&unmasker.apply(&resp.text));
        text.push_str(&filter.finish());
        let mut outcome = match (exhausted, resp.finish) {
            (Some(_), _) => "budget_exhausted",
            (None, Some(FinishReason::Length)) => "truncated",
            (None, Some(FinishReason::ContentFilter)) => "filtered",
            (None, _) => "answered",
        };
        if text.trim().is_empty() {
            text = self.engine.config.answer.no_answer_text.clone();
            if outcome == "answered" {
                outcome = "no_answer";
            }
        }
        if trace.timings.first_token_ms.is_none() {
            trace.timings.first_token_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
        }
        trace.answer = Some(text.clone());
        trace.dropped_citations = filter.dropped;
        trace.agent_model_calls = Some(self.spent.model_calls);
        trace.agent_exhausted = exhausted.map(str::to_string);
        for piece in pieces(&text) {
            if !out.send(AnswerEvent::Token(piece)).await {
                return "client_disconnected";
            }
        }
        for n in &filter.used {
            let c = citation(*n, &self.gathered.passages[n - 1], &text);
            if !out.send(AnswerEvent::Citation(c)).await {
                return "client_disconnected";
            }
        }
        let _ = out.send(AnswerEvent::Usage(self.usage(trace))).await;
        let phrases = &self.engine.config.answer.handoff_phrases;
        let done = AnswerEvent::Done {
            trace_id: trace.id.clone(),
            outcome,
            dropped_citations: filter.dropped,
            handoff: crate::answer::handoff::of_done(
                crate::answer::handoff::requested(&self.req.question, phrases),
                outcome,
                filter.dropped,
            ),
            mode: ModeView {
                mode: "agent",
                steps: Some(self.steps),
                model_calls: Some(self.spent.model_calls),
                exhausted,
                mode_note: None,
            },
        };
        let _ = out.send(done).await;
        outcome
    }

    /// The run's usage: every model call summed, named by the last call that served.
    fn usage(&self, trace: &Trace) -> UsageView {
        UsageView {
            input_tokens: trace.input_tokens,
            output_tokens: trace.output_tokens,
            cost_usd: trace.cost_usd,
            model: self
                .last
                .as_ref()
                .map_or_else(|| "extractive".into(), |i| i.model.clone()),
            provider: self
                .last
                .as_ref()
                .map_or_else(String::new, |i| i.provider_name.clone()),
            cache_hit: false,
        }
    }
}

/// The answer text in pieces of a few words, for `token` events.
fn pieces(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    words.chunks(8).map(|w| w.concat()).collect()
}

/// An error result for a call that was not run.
fn refused_call(call: &ToolCall, message: &str) -> ToolResult {
    ToolResult {
        call_id: call.id.clone(),
        name: call.name.clone(),
        content: format!("Error: {message}"),
        is_error: true,
    }
}

/// A call's arguments when they are a JSON object (none sent: `{}`).
fn object_arguments(call: &ToolCall) -> Option<Value> {
    let text = call.arguments.trim();
    match serde_json::from_str::<Value>(if text.is_empty() { "{}" } else { text }) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

/// The first line of `text`, at most 200 characters, for a summary.
fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// A call's arguments as JSON (`{}` when they are not a JSON object).
fn arguments_value(call: &ToolCall) -> Value {
    ToolRound::arguments_object(call)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_agent_prompt_parses_with_its_placeholders() {
        let p: AgentPrompt = toml::from_str(BUILT_IN).expect("prompts/agent.v2.toml parses");
        assert_eq!(p.version, "agent.v2");
        assert!(p.user.contains("{question}"));
        for needle in ["{n}", "{title}", "{doc_id}", "{source}", "{text}"] {
            assert!(p.passage.contains(needle), "passage lacks {needle}");
        }
        assert!(p.system.contains("untrusted"));
        assert!(p.tool_output.contains("{tool}") && p.tool_output.contains("{text}"));
        assert!(p.external.contains("untrusted"));
        assert!(!p.closing.trim().is_empty());
    }

    #[test]
    fn pieces_keep_every_character() {
        let text = "one two three four five six seven eight nine ten [1].";
        assert_eq!(pieces(text).concat(), text);
        assert_eq!(pieces(text).len(), 2);
    }
}
