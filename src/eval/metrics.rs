//! Ranking metrics against graded judgements: nDCG@k, Recall@k and MRR@k of a ranked document
//! list, their per-query bundle and mean, and the fold of chunk hits into distinct documents.
//! Pure functions, tested against hand-computed cases; shared by `cairn eval` and the reindex
//! quality gate.
//!
//! Must not: run a search or read a dataset (callers hand in ranked lists).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// Graded relevance judgements: query id → (doc id → grade).
pub type Qrels = HashMap<String, HashMap<String, u32>>;

/// nDCG@k with linear gains (as trec_eval's `ndcg_cut`): DCG = Σ rel_i / log2(i + 1).
pub fn ndcg_at(ranked: &[String], rels: &HashMap<String, u32>, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, d)| f64::from(*rels.get(d).unwrap_or(&0)) / ((i + 2) as f64).log2())
        .sum();
    let mut ideal: Vec<u32> = rels.values().copied().filter(|r| *r > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, r)| f64::from(*r) / ((i + 2) as f64).log2())
        .sum();
    if idcg == 0.0 { 0.0 } else { dcg / idcg }
}

/// Fraction of relevant documents found in the top `k`.
pub fn recall_at(ranked: &[String], rels: &HashMap<String, u32>, k: usize) -> f64 {
    let relevant: HashSet<&String> = rels
        .iter()
        .filter(|(_, r)| **r > 0)
        .map(|(d, _)| d)
        .collect();
    if relevant.is_empty() {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|d| relevant.contains(d))
        .count();
    found as f64 / relevant.len() as f64
}

/// Reciprocal rank of the first relevant document within the top `k`.
pub fn mrr_at(ranked: &[String], rels: &HashMap<String, u32>, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|d| rels.get(d).is_some_and(|r| *r > 0))
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

/// The ranking metrics of one query, or their mean over many.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(rename = "ndcg@10")]
    pub ndcg_10: f64,
    #[serde(rename = "recall@10")]
    pub recall_10: f64,
    #[serde(rename = "recall@100")]
    pub recall_100: f64,
    #[serde(rename = "mrr@10")]
    pub mrr_10: f64,
}

impl Metrics {
    /// nDCG@10, Recall@10/100 and MRR@10 of one ranked document list.
    pub fn of(ranked: &[String], rels: &HashMap<String, u32>) -> Metrics {
        Metrics {
            ndcg_10: ndcg_at(ranked, rels, 10),
            recall_10: recall_at(ranked, rels, 10),
            recall_100: recall_at(ranked, rels, 100),
            mrr_10: mrr_at(ranked, rels, 10),
        }
    }

    /// The mean of per-query metrics (all zero for none).
    pub fn mean(all: &[Metrics]) -> Metrics {
        let n = all.len().max(1) as f64;
        let sum = |f: fn(&Metrics) -> f64| all.iter().map(f).sum::<f64>() / n;
        Metrics {
            ndcg_10: sum(|m| m.ndcg_10),
            recall_10: sum(|m| m.recall_10),
            recall_100: sum(|m| m.recall_100),
            mrr_10: sum(|m| m.mrr_10),
        }
    }
}

/// Folds ranked chunk hits' documents into a ranked list of at most 100 distinct documents
/// (a document's best-ranked chunk decides its place).
pub fn distinct_documents<'a>(doc_ids: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    doc_ids
        .filter(|d| seen.insert(*d))
        .take(100)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|(d, r)| (d.to_string(), *r)).collect()
    }

    fn ranked(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ndcg_hand_computed_with_grades() {
        // Ranking a, b, c with rel(a)=0, rel(b)=2, rel(c)=1.
        // DCG = 0/log2(2) + 2/log2(3) + 1/log2(4) = 1.26186 + 0.5 = 1.76186
        // IDCG = 2/log2(2) + 1/log2(3) = 2 + 0.63093 = 2.63093
        let r = rels(&[("a", 0), ("b", 2), ("c", 1)]);
        let v = ndcg_at(&ranked(&["a", "b", "c"]), &r, 10);
        assert!((v - 1.761_86 / 2.630_93).abs() < 1e-4, "{v}");
        assert!((ndcg_at(&ranked(&["b", "c", "a"]), &r, 10) - 1.0).abs() < 1e-12);
        assert_eq!(ndcg_at(&ranked(&["x"]), &r, 10), 0.0);
        // Cut-off: the relevant doc at rank 2 is outside @1.
        assert_eq!(ndcg_at(&ranked(&["a", "b"]), &r, 1), 0.0);
    }

    #[test]
    fn recall_and_mrr_hand_computed() {
        let r = rels(&[("b", 1), ("d", 1), ("z", 0)]);
        let list = ranked(&["a", "b", "c", "d"]);
        assert!((recall_at(&list, &r, 2) - 0.5).abs() < 1e-12);
        assert!((recall_at(&list, &r, 10) - 1.0).abs() < 1e-12);
        assert!((mrr_at(&list, &r, 10) - 0.5).abs() < 1e-12);
        assert_eq!(mrr_at(&list, &r, 1), 0.0);
    }
}
