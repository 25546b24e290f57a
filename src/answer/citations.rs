//! Which `[n]` markers an answer may show and what each citation quotes: the streaming
//! [`CitationFilter`] keeps markers of passages the model was given and drops the rest, and
//! [`best_quote`] picks the sentence of a passage that supports the text citing it.
//!
//! Must not: let through a marker whose passage was not in the prompt.

use std::collections::{BTreeSet, HashSet};

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
                // Undecided: hold the marker (and the space before it, dropped with it if the
                // marker turns out unknown) until more text arrives.
                let kept = out.trim_end_matches(' ').len();
                self.held = format!("{}{}", &out[kept..], &rest[open..]);
                out.truncate(kept);
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
pub fn best_quote(answer: &str, n: usize, chunk_text: &str) -> String {
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
