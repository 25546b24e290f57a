//! The trace store (`[traces]`): finished [`Trace`] records kept in memory with bounded
//! retention and appended to `state/traces.jsonl`, which is compacted to the retention at
//! start and whenever it reaches twice the retention, so it never holds more than `2 × keep`
//! traces however long the process runs.
//! Question and answer text are recorded only when `[traces] record_text = true`. With
//! `[traces.otlp] endpoint` set, each pushed trace is also handed to [`crate::observe::otlp`]
//! for export.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::section::{Check, ConfigError};
use crate::observe::otlp::{OtlpExport, RawOtlp};
use crate::observe::trace::Trace;
use crate::providers::config::ProviderConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTraces {
    /// Traces kept (oldest dropped first).
    pub keep: usize,
    /// Also store question and answer text (off: data minimisation).
    pub record_text: bool,
    /// `[traces.otlp]`: export over OpenTelemetry (off while the endpoint is empty).
    pub otlp: RawOtlp,
}

impl Default for RawTraces {
    fn default() -> Self {
        RawTraces {
            keep: 1000,
            record_text: false,
            otlp: RawOtlp::default(),
        }
    }
}

impl RawTraces {
    /// Checks `[traces.otlp]` and resolves its `env:` header values.
    pub fn validate(mut self, cx: &Check) -> Result<RawTraces, ConfigError> {
        crate::observe::otlp::validate(&mut self.otlp, cx.origin, &cx.env)?;
        Ok(self)
    }
}

pub struct Traces {
    config: RawTraces,
    path: PathBuf,
    recent: Mutex<VecDeque<Trace>>,
    file: Mutex<TraceFile>,
    otlp: Option<OtlpExport>,
}

/// The append handle of `traces.jsonl` and how many traces the file holds.
struct TraceFile {
    handle: Option<std::fs::File>,
    lines: usize,
}

impl TraceFile {
    /// Rewrites the file at `path` to hold `kept` and appends there from now on; on failure
    /// (logged, `why` saying what the rewrite was for) it keeps appending to the file as it is.
    fn rewrite(&mut self, path: &std::path::Path, kept: &[Trace], why: &str) {
        match compact(path, kept.iter()) {
            Ok(handle) => {
                *self = TraceFile {
                    handle: Some(handle),
                    lines: kept.len(),
                }
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, why, "cannot rewrite the trace file")
            }
        }
    }
}

/// Rewrites `path` to hold exactly `traces` (through a temporary file and a rename, so a crash
/// leaves the old or the new file) and opens it for appending.
fn compact<'a>(
    path: &std::path::Path,
    traces: impl Iterator<Item = &'a Trace>,
) -> anyhow::Result<std::fs::File> {
    let tmp = path.with_file_name(".traces.jsonl.tmp");
    let mut out = String::new();
    for t in traces {
        out.push_str(&serde_json::to_string(t)?);
        out.push('\n');
    }
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, path)?;
    Ok(std::fs::OpenOptions::new().append(true).open(path)?)
}

