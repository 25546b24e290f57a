//! Chunking: text-splitter, Markdown-aware, sized in tokens of the active embedder, with
//! overlap. Each chunk keeps its heading path, page and char offsets into the document text.
//! Lone headings (tiny chunks) are merged into the content that follows them.

use std::sync::Arc;

use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

use crate::embed::Embedder;
use crate::source::{Body, PAGE_SEPARATOR};

/// Chunk sizes in embedder tokens.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkerOptions {
    pub max_tokens: usize,
    pub overlap_tokens: usize,
    /// Chunks smaller than this are merged into the next one (lone headings).
    pub min_tokens: usize,
}

impl Default for ChunkerOptions {
    fn default() -> Self {
        ChunkerOptions {
            max_tokens: 200,
            overlap_tokens: 30,
            min_tokens: 12,
        }
    }
}

/// One chunk of a document's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub text: String,
    pub heading_path: Vec<String>,
    pub page: Option<u32>,
    pub char_start: usize,
    pub char_end: usize,
}

struct TokenSizer(Arc<dyn Embedder>);

impl ChunkSizer for TokenSizer {
    fn size(&self, chunk: &str) -> usize {
        self.0.count_tokens(chunk)
    }
}

pub struct Chunker {
    options: ChunkerOptions,
    embedder: Arc<dyn Embedder>,
    markdown: MarkdownSplitter<TokenSizer>,
    text: TextSplitter<TokenSizer>,
}

impl Chunker {
    pub fn new(options: ChunkerOptions, embedder: Arc<dyn Embedder>) -> Chunker {
        let max = options.max_tokens.max(8);
        let overlap = options.overlap_tokens.min(max / 2);
        let config = || {
            ChunkConfig::new(max)
                .with_overlap(overlap)
                .unwrap_or_else(|_| ChunkConfig::new(max))
                .with_sizer(TokenSizer(embedder.clone()))
        };
        Chunker {
            markdown: MarkdownSplitter::new(config()),
            text: TextSplitter::new(config()),
            options,
            embedder,
        }
    }

    /// Splits a body into chunks; the text of page `n` (from 1) is found by its form feeds.
    pub fn chunk(&self, body: &Body) -> Vec<Chunk> {
        let text = body.full_text();
        let raw: Vec<(usize, &str)> = match body {
            Body::Markdown(_) => self
                .markdown
                .chunk_char_indices(&text)
                .map(|c| (c.char_offset, c.chunk))
                .collect(),
            Body::Text(_) | Body::Pages(_) => self
                .text
                .chunk_char_indices(&text)
                .map(|c| (c.char_offset, c.chunk))
                .collect(),
        };
        let headings = match body {
            Body::Markdown(_) => heading_positions(&text),
            _ => Vec::new(),
        };
        // Char offsets of the separators `full_text` put between pages (counted from the
        // pages' lengths: a form feed inside a page's own text is not a page break).
        let page_breaks: Vec<usize> = match body {
            Body::Pages(pages) => {
                let separator = PAGE_SEPARATOR.chars().count();
                let mut at = 0usize;
                let mut breaks = Vec::with_capacity(pages.len());
                for page in pages.iter().take(pages.len().saturating_sub(1)) {
                    at += page.chars().count();
                    breaks.push(at);
                    at += separator;
                }
                breaks
            }
            _ => Vec::new(),
        };
        let mut out: Vec<Chunk> = Vec::with_capacity(raw.len());
        let mut pending: Option<Chunk> = None;
        for (start, piece) in raw {
            let piece_chars = piece.chars().count();
            let mut chunk = Chunk {
                text: piece.replace('\u{c}', "").trim().to_string(),
                heading_path: heading_path_at(&headings, start),
                page: matches!(body, Body::Pages(_)).then(|| page_at(&page_breaks, start, piece)),
                char_start: start,
                char_end: start + piece_chars,
            };
            if let Some(prev) = pending.take() {
                // Merge a lone heading (or other tiny piece) into what follows it.
                chunk.text = format!("{}\n\n{}", prev.text, chunk.text);
                chunk.char_start = prev.char_start;
                chunk.heading_path = prev.heading_path;
                chunk.page = prev.page;
            }
            if self.embedder.count_tokens(&chunk.text) < self.options.min_tokens {
                pending = Some(chunk);
                continue;
            }
            out.push(chunk);
        }
        if let Some(last) = pending {
            match out.last_mut() {
                Some(prev) => {
                    prev.text = format!("{}\n\n{}", prev.text, last.text);
                    prev.char_end = last.char_end;
                }
                None => out.push(last),
            }
        }
        out
    }
}

