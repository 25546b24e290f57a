//! The `extractive` provider: the offline default. It composes an answer from the retrieved
//! passages themselves — the sentences that best cover the question's words (a follow-up's:
//! the standalone query retrieval used), each followed by its `[n]` citation — and streams it
//! word by word through the same path as a real model. Deterministic: the same passages and
//! question (and query) give the same answer.

use std::collections::HashSet;

use futures::stream;

use super::{ChatEvent, ChatRequest, ChatStream, ContextPassage, FinishReason, Usage};

/// Settings of the extractive provider.
#[derive(Debug, Clone)]
pub struct Extractive {
    /// Sentences in the answer at most.
    pub max_sentences: usize,
}

impl Default for Extractive {
    fn default() -> Self {
        Extractive { max_sentences: 3 }
    }
}

const STOP: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "to", "of", "in", "on", "for", "and", "or",
    "what", "how", "do", "does", "can", "i", "my", "it", "with", "by", "at", "as", "from", "that",
    "this", "which", "who", "when", "where", "why", "you", "your", "about", "me", "we",
];

/// Lower-cased content words with a crude suffix fold so "refunds" meets "refund".
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
        .map(|w| {
            let w = w.strip_suffix("ies").map(|s| format!("{s}y")).unwrap_or(w);
            match w.strip_suffix('s') {
                Some(s) if s.len() > 2 && !s.ends_with('s') => s.to_string(),
                _ => w,
            }
        })
        .collect()
}

/// Splits text into sentences (on `.`, `!`, `?` followed by space, and on blank lines).
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let para = para
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ");
        let mut cur = String::new();
        let chars: Vec<char> = para.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            cur.push(*c);
            let end =
                matches!(c, '.' | '!' | '?') && chars.get(i + 1).is_none_or(|n| n.is_whitespace());
            if end {
                let s = cur.trim().to_string();
                if !s.is_empty() {
                    out.push(s);
                }
                cur.clear();
            }
        }
        let s = cur.trim().to_string();
        if !s.is_empty() {
            out.push(s);
        }
    }
    out
}

/// Places the `[n]` marker before the sentence's final punctuation: "… days [2]."
fn cite(sentence: &str, n: usize) -> String {
    match sentence.char_indices().last() {
        Some((i, c)) if matches!(c, '.' | '!' | '?') => {
            format!("{} [{n}]{c}", sentence[..i].trim_end())
        }
        _ => format!("{sentence} [{n}]"),
    }
}

impl Extractive {
    /// The answer text for a question over passages, with `[n]` citations.
    pub fn compose(&self, question: &str, passages: &[ContextPassage]) -> String {
        let q: HashSet<String> = terms(question).into_iter().collect();
        let mut scored: Vec<(f32, usize, usize, String)> = Vec::new();
        for (pi, p) in passages.iter().enumerate() {
            for (si, s) in sentences(&p.text).into_iter().enumerate() {
                let st: HashSet<String> = terms(&s).into_iter().collect();
                if st.len() < 3 {
                    continue;
                }
                let overlap = q.intersection(&st).count() as f32;
                if overlap == 0.0 {
                    continue;
                }
                // Prefer covering the question, then earlier passages (better ranked).
                let score = overlap / (q.len().max(1) as f32) - pi as f32 * 0.01;
                scored.push((score, pi, si, s));
            }
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut chosen: Vec<(usize, usize, String)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for (_, pi, si, s) in scored {
            if chosen.len() >= self.max_sentences {
                break;
            }
            if seen.insert(s.to_lowercase()) {
                chosen.push((pi, si, s));
            }
        }
        if chosen.is_empty() {
            return String::new();
        }
        // Read in passage order so the answer flows like the sources.
        chosen.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        chosen
            .into_iter()
            .map(|(pi, _, s)| cite(&s, passages[pi].n))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Streams the composed answer as word deltas, then usage and finish.
    pub fn stream(&self, _model: &str, req: &ChatRequest) -> ChatStream {
        let question = req
            .question
            .clone()
            .or_else(|| req.messages.last().map(|m| m.content.clone()))
            .unwrap_or_default();
        // A follow-up's standalone query says what the question is about ("Can I send it
        // back?" after "I bought a final-sale item").
        let answer = self.compose(req.query.as_deref().unwrap_or(&question), &req.context);
        let input_tokens: u64 = req
            .context
            .iter()
            .map(|p| p.text.split_whitespace().count() as u64)
            .sum::<u64>()
            + question.split_whitespace().count() as u64;
        let mut events: Vec<Result<ChatEvent, super::ProviderError>> = Vec::new();
        let mut output_tokens = 0u64;
        for (i, word) in answer.split(' ').enumerate() {
            output_tokens += 1;
            let delta = if i == 0 {
                word.to_string()
            } else {
                format!(" {word}")
            };
            events.push(Ok(ChatEvent::TextDelta(delta)));
        }
        events.push(Ok(ChatEvent::Usage(Usage {
            input_tokens,
            output_tokens: if answer.is_empty() { 0 } else { output_tokens },
            cached_tokens: 0,
        })));
        events.push(Ok(ChatEvent::Finish(FinishReason::Stop)));
        Box::pin(stream::iter(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: usize, text: &str) -> ContextPassage {
        ContextPassage {
            n,
            title: format!("doc {n}"),
            text: text.to_string(),
        }
    }

    #[test]
    fn cites_the_passage_that_answers() {
        let e = Extractive::default();
        let answer = e.compose(
            "How long do refunds take?",
            &[
                p(
                    1,
                    "Shipping is free over fifty euros. Parcels leave the warehouse daily.",
                ),
                p(
                    2,
                    "Refunds take five business days to reach your card after we receive the item.",
                ),
            ],
        );
        assert!(
            answer.contains("Refunds take five business days"),
            "{answer}"
        );
        assert!(
            answer.contains("days to reach your card after we receive the item [2]."),
            "{answer}"
        );
        assert!(!answer.contains("[1]"), "{answer}");
    }

    /// The streamed answer of a request whose question is "Can I send it back?".
    fn streamed(query: Option<&str>) -> String {
        use futures::StreamExt;
        let req = ChatRequest {
            question: Some("Can I send it back?".into()),
            query: query.map(str::to_string),
            context: vec![p(
                1,
                "When you get your money back after a return. Items marked as final sale cannot be returned. Gift cards never expire.",
            )],
            ..ChatRequest::default()
        };
        let events = futures::executor::block_on(
            Extractive { max_sentences: 1 }
                .stream("extractive", &req)
                .collect::<Vec<_>>(),
        );
        events
            .into_iter()
            .filter_map(|e| match e {
                Ok(ChatEvent::TextDelta(t)) => Some(t),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_follow_ups_query_picks_the_sentences_it_is_about() {
        let bare = streamed(None);
        assert!(bare.contains("money back"), "{bare}");
        let standalone = streamed(Some(
            "Can I send it back? bought something marked final sale",
        ));
        assert!(
            standalone.contains("final sale cannot be returned"),
            "{standalone}"
        );
    }

    #[test]
    fn no_overlap_gives_empty_answer() {
        let e = Extractive::default();
        assert_eq!(
            e.compose(
                "quantum chromodynamics",
                &[p(1, "Refunds take five days to arrive.")]
            ),
            ""
        );
    }

    #[test]
    fn sentences_split_on_terminators_and_headings() {
        let s = sentences("# Title\n\nOne two. Three four! Five?");
        assert_eq!(s, vec!["Title", "One two.", "Three four!", "Five?"]);
    }
}
