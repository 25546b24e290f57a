//! The files connector: a directory tree filtered by include/exclude globs.
//!
//! Reads Markdown, plain text, HTML (converted to Markdown, see [`crate::extract`]) and PDF
//! (text per page, isolated extraction; encrypted or image-only files are skipped with a
//! reason, unreadable ones fail). Paths never escape the configured root: every entry is
//! canonicalised and checked, so a symlink pointing outside is skipped with that reason, a link
//! to a directory is skipped (the walk follows no links), a symlink loop fails with the OS
//! error, and include/exclude patterns that are absolute or contain `..` are refused.
//! The external id is the path relative to the root, with `/` separators.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{Connector, Item, SyncState, SyncSummary};
use crate::IngestError;
use crate::extract::{PdfOptions, PdfText, extract_pdf, html_title, html_to_markdown};
use crate::source::{Body, SourceDocument};

/// Settings of a files source.
#[derive(Debug, Clone)]
pub struct FilesOptions {
    pub root: PathBuf,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Files larger than this are skipped with a reason.
    pub max_file_bytes: u64,
    /// Base for document URLs (`<base>/<relative path>`); `file://` URLs when unset.
    pub url_base: Option<String>,
    pub access_groups: Vec<String>,
    /// PDF extraction limits (time limit, `pdftotext` fallback).
    pub pdf: PdfOptions,
}

pub struct FilesConnector {
    name: String,
    options: FilesOptions,
    include: GlobSet,
    exclude: GlobSet,
}

/// Why an include/exclude pattern could never match a path under the root (an absolute
/// pattern, or one with a `..` component), or `None` for a usable pattern. Patterns are matched
/// against paths relative to the root, so such a pattern cannot reach outside it; it is refused
/// rather than silently matching nothing.
pub fn pattern_leaves_root(pattern: &str) -> Option<String> {
    if pattern.starts_with('/') || pattern.starts_with('\\') {
        return Some(format!(
            "`{pattern}` is absolute; patterns are relative to the source's `path`"
        ));
    }
    if pattern.split(['/', '\\']).any(|c| c == "..") {
        return Some(format!(
            "`{pattern}` names a parent directory (`..`); patterns are relative to the source's `path` and never leave it"
        ));
    }
    None
}

fn glob_set(source: &str, patterns: &[String]) -> Result<GlobSet, IngestError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        if let Some(message) = pattern_leaves_root(p) {
            return Err(IngestError::Connector {
                source_name: source.to_string(),
                message,
            });
        }
        let g = Glob::new(p).map_err(|e| IngestError::Connector {
            source_name: source.to_string(),
            message: format!("bad glob `{p}`: {e}"),
        })?;
        b.add(g);
    }
    b.build().map_err(|e| IngestError::Connector {
        source_name: source.to_string(),
        message: e.to_string(),
    })
}

impl FilesConnector {
    pub fn new(name: &str, options: FilesOptions) -> Result<FilesConnector, IngestError> {
        let include = if options.include.is_empty() {
            glob_set(name, &["**/*".to_string()])?
        } else {
            glob_set(name, &options.include)?
        };
        let exclude = glob_set(name, &options.exclude)?;
        Ok(FilesConnector {
            name: name.to_string(),
            options,
            include,
            exclude,
        })
    }

    fn read(&self, root: &Path, rel: &str, path: &Path) -> Item {
        let skip = |reason: String| Item::Skipped {
            external_id: rel.to_string(),
            reason,
        };
        let fail = |error: String| Item::Failed {
            external_id: rel.to_string(),
            error,
        };
        let real = match path.canonicalize() {
            Ok(p) => p,
            Err(e) => return fail(format!("cannot resolve path: {e}")),
        };
        if !real.starts_with(root) {
            return skip(format!(
                "resolves to {} outside the source root",
                real.display()
            ));
        }
        let meta = match std::fs::metadata(&real) {
            Ok(m) => m,
            Err(e) => return fail(format!("cannot stat: {e}")),
        };
        if meta.is_dir() {
            // Only a symlink can lead here: the walk does not follow links.
            return skip("a link to a directory; directory links are not followed".to_string());
        }
        if meta.len() > self.options.max_file_bytes {
            return skip(format!(
                "{} bytes is over the {} byte limit",
                meta.len(),
                self.options.max_file_bytes
            ));
        }
        let ext = real
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let bytes = match std::fs::read(&real) {
            Ok(b) => b,
            Err(e) => return fail(format!("cannot read: {e}")),
        };
        let mut html_page_title = None;
        let body = match ext.as_str() {
            "md" | "markdown" => Body::Markdown(decode_text(&bytes)),
            "txt" | "text" | "" => Body::Text(decode_text(&bytes)),
            "html" | "htm" | "xhtml" => {
                let html = decode_text(&bytes);
                html_page_title = html_title(&html);
                Body::Markdown(html_to_markdown(&html))
            }
            "pdf" => match extract_pdf(bytes, Some(&real), &self.options.pdf) {
                PdfText::Pages(pages) => Body::Pages(pages),
                PdfText::Skipped(reason) => return skip(reason),
                PdfText::Failed(error) => return fail(error),
            },
            other => return skip(format!("unsupported file type `.{other}`")),
        };
        if body.is_blank() {
            return skip("no text content".to_string());
        }
        let updated_at = meta.modified().ok().map(DateTime::<Utc>::from);
        let title = html_page_title
            .or_else(|| title_of(&body))
            .unwrap_or_else(|| {
                real.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| rel.to_string())
            });
        let url = match &self.options.url_base {
            Some(base) => format!("{}/{}", base.trim_end_matches('/'), rel),
            None => format!("file://{}", real.display()),
        };
        let mut metadata = BTreeMap::new();
        metadata.insert("path".to_string(), rel.to_string());
        if let Body::Pages(p) = &body {
            metadata.insert("pages".to_string(), p.len().to_string());
        }
        metadata.insert("type".to_string(), ext);
        Item::Document(SourceDocument {
            external_id: rel.to_string(),
            title,
            url: Some(url),
            updated_at,
            metadata,
            access_groups: self.options.access_groups.clone(),
            body,
        })
    }
}

