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

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::answer::answer;
use crate::answer::events::{AnswerEvent, AskRequest, Citation};
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

/// Runs one question through the answer pipeline and scores it.
async fn run_one(engine: &Arc<Engine>, item: &QaItem) -> anyhow::Result<QaOutcome> {
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
        agent: None,
    };
    let started = Instant::now();
    let task = tokio::spawn(answer(engine.clone(), req, "eval".into(), tx));
    let mut out = QaOutcome {
        id: item.id.clone(),
        ..QaOutcome::default()
    };
    let mut citations = Vec::new();
    let mut retrieved: Vec<String> = Vec::new();
    let mut done_trace = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            AnswerEvent::Token(t) => {
                if out.first_token_ms.is_none() {
                    out.first_token_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                }
                out.answer.push_str(&t);
            }
            AnswerEvent::Citation(c) => citations.push(c),
            AnswerEvent::Usage(u) => out.cost_usd = u.cost_usd,
            AnswerEvent::Done {
                outcome,
                dropped_citations,
                trace_id,
                ..
            } => {
                out.outcome = outcome.to_string();
                out.citation_markers = dropped_citations;
                done_trace = Some(trace_id);
            }
            AnswerEvent::Error { code, .. } => out.outcome = code.to_string(),
            AnswerEvent::Retrieval { query, hits } => {
                out.query = query;
                retrieved = hits.into_iter().map(|h| h.doc_id).collect();
            }
            AnswerEvent::Step(_) => {}
        }
    }
    task.await.context("the answer task failed")?;
    // The trace is kept once the task ended.
    if let Some(condense) = done_trace
        .and_then(|id| engine.traces.get(&id))
        .and_then(|t| t.condense)
    {
        out.condenser = Some(condense.condenser);
        out.condense_fallback = condense.fallback;
        out.condense_human = condense.human;
    }
    out.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    out.citation_markers += citations.len();
    // Index reads may do I/O (a server-backed index): off the async threads.
    let checker = engine.clone();
    let (valid, citations) = tokio::task::spawn_blocking(move || {
        let mut valid = 0;
        for c in &citations {
            if citation_holds(&checker, c)? {
                valid += 1;
            }
        }
        anyhow::Ok((valid, citations))
    })
    .await
    .context("the citation check failed")??;
    out.valid_citations += valid;
    let idk_text = normalise(&engine.config.answer.no_answer_text);
    let answer = normalise(&out.answer);
    out.said_idk = out.outcome == "no_answer"
        || answer.starts_with(&idk_text)
        || answer.starts_with("i don't know")
        || answer.starts_with("i do not know");
    let cited: HashSet<String> = citations.iter().map(|c| c.doc_id.clone()).collect();
    out.cited_docs = cited.iter().cloned().collect();
    out.cited_docs.sort();
    if !item.sources.is_empty() && !item.unanswerable {
        let expected: HashSet<&str> = item.sources.iter().map(String::as_str).collect();
        let matches = |doc_id: &str| {
            expected.contains(doc_id)
                || doc_id
                    .split_once(':')
                    .is_some_and(|(_, ext)| expected.contains(ext))
        };
        out.top_hit = Some(retrieved.first().is_some_and(|d| matches(d)));
        out.any_hit = Some(retrieved.iter().any(|d| matches(d)));
        let hit = cited.iter().filter(|d| matches(d)).count();
        if !cited.is_empty() {
            out.precision = Some(hit as f64 / cited.len() as f64);
        }
        out.recall = Some(hit as f64 / expected.len() as f64);
    }
    if !item.answers.is_empty() && !item.unanswerable {
        out.contains_gold = Some(item.answers.iter().any(|g| answer.contains(&normalise(g))));
    }
    Ok(out)
}

/// Evaluates every question in order (one at a time, so latencies are not contended).
pub async fn answers(engine: Arc<Engine>, items: &[QaItem]) -> anyhow::Result<AnswerReport> {
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        outcomes.push(run_one(&engine, item).await?);
    }
    let pairs: Vec<(&QaItem, &QaOutcome)> = items.iter().zip(&outcomes).collect();
    let markers: usize = outcomes.iter().map(|o| o.citation_markers).sum();
    let valid: usize = outcomes.iter().map(|o| o.valid_citations).sum();
    let mut latencies: Vec<f64> = outcomes.iter().map(|o| o.total_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let mut firsts: Vec<f64> = outcomes.iter().filter_map(|o| o.first_token_ms).collect();
    firsts.sort_by(f64::total_cmp);
    Ok(AnswerReport {
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
        condensed_by_model: (engine.config.retrieval.condense == Condense::Model).then(|| {
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
        items: outcomes,
    })
}
