//! The CRM connector: one export file (Salesforce Data Loader CSV, HubSpot CSV, or JSON lines)
//! turned into one document per record through a configurable column mapping.
//!
//! Owns reading the export robustly: the bytes are decoded first (BOM stripped, non-UTF-8
//! decoded as Windows-1252 with a note in each document's metadata), CSV is read with
//! `csv` in flexible mode and every malformed record becomes a per-row `Failed` line (a record
//! with broken quoting that swallowed several physical lines is re-read line by line so the
//! rows after it are not lost), ids are normalised (Salesforce 15 → 18 characters), timestamps
//! go to UTC (row time-zone column or a default zone), and duplicate ids keep the most recently
//! updated record, the others reported as skipped. Any failed row makes the listing incomplete,
//! so a damaged export never deletes indexed records.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Connector, Item, SyncState, SyncSummary};
use crate::IngestError;
use crate::normalise::{Zone, decode_bytes, parse_timestamp, rfc3339_utc, salesforce_id_18};
use crate::source::{Body, SourceDocument};

/// Layout of the export file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CrmFormat {
    /// `.jsonl`/`.ndjson` → JSON lines, anything else → CSV.
    #[default]
    Auto,
    Csv,
    JsonLines,
}

/// How the record id is normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IdKind {
    /// Trimmed, otherwise unchanged (HubSpot `Record ID`, JSON ids).
    #[default]
    Plain,
    /// Salesforce ids: 15-character ids get their 18-character form; others fail the row.
    Salesforce,
}

/// Settings of a CRM source (`[sources.<name>]` with `kind = "crm"`). Column names match
/// headers case-insensitively; for JSON lines they are top-level keys, nested ones joined by `.`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmOptions {
    /// The export file.
    pub path: PathBuf,
    #[serde(default)]
    pub format: CrmFormat,
    /// CSV field delimiter (one ASCII character).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Column holding the record id.
    pub id: String,
    #[serde(default)]
    pub id_kind: IdKind,
    /// A column name, or a template with `{Column}` placeholders (`"{First Name} {Last Name}"`).
    #[serde(default)]
    pub title: Option<String>,
    /// Columns written into the body as `Column: value` lines (empty values left out); all
    /// columns when empty.
    #[serde(default)]
    pub body: Vec<String>,
    /// Columns copied into document metadata (filterable).
    #[serde(default)]
    pub metadata: Vec<String>,
    /// Column with the record's last-modified time.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Column with the row's time zone (IANA name, `±HH:MM`, or a numeric offset), used for
    /// timestamps that carry no zone of their own.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Zone for zone-less timestamps when the row has none (default UTC).
    #[serde(default)]
    pub default_timezone: Option<String>,
    /// Further columns whose values are timestamps, normalised to UTC RFC 3339 in the body and
    /// metadata.
    #[serde(default)]
    pub date_columns: Vec<String>,
    /// Column whose true/1/yes value marks a deleted record (Salesforce `IsDeleted`): such
    /// records are skipped, so they leave the index.
    #[serde(default)]
    pub deleted: Option<String>,
    /// Document URL template with `{Column}` placeholders (`{id}` is the normalised id).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub access_groups: Vec<String>,
    /// Export files larger than this are refused.
    #[serde(default = "default_max_bytes")]
    pub max_file_bytes: u64,
}

fn default_delimiter() -> char {
    ','
}

fn default_max_bytes() -> u64 {
    512 << 20
}

impl CrmOptions {
    /// Options with only the file and id column set.
    pub fn new(path: impl Into<PathBuf>, id: &str) -> CrmOptions {
        CrmOptions {
            path: path.into(),
            format: CrmFormat::Auto,
            delimiter: default_delimiter(),
            id: id.to_string(),
            id_kind: IdKind::Plain,
            title: None,
            body: Vec::new(),
            metadata: Vec::new(),
            updated_at: None,
            timezone: None,
            default_timezone: None,
            date_columns: Vec::new(),
            deleted: None,
            url: None,
            access_groups: Vec::new(),
            max_file_bytes: default_max_bytes(),
        }
    }
}

pub struct CrmConnector {
    name: String,
    options: CrmOptions,
    default_zone: Zone,
}

/// One parsed row: header → value, in header order, and its 1-based line in the file.
struct Row {
    line: u64,
    fields: Vec<(String, String)>,
}

impl Row {
    fn get(&self, column: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(column))
            .map(|(_, v)| v.as_str())
    }
}

/// A row that could not be read at all.
struct BadRow {
    line: u64,
    error: String,
}

