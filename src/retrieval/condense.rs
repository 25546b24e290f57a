//! `[retrieval] condense`: the standalone query a follow-up question is retrieved with. A
//! follow-up ("And how much is it?") names little of what it asks about; the heuristic adds
//! the salient words of the caller's earlier turns to it, deterministically and offline. The
//! model rewrite (`condense = "model"`) lives in `condense_model.rs` and falls back to this.
//!
//! Must not: call a model or see assistant turns (only what the caller wrote steers retrieval).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// How the query is derived from the conversation and the new question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Condense {
    /// Follow-ups get the salient words of earlier user turns.
    #[default]
    Heuristic,
    /// The question alone.
    Off,
    /// A small model on the `[routes] condense` route rewrites the question (and says whether
    /// the caller asks for a person); any failure falls back to `Heuristic`.
    Model,
}

/// Words added to a follow-up at most.
const MAX_ADDED: usize = 6;

/// A question with at most this many salient words is a follow-up even without a pronoun.
const SHORT: usize = 2;

/// Words that carry no topic: function words, question words and pronouns.
const STOPWORDS: &[&str] = &[
    "about", "after", "again", "all", "also", "and", "any", "anything", "are", "because", "been",
    "before", "being", "but", "can", "could", "did", "does", "doing", "done", "each", "else",
    "for", "from", "get", "gets", "got", "had", "has", "have", "having", "her", "here", "him",
    "his", "how", "into", "its", "just", "long", "many", "may", "might", "more", "most", "much",
    "must", "need", "not", "now", "off", "one", "ones", "only", "other", "our", "out", "over",
    "own", "please", "same", "shall", "she", "should", "some", "such", "take", "takes", "than",
    "thanks", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those",
    "too", "under", "until", "very", "was", "way", "were", "what", "when", "where", "which",
    "while", "who", "whom", "why", "will", "with", "would", "yes", "you", "your", "yours",
];

/// Words that point back at something said before.
const ANAPHORA: &[&str] = &[
    "it", "its", "that", "this", "these", "those", "they", "them", "there", "one", "ones", "same",
    "also", "else", "too",
];

impl Condense {
    /// The name traces record for the condenser (`model`, `heuristic`, `off`).
    pub fn label(self) -> &'static str {
        match self {
            Condense::Heuristic => "heuristic",
            Condense::Off => "off",
            Condense::Model => "model",
        }
    }
}

/// The lower-case words of `text` (letters and digits).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The words of `text` that name a topic: three letters or more (or a number), not a stopword.
pub fn salient(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| w.chars().count() >= 3 || w.chars().all(|c| c.is_ascii_digit()))
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Whether `question` leans on what was said before: it points back (a pronoun, "and …",
/// "what about …") or names almost nothing itself.
pub fn is_follow_up(question: &str) -> bool {
    let all = words(question);
    let points_back = all.iter().any(|w| ANAPHORA.contains(&w.as_str()))
        || matches!(all.first().map(String::as_str), Some("and" | "or" | "but"))
        || question.to_lowercase().contains("what about")
        || question.to_lowercase().contains("how about");
    points_back || salient(question).len() <= SHORT
}

/// The query retrieval runs on for `question` after the caller's `earlier` turns (oldest
/// first): with `Heuristic`, a follow-up gets up to six salient words of those turns it does
/// not already hold, newest turn first; otherwise the question as it is.
pub fn standalone_query(mode: Condense, question: &str, earlier: &[&str]) -> String {
    if mode != Condense::Heuristic || earlier.is_empty() || !is_follow_up(question) {
        return question.to_string();
    }
    let mut seen: HashSet<String> = words(question).into_iter().collect();
    let mut added = Vec::new();
    for turn in earlier.iter().rev() {
        for w in salient(turn) {
            if added.len() == MAX_ADDED {
                break;
            }
            if seen.insert(w.clone()) {
                added.push(w);
            }
        }
    }
    if added.is_empty() {
        return question.to_string();
    }
    format!("{question} {}", added.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heuristic's query for `question` after the user turns `earlier`.
    fn heuristic(question: &str, earlier: &[&str]) -> String {
        standalone_query(Condense::Heuristic, question, earlier)
    }

    #[test]
    fn a_follow_up_gets_the_salient_words_of_earlier_turns_newest_first() {
        let earlier = [
            "Do you ship to Norway?",
            "How long does express delivery take?",
        ];
        let q = heuristic("And how much does it cost?", &earlier);
        assert_eq!(q, "And how much does it cost? express delivery ship norway");
    }

    #[test]
    fn a_standalone_question_and_off_keep_the_question() {
        let earlier = ["How long do refunds take?"];
        let q = "What does express shipping cost?";
        assert_eq!(heuristic(q, &earlier), q);
        let f = "And for that?";
        assert_eq!(standalone_query(Condense::Off, f, &earlier), f);
        assert_eq!(heuristic(f, &[]), f);
    }

    #[test]
    fn at_most_six_words_are_added_and_none_twice() {
        let earlier = [
            "alpha beta gamma delta",
            "epsilon zeta eta theta refundable beta",
        ];
        let q = heuristic("Is that refundable?", &earlier);
        assert_eq!(q, "Is that refundable? epsilon zeta eta theta beta alpha");
    }
}
