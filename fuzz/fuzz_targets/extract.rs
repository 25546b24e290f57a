//! The extraction wrapper: arbitrary bytes as HTML (to Markdown, title) and as a PDF (with and
//! without a `%PDF-` header). Must hold: no panic escapes the wrapper (a parser panic is
//! reported as `Failed`); `Pages` always carries text.
#![no_main]

use std::sync::Once;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

use cairn_ingest::extract::{PdfOptions, PdfText, extract_pdf, html_title, html_to_markdown};

static QUIET_PANICS: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // libFuzzer's panic hook aborts on any panic, even one the wrapper catches on its
    // `pdf-extract` worker thread; the wrapper's contract is that such panics become `Failed`,
    // so the hook is skipped there and still aborts (a finding) on every other thread.
    QUIET_PANICS.call_once(|| {
        let libfuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some("pdf-extract") {
                libfuzzer_hook(info);
            }
        }));
    });
    let html = String::from_utf8_lossy(data);
    let _ = html_to_markdown(&html);
    let _ = html_title(&html);
    let options = PdfOptions {
        timeout: Duration::from_secs(5),
        pdftotext_fallback: false,
    };
    let mut pdf = b"%PDF-1.4\n".to_vec();
    pdf.extend_from_slice(data);
    for bytes in [data.to_vec(), pdf] {
        if let PdfText::Pages(pages) = extract_pdf(bytes, None, &options) {
            assert!(
                pages.iter().any(|p| !p.trim().is_empty()),
                "Pages without text"
            );
        }
    }
});
