//! Helpers shared by the integration tests: small documents with chosen words and vectors.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use cairn_index::{
    ChunkInput, ChunkRecord, DocumentRecord, EmbedderInfo, Filter, Index, IndexOptions, SearchMode,
    SearchRequest,
};
use chrono::{DateTime, TimeZone, Utc};

pub const DIM: usize = 8;

pub fn embedder() -> EmbedderInfo {
    EmbedderInfo {
        name: "test-embedder".into(),
        version: "1".into(),
        dimension: DIM,
    }
}

/// Options whose graph threshold is tiny, so every segment past `exact_below` rows has a graph.
pub fn options(exact_below: usize) -> IndexOptions {
    let mut o = IndexOptions::new(embedder());
    o.vectors.exact_below = exact_below;
    o
}

pub fn open(dir: &Path) -> Index {
    Index::open(dir, options(4)).expect("open index")
}

/// A unit-ish vector pointing mostly along axis `axis`, nudged by `salt`.
pub fn axis_vector(axis: usize, salt: f32) -> Vec<f32> {
    let mut v = vec![0.05f32; DIM];
    v[axis % DIM] = 1.0;
    v[(axis + 1) % DIM] += salt;
    v
}

pub fn time(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, day, 12, 0, 0)
        .single()
        .expect("valid date")
}

pub struct DocSpec<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub text: &'a str,
    pub axis: usize,
    pub groups: &'a [&'a str],
    pub metadata: &'a [(&'a str, &'a str)],
    pub day: Option<u32>,
}

impl<'a> DocSpec<'a> {
    pub fn new(id: &'a str, text: &'a str, axis: usize) -> DocSpec<'a> {
        DocSpec {
            id,
            source: "wiki",
            text,
            axis,
            groups: &[],
            metadata: &[],
            day: None,
        }
    }
}

pub fn record(spec: &DocSpec<'_>) -> DocumentRecord {
    DocumentRecord {
        id: spec.id.to_string(),
        source: spec.source.to_string(),
        external_id: spec.id.to_string(),
        title: format!("title of {}", spec.id),
        url: None,
        updated_at: spec.day.map(time),
        metadata: spec
            .metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        access_groups: spec.groups.iter().map(|g| g.to_string()).collect(),
        content_hash: format!("hash-{}", spec.text.len()),
    }
}

pub fn chunk(doc_id: &str, ordinal: u32, text: &str, vector: Vec<f32>) -> ChunkInput {
    ChunkInput {
        chunk: ChunkRecord {
            doc_id: doc_id.to_string(),
            ordinal,
            text: text.to_string(),
            heading_path: Vec::new(),
            page: None,
            char_start: 0,
            char_end: text.chars().count(),
        },
        vector,
    }
}

/// Upserts one single-chunk document per spec and commits.
pub fn put(index: &Index, specs: &[DocSpec<'_>]) -> u64 {
    let mut w = index.writer();
    for s in specs {
        let c = chunk(s.id, 0, s.text, axis_vector(s.axis, 0.0));
        w.upsert(record(s), vec![c]).expect("upsert");
    }
    w.commit().expect("commit")
}

pub fn request(
    text: &str,
    vector: Option<Vec<f32>>,
    mode: SearchMode,
    filter: Filter,
) -> SearchRequest {
    SearchRequest {
        text: text.to_string(),
        vector,
        k: 50,
        mode,
        filter,
        snippets: false,
    }
}

/// Distinct document ids of a search, in rank order.
pub fn doc_ids(index: &Index, req: &SearchRequest) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in index.search(req).expect("search") {
        if !out.contains(&h.document.id) {
            out.push(h.document.id);
        }
    }
    out
}
