//! The chunker: arbitrary text as Markdown, plain text and pages, with small token sizes.
//! Must hold: no panic; every chunk's char span lies inside the document text and starts
//! where the previous one started or later; a page number names an existing page.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

use cairn_ingest::{Body, Chunker, ChunkerOptions, HashEmbedder};

fuzz_target!(|data: &[u8]| {
    let Some((&[kind, max, overlap, min], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let body = match kind % 3 {
        0 => Body::Markdown(text),
        1 => Body::Text(text),
        _ => Body::Pages(text.split('\u{1}').map(str::to_string).collect()),
    };
    let chunker = Chunker::new(
        ChunkerOptions {
            max_tokens: usize::from(max % 64),
            overlap_tokens: usize::from(overlap % 64),
            min_tokens: usize::from(min % 16),
        },
        Arc::new(HashEmbedder::new(16)),
    );
    let full_chars = body.full_text().chars().count();
    let pages = match &body {
        Body::Pages(p) => p.len(),
        _ => 0,
    };
    let mut last_start = 0;
    for c in chunker.chunk(&body) {
        assert!(c.char_start <= c.char_end, "{c:?}");
        assert!(c.char_end <= full_chars, "{c:?} past {full_chars}");
        assert!(c.char_start >= last_start, "{c:?} before {last_start}");
        last_start = c.char_start;
        if let Some(p) = c.page {
            assert!(p >= 1 && p as usize <= pages, "page {p} of {pages}");
        }
    }
});
