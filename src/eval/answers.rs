//! `cairn eval answers`: answer quality over a question file, through the same pipeline as
//! `/ask` (retrieval, rerank, prompt, provider route, citation filter).
//!
//! The file is JSON lines, one question each:
//! `{"id": "q1", "question": "...", "answers": ["gold text", ...], "sources": ["doc id", ...],
//! "unanswerable": false, "groups": ["hr"], "conversation": [{"role": "user", "content": "..."}]}`
//! — every field but `question` is optional; with `conversation` the question is a follow-up
//! asked after those turns (`samples/conversations.jsonl`). `sources`
//! entries match a document's id (`source:external id`) or its external id; `groups` are the
//! access groups the question is asked with. The reindex quality gate reads the same format.
//!
//! Reported: citation validity (every shown marker resolves to a passage the model was given and
//! its quoted sentence occurs in that chunk), citation precision and recall against the expected
//! sources, the "I don't know" rate on unanswerable questions (and the false one on answerable
//! questions), the share of answers containing a gold answer, retrieval hit rates of the
//! expected sources (the first hit, and any of the hits retrieved, for the query `[retrieval]
//! condense` made; with `condense = "model"`, how many queries the model made and why the
//! others fell back to the heuristic), and cost and latency per answer.
//! With the offline provider every figure is reproducible.
//!
//! Each question can run in plain RAG mode (the default) or in agent mode (the tool loop of
//! `agent`, on `[agent] route`), and [`compare`] runs a file in several modes. Per mode it also
//! reports which passages the run returned (RAG: the retrieved hits; agent: the chunks its tool
//! calls returned, read from the run's trace), whether every expected source was among them and
//! among the cited documents, how many citations resolve to a returned passage of an expected
//! source with a quote found in it, and steps, model calls and tokens per question. A question
//! with `facts` counts as gold only when the answer contains every one.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::agent;
use crate::answer::events::{AnswerEvent, AskRequest, Citation, Mode};
use crate::answer::load::Lane;
use cairn_index::Filter;

use crate::engine::Engine;
use crate::eval::qa::QaItem;
use crate::retrieval::condense::Condense;

/// What one question produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QaOutcome {
    pub id: String,
    pub outcome: String,
    pub answer: String,
    pub said_idk: bool,
    pub cited_docs: Vec<String>,
    /// Citations shown whose quote was found in the cited chunk.
    pub valid_citations: usize,
    /// Citations shown plus markers the filter dropped.
    pub citation_markers: usize,
    pub contains_gold: Option<bool>,
    /// The query retrieval ran on.
    pub query: String,
    /// The condenser that made it (`model`, `heuristic`, `off`), from the answer's trace.
    pub condenser: Option<String>,
    /// Why the condense model's rewrite was not used, if it was called and was not.
    pub condense_fallback: Option<String>,
    /// The condense model said the caller asks for a person.
    pub condense_human: bool,
    /// The first hit is an expected source.
    pub top_hit: Option<bool>,
    /// Any retrieved hit is an expected source.
    pub any_hit: Option<bool>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub cost_usd: f64,
    pub first_token_ms: Option<f64>,
    pub total_ms: f64,
    /// The mode the answer ran in (`rag`, or `agent`; an agent request the agent route cannot
    /// serve runs as `rag`).
    pub mode: String,
    /// Tool calls (agent mode).
    pub steps: Option<usize>,
    /// Model calls, the closing answer included (agent mode).
    pub model_calls: Option<u32>,
    /// Input plus output tokens over every model call.
    pub tokens: u64,
    /// Gold facts the answer lacks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_facts: Vec<String>,
    /// Documents of the passages the run returned (retrieved hits or tool results), in order.
    pub returned_docs: Vec<String>,
    /// Every expected source is among the returned passages' documents.
    pub all_sources_returned: Option<bool>,
    /// Every expected source is cited.
    pub all_sources_cited: Option<bool>,
    /// Citations shown (after the filter).
    pub shown_citations: usize,
    /// Shown citations whose chunk the run returned.
    pub cited_returned: usize,
    /// Shown citations that hold, name a returned chunk, and come from an expected source.
    pub cited_valid_expected: usize,
}