impl Traces {
    /// Loads the kept traces and starts the OTLP exporter if one is configured (`providers`
    /// name the vendor behind each provider in exported spans).
    pub fn open(
        data_dir: &std::path::Path,
        config: RawTraces,
        providers: &std::collections::BTreeMap<String, ProviderConfig>,
    ) -> anyhow::Result<Traces> {
        let dir = data_dir.join("state");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("traces.jsonl");
        let mut recent: VecDeque<Trace> = VecDeque::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                if let Ok(t) = serde_json::from_str::<Trace>(line) {
                    recent.push_back(t);
                    if recent.len() > config.keep {
                        recent.pop_front();
                    }
                }
            }
        }
        // Compact to the retention so the file stays bounded across restarts.
        let file = TraceFile {
            handle: Some(compact(&path, recent.iter())?),
            lines: recent.len(),
        };
        let otlp = OtlpExport::start(&config.otlp, config.record_text, providers)?;
        Ok(Traces {
            config,
            path,
            recent: Mutex::new(recent),
            file: Mutex::new(file),
            otlp,
        })
    }

    pub fn record_text(&self) -> bool {
        self.config.record_text
    }

    pub fn push(&self, mut trace: Trace) {
        if !self.config.record_text {
            trace.question = None;
            trace.query = None;
            trace.answer = None;
            for step in &mut trace.agent_steps {
                step.arguments = None;
            }
        }
        if let Some(otlp) = &self.otlp {
            otlp.export(&trace);
        }
        let line = serde_json::to_string(&trace);
        {
            let mut recent = self.lock_recent();
            recent.push_back(trace);
            while recent.len() > self.config.keep {
                recent.pop_front();
            }
        }
        if let Ok(line) = line {
            self.append(&line);
        }
    }

    /// Appends one trace line; once the file holds twice the retention, rewrites it to the
    /// traces kept in memory (the newest `keep`).
    fn append(&self, line: &str) {
        let mut file = match self.file.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(handle) = file.handle.as_mut() else {
            return;
        };
        if let Err(e) = writeln!(handle, "{line}") {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot append trace");
            return;
        }
        file.lines += 1;
        if file.lines < 2 * self.config.keep.max(1) {
            return;
        }
        let kept: Vec<Trace> = self.lock_recent().iter().cloned().collect();
        // On failure appending goes on; the next append tries again.
        file.rewrite(&self.path, &kept, "compacting");
    }

    /// Erases the question, query and answer text of every kept trace `matches` picks (ids,
    /// timings and the rest stay) and rewrites the trace file to the kept traces, so no copy of
    /// the text is left in it; how many traces held text. (Spans already exported over OTLP
    /// are out of reach.)
    pub fn erase_text(&self, matches: impl Fn(&Trace) -> bool) -> usize {
        // The file's lock first, as `append` takes them.
        let mut file = match self.file.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (erased, kept): (usize, Vec<Trace>) = {
            let mut recent = self.lock_recent();
            let mut erased = 0;
            for t in recent.iter_mut().filter(|t| matches(t)) {
                if t.question.is_some() || t.query.is_some() || t.answer.is_some() {
                    erased += 1;
                }
                (t.question, t.query, t.answer) = (None, None, None);
            }
            if erased == 0 {
                return 0;
            }
            (erased, recent.iter().cloned().collect())
        };
        file.rewrite(&self.path, &kept, "erasing text");
        erased
    }

    fn lock_recent(&self) -> std::sync::MutexGuard<'_, VecDeque<Trace>> {
        match self.recent.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Newest first.
    pub fn recent(&self, limit: usize) -> Vec<Trace> {
        self.lock_recent()
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// The kept trace `id` (the newest `keep` are kept), if any.
    pub fn get(&self, id: &str) -> Option<Trace> {
        self.lock_recent()
            .iter()
            .rev()
            .find(|t| t.id == id)
            .cloned()
    }

    /// Sends the traces still queued for OTLP export and waits for the collector's answer
    /// (blocking, bounded by the export time-out). Nothing to do without an endpoint.
    pub fn flush_export(&self) {
        if let Some(otlp) = &self.otlp
            && let Err(e) = otlp.flush()
        {
            tracing::warn!(error = %e, "flushing OTLP trace export");
        }
    }

    /// Flushes and stops the OTLP exporter (graceful shutdown; blocking).
    pub fn shutdown_export(&self) {
        if let Some(otlp) = &self.otlp
            && let Err(e) = otlp.shutdown()
        {
            tracing::warn!(error = %e, "stopping OTLP trace export");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_trace_file_stays_bounded_while_running_and_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = RawTraces {
            keep: 5,
            ..RawTraces::default()
        };
        let traces = Traces::open(dir.path(), config.clone(), &Default::default()).expect("open");
        let path = dir.path().join("state/traces.jsonl");
        for i in 0..100 {
            traces.push(Trace {
                id: format!("t{i}"),
                ..Trace::default()
            });
            let n = lines(&path).len();
            assert!(n <= 2 * 5, "{n} traces in the file after {} pushes", i + 1);
        }
        let ids: Vec<String> = traces.recent(5).into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["t99", "t98", "t97", "t96", "t95"]);
        let last = lines(&path).pop().expect("a line");
        assert!(last.contains("\"t99\""), "{last}");
        drop(traces);
        // What the file kept is what a restart loads.
        let reopened = Traces::open(dir.path(), config, &Default::default()).expect("reopen");
        let ids: Vec<String> = reopened.recent(10).into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["t99", "t98", "t97", "t96", "t95"]);
    }
}
