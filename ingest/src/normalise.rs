//! Normalisation of values that arrive in many shapes from exports and APIs.
//!
//! Owns: text decoding (byte-order marks, UTF-8 with a Windows-1252 fallback), Salesforce record
//! ids (15-character case-sensitive → 18-character case-insensitive form), time zones given as
//! IANA names, `±HH:MM` offsets or bare numeric offsets, and timestamps in mixed formats, all
//! normalised to UTC and printed as RFC 3339 with `Z`.

use chrono::{
    DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeZone, Utc,
};

/// Text decoded from bytes, and the encoding it was decoded from when that was not UTF-8.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub text: String,
    /// `Some("windows-1252")` (or the BOM's encoding) when the bytes were not plain UTF-8.
    pub encoding_note: Option<String>,
}

/// Decodes text: a UTF-8/UTF-16 byte-order mark selects the encoding and is removed; otherwise
/// valid UTF-8 is taken as is, and anything else is decoded as Windows-1252 (the superset of
/// Latin-1 that spreadsheet exports use), so no byte is lost.
pub fn decode_bytes(bytes: &[u8]) -> Decoded {
    if let Some((enc, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
        let (text, _) = enc.decode_without_bom_handling(&bytes[bom_len..]);
        let note = (enc != encoding_rs::UTF_8).then(|| enc.name().to_ascii_lowercase());
        return Decoded {
            text: text.into_owned(),
            encoding_note: note,
        };
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Decoded {
            text: s.to_string(),
            encoding_note: None,
        },
        Err(_) => {
            let (text, _, _) = encoding_rs::WINDOWS_1252.decode(bytes);
            Decoded {
                text: text.into_owned(),
                encoding_note: Some("windows-1252".into()),
            }
        }
    }
}

/// The 18-character form of a Salesforce id. 15-character ids get the standard three-character
/// case checksum; 18-character ids are returned unchanged; anything else is `None`.
///
/// The suffix encodes, for each 5-character block, which characters are upper-case letters:
/// bit `i` set when character `i` of the block is `A`–`Z`, the 5-bit value indexing
/// `A`–`Z` then `0`–`5`.
pub fn salesforce_id_18(id: &str) -> Option<String> {
    let id = id.trim();
    if !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    match id.len() {
        18 => Some(id.to_string()),
        15 => {
            const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
            let mut out = id.to_string();
            for block in id.as_bytes().chunks(5) {
                let bits = block
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.is_ascii_uppercase())
                    .fold(0usize, |acc, (i, _)| acc | (1 << i));
                out.push(char::from(ALPHABET[bits]));
            }
            Some(out)
        }
        _ => None,
    }
}

/// A time zone as exports give it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    Named(chrono_tz::Tz),
    Fixed(FixedOffset),
}

impl Zone {
    pub fn utc() -> Zone {
        Zone::Named(chrono_tz::UTC)
    }

    /// Parses `Europe/Berlin`, `UTC`, `Z`, `+02:00`, `-0300`, `UTC+2`, or a bare number taken as
    /// an offset from UTC: hours when |n| ≤ 14, minutes when |n| ≤ 840, seconds when
    /// |n| ≤ 50400, milliseconds (divisible by 1000) beyond that.
    pub fn parse(s: &str) -> Option<Zone> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        if s.eq_ignore_ascii_case("z") || s.eq_ignore_ascii_case("utc") || s == "GMT" {
            return Some(Zone::utc());
        }
        if let Ok(tz) = s.parse::<chrono_tz::Tz>() {
            return Some(Zone::Named(tz));
        }
        let rest = s
            .strip_prefix("UTC")
            .or_else(|| s.strip_prefix("GMT"))
            .unwrap_or(s)
            .trim();
        if let Some(off) = parse_offset(rest) {
            return Some(Zone::Fixed(off));
        }
        let n: i64 = rest.parse().ok()?;
        let secs = match n.abs() {
            0..=14 => n * 3600,
            15..=840 => n * 60,
            841..=50_400 => n,
            _ if n % 1000 == 0 && (n / 1000).abs() <= 50_400 => n / 1000,
            _ => return None,
        };
        FixedOffset::east_opt(i32::try_from(secs).ok()?).map(Zone::Fixed)
    }

    /// The UTC instant of a wall-clock time in this zone. A time skipped by a daylight-saving
    /// jump is taken an hour later; an ambiguous one as its earlier instant.
    pub fn to_utc(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self {
            Zone::Named(tz) => tz
                .from_local_datetime(&local)
                .earliest()
                .or_else(|| {
                    tz.from_local_datetime(&(local + chrono::Duration::hours(1)))
                        .earliest()
                })
                .map(|t| t.with_timezone(&Utc)),
            Zone::Fixed(off) => off
                .from_local_datetime(&local)
                .single()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// `+02:00`, `-0300`, `+05`.
fn parse_offset(s: &str) -> Option<FixedOffset> {
    let (sign, digits) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let digits: String = digits.chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0),
        4 => (
            digits[..2].parse::<i32>().ok()?,
            digits[2..].parse::<i32>().ok()?,
        ),
        _ => return None,
    };
    if h > 14 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// Naive date-time layouts seen in CRM exports (US month-first for slashes, as Salesforce and
/// HubSpot US exports write them).
const NAIVE_FORMATS: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%y %H:%M",
    "%m/%d/%y %I:%M %p",
];

