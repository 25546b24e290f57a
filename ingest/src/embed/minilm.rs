//! `all-MiniLM-L6-v2` sentence embeddings on the CPU with candle.
//!
//! BERT encoder, mean pooling over the attention mask, L2 normalisation; inputs are cut to
//! [`MAX_TOKENS`] word-pieces (including `[CLS]`/`[SEP]`). Passages are sorted by token length
//! and batched so a batch pads to similar lengths, then the original order is restored. Matrix
//! products run on candle's CPU threads (rayon's global pool, one per core by default).

use std::fs;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use cairn_index::EmbedderInfo;

use super::Embedder;
use crate::IngestError;
use crate::models::{MINILM_L6_V2, ModelFiles};

/// Longest input the model sees, in word-pieces including the special tokens.
pub const MAX_TOKENS: usize = 256;
/// Output dimension of all-MiniLM-L6-v2.
pub const DIMENSION: usize = 384;
/// Default number of passages per forward pass.
pub const DEFAULT_BATCH: usize = 16;

/// The all-MiniLM-L6-v2 embedder.
pub struct MiniLmEmbedder {
    model: BertModel,
    tokenizer: Arc<Tokenizer>,
    info: EmbedderInfo,
    device: Device,
    batch_size: usize,
    max_tokens: usize,
}

fn embed_err(message: impl std::fmt::Display) -> IngestError {
    IngestError::Embed {
        embedder: MINILM_L6_V2.into(),
        message: message.to_string(),
    }
}

/// Loads a tokenizer and switches off the padding and truncation stored in its JSON, so
/// token counts are exact and batching decides padding.
pub(crate) fn load_tokenizer(
    path: &std::path::Path,
    model: &str,
) -> Result<Tokenizer, IngestError> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| IngestError::Embed {
        embedder: model.into(),
        message: format!("tokenizer {}: {e}", path.display()),
    })?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| IngestError::Embed {
            embedder: model.into(),
            message: format!("tokenizer {}: {e}", path.display()),
        })?;
    Ok(tokenizer)
}

/// Reads a safetensors file, checks it against `sha256` and builds a CPU var builder.
pub(crate) fn load_weights(
    files: &ModelFiles,
    model: &str,
) -> Result<VarBuilder<'static>, IngestError> {
    let err = |message: String| IngestError::Embed {
        embedder: model.into(),
        message,
    };
    let bytes = fs::read(&files.weights).map_err(|e| {
        err(format!(
            "{}: {e}; run `cairn models pull` or set `[embedder] model_dir`",
            files.weights.display()
        ))
    })?;
    if !files.weights_sha256.is_empty() {
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&files.weights_sha256) {
            return Err(err(format!(
                "{}: sha256 {actual} does not match {}; run `cairn models pull` again",
                files.weights.display(),
                files.weights_sha256
            )));
        }
    }
    VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
        .map_err(|e| err(format!("{}: {e}", files.weights.display())))
}

pub(crate) fn load_config<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    model: &str,
) -> Result<T, IngestError> {
    let err = |message: String| IngestError::Embed {
        embedder: model.into(),
        message,
    };
    let text = fs::read_to_string(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))
}

impl MiniLmEmbedder {
    /// Loads the model from files returned by [`crate::models::ensure_model`].
    pub fn load(files: &ModelFiles) -> Result<MiniLmEmbedder, IngestError> {
        let config: Config = load_config(&files.config, MINILM_L6_V2)?;
        if config.hidden_size != DIMENSION {
            return Err(embed_err(format!(
                "{}: hidden_size {} is not {DIMENSION}; not all-MiniLM-L6-v2",
                files.config.display(),
                config.hidden_size
            )));
        }
        let tokenizer = load_tokenizer(&files.tokenizer, MINILM_L6_V2)?;
        let vb = load_weights(files, MINILM_L6_V2)?;
        let model = BertModel::load(vb, &config).map_err(embed_err)?;
        Ok(MiniLmEmbedder {
            model,
            tokenizer: Arc::new(tokenizer),
            info: EmbedderInfo {
                name: MINILM_L6_V2.into(),
                version: files.version(),
                dimension: DIMENSION,
            },
            device: Device::Cpu,
            batch_size: DEFAULT_BATCH,
            max_tokens: MAX_TOKENS.min(config.max_position_embeddings),
        })
    }

    /// Passages per forward pass (1 disables batching).
    pub fn with_batch_size(mut self, batch_size: usize) -> MiniLmEmbedder {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Word-piece ids with `[CLS]`/`[SEP]`, cut to the model's limit (keeping the final `[SEP]`).
    fn token_ids(&self, text: &str) -> Result<Vec<u32>, IngestError> {
        let encoding = self.tokenizer.encode_fast(text, true).map_err(embed_err)?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > self.max_tokens {
            let last = ids[ids.len() - 1];
            ids.truncate(self.max_tokens - 1);
            ids.push(last);
        }
        Ok(ids)
    }

    /// One forward pass over sequences of similar length; L2-normalised mean-pooled rows.
    fn embed_batch(&self, batch: &[&Vec<u32>]) -> Result<Vec<Vec<f32>>, IngestError> {
        let width = batch.iter().map(|ids| ids.len()).max().unwrap_or(0).max(1);
        let rows = batch.len();
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for seq in batch {
            ids.extend_from_slice(seq);
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            let pad = width - seq.len();
            ids.extend(std::iter::repeat_n(0u32, pad));
            mask.extend(std::iter::repeat_n(0u32, pad));
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let input_ids = Tensor::from_vec(ids, (rows, width), &self.device)?;
            let attention = Tensor::from_vec(mask, (rows, width), &self.device)?;
            let token_types = input_ids.zeros_like()?;
            let hidden = self
                .model
                .forward(&input_ids, &token_types, Some(&attention))?;
            let mask_f = attention.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?;
            // Every row has at least [CLS] and [SEP], so no count is zero.
            let counts = mask_f.sum(1)?;
            let mean = summed.broadcast_div(&counts)?;
            let norms = (mean.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-12)?;
            mean.broadcast_div(&norms)?.to_vec2::<f32>()
        };
        run().map_err(embed_err)
    }
}

impl Embedder for MiniLmEmbedder {
    fn info(&self) -> EmbedderInfo {
        self.info.clone()
    }

    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IngestError> {
        let ids = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<Vec<_>, _>>()?;
        // Longest first, so each batch pads to nearly its own length.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&Vec<u32>> = chunk.iter().map(|&i| &ids[i]).collect();
            let vectors = self.embed_batch(&batch)?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Queries take no prefix in this model, so a batch of them is a batch of passages.
    fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IngestError> {
        self.embed_passages(texts)
    }

    fn count_tokens(&self, text: &str) -> usize {
        // Word-pieces without the special tokens; no offsets are tracked (encode_fast).
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.len())
            .unwrap_or_else(|_| text.split_whitespace().count())
    }
}