/// The aggregate printed by `cairn eval answers`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AnswerReport {
    pub questions: usize,
    pub citation_validity: Option<f64>,
    pub citation_precision: Option<f64>,
    pub citation_recall: Option<f64>,
    /// Share of unanswerable questions answered "I don't know".
    pub idk_rate_unanswerable: Option<f64>,
    /// Share of answerable questions answered "I don't know".
    pub idk_rate_answerable: Option<f64>,
    pub answer_contains_gold: Option<f64>,
    /// Share of questions with expected sources whose first retrieved hit is one.
    pub retrieval_top_hit: Option<f64>,
    /// Share of questions with expected sources with one among the retrieved hits.
    pub retrieval_any_hit: Option<f64>,
    /// `condense = "model"`: the share of questions whose query the model made.
    pub condensed_by_model: Option<f64>,
    /// `condense = "model"`: questions whose query the heuristic made instead, by reason.
    pub condense_fallbacks: std::collections::BTreeMap<String, usize>,
    /// `condense = "model"`: questions where the model said the caller asks for a person.
    pub condense_human: usize,
    pub cost_usd_per_answer: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub first_token_p50_ms: Option<f64>,
    /// `rag` or `agent`: the mode the questions were asked in.
    pub mode: String,
    /// Share of citation markers that name a passage the run returned, from an expected
    /// source, with a quote found in it (dropped markers count as invalid).
    pub citation_validity_expected: Option<f64>,
    /// Share of shown citations whose chunk the run returned.
    pub citations_returned: Option<f64>,
    /// Share of questions with expected sources that got every one among the returned passages.
    pub all_sources_returned: Option<f64>,
    /// Share of questions with expected sources whose answer cites every one.
    pub all_sources_cited: Option<f64>,
    /// Mean tool calls per question (agent mode).
    pub steps_per_question: Option<f64>,
    /// Mean model calls per question (agent mode).
    pub model_calls_per_question: Option<f64>,
    pub tokens_per_question: f64,
    /// Questions asked in agent mode that ran as plain RAG (the agent route cannot call tools).
    pub ran_as_rag: usize,
    pub items: Vec<QaOutcome>,
}

fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The share of `true` among the flags that are set.
fn rate(flags: impl Iterator<Item = Option<bool>>) -> Option<f64> {
    mean(flags.flatten().map(|f| f64::from(u8::from(f))))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Whether `c`'s quote occurs in the chunk it names.
fn citation_holds(engine: &Engine, c: &Citation) -> anyhow::Result<bool> {
    let chunks = engine.index.chunks_of(&c.doc_id)?;
    Ok(chunks.iter().any(|ch| {
        ch.chunk_id() == c.chunk_id
            && (c.quote.is_empty() || normalise(&ch.text).contains(&normalise(&c.quote)))
    }))
}

/// The events of one answer, gathered.
#[derive(Default)]
struct Collected {
    citations: Vec<Citation>,
    /// Chunk ids of the retrieved hits (RAG mode), in rank order.
    retrieved: Vec<String>,
    trace_id: String,
}

/// Reads one answer's events into `out`; returns what the scoring needs besides.
async fn collect(
    rx: &mut mpsc::Receiver<AnswerEvent>,
    out: &mut QaOutcome,
    started: Instant,
) -> Collected {
    let mut got = Collected::default();
    while let Some(ev) = rx.recv().await {
        match ev {
            AnswerEvent::Token(t) => {
                if out.first_token_ms.is_none() {
                    out.first_token_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                }
                out.answer.push_str(&t);
            }
            AnswerEvent::Citation(c) => got.citations.push(c),
            AnswerEvent::Usage(u) => {
                out.cost_usd = u.cost_usd;
                out.tokens = u.input_tokens + u.output_tokens;
            }
            AnswerEvent::Done {
                outcome,
                dropped_citations,
                trace_id,
                mode,
                ..
            } => {
                out.outcome = outcome.to_string();
                out.citation_markers = dropped_citations;
                out.mode = mode.mode.to_string();
                out.steps = mode.steps;
                out.model_calls = mode.model_calls;
                got.trace_id = trace_id;
            }
            AnswerEvent::Error { code, .. } => out.outcome = code.to_string(),
            AnswerEvent::Retrieval { query, hits } => {
                out.query = query;
                got.retrieved = hits.into_iter().map(|h| h.chunk_id).collect();
            }
            AnswerEvent::Step(_) => {}
        }
    }
    got
}

/// The document of a chunk id (`<doc id>#<ordinal>`).
fn doc_of(chunk_id: &str) -> &str {
    chunk_id.rsplit_once('#').map_or(chunk_id, |(d, _)| d)
}

/// The chunk ids the run returned: the retrieved hits, or (agent mode) every chunk its tool
/// calls returned, in the order they came, from the run's trace.
fn returned_chunks(engine: &Engine, mode: &str, got: &Collected) -> Vec<String> {
    if mode != "agent" {
        return got.retrieved.clone();
    }
    let mut seen = HashSet::new();
    engine
        .traces
        .get(&got.trace_id)
        .map(|t| t.agent_steps)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.tool != "list_sources")
        .flat_map(|s| s.result_ids)
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// Runs one question in `mode` and scores it.
async fn run_one(engine: &Arc<Engine>, item: &QaItem, mode: Mode) -> anyhow::Result<QaOutcome> {
    let (tx, mut rx) = mpsc::channel(64);
    let req = AskRequest {
        question: item.question.clone(),
        filter: Filter {
            caller_groups: item.groups.clone(),
            ..Filter::default()
        },
        top_k: engine.config.retrieval.top_k,
        conversation: item.conversation.clone(),
        budget_key: None,
        thread_id: None,
        agent: (mode == Mode::Agent).then_some(engine.config.agent.budget),
    };
    let started = Instant::now();
    let from = agent::Origin {
        caller: "eval".into(),
        http_route: None,
        lane: Lane::Background,
    };
    let task = tokio::spawn(agent::answer_as(engine.clone(), req, from, tx));
    let mut out = QaOutcome {
        id: item.id.clone(),
        ..QaOutcome::default()
    };
    let got = collect(&mut rx, &mut out, started).await;
    task.await.context("the answer task failed")?;
    // The trace is kept once the task ended.
    if let Some(condense) = engine.traces.get(&got.trace_id).and_then(|t| t.condense) {
        out.condenser = Some(condense.condenser);
        out.condense_fallback = condense.fallback;
        out.condense_human = condense.human;
    }
    out.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    out.shown_citations = got.citations.len();
    out.citation_markers += got.citations.len();
    let returned = returned_chunks(engine, &out.mode, &got);
    // Index reads may do I/O (a server-backed index): off the async threads.
    let checker = engine.clone();
    let citations = got.citations;
    let (holds, citations) = tokio::task::spawn_blocking(move || {
        let mut holds = Vec::with_capacity(citations.len());
        for c in &citations {
            holds.push(citation_holds(&checker, c)?);
        }
        anyhow::Ok((holds, citations))
    })
    .await
    .context("the citation check failed")??;
    out.valid_citations += holds.iter().filter(|h| **h).count();
    score(engine, item, &mut out, &citations, &holds, &returned);
    Ok(out)
}

/// Whether `doc_id` is one of `expected` (by document id or external id).
fn is_expected(expected: &HashSet<&str>, doc_id: &str) -> bool {
    expected.contains(doc_id)
        || doc_id
            .split_once(':')
            .is_some_and(|(_, ext)| expected.contains(ext))
}

/// Fills the scores of `out` from the answer, its citations (with whether each holds) and the
/// chunks the run returned.
fn score(
    engine: &Engine,
    item: &QaItem,
    out: &mut QaOutcome,
    citations: &[Citation],
    holds: &[bool],
    returned: &[String],
) {
    let idk_text = normalise(&engine.config.answer.no_answer_text);
    let answer = normalise(&out.answer);
    out.said_idk = out.outcome == "no_answer"
        || answer.starts_with(&idk_text)
        || answer.starts_with("i don't know")
        || answer.starts_with("i do not know");
    let cited: BTreeSet<String> = citations.iter().map(|c| c.doc_id.clone()).collect();
    out.cited_docs = cited.iter().cloned().collect();
    let mut docs: Vec<String> = Vec::new();
    for d in returned.iter().map(|c| doc_of(c)) {
        if !docs.iter().any(|x| x == d) {
            docs.push(d.to_string());
        }
    }
    out.returned_docs = docs;
    let returned: HashSet<&str> = returned.iter().map(String::as_str).collect();
    out.cited_returned = citations
        .iter()
        .filter(|c| returned.contains(c.chunk_id.as_str()))
        .count();
    let expected: HashSet<&str> = item.sources.iter().map(String::as_str).collect();
    out.cited_valid_expected = citations
        .iter()
        .zip(holds)
        .filter(|(c, h)| {
            **h && returned.contains(c.chunk_id.as_str()) && is_expected(&expected, &c.doc_id)
        })
        .count();
    if !item.sources.is_empty() && !item.unanswerable {
        let matches = |doc_id: &str| is_expected(&expected, doc_id);
        out.top_hit = Some(out.returned_docs.first().is_some_and(|d| matches(d)));
        out.any_hit = Some(out.returned_docs.iter().any(|d| matches(d)));
        let covers = |docs: &mut dyn Iterator<Item = &String>| {
            let found: HashSet<&str> = docs
                .flat_map(|d| {
                    let ext = d.split_once(':').map(|(_, e)| e);
                    [Some(d.as_str()), ext]
                })
                .flatten()
                .collect();
            expected.iter().all(|e| found.contains(e))
        };
        out.all_sources_returned = Some(covers(&mut out.returned_docs.iter()));
        out.all_sources_cited = Some(covers(&mut cited.iter()));
        let hit = cited.iter().filter(|d| matches(d)).count();
        if !cited.is_empty() {
            out.precision = Some(hit as f64 / cited.len() as f64);
        }
        out.recall = Some(hit as f64 / expected.len() as f64);
    }
    if item.unanswerable {
        return;
    }
    if !item.facts.is_empty() {
        out.missing_facts = item
            .facts
            .iter()
            .filter(|f| !answer.contains(&normalise(f)))
            .cloned()
            .collect();
        out.contains_gold = Some(out.missing_facts.is_empty());
    } else if !item.answers.is_empty() {
        out.contains_gold = Some(item.answers.iter().any(|g| answer.contains(&normalise(g))));
    }
}

/// Evaluates every question in order in plain RAG mode (one at a time, so latencies are not
/// contended).
pub async fn answers(engine: Arc<Engine>, items: &[QaItem]) -> anyhow::Result<AnswerReport> {
    answers_in(engine, items, Mode::Rag).await
}

/// As [`answers`], asking every question in `mode`.
pub async fn answers_in(
    engine: Arc<Engine>,
    items: &[QaItem],
    mode: Mode,
) -> anyhow::Result<AnswerReport> {
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        outcomes.push(run_one(&engine, item, mode).await?);
    }
    let by_model = engine.config.retrieval.condense == Condense::Model;
    Ok(report(items, outcomes, mode, by_model))
}

