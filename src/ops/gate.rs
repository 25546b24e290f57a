//! The reindex quality gate. A deployment's golden questions (`[quality_gate] file`, the
//! `cairn eval answers` format) are scored on the generation a reindex prepared and on the
//! generation serving, in the same run; the new generation is switched in only when no score
//! dropped by more than `max_drop`, and the run's report says why either way.
//!
//! The gate judges retrieval only (document-level nDCG@10, Recall@10/100 and MRR@10 against
//! each question's expected `sources`, with the question's access groups): a reindex changes
//! the index, not the model, and no model call keeps the gate cheap and reproducible.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cairn_index::{Filter, Hit, IndexBackend, PreparedGeneration, SearchMode, SearchRequest};
use cairn_ingest::Embedder;
use cairn_ingest::pipeline::{Gate, GateReport, GateScore};
use serde::{Deserialize, Serialize};

use crate::config::section::{Check, ConfigError};
use crate::eval::metrics::{Metrics, distinct_documents};
use crate::eval::qa::read_qa;

/// `[quality_gate]`: golden questions scored on every reindex before its generation is
/// switched in (see `crate::ops::gate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawQualityGate {
    /// Golden questions, JSON lines in the `cairn eval answers` format; those with `sources`
    /// are scored. Unset: no gate.
    pub file: Option<PathBuf>,
    /// The largest drop of any score (nDCG@10, Recall@10, Recall@100, MRR@10, over documents)
    /// a reindex may cause and still be switched in.
    pub max_drop: f64,
}

impl Default for RawQualityGate {
    fn default() -> Self {
        RawQualityGate {
            file: None,
            max_drop: 0.02,
        }
    }
}

impl RawQualityGate {
    /// Checks `max_drop` and resolves the file; the gate needs the embedded backend
    /// (`postgres` says whether PostgreSQL was chosen).
    pub fn validate(mut self, cx: &Check, postgres: bool) -> Result<RawQualityGate, ConfigError> {
        if !(0.0..=1.0).contains(&self.max_drop) {
            return Err(cx.key_err(
                "quality_gate.max_drop",
                "must be between 0 and 1 (a drop of a score that itself lies in 0..1)",
            ));
        }
        if self.file.is_some() && postgres {
            return Err(cx.key_err(
                "quality_gate.file",
                "the quality gate needs the embedded index backend (PostgreSQL cannot hold a \
                 generation back to score it yet); remove the key or set [index] backend = \"embedded\"",
            ));
        }
        self.file = self.file.map(|f| cx.path(&f));
        Ok(self)
    }
}

/// Hits scored per question: enough for Recall@100 over documents in most corpora.
const DEPTH: usize = 100;

/// One golden question with the documents it should find.
struct Golden {
    question: String,
    groups: Vec<String>,
    /// Expected documents (`source:external id` or external id), all of relevance 1.
    expected: HashMap<String, u32>,
}

/// The golden questions of a deployment, loaded once at start-up.
pub struct GoldenSet {
    items: Vec<Golden>,
    max_drop: f64,
    /// The questions' embeddings, computed on the first reindex and kept (the embedder does
    /// not change while the engine lives).
    vectors: Mutex<Option<Arc<Vec<Vec<f32>>>>>,
}

impl GoldenSet {
    /// Reads the file; questions without `sources` (or marked unanswerable) cannot score
    /// retrieval and are left out, and a file with none of the others is an error.
    pub fn load(path: &Path, max_drop: f64) -> anyhow::Result<GoldenSet> {
        let items: Vec<Golden> = read_qa(path)?
            .into_iter()
            .filter(|q| !q.sources.is_empty() && !q.unanswerable)
            .map(|q| Golden {
                question: q.question,
                groups: q.groups,
                expected: q.sources.into_iter().map(|s| (s, 1)).collect(),
            })
            .collect();
        anyhow::ensure!(
            !items.is_empty(),
            "{}: no question lists expected `sources`; the quality gate scores retrieval \
             against them (add \"sources\": [\"doc id\"] to some lines)",
            path.display()
        );
        Ok(GoldenSet {
            items,
            max_drop,
            vectors: Mutex::new(None),
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn vectors(&self, embedder: &dyn Embedder) -> anyhow::Result<Arc<Vec<Vec<f32>>>> {
        let mut cached = match self.vectors.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(v) = cached.as_ref() {
            return Ok(v.clone());
        }
        let questions: Vec<&str> = self.items.iter().map(|g| g.question.as_str()).collect();
        let v = Arc::new(embedder.embed_queries(&questions)?);
        *cached = Some(v.clone());
        Ok(v)
    }
}

/// The gate of an ingest run: the golden questions, scored with the serving index and the
/// embedder the run's generation was built with. It takes these parts, not the engine, so the
/// engine can hold it.
pub struct QualityGate<'a> {
    pub index: &'a dyn IndexBackend,
    pub embedder: &'a dyn Embedder,
    pub golden: &'a GoldenSet,
}

impl Gate for QualityGate<'_> {
    fn judge(&self, prepared: &dyn PreparedGeneration) -> Result<GateReport, String> {
        self.score(prepared).map_err(|e| format!("{e:#}"))
    }
}

impl QualityGate<'_> {
    fn score(&self, prepared: &dyn PreparedGeneration) -> anyhow::Result<GateReport> {
        let vectors = self.golden.vectors(self.embedder)?;
        let serving_generation = self.index.generation()?;
        let mut serving = Vec::with_capacity(vectors.len());
        let mut candidate = Vec::with_capacity(vectors.len());
        for (g, v) in self.golden.items.iter().zip(vectors.iter()) {
            let req = SearchRequest {
                text: g.question.clone(),
                vector: Some(v.clone()),
                k: DEPTH,
                mode: SearchMode::Hybrid,
                filter: Filter {
                    caller_groups: g.groups.clone(),
                    ..Filter::default()
                },
                snippets: false,
            };
            let ranked = |hits: Vec<Hit>| ranked_documents(&hits, &g.expected);
            serving.push(Metrics::of(&ranked(self.index.search(&req)?), &g.expected));
            candidate.push(Metrics::of(&ranked(prepared.search(&req)?), &g.expected));
        }
        Ok(verdict(
            &Metrics::mean(&serving),
            &Metrics::mean(&candidate),
            self.golden.max_drop,
            self.golden.len(),
            serving_generation,
            prepared.generation(),
        ))
    }
}

