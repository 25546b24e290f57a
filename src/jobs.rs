//! Reindex jobs: started by `POST /admin/reindex`, run in the background one at a time,
//! survive client disconnects, and persist their state as JSON files so a restart reports a job
//! that was running as `interrupted` (it can simply be started again: ingest is incremental).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use cairn_ingest::pipeline::{Counts, Report};

use crate::engine::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Interrupted,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobProgress {
    pub source: Option<String>,
    pub listed: usize,
    pub processed: usize,
    pub chunks: usize,
}

/// A job as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// The source, or none for every source.
    pub source: Option<String>,
    pub full: bool,
    pub state: JobState,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub progress: JobProgress,
    /// Per-outcome counts over all sources of the job.
    pub counts: Counts,
    /// Each source's report (failed and skipped documents with reasons).
    pub reports: Vec<Report>,
    pub error: Option<String>,
}

/// Why a job could not be started.
#[derive(Debug, Clone, PartialEq)]
pub enum StartError {
    UnknownSource(String),
    /// Another job is running; its id.
    Busy(String),
}

pub struct Jobs {
    dir: PathBuf,
    jobs: Mutex<BTreeMap<String, Job>>,
}

impl Jobs {
    /// Loads persisted jobs; any that were queued or running are marked interrupted.
    pub fn open(data_dir: &std::path::Path) -> anyhow::Result<Arc<Jobs>> {
        let dir = data_dir.join("state").join("jobs");
        std::fs::create_dir_all(&dir)?;
        let mut jobs = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(mut job) = serde_json::from_slice::<Job>(&bytes) else {
                tracing::warn!(file = %path.display(), "ignoring an unreadable job file");
                continue;
            };
            if matches!(job.state, JobState::Queued | JobState::Running) {
                job.state = JobState::Interrupted;
                job.error = Some("cairn stopped while this job ran; start it again to resume (unchanged documents are skipped)".into());
                job.finished_at = Some(Utc::now().to_rfc3339());
            }
            jobs.insert(job.id.clone(), job);
        }
        let this = Arc::new(Jobs {
            dir,
            jobs: Mutex::new(jobs),
        });
        let snapshot: Vec<Job> = this.list(usize::MAX);
        for job in &snapshot {
            this.persist(job);
        }
        Ok(this)
    }

    fn persist(&self, job: &Job) {
        let tmp = self.dir.join(format!(".{}.tmp", job.id));
        let dst = self.dir.join(format!("{}.json", job.id));
        let res = serde_json::to_vec_pretty(job)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &dst));
        if let Err(e) = res {
            tracing::error!(job = %job.id, error = %e, "cannot persist job state; check the data directory's free space and permissions");
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Job)) {
        let snapshot = {
            let mut jobs = match self.jobs.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let Some(job) = jobs.get_mut(id) else { return };
            f(job);
            job.clone()
        };
        self.persist(&snapshot);
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        let jobs = match self.jobs.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        jobs.get(id).cloned()
    }

    /// The most recent jobs first.
    pub fn list(&self, limit: usize) -> Vec<Job> {
        let jobs = match self.jobs.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut v: Vec<Job> = jobs.values().cloned().collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        v.truncate(limit);
        v
    }

    pub fn running(&self) -> Option<Job> {
        self.list(usize::MAX)
            .into_iter()
            .find(|j| matches!(j.state, JobState::Queued | JobState::Running))
    }

    /// Starts a job in the background and returns it (state `queued`).
    pub fn start(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        source: Option<String>,
        full: bool,
    ) -> Result<Job, StartError> {
        if let Some(name) = &source
            && !engine.config.sources.iter().any(|s| s.name() == name)
        {
            return Err(StartError::UnknownSource(name.clone()));
        }
        let job = {
            let mut jobs = match self.jobs.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if let Some(busy) = jobs
                .values()
                .find(|j| matches!(j.state, JobState::Queued | JobState::Running))
            {
                return Err(StartError::Busy(busy.id.clone()));
            }
            let job = Job {
                id: uuid::Uuid::new_v4().to_string(),
                source,
                full,
                state: JobState::Queued,
                created_at: Utc::now().to_rfc3339(),
                started_at: None,
                finished_at: None,
                progress: JobProgress::default(),
                counts: Counts::default(),
                reports: Vec::new(),
                error: None,
            };
            jobs.insert(job.id.clone(), job.clone());
            job
        };
        self.persist(&job);
        let this = self.clone();
        let id = job.id.clone();
        let src = job.source.clone();
        tokio::task::spawn_blocking(move || {
            this.update(&id, |j| {
                j.state = JobState::Running;
                j.started_at = Some(Utc::now().to_rfc3339());
            });
            let cancel = AtomicBool::new(false);
            let last_persist = Mutex::new(std::time::Instant::now());
            let result = engine.ingest(
                src.as_deref(),
                full,
                &|name, p| {
                    let progress = JobProgress {
                        source: Some(name.to_string()),
                        listed: p.listed,
                        processed: p.processed,
                        chunks: p.chunks,
                    };
                    // In memory on every document; on disk at most every second.
                    let persist = match last_persist.lock() {
                        Ok(mut t) if t.elapsed().as_secs() >= 1 => {
                            *t = std::time::Instant::now();
                            true
                        }
                        _ => false,
                    };
                    if persist {
                        this.update(&id, |j| j.progress = progress);
                    } else if let Ok(mut jobs) = this.jobs.lock()
                        && let Some(j) = jobs.get_mut(&id)
                    {
                        j.progress = progress;
                    }
                },
                &cancel,
            );
            this.update(&id, |j| {
                j.finished_at = Some(Utc::now().to_rfc3339());
                match result {
                    Ok(reports) => {
                        let mut c = Counts::default();
                        for r in &reports {
                            c.indexed += r.counts.indexed;
                            c.unchanged += r.counts.unchanged;
                            c.skipped += r.counts.skipped;
                            c.failed += r.counts.failed;
                            c.deleted += r.counts.deleted;
                            c.chunks += r.counts.chunks;
                        }
                        j.counts = c;
                        // A run whose generation the quality gate refused changed nothing:
                        // the job failed, and says why.
                        let refused: Vec<String> = reports
                            .iter()
                            .filter_map(|r| {
                                let g = r.gate.as_ref().filter(|g| !g.passed)?;
                                Some(format!("source `{}`: {}", r.source, g.reason))
                            })
                            .collect();
                        j.reports = reports;
                        if refused.is_empty() {
                            j.state = JobState::Succeeded;
                        } else {
                            j.state = JobState::Failed;
                            j.error = Some(format!("quality gate: {}", refused.join("; ")));
                        }
                    }
                    Err(e) => {
                        // An operator must act (disk full, index unwritable): say so in the log
                        // as well as in the job.
                        tracing::error!(job = %j.id, error = %format!("{e:#}"), "reindex job failed");
                        j.state = JobState::Failed;
                        j.error = Some(format!("{e:#}"));
                    }
                }
            });
        });
        Ok(job)
    }
}