/// The aggregate over one mode's outcomes.
/// The figures of `outcomes`; `condense_by_model`: whether `[retrieval] condense` is `model`
/// (then the share of queries the model made is reported).
fn report(
    items: &[QaItem],
    outcomes: Vec<QaOutcome>,
    mode: Mode,
    condense_by_model: bool,
) -> AnswerReport {
    let pairs: Vec<(&QaItem, &QaOutcome)> = items.iter().zip(&outcomes).collect();
    let markers: usize = outcomes.iter().map(|o| o.citation_markers).sum();
    let valid: usize = outcomes.iter().map(|o| o.valid_citations).sum();
    let valid_expected: usize = outcomes.iter().map(|o| o.cited_valid_expected).sum();
    let shown: usize = outcomes.iter().map(|o| o.shown_citations).sum();
    let cited_returned: usize = outcomes.iter().map(|o| o.cited_returned).sum();
    let mut latencies: Vec<f64> = outcomes.iter().map(|o| o.total_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let mut firsts: Vec<f64> = outcomes.iter().filter_map(|o| o.first_token_ms).collect();
    firsts.sort_by(f64::total_cmp);
    AnswerReport {
        questions: items.len(),
        citation_validity: (markers > 0).then(|| valid as f64 / markers as f64),
        citation_precision: mean(outcomes.iter().filter_map(|o| o.precision)),
        citation_recall: mean(outcomes.iter().filter_map(|o| o.recall)),
        idk_rate_unanswerable: mean(
            pairs
                .iter()
                .filter(|(i, _)| i.unanswerable)
                .map(|(_, o)| f64::from(u8::from(o.said_idk))),
        ),
        idk_rate_answerable: mean(
            pairs
                .iter()
                .filter(|(i, _)| !i.unanswerable)
                .map(|(_, o)| f64::from(u8::from(o.said_idk))),
        ),
        answer_contains_gold: rate(outcomes.iter().map(|o| o.contains_gold)),
        retrieval_top_hit: rate(outcomes.iter().map(|o| o.top_hit)),
        retrieval_any_hit: rate(outcomes.iter().map(|o| o.any_hit)),
        condensed_by_model: condense_by_model.then(|| {
            let by_model = outcomes
                .iter()
                .filter(|o| o.condenser.as_deref() == Some("model"));
            by_model.count() as f64 / outcomes.len().max(1) as f64
        }),
        condense_human: outcomes.iter().filter(|o| o.condense_human).count(),
        condense_fallbacks: outcomes
            .iter()
            .filter_map(|o| o.condense_fallback.clone())
            .fold(Default::default(), |mut m, r| {
                *m.entry(r).or_insert(0) += 1;
                m
            }),
        cost_usd_per_answer: mean(outcomes.iter().map(|o| o.cost_usd)).unwrap_or(0.0),
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
        first_token_p50_ms: (!firsts.is_empty()).then(|| percentile(&firsts, 0.5)),
        mode: mode.name().to_string(),
        citation_validity_expected: (markers > 0).then(|| valid_expected as f64 / markers as f64),
        citations_returned: (shown > 0).then(|| cited_returned as f64 / shown as f64),
        all_sources_returned: rate(outcomes.iter().map(|o| o.all_sources_returned)),
        all_sources_cited: rate(outcomes.iter().map(|o| o.all_sources_cited)),
        steps_per_question: mean(outcomes.iter().filter_map(|o| o.steps.map(|s| s as f64))),
        model_calls_per_question: mean(
            outcomes.iter().filter_map(|o| o.model_calls.map(f64::from)),
        ),
        tokens_per_question: mean(outcomes.iter().map(|o| o.tokens as f64)).unwrap_or(0.0),
        ran_as_rag: match mode {
            Mode::Agent => outcomes.iter().filter(|o| o.mode == "rag").count(),
            Mode::Rag => 0,
        },
        items: outcomes,
    }
}

/// `cairn eval answers --mode`: one report per mode, and what answered in agent mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeComparison {
    /// What served the agent route: `scripted-planner` (the built-in scripted model, see
    /// `note`) or the configured route's first target.
    pub agent_model: String,
    pub note: String,
    pub modes: Vec<AnswerReport>,
}