const DATE_FORMATS: &[&str] = &["%Y-%m-%d", "%m/%d/%Y", "%m/%d/%y", "%Y/%m/%d"];

/// Parses a timestamp in any of the shapes exports use and returns the UTC instant.
///
/// Accepted: RFC 3339 / ISO 8601 with `Z` or an offset (`2006-04-15T03:23:15.000Z`,
/// `2024-03-12T09:14:00+01:00`, `...-0300`), Salesforce's literal-`Z`-then-offset
/// (`2010-10-14T12:00:00.000Z-0300`, read as 12:00 at −03:00), naive date-times and dates
/// (`2024-03-12 09:14`, `03/15/2024 2:30 PM`, `2005-11-09`) interpreted in `zone`, and epoch
/// seconds or milliseconds (9–11 or 12–14 digits).
pub fn parse_timestamp(raw: &str, zone: &Zone) -> Result<DateTime<Utc>, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("empty timestamp".into());
    }
    // Epoch seconds or milliseconds.
    if let Some(digits) = s.strip_prefix('-').or(Some(s))
        && !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
    {
        let n: i64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
        let t = match digits.len() {
            9..=11 => DateTime::from_timestamp(n, 0),
            12..=14 => DateTime::from_timestamp_millis(n),
            _ => None,
        };
        return t.ok_or_else(|| format!("`{s}` is not an epoch time in seconds or milliseconds"));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    // Salesforce Data Loader's `...SSS'Z'Z`: a literal Z followed by the real offset.
    if let Some(pos) = s.find("Z+").or_else(|| s.find("Z-"))
        && let Some(off) = parse_offset(&s[pos + 1..])
        && let Ok(local) = NaiveDateTime::parse_from_str(&s[..pos], "%Y-%m-%dT%H:%M:%S%.f")
    {
        return Zone::Fixed(off)
            .to_utc(local)
            .ok_or_else(|| format!("`{s}`: invalid local time"));
    }
    // A trailing zone name: `2024-03-12 09:14 Europe/Paris`, `... UTC`.
    if let Some((head, tail)) = s.rsplit_once(' ')
        && tail.chars().any(|c| c.is_ascii_alphabetic())
        && !tail.eq_ignore_ascii_case("am")
        && !tail.eq_ignore_ascii_case("pm")
        && let Some(z) = Zone::parse(tail)
    {
        return parse_timestamp(head, &z);
    }
    for f in NAIVE_FORMATS {
        if let Ok(local) = NaiveDateTime::parse_from_str(s, f) {
            return zone
                .to_utc(local)
                .ok_or_else(|| format!("`{s}`: invalid local time"));
        }
    }
    for f in DATE_FORMATS {
        if let Ok(d) = NaiveDate::parse_from_str(s, f) {
            return zone
                .to_utc(d.and_time(NaiveTime::MIN))
                .ok_or_else(|| format!("`{s}`: invalid local date"));
        }
    }
    Err(format!("unrecognised timestamp `{s}`"))
}

