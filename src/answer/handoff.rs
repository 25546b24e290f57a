//! Hand-off: whether a human should take over an answer, and why — from how the answer ended
//! and from the caller's own words (`[answer] handoff_phrases`, and the condense model's
//! reading of them when `[retrieval] condense = "model"`).
//!
//! Must not: depend on the engine or the pipeline (a pure function of what the answer produced).

use serde::Serialize;

/// Why a human should take over; `None` (JSON `null`) when the answer stands on its own.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Handoff {
    /// `requested`, `no_answer`, `budget_exhausted` (agent mode stopped at a limit and
    /// answered from what it had), `citations_dropped`, `provider_unavailable` or
    /// `service_error`.
    pub reason: &'static str,
}

/// The phrases that ask for a person, used when `[answer] handoff_phrases` is not set.
pub fn default_phrases() -> Vec<String> {
    [
        "a human",
        "real person",
        "talk to a person",
        "speak to a person",
        "speak with a person",
        "talk to someone",
        "speak to someone",
        "speak with someone",
        "live agent",
        "human agent",
        "an agent",
        "representative",
        "call me back",
    ]
    .map(String::from)
    .to_vec()
}

/// Lower-case words separated by single spaces, padded with one space at each end, so that
/// a phrase matches whole words only.
fn words(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .to_lowercase();
    format!(
        " {} ",
        spaced.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// Whether `question` asks for a person: it holds one of `phrases` as whole words, whatever
/// the case and punctuation.
pub fn requested(question: &str, phrases: &[String]) -> bool {
    let question = words(question);
    phrases
        .iter()
        .map(|p| words(p))
        .any(|p| p.trim() != "" && question.contains(&p))
}

/// The hand-off of an answer that ended with `done`: asked for (`requested`: see
/// [`requested`]), then nothing relevant found (or the model answered nothing), then citations
/// the model invented.
pub fn of_done(requested: bool, outcome: &str, dropped_citations: usize) -> Option<Handoff> {
    let reason = if requested {
        "requested"
    } else if outcome == "no_answer" {
        "no_answer"
    } else if outcome == "budget_exhausted" {
        "budget_exhausted"
    } else if dropped_citations > 0 {
        "citations_dropped"
    } else {
        return None;
    };
    Some(Handoff { reason })
}

/// The hand-off of an answer that ended with the error `code`: always one, as no complete
/// answer was shown — `provider_unavailable` when the model side failed (only the fallback
/// text or a cut-off answer could be shown), `service_error` otherwise.
pub fn of_error(code: &str) -> Handoff {
    let reason = match code {
        "providers_unavailable"
        | "provider_error"
        | "provider_stream_failed"
        | "deadline_exceeded"
        | "budget_exhausted"
        | "overloaded" => "provider_unavailable",
        _ => "service_error",
    };
    Handoff { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_match_whole_words_whatever_the_case_and_punctuation() {
        let p = default_phrases();
        assert!(requested("Can I talk to a HUMAN, please?", &p));
        assert!(requested("I want a real-person now", &p));
        assert!(!requested("Is this humane?", &p));
        assert!(!requested("How long do refunds take?", &p));
        assert!(!requested("anything", &[String::new(), "  ".into()]));
    }

    #[test]
    fn a_request_outranks_how_the_answer_ended() {
        let p = default_phrases();
        let reason = |q, o, d| of_done(requested(q, &p), o, d).map(|h| h.reason);
        assert_eq!(reason("talk to someone", "answered", 0), Some("requested"));
        assert_eq!(reason("refunds?", "no_answer", 0), Some("no_answer"));
        assert_eq!(reason("refunds?", "answered", 2), Some("citations_dropped"));
        assert_eq!(reason("refunds?", "answered", 0), None);
        assert_eq!(reason("refunds?", "truncated", 0), None);
        assert_eq!(
            of_error("providers_unavailable").reason,
            "provider_unavailable"
        );
        assert_eq!(of_error("internal").reason, "service_error");
    }
}
