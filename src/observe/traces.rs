//! The trace store (`[traces]`): finished [`Trace`] records kept in memory with bounded
//! retention and appended to `state/traces.jsonl` (compacted to the retention at start).
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
    file: Mutex<Option<std::fs::File>>,
    otlp: Option<OtlpExport>,
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
        let tmp = dir.join(".traces.jsonl.tmp");
        let mut out = String::new();
        for t in &recent {
            out.push_str(&serde_json::to_string(t)?);
            out.push('\n');
        }
        std::fs::write(&tmp, out)?;
        std::fs::rename(&tmp, &path)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        let otlp = OtlpExport::start(&config.otlp, config.record_text, providers)?;
        Ok(Traces {
            config,
            path,
            recent: Mutex::new(recent),
            file: Mutex::new(Some(file)),
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
        }
        if let Ok(mut f) = self.file.lock()
            && let Some(file) = f.as_mut()
            && let Ok(line) = serde_json::to_string(&trace)
            && let Err(e) = writeln!(file, "{line}")
        {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot append trace");
        }
        if let Some(otlp) = &self.otlp {
            otlp.export(&trace);
        }
        let mut recent = match self.recent.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        recent.push_back(trace);
        while recent.len() > self.config.keep {
            recent.pop_front();
        }
    }

    /// Newest first.
    pub fn recent(&self, limit: usize) -> Vec<Trace> {
        let recent = match self.recent.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        recent.iter().rev().take(limit).cloned().collect()
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