impl CrmConnector {
    pub fn new(name: &str, options: CrmOptions) -> Result<CrmConnector, IngestError> {
        let err = |message: String| IngestError::Connector {
            source_name: name.to_string(),
            message,
        };
        if options.id.trim().is_empty() {
            return Err(err("`id` must name the record id column".into()));
        }
        if !options.delimiter.is_ascii() {
            return Err(err(format!(
                "`delimiter` must be one ASCII character, not `{}`",
                options.delimiter
            )));
        }
        let default_zone = match &options.default_timezone {
            None => Zone::utc(),
            Some(z) => Zone::parse(z).ok_or_else(|| err(format!("unknown time zone `{z}`")))?,
        };
        Ok(CrmConnector {
            name: name.to_string(),
            options,
            default_zone,
        })
    }

    fn err(&self, message: String) -> IngestError {
        IngestError::Connector {
            source_name: self.name.clone(),
            message,
        }
    }

    fn format(&self) -> CrmFormat {
        match self.options.format {
            CrmFormat::Auto => {
                let ext = self
                    .options
                    .path
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase);
                match ext.as_deref() {
                    Some("jsonl" | "ndjson") => CrmFormat::JsonLines,
                    _ => CrmFormat::Csv,
                }
            }
            f => f,
        }
    }

    fn row_zone(&self, row: &Row) -> Result<Zone, String> {
        let Some(col) = &self.options.timezone else {
            return Ok(self.default_zone);
        };
        match row.get(col).map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(self.default_zone),
            Some(z) => Zone::parse(z).ok_or_else(|| format!("unknown time zone `{z}` in `{col}`")),
        }
    }

    /// Turns a row into a document, or an error message for a `Failed` line.
    fn document(&self, row: &Row, encoding_note: Option<&str>) -> Result<SourceDocument, String> {
        let o = &self.options;
        let raw_id = row
            .get(&o.id)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("no value in id column `{}`", o.id))?;
        let id = match o.id_kind {
            IdKind::Plain => raw_id.to_string(),
            IdKind::Salesforce => salesforce_id_18(raw_id)
                .ok_or_else(|| format!("`{raw_id}` is not a 15- or 18-character Salesforce id"))?,
        };
        let zone = self.row_zone(row)?;
        let is_date = |col: &str| {
            o.date_columns.iter().any(|d| d.eq_ignore_ascii_case(col))
                || o.updated_at
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(col))
        };
        // Values as they go into the body and metadata: dates normalised, others trimmed.
        let value = |col: &str, v: &str| -> String {
            let v = v.trim();
            if !v.is_empty()
                && is_date(col)
                && let Ok(t) = parse_timestamp(v, &zone)
            {
                return rfc3339_utc(&t);
            }
            v.to_string()
        };
        let updated_at: Option<DateTime<Utc>> = match &o.updated_at {
            None => None,
            Some(col) => match row.get(col).map(str::trim).filter(|s| !s.is_empty()) {
                None => None,
                Some(v) => Some(parse_timestamp(v, &zone).map_err(|e| format!("`{col}`: {e}"))?),
            },
        };
        let fill = |template: &str| -> String {
            let mut out = String::new();
            let mut rest = template;
            while let Some(open) = rest.find('{') {
                out.push_str(&rest[..open]);
                let after = &rest[open + 1..];
                let Some(close) = after.find('}') else {
                    out.push_str(&rest[open..]);
                    rest = "";
                    break;
                };
                let key = &after[..close];
                if key == "id" {
                    out.push_str(&id);
                } else if let Some(v) = row.get(key) {
                    out.push_str(&value(key, v));
                }
                rest = &after[close + 1..];
            }
            out.push_str(rest);
            out
        };
        let title = match &o.title {
            Some(t) if t.contains('{') => fill(t),
            Some(col) => row.get(col).map(|v| value(col, v)).unwrap_or_default(),
            None => String::new(),
        };
        let title = {
            let t = title.split_whitespace().collect::<Vec<_>>().join(" ");
            if t.is_empty() { id.clone() } else { t }
        };
        let mut body = String::new();
        let columns: Vec<&str> = if o.body.is_empty() {
            row.fields.iter().map(|(k, _)| k.as_str()).collect()
        } else {
            o.body.iter().map(String::as_str).collect()
        };
        for col in columns {
            if let Some(v) = row.get(col) {
                let v = value(col, v);
                if !v.is_empty() {
                    let label = row
                        .fields
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(col))
                        .map_or(col, |(k, _)| k.as_str());
                    body.push_str(label);
                    body.push_str(": ");
                    body.push_str(&v);
                    body.push('\n');
                }
            }
        }
        let mut metadata = BTreeMap::new();
        for col in &o.metadata {
            if let Some(v) = row.get(col) {
                let v = value(col, v);
                if !v.is_empty() {
                    metadata.insert(col.clone(), v);
                }
            }
        }
        metadata.insert("row".into(), row.line.to_string());
        if let Some(note) = encoding_note {
            metadata.insert("source_encoding".into(), note.to_string());
        }
        let url = o.url.as_deref().map(fill).filter(|u| !u.is_empty());
        Ok(SourceDocument {
            external_id: id,
            title,
            url,
            updated_at,
            metadata,
            access_groups: o.access_groups.clone(),
            body: Body::Text(body),
        })
    }

    fn is_deleted(&self, row: &Row) -> bool {
        self.options.deleted.as_deref().is_some_and(|col| {
            row.get(col).is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "true" | "1" | "yes" | "y"
                )
            })
        })
    }
}

