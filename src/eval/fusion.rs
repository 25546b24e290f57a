//! `cairn eval fusion`: sweeps fusion settings on a BEIR dataset without re-running retrieval.
//!
//! Each judged query is run once through BM25 and once through the vector retriever (the
//! `[index] candidates` lists that hybrid search fuses, at least 100 each). Every setting of a
//! fixed grid (RRF `k` × vector weight, convex α) is then applied to those stored lists with the
//! index's own [`fuse`], so the sweep costs one retrieval per query and mode, not one per
//! setting. To show whether a choice generalises rather than fits, queries are split into two
//! folds by position (sorted by id, even / odd): the best setting of each fold is scored on the
//! other fold, next to the configured default on the same fold.

use std::collections::HashMap;

use serde::Serialize;

use cairn_index::{Filter, Fusion, Hit, SearchMode, SearchRequest, fuse};

use super::{judged_queries, open_dataset_index};
use crate::engine::Engine;
use crate::eval::metrics::{Metrics, Qrels, distinct_documents};

/// What `cairn eval fusion` evaluates.
pub struct FusionOptions {
    pub dataset: std::path::PathBuf,
    pub split: String,
    /// Only the first N judged queries (0 = all).
    pub limit: usize,
}

/// One fusion setting's scores over all queries and per fold.
#[derive(Debug, Clone, Serialize)]
pub struct FusionResult {
    /// `rrf k=60 bm25=1 vector=1`, `convex alpha=0.5`, or `bm25` / `dense` (one side alone).
    pub setting: String,
    /// The setting in config form; `None` for the one-side references.
    pub fusion: Option<Fusion>,
    pub queries: usize,
    #[serde(flatten)]
    pub metrics: Metrics,
    /// nDCG@10 over the even- and odd-positioned queries.
    pub ndcg_10_folds: [f64; 2],
}

/// The best setting chosen on one fold, scored on the other.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    pub chosen_on_fold: usize,
    pub setting: String,
    /// nDCG@10 of the chosen setting on the other fold.
    pub held_out_ndcg_10: f64,
    /// nDCG@10 of the configured default on the other fold.
    pub default_ndcg_10: f64,
}

/// The whole sweep.
#[derive(Debug, Clone, Serialize)]
pub struct FusionReport {
    pub default_setting: String,
    pub results: Vec<FusionResult>,
    pub cross_validation: Vec<HeldOut>,
}

/// The two retrievers' candidate lists of one query, chunk ids interned to `u64`.
struct Lists {
    bm25: Vec<(u64, f32)>,
    vector: Vec<(u64, f32)>,
}

/// Interns chunk ids and remembers each chunk's document.
#[derive(Default)]
struct Chunks {
    ids: HashMap<String, u64>,
    docs: Vec<String>,
}

impl Chunks {
    fn lists(&mut self, hits: &[Hit], score: impl Fn(&Hit) -> f32) -> Vec<(u64, f32)> {
        hits.iter()
            .map(|h| {
                let next = self.docs.len() as u64;
                let id = *self.ids.entry(h.chunk_id.clone()).or_insert(next);
                if id == next {
                    self.docs.push(h.document.external_id.clone());
                }
                (id, score(h))
            })
            .collect()
    }
}

/// A readable name of a fusion setting.
pub fn describe(f: &Fusion) -> String {
    match f {
        Fusion::Rrf {
            k,
            bm25_weight,
            vector_weight,
        } => format!("rrf k={k} bm25={bm25_weight} vector={vector_weight}"),
        Fusion::Convex { alpha } => format!("convex alpha={alpha}"),
    }
}

/// The grid the sweep tries: RRF `k` × vector weight (BM25 weight 1), and convex α.
pub fn grid() -> Vec<Fusion> {
    let mut out = Vec::new();
    for k in [1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 100.0] {
        for vector_weight in [0.5, 0.75, 1.0, 1.25, 1.5, 2.0] {
            out.push(Fusion::Rrf {
                k,
                bm25_weight: 1.0,
                vector_weight,
            });
        }
    }
    for i in 1..10 {
        out.push(Fusion::Convex {
            alpha: i as f32 / 10.0,
        });
    }
    out
}

/// Scores one way of ranking every query (`rank` maps a query's lists to chunk ids, best first).
fn score(
    setting: String,
    fusion: Option<Fusion>,
    per_query: &[(Lists, &HashMap<String, u32>)],
    chunks: &Chunks,
    rank: impl Fn(&Lists) -> Vec<u64>,
) -> FusionResult {
    let per_query: Vec<Metrics> = per_query
        .iter()
        .map(|(lists, rels)| {
            let order = rank(lists);
            let ranked =
                distinct_documents(order.iter().map(|id| chunks.docs[*id as usize].as_str()));
            Metrics::of(&ranked, rels)
        })
        .collect();
    let fold = |f: usize| {
        let half: Vec<Metrics> = per_query.iter().skip(f).step_by(2).copied().collect();
        Metrics::mean(&half).ndcg_10
    };
    FusionResult {
        setting,
        fusion,
        queries: per_query.len(),
        metrics: Metrics::mean(&per_query),
        ndcg_10_folds: [fold(0), fold(1)],
    }
}