/// The ranked distinct documents of a hit list, each named the way the expected sources name
/// it (full id, or external id when that is what the golden file uses).
fn ranked_documents(hits: &[Hit], expected: &HashMap<String, u32>) -> Vec<String> {
    distinct_documents(hits.iter().map(|h| document_name(&h.document.id, expected)))
}

/// A document id (`source:external id`) as the expected sources name it.
fn document_name<'a>(id: &'a str, expected: &HashMap<String, u32>) -> &'a str {
    match id.split_once(':') {
        Some((_, ext)) if !expected.contains_key(id) && expected.contains_key(ext) => ext,
        _ => id,
    }
}

/// Compares the scores and writes the report: the candidate passes when no score dropped by
/// more than `max_drop` (a tiny epsilon absorbs float noise in equal rankings).
fn verdict(
    serving: &Metrics,
    candidate: &Metrics,
    max_drop: f64,
    questions: usize,
    serving_generation: u64,
    candidate_generation: u64,
) -> GateReport {
    let pairs = [
        ("ndcg@10", serving.ndcg_10, candidate.ndcg_10),
        ("recall@10", serving.recall_10, candidate.recall_10),
        ("recall@100", serving.recall_100, candidate.recall_100),
        ("mrr@10", serving.mrr_10, candidate.mrr_10),
    ];
    let mut scores = BTreeMap::new();
    let mut dropped = Vec::new();
    for (name, before, after) in pairs {
        scores.insert(
            name.to_string(),
            GateScore {
                serving: before,
                candidate: after,
            },
        );
        if before - after > max_drop + 1e-9 {
            dropped.push(format!(
                "{name} dropped from {before:.4} to {after:.4} ({:+.4})",
                after - before
            ));
        }
    }
    let passed = dropped.is_empty();
    let reason = if passed {
        format!(
            "no score dropped by more than {max_drop} over {questions} golden questions \
             (nDCG@10 {:.4} -> {:.4}); generation {candidate_generation} switched in",
            serving.ndcg_10, candidate.ndcg_10
        )
    } else {
        format!(
            "{}, more than the allowed {max_drop}, over {questions} golden questions; \
             generation {candidate_generation} was discarded and generation \
             {serving_generation} keeps serving",
            dropped.join("; ")
        )
    };
    GateReport {
        passed,
        reason,
        questions,
        max_drop,
        serving_generation,
        candidate_generation,
        scores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(ndcg: f64, recall: f64) -> Metrics {
        Metrics {
            ndcg_10: ndcg,
            recall_10: recall,
            recall_100: recall,
            mrr_10: ndcg,
        }
    }

    #[test]
    fn a_drop_within_the_margin_passes_and_a_larger_one_fails() {
        let within = verdict(&metrics(0.70, 0.9), &metrics(0.69, 0.9), 0.02, 5, 3, 4);
        assert!(within.passed, "{}", within.reason);
        assert_eq!(within.scores["ndcg@10"].candidate, 0.69);

        let beyond = verdict(&metrics(0.70, 0.9), &metrics(0.60, 0.9), 0.02, 5, 3, 4);
        assert!(!beyond.passed);
        assert!(
            beyond
                .reason
                .contains("ndcg@10 dropped from 0.7000 to 0.6000")
        );
        assert!(beyond.reason.contains("generation 3 keeps serving"));
        assert!(!beyond.reason.contains("recall@10"), "{}", beyond.reason);

        // Improvements never fail, and an equal score passes with a zero margin.
        assert!(verdict(&metrics(0.5, 0.5), &metrics(0.9, 0.9), 0.0, 1, 1, 2).passed);
        assert!(verdict(&metrics(0.5, 0.5), &metrics(0.5, 0.5), 0.0, 1, 1, 2).passed);
    }

    #[test]
    fn documents_are_named_like_the_expected_sources() {
        let expected: HashMap<String, u32> = [("kb:1".to_string(), 1), ("7".to_string(), 1)]
            .into_iter()
            .collect();
        let ids = ["kb:1", "crm:7", "kb:1", "kb:2"];
        let names = ids.iter().map(|id| document_name(id, &expected));
        assert_eq!(distinct_documents(names), ["kb:1", "7", "kb:2"]);
    }
}
