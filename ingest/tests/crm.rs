//! CRM connector against real Salesforce Data Loader test exports and hand-written HubSpot ones.

use std::path::PathBuf;

use cairn_ingest::connectors::crm::{CrmConnector, CrmOptions, IdKind};
use cairn_ingest::{Body, Connector, Item, SourceDocument, SyncState, SyncSummary};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crm")
        .join(rel)
}

fn list(options: CrmOptions) -> (Vec<Item>, SyncSummary) {
    let mut c = CrmConnector::new("crm", options).expect("connector");
    let mut items = Vec::new();
    let summary = c
        .list(&SyncState::default(), true, &mut |i| {
            items.push(i);
            true
        })
        .expect("list");
    (items, summary)
}

fn docs(items: &[Item]) -> Vec<&SourceDocument> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Document(d) => Some(d),
            _ => None,
        })
        .collect()
}

fn salesforce_accounts(path: PathBuf) -> CrmOptions {
    let mut o = CrmOptions::new(path, "Id");
    o.id_kind = IdKind::Salesforce;
    o.title = Some("Name".into());
    o.body = [
        "Name",
        "BillingStreet",
        "BillingCity",
        "BillingCountry",
        "CreatedDate",
    ]
    .map(String::from)
    .to_vec();
    o.metadata = vec!["BillingCountry".into(), "LastModifiedDate".into()];
    o.updated_at = Some("LastModifiedDate".into());
    o.date_columns = vec!["CreatedDate".into()];
    o.deleted = Some("IsDeleted".into());
    o.url = Some("https://example.my.salesforce.com/{id}".into());
    o.access_groups = vec!["sales".into()];
    o
}

#[test]
fn salesforce_account_export_reads_all_rows_despite_latin1() {
    let (items, summary) = list(salesforce_accounts(fixture("salesforce/accountData.csv")));
    let docs = docs(&items);
    assert_eq!(
        docs.len(),
        423,
        "{:?}",
        items.iter().find(|i| !matches!(i, Item::Document(_)))
    );
    assert!(summary.complete);
    let watermark = summary.watermark.clone().expect("watermark");
    assert!(
        watermark.starts_with("2006-") && watermark.ends_with('Z'),
        "{watermark}"
    );
    // The Latin-1 byte is decoded as Windows-1252, not lost or replaced.
    let madrid = docs
        .iter()
        .find(|d| d.external_id == "001x0000002xLDgAAM")
        .expect("row 87");
    assert_eq!(madrid.title, "Crédito Inmobiliario Terras");
    assert_eq!(
        madrid.metadata.get("source_encoding").map(String::as_str),
        Some("windows-1252")
    );
    for d in &docs {
        assert_eq!(d.external_id.len(), 18, "{}", d.external_id);
        let t = d.metadata.get("LastModifiedDate").expect("modified");
        assert!(t.ends_with('Z') && !t.contains(".000"), "{t}");
        assert!(d.updated_at.is_some());
        assert!(
            d.url
                .as_deref()
                .is_some_and(|u| u.ends_with(&d.external_id))
        );
    }
    let first = docs[0];
    assert_eq!(first.external_id, "001x0000002xLCVAA2");
    assert_eq!(
        first.updated_at.map(|t| t.to_rfc3339()),
        Some("2006-04-15T03:28:53+00:00".to_string())
    );
    let Body::Text(body) = &first.body else {
        panic!("text body")
    };
    assert!(body.contains("NAME: Gravity Investments"), "{body}");
    assert!(body.contains("CREATEDDATE: 2006-04-15T03:23:15Z"), "{body}");
}

#[test]
fn salesforce_15_char_ids_are_normalised_and_duplicates_keep_the_latest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("accounts.csv");
    std::fs::write(
        &path,
        "Id,Name,LastModifiedDate,IsDeleted\n\
         001x0000002xLCV,Old name,2006-04-15T03:28:53.000Z,false\n\
         001x0000002xLCVAA2,New name,2006-04-16T00:00:00.000Z,false\n\
         001x0000002xLDg,Gone,2006-04-15T03:28:53.000Z,true\n\
         not-an-id,Broken,2006-04-15T03:28:53.000Z,false\n",
    )
    .expect("write");
    let (items, summary) = list(salesforce_accounts(path));
    let docs = docs(&items);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].external_id, "001x0000002xLCVAA2");
    assert_eq!(docs[0].title, "New name");
    assert!(items.iter().any(|i| matches!(i,
        Item::Skipped { external_id, reason }
            if external_id.contains("duplicate") && reason.contains("kept row 3"))));
    assert!(items.iter().any(|i| matches!(i,
        Item::Skipped { external_id, reason }
            if external_id == "001x0000002xLDgAAM" && reason.contains("deleted"))));
    assert!(items.iter().any(|i| matches!(i,
        Item::Failed { external_id, error }
            if external_id == "row 5" && error.contains("Salesforce id"))));
    // A row that failed means the listing cannot be trusted for deletions.
    assert!(!summary.complete);
}

