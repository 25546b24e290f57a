//! Context selection for /ask: which retrieved text the model sees, as numbered passages.
//!
//! Owns three decisions, all pure functions of the ranked hits (plus a neighbour lookup):
//! - relevance: only hits that cleared the relevance gate are candidates (decided by the caller);
//! - near-duplicates: a hit whose word 3-shingles overlap an already chosen hit's by at least
//!   `[retrieval] near_duplicate` (Jaccard) adds nothing and is skipped — mirrored pages, quoted
//!   policies and overlapping chunks otherwise fill the budget with one fact;
//! - neighbours: a hit cut mid-sentence is completed with the adjacent chunk of the same
//!   document and section (`[retrieval] neighbours`), and chunks of one document that end up
//!   adjacent are merged into one passage with their overlap removed, so the model reads a
//!   passage, not fragments.
//!
//! Everything stays within `[retrieval] max_context_words`. A passage keeps its chunks, so a
//! citation of passage `[n]` still names one chunk with its offsets (the one holding the quote).

use std::collections::HashSet;

use cairn_index::{ChunkRecord, DocumentRecord, Hit};

/// The knobs of context selection (from `[retrieval]`).
#[derive(Debug, Clone, Copy)]
pub struct ContextOptions {
    pub max_words: usize,
    /// Jaccard similarity of word 3-shingles at or above which a hit is a near-duplicate.
    pub near_duplicate: f32,
    pub neighbours: bool,
}

/// One numbered passage given to the model: adjacent chunks of one document, in order.
#[derive(Debug, Clone)]
pub struct Passage {
    pub document: DocumentRecord,
    /// Chunks in document order; at least one was retrieved.
    pub chunks: Vec<ChunkRecord>,
    /// The retrieved chunk ids among `chunks`, best-ranked first.
    pub retrieved: Vec<String>,
    /// The chunks' text joined with their overlaps removed.
    pub text: String,
}

/// What selection did, for traces and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectionStats {
    pub near_duplicates: usize,
    pub neighbours_added: usize,
}

fn shingles(text: &str) -> HashSet<[String; 3]> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.len() < 3 {
        let mut w = words;
        w.resize(3, String::new());
        return HashSet::from([[w[0].clone(), w[1].clone(), w[2].clone()]]);
    }
    words
        .windows(3)
        .map(|w| [w[0].clone(), w[1].clone(), w[2].clone()])
        .collect()
}

fn jaccard(a: &HashSet<[String; 3]>, b: &HashSet<[String; 3]>) -> f32 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f32 / union as f32
    }
}

/// Whether a chunk's text stops at the end of a sentence (or a block such as a list item).
fn ends_cleanly(text: &str) -> bool {
    text.trim_end().chars().last().is_none_or(|c| {
        matches!(
            c,
            '.' | '!' | '?' | ':' | ';' | ')' | '"' | '\'' | '|' | '`'
        )
    })
}

/// Whether a chunk's text starts a sentence (capital letter, digit, heading or list marker).
fn starts_cleanly(text: &str) -> bool {
    text.trim_start()
        .chars()
        .next()
        .is_none_or(|c| !c.is_lowercase())
}

/// Joins chunk texts in document order, dropping the part of each that overlaps the previous
/// one (chunks carry char offsets into the document's text).
fn join_chunks(chunks: &[ChunkRecord]) -> String {
    let mut out = String::new();
    let mut end = 0usize;
    for c in chunks {
        if out.is_empty() {
            out.push_str(&c.text);
        } else {
            let skip = end.saturating_sub(c.char_start);
            let rest: String = c.text.chars().skip(skip).collect();
            if !rest.is_empty() {
                if !out.ends_with(char::is_whitespace) && !rest.starts_with(char::is_whitespace) {
                    out.push(' ');
                }
                out.push_str(&rest);
            }
        }
        end = end.max(c.char_end);
    }
    out
}

/// Whether chunk `ordinal` is in `p` or right next to one of its chunks.
fn touches(p: &Passage, ordinal: u32) -> bool {
    p.chunks.iter().any(|c| c.ordinal.abs_diff(ordinal) <= 1)
}

/// Picks passages from `hits` (best first, already relevance-gated). `neighbours_of` returns a
/// document's chunks in order when its content hash still matches (else nothing); it is called
/// only for hits that need completing.
pub fn select(
    hits: &[&Hit],
    options: &ContextOptions,
    neighbours_of: &mut dyn FnMut(&DocumentRecord) -> Vec<ChunkRecord>,
) -> (Vec<Passage>, SelectionStats) {
    let mut stats = SelectionStats::default();
    let mut budget = options.max_words;
    let chosen = choose(hits, options, &mut budget, &mut stats);
    let mut passages = group_by_document(&chosen);
    if options.neighbours {
        for p in &mut passages {
            stats.neighbours_added += complete_with_neighbours(p, neighbours_of, &mut budget);
        }
        merge_adjacent(&mut passages);
    }
    for p in &mut passages {
        p.text = join_chunks(&p.chunks);
    }
    (passages, stats)
}

