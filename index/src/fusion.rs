//! Score fusion of the BM25 and vector rankings, with a breakdown per hit.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::types::ScoreBreakdown;

/// How to combine the two rankings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fusion {
    /// Reciprocal rank fusion: Σ weight / (k + rank), ranks from 1.
    Rrf {
        k: f32,
        bm25_weight: f32,
        vector_weight: f32,
    },
    /// Convex combination of min-max normalised scores: α·vector + (1−α)·bm25.
    Convex { alpha: f32 },
}

/// Convex combination with equal weights: on SciFact's train queries with all-MiniLM-L6-v2 it
/// beat every RRF setting tried (nDCG@10 0.7389 against 0.7222 for RRF k = 60), and the best
/// setting chosen on either half of the queries was α 0.4 or 0.5 and held on the other half
/// (`cairn eval fusion`; BENCHMARKS.md, "Fusion").
impl Default for Fusion {
    fn default() -> Self {
        Fusion::Convex { alpha: 0.5 }
    }
}

fn min_max(scores: &[(u64, f32)]) -> HashMap<u64, f32> {
    let (lo, hi) = scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (_, s)| {
            (lo.min(*s), hi.max(*s))
        });
    let span = hi - lo;
    scores
        .iter()
        .map(|(id, s)| (*id, if span > 0.0 { (s - lo) / span } else { 1.0 }))
        .collect()
}

/// Fuses two ranked lists (best first) into one, best first, ties broken by id for
/// determinism. Every entry carries its breakdown.
pub fn fuse(
    bm25: &[(u64, f32)],
    vector: &[(u64, f32)],
    fusion: &Fusion,
) -> Vec<(u64, ScoreBreakdown)> {
    let mut out: HashMap<u64, ScoreBreakdown> = HashMap::new();
    for (rank, (id, score)) in bm25.iter().enumerate() {
        let e = out.entry(*id).or_default();
        e.bm25_rank = Some(rank + 1);
        e.bm25_score = Some(*score);
    }
    for (rank, (id, sim)) in vector.iter().enumerate() {
        let e = out.entry(*id).or_default();
        e.vector_rank = Some(rank + 1);
        e.vector_similarity = Some(*sim);
    }
    match fusion {
        Fusion::Rrf {
            k,
            bm25_weight,
            vector_weight,
        } => {
            for b in out.values_mut() {
                b.fused = b.bm25_rank.map_or(0.0, |r| bm25_weight / (k + r as f32))
                    + b.vector_rank
                        .map_or(0.0, |r| vector_weight / (k + r as f32));
            }
        }
        Fusion::Convex { alpha } => {
            let nb = min_max(bm25);
            let nv = min_max(vector);
            for (id, b) in out.iter_mut() {
                b.fused = alpha * nv.get(id).copied().unwrap_or(0.0)
                    + (1.0 - alpha) * nb.get(id).copied().unwrap_or(0.0);
            }
        }
    }
    let mut v: Vec<(u64, ScoreBreakdown)> = out.into_iter().collect();
    v.sort_by(|a, b| b.1.fused.total_cmp(&a.1.fused).then(a.0.cmp(&b.0)));
    v
}

/// One retriever's ranked list (best first) as hits with a breakdown: its own rank and score,
/// and the score itself as the fused one (used when only one retriever runs).
pub fn single(hits: &[(u64, f32)], is_bm25: bool) -> Vec<(u64, ScoreBreakdown)> {
    hits.iter()
        .enumerate()
        .map(|(i, (id, s))| {
            let mut b = ScoreBreakdown {
                fused: *s,
                ..Default::default()
            };
            if is_bm25 {
                b.bm25_rank = Some(i + 1);
                b.bm25_score = Some(*s);
            } else {
                b.vector_rank = Some(i + 1);
                b.vector_similarity = Some(*s);
            }
            (*id, b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_hand_computed() {
        // id 1: bm25 rank 1, vector rank 2; id 2: vector rank 1 only; id 3: bm25 rank 2 only.
        let fused = fuse(
            &[(1, 9.0), (3, 4.0)],
            &[(2, 0.9), (1, 0.8)],
            &Fusion::Rrf {
                k: 60.0,
                bm25_weight: 1.0,
                vector_weight: 1.0,
            },
        );
        let ids: Vec<u64> = fused.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        let one = &fused[0].1;
        assert!((one.fused - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-6);
        assert_eq!(one.bm25_rank, Some(1));
        assert_eq!(one.vector_rank, Some(2));
    }

    #[test]
    fn convex_alpha_one_is_vector_order() {
        let fused = fuse(
            &[(1, 9.0), (2, 1.0)],
            &[(2, 0.9), (1, 0.1)],
            &Fusion::Convex { alpha: 1.0 },
        );
        assert_eq!(fused[0].0, 2);
        assert!((fused[0].1.fused - 1.0).abs() < 1e-6);
    }
}
