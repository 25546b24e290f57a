//! The input rules every index backend applies the same way before staging anything: a
//! document's id and source, its chunks' text, and vector dimension and values. A leaf module
//! (types and vector checks only), used by both the embedded index and the backend trait.

use crate::types::{ChunkInput, ChunkRecord, DocumentRecord};
use crate::vectors::validate;
use crate::{IndexError, Result};

/// Checks a document and its chunks the way every backend must before staging them: a
/// non-empty id and source, chunks that belong to the document, non-empty text, and vectors of
/// the embedder's dimension that are finite and non-zero. Returns the chunks with their
/// vectors normalised to unit length (similarity is then a dot product).
pub fn validate_upsert(
    doc: &DocumentRecord,
    chunks: Vec<ChunkInput>,
    dimension: usize,
) -> Result<Vec<(ChunkRecord, Vec<f32>)>> {
    if doc.id.is_empty() || doc.source.is_empty() {
        return Err(IndexError::InvalidDocument(
            "a document needs a non-empty id and source".into(),
        ));
    }
    let mut staged = Vec::with_capacity(chunks.len());
    for c in chunks {
        let name = c.chunk.chunk_id();
        if c.chunk.doc_id != doc.id {
            return Err(IndexError::InvalidDocument(format!(
                "chunk {name} belongs to {} but was given with {}",
                c.chunk.doc_id, doc.id
            )));
        }
        if c.chunk.text.trim().is_empty() {
            return Err(IndexError::EmptyText { chunk: name });
        }
        let v = validate(&name, &c.vector, dimension)?;
        staged.push((c.chunk, v));
    }
    Ok(staged)
}

/// Checks a query vector (dimension, finite, non-zero) and normalises it to unit length.
pub fn validate_query(vector: &[f32], dimension: usize) -> Result<Vec<f32>> {
    validate("query", vector, dimension)
}