/// Reads CSV text into rows and bad rows, never failing as a whole except for a missing header.
fn read_csv(text: &str, delimiter: u8) -> Result<(Vec<Row>, Vec<BadRow>), String> {
    let builder = || {
        let mut b = csv::ReaderBuilder::new();
        b.delimiter(delimiter).flexible(true).has_headers(false);
        b
    };
    let mut reader = builder().from_reader(text.as_bytes());
    let mut records = reader.byte_records();
    let headers: Vec<String> = match records.next() {
        Some(Ok(h)) => h
            .iter()
            .map(|f| String::from_utf8_lossy(f).trim().to_string())
            .collect(),
        Some(Err(e)) => return Err(format!("unreadable header row: {e}")),
        None => return Err("the file is empty (no header row)".into()),
    };
    if headers.iter().all(String::is_empty) {
        return Err("the header row is empty".into());
    }
    let to_row = |line: u64, rec: &csv::ByteRecord| Row {
        line,
        fields: headers
            .iter()
            .cloned()
            .zip(rec.iter().map(|f| String::from_utf8_lossy(f).into_owned()))
            .collect(),
    };
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    let mut pending: Vec<(u64, u64, csv::ByteRecord)> = Vec::new();
    for rec in records {
        match rec {
            Ok(rec) => {
                let (line, byte) = rec
                    .position()
                    .map(|p| (p.line(), p.byte()))
                    .unwrap_or((0, 0));
                pending.push((line, byte, rec));
            }
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                bad.push(BadRow {
                    line,
                    error: format!("unreadable CSV record: {e}"),
                });
            }
        }
    }
    let ends: Vec<u64> = pending
        .iter()
        .skip(1)
        .map(|(_, b, _)| *b)
        .chain(std::iter::once(text.len() as u64))
        .collect();
    for ((line, start, rec), end) in pending.into_iter().zip(ends) {
        if rec.len() == 1 && rec.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
            continue; // a blank line
        }
        if rec.len() == headers.len() {
            rows.push(to_row(line, &rec));
            continue;
        }
        let raw = text
            .get(usize::try_from(start).unwrap_or(0)..usize::try_from(end).unwrap_or(0))
            .unwrap_or("");
        let physical: Vec<&str> = raw.split_inclusive('\n').collect();
        if physical.len() <= 1 {
            bad.push(BadRow {
                line,
                error: format!(
                    "{} fields where the header has {} (broken quoting or delimiter?)",
                    rec.len(),
                    headers.len()
                ),
            });
            continue;
        }
        // A stray quote swallowed several lines into one record: re-read each line alone so
        // the well-formed rows after it survive and only the damaged line fails.
        for (i, l) in physical.iter().enumerate() {
            let l_no = line + i as u64;
            if l.trim().is_empty() {
                continue;
            }
            let mut r = builder().from_reader(l.as_bytes());
            match r.byte_records().next() {
                Some(Ok(one)) if one.len() == headers.len() => rows.push(to_row(l_no, &one)),
                Some(Ok(one)) => bad.push(BadRow {
                    line: l_no,
                    error: format!(
                        "{} fields where the header has {} (broken quoting?)",
                        one.len(),
                        headers.len()
                    ),
                }),
                Some(Err(e)) => bad.push(BadRow {
                    line: l_no,
                    error: format!("unreadable CSV record: {e}"),
                }),
                None => {}
            }
        }
    }
    rows.sort_by_key(|r| r.line);
    Ok((rows, bad))
}

/// JSON lines: one object per line, nested objects flattened with `.`.
fn read_json_lines(text: &str) -> (Vec<Row>, Vec<BadRow>) {
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(map)) => {
                let mut fields = Vec::new();
                flatten("", &serde_json::Value::Object(map), &mut fields);
                rows.push(Row {
                    line: line_no,
                    fields,
                });
            }
            Ok(_) => bad.push(BadRow {
                line: line_no,
                error: "not a JSON object".into(),
            }),
            Err(e) => bad.push(BadRow {
                line: line_no,
                error: format!("invalid JSON: {e}"),
            }),
        }
    }
    (rows, bad)
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Null => out.push((prefix.to_string(), String::new())),
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.push((prefix.to_string(), parts.join("; ")));
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

