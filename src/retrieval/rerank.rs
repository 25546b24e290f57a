//! The rerank step between retrieval and the prompt: builds the configured
//! [`Reranker`] (none, lexical, a local cross-encoder folder, or a remote `/rerank` API through
//! the provider gateway) and reorders fused hits by its scores.
//!
//! Reranking reorders; it never adds or drops what the index returned for the caller (filters
//! and access groups were applied inside the search), and it keeps the fused order among equal
//! scores.

use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use cairn_index::Hit;
use cairn_ingest::IngestError;
use cairn_ingest::rerank::{CrossEncoderReranker, LexicalReranker, NoopReranker, Reranker};

use crate::answer::privacy::Masker;
use crate::config::section::{Check, ConfigError};
use crate::providers::{RerankRequest, Router};

/// `[rerank]`: which reranker orders the candidates before the prompt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawRerank {
    /// `none` (fused order), `lexical` (query-word coverage, no weights), `cross_encoder`
    /// (a BERT sequence-classification folder at `model_dir`), or `provider` (the `/rerank`
    /// API of the targets on route `route`).
    pub kind: String,
    /// Folder with config.json, model.safetensors and tokenizer.json (`cross_encoder`).
    pub model_dir: Option<std::path::PathBuf>,
    /// Route name in `[routes]` whose targets serve `/rerank` (`provider`).
    pub route: String,
    /// How many fused hits are scored; the best `top_k` of them reach the prompt.
    pub candidates: usize,
}

impl Default for RawRerank {
    fn default() -> Self {
        RawRerank {
            kind: "none".into(),
            model_dir: None,
            route: "rerank".into(),
            candidates: 20,
        }
    }
}

impl RawRerank {
    /// Checks the kind and candidate count and resolves the cross-encoder's folder.
    pub fn validate(mut self, cx: &Check) -> Result<RawRerank, ConfigError> {
        if !matches!(
            self.kind.as_str(),
            "none" | "lexical" | "cross_encoder" | "provider"
        ) {
            return Err(cx.key_err(
                "rerank.kind",
                format!(
                    "unknown reranker `{}`; use none, lexical, cross_encoder or provider",
                    self.kind
                ),
            ));
        }
        if self.kind == "cross_encoder" && self.model_dir.is_none() {
            return Err(cx.key_err(
                "rerank.model_dir",
                "kind = \"cross_encoder\" needs a folder with config.json, model.safetensors and tokenizer.json",
            ));
        }
        if self.candidates == 0 || self.candidates > 200 {
            return Err(cx.key_err("rerank.candidates", "must be between 1 and 200"));
        }
        self.model_dir = self.model_dir.map(|d| cx.path(&d));
        Ok(self)
    }
}

/// Scores through the provider gateway's `/rerank` call. Blocking: call it from a blocking
/// thread of a Tokio runtime (the answer pipeline does); elsewhere it returns an error.
pub struct ProviderReranker {
    router: Router,
    route: String,
    /// `[privacy]`: the query and passages are masked before they leave (scores need no
    /// mapping back).
    privacy: Masker,
}

impl Reranker for ProviderReranker {
    fn name(&self) -> String {
        format!("provider route `{}`", self.route)
    }

    fn rerank(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, IngestError> {
        let mut masking = self.privacy.start();
        let req = RerankRequest {
            query: masking.mask(query),
            documents: passages.iter().map(|p| masking.mask(p)).collect(),
            top_n: None,
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| IngestError::Embed {
            embedder: self.name(),
            message: "a remote reranker runs only inside the server's runtime".into(),
        })?;
        let (resp, _) = runtime
            .block_on(
                self.router
                    .rerank(&self.route, &req, CancellationToken::new()),
            )
            .map_err(|e| IngestError::Embed {
                embedder: self.name(),
                message: e.to_string(),
            })?;
        // Documents the API left out rank below every scored one.
        let mut scores = vec![f32::NEG_INFINITY; passages.len()];
        for (i, score) in resp.results {
            if let Some(s) = scores.get_mut(i) {
                *s = score;
            }
        }
        Ok(scores)
    }
}

/// Builds the configured reranker.
pub fn build(
    cfg: &RawRerank,
    router: &Router,
    privacy: &Masker,
) -> anyhow::Result<Arc<dyn Reranker>> {
    Ok(match cfg.kind.as_str() {
        "none" => Arc::new(NoopReranker),
        "lexical" => Arc::new(LexicalReranker),
        "cross_encoder" => {
            let dir = cfg
                .model_dir
                .as_ref()
                .context("[rerank] kind = \"cross_encoder\" needs model_dir")?;
            Arc::new(CrossEncoderReranker::load(dir)?)
        }
        "provider" => {
            if router.targets(&cfg.route).is_empty() {
                anyhow::bail!(
                    "[rerank] kind = \"provider\" uses route `{}`, which has no targets in [routes]",
                    cfg.route
                );
            }
            Arc::new(ProviderReranker {
                router: router.clone(),
                route: cfg.route.clone(),
                privacy: privacy.clone(),
            })
        }
        other => anyhow::bail!(
            "unknown reranker `{other}`; use none, lexical, cross_encoder or provider"
        ),
    })
}

/// Reorders `hits` by the reranker's scores (stable: equal scores keep the fused order) and
/// keeps the best `keep`. Each hit's `breakdown.rerank` records its score.
pub fn apply(
    reranker: &dyn Reranker,
    query: &str,
    mut hits: Vec<Hit>,
    keep: usize,
) -> Result<Vec<Hit>, IngestError> {
    if hits.len() > 1 {
        let passages: Vec<&str> = hits.iter().map(|h| h.chunk.text.as_str()).collect();
        let scores = reranker.rerank(query, &passages)?;
        let mut scored: Vec<(f32, Hit)> = scores.into_iter().zip(hits).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        hits = scored
            .into_iter()
            .map(|(s, mut h)| {
                h.breakdown.rerank = Some(s);
                h
            })
            .collect();
    }
    hits.truncate(keep);
    Ok(hits)
}
