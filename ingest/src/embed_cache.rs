//! The embedding cache: chunk vectors keyed by (embedder identity, SHA-256 of the chunk text).
//!
//! Owns making a reindex cheap: when a document changes, or the index is rebuilt, only chunks
//! whose text the active embedder has never seen are sent to it; every other vector comes from
//! here. Stored in its own sled database (one directory, safe across crashes). The embedder
//! identity is `name@version/dimension`, so switching models never serves stale vectors; a
//! stored value whose length does not match the dimension is treated as a miss. A cache failure
//! is never fatal: lookups that fail are misses and writes that fail are logged.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::IngestError;
use crate::embed::Embedder;

/// A persistent map (embedder, chunk text) → vector.
pub struct EmbeddingCache {
    db: sled::Db,
}

impl std::fmt::Debug for EmbeddingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingCache")
            .field("entries", &self.db.len())
            .finish()
    }
}

/// Hits and misses of one lookup-and-fill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: usize,
    /// Texts that were sent to the embedder.
    pub embedded: usize,
}

impl EmbeddingCache {
    /// Opens (creating if needed) the cache in `dir`.
    pub fn open(dir: &Path) -> Result<EmbeddingCache, IngestError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 << 20)
            .open()
            .map_err(|e| IngestError::Embed {
                embedder: "cache".into(),
                message: format!("cannot open embedding cache at {}: {e}", dir.display()),
            })?;
        Ok(EmbeddingCache { db })
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.db.len()
    }

    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }

    fn key(embedder_id: &str, text: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(embedder_id.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.finalize().into()
    }

    fn get(&self, embedder_id: &str, dim: usize, text: &str) -> Option<Vec<f32>> {
        let raw = self.db.get(Self::key(embedder_id, text)).ok()??;
        if raw.len() != dim * 4 {
            return None;
        }
        Some(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    fn put(&self, embedder_id: &str, text: &str, vector: &[f32]) {
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        if let Err(e) = self.db.insert(Self::key(embedder_id, text), bytes) {
            tracing::warn!("embedding cache write failed: {e}");
        }
    }

    /// Durably writes what was inserted (sled also flushes in the background).
    pub fn flush(&self) {
        if let Err(e) = self.db.flush() {
            tracing::warn!("embedding cache flush failed: {e}");
        }
    }

    /// Vectors for `texts`, from the cache where present and from `embedder` (one batched call
    /// for all misses, duplicates embedded once) otherwise; new vectors are stored.
    pub fn embed_passages(
        &self,
        embedder: &dyn Embedder,
        texts: &[&str],
    ) -> Result<(Vec<Vec<f32>>, CacheStats), IngestError> {
        let info = embedder.info();
        let id = format!("{}@{}/{}", info.name, info.version, info.dimension);
        let mut out: Vec<Option<Vec<f32>>> = texts
            .iter()
            .map(|t| self.get(&id, info.dimension, t))
            .collect();
        let mut missing: Vec<&str> = Vec::new();
        let mut position: HashMap<&str, usize> = HashMap::new();
        for (slot, text) in out.iter().zip(texts) {
            if slot.is_none() && !position.contains_key(text) {
                position.insert(text, missing.len());
                missing.push(text);
            }
        }
        let stats = CacheStats {
            hits: out.iter().filter(|v| v.is_some()).count(),
            embedded: missing.len(),
        };
        if !missing.is_empty() {
            let fresh = embedder.embed_passages(&missing)?;
            if fresh.len() != missing.len() {
                return Err(IngestError::Embed {
                    embedder: info.name,
                    message: format!("{} vectors for {} texts", fresh.len(), missing.len()),
                });
            }
            for (text, vector) in missing.iter().zip(&fresh) {
                self.put(&id, text, vector);
            }
            for (slot, text) in out.iter_mut().zip(texts) {
                if slot.is_none()
                    && let Some(&i) = position.get(text)
                {
                    *slot = Some(fresh[i].clone());
                }
            }
        }
        Ok((
            out.into_iter().map(Option::unwrap_or_default).collect(),
            stats,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::HashEmbedder;

    #[test]
    fn second_lookup_hits_and_other_models_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = EmbeddingCache::open(dir.path()).expect("open");
        let e = HashEmbedder::new(16);
        let (v1, s1) = cache
            .embed_passages(&e, &["alpha", "beta", "alpha"])
            .expect("embed");
        assert_eq!(
            s1,
            CacheStats {
                hits: 0,
                embedded: 2
            }
        );
        let (v2, s2) = cache.embed_passages(&e, &["beta", "alpha"]).expect("embed");
        assert_eq!(
            s2,
            CacheStats {
                hits: 2,
                embedded: 0
            }
        );
        assert_eq!(v2[0], v1[1]);
        assert_eq!(v2[1], v1[0]);
        assert_eq!(v1[0], v1[2]);
        let other = HashEmbedder::new(32);
        let (_, s3) = cache.embed_passages(&other, &["alpha"]).expect("embed");
        assert_eq!(s3.embedded, 1);
        assert_eq!(cache.len(), 3);
    }
}
