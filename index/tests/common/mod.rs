//! Helpers shared by the integration tests: small documents with chosen words and vectors
//! (the conformance suite's, see `cairn_index::conformance`) and embedded-index openers.
#![allow(dead_code, unused_imports)]

use std::path::Path;

pub use cairn_index::conformance::{
    DIM, DocSpec, axis_vector, chunk, doc_ids, embedder, put, record, request,
};
use cairn_index::{Index, IndexOptions};

/// Options whose graph threshold is tiny, so every segment past `exact_below` rows has a graph.
pub fn options(exact_below: usize) -> IndexOptions {
    let mut o = IndexOptions::new(embedder());
    o.vectors.exact_below = exact_below;
    o
}

pub fn open(dir: &Path) -> Index {
    Index::open(dir, options(4)).expect("open index")
}
