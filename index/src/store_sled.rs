//! The format-1 document store (sled), kept only so the store benchmark can compare it with the
//! redb store in one run (feature `sled-bench`, never in a release build). Deleted once the
//! comparison is recorded in BENCHMARKS.md.
//!
//! Layout: tree `docs` (doc id → [`StoredDoc`] JSON), `chunks` (internal chunk id, big-endian u64
//! → [`ChunkRecord`] JSON), `vectors` (same key → little-endian f32s), `meta` (manifest,
//! generation, next chunk id, and the list of persisted HNSW graphs with their checksums).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::types::{ChunkRecord, DocumentRecord, EmbedderInfo};
use crate::vectors::PersistedSegment;
use crate::{IndexError, Result};

const MANIFEST: &[u8] = b"manifest";
const GENERATION: &[u8] = b"generation";
const NEXT_CHUNK: &[u8] = b"next_chunk_id";
const GRAPHS: &[u8] = b"graph_segments";
/// Bumped when the on-disk layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// What the manifest records about an index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub embedder: EmbedderInfo,
}

/// A document with the internal ids of its live chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDoc {
    pub record: DocumentRecord,
    pub chunk_ids: Vec<u64>,
}

/// One staged change to the documents tree, applied in a single transaction.
pub enum DocChange {
    Put(Box<StoredDoc>),
    Remove(String),
}