/// Runs the sweep. The configured `[index.fusion]` is always among the settings scored.
pub fn sweep(engine: &Engine, options: &FusionOptions) -> anyhow::Result<FusionReport> {
    let index = open_dataset_index(engine, &options.dataset)?;
    let (qrels, queries): (Qrels, _) =
        judged_queries(&options.dataset, &options.split, options.limit)?;
    let depth = index.options().candidates;
    let mut chunks = Chunks::default();
    let mut per_query = Vec::with_capacity(queries.len());
    for q in &queries {
        let search = |mode, vector| {
            index.search(&SearchRequest {
                text: q.text.clone(),
                vector,
                k: depth,
                mode,
                filter: Filter::default(),
                snippets: false,
            })
        };
        let bm25 = search(SearchMode::Bm25, None)?;
        let dense = search(SearchMode::Dense, Some(engine.embed_query(&q.text)?))?;
        let lists = Lists {
            bm25: chunks.lists(&bm25, |h| h.breakdown.bm25_score.unwrap_or(h.score)),
            vector: chunks.lists(&dense, |h| h.breakdown.vector_similarity.unwrap_or(h.score)),
        };
        per_query.push((lists, &qrels[&q.id]));
    }

    let default = engine.config.index.fusion.clone();
    let mut settings = grid();
    if !settings.contains(&default) {
        settings.push(default.clone());
    }
    let ids = |l: &[(u64, f32)]| l.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    let mut results = vec![
        score("bm25".into(), None, &per_query, &chunks, |l| ids(&l.bm25)),
        score(
            "dense".into(),
            None,
            &per_query,
            &chunks,
            |l| ids(&l.vector),
        ),
    ];
    for f in settings {
        results.push(score(
            describe(&f),
            Some(f.clone()),
            &per_query,
            &chunks,
            |l| {
                fuse(&l.bm25, &l.vector, &f)
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect()
            },
        ));
    }

    let default_result = results
        .iter()
        .find(|r| r.fusion.as_ref() == Some(&default))
        .cloned()
        .expect("the default setting is always scored");
    let cross_validation = (0..2)
        .map(|fold| {
            let other = 1 - fold;
            let best = results
                .iter()
                .filter(|r| r.fusion.is_some())
                .max_by(|a, b| a.ndcg_10_folds[fold].total_cmp(&b.ndcg_10_folds[fold]))
                .expect("the grid is not empty");
            HeldOut {
                chosen_on_fold: fold,
                setting: best.setting.clone(),
                held_out_ndcg_10: best.ndcg_10_folds[other],
                default_ndcg_10: default_result.ndcg_10_folds[other],
            }
        })
        .collect();
    Ok(FusionReport {
        default_setting: describe(&default),
        results,
        cross_validation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_both_methods_and_the_shipped_default() {
        let g = grid();
        assert!(g.contains(&Fusion::default()));
        assert!(g.iter().any(|f| matches!(f, Fusion::Convex { .. })));
        assert_eq!(g.len(), 7 * 6 + 9);
    }

    #[test]
    fn scores_fold_chunks_into_documents_and_split_folds_by_position() {
        // Chunks 0 and 1 belong to doc `a`, chunk 2 to `b`. Query 0 wants `a`, query 1 `b`.
        let chunks = Chunks {
            ids: HashMap::new(),
            docs: vec!["a".into(), "a".into(), "b".into()],
        };
        let rel = |d: &str| HashMap::from([(d.to_string(), 1)]);
        let (ra, rb) = (rel("a"), rel("b"));
        let lists = |bm25: &[u64], vector: &[u64]| Lists {
            bm25: bm25.iter().map(|id| (*id, 1.0)).collect(),
            vector: vector.iter().map(|id| (*id, 1.0)).collect(),
        };
        let per_query = vec![
            (lists(&[0, 1, 2], &[2, 0]), &ra),
            (lists(&[0, 2], &[2]), &rb),
        ];
        let bm25 = score("bm25".into(), None, &per_query, &chunks, |l| {
            l.bm25.iter().map(|(id, _)| *id).collect()
        });
        // Query 0: `a` first (nDCG 1). Query 1: `b` second, after `a` (nDCG 1/log2(3)).
        let second = 1.0 / 3f64.log2();
        assert!((bm25.ndcg_10_folds[0] - 1.0).abs() < 1e-12);
        assert!((bm25.ndcg_10_folds[1] - second).abs() < 1e-12);
        assert!((bm25.metrics.ndcg_10 - (1.0 + second) / 2.0).abs() < 1e-12);
        assert!((bm25.metrics.mrr_10 - 0.75).abs() < 1e-12);
        let dense = score("dense".into(), None, &per_query, &chunks, |l| {
            l.vector.iter().map(|(id, _)| *id).collect()
        });
        assert!((dense.ndcg_10_folds[1] - 1.0).abs() < 1e-12);
        assert!((dense.ndcg_10_folds[0] - second).abs() < 1e-12);
    }
}