/// The page a chunk starting at `start` belongs to: the page of its first non-blank char.
fn page_at(page_breaks: &[usize], start: usize, piece: &str) -> u32 {
    let lead = piece.chars().take_while(|c| c.is_whitespace()).count();
    let first = start + lead;
    1 + page_breaks.iter().filter(|b| **b < first).count() as u32
}

/// (char offset, level, title) of every ATX heading outside fenced code.
fn heading_positions(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    let mut in_fence = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        } else if !in_fence {
            let level = trimmed.chars().take_while(|c| *c == '#').count();
            if (1..=6).contains(&level) && trimmed[level..].starts_with(' ') {
                out.push((offset, level, trimmed[level..].trim().to_string()));
            }
        }
        offset += line.chars().count();
    }
    out
}

/// The heading path in force at `offset` (headings that start at or before it).
fn heading_path_at(headings: &[(usize, usize, String)], offset: usize) -> Vec<String> {
    let mut path: Vec<(usize, String)> = Vec::new();
    for (pos, level, title) in headings {
        if *pos > offset {
            break;
        }
        while path.last().is_some_and(|(l, _)| l >= level) {
            path.pop();
        }
        path.push((*level, title.clone()));
    }
    path.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::HashEmbedder;

    fn chunker(max: usize) -> Chunker {
        Chunker::new(
            ChunkerOptions {
                max_tokens: max,
                overlap_tokens: 0,
                min_tokens: 4,
            },
            Arc::new(HashEmbedder::new(64)),
        )
    }

    #[test]
    fn offsets_point_into_the_original_text() {
        let text = "# Title\n\nFirst paragraph about refunds and returns.\n\n## Shipping\n\nParcels ship within two days of the order being placed.";
        let chunks = chunker(12).chunk(&Body::Markdown(text.to_string()));
        assert!(chunks.len() >= 2, "{chunks:?}");
        let chars: Vec<char> = text.chars().collect();
        for c in &chunks {
            let slice: String = chars[c.char_start..c.char_end].iter().collect();
            // Merged chunks join pieces with a blank line; every word must come from the slice.
            for w in c.text.split_whitespace() {
                assert!(slice.contains(w), "{w} not in {slice:?}");
            }
        }
        let last = chunks.last().expect("chunks");
        assert_eq!(
            last.heading_path,
            vec!["Title".to_string(), "Shipping".to_string()]
        );
    }

    #[test]
    fn lone_heading_is_merged_into_following_text() {
        let text = "# A\n\nSome words here that make a real paragraph of text for the chunk.";
        let chunks = chunker(14).chunk(&Body::Markdown(text.to_string()));
        assert!(
            chunks
                .iter()
                .all(|c| c.text.split_whitespace().count() >= 4),
            "{chunks:?}"
        );
    }

    #[test]
    fn pages_are_numbered_from_one() {
        let body = Body::Pages(vec![
            "page one text is here".into(),
            "page two text is here".into(),
        ]);
        let chunks = chunker(6).chunk(&body);
        assert_eq!(chunks.first().and_then(|c| c.page), Some(1));
        assert_eq!(chunks.last().and_then(|c| c.page), Some(2));
    }

    /// Found by the `chunker` fuzz target: a form feed inside a page's own text was counted as
    /// a page break, so a one-page PDF reported page 2.
    #[test]
    fn a_form_feed_inside_a_page_is_not_a_page_break() {
        let one = Body::Pages(vec![
            "first part of the only page\u{c} second part after a form feed".into(),
        ]);
        let chunks = chunker(6).chunk(&one);
        assert!(chunks.len() > 1, "{chunks:?}");
        assert!(chunks.iter().all(|c| c.page == Some(1)), "{chunks:?}");

        let two = Body::Pages(vec![
            "page one holds\u{c}\u{c} two form feeds of its own".into(),
            "page two text is here and it goes on for a good many more words than the first".into(),
        ]);
        let chunks = chunker(6).chunk(&two);
        assert_eq!(chunks.first().and_then(|c| c.page), Some(1));
        assert_eq!(chunks.last().and_then(|c| c.page), Some(2), "{chunks:?}");
        assert!(
            chunks.iter().all(|c| matches!(c.page, Some(1 | 2))),
            "{chunks:?}"
        );
    }
}