/// The hits that fit the word budget, leaving out near-duplicates of a hit already chosen.
fn choose<'h>(
    hits: &[&'h Hit],
    options: &ContextOptions,
    budget: &mut usize,
    stats: &mut SelectionStats,
) -> Vec<&'h Hit> {
    let mut chosen: Vec<(HashSet<[String; 3]>, &'h Hit)> = Vec::new();
    for &h in hits {
        let sh = shingles(&h.chunk.text);
        if chosen
            .iter()
            .any(|(s, _)| jaccard(s, &sh) >= options.near_duplicate)
        {
            stats.near_duplicates += 1;
            continue;
        }
        let n = h.chunk.text.split_whitespace().count();
        if n > *budget {
            continue;
        }
        *budget -= n;
        chosen.push((sh, h));
    }
    chosen.into_iter().map(|(_, h)| h).collect()
}

/// The chosen chunks as passages: a chunk joins a passage of its document it touches, else
/// starts one (so passages keep the rank of their best chunk).
fn group_by_document(chosen: &[&Hit]) -> Vec<Passage> {
    let mut passages: Vec<Passage> = Vec::new();
    for h in chosen {
        let chunk = h.chunk.clone();
        let adjacent = passages
            .iter_mut()
            .find(|p| p.document.id == h.document.id && touches(p, chunk.ordinal));
        match adjacent {
            Some(p) => {
                p.retrieved.push(h.chunk_id.clone());
                if !p.chunks.iter().any(|c| c.ordinal == chunk.ordinal) {
                    p.chunks.push(chunk);
                    p.chunks.sort_by_key(|c| c.ordinal);
                }
            }
            None => passages.push(Passage {
                document: h.document.clone(),
                chunks: vec![chunk],
                retrieved: vec![h.chunk_id.clone()],
                text: String::new(),
            }),
        }
    }
    passages
}

/// Completes a passage cut mid-sentence with the chunk before and/or after it in the same
/// section, within the word budget; returns how many chunks were added.
fn complete_with_neighbours(
    p: &mut Passage,
    neighbours_of: &mut dyn FnMut(&DocumentRecord) -> Vec<ChunkRecord>,
    budget: &mut usize,
) -> usize {
    let first = &p.chunks[0];
    let last = &p.chunks[p.chunks.len() - 1];
    let want_prev = !starts_cleanly(&first.text) && first.ordinal > 0;
    let want_next = !ends_cleanly(&last.text);
    let (first_ordinal, last_ordinal) = (first.ordinal, last.ordinal);
    if !want_prev && !want_next {
        return 0;
    }
    let all = neighbours_of(&p.document);
    let section = p.chunks[0].heading_path.clone();
    let mut added = 0;
    let mut add = |ordinal: u32, p: &mut Passage, budget: &mut usize| {
        let Some(c) = all.iter().find(|c| c.ordinal == ordinal) else {
            return;
        };
        if c.heading_path != section || p.chunks.iter().any(|x| x.ordinal == ordinal) {
            return;
        }
        let n = c.text.split_whitespace().count();
        if n > *budget {
            return;
        }
        *budget -= n;
        p.chunks.push(c.clone());
        p.chunks.sort_by_key(|c| c.ordinal);
        added += 1;
    };
    if want_prev {
        add(first_ordinal - 1, p, budget);
    }
    if want_next {
        add(last_ordinal + 1, p, budget);
    }
    added
}

/// Neighbours may have made two passages of one document adjacent: merges them (the earlier
/// one keeps its place).
fn merge_adjacent(passages: &mut Vec<Passage>) {
    let mut i = 0;
    while i < passages.len() {
        let j = (i + 1..passages.len()).find(|&j| {
            passages[j].document.id == passages[i].document.id
                && passages[j]
                    .chunks
                    .iter()
                    .any(|c| touches(&passages[i], c.ordinal))
        });
        match j {
            Some(j) => {
                let other = passages.remove(j);
                let p = &mut passages[i];
                p.retrieved.extend(other.retrieved);
                for c in other.chunks {
                    if !p.chunks.iter().any(|x| x.ordinal == c.ordinal) {
                        p.chunks.push(c);
                    }
                }
                p.chunks.sort_by_key(|c| c.ordinal);
            }
            None => i += 1,
        }
    }
}

