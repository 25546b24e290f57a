//! Which `[n]` markers an answer may show and what each citation quotes: the streaming
//! [`CitationFilter`] keeps markers of passages the model was given and drops the rest, and
//! [`best_quote`] picks the sentence of a passage's chunks that supports the text citing it,
//! as a range of the chunk's own text (a quote is always verbatim).
//!
//! Must not: let through a marker whose passage was not in the prompt.

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;

/// The longest marker body held back while it is still open: a bracket of marker characters
/// that grows past it is dropped (it could still close, and then name anything).
const MAX_MARKER_CHARS: usize = 128;

/// Characters a citation marker's body is made of: numbers, ranges (`1-3`, `1–3`) and the
/// separators of lists (`1, 7`, `1; 7`, `1 7`).
fn is_marker_char(c: char) -> bool {
    c.is_ascii_digit() || c.is_whitespace() || matches!(c, ',' | ';' | '-' | '\u{2013}')
}

/// One element of a marker's list: `n` or a range `lo-hi` (`lo <= hi`); `None` when it is
/// neither (a number past `usize`, a reversed or open range).
fn marker_element(token: &str) -> Option<(usize, usize)> {
    match token.split_once(['-', '\u{2013}']) {
        Some((lo, hi)) => {
            let (lo, hi) = (lo.parse().ok()?, hi.parse().ok()?);
            (lo <= hi).then_some((lo, hi))
        }
        None => token.parse().ok().map(|n| (n, n)),
    }
}

/// Checks every citation marker of the answer against the passages given to the model,
/// across deltas. A marker is a bracket holding numbers: `[1]`, a list `[1, 7]` or `[1; 7]`, a
/// range `[1-9]` or `[1–9]`. It is shown as one `[n]` per passage it names that was given to
/// the model, in its order (`[1, 7]` → `[1]`, `[2-9]` with three passages → `[2][3]`); the
/// numbers and ranges naming other passages are dropped (counted in `dropped`), and a marker
/// left with none is dropped with the space before it. A bracket still open at the end of a
/// delta is held back until the next one decides it, up to [`MAX_MARKER_CHARS`], and so are
/// spaces ending a delta.
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
            let body_len = tail.find(|c| !is_marker_char(c)).unwrap_or(tail.len());
            let (body, after) = tail.split_at(body_len);
            if after.is_empty() {
                if body.chars().count() <= MAX_MARKER_CHARS {
                    // Undecided: hold the marker (and the spaces before it, dropped with it if
                    // it names no passage) until more text arrives.
                    let kept = out.trim_end_matches(' ').len();
                    self.held = format!("{}{}", &out[kept..], &rest[open..]);
                    out.truncate(kept);
                    return out;
                }
                self.dropped += 1;
                drop_space_before(&mut out);
                rest = after;
            } else if after.starts_with(']') && body.contains(|c: char| c.is_ascii_digit()) {
                self.marker(body, &mut out);
                rest = &after[1..];
            } else {
                out.push('[');
                rest = tail;
            }
        }
        out.push_str(rest);
        // Trailing spaces wait too: a marker in the next delta may drop them.
        let kept = out.trim_end_matches(' ').len();
        self.held = out[kept..].to_string();
        out.truncate(kept);
        out
    }

    /// Shows the passages a closed marker's `body` names that were given to the model.
    fn marker(&mut self, body: &str, out: &mut String) {
        let mut kept: Vec<usize> = Vec::new();
        let tokens = body
            .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
            .filter(|t| !t.is_empty());
        for token in tokens {
            let Some((lo, hi)) = marker_element(token) else {
                self.dropped += 1;
                continue;
            };
            let given: Vec<usize> = self.allowed.range(lo..=hi).copied().collect();
            // `given.len() <= hi - lo` ⇔ some number of the range was not given.
            if given.len() <= hi - lo {
                self.dropped += 1;
            }
            for n in given {
                if !kept.contains(&n) {
                    kept.push(n);
                }
            }
        }
        if kept.is_empty() {
            drop_space_before(out);
            return;
        }
        for n in kept {
            out.push_str(&format!("[{n}]"));
            if !self.used.contains(&n) {
                self.used.push(n);
            }
        }
    }

    /// Flushes held text at the end of the stream (a bracket that never closed is no marker).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Drops the space before a dropped marker.
