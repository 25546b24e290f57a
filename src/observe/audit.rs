//! The audit log (`[audit]`): an append-only JSON-lines file of admin actions (who started a
//! reindex) and of what each answer request sent to which provider (trace id, provider, model,
//! chunk ids, the SHA-256 of the prompt text — the text itself only with `record_text`), and
//! of each call an agent run made of an external tool (server, tool, the SHA-256 of its
//! arguments).
//!
//! Owns the file: every line is written with one `write` on a descriptor opened with
//! `O_APPEND`, so lines from concurrent requests (or processes sharing the file) never
//! interleave and a crash leaves at most one partial last line; the file is rotated to
//! `<path>.1` … `<path>.<keep>` when it would grow past `max_bytes`. Must not: record an API
//! key (only its configured name) or prompt text unless `record_text = true`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::section::Check;
use crate::providers::{ChatRequest, Role};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAudit {
    /// Write the audit log at all.
    pub enabled: bool,
    /// The log file; empty means `<data_dir>/audit.jsonl`.
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` is the newest).
    pub keep: usize,
    /// Also store the prompt text sent to the provider (off: ids and hashes only).
    pub record_text: bool,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            enabled: true,
            path: PathBuf::new(),
            max_bytes: 64 << 20,
            keep: 5,
            record_text: false,
        }
    }
}

impl RawAudit {
    /// Resolves `path` (empty stays empty: `<data_dir>/audit.jsonl`).
    pub fn validate(mut self, cx: &Check) -> RawAudit {
        if !self.path.as_os_str().is_empty() {
            self.path = cx.path(&self.path);
        }
        self
    }
}

/// One audit record (a line of the log, with `at` added).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// An admin action, by the configured name of the key that asked for it.
    Admin {
        action: String,
        caller: String,
        #[serde(default)]
        detail: serde_json::Value,
    },
    /// An answer prompt handed to a provider route.
    ProviderRequest {
        trace_id: String,
        caller: String,
        route: String,
        /// The provider that served the answer (none when every one failed).
        provider: Option<String>,
        model: Option<String>,
        /// Providers called before it that failed (they may have received the prompt too).
        tried: Vec<String>,
        /// The chunks whose text was in the prompt.
        chunk_ids: Vec<String>,
        /// SHA-256 (hex) of the prompt text as sent ([`prompt_text`]).
        prompt_sha256: String,
        prompt_chars: usize,
        /// Distinct values masked per kind (`[privacy]`).
        masked: std::collections::BTreeMap<String, usize>,
        /// What became of the prompt: `served`, `providers_unavailable` (every provider
        /// failed), `budget_exhausted` (refused before any call), `client_disconnected` or
        /// `cancelled` (the request ended before a provider answered: its deadline, or the
        /// client left); empty in lines written before this field existed.
        #[serde(default)]
        outcome: String,
        /// The prompt text, only with `[audit] record_text = true`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
    },
    /// A call an agent run made of an external tool (`[[agent.tools]]`): what was sent to
    /// which server. A call that was refused (a tool not offered, the budget spent) sent
    /// nothing and has no line.
    ExternalToolCall {
        trace_id: String,
        caller: String,
        /// The `[[agent.tools]]` name and the tool's name on that server.
        server: String,
        tool: String,
        /// SHA-256 (hex) of the arguments as sent (compact JSON).
        arguments_sha256: String,
        /// `ok`, `tool_error` (the tool ran and reported a failure) or `failed` (no result:
        /// unreachable, an MCP error, or out of time).
        outcome: String,
        ms: f64,
        /// The arguments, only with `[audit] record_text = true`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arguments: Option<serde_json::Value>,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    at: String,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

/// The prompt text of a request as the audit log hashes it: the system prompt, then each
/// message as `role: content`, then each tool call and result of the agent's earlier rounds,
/// separated by blank lines.
pub fn prompt_text(chat: &ChatRequest) -> String {
    let mut text = chat.system.clone();
    for m in &chat.messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        text.push_str("\n\n");
        text.push_str(role);
        text.push_str(": ");
        text.push_str(&m.content);
    }
    for r in &chat.tool_rounds {
        for c in &r.calls {
            text.push_str(&format!(
                "\n\ntool call {} {}: {}",
                c.id, c.name, c.arguments
            ));
        }
        for res in &r.results {
            text.push_str(&format!("\n\ntool result {}: {}", res.call_id, res.content));
        }
    }
    text
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Why an audit line could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("audit record could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

struct Open {
    file: File,
    /// Bytes in the file as this process knows it (other writers may add more; rotation is
    /// approximate then, appends stay whole).
    len: u64,
}

/// The open audit log; `None` inside when `[audit] enabled = false`.
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    record_text: bool,
    file: Option<Mutex<Open>>,
}

impl AuditLog {
    /// Opens (creating) the log; `data_dir` gives the default path.
    pub fn open(raw: &RawAudit, data_dir: &Path) -> Result<AuditLog, AuditError> {
        let path = if raw.path.as_os_str().is_empty() {
            data_dir.join("audit.jsonl")
        } else {
            raw.path.clone()
        };
        let file = if raw.enabled {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            }
            let mut file = open_append(&path)?;
            let mut len = file.metadata().map_err(|e| io_err(&path, e))?.len();
            if len > 0 && !ends_with_newline(&path)? {
                // A crash cut the last line short: end it, so the next record starts whole.
                file.write_all(b"\n").map_err(|e| io_err(&path, e))?;
                len += 1;
            }
            Some(Mutex::new(Open { file, len }))
        } else {
            None
        };
        Ok(AuditLog {
            path,
            max_bytes: raw.max_bytes.max(1024),
            keep: raw.keep.max(1),
            record_text: raw.record_text,
            file,
        })
    }

    /// A log that records nothing.
    pub fn disabled() -> AuditLog {
        AuditLog {
            path: PathBuf::new(),
            max_bytes: 0,
            keep: 0,
            record_text: false,
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether records are written at all (`[audit] enabled`).
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Whether prompt text goes into the log.
    pub fn records_text(&self) -> bool {
        self.record_text
    }

    /// Appends one record as one line. A failure is returned (callers log it and go on: an
    /// unwritable audit log does not stop answering).
    pub fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(&Line {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event,
        })?;
        line.push(b'\n');
        let mut open = file.lock().unwrap_or_else(|p| p.into_inner());
        if open.len > 0 && open.len + line.len() as u64 > self.max_bytes {
            self.rotate(&mut open)?;
        }
        // One write call for the whole line: with O_APPEND the kernel places it at the end
        // of the file atomically with respect to other appenders.
        let written = open.file.write(&line).map_err(|e| io_err(&self.path, e))?;
        open.len += written as u64;
        if written < line.len() {
            return Err(io_err(
                &self.path,
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write ({written} of {} bytes)", line.len()),
                ),
            ));
        }
        Ok(())
    }

    /// As [`AuditLog::record`], logging a failure instead of returning it.
    pub fn record_or_warn(&self, event: &AuditEvent) {
        if let Err(e) = self.record(event) {
            tracing::error!(error = %e, "audit record not written");
        }
    }

    /// `path.(keep-1)` → `path.keep`, …, `path` → `path.1`, then a fresh `path`.
    fn rotate(&self, open: &mut Open) -> Result<(), AuditError> {
        let numbered = |i: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        for i in (1..self.keep).rev() {
            let from = numbered(i);
            if from.exists() {
                std::fs::rename(&from, numbered(i + 1)).map_err(|e| io_err(&from, e))?;
            }
        }
        std::fs::rename(&self.path, numbered(1)).map_err(|e| io_err(&self.path, e))?;
        open.file = open_append(&self.path)?;
        open.len = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err(path, e))
}

fn ends_with_newline(path: &Path) -> Result<bool, AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    f.seek(SeekFrom::End(-1)).map_err(|e| io_err(path, e))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last).map_err(|e| io_err(path, e))?;
    Ok(last[0] == b'\n')
}

fn io_err(path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a log's records, skipping a partial last line (a crash mid-write).
pub fn read(path: &Path) -> std::io::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Message;

    fn admin(i: usize) -> AuditEvent {
        AuditEvent::Admin {
            action: "reindex".into(),
            caller: format!("ops-{i}"),
            detail: serde_json::json!({ "job": i }),
        }
    }

    #[test]
    fn appends_one_json_line_per_record_and_keeps_earlier_lines_on_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = RawAudit::default();
        let log = AuditLog::open(&raw, dir.path()).expect("open");
        log.record(&admin(1)).expect("record");
        drop(log);
        let log = AuditLog::open(&raw, dir.path()).expect("reopen");
        log.record(&admin(2)).expect("record");
        let lines = read(&dir.path().join("audit.jsonl")).expect("read");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "admin");
        assert_eq!(lines[0]["caller"], "ops-1");
        assert_eq!(lines[1]["detail"]["job"], 2);
        assert!(lines[1]["at"].as_str().is_some_and(|a| a.ends_with('Z')));
    }

    #[test]
    fn concurrent_writers_never_interleave_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log =
            std::sync::Arc::new(AuditLog::open(&RawAudit::default(), dir.path()).expect("open"));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        log.record(&admin(t * 1000 + i)).expect("record");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).expect("read");
        assert_eq!(text.lines().count(), 1600);
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).expect("every line is whole JSON");
        }
    }

    #[test]
    fn rotates_past_max_bytes_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = RawAudit {
            max_bytes: 1024,
            keep: 2,
            ..RawAudit::default()
        };
        let log = AuditLog::open(&raw, dir.path()).expect("open");
        for i in 0..100 {
            log.record(&admin(i)).expect("record");
        }
        let base = dir.path().join("audit.jsonl");
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&base) <= 1024, "{}", size(&base));
        assert!(size(&dir.path().join("audit.jsonl.1")) > 0);
        assert!(size(&dir.path().join("audit.jsonl.2")) > 0);
        assert!(!dir.path().join("audit.jsonl.3").exists());
        // The newest record is in the live file, the ones before it in .1.
        let live = read(&base).expect("read");
        assert_eq!(live.last().expect("a line")["detail"]["job"], 99);
        let older = read(&dir.path().join("audit.jsonl.1")).expect("read");
        let last_older = older.last().expect("a line")["detail"]["job"]
            .as_u64()
            .expect("job");
        let first_live = live[0]["detail"]["job"].as_u64().expect("job");
        assert_eq!(last_older + 1, first_live);
    }

    #[test]
    fn a_partial_last_line_is_skipped_and_later_appends_start_a_new_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&RawAudit::default(), dir.path()).expect("open");
        log.record(&admin(1)).expect("record");
        drop(log);
        // What a crash in the middle of a (non-atomic) write would leave.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"at\":\"2026-"))
            .expect("append");
        assert_eq!(read(&path).expect("read").len(), 1);
        let log = AuditLog::open(&RawAudit::default(), dir.path()).expect("reopen");
        log.record(&admin(2)).expect("record");
        let lines = read(&path).expect("read");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["caller"], "ops-2");
    }

    #[test]
    fn disabled_log_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = RawAudit {
            enabled: false,
            ..RawAudit::default()
        };
        let log = AuditLog::open(&raw, dir.path()).expect("open");
        log.record(&admin(1)).expect("record");
        assert!(!dir.path().join("audit.jsonl").exists());
    }

    #[test]
    fn prompt_hash_is_of_the_text_recorded() {
        let chat = ChatRequest {
            system: "sys".into(),
            messages: vec![Message {
                role: Role::User,
                content: "q".into(),
            }],
            ..ChatRequest::default()
        };
        assert_eq!(prompt_text(&chat), "sys\n\nuser: q");
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
