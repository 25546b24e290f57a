//! Text extraction from HTML and PDF, shared by the connectors.
//!
//! Owns turning markup and page-description bytes into the text the chunker sees:
//!
//! * **HTML → Markdown** with [`htmd`]. We want headings to survive as Markdown `#` headings
//!   (the chunker is Markdown-aware and records heading paths for citations), lists and tables
//!   to stay readable, and non-content elements (`script`, `style`, `nav`, `head`, forms, inline
//!   SVG …) dropped. `htmd` parses with html5ever (the browser-grade parser, so broken markup
//!   from a KB API or a saved page still yields a sane tree), emits ATX headings, and lets us
//!   skip tags by name; a plain HTML-to-text crate would flatten headings, and hand-walking a
//!   `scraper` DOM would duplicate what `htmd` already does.
//! * **PDF → pages** with [`pdf_extract`], isolated: the parser runs on its own thread inside
//!   `catch_unwind` and is abandoned after a time limit, so a hostile file costs at most one
//!   parked thread, never a panic or a hung ingest. Encrypted PDFs are detected up front
//!   (`/Encrypt` in the trailer) and skipped with a reason. When `pdftotext` (poppler) is on the
//!   `PATH` and enabled it is tried when `pdf-extract` fails or finds no text; it runs as a child
//!   process that is killed at the same time limit. Nothing here requires it.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Tags whose content is never document text.
const SKIPPED_HTML_TAGS: &[&str] = &[
    "script", "style", "nav", "head", "noscript", "template", "svg", "iframe", "form", "button",
    "img", "canvas", "object", "embed",
];

/// HTML (a page or a fragment) as Markdown: headings kept as `#` headings, non-content dropped,
/// runs of blank lines collapsed. Never panics; a converter failure yields the tag-stripped text.
pub fn html_to_markdown(html: &str) -> String {
    let converted = catch_unwind(|| {
        htmd::HtmlToMarkdown::builder()
            .skip_tags(SKIPPED_HTML_TAGS.to_vec())
            .options(htmd::options::Options {
                heading_style: htmd::options::HeadingStyle::Atx,
                bullet_list_marker: htmd::options::BulletListMarker::Dash,
                ul_bullet_spacing: 1,
                ol_number_spacing: 1,
                ..Default::default()
            })
            .build()
            .convert(html)
    });
    match converted {
        Ok(Ok(md)) => tidy(&md),
        _ => tidy(&strip_tags(html)),
    }
}

/// The `<title>` of an HTML page, if it has a non-empty one.
pub fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let raw = html.get(start..end)?;
    let text = decode_entities(
        raw.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_str(),
    );
    (!text.is_empty()).then_some(text)
}

/// Minimal entity decoding for titles (the body goes through html5ever).
fn decode_entities(s: &str) -> String {
    s.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Last-resort text of markup: everything outside `<...>`.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// Trailing spaces removed, at most one blank line in a row, no leading/trailing blank lines.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0usize;
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(line);
    }
    out
}

/// Settings of PDF extraction.
#[derive(Debug, Clone)]
pub struct PdfOptions {
    /// Wall-clock limit for one file; past it the file is reported failed.
    pub timeout: Duration,
    /// Try the `pdftotext` binary when `pdf-extract` fails or finds no text (if it is installed).
    pub pdftotext_fallback: bool,
}

impl Default for PdfOptions {
    fn default() -> Self {
        PdfOptions {
            timeout: Duration::from_secs(30),
            pdftotext_fallback: true,
        }
    }
}

/// How extracting one PDF ended.
#[derive(Debug, Clone, PartialEq)]
pub enum PdfText {
    /// Text per page, pages numbered from 1; at least one page has text.
    Pages(Vec<String>),
    /// Deliberately not indexed: encrypted, or parsed but without any text (scanned images).
    Skipped(String),
    /// Could not be read: not a PDF, corrupt, the parser panicked or ran out of time.
    Failed(String),
}

/// Extracts a PDF's text page by page, never panicking and never taking longer than
/// `options.timeout` (plus the fallback's own limit). `path`, when known, lets the `pdftotext`
/// fallback read the file directly.
pub fn extract_pdf(bytes: Vec<u8>, path: Option<&Path>, options: &PdfOptions) -> PdfText {
    let head = &bytes[..bytes.len().min(1024)];
    if find(head, b"%PDF-").is_none() {
        return PdfText::Failed("not a PDF: no `%PDF-` header".into());
    }
    if is_encrypted(&bytes) {
        return PdfText::Skipped("encrypted PDF (password protected); not indexed".into());
    }
    let primary = run_pdf_extract(bytes, options.timeout);
    let fallback = |why: String| -> PdfText {
        if !options.pdftotext_fallback {
            return PdfText::Failed(why);
        }
        match path.map(|p| run_pdftotext(p, options.timeout)) {
            Some(Ok(pages)) if has_text(&pages) => PdfText::Pages(pages),
            Some(Ok(_)) | None => PdfText::Failed(why),
            Some(Err(e)) => PdfText::Failed(format!("{why}; pdftotext: {e}")),
        }
    };
    match primary {
        Ok(pages) if has_text(&pages) => PdfText::Pages(pages),
        Ok(pages) => match fallback("no text".into()) {
            PdfText::Pages(p) => PdfText::Pages(p),
            _ => PdfText::Skipped(format!(
                "PDF has no extractable text on its {} page(s) (image-only or scanned?)",
                pages.len()
            )),
        },
        Err(PdfError::Encrypted(e)) => PdfText::Skipped(format!("encrypted PDF: {e}")),
        Err(PdfError::Other(e)) => fallback(e),
    }
}

