//! The answer pipeline behind `/ask` and `cairn ask`: retrieve → relevance gate → context →
//! prompt → provider route (fallback only before the first token) → citation verification →
//! typed events. Producers send [`AnswerEvent`]s into a channel; a closed channel (client gone)
//! stops the pipeline and with it the upstream call.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use cairn_index::{Filter, Hit, SearchMode};

use crate::engine::{Engine, HitView};
use crate::providers::{ChatEvent, ContextPassage, FinishReason, Message, Usage};

/// One verified citation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Citation {
    pub n: usize,
    pub doc_id: String,
    pub chunk_id: String,
    pub title: String,
    pub url: Option<String>,
    pub page: Option<u32>,
    pub char_start: usize,
    pub char_end: usize,
    /// The sentence of the chunk that best supports the answer text citing it.
    pub quote: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsageView {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub model: String,
    pub provider: String,
    pub cache_hit: bool,
}

/// Typed events of an answer, in order: retrieval, token*, citation*, usage, done — or error.
#[derive(Debug, Clone)]
pub enum AnswerEvent {
    Retrieval(Vec<HitView>),
    Token(String),
    Citation(Citation),
    Usage(UsageView),
    Done {
        trace_id: String,
        outcome: &'static str,
        dropped_citations: usize,
    },
    Error {
        code: &'static str,
        message: String,
    },
}

/// A question with its options.
#[derive(Debug, Clone)]
pub struct AskRequest {
    pub question: String,
    pub filter: Filter,
    pub top_k: usize,
    pub conversation: Vec<Message>,
}

/// Keeps `[n]` markers whose `n` was given to the model and drops the rest, across deltas:
/// a trailing `[12` is held back until the next delta decides it.
#[derive(Debug, Default)]
pub struct CitationFilter {
    allowed: BTreeSet<usize>,
    held: String,
    pub used: Vec<usize>,
    pub dropped: usize,
}