/// Runs the file in each of `modes`, in order.
pub async fn compare(
    engine: Arc<Engine>,
    items: &[QaItem],
    modes: &[Mode],
    scripted: bool,
) -> anyhow::Result<ModeComparison> {
    let mut reports = Vec::with_capacity(modes.len());
    for mode in modes {
        reports.push(answers_in(engine.clone(), items, *mode).await?);
    }
    let agent_model = if scripted {
        crate::eval::planner::NAME.to_string()
    } else {
        engine
            .router
            .targets(&engine.config.agent.route)
            .first()
            .map_or_else(
                || "none".into(),
                |t| format!("{}:{}", t.provider_name, t.model),
            )
    };
    let note = if scripted {
        SCRIPTED_NOTE.to_string()
    } else if agent::calls_tools(&engine) {
        format!("agent mode ran on route `{}`", engine.config.agent.route)
    } else {
        "the agent route cannot call tools (offline extractive provider): agent requests ran as plain RAG".into()
    };
    Ok(ModeComparison {
        agent_model,
        note,
        modes: reports,
    })
}

/// What the scripted planner's numbers measure, printed with them.
pub const SCRIPTED_NOTE: &str = "agent mode ran against the scripted planner, not a language model: it searches the sub-queries written in the question file (`hops`), one per turn, then answers with the best-matching sentence of each result and its [n]. This measures cairn's side of the loop (tool calls through the gateway, retrieval per hop, citation numbering and verification, budgets, steps and tokens) with perfect planning; it does not measure how well a model decides what to look up or writes an answer. Its tokens are estimates (characters / 4) and it has no price, so cost is 0.";