/// Classifies a sled error: damaged or unreadable files become [`IndexError::Corrupt`] (with the
/// rebuild advice); anything else (permissions, a full disk, a lock) stays a storage error.
fn store_error(path: &Path, source: sled::Error) -> IndexError {
    let damaged = match &source {
        sled::Error::Corruption { .. }
        | sled::Error::Unsupported(_)
        | sled::Error::ReportableBug(_) => true,
        sled::Error::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    };
    if damaged {
        IndexError::Corrupt {
            path: path.to_path_buf(),
            reason: source.to_string(),
        }
    } else {
        IndexError::Store {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }
}

pub struct Store {
    path: PathBuf,
    db: sled::Db,
    docs: sled::Tree,
    chunks: sled::Tree,
    vectors: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    /// Opens (or creates) the store with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Store> {
        let err = |source| store_error(path, source);
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(err)?;
        Ok(Store {
            docs: db.open_tree("docs").map_err(err)?,
            chunks: db.open_tree("chunks").map_err(err)?,
            vectors: db.open_tree("vectors").map_err(err)?,
            meta: db.open_tree("meta").map_err(err)?,
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: sled::Error) -> IndexError {
        store_error(&self.path, source)
    }

    fn corrupt(&self, reason: impl Into<String>) -> IndexError {
        IndexError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    pub fn manifest(&self) -> Result<Option<Manifest>> {
        match self.meta.get(MANIFEST).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.corrupt(format!("manifest: {e}"))),
        }
    }

    pub fn set_manifest(&self, manifest: &Manifest) -> Result<()> {
        let bytes = serde_json::to_vec(manifest).map_err(|e| self.corrupt(e.to_string()))?;
        self.meta.insert(MANIFEST, bytes).map_err(|e| self.err(e))?;
        self.flush()
    }

    /// The persisted graph segments last recorded (empty when none). Only a cache: a missing
    /// or stale list makes open rebuild graphs, never lose data.
    pub fn graph_segments(&self) -> Result<Vec<PersistedSegment>> {
        match self.meta.get(GRAPHS).map_err(|e| self.err(e))? {
            None => Ok(Vec::new()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| self.corrupt(format!("graph segment list: {e}"))),
        }
    }

    /// Records the persisted graph segments and flushes, so the files they name may be relied
    /// upon (and files they no longer name may be deleted) once this returns.
    pub fn set_graph_segments(&self, segments: &[PersistedSegment]) -> Result<()> {
        let bytes = serde_json::to_vec(segments).map_err(|e| self.corrupt(e.to_string()))?;
        self.meta.insert(GRAPHS, bytes).map_err(|e| self.err(e))?;
        self.flush()
    }

    pub fn generation(&self) -> Result<u64> {
        self.read_u64(GENERATION)
    }

    fn read_u64(&self, key: &[u8]) -> Result<u64> {
        match self.meta.get(key).map_err(|e| self.err(e))? {
            None => Ok(0),
            Some(b) => {
                let arr: [u8; 8] = b
                    .as_ref()
                    .try_into()
                    .map_err(|_| self.corrupt("counter is not 8 bytes"))?;
                Ok(u64::from_be_bytes(arr))
            }
        }
    }

    /// Reserves `n` fresh internal chunk ids. Ids are never reused, so a reader of an older
    /// generation can never see a different chunk under an id it holds.
    pub fn reserve_chunk_ids(&self, n: u64) -> Result<u64> {
        let first = self.read_u64(NEXT_CHUNK)?;
        self.meta
            .insert(NEXT_CHUNK, &(first + n).to_be_bytes())
            .map_err(|e| self.err(e))?;
        Ok(first)
    }

    pub fn doc(&self, id: &str) -> Result<Option<StoredDoc>> {
        match self.docs.get(id.as_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| self.corrupt(format!("document {id}: {e}"))),
        }
    }

    pub fn docs(&self) -> impl Iterator<Item = Result<StoredDoc>> + '_ {
        self.docs.iter().map(move |item| {
            let (_, v) = item.map_err(|e| self.err(e))?;
            serde_json::from_slice(&v).map_err(|e| self.corrupt(format!("document: {e}")))
        })
    }

    pub fn doc_count(&self) -> usize {
        self.docs.len()
    }

    pub fn chunk(&self, id: u64) -> Result<Option<ChunkRecord>> {
        match self.chunks.get(id.to_be_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| self.corrupt(format!("chunk {id}: {e}"))),
        }
    }

    pub fn vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        match self
            .vectors
            .get(id.to_be_bytes())
            .map_err(|e| self.err(e))?
        {
            None => Ok(None),
            Some(b) => {
                if b.len() % 4 != 0 {
                    return Err(self.corrupt(format!("vector {id} has {} bytes", b.len())));
                }
                Ok(Some(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ))
            }
        }
    }

    /// Writes chunk bodies and vectors. They stay unreferenced (and invisible) until
    /// [`Store::commit`] points a document at them.
    pub fn put_chunks(&self, items: &[(u64, &ChunkRecord, &[f32])]) -> Result<()> {
        let mut chunks = sled::Batch::default();
        let mut vectors = sled::Batch::default();
        for (id, chunk, vector) in items {
            let body = serde_json::to_vec(chunk).map_err(|e| self.corrupt(e.to_string()))?;
            chunks.insert(&id.to_be_bytes(), body);
            let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
            vectors.insert(&id.to_be_bytes(), bytes);
        }
        self.chunks.apply_batch(chunks).map_err(|e| self.err(e))?;
        self.vectors.apply_batch(vectors).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Applies document changes and the new generation number in one transaction, then flushes.
    /// This is the commit point of a generation.
    pub fn commit(&self, changes: &[DocChange], generation: u64) -> Result<()> {
        let mut encoded = Vec::with_capacity(changes.len());
        for change in changes {
            encoded.push(match change {
                DocChange::Put(d) => (
                    d.record.id.clone(),
                    Some(serde_json::to_vec(d).map_err(|e| self.corrupt(e.to_string()))?),
                ),
                DocChange::Remove(id) => (id.clone(), None),
            });
        }
        let res: std::result::Result<(), TransactionError<()>> = (&self.docs, &self.meta)
            .transaction(|(docs, meta)| {
                for (id, body) in &encoded {
                    match body {
                        Some(b) => docs.insert(id.as_bytes(), b.as_slice())?,
                        None => docs.remove(id.as_bytes())?,
                    };
                }
                meta.insert(GENERATION, &generation.to_be_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match res {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(self.err(e)),
            Err(TransactionError::Abort(())) => return Err(self.corrupt("transaction aborted")),
        }
        self.flush()
    }

    /// Removes chunk bodies and vectors no document references any more.
    pub fn remove_chunks(&self, ids: &[u64]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(&id.to_be_bytes());
        }
        self.chunks
            .apply_batch(batch.clone())
            .map_err(|e| self.err(e))?;
        self.vectors.apply_batch(batch).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Internal ids of every stored chunk body, referenced or not.
    pub fn stored_chunk_ids(&self) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(self.chunks.len());
        for k in self.chunks.iter().keys() {
            let k = k.map_err(|e| self.err(e))?;
            let arr: [u8; 8] = k
                .as_ref()
                .try_into()
                .map_err(|_| self.corrupt("chunk key is not 8 bytes"))?;
            out.push(u64::from_be_bytes(arr));
        }
        Ok(out)
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
