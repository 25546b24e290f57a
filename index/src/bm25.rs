//! Words: a tantivy BM25 index over chunks, with an English analyser (lower-casing, stop words,
//! Snowball stemming), filter clauses evaluated inside the query, and highlighted snippets.
//!
//! Each tantivy document is one chunk, keyed by the internal chunk id. The committed generation
//! number rides in tantivy's commit payload so [`crate::Index::open`] can tell whether this
//! index matches the store.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{
    DocAddress, Index as TantivyIndex, IndexReader, IndexWriter, ReloadPolicy, Searcher,
    TantivyDocument, Term,
};

use crate::types::{ChunkRecord, DocumentRecord, Filter};
use crate::{IndexError, Result};

const ANALYZER: &str = "cairn_en";
/// Token given to chunks of documents without access groups (visible to everyone).
const PUBLIC_GROUP: &str = "\u{1}public";
const WRITER_HEAP: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy)]
struct Fields {
    chunk_key: Field,
    doc_id: Field,
    source: Field,
    groups: Field,
    meta: Field,
    updated: Field,
    body: Field,
}

pub struct Bm25 {
    path: PathBuf,
    index: TantivyIndex,
    reader: IndexReader,
    fields: Fields,
}

/// The English analyser, also used to tokenise queries so both sides agree.
fn analyzer() -> TextAnalyzer {
    let mut builder = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .dynamic();
    if let Some(stop) = StopWordFilter::new(Language::English) {
        builder = builder.filter_dynamic(stop);
    }
    builder
        .filter_dynamic(Stemmer::new(Language::English))
        .build()
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        chunk_key: b.add_u64_field("chunk_key", INDEXED | FAST),
        doc_id: b.add_text_field("doc_id", STRING),
        source: b.add_text_field("source", STRING),
        groups: b.add_text_field("groups", STRING),
        meta: b.add_text_field("meta", STRING),
        updated: b.add_i64_field("updated", INDEXED | FAST),
        body: b.add_text_field("body", text),
    };
    (b.build(), fields)
}

fn meta_term(key: &str, value: &str) -> String {
    format!("{key}\u{1f}{value}")
}

/// The text BM25 indexes for a chunk: title, heading path and body, as one field.
pub fn body_text(doc: &DocumentRecord, chunk: &ChunkRecord) -> String {
    let mut s = String::with_capacity(doc.title.len() + chunk.text.len() + 2);
    s.push_str(&doc.title);
    for h in &chunk.heading_path {
        if h != &doc.title {
            s.push('\n');
            s.push_str(h);
        }
    }
    s.push('\n');
    s.push_str(&chunk.text);
    s
}

/// Deletes the files a writer killed mid-commit left behind (tantivy registers each file before
/// writing it, so they are known but unreferenced by the last commit). Left in place, the next
/// commit can reuse one of their names — a segment's `<id>.<opstamp>.del` — and fail with
/// `FileAlreadyExists`. Runs at open, when no other writer can exist.
fn remove_unfinished_commit_files(index: &TantivyIndex, path: &Path) -> Result<()> {
    let tv = |source| IndexError::bm25(path, source);
    let writer: IndexWriter = index.writer_with_num_threads(1, WRITER_HEAP).map_err(tv)?;
    let removed = writer.garbage_collect_files().wait().map_err(tv)?;
    if !removed.deleted_files.is_empty() {
        tracing::info!(
            files = removed.deleted_files.len(),
            "removed BM25 files of an unfinished commit"
        );
    }
    Ok(())
}

impl Bm25 {
    pub fn open(path: &Path) -> Result<Bm25> {
        let tv = |source| IndexError::bm25(path, source);
        std::fs::create_dir_all(path).map_err(|source| IndexError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (schema, fields) = schema();
        let dir =
            tantivy::directory::MmapDirectory::open(path).map_err(|e| IndexError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let index = TantivyIndex::open_or_create(dir, schema).map_err(|e| match e {
            tantivy::TantivyError::SchemaError(_) | tantivy::TantivyError::DataCorruption(_) => {
                IndexError::Corrupt {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            }
            other => tv(other),
        })?;
        check_files(&index, path)?;
        remove_unfinished_commit_files(&index, path)?;
        index.tokenizers().register(ANALYZER, analyzer());
        // Opening the reader opens every segment file: a failure here is a damaged index.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e: tantivy::TantivyError| IndexError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Bm25 {
            path: path.to_path_buf(),
            index,
            reader,
            fields,
        })
    }

    fn tv(&self, source: tantivy::TantivyError) -> IndexError {
        IndexError::bm25(&self.path, source)
    }

    /// The generation recorded by the last tantivy commit (0 when none).
    pub fn committed_generation(&self) -> Result<u64> {
        let metas = self.index.load_metas().map_err(|e| self.tv(e))?;
        Ok(metas
            .payload
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0))
    }