/// UTF-8 text, with a byte-order mark removed; other bytes decoded as Windows-1252/Latin-1 so
/// nothing is lost.
pub fn decode_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|b| char::from(*b)).collect(),
    }
}

/// The first Markdown `# ` heading, or the first non-empty line of plain text.
fn title_of(body: &Body) -> Option<String> {
    match body {
        Body::Markdown(s) => s
            .lines()
            .find_map(|l| l.strip_prefix("# ").map(|t| t.trim().to_string())),
        Body::Text(s) => s
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| l.chars().take(120).collect()),
        Body::Pages(_) => None,
    }
}

impl Connector for FilesConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn list(
        &mut self,
        _state: &SyncState,
        _full: bool,
        emit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<SyncSummary, IngestError> {
        let root = self
            .options
            .root
            .canonicalize()
            .map_err(|e| IngestError::Connector {
                source_name: self.name.clone(),
                message: format!(
                    "cannot open root {}: {e}; check the source's `path`",
                    self.options.root.display()
                ),
            })?;
        let walker = walkdir::WalkDir::new(&root)
            .follow_links(false)
            .sort_by_file_name();
        let mut complete = true;
        for entry in walker {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    // An unreadable directory means the listing is partial: no deletions.
                    complete = false;
                    let id = e
                        .path()
                        .and_then(|p| p.strip_prefix(&root).ok())
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if !emit(Item::Failed {
                        external_id: id,
                        error: e.to_string(),
                    }) {
                        return Ok(SyncSummary::default());
                    }
                    continue;
                }
            };
            if entry.file_type().is_dir() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&root) else {
                continue;
            };
            let rel_str = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if !self.include.is_match(rel) || self.exclude.is_match(rel) {
                continue;
            }
            let item = self.read(&root, &rel_str, entry.path());
            if !emit(item) {
                return Ok(SyncSummary::default());
            }
        }
        Ok(SyncSummary {
            complete,
            deleted: Vec::new(),
            watermark: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(root: &Path) -> FilesOptions {
        FilesOptions {
            root: root.to_path_buf(),
            include: vec!["**/*.md".into(), "**/*.txt".into()],
            exclude: vec!["drafts/**".into()],
            max_file_bytes: 1 << 20,
            url_base: None,
            access_groups: vec![],
            pdf: PdfOptions::default(),
        }
    }

    fn collect(c: &mut FilesConnector) -> Vec<Item> {
        let mut items = Vec::new();
        let summary = c
            .list(&SyncState::default(), true, &mut |i| {
                items.push(i);
                true
            })
            .expect("list");
        assert!(summary.complete);
        items
    }

    #[test]
    fn lists_included_files_with_titles_and_skips_excluded() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.md"), "# Alpha\n\nBody text.").expect("write");
        std::fs::create_dir(dir.path().join("drafts")).expect("mkdir");
        std::fs::write(dir.path().join("drafts/b.md"), "# Beta").expect("write");
        std::fs::write(dir.path().join("c.bin"), [0u8, 1, 2]).expect("write");
        let mut c = FilesConnector::new("docs", options(dir.path())).expect("connector");
        let items = collect(&mut c);
        assert_eq!(items.len(), 1);
        match &items[0] {
            Item::Document(d) => {
                assert_eq!(d.external_id, "a.md");
                assert_eq!(d.title, "Alpha");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlink_outside_root_is_skipped() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret.md"), "# Secret").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path().join("secret.md"), dir.path().join("link.md"))
            .expect("symlink");
        let mut c = FilesConnector::new("docs", options(dir.path())).expect("connector");
        let items = collect(&mut c);
        assert!(matches!(&items[..], [Item::Skipped { reason, .. }] if reason.contains("outside")));
    }

    #[test]
    fn patterns_that_leave_the_root_are_refused() {
        for bad in ["../**", "docs/../../etc/*", "/etc/**"] {
            assert!(pattern_leaves_root(bad).is_some(), "{bad}");
            let mut o = options(Path::new("."));
            o.include = vec![bad.to_string()];
            assert!(FilesConnector::new("docs", o).is_err(), "{bad}");
        }
        assert_eq!(pattern_leaves_root("**/*.md"), None);
        assert_eq!(pattern_leaves_root("a..b/*.md"), None);
    }

    #[test]
    fn latin1_bytes_are_decoded_not_lost() {
        assert_eq!(decode_text(b"caf\xe9"), "café");
        assert_eq!(decode_text(b"\xEF\xBB\xBFhi"), "hi");
    }
}
