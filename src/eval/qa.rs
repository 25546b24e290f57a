//! The question file of `cairn eval answers` and the reindex quality gate: JSON lines, one
//! question each, `{"id", "question", "answers"?, "facts"?, "sources"?, "unanswerable"?,
//! "groups"?, "conversation"?, "hops"?}`. `answers` are alternatives (one must occur in the
//! answer), `facts` all must occur (a multi-hop question's gold facts, one per lookup); `hops`
//! are the lookups a planner would make (the scripted planner of `cairn eval answers
//! --scripted` searches exactly these).
//!
//! Must not: run anything; it only reads the file.

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::providers::Message;

/// One question of a QA file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QaItem {
    #[serde(default)]
    pub id: String,
    pub question: String,
    #[serde(default)]
    pub answers: Vec<String>,
    /// Gold facts that must all occur in the answer (case and spacing aside).
    #[serde(default)]
    pub facts: Vec<String>,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub unanswerable: bool,
    /// Access groups the question is asked with (none: only documents without groups).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Turns before the question (`{"role": "user" | "assistant", "content"}`), oldest first:
    /// the question is a follow-up.
    #[serde(default)]
    pub conversation: Vec<Message>,
    /// The search queries that answer the question, one per lookup, in order.
    #[serde(default)]
    pub hops: Vec<String>,
}

/// Reads a QA file; a bad line is an error naming the line.
pub fn read_qa(path: &Path) -> anyhow::Result<Vec<QaItem>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut item: QaItem = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {}: expected {{\"question\": ..., \"answers\"?, \"facts\"?, \"sources\"?, \"unanswerable\"?, \"groups\"?, \"conversation\"?, \"hops\"?}}",
                path.display(),
                i + 1
            )
        })?;
        if item.id.is_empty() {
            item.id = format!("line-{}", i + 1);
        }
        items.push(item);
    }
    anyhow::ensure!(!items.is_empty(), "{} holds no questions", path.display());
    Ok(items)
}