    pub fn writer(&self) -> Result<Bm25Writer> {
        let writer = self
            .index
            .writer_with_num_threads(1, WRITER_HEAP)
            .map_err(|e| self.tv(e))?;
        Ok(Bm25Writer {
            writer,
            fields: self.fields,
            path: self.path.clone(),
        })
    }

    /// A point-in-time searcher over the last reloaded commit.
    pub fn reload(&self) -> Result<Searcher> {
        self.reader.reload().map_err(|e| self.tv(e))?;
        Ok(self.reader.searcher())
    }

    /// Query terms after analysis, for highlighting and diagnostics.
    fn query_terms(&self, text: &str) -> Vec<Term> {
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut out: Vec<Term> = Vec::new();
        while let Some(tok) = stream.next() {
            let t = Term::from_field_text(self.fields.body, &tok.text);
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// Filter clauses, each scoring 0. `restricted` says whether any indexed chunk carries
    /// access groups; when none does, the access clause would match every chunk, so it is left
    /// out rather than intersected with the words.
    fn filter_clauses(&self, filter: &Filter, restricted: bool) -> Vec<(Occur, Box<dyn Query>)> {
        let f = self.fields;
        let term_any = |field: Field, values: &[String]| -> Box<dyn Query> {
            let subs: Vec<(Occur, Box<dyn Query>)> = values
                .iter()
                .map(|v| {
                    let q: Box<dyn Query> = Box::new(TermQuery::new(
                        Term::from_field_text(field, v),
                        IndexRecordOption::Basic,
                    ));
                    (Occur::Should, q)
                })
                .collect();
            Box::new(BooleanQuery::new(subs))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        // Access control, deny by default: public chunks plus the caller's groups.
        if restricted {
            let mut groups = vec![PUBLIC_GROUP.to_string()];
            groups.extend(filter.caller_groups.iter().cloned());
            clauses.push((Occur::Must, term_any(f.groups, &groups)));
        }
        if !filter.sources.is_empty() {
            clauses.push((Occur::Must, term_any(f.source, &filter.sources)));
        }
        for (k, v) in &filter.metadata {
            clauses.push((Occur::Must, term_any(f.meta, &[meta_term(k, v)])));
        }
        if let Some(range) = &filter.updated {
            let lower = range.from.map_or(Bound::Unbounded, |t| {
                Bound::Included(Term::from_field_i64(f.updated, t.timestamp()))
            });
            let upper = range.to.map_or(Bound::Unbounded, |t| {
                Bound::Included(Term::from_field_i64(f.updated, t.timestamp()))
            });
            clauses.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
        }
        clauses
            .into_iter()
            .map(|(o, q)| (o, Box::new(ConstScoreQuery::new(q, 0.0)) as Box<dyn Query>))
            .collect()
    }

    /// BM25 top-`k` (internal chunk id, score), filters applied inside the query. Pass
    /// `restricted = false` only when no chunk the searcher sees carries access groups.
    pub fn search(
        &self,
        searcher: &Searcher,
        text: &str,
        k: usize,
        filter: &Filter,
        restricted: bool,
    ) -> Result<Vec<(u64, f32)>> {
        let terms = self.query_terms(text);
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let words: Vec<(Occur, Box<dyn Query>)> = terms
            .into_iter()
            .map(|t| {
                let q: Box<dyn Query> = Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs));
                (Occur::Should, q)
            })
            .collect();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, Box::new(BooleanQuery::new(words)))];
        clauses.extend(self.filter_clauses(filter, restricted));
        let query = BooleanQuery::new(clauses);
        let top = searcher
            .search(&query, &TopDocs::with_limit(k).order_by_score())
            .map_err(|e| self.tv(e))?;
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            out.push((self.chunk_key(searcher, addr)?, score));
        }
        Ok(out)
    }

    fn chunk_key(&self, searcher: &Searcher, addr: DocAddress) -> Result<u64> {
        let seg = searcher.segment_reader(addr.segment_ord);
        let col = seg.fast_fields().u64("chunk_key").map_err(|e| self.tv(e))?;
        col.first(addr.doc_id).ok_or_else(|| IndexError::Corrupt {
            path: self.path.clone(),
            reason: "a BM25 document has no chunk key".into(),
        })
    }

    /// Highlighted snippet of `text` for `query`: HTML-escaped with `<mark>` around matches.
    pub fn snippet(&self, searcher: &Searcher, query: &str, text: &str) -> Result<String> {
        let words: Vec<(Occur, Box<dyn Query>)> = self
            .query_terms(query)
            .into_iter()
            .map(|t| {
                let q: Box<dyn Query> = Box::new(TermQuery::new(t, IndexRecordOption::Basic));
                (Occur::Should, q)
            })
            .collect();
        let q = BooleanQuery::new(words);
        let mut generator =
            SnippetGenerator::create(searcher, &q, self.fields.body).map_err(|e| self.tv(e))?;
        generator.set_max_num_chars(240);
        let mut snippet = generator.snippet(text);
        snippet.set_snippet_prefix_postfix("<mark>", "</mark>");
        let html = snippet.to_html();
        if html.is_empty() {
            // No term matched (a vector-only hit): show the chunk's opening instead.
            let head: String = text.chars().take(240).collect();
            return Ok(html_escape(&head));
        }
        Ok(html)
    }

    pub fn size_on_disk(&self) -> u64 {
        dir_size(&self.path)
    }
}

