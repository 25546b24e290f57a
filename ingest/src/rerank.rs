//! Rerankers: score (query, passage) pairs after retrieval; higher is more relevant.
//!
//! * [`NoopReranker`] keeps the retrieval order (all scores equal).
//! * [`LexicalReranker`] needs no weights: the share of the query's distinct words found in the
//!   passage, a cheap tie-breaker that works everywhere.
//! * [`CrossEncoderReranker`] runs a BERT sequence-classification model (encoder, pooler,
//!   classifier) on candle from a folder the operator provides: `config.json`,
//!   `model.safetensors`, `tokenizer.json`.
//!
//! Remote rerank APIs live with the provider layer, not here.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use crate::IngestError;
use crate::embed::minilm::{load_config, load_tokenizer, load_weights};
use crate::models::{CONFIG_FILE, ModelFiles, TOKENIZER_FILE, WEIGHTS_FILE};

/// Scores passages against a query; one score per passage, in the passages' order.
pub trait Reranker: Send + Sync {
    /// Name for logs and the answer's provenance.
    fn name(&self) -> String;
    /// Relevance of each passage to `query`; higher is better. Scores are only comparable
    /// within one call.
    fn rerank(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, IngestError>;
}

/// Keeps the retrieval order: every passage scores 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopReranker;

impl Reranker for NoopReranker {
    fn name(&self) -> String {
        "none".into()
    }

    fn rerank(&self, _query: &str, passages: &[&str]) -> Result<Vec<f32>, IngestError> {
        Ok(vec![0.0; passages.len()])
    }
}

/// Fraction of the query's distinct lower-cased words (two or more characters) that occur in
/// the passage, in `[0, 1]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LexicalReranker;

fn word_set(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .collect()
}

impl Reranker for LexicalReranker {
    fn name(&self) -> String {
        "lexical".into()
    }

