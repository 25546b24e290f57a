//! The [`Embedder`] trait and the deterministic feature-hashing embedder.
//!
//! `HashEmbedder` is NOT a semantic model: it hashes word unigrams and bigrams into a fixed
//! number of signed buckets. It exists so tests and the no-model walking skeleton run with no
//! weights; the default for real use is the local sentence-embedding model.

pub mod minilm;

pub use minilm::MiniLmEmbedder;

use sha2::{Digest, Sha256};

use cairn_index::EmbedderInfo;

/// Turns text into L2-normalised vectors; batched.
pub trait Embedder: Send + Sync {
    /// Name, version and dimension, recorded in the index manifest.
    fn info(&self) -> EmbedderInfo;
    /// Embeds passages for indexing.
    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, crate::IngestError>;
    /// Embeds a query (models with query prefixes override this).
    fn embed_query(&self, text: &str) -> Result<Vec<f32>, crate::IngestError> {
        let mut v = self.embed_passages(&[text])?;
        v.pop().ok_or_else(|| crate::IngestError::Embed {
            embedder: self.info().name,
            message: "no vector returned".into(),
        })
    }
    /// Embeds several queries at once, in order (the server batches questions that arrive
    /// together). The default embeds each with [`Embedder::embed_query`]; models whose queries
    /// are embedded like passages override it with one batched call.
    fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, crate::IngestError> {
        texts.iter().map(|t| self.embed_query(t)).collect()
    }
    /// Tokens of `text` in this model's tokenizer (chunk sizing).
    fn count_tokens(&self, text: &str) -> usize;
}

/// Deterministic feature-hashing embedder (see the module docs: not semantic).
pub struct HashEmbedder {
    dim: usize,
}

impl HashEmbedder {
    pub fn new(dim: usize) -> HashEmbedder {
        HashEmbedder { dim: dim.max(8) }
    }

    fn words(text: &str) -> Vec<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }

    fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dim];
        let words = Self::words(text);
        let mut add = |feature: &str, weight: f32| {
            let h = Sha256::digest(feature.as_bytes());
            let idx = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]) as usize
                % self.dim;
            let sign = if h[8] & 1 == 0 { 1.0 } else { -1.0 };
            v[idx] += sign * weight;
        };
        for w in &words {
            add(w, 1.0);
        }
        for pair in words.windows(2) {
            add(&format!("{} {}", pair[0], pair[1]), 0.5);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm < 1e-9 {
            // Empty text: a fixed unit vector, so the index never sees a zero vector.
            v[0] = 1.0;
        } else {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

impl Embedder for HashEmbedder {
    fn info(&self) -> EmbedderInfo {
        EmbedderInfo {
            name: "hash".into(),
            version: "1".into(),
            dimension: self.dim,
        }
    }

    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, crate::IngestError> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }

    fn count_tokens(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_normalised_and_sensitive_to_words() {
        let e = HashEmbedder::new(64);
        let a = e.embed_query("refund policy").expect("embed");
        let b = e.embed_query("refund policy").expect("embed");
        let c = e.embed_query("shipping times").expect("embed");
        assert_eq!(a, b);
        assert_ne!(a, c);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