enum PdfError {
    Encrypted(String),
    Other(String),
}

fn has_text(pages: &[String]) -> bool {
    pages.iter().any(|p| !p.trim().is_empty())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An `/Encrypt` entry in a trailer (or cross-reference stream dictionary) marks an encrypted
/// file. The key appears in the clear even when objects are compressed, as trailers and xref
/// stream dictionaries are never themselves inside object streams.
fn is_encrypted(bytes: &[u8]) -> bool {
    find(bytes, b"/Encrypt").is_some()
}

/// Runs `pdf-extract` on a worker thread; panics become errors, and the caller stops waiting
/// after `timeout` (the thread is then left to finish on its own: Rust threads cannot be killed).
fn run_pdf_extract(bytes: Vec<u8>, timeout: Duration) -> Result<Vec<String>, PdfError> {
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("pdf-extract".into())
        .spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(|| {
                pdf_extract::extract_text_from_mem_by_pages(&bytes)
            }));
            // The receiver may have given up already; nothing to do then.
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(PdfError::Other(format!(
            "cannot start extraction thread: {e}"
        )));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(Ok(pages))) => Ok(pages.iter().map(|p| tidy(p)).collect()),
        Ok(Ok(Err(e))) => {
            let msg = e.to_string();
            if msg.to_ascii_lowercase().contains("encrypt")
                || msg.to_ascii_lowercase().contains("password")
            {
                Err(PdfError::Encrypted(msg))
            } else {
                Err(PdfError::Other(format!("pdf-extract: {msg}")))
            }
        }
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PdfError::Other(format!("pdf-extract panicked: {what}")))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(PdfError::Other(format!(
            "pdf-extract gave no result within {:.1}s; file abandoned",
            timeout.as_secs_f64()
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(PdfError::Other(
            "pdf-extract thread ended without a result".into(),
        )),
    }
}

/// `pdftotext -enc UTF-8 FILE -`: pages come separated by form feeds. Killed after `timeout`.
fn run_pdftotext(path: &Path, timeout: Duration) -> Result<Vec<String>, String> {
    let mut child = Command::new("pdftotext")
        .arg("-enc")
        .arg("UTF-8")
        .arg(path)
        .arg("-")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("not run ({e})"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    // Read on a thread so a full pipe cannot block the child while we wait for it.
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {:.1}s", timeout.as_secs_f64()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let out = reader.join().map_err(|_| "reader thread panicked")?;
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    let text = String::from_utf8_lossy(&out);
    let mut pages: Vec<String> = text.split('\u{c}').map(tidy).collect();
    // pdftotext ends the last page with a form feed too.
    if pages.len() > 1 && pages.last().is_some_and(|p| p.is_empty()) {
        pages.pop();
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_keeps_headings_and_drops_scripts_styles_nav() {
        let html = r#"<html><head><title>Doc &amp; co</title><style>p{color:red}</style></head>
            <body><nav><a href="/">Home</a> | <a href="/x">Menu</a></nav>
            <h1>Reset</h1><p>Go to <strong>Settings</strong>.</p>
            <script>alert("x")</script><h2>Details</h2><ul><li>one</li><li>two</li></ul>
            </body></html>"#;
        let md = html_to_markdown(html);
        assert!(md.contains("# Reset"), "{md}");
        assert!(md.contains("## Details"), "{md}");
        assert!(md.contains("**Settings**"), "{md}");
        assert!(md.contains("- one"), "{md}");
        for gone in ["alert", "color:red", "Menu", "Doc & co"] {
            assert!(!md.contains(gone), "{gone} in {md}");
        }
        assert_eq!(html_title(html).as_deref(), Some("Doc & co"));
    }

    #[test]
    fn broken_html_still_yields_text() {
        let md = html_to_markdown("<p>unclosed <b>bold <div>and <h3>head");
        assert!(md.contains("unclosed"), "{md}");
        assert!(md.contains("### head"), "{md}");
    }

    #[test]
    fn non_pdf_and_garbage_fail_without_panicking() {
        let opts = PdfOptions {
            timeout: Duration::from_secs(10),
            pdftotext_fallback: false,
        };
        assert!(matches!(
            extract_pdf(b"hello".to_vec(), None, &opts),
            PdfText::Failed(_)
        ));
        let mut garbage = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R".to_vec();
        garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
        assert!(matches!(
            extract_pdf(garbage, None, &opts),
            PdfText::Failed(_)
        ));
    }
}
