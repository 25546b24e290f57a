//! Data minimisation before a model provider (`[privacy]`): masking of e-mail addresses, phone
//! numbers, card numbers (Luhn-checked) and configured patterns in the text of one answer
//! request — its question, conversation, and retrieved passages — with stable typed
//! placeholders (`[email-1]`, `[card-2]`, `[ticket-1]`), and mapping the placeholders in the
//! model's streamed answer back to the values.
//!
//! Owns the masking rules and the per-request value ↔ placeholder table. Must not: map back a
//! value that did not come from the request's own text (the caller's question and the
//! passages its access-filtered retrieval returned), or change the text citations quote
//! (those are taken from the unmasked chunks).

use std::collections::{BTreeMap, HashMap, HashSet};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::config::section::ConfigError;

/// The built-in kinds, in the order their matches win over overlapping later ones.
const BUILT_IN: [&str; 3] = ["card", "email", "phone"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPrivacy {
    /// Built-in kinds masked before any provider sees the text: "email", "phone", "card"
    /// (in any order: where matches overlap, card wins over email over phone).
    pub mask: Vec<String>,
    /// Extra patterns, masked as `[name-n]`.
    pub custom: Vec<RawPattern>,
}

impl Default for RawPrivacy {
    fn default() -> Self {
        RawPrivacy {
            mask: ["email", "phone", "card"].map(String::from).to_vec(),
            custom: Vec::new(),
        }
    }
}

/// `{ name = "ticket", pattern = "TICKET-[0-9]+" }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPattern {
    pub name: String,
    pub pattern: String,
}

/// One masking rule: what matches, and an optional check a match must pass.
#[derive(Debug, Clone)]
struct Rule {
    kind: String,
    regex: Regex,
    check: fn(&str) -> bool,
}

/// The validated `[privacy]` rules. Cheap to clone (compiled regexes are shared).
#[derive(Debug, Clone, Default)]
pub struct Masker {
    rules: Vec<Rule>,
}

fn always(_: &str) -> bool {
    true
}

/// A built-in rule; `None` for an unknown kind (the patterns are constants, and the unit tests
/// check that each compiles).
fn built_in(kind: &str) -> Option<Rule> {
    let (pattern, check): (&str, fn(&str) -> bool) = match kind {
        // 13 to 19 digits, optionally grouped by single spaces or dashes; Luhn decides.
        "card" => (r"\b\d(?:[ -]?\d){12,18}\b", luhn_valid),
        "email" => (
            r"(?i)\b[a-z0-9._%+-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,}\b",
            always,
        ),
        // International (+33 1 23 45 67 89), parenthesised area code ((415) 555-2671),
        // North American (415-555-2671) and national trunk-prefixed (020 7946 0958) forms.
        // Bare digit runs never match: they need a `+`, parentheses or separators.
        "phone" => (
            r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,5}|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}|\b\d{3}[ .-]\d{3}[ .-]\d{4}|\b0\d{1,4}(?:[ .-]\d{2,4}){2,4})\b",
            phone_plausible,
        ),
        _ => return None,
    };
    Some(Rule {
        kind: kind.to_string(),
        regex: Regex::new(pattern).ok()?,
        check,
    })
}

/// Whether a digit string (separators ignored) passes the Luhn checksum of card numbers.
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// 7 to 15 digits (E.164), and not shaped like a date (`05.06.2024`, `2024-06-05`).
fn phone_plausible(s: &str) -> bool {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    if !(7..=15).contains(&digits) {
        return false;
    }
    let groups: Vec<usize> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .map(str::len)
        .collect();
    let date_like = matches!(groups.as_slice(), [1 | 2, 1 | 2, 2 | 4] | [4, 1 | 2, 1 | 2])
        && !s.starts_with('+')
        && !s.starts_with('(');
    !date_like
}