/// RFC 3339 in UTC with `Z`, whole seconds unless the instant has a fraction.
pub fn rfc3339_utc(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> String {
        rfc3339_utc(&parse_timestamp(s, &Zone::utc()).expect(s))
    }

    #[test]
    fn salesforce_ids_get_their_checksum() {
        // Suffixes as Data Loader writes them for these ids.
        assert_eq!(
            salesforce_id_18("001x0000002xLCV").as_deref(),
            Some("001x0000002xLCVAA2")
        );
        assert_eq!(
            salesforce_id_18("005x0000000fNSi").as_deref(),
            Some("005x0000000fNSiAAM")
        );
        assert_eq!(
            salesforce_id_18("001x0000002xLCVAA2").as_deref(),
            Some("001x0000002xLCVAA2")
        );
        assert_eq!(salesforce_id_18("short"), None);
        assert_eq!(salesforce_id_18("001x0000002xL-V"), None);
    }

    #[test]
    fn timestamps_in_mixed_shapes_become_utc() {
        assert_eq!(ts("2006-04-15T03:23:15.000Z"), "2006-04-15T03:23:15Z");
        assert_eq!(ts("2024-03-12T09:14:00+01:00"), "2024-03-12T08:14:00Z");
        assert_eq!(ts("2024-03-12T09:14:00.5-0300"), "2024-03-12T12:14:00.500Z");
        assert_eq!(ts("2010-10-14T12:00:00.000Z-0300"), "2010-10-14T15:00:00Z");
        assert_eq!(ts("2005-11-09"), "2005-11-09T00:00:00Z");
        assert_eq!(ts("03/15/2024 14:30"), "2024-03-15T14:30:00Z");
        assert_eq!(ts("3/15/2024 2:30 PM"), "2024-03-15T14:30:00Z");
        assert_eq!(ts("2024-03-12 09:14"), "2024-03-12T09:14:00Z");
        assert_eq!(ts("1710234840"), "2024-03-12T09:14:00Z");
        assert_eq!(ts("1710234840123"), "2024-03-12T09:14:00.123Z");
        assert_eq!(ts("2024-03-12 09:14 Europe/Paris"), "2024-03-12T08:14:00Z");
        assert!(parse_timestamp("next tuesday", &Zone::utc()).is_err());
        assert!(parse_timestamp("42", &Zone::utc()).is_err());
    }

    #[test]
    fn zones_from_names_offsets_and_numbers() {
        let local =
            NaiveDateTime::parse_from_str("2024-07-01 12:00", "%Y-%m-%d %H:%M").expect("naive");
        let at = |z: &str| rfc3339_utc(&Zone::parse(z).expect(z).to_utc(local).expect("utc"));
        assert_eq!(at("America/New_York"), "2024-07-01T16:00:00Z");
        assert_eq!(at("-05:00"), "2024-07-01T17:00:00Z");
        assert_eq!(at("-0500"), "2024-07-01T17:00:00Z");
        assert_eq!(at("UTC+2"), "2024-07-01T10:00:00Z");
        assert_eq!(at("-18000"), "2024-07-01T17:00:00Z"); // seconds
        assert_eq!(at("-300"), "2024-07-01T17:00:00Z"); // minutes
        assert_eq!(at("-5"), "2024-07-01T17:00:00Z"); // hours
        assert_eq!(at("-18000000"), "2024-07-01T17:00:00Z"); // milliseconds
        assert_eq!(Zone::parse("Mars/Olympus"), None);
        // A wall-clock time inside the spring-forward gap is moved an hour on.
        let gap =
            NaiveDateTime::parse_from_str("2024-03-31 02:30", "%Y-%m-%d %H:%M").expect("naive");
        let z = Zone::parse("Europe/Berlin").expect("zone");
        assert_eq!(
            rfc3339_utc(&z.to_utc(gap).expect("utc")),
            "2024-03-31T01:30:00Z"
        );
    }

    #[test]
    fn decoding_strips_boms_and_falls_back_to_windows_1252() {
        assert_eq!(decode_bytes(b"\xEF\xBB\xBFa,b").text, "a,b");
        let d = decode_bytes(b"Caf\xe9 \x80");
        assert_eq!(d.text, "Café €");
        assert_eq!(d.encoding_note.as_deref(), Some("windows-1252"));
        let d = decode_bytes(b"\xFF\xFEh\0i\0");
        assert_eq!(d.text, "hi");
        assert_eq!(d.encoding_note.as_deref(), Some("utf-16le"));
    }
}