impl Connector for CrmConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn list(
        &mut self,
        _state: &SyncState,
        _full: bool,
        emit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<SyncSummary, IngestError> {
        let path = &self.options.path;
        let meta = std::fs::metadata(path).map_err(|e| {
            self.err(format!(
                "cannot open export {}: {e}; check the source's `path`",
                path.display()
            ))
        })?;
        if meta.len() > self.options.max_file_bytes {
            return Err(self.err(format!(
                "export is {} bytes, over `max_file_bytes` = {}",
                meta.len(),
                self.options.max_file_bytes
            )));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| self.err(format!("cannot read {}: {e}", path.display())))?;
        self.list_bytes(&bytes, emit)
    }
}

impl CrmConnector {
    /// Lists the records of an export given as bytes (the file's content): everything
    /// [`Connector::list`] does after reading the file — decoding, parsing, normalising,
    /// deduplicating. Never panics on any input (the fuzz target `crm` drives it).
    pub fn list_bytes(
        &self,
        bytes: &[u8],
        emit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<SyncSummary, IngestError> {
        let path = &self.options.path;
        let decoded = decode_bytes(bytes);
        if let Some(note) = &decoded.encoding_note {
            tracing::warn!(
                source = %self.name,
                "export is not UTF-8; decoded as {note}"
            );
        }
        let (rows, bad) = match self.format() {
            CrmFormat::JsonLines => read_json_lines(&decoded.text),
            _ => read_csv(&decoded.text, self.options.delimiter as u8)
                .map_err(|e| self.err(format!("{}: {e}", path.display())))?,
        };
        let mut complete = bad.is_empty();
        for b in bad {
            if !emit(Item::Failed {
                external_id: format!("row {}", b.line),
                error: b.error,
            }) {
                return Ok(SyncSummary::default());
            }
        }

        // Dedupe by id: keep the latest `updated_at` (the later row on ties), in first-seen order.
        let mut order: Vec<Option<SourceDocument>> = Vec::new();
        let mut slot: HashMap<String, usize> = HashMap::new();
        let mut later: Vec<Item> = Vec::new();
        let mut watermark: Option<DateTime<Utc>> = None;
        for row in &rows {
            if self.is_deleted(row) {
                let id = row.get(&self.options.id).unwrap_or("").trim().to_string();
                let id = match self.options.id_kind {
                    IdKind::Salesforce => salesforce_id_18(&id).unwrap_or(id),
                    IdKind::Plain => id,
                };
                later.push(Item::Skipped {
                    external_id: id,
                    reason: "marked deleted in the export".into(),
                });
                continue;
            }
            let doc = match self.document(row, decoded.encoding_note.as_deref()) {
                Ok(d) => d,
                Err(error) => {
                    complete = false;
                    later.push(Item::Failed {
                        external_id: format!("row {}", row.line),
                        error,
                    });
                    continue;
                }
            };
            if let Some(t) = doc.updated_at {
                watermark = Some(watermark.map_or(t, |w| w.max(t)));
            }
            match slot.get(&doc.external_id) {
                None => {
                    slot.insert(doc.external_id.clone(), order.len());
                    order.push(Some(doc));
                }
                Some(&i) => {
                    let Some(kept) = order[i].take() else {
                        continue;
                    };
                    let (winner, loser) = if doc.updated_at >= kept.updated_at {
                        (doc, kept)
                    } else {
                        (kept, doc)
                    };
                    later.push(Item::Skipped {
                        // A distinct id: the kept record must not be touched by this line.
                        external_id: format!(
                            "{} (duplicate, row {})",
                            loser.external_id,
                            loser.metadata.get("row").map_or("?", String::as_str)
                        ),
                        reason: format!(
                            "duplicate of record {}: kept row {} (updated {})",
                            winner.external_id,
                            winner.metadata.get("row").map_or("?", String::as_str),
                            winner
                                .updated_at
                                .map_or_else(|| "unknown".into(), |t| rfc3339_utc(&t))
                        ),
                    });
                    order[i] = Some(winner);
                }
            }
        }
        for item in order.into_iter().flatten().map(Item::Document).chain(later) {
            if !emit(item) {
                return Ok(SyncSummary::default());
            }
        }
        Ok(SyncSummary {
            complete,
            deleted: Vec::new(),
            watermark: watermark.map(|t| rfc3339_utc(&t)),
        })
    }
}