fn drop_space_before(out: &mut String) {
    if out.ends_with(' ') {
        out.pop();
    }
}

fn words(s: &str) -> HashSet<String> {
    crate::providers::extractive::terms(s).into_iter().collect()
}

/// The sentences of `text` as byte ranges of it, so a quote is always an exact substring: a
/// sentence ends at `.`, `!` or `?` before whitespace or the end, at a blank line, and a
/// Markdown heading line is a sentence of its own (without its `#`s). Sentences may span line
/// breaks (wrapped prose); they start and end at a non-space character.
pub fn sentence_spans(text: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    // The open sentence: its start and the end of its last non-space character.
    let mut open: Option<(usize, usize)> = None;
    let close = |open: &mut Option<(usize, usize)>, spans: &mut Vec<Range<usize>>| {
        if let Some((start, end)) = open.take() {
            spans.push(start..end);
        }
    };
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let at = line_start;
        line_start += line.len();
        let body = line.trim_start();
        if body.trim_end().is_empty() {
            close(&mut open, &mut spans);
            continue;
        }
        if body.starts_with('#') {
            close(&mut open, &mut spans);
            let heading = body.trim_start_matches('#').trim();
            if !heading.is_empty() {
                let start = at + line.len() - body.trim_start_matches('#').trim_start().len();
                spans.push(start..start + heading.len());
            }
            continue;
        }
        let mut chars = line.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c.is_whitespace() {
                continue;
            }
            let end = at + i + c.len_utf8();
            let (start, _) = open.unwrap_or((at + i, end));
            open = Some((start, end));
            let next = chars.peek().map(|&(_, n)| n);
            if matches!(c, '.' | '!' | '?') && next.is_none_or(char::is_whitespace) {
                close(&mut open, &mut spans);
            }
        }
    }
    close(&mut open, &mut spans);
    spans
}

/// Where a citation's quote lies: which of the texts it was chosen from, and its byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteSpan {
    pub text: usize,
    pub bytes: Range<usize>,
}