/// Verifies the checksum of every file of the committed segments, so a truncated or garbled
/// file is reported at open instead of failing (or panicking) in a search. Missing files are
/// caught when the reader opens the segments.
fn check_files(index: &TantivyIndex, path: &Path) -> Result<()> {
    let corrupt = |file: &Path, reason: String| IndexError::Corrupt {
        path: path.join(file),
        reason,
    };
    let metas = index
        .load_metas()
        .map_err(|e| corrupt(Path::new("meta.json"), e.to_string()))?;
    if metas.segments.is_empty() {
        return Ok(());
    }
    let damaged = index
        .validate_checksum()
        .map_err(|e| corrupt(Path::new("meta.json"), e.to_string()))?;
    if let Some(file) = damaged.iter().next() {
        return Err(corrupt(file, "checksum mismatch".into()));
    }
    Ok(())
}

pub fn dir_size(path: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Escapes text for HTML (snippets are HTML with `<mark>` around matches).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Stages BM25 changes; nothing is visible until [`Bm25Writer::commit`].
pub struct Bm25Writer {
    writer: IndexWriter,
    fields: Fields,
    path: PathBuf,
}

impl Bm25Writer {
    fn tv(&self, source: tantivy::TantivyError) -> IndexError {
        IndexError::bm25(&self.path, source)
    }

    pub fn delete_doc(&mut self, doc_id: &str) {
        self.writer
            .delete_term(Term::from_field_text(self.fields.doc_id, doc_id));
    }

    pub fn delete_all(&mut self) -> Result<()> {
        self.writer.delete_all_documents().map_err(|e| self.tv(e))?;
        Ok(())
    }

    pub fn add_chunk(&mut self, key: u64, doc: &DocumentRecord, chunk: &ChunkRecord) -> Result<()> {
        let f = self.fields;
        let mut d = TantivyDocument::default();
        d.add_u64(f.chunk_key, key);
        d.add_text(f.doc_id, &doc.id);
        d.add_text(f.source, &doc.source);
        if doc.access_groups.is_empty() {
            d.add_text(f.groups, PUBLIC_GROUP);
        }
        for g in &doc.access_groups {
            d.add_text(f.groups, g);
        }
        for (k, v) in &doc.metadata {
            d.add_text(f.meta, meta_term(k, v));
        }
        if let Some(t) = doc.updated_at {
            d.add_i64(f.updated, t.timestamp());
        }
        d.add_text(f.body, body_text(doc, chunk));
        self.writer.add_document(d).map_err(|e| self.tv(e))?;
        Ok(())
    }

    /// Commits with the generation number as payload.
    pub fn commit(mut self, generation: u64) -> Result<()> {
        let path = self.path.clone();
        let tv = |e| IndexError::bm25(&path, e);
        let mut prepared = self.writer.prepare_commit().map_err(tv)?;
        prepared.set_payload(&generation.to_string());
        prepared.commit().map_err(tv)?;
        self.writer.wait_merging_threads().map_err(tv)?;
        Ok(())
    }
}
