//! The normalised document a connector hands to the pipeline.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Extracted text of a document, by shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Markdown (also what HTML is converted to): chunked Markdown-aware.
    Markdown(String),
    Text(String),
    /// One string per page (PDF), pages numbered from 1.
    Pages(Vec<String>),
}

/// What [`Body::full_text`] puts between pages: a form feed and a blank line. Page text may
/// hold form feeds of its own, so page numbers come from the pages' lengths, not from this.
pub const PAGE_SEPARATOR: &str = "\u{c}\n\n";

impl Body {
    /// The whole text as the chunker sees it; pages are joined by a form feed and a blank
    /// line, so the splitter treats a page break as a paragraph break.
    /// The text as one string; pages are joined with [`PAGE_SEPARATOR`].
    pub fn full_text(&self) -> String {
        match self {
            Body::Markdown(s) | Body::Text(s) => s.clone(),
            Body::Pages(p) => p.join(PAGE_SEPARATOR),
        }
    }

    pub fn is_blank(&self) -> bool {
        match self {
            Body::Markdown(s) | Body::Text(s) => s.trim().is_empty(),
            Body::Pages(p) => p.iter().all(|s| s.trim().is_empty()),
        }
    }
}

/// A document as a connector produced it, already normalised (UTF-8 text, UTC times, stable id).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDocument {
    /// Stable within its source (a relative path, a CRM record id, an article id).
    pub external_id: String,
    pub title: String,
    pub url: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    pub metadata: BTreeMap<String, String>,
    pub access_groups: Vec<String>,
    pub body: Body,
}

impl SourceDocument {
    /// Hash of everything that affects what is indexed: a changed hash means re-chunk and re-embed.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.title.as_bytes());
        h.update([0]);
        h.update(self.url.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
        h.update(
            self.updated_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
                .as_bytes(),
        );
        for (k, v) in &self.metadata {
            h.update([1]);
            h.update(k.as_bytes());
            h.update([2]);
            h.update(v.as_bytes());
        }
        for g in &self.access_groups {
            h.update([3]);
            h.update(g.as_bytes());
        }
        h.update([4]);
        h.update(self.body.full_text().as_bytes());
        hex::encode(h.finalize())
    }
}