impl Masker {
    /// Validates `[privacy]`: known kinds, custom names that are lowercase words distinct from
    /// the built-in ones, patterns that compile and cannot match the empty string.
    pub fn from_config(raw: &RawPrivacy, origin: &str) -> Result<Masker, ConfigError> {
        let key_err = |key: &str, message: String| ConfigError::Key {
            file: origin.into(),
            key: format!("privacy.{key}"),
            message,
        };
        let mut rules = Vec::new();
        for kind in &raw.mask {
            if !BUILT_IN.contains(&kind.as_str()) {
                return Err(key_err(
                    "mask",
                    format!(
                        "unknown kind `{kind}`; use email, phone, card (or add a [[privacy.custom]] pattern)"
                    ),
                ));
            }
        }
        // Built-ins in their fixed precedence order (cards before phones), then custom ones.
        for kind in BUILT_IN {
            if raw.mask.iter().any(|k| k == kind)
                && let Some(rule) = built_in(kind)
            {
                rules.push(rule);
            }
        }
        for (i, p) in raw.custom.iter().enumerate() {
            let key = format!("custom[{i}]");
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 32
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !name_ok {
                return Err(key_err(
                    &format!("{key}.name"),
                    format!(
                        "`{}` must be 1 to 32 lowercase letters, digits or `_` (it names the placeholder)",
                        p.name
                    ),
                ));
            }
            if BUILT_IN.contains(&p.name.as_str())
                || raw.custom[..i].iter().any(|q| q.name == p.name)
            {
                return Err(key_err(
                    &format!("{key}.name"),
                    format!("`{}` is already a masking kind; pick another name", p.name),
                ));
            }
            let regex = Regex::new(&p.pattern)
                .map_err(|e| key_err(&format!("{key}.pattern"), format!("invalid regex: {e}")))?;
            if regex.is_match("") {
                return Err(key_err(
                    &format!("{key}.pattern"),
                    "matches the empty string; it must match at least one character".into(),
                ));
            }
            rules.push(Rule {
                kind: p.name.clone(),
                regex,
                check: always,
            });
        }
        Ok(Masker { rules })
    }

    /// Whether any rule is configured.
    pub fn is_enabled(&self) -> bool {
        !self.rules.is_empty()
    }

    /// A fresh value table for one request.
    pub fn start(&self) -> Masking<'_> {
        Masking {
            masker: self,
            placeholders: HashMap::new(),
            values: HashMap::new(),
            counts: BTreeMap::new(),
            from_caller: HashSet::new(),
            caller_text: false,
        }
    }
}

/// The masking of one request: the same value gets the same placeholder everywhere in it.
#[derive(Debug)]
pub struct Masking<'a> {
    masker: &'a Masker,
    /// (kind, value) → placeholder.
    placeholders: HashMap<(String, String), String>,
    /// placeholder → value.
    values: HashMap<String, String>,
    /// Distinct values masked per kind.
    counts: BTreeMap<String, usize>,
    /// Placeholders of values first seen in the caller's own text (question, conversation)
    /// rather than in retrieved passages.
    from_caller: HashSet<String>,
    caller_text: bool,
}

impl Masking<'_> {
    /// `text` with every match replaced by its placeholder. Rules earlier in the list win
    /// where matches overlap.
    pub fn mask(&mut self, text: &str) -> String {
        if !self.masker.is_enabled() {
            return text.to_string();
        }
        let mut spans: Vec<(usize, usize, usize)> = Vec::new(); // start, end, rule
        for (r, rule) in self.masker.rules.iter().enumerate() {
            for m in rule.regex.find_iter(text) {
                if m.is_empty() || !(rule.check)(m.as_str()) {
                    continue;
                }
                if spans.iter().any(|&(s, e, _)| m.start() < e && s < m.end()) {
                    continue;
                }
                spans.push((m.start(), m.end(), r));
            }
        }
        if spans.is_empty() {
            return text.to_string();
        }
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, r) in spans {
            out.push_str(&text[at..start]);
            let kind = &self.masker.rules[r].kind;
            out.push_str(&self.placeholder(kind, &text[start..end]));
            at = end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// As [`Masking::mask`] for the caller's own text (question, conversation). Mask the
    /// passages first: a value also found in a passage counts as the passage's.
    pub fn mask_caller(&mut self, text: &str) -> String {
        self.caller_text = true;
        let out = self.mask(text);
        self.caller_text = false;
        out
    }

    /// [`Masking::mask_caller`] over each turn of the caller's conversation.
    pub fn mask_turns(
        &mut self,
        turns: &[crate::providers::Message],
    ) -> Vec<crate::providers::Message> {
        turns
            .iter()
            .map(|m| crate::providers::Message {
                role: m.role,
                content: self.mask_caller(&m.content),
            })
            .collect()
    }

    fn placeholder(&mut self, kind: &str, value: &str) -> String {
        let key = (kind.to_string(), value.to_string());
        if let Some(p) = self.placeholders.get(&key) {
            return p.clone();
        }
        let n = self.counts.entry(kind.to_string()).or_insert(0);
        *n += 1;
        let p = format!("[{kind}-{n}]");
        self.values.insert(p.clone(), value.to_string());
        self.placeholders.insert(key, p.clone());
        if self.caller_text {
            self.from_caller.insert(p.clone());
        }
        p
    }

    /// Distinct values masked so far, per kind (for the audit log).
    pub fn counts(&self) -> &BTreeMap<String, usize> {
        &self.counts
    }

    /// Maps placeholders in the model's streamed output back to this request's values.
    pub fn unmasker(&self) -> Unmasker {
        Unmasker {
            values: self.values.clone(),
            longest: self.values.keys().map(String::len).max().unwrap_or(0),
            held: String::new(),
            from_caller: self.from_caller.clone(),
            used_caller_value: false,
        }
    }
}

