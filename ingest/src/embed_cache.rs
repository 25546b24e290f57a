//! The embedding cache: chunk vectors keyed by (embedder identity, SHA-256 of the chunk text).
//!
//! Owns making a reindex cheap: when a document changes, or the index is rebuilt, only chunks
//! whose text the active embedder has never seen are sent to it; every other vector comes from
//! here. Stored in its own redb database (`cache.redb` in the cache directory, safe across
//! crashes); each batch of new vectors is one write transaction (every redb commit fsyncs, so
//! never one per vector). The embedder identity is `name@version/dimension`, so switching
//! models never serves stale vectors; a stored value whose length does not match the dimension
//! is treated as a miss. A cache failure is never fatal: lookups that fail are misses and writes
//! that fail are logged, and after an I/O error (a full disk) the database is reopened, which
//! redb needs before it accepts another access. A directory left by the old sled cache, or a
//! damaged cache file, is replaced by an empty cache with a warning (it is only a cache).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use sha2::{Digest, Sha256};

use crate::IngestError;
use crate::embed::Embedder;

const VECTORS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("vectors");
/// The cache's file inside its directory.
pub const CACHE_FILE: &str = "cache.redb";

/// A persistent map (embedder, chunk text) → vector.
pub struct EmbeddingCache {
    path: PathBuf,
    /// `None` only while a reopen after an I/O error failed; the next access tries again.
    db: RwLock<Option<Database>>,
}

impl std::fmt::Debug for EmbeddingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingCache")
            .field("path", &self.path)
            .field("entries", &self.len())
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

/// Whether `dir` holds the files of the sled cache of earlier cairn versions.
fn is_sled_dir(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// Deletes what sled 0.34 keeps in its directory (`conf`, `db`, `blobs/`, `snap.*`), and
/// nothing else.
fn remove_sled_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "blobs" && entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else if name == "conf" || name == "db" || name.starts_with("snap.") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn open_db(file: &Path) -> Result<Database, redb::Error> {
    let db = Database::builder()
        .set_cache_size(64 << 20)
        .set_check_integrity_on_open(true)
        .create(file)?;
    let txn = db.begin_write()?;
    txn.open_table(VECTORS)?;
    txn.commit()?;
    Ok(db)
}

/// A cache file that is damaged (or not a redb file) is discarded rather than fatal.
fn is_damaged(e: &redb::Error) -> bool {
    match e {
        redb::Error::UpgradeRequired(_) | redb::Error::Corrupted(_) => true,
        redb::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

impl EmbeddingCache {
    /// Opens (creating if needed) the cache in directory `dir`. An old sled cache there, or a
    /// damaged cache file, is deleted and replaced by an empty cache, with a warning.
    pub fn open(dir: &Path) -> Result<EmbeddingCache, IngestError> {
        let fail = |message: String| IngestError::Embed {
            embedder: "cache".into(),
            message,
        };
        if is_sled_dir(dir) {
            tracing::warn!(
                dir = %dir.display(),
                "replacing the embedding cache of an older cairn (sled) with an empty one; \
                 the next ingest re-embeds its chunks"
            );
            remove_sled_files(dir).map_err(|e| {
                fail(format!(
                    "cannot remove the old cache {}: {e}",
                    dir.display()
                ))
            })?;
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(CACHE_FILE);
        let opened = std::panic::catch_unwind(|| open_db(&path))
            .unwrap_or_else(|_| Err(redb::Error::Corrupted("reading it panicked".into())));
        let db = match opened {
            Ok(db) => db,
            Err(e) if is_damaged(&e) => {
                tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    "the embedding cache is damaged; replacing it with an empty one"
                );
                std::fs::remove_file(&path)
                    .map_err(|e| fail(format!("cannot remove {}: {e}", path.display())))?;
                open_db(&path).map_err(|e| {
                    fail(format!(
                        "cannot open embedding cache at {}: {e}",
                        path.display()
                    ))
                })?
            }
            Err(e) => {
                return Err(fail(format!(
                    "cannot open embedding cache at {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(EmbeddingCache {
            path,
            db: RwLock::new(Some(db)),
        })
    }

    fn db(&self) -> RwLockReadGuard<'_, Option<Database>> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// After an I/O error (a full disk) redb refuses every further access until the database
    /// is reopened: close it and open it again, so the cache works again once space is free.
    fn reopen(&self) {
        let mut slot = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = slot.take()
            && let Err(e) = old.close()
        {
            tracing::warn!(file = %self.path.display(), "closing the embedding cache: {e}");
        }
        match open_db(&self.path) {
            Ok(db) => *slot = Some(db),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), "reopening the embedding cache: {e}");
            }
        }
    }

    /// Runs `f` on the database; an error that needs a reopen (I/O) triggers one.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, redb::Error> {
        if self.db().is_none() {
            self.reopen();
        }
        let result = match &*self.db() {
            Some(db) => f(db),
            None => Err(redb::Error::DatabaseClosed),
        };
        if matches!(result, Err(redb::Error::Io(_) | redb::Error::PreviousIo)) {
            self.reopen();
        }
        result
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(VECTORS)?.len()?)
        })
        .unwrap_or(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(embedder_id: &str, text: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(embedder_id.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.finalize().into()
    }

    /// Cached vectors for `texts` (one read transaction); a failed read is all misses.
    fn get_many(&self, embedder_id: &str, dim: usize, texts: &[&str]) -> Vec<Option<Vec<f32>>> {
        let read = |db: &Database| -> Result<Vec<Option<Vec<f32>>>, redb::Error> {
            let txn = db.begin_read()?;
            let table = txn.open_table(VECTORS)?;
            let mut out = Vec::with_capacity(texts.len());
            for text in texts {
                let raw = table.get(&Self::key(embedder_id, text))?;
                out.push(raw.and_then(|raw| {
                    let raw = raw.value();
                    (raw.len() == dim * 4).then(|| {
                        raw.chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect()
                    })
                }));
            }
            Ok(out)
        };
        self.with_db(read).unwrap_or_else(|e| {
            tracing::warn!(file = %self.path.display(), "embedding cache read failed: {e}");
            vec![None; texts.len()]
        })
    }

    /// Stores a batch of vectors in one write transaction (one fsync); a failure is logged.
    fn put_many(&self, embedder_id: &str, items: &[(&str, &Vec<f32>)]) {
        let write = |db: &Database| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(VECTORS)?;
                let mut bytes = Vec::new();
                for (text, vector) in items {
                    bytes.clear();
                    bytes.extend(vector.iter().flat_map(|x| x.to_le_bytes()));
                    table.insert(&Self::key(embedder_id, text), bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        if let Err(e) = self.with_db(write) {
            tracing::warn!(file = %self.path.display(), "embedding cache write failed: {e}");
        }
    }

    /// Kept for callers of the sled cache: every batch is durable once written, so there is
    /// nothing left to flush.
    pub fn flush(&self) {}

    /// Vectors for `texts`, from the cache where present and from `embedder` (one batched call
    /// for all misses, duplicates embedded once) otherwise; new vectors are stored.
    pub fn embed_passages(
        &self,
        embedder: &dyn Embedder,
        texts: &[&str],
    ) -> Result<(Vec<Vec<f32>>, CacheStats), IngestError> {
        let info = embedder.info();
        let id = format!("{}@{}/{}", info.name, info.version, info.dimension);
        let mut out: Vec<Option<Vec<f32>>> = self.get_many(&id, info.dimension, texts);
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
            let items: Vec<(&str, &Vec<f32>)> = missing.iter().copied().zip(&fresh).collect();
            self.put_many(&id, &items);
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