    fn rerank(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, IngestError> {
        let terms = word_set(query);
        if terms.is_empty() {
            return Ok(vec![0.0; passages.len()]);
        }
        Ok(passages
            .iter()
            .map(|p| {
                let words = word_set(p);
                terms.iter().filter(|t| words.contains(*t)).count() as f32 / terms.len() as f32
            })
            .collect())
    }
}

/// The classifier-related fields of a sequence-classification `config.json`.
#[derive(Debug, Clone, serde::Deserialize)]
struct HeadConfig {
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: Option<serde_json::Map<String, serde_json::Value>>,
}

impl HeadConfig {
    fn labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(1)
            .max(1)
    }
}

/// BERT cross-encoder: `[CLS] query [SEP] passage [SEP]` → pooler → classifier.
///
/// With one output label the logit is the score; with several, the last label's logit minus
/// the log-sum-exp (log-probability of "relevant").
pub struct CrossEncoderReranker {
    name: String,
    bert: BertModel,
    pooler: Linear,
    classifier: Linear,
    tokenizer: Tokenizer,
    labels: usize,
    batch_size: usize,
}

fn rerank_err(name: &str, message: impl std::fmt::Display) -> IngestError {
    IngestError::Embed {
        embedder: format!("reranker {name}"),
        message: message.to_string(),
    }
}

impl CrossEncoderReranker {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`. The folder is
    /// operator-provided, so there is no pinned digest; a missing file is a clear error.
    pub fn load(dir: &Path) -> Result<CrossEncoderReranker, IngestError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cross-encoder".into());
        for file in [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE] {
            if !dir.join(file).is_file() {
                return Err(rerank_err(
                    &name,
                    format!(
                        "{} is missing; the reranker folder needs config.json, \
                         model.safetensors and tokenizer.json",
                        dir.join(file).display()
                    ),
                ));
            }
        }
        let files = ModelFiles {
            name: name.clone(),
            dir: dir.to_path_buf(),
            config: dir.join(CONFIG_FILE),
            weights: dir.join(WEIGHTS_FILE),
            tokenizer: dir.join(TOKENIZER_FILE),
            weights_sha256: String::new(),
        };
        let config: Config = load_config(&files.config, &name)?;
        let head: HeadConfig = load_config(&files.config, &name)?;
        let tokenizer = load_tokenizer(&files.tokenizer, &name)?;
        let vb = load_weights(&files, &name)?;
        CrossEncoderReranker::from_parts(&name, vb, &config, head.labels(), tokenizer)
    }

    /// Builds the model from any var builder (weights named as in Hugging Face's
    /// `BertForSequenceClassification`: `bert.*`, `bert.pooler.dense`, `classifier`).
    pub fn from_parts(
        name: &str,
        vb: VarBuilder,
        config: &Config,
        labels: usize,
        mut tokenizer: Tokenizer,
    ) -> Result<CrossEncoderReranker, IngestError> {
        let err = |e: candle_core::Error| rerank_err(name, e);
        let prefix = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            "bert"
        } else {
            ""
        };
        let base = if prefix.is_empty() {
            vb.clone()
        } else {
            vb.pp(prefix)
        };
        let bert = BertModel::load(base.clone(), config).map_err(err)?;
        let pooler = candle_nn::linear(
            config.hidden_size,
            config.hidden_size,
            base.pp("pooler.dense"),
        )
        .map_err(err)?;
        let classifier =
            candle_nn::linear(config.hidden_size, labels, vb.pp("classifier")).map_err(err)?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_position_embeddings.min(512),
                strategy: TruncationStrategy::OnlySecond,
                ..TruncationParams::default()
            }))
            .map_err(|e| rerank_err(name, e))?;
        Ok(CrossEncoderReranker {
            name: name.into(),
            bert,
            pooler,
            classifier,
            tokenizer,
            labels,
            batch_size: 8,
        })
    }

    fn score_batch(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, IngestError> {
        let mut encodings = Vec::with_capacity(passages.len());
        for p in passages {
            let enc = self
                .tokenizer
                .encode_fast((query, *p), true)
                .map_err(|e| rerank_err(&self.name, e))?;
            encodings.push(enc);
        }
        let width = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let rows = encodings.len();
        let (mut ids, mut types, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for enc in &encodings {
            let pad = width - enc.len();
            ids.extend_from_slice(enc.get_ids());
            ids.extend(std::iter::repeat_n(0u32, pad));
            types.extend_from_slice(enc.get_type_ids());
            types.extend(std::iter::repeat_n(0u32, pad));
            mask.extend(std::iter::repeat_n(1u32, enc.len()));
            mask.extend(std::iter::repeat_n(0u32, pad));
        }
        let run = || -> candle_core::Result<Vec<f32>> {
            let ids = Tensor::from_vec(ids, (rows, width), &Device::Cpu)?;
            let types = Tensor::from_vec(types, (rows, width), &Device::Cpu)?;
            let mask = Tensor::from_vec(mask, (rows, width), &Device::Cpu)?;
            let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
            let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
            let pooled = self.pooler.forward(&cls)?.tanh()?;
            let logits = self.classifier.forward(&pooled)?.to_dtype(DType::F32)?;
            if self.labels == 1 {
                logits.squeeze(1)?.to_vec1::<f32>()
            } else {
                let lse = logits.exp()?.sum(1)?.log()?;
                let last = logits.narrow(1, self.labels - 1, 1)?.squeeze(1)?;
                (last - lse)?.to_vec1::<f32>()
            }
        };
        run().map_err(|e| rerank_err(&self.name, e))
    }
}

impl Reranker for CrossEncoderReranker {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn rerank(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, IngestError> {
        let mut scores = Vec::with_capacity(passages.len());
        for chunk in passages.chunks(self.batch_size) {
            scores.extend(self.score_batch(query, chunk)?);
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_prefers_passages_sharing_query_words() {
        let s = LexicalReranker
            .rerank(
                "refund policy for damaged goods",
                &[
                    "Our refund policy covers damaged goods.",
                    "Shipping takes 3 days.",
                ],
            )
            .expect("rerank");
        assert!(s[0] > s[1]);
        assert!((0.0..=1.0).contains(&s[0]));
    }

    #[test]
    fn noop_scores_every_passage() {
        let s = NoopReranker.rerank("q", &["a", "b", "c"]).expect("rerank");
        assert_eq!(s, vec![0.0; 3]);
    }
}