/// Replaces placeholders in streamed deltas with their values; a delta ending inside a
/// possible placeholder (`… [ema`) is held back until the next one decides it. Unknown
/// placeholders (a model inventing `[email-9]`) pass through unchanged.
#[derive(Debug, Default)]
pub struct Unmasker {
    values: HashMap<String, String>,
    longest: usize,
    held: String,
    from_caller: HashSet<String>,
    used_caller_value: bool,
}

impl Unmasker {
    /// Feeds a delta; returns the text that can be shown now.
    pub fn push(&mut self, delta: &str) -> String {
        if self.values.is_empty() {
            return delta.to_string();
        }
        self.held.push_str(delta);
        let text = std::mem::take(&mut self.held);
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            match tail.find(']') {
                Some(close) => {
                    let candidate = &tail[..=close];
                    match self.values.get(candidate) {
                        Some(v) => {
                            out.push_str(v);
                            if self.from_caller.contains(candidate) {
                                self.used_caller_value = true;
                            }
                            rest = &tail[close + 1..];
                        }
                        None => {
                            out.push('[');
                            rest = &tail[1..];
                        }
                    }
                }
                None if tail.len() < self.longest
                    && self.values.keys().any(|k| k.starts_with(tail)) =>
                {
                    // Could still become a placeholder: wait for more text.
                    self.held = tail.to_string();
                    return out;
                }
                None => {
                    out.push('[');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Flushes held text at the end of the stream.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Whether the output so far got a value that only the caller's own text held (an
    /// answer carrying it must not be served to other callers from the cache).
    pub fn used_caller_value(&self) -> bool {
        self.used_caller_value
    }

    /// Maps a whole text (not streamed).
    pub fn apply(&mut self, text: &str) -> String {
        let mut out = self.push(text);
        out.push_str(&self.finish());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(mask: &[&str], custom: &[(&str, &str)]) -> RawPrivacy {
        RawPrivacy {
            mask: mask.iter().map(|s| s.to_string()).collect(),
            custom: custom
                .iter()
                .map(|(n, p)| RawPattern {
                    name: n.to_string(),
                    pattern: p.to_string(),
                })
                .collect(),
        }
    }

    fn masker(mask: &[&str], custom: &[(&str, &str)]) -> Masker {
        Masker::from_config(&raw(mask, custom), "test").expect("valid privacy config")
    }

    fn all() -> Masker {
        masker(&["email", "phone", "card"], &[])
    }

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"),
        )
        .expect("config.toml");
        let table: toml::Table = toml::from_str(&text).expect("toml");
        let documented: RawPrivacy = table["privacy"].clone().try_into().expect("[privacy]");
        let default = RawPrivacy::default();
        assert_eq!(documented.mask, default.mask);
        assert!(documented.custom.is_empty());
        let audit: crate::observe::audit::RawAudit =
            table["audit"].clone().try_into().expect("[audit]");
        assert_eq!(audit, crate::observe::audit::RawAudit::default());
    }

    #[test]
    fn built_in_patterns_compile() {
        for kind in BUILT_IN {
            assert!(built_in(kind).is_some(), "{kind}");
        }
    }

    #[test]
    fn masks_emails_phones_and_cards_with_stable_placeholders() {
        let m = all();
        let mut s = m.start();
        let a = s.mask(
            "Mail jane.doe@example.co.uk or call +44 20 7946 0958; card 4111 1111 1111 1111.",
        );
        assert_eq!(a, "Mail [email-1] or call [phone-1]; card [card-1].");
        // The same value keeps its placeholder across texts of the request.
        let b = s.mask("Again: JANE.DOE@example.co.uk? jane.doe@example.co.uk, bob@x.io");
        assert_eq!(b, "Again: [email-2]? [email-1], [email-3]");
        assert_eq!(s.counts().get("email"), Some(&3));
        assert_eq!(s.counts().get("card"), Some(&1));
    }

    #[test]
    fn phone_forms_are_masked() {
        let m = all();
        for phone in [
            "+1 415 555 2671",
            "+14155552671",
            "+33 (0)1 23 45 67 89",
            "(415) 555-2671",
            "415-555-2671",
            "415.555.2671",
            "020 7946 0958",
            "01 23 45 67 89",
        ] {
            let mut s = m.start();
            assert_eq!(
                s.mask(&format!("tel {phone}.")),
                "tel [phone-1].",
                "{phone}"
            );
        }
    }

    #[test]
    fn dates_versions_ids_and_failed_luhn_numbers_are_left_alone() {
        let m = all();
        for text in [
            "Released 2024-06-05 as 1.2.3.",
            "Order 1234567 shipped on 05.06.2024.",
            "Invoice 4111 1111 1111 1112 is unpaid.",
            "Row 12345678901234 of the export.",
            "Version 10.2.1, build 20240605.",
            "Price 1 234 567.",
        ] {
            let mut s = m.start();
            assert_eq!(s.mask(text), text);
            assert!(s.counts().is_empty(), "{text}");
        }
    }

    #[test]
    fn luhn_checks_cards_of_every_length() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("5555-5555-5555-4444"));
        assert!(luhn_valid("378282246310005")); // Amex, 15 digits
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid("0000000")); // too short
    }

    #[test]
    fn a_card_wins_over_a_phone_reading_of_its_digits() {
        let m = all();
        let mut s = m.start();
        assert_eq!(s.mask("card 5555 5555 5555 4444"), "card [card-1]");
    }

    #[test]
    fn custom_patterns_are_masked_under_their_name() {
        let m = masker(&[], &[("ticket", r"TICKET-\d+")]);
        let mut s = m.start();
        assert_eq!(
            s.mask("See TICKET-42 and TICKET-7, then TICKET-42."),
            "See [ticket-1] and [ticket-2], then [ticket-1]."
        );
        // With no built-in kinds, e-mail addresses pass.
        assert_eq!(s.mask("a@b.io"), "a@b.io");
    }

    #[test]
    fn nothing_configured_changes_nothing() {
        let m = masker(&[], &[]);
        assert!(!m.is_enabled());
        let mut s = m.start();
        assert_eq!(s.mask("a@b.io +1 415 555 2671"), "a@b.io +1 415 555 2671");
    }

    #[test]
    fn bad_config_is_refused_with_the_key() {
        let bad = |mask: &[&str], custom: &[(&str, &str)]| {
            Masker::from_config(&raw(mask, custom), "c.toml")
                .expect_err("invalid")
                .to_string()
        };
        assert!(bad(&["ssn"], &[]).contains("privacy.mask"));
        assert!(bad(&[], &[("Ticket", "T")]).contains("privacy.custom[0].name"));
        assert!(bad(&[], &[("email", "T")]).contains("already a masking kind"));
        assert!(bad(&[], &[("t", "T"), ("t", "U")]).contains("privacy.custom[1].name"));
        assert!(bad(&[], &[("t", "(")]).contains("invalid regex"));
        assert!(bad(&[], &[("t", "x*")]).contains("empty string"));
    }

    #[test]
    fn unmasker_maps_back_across_deltas_and_leaves_unknown_placeholders() {
        let m = all();
        let mut s = m.start();
        let masked = s.mask("Write to help@shop.example or call 415-555-2671.");
        assert_eq!(masked, "Write to [email-1] or call [phone-1].");
        let mut u = s.unmasker();
        let mut out = String::new();
        for d in [
            "Write to [em",
            "ail-1] or [",
            "phone-1",
            "]. Not [email-9] nor [1] [x",
        ] {
            out.push_str(&u.push(d));
        }
        out.push_str(&u.finish());
        assert_eq!(
            out,
            "Write to help@shop.example or 415-555-2671. Not [email-9] nor [1] [x"
        );
    }

    #[test]
    fn values_only_the_caller_wrote_are_flagged_when_mapped_back() {
        let m = all();
        let mut s = m.start();
        s.mask("Support: help@shop.example");
        s.mask_caller("I am jane@home.example, cc help@shop.example");
        let mut u = s.unmasker();
        assert_eq!(
            u.apply("Write to [email-1]."),
            "Write to help@shop.example."
        );
        assert!(!u.used_caller_value());
        assert_eq!(u.apply("Hi [email-2]."), "Hi jane@home.example.");
        assert!(u.used_caller_value());
    }

    #[test]
    fn unmasker_does_not_hold_brackets_that_cannot_be_placeholders() {
        let m = all();
        let mut s = m.start();
        s.mask("a@b.io");
        let mut u = s.unmasker();
        // `[1` cannot start `[email-1]`, so it is not held (citation markers flow through).
        assert_eq!(u.push("see [1"), "see [1");
        assert_eq!(u.push("] and [e"), "] and ");
        assert_eq!(u.finish(), "[e");
    }
}