#[test]
fn dataloader_bom_quotes_and_zoned_dates() {
    let mut o = CrmOptions::new(fixture("salesforce/csvtext_BOM_UTF8.csv"), "column1");
    o.title = Some("{column2} / {column3}".into());
    let (items, summary) = list(o);
    let d = docs(&items);
    assert!(summary.complete);
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].external_id, "row1-1"); // the BOM did not stick to the header
    assert_eq!(d[0].title, "row1-2 / row1-3");

    let (items, _) = list(CrmOptions::new(
        fixture("salesforce/csvEscapedQuotes.csv"),
        "column1",
    ));
    let ids: Vec<&str> = docs(&items)
        .iter()
        .map(|d| d.external_id.as_str())
        .collect();
    assert_eq!(ids, ["\"The Best\" Account", "The \"Best\" Account"]);

    let mut o = CrmOptions::new(
        fixture("salesforce/dateWithTimeZone.csv"),
        "ACCOUNTNUMBER__C",
    );
    o.updated_at = Some("DATE".into());
    o.date_columns = vec!["DATE_ONLY".into()];
    o.metadata = vec!["DATE_ONLY".into()];
    let (items, _) = list(o);
    let d = docs(&items);
    assert_eq!(d.len(), 2);
    // 12:00 at -03:00.
    assert_eq!(
        d[0].updated_at.map(|t| t.to_rfc3339()),
        Some("2010-10-14T15:00:00+00:00".into())
    );
    assert_eq!(d[0].metadata["DATE_ONLY"], "2010-10-14T12:00:00Z");
    assert_eq!(d[1].metadata["DATE_ONLY"], "2010-10-14T00:00:00Z");
}

fn hubspot_contacts() -> CrmOptions {
    let mut o = CrmOptions::new(
        fixture("hubspot/hubspot-crm-exports-all-contacts-2024-03-20.csv"),
        "Record ID",
    );
    o.title = Some("{First Name} {Last Name} ({Company Name})".into());
    o.body = vec![
        "Job Title".into(),
        "Company Name".into(),
        "Lifecycle Stage".into(),
        "Notes".into(),
    ];
    o.metadata = vec!["Lifecycle Stage".into(), "Email".into()];
    o.updated_at = Some("Last Activity Date".into());
    o.timezone = Some("Time Zone".into());
    o.date_columns = vec!["Create Date".into()];
    o.url = Some("https://app.hubspot.com/contacts/1234/record/0-1/{Record ID}".into());
    o
}

#[test]
fn hubspot_export_with_broken_quoting_fails_per_row() {
    let (items, summary) = list(hubspot_contacts());
    let d = docs(&items);
    let ids: Vec<&str> = d.iter().map(|d| d.external_id.as_str()).collect();
    assert_eq!(ids, ["101", "102", "103", "105"]);
    assert!(!summary.complete);
    let failed: Vec<&Item> = items
        .iter()
        .filter(|i| matches!(i, Item::Failed { .. }))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].external_id(), "row 7");

    // 09:14 London (GMT in March) and 4:05 PM New York (EDT from 10 March).
    assert_eq!(
        d[0].updated_at.map(|t| t.to_rfc3339()),
        Some("2024-03-12T09:14:00+00:00".into())
    );
    let bram = d[1];
    assert_eq!(bram.title, "Bram Oakes (Kestrel Freight)");
    assert_eq!(bram.metadata["Email"], "bram@example.org"); // the newer duplicate won
    assert_eq!(
        bram.updated_at.map(|t| t.to_rfc3339()),
        Some("2024-03-18T20:05:00+00:00".into())
    );
    let Body::Text(body) = &bram.body else {
        panic!("text")
    };
    assert!(body.contains("Notes: Asked about\nbulk pricing"), "{body}");
    assert!(items.iter().any(|i| matches!(i,
        Item::Skipped { external_id, .. } if external_id == "102 (duplicate, row 6)")));
    assert_eq!(
        d[0].url.as_deref(),
        Some("https://app.hubspot.com/contacts/1234/record/0-1/101")
    );
}

#[test]
fn json_lines_with_mixed_time_zone_fields() {
    let mut o = CrmOptions::new(fixture("hubspot/deals.jsonl"), "id");
    o.title = Some("properties.dealname".into());
    o.body = vec!["properties.dealstage".into(), "properties.amount".into()];
    o.updated_at = Some("properties.hs_lastmodifieddate".into());
    o.timezone = Some("properties.tz".into());
    o.metadata = vec!["associations".into()];
    let (items, summary) = list(o);
    let d = docs(&items);
    assert_eq!(d.len(), 3);
    assert!(!summary.complete);
    assert!(items.iter().any(|i| matches!(i,
        Item::Failed { external_id, error } if external_id == "row 3" && error.contains("JSON"))));
    let utc = |i: usize| d[i].updated_at.map(|t| t.to_rfc3339()).unwrap_or_default();
    assert_eq!(utc(0), "2024-03-12T14:14:00+00:00"); // "-300" minutes
    assert_eq!(utc(1), "2024-03-12T09:14:00+00:00"); // epoch millis ignore the zone
    assert_eq!(utc(2), "2024-03-20T09:00:00+00:00");
    assert_eq!(d[0].title, "Northwind renewal");
    assert_eq!(d[0].metadata["associations"], "101");
    let Body::Text(body) = &d[1].body else {
        panic!("text")
    };
    assert_eq!(body.trim(), "properties.dealstage: appointmentscheduled");
}