/// The sentence among `texts` (the cited passage's chunks, the preferred first) sharing most
/// words with the answer sentences citing `[n]`; the first of equals. `None` when the texts
/// hold no sentence.
pub fn best_quote(answer: &str, n: usize, texts: &[&str]) -> Option<QuoteSpan> {
    let marker = format!("[{n}]");
    let citing: String = crate::providers::extractive::sentences(answer)
        .into_iter()
        .filter(|s| s.contains(&marker))
        .collect::<Vec<_>>()
        .join(" ");
    let target = words(&citing);
    let mut best: Option<(usize, QuoteSpan)> = None;
    for (i, text) in texts.iter().enumerate() {
        for span in sentence_spans(text) {
            let score = words(&text[span.clone()]).intersection(&target).count();
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                best = Some((
                    score,
                    QuoteSpan {
                        text: i,
                        bytes: span,
                    },
                ));
            }
        }
    }
    best.map(|(_, q)| q)
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
        let texts = [
            "We ship daily. Call us anytime.",
            "We ship daily. Refunds take five business days after receipt. Call us anytime.",
        ];
        let q = best_quote("Refunds take five business days [1].", 1, &texts).expect("quote");
        assert_eq!(q.text, 1);
        assert_eq!(
            &texts[1][q.bytes],
            "Refunds take five business days after receipt."
        );
    }

    #[test]
    fn sentences_are_exact_ranges_of_the_text() {
        let text = "# Refunds\n\nRefunds take five\nbusiness days.  Card refunds?\n## Exchanges \n\
                    Sizes: swap\u{e9} them!\n\n   trailing words";
        let got: Vec<&str> = sentence_spans(text).into_iter().map(|r| &text[r]).collect();
        assert_eq!(
            got,
            [
                "Refunds",
                "Refunds take five\nbusiness days.",
                "Card refunds?",
                "Exchanges",
                "Sizes: swap\u{e9} them!",
                "trailing words",
            ]
        );
    }

    /// Runs `deltas` through a filter allowing `1..=3`; the text shown and the filter.
    fn filtered(deltas: &[&str]) -> (String, CitationFilter) {
        let mut f = CitationFilter::new(1..=3);
        let mut out = String::new();
        for d in deltas {
            out.push_str(&f.push(d));
        }
        out.push_str(&f.finish());
        (out, f)
    }

    /// Every bracket in `shown` holding a digit is `[n]` with `n` in `1..=3`.
    fn assert_only_known_markers(shown: &str, context: &str) {
        let mut rest = shown;
        while let Some(open) = rest.find('[') {
            let tail = &rest[open + 1..];
            let body = &tail[..tail.find(']').unwrap_or(tail.len())];
            if body.chars().any(|c| c.is_ascii_digit()) {
                let n: Option<usize> = body.parse().ok();
                assert!(
                    n.is_some_and(|n| (1..=3).contains(&n)),
                    "marker [{body}] shown in {shown:?} ({context})"
                );
            }
            rest = tail;
        }
    }

    const MIXED: &str = "Refunds take five days [1, 7]. Shipping [1-9] is free [2]. \
        Old [12345] and [3\u{2013}4] and [2; 1] end [99999999999999999999999]. [0] [a] [].";

    #[test]
    fn lists_and_ranges_keep_only_passages_given_to_the_model() {
        let (shown, f) = filtered(&[MIXED]);
        assert_eq!(
            shown,
            "Refunds take five days [1]. Shipping [1][2][3] is free [2]. \
             Old and [3] and [2][1] end. [a] []."
        );
        assert_eq!(f.used, vec![1, 2, 3]);
        // 7, the range past 3, 12345, 4, the huge number and 0.
        assert_eq!(f.dropped, 6);
    }

    #[test]
    fn a_marker_split_across_deltas_anywhere_is_checked_the_same() {
        let (whole, _) = filtered(&[MIXED]);
        assert_only_known_markers(&whole, "one delta");
        let cuts: Vec<usize> = (0..=MIXED.len())
            .filter(|&i| MIXED.is_char_boundary(i))
            .collect();
        for &a in &cuts {
            for &b in cuts.iter().filter(|&&b| b >= a) {
                let (shown, _) = filtered(&[&MIXED[..a], &MIXED[a..b], &MIXED[b..]]);
                assert_eq!(shown, whole, "cut at {a} and {b}");
            }
        }
        // One character per delta.
        let chars: Vec<String> = MIXED.chars().map(String::from).collect();
        let deltas: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(filtered(&deltas).0, whole, "one character per delta");
    }

    #[test]
    fn a_long_number_split_across_deltas_is_not_shown() {
        for digits in 1..=24 {
            let number = "9".repeat(digits);
            let text = format!("Text [{number}] more.");
            for cut in 1..text.len() {
                let (shown, _) = filtered(&[&text[..cut], &text[cut..]]);
                assert_eq!(shown, "Text more.", "[{number}] cut at {cut}");
            }
        }
    }

    #[test]
    fn an_endless_marker_is_dropped_not_held_forever() {
        let mut f = CitationFilter::new(1..=3);
        let mut shown = f.push("Text [1");
        for _ in 0..1000 {
            shown.push_str(&f.push(", 1"));
        }
        shown.push_str(&f.push("] end."));
        shown.push_str(&f.finish());
        assert_only_known_markers(&shown, "endless marker");
        assert!(shown.starts_with("Text"), "{shown}");
        assert!(shown.len() < 4000, "held and shown: {}", shown.len());
    }
}
