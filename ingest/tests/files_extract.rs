//! Files connector: HTML and PDF extraction, including hostile PDFs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_ingest::connectors::files::{FilesConnector, FilesOptions};
use cairn_ingest::extract::{PdfOptions, PdfText, extract_pdf};
use cairn_ingest::{Body, Connector, Item, SyncState};

fn pdf_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pdf")
        .join(name)
}

fn no_fallback() -> PdfOptions {
    PdfOptions {
        timeout: Duration::from_secs(20),
        pdftotext_fallback: false,
    }
}

fn list(root: &Path) -> Vec<Item> {
    let mut c = FilesConnector::new(
        "docs",
        FilesOptions {
            root: root.to_path_buf(),
            include: vec![],
            exclude: vec![],
            max_file_bytes: 1 << 20,
            url_base: Some("https://docs.example.com".into()),
            access_groups: vec![],
            pdf: no_fallback(),
        },
    )
    .expect("connector");
    let mut items = Vec::new();
    c.list(&SyncState::default(), true, &mut |i| {
        items.push(i);
        true
    })
    .expect("list");
    items
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

#[test]
fn crazyones_text_comes_out_page_by_page() {
    let bytes = std::fs::read(pdf_fixture("crazyones.pdf")).expect("read");
    let PdfText::Pages(pages) = extract_pdf(bytes, None, &no_fallback()) else {
        panic!("crazyones.pdf should extract")
    };
    assert_eq!(pages.len(), 1);
    let expected = std::fs::read_to_string(pdf_fixture("crazyones.txt")).expect("txt");
    let got = words(&pages[0]);
    let want = words(&expected);
    // The reference text lost its apostrophes and ligatures differ; compare word coverage.
    let found = want.iter().filter(|w| got.contains(w)).count();
    assert!(
        found * 100 >= want.len() * 90,
        "only {found}/{} reference words in: {}",
        want.len(),
        pages[0]
    );
    assert!(pages[0].contains("The Crazy Ones"), "{}", pages[0]);
}

#[test]
fn encrypted_pdf_is_skipped_with_a_reason() {
    let bytes = std::fs::read(pdf_fixture("encrypted-file.pdf")).expect("read");
    match extract_pdf(bytes, None, &no_fallback()) {
        PdfText::Skipped(reason) => assert!(reason.contains("encrypted"), "{reason}"),
        other => panic!("expected skipped, got {other:?}"),
    }
}

#[test]
fn truncated_and_garbage_pdfs_fail_never_panic() {
    let bytes = std::fs::read(pdf_fixture("crazyones.pdf")).expect("read");
    for cut in [20, bytes.len() / 3, bytes.len() / 2, bytes.len() - 40] {
        match extract_pdf(bytes[..cut].to_vec(), None, &no_fallback()) {
            PdfText::Failed(_) | PdfText::Skipped(_) => {}
            PdfText::Pages(p) => {
                // lopdf can rebuild a damaged xref; then real text must have come out.
                assert!(p.iter().any(|t| t.contains("crazy")), "cut {cut}: {p:?}");
            }
        }
    }
    let mut garbage = b"%PDF-1.7\n".to_vec();
    garbage.extend((0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8));
    assert!(matches!(
        extract_pdf(garbage, None, &no_fallback()),
        PdfText::Failed(_)
    ));
}

#[test]
fn extraction_past_the_time_limit_is_abandoned_as_failed() {
    let bytes = std::fs::read(pdf_fixture("crazyones.pdf")).expect("read");
    let opts = PdfOptions {
        timeout: Duration::from_nanos(1),
        pdftotext_fallback: false,
    };
    match extract_pdf(bytes, None, &opts) {
        PdfText::Failed(e) => assert!(e.contains("no result within"), "{e}"),
        // A machine fast enough to parse it within the limit is not an error either.
        PdfText::Pages(_) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn files_connector_reads_html_and_pdf_and_reports_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(pdf_fixture("crazyones.pdf"), dir.path().join("crazy.pdf")).expect("copy");
    std::fs::copy(
        pdf_fixture("encrypted-file.pdf"),
        dir.path().join("locked.pdf"),
    )
    .expect("copy");
    std::fs::write(dir.path().join("broken.pdf"), b"%PDF-1.4\n%%EOF garbage").expect("write");
    std::fs::write(
        dir.path().join("page.html"),
        "<html><head><title>Billing FAQ</title><script>var x=1;</script></head><body>\
         <nav>Home | Pricing</nav><h1>Billing</h1><p>Invoices are sent monthly.</p>\
         <h2>Refunds</h2><p>Within 30 days.</p></body></html>",
    )
    .expect("write");
    let items = list(dir.path());
    let by_id = |id: &str| {
        items
            .iter()
            .find(|i| i.external_id() == id)
            .unwrap_or_else(|| panic!("{id} missing in {items:?}"))
    };
    match by_id("crazy.pdf") {
        Item::Document(d) => {
            assert!(matches!(&d.body, Body::Pages(p) if p.len() == 1));
            assert_eq!(d.metadata["pages"], "1");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(by_id("locked.pdf"), Item::Skipped { reason, .. } if reason.contains("encrypted"))
    );
    assert!(matches!(by_id("broken.pdf"), Item::Failed { .. }));
    match by_id("page.html") {
        Item::Document(d) => {
            assert_eq!(d.title, "Billing FAQ");
            let Body::Markdown(md) = &d.body else {
                panic!("markdown")
            };
            assert!(md.starts_with("# Billing"), "{md}");
            assert!(md.contains("## Refunds"), "{md}");
            assert!(!md.contains("var x") && !md.contains("Pricing"), "{md}");
        }
        other => panic!("{other:?}"),
    }
}
