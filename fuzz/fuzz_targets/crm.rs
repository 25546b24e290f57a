//! The CRM normaliser: arbitrary export bytes (any encoding, broken quoting, any JSON) as CSV
//! and as JSON lines, with Salesforce ids, time-zone columns and dates. Must hold: no panic;
//! every emitted document has a non-empty id; a listing with failed rows is never complete.
#![no_main]

use libfuzzer_sys::fuzz_target;

use cairn_ingest::Item;
use cairn_ingest::connectors::crm::{CrmConnector, CrmFormat, CrmOptions, IdKind};

fn options(format: CrmFormat, id_kind: IdKind) -> CrmOptions {
    let mut o = CrmOptions::new("fuzz-export", "Id");
    o.format = format;
    o.id_kind = id_kind;
    o.title = Some("Name".into());
    o.body = vec!["Description".into(), "Notes".into()];
    o.metadata = vec!["Stage".into(), "owner.name".into()];
    o.updated_at = Some("LastModifiedDate".into());
    o.timezone = Some("TimeZone".into());
    o.default_timezone = Some("Europe/Paris".into());
    o.date_columns = vec!["CloseDate".into()];
    o.deleted = Some("IsDeleted".into());
    o.url = Some("Url".into());
    o.access_groups = vec!["Team".into()];
    o
}

fuzz_target!(|data: &[u8]| {
    for (format, id_kind) in [
        (CrmFormat::Csv, IdKind::Salesforce),
        (CrmFormat::Csv, IdKind::Plain),
        (CrmFormat::JsonLines, IdKind::Plain),
    ] {
        let Ok(conn) = CrmConnector::new("fuzz", options(format, id_kind)) else {
            return;
        };
        let mut failed = 0usize;
        let summary = conn.list_bytes(data, &mut |item| {
            match item {
                Item::Document(d) => assert!(!d.external_id.is_empty(), "empty id"),
                Item::Failed { .. } => failed += 1,
                _ => {}
            }
            true
        });
        if let Ok(s) = summary {
            assert!(
                failed == 0 || !s.complete,
                "complete listing with failed rows"
            );
        }
    }
});