impl CitationFilter {
    pub fn new(allowed: impl IntoIterator<Item = usize>) -> CitationFilter {
        CitationFilter {
            allowed: allowed.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Feeds a delta; returns the text that can be shown now.
    pub fn push(&mut self, delta: &str) -> String {
        self.held.push_str(delta);
        let text = std::mem::take(&mut self.held);
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let tail = &rest[open + 1..];
            let digits: usize = tail.chars().take_while(|c| c.is_ascii_digit()).count();
            let after = &tail[digits..];
            if after.is_empty() && digits <= 4 {
                // Undecided: wait for more text.
                self.held = rest[open..].to_string();
                return out;
            }
            if digits > 0 && after.starts_with(']') {
                let n: usize = tail[..digits].parse().unwrap_or(0);
                if self.allowed.contains(&n) {
                    out.push_str(&rest[open..open + 2 + digits]);
                    if !self.used.contains(&n) {
                        self.used.push(n);
                    }
                } else {
                    self.dropped += 1;
                    // Drop the marker and the space before it.
                    if out.ends_with(' ') {
                        out.pop();
                    }
                }
                rest = &after[1..];
            } else {
                out.push('[');
                rest = tail;
            }
        }
        out.push_str(rest);
        out
    }

    /// Flushes held text at the end of the stream.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

fn words(s: &str) -> HashSet<String> {
    crate::providers::extractive::terms(s).into_iter().collect()
}

/// The sentence of `chunk` sharing most words with the answer sentences citing `[n]`.
fn best_quote(answer: &str, n: usize, chunk_text: &str) -> String {
    let marker = format!("[{n}]");
    let citing: String = crate::providers::extractive::sentences(answer)
        .into_iter()
        .filter(|s| s.contains(&marker))
        .collect::<Vec<_>>()
        .join(" ");
    let target = words(&citing);
    crate::providers::extractive::sentences(chunk_text)
        .into_iter()
        .max_by_key(|s| words(s).intersection(&target).count())
        .unwrap_or_default()
}

/// Whether a hit is relevant enough to ground an answer.
fn relevant(hit: &Hit, min_similarity: f32) -> bool {
    hit.breakdown.bm25_score.is_some_and(|s| s > 0.0)
        || hit
            .breakdown
            .vector_similarity
            .is_some_and(|s| s >= min_similarity)
}

/// Runs the pipeline, sending events to `tx`. Returns when done or when the receiver is gone.
pub async fn answer(engine: Arc<Engine>, req: AskRequest, tx: mpsc::Sender<AnswerEvent>) {
    let started = Instant::now();
    let trace_id = uuid::Uuid::new_v4().to_string();
    let send = |ev: AnswerEvent| {
        let tx = tx.clone();
        async move { tx.send(ev).await.is_ok() }
    };

    // Retrieval (CPU-bound: embedding + index) off the async threads.
    let eng = engine.clone();
    let (question, filter, k) = (req.question.clone(), req.filter.clone(), req.top_k);
    let hits = match tokio::task::spawn_blocking(move || {
        eng.search(&question, k, filter, SearchMode::Hybrid)
    })
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "retrieval failed");
            send(AnswerEvent::Error {
                code: "retrieval_failed",
                message:
                    "Searching the index failed; try again, and tell the operator if it persists."
                        .into(),
            })
            .await;
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "retrieval task panicked");
            send(AnswerEvent::Error {
                code: "internal",
                message: "An internal error occurred.".into(),
            })
            .await;
            return;
        }
    };
    if !send(AnswerEvent::Retrieval(
        hits.iter().map(HitView::from_hit).collect(),
    ))
    .await
    {
        return;
    }

    // Context: relevant hits, deduplicated, within the word budget.
    let min_sim = engine.config.retrieval.min_similarity;
    let mut context: Vec<&Hit> = Vec::new();
    let mut seen_text: HashSet<String> = HashSet::new();
    let mut budget = engine.config.retrieval.max_context_words;
    for h in hits.iter().filter(|h| relevant(h, min_sim)) {
        let norm: String = h
            .chunk
            .text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let n_words = h.chunk.text.split_whitespace().count();
        if !seen_text.insert(norm) || n_words > budget {
            continue;
        }
        budget -= n_words;
        context.push(h);
    }

    if context.is_empty() {
        // Nothing clears the relevance gate: say so without calling a model.
        let text = engine.config.answer.no_answer_text.clone();
        let _ = send(AnswerEvent::Token(text)).await;
        let _ = send(AnswerEvent::Usage(UsageView {
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            model: String::new(),
            provider: String::new(),
            cache_hit: false,
        }))
        .await;
        let _ = send(AnswerEvent::Done {
            trace_id,
            outcome: "no_answer",
            dropped_citations: 0,
        })
        .await;
        return;
    }

    let passages: Vec<ContextPassage> = context
        .iter()
        .enumerate()
        .map(|(i, h)| ContextPassage {
            n: i + 1,
            title: h.document.title.clone(),
            text: h.chunk.text.clone(),
        })
        .collect();
    let chat = engine
        .prompt
        .render(&req.question, &passages, &req.conversation);
    let targets = engine.router.targets(&engine.config.answer.route);

    let mut filter = CitationFilter::new(1..=passages.len());
    let mut answer_text = String::new();
    let mut usage = Usage::default();
    let mut used_target = None;
    let mut last_error = None;
    'targets: for target in targets {
        let mut stream = match target.provider.chat_stream(&target.model, &chat).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(provider = %target.provider_name, error = %e, "provider failed before streaming");
                last_error = Some(e);
                continue;
            }
        };
        let mut started_output = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ChatEvent::TextDelta(d)) => {
                    started_output = true;
                    let shown = filter.push(&d);
                    if !shown.is_empty() {
                        answer_text.push_str(&shown);
                        if !send(AnswerEvent::Token(shown)).await {
                            return; // client gone: dropping the stream cancels the upstream call
                        }
                    }
                }
                Ok(ChatEvent::Usage(u)) => usage = u,
                // The answer prompt offers no tools.
                Ok(ChatEvent::ToolCallDelta { .. }) => {}
                Ok(ChatEvent::Finish(FinishReason::Error)) => break,
                Ok(ChatEvent::Finish(_)) => {}
                Err(e) => {
                    tracing::warn!(provider = %target.provider_name, error = %e, "provider stream failed");
                    if !started_output {
                        last_error = Some(e);
                        continue 'targets;
                    }
                    let _ = send(AnswerEvent::Error {
                        code: "provider_stream_failed",
                        message: "The answer was cut off by a provider error; the part above is incomplete.".into(),
                    })
                    .await;
                    return;
                }
            }
        }
        used_target = Some(target);
        break;
    }
    let Some(target) = used_target else {
        tracing::warn!(error = ?last_error, "every provider of the route failed");
        let _ = send(AnswerEvent::Error {
            code: "providers_unavailable",
            message: engine.config.answer.fallback_text.clone(),
        })
        .await;
        return;
    };
    let tail = filter.finish();
    if !tail.is_empty() {
        answer_text.push_str(&tail);
        if !send(AnswerEvent::Token(tail)).await {
            return;
        }
    }
    let outcome = if answer_text.trim().is_empty() {
        let text = engine.config.answer.no_answer_text.clone();
        if !send(AnswerEvent::Token(text)).await {
            return;
        }
        "no_answer"
    } else {
        "answered"
    };
    let by_n: BTreeMap<usize, &Hit> = context
        .iter()
        .enumerate()
        .map(|(i, h)| (i + 1, *h))
        .collect();
    for n in &filter.used {
        let Some(h) = by_n.get(n) else { continue };
        let c = Citation {
            n: *n,
            doc_id: h.document.id.clone(),
            chunk_id: h.chunk_id.clone(),
            title: h.document.title.clone(),
            url: h.document.url.clone(),
            page: h.chunk.page,
            char_start: h.chunk.char_start,
            char_end: h.chunk.char_end,
            quote: best_quote(&answer_text, *n, &h.chunk.text),
        };
        if !send(AnswerEvent::Citation(c)).await {
            return;
        }
    }
    let _ = send(AnswerEvent::Usage(UsageView {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_usd: 0.0,
        model: target.model.clone(),
        provider: target.provider_name.clone(),
        cache_hit: false,
    }))
    .await;
    tracing::info!(
        trace_id = %trace_id,
        prompt_version = %engine.prompt.version,
        provider = %target.provider_name,
        context = context.len(),
        citations = filter.used.len(),
        dropped_citations = filter.dropped,
        ms = started.elapsed().as_millis() as u64,
        "answered"
    );
    let _ = send(AnswerEvent::Done {
        trace_id,
        outcome,
        dropped_citations: filter.dropped,
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_known_markers_drops_unknown_across_deltas() {
        let mut f = CitationFilter::new([1, 2]);
        let mut out = String::new();
        for d in [
            "Refunds take five days [",
            "1]. Shipping is free [",
            "7] always [2",
            "].",
        ] {
            out.push_str(&f.push(d));
        }
        out.push_str(&f.finish());
        assert_eq!(
            out,
            "Refunds take five days [1]. Shipping is free always [2]."
        );
        assert_eq!(f.used, vec![1, 2]);
        assert_eq!(f.dropped, 1);
    }

    #[test]
    fn brackets_that_are_not_markers_pass_through() {
        let mut f = CitationFilter::new([1]);
        let mut out = f.push("an array [a, b] and [");
        out.push_str(&f.push("x]"));
        out.push_str(&f.finish());
        assert_eq!(out, "an array [a, b] and [x]");
    }

    #[test]
    fn quote_is_the_supporting_sentence() {
        let q = best_quote(
            "Refunds take five business days [1].",
            1,
            "We ship daily. Refunds take five business days after receipt. Call us anytime.",
        );
        assert_eq!(q, "Refunds take five business days after receipt.");
    }
}
