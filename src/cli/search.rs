//! `cairn search`: hybrid search from the terminal.

use std::process::ExitCode;

use cairn_index::{Filter, SearchMode};

use crate::engine::Engine;
use crate::http::search::SearchResponse;
use crate::retrieval::HitView;

pub(super) fn run(engine: &Engine, query: &str, k: usize, json: bool) -> anyhow::Result<ExitCode> {
    let hits = engine.search(query, k, Filter::default(), SearchMode::Hybrid)?;
    let views: Vec<HitView> = hits.iter().map(HitView::from_hit).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&SearchResponse {
                hits: views,
                took_ms: 0.0
            })?
        );
    } else if views.is_empty() {
        println!("no results");
    } else {
        for (i, h) in views.iter().enumerate() {
            println!(
                "{:>2}. {:.4}  {}  ({})",
                i + 1,
                h.score,
                h.title,
                h.chunk_id
            );
            println!("    {}", strip_marks(&h.snippet));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn strip_marks(s: &str) -> String {
    s.replace("<mark>", "")
        .replace("</mark>", "")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
}