impl Passage {
    /// The passage's chunks, the retrieved ones first (best-ranked first), then the
    /// neighbours in document order: where a citation looks for its quote.
    pub fn chunks_retrieved_first(&self) -> Vec<&ChunkRecord> {
        let retrieved = self
            .retrieved
            .iter()
            .filter_map(|id| self.chunks.iter().find(|c| &c.chunk_id() == id));
        let rest = self
            .chunks
            .iter()
            .filter(|c| !self.retrieved.contains(&c.chunk_id()));
        retrieved.chain(rest).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_index::ScoreBreakdown;

    fn doc(id: &str) -> DocumentRecord {
        DocumentRecord {
            id: id.into(),
            source: "s".into(),
            external_id: id.into(),
            title: id.into(),
            url: None,
            updated_at: None,
            metadata: Default::default(),
            access_groups: Vec::new(),
            content_hash: "h".into(),
        }
    }

    fn chunk(doc_id: &str, ordinal: u32, start: usize, text: &str) -> ChunkRecord {
        ChunkRecord {
            doc_id: doc_id.into(),
            ordinal,
            text: text.into(),
            heading_path: Vec::new(),
            page: None,
            char_start: start,
            char_end: start + text.chars().count(),
        }
    }

    fn hit(c: &ChunkRecord) -> Hit {
        Hit {
            chunk_id: c.chunk_id(),
            score: 1.0,
            breakdown: ScoreBreakdown::default(),
            chunk: c.clone(),
            document: doc(&c.doc_id),
            snippet: None,
        }
    }

    fn opts() -> ContextOptions {
        ContextOptions {
            max_words: 1000,
            near_duplicate: 0.8,
            neighbours: true,
        }
    }

    #[test]
    fn near_duplicates_are_skipped_and_distinct_hits_kept() {
        let a = chunk(
            "a",
            0,
            0,
            "Refunds are paid within five business days of the request.",
        );
        let b = chunk(
            "b",
            0,
            0,
            "Refunds are paid within five business days of the request!",
        );
        let c = chunk("c", 0, 0, "Shipping is free on orders over fifty euros.");
        let hits = [hit(&a), hit(&b), hit(&c)];
        let refs: Vec<&Hit> = hits.iter().collect();
        let (ps, stats) = select(&refs, &opts(), &mut |_| Vec::new());
        let docs: Vec<&str> = ps.iter().map(|p| p.document.id.as_str()).collect();
        assert_eq!(docs, ["a", "c"]);
        assert_eq!(stats.near_duplicates, 1);
        let exact_only = ContextOptions {
            near_duplicate: 1.01,
            ..opts()
        };
        let (ps, _) = select(&refs, &exact_only, &mut |_| Vec::new());
        assert_eq!(ps.len(), 3);
    }

    #[test]
    fn a_chunk_cut_mid_sentence_is_completed_by_its_neighbour_without_the_overlap() {
        let c0 = chunk("a", 0, 0, "Refunds are paid within five");
        // Overlaps the previous chunk by the word "five" (char offsets 24..28).
        let c1 = chunk("a", 1, 24, "five business days. Contact support.");
        let c2 = chunk("a", 2, 60, "Unrelated closing words.");
        let all = vec![c0.clone(), c1.clone(), c2.clone()];
        let hits = [hit(&c0)];
        let refs: Vec<&Hit> = hits.iter().collect();
        let mut calls = 0;
        let (ps, stats) = select(&refs, &opts(), &mut |_| {
            calls += 1;
            all.clone()
        });
        assert_eq!(calls, 1);
        assert_eq!(ps.len(), 1);
        assert_eq!(
            ps[0].text,
            "Refunds are paid within five business days. Contact support."
        );
        assert_eq!(stats.neighbours_added, 1);
        assert_eq!(ps[0].retrieved, ["a#0"]);
        // A citation looks for its quote in the retrieved chunk, then in the neighbour.
        let order: Vec<u32> = ps[0]
            .chunks_retrieved_first()
            .iter()
            .map(|c| c.ordinal)
            .collect();
        assert_eq!(order, [0, 1]);

        let off = ContextOptions {
            neighbours: false,
            ..opts()
        };
        let (ps, _) = select(&refs, &off, &mut |_| all.clone());
        assert_eq!(ps[0].text, "Refunds are paid within five");
    }

    #[test]
    fn adjacent_hits_of_one_document_form_one_passage_and_others_stay_apart() {
        let c0 = chunk("a", 0, 0, "First sentence.");
        let c1 = chunk("a", 1, 16, "Second sentence.");
        let c5 = chunk("a", 5, 90, "Far away sentence.");
        let d0 = chunk("d", 0, 0, "Other document.");
        let hits = [hit(&c1), hit(&d0), hit(&c0), hit(&c5)];
        let refs: Vec<&Hit> = hits.iter().collect();
        let (ps, _) = select(&refs, &opts(), &mut |_| Vec::new());
        let texts: Vec<&str> = ps.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "First sentence. Second sentence.",
                "Other document.",
                "Far away sentence."
            ]
        );
        assert_eq!(ps[0].retrieved, ["a#1", "a#0"]);
    }

    #[test]
    fn the_word_budget_bounds_hits_and_neighbours() {
        let c0 = chunk("a", 0, 0, "one two three four");
        let c1 = chunk("a", 1, 19, "five six seven eight.");
        let hits = [hit(&c0)];
        let refs: Vec<&Hit> = hits.iter().collect();
        let tight = ContextOptions {
            max_words: 5,
            ..opts()
        };
        let all = vec![c0.clone(), c1.clone()];
        let (ps, stats) = select(&refs, &tight, &mut |_| all.clone());
        assert_eq!(ps[0].text, "one two three four");
        assert_eq!(stats.neighbours_added, 0);
    }
}
