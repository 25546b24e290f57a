//! Reindex jobs: started by `POST /admin/reindex`, run in the background one at a time,
//! survive client disconnects. Where they live is a [`JobStore`]:
//! - embedded index: JSON files in the data directory, run by this process; a restart reports
//!   a job that was running as `interrupted`;
//! - PostgreSQL backend: rows shared by every replica (`cairn_pg`'s jobs table). Any replica
//!   queues a job, each replica's worker thread claims queued jobs (exactly one wins), every
//!   replica reads the same list, and a job whose replica died is marked `interrupted` by the
//!   next replica that looks.
//!
//! An interrupted job can simply be started again: ingest is incremental, so rerunning resumes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use cairn_ingest::pipeline::{Counts, Report};

use crate::engine::Engine;

/// How often an idle replica looks for queued jobs and for jobs whose replica died
/// (PostgreSQL store); a job queued through this replica wakes it at once.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    /// The run finished, but some documents failed (each with its error in `reports`); the
    /// rest were indexed. `cairn ingest` exits 1 for such a run.
    SucceededWithFailures,
    Failed,
    Interrupted,
}

impl JobState {
    /// The state as the API and the jobs table spell it.
    fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::SucceededWithFailures => "succeeded_with_failures",
            JobState::Failed => "failed",
            JobState::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobProgress {
    pub source: Option<String>,
    pub listed: usize,
    pub processed: usize,
    pub chunks: usize,
}

/// What started a job: an admin's request, or a source's `refresh` schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `POST /admin/reindex` (and jobs recorded before triggers were).
    #[default]
    Manual,
    /// A source's `refresh` came due.
    Schedule,
}

/// A job as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// The source, or none for every source.
    pub source: Option<String>,
    pub full: bool,
    /// What started it.
    #[serde(default)]
    pub trigger: Trigger,
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
    /// A stable name for `error` when it has one (`store_stalled`, `index_old_format`, … from
    /// the index), so clients can act on it without parsing the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// With the PostgreSQL backend, the replica that claimed the job (`host:pid:random`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// Why a job could not be started.
#[derive(Debug, Clone, PartialEq)]
pub enum StartError {
    UnknownSource(String),
    /// Another job is running; its id.
    Busy(String),
    /// The job store could not be written (PostgreSQL unreachable); the reason.
    Store(String),
}

/// Where jobs live.
enum JobStore {
    /// JSON files under `<data_dir>/state/jobs`, with every job also in memory.
    Files {
        dir: PathBuf,
        jobs: Mutex<BTreeMap<String, Job>>,
    },
    /// Rows in PostgreSQL shared by every replica; `replica` names this process.
    Postgres {
        pg: Arc<cairn_pg::PgIndex>,
        replica: String,
    },
}

pub struct Jobs {
    store: JobStore,
    /// Wakes this replica's worker (PostgreSQL store) when a job was queued through it.
    wake: Mutex<Option<mpsc::Sender<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn interrupted_reason(shared: bool) -> String {
    if shared {
        "the cairn replica running this job stopped; start it again to resume (unchanged documents are skipped)".into()
    } else {
        "cairn stopped while this job ran; start it again to resume (unchanged documents are skipped)".into()
    }
}

/// This process's name in the jobs table: `host:pid:random` (the random part tells apart
/// two processes that got the same pid, e.g. in containers).
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &random[..8])
}

/// Applies `f` to a job's stored JSON (unchanged, logged, when it cannot be read).
fn patch_json(value: serde_json::Value, f: impl FnOnce(&mut Job)) -> serde_json::Value {
    match serde_json::from_value::<Job>(value.clone()) {
        Ok(mut job) => {
            f(&mut job);
            serde_json::to_value(&job).unwrap_or(value)
        }
        Err(e) => {
            tracing::warn!(error = %e, "a stored job cannot be read by this cairn; left as it is");
            value
        }
    }
}

fn jobs_from_json(values: Vec<serde_json::Value>) -> Vec<Job> {
    values
        .into_iter()
        .filter_map(|v| match serde_json::from_value(v) {
            Ok(job) => Some(job),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a stored job this cairn cannot read");
                None
            }
        })
        .collect()
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
                job.error = Some(interrupted_reason(false));
                job.finished_at = Some(Utc::now().to_rfc3339());
            }
            jobs.insert(job.id.clone(), job);
        }
        let this = Arc::new(Jobs {
            store: JobStore::Files {
                dir,
                jobs: Mutex::new(jobs),
            },
            wake: Mutex::new(None),
        });
        for job in &this.list(usize::MAX)? {
            this.persist(job);
        }
        Ok(this)
    }

    /// The engine's job store: shared through PostgreSQL with that backend (and then a worker
    /// thread that claims and runs queued jobs, stopping when the returned value is dropped),
    /// otherwise files in the data directory.
    pub fn open_for(engine: &Arc<Engine>) -> anyhow::Result<Arc<Jobs>> {
        let Some(pg) = engine.postgres() else {
            return Jobs::open(&engine.config.data_dir);
        };
        let (tx, rx) = mpsc::channel();
        let this = Arc::new(Jobs {
            store: JobStore::Postgres {
                pg: pg.clone(),
                replica: replica_id(),
            },
            wake: Mutex::new(Some(tx)),
        });
        let (jobs, engine) = (Arc::downgrade(&this), Arc::downgrade(engine));
        std::thread::Builder::new()
            .name("cairn-jobs".into())
            .spawn(move || worker(&jobs, &engine, &rx))?;
        Ok(this)
    }

    /// Writes a job's file (files store).
    fn persist(&self, job: &Job) {
        let JobStore::Files { dir, .. } = &self.store else {
            return;
        };
        let tmp = dir.join(format!(".{}.tmp", job.id));
        let dst = dir.join(format!("{}.json", job.id));
        let res = serde_json::to_vec_pretty(job)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &dst));
        if let Err(e) = res {
            tracing::error!(job = %job.id, error = %e, "cannot persist job state; check the data directory's free space and permissions");
        }
    }

    pub fn get(&self, id: &str) -> anyhow::Result<Option<Job>> {
        match &self.store {
            JobStore::Files { jobs, .. } => Ok(lock(jobs).get(id).cloned()),
            JobStore::Postgres { pg, .. } => {
                Ok(jobs_from_json(pg.job(id)?.into_iter().collect()).pop())
            }
        }
    }

    /// The most recent jobs first.
    pub fn list(&self, limit: usize) -> anyhow::Result<Vec<Job>> {
        match &self.store {
            JobStore::Files { jobs, .. } => {
                let mut v: Vec<Job> = lock(jobs).values().cloned().collect();
                v.sort_by(|a, b| b.created_at.cmp(&a.created_at));
                v.truncate(limit);
                Ok(v)
            }
            JobStore::Postgres { pg, .. } => Ok(jobs_from_json(pg.jobs(limit)?)),
        }
    }

    /// The queued or running job, if any.
    pub fn running(&self) -> anyhow::Result<Option<Job>> {
        match &self.store {
            JobStore::Files { .. } => Ok(self
                .list(usize::MAX)?
                .into_iter()
                .find(|j| matches!(j.state, JobState::Queued | JobState::Running))),
            JobStore::Postgres { pg, .. } => {
                Ok(jobs_from_json(pg.active_job()?.into_iter().collect()).pop())
            }
        }
    }

    /// Queues a job and returns it (state `queued`): this process runs it in the background
    /// (files store), or the first replica to claim it does (PostgreSQL store). Blocking.
    pub fn start(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        source: Option<String>,
        full: bool,
        trigger: Trigger,
    ) -> Result<Job, StartError> {
        if let Some(name) = &source
            && !engine.config.sources.iter().any(|s| s.name() == name)
        {
            return Err(StartError::UnknownSource(name.clone()));
        }
        let job = Job {
            id: uuid::Uuid::new_v4().to_string(),
            source,
            full,
            trigger,
            state: JobState::Queued,
            created_at: Utc::now().to_rfc3339(),
            started_at: None,
            finished_at: None,
            progress: JobProgress::default(),
            counts: Counts::default(),
            reports: Vec::new(),
            error: None,
            error_code: None,
            replica: None,
        };
        match &self.store {
            JobStore::Files { jobs, .. } => {
                {
                    let mut jobs = lock(jobs);
                    if let Some(busy) = jobs
                        .values()
                        .find(|j| matches!(j.state, JobState::Queued | JobState::Running))
                    {
                        return Err(StartError::Busy(busy.id.clone()));
                    }
                    jobs.insert(job.id.clone(), job.clone());
                }
                self.persist(&job);
                let this = self.clone();
                let mut running = job.clone();
                tokio::task::spawn_blocking(move || {
                    running.state = JobState::Running;
                    running.started_at = Some(Utc::now().to_rfc3339());
                    this.put(&running, true);
                    let cancel = AtomicBool::new(false);
                    let save = |j: &Job, durable: bool| this.put(j, durable);
                    let finished = run(&engine, running, &save, &cancel);
                    this.put(&finished, true);
                    announce(&engine, &finished);
                });
            }
            JobStore::Postgres { pg, .. } => {
                let value =
                    serde_json::to_value(&job).map_err(|e| StartError::Store(e.to_string()))?;
                match pg.insert_job(&job.id, job.source.as_deref(), &value) {
                    Ok(Ok(())) => {}
                    Ok(Err(busy)) => return Err(StartError::Busy(busy)),
                    Err(e) => return Err(StartError::Store(e.to_string())),
                }
                if let Some(wake) = lock(&self.wake).as_ref() {
                    let _ = wake.send(());
                }
            }
        }
        Ok(job)
    }

    /// Records a job's state in memory and, when `durable`, in its file (files store).
    fn put(&self, job: &Job, durable: bool) {
        if let JobStore::Files { jobs, .. } = &self.store {
            lock(jobs).insert(job.id.clone(), job.clone());
            if durable {
                self.persist(job);
            }
        }
    }

    /// One look at the shared jobs (PostgreSQL store): marks jobs whose replica died
    /// interrupted, then claims and runs a queued job, if any.
    fn tick(&self, engine: &Engine) {
        let JobStore::Postgres { pg, replica } = &self.store else {
            return;
        };
        let finished_at = Utc::now().to_rfc3339();
        match pg.interrupt_orphaned_jobs(|v| {
            patch_json(v, |j| {
                j.state = JobState::Interrupted;
                j.error = Some(interrupted_reason(true));
                j.finished_at = Some(finished_at.clone());
            })
        }) {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(job = %id, "a job's replica stopped while it ran; marked interrupted");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot check for interrupted jobs"),
        }
        let claimed = pg.claim_job(replica, |v| {
            patch_json(v, |j| {
                j.state = JobState::Running;
                j.started_at = Some(Utc::now().to_rfc3339());
                j.replica = Some(replica.clone());
            })
        });
        let (claim, value) = match claimed {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a queued job");
                return;
            }
        };
        let Some(job) = jobs_from_json(vec![value.clone()]).pop() else {
            // Written by another cairn version: not run here, and not left claimed forever.
            let _ = claim.update(JobState::Failed.as_str(), &value);
            return;
        };
        tracing::info!(job = %job.id, source = ?job.source, "running a queued job");
        let write = |j: &Job| -> bool {
            let value = match serde_json::to_value(j) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(job = %j.id, error = %e, "cannot encode a job");
                    return true;
                }
            };
            match claim.update(j.state.as_str(), &value) {
                Ok(owned) => owned,
                Err(e) => {
                    tracing::warn!(job = %j.id, error = %e, "cannot record a job's progress");
                    true
                }
            }
        };
        let cancel = AtomicBool::new(false);
        let save = |j: &Job, durable: bool| {
            if durable && !cancel.load(Ordering::Relaxed) && !write(j) {
                tracing::warn!(job = %j.id, "another replica marked this job interrupted; stopping it");
                cancel.store(true, Ordering::Relaxed);
            }
        };
        let finished = run(engine, job, &save, &cancel);
        if !cancel.load(Ordering::Relaxed) {
            write(&finished);
            announce(engine, &finished);
        }
    }
}

/// A replica's job worker (PostgreSQL store): looks every [`POLL`] or when woken; stops when
/// the jobs or the engine are gone.
fn worker(jobs: &Weak<Jobs>, engine: &Weak<Engine>, wake: &mpsc::Receiver<()>) {
    loop {
        if let Err(mpsc::RecvTimeoutError::Disconnected) = wake.recv_timeout(POLL) {
            return;
        }
        let (Some(jobs), Some(engine)) = (jobs.upgrade(), engine.upgrade()) else {
            return;
        };
        jobs.tick(&engine);
    }
}

/// Emits `job.completed` (succeeded, with or without failed documents) or `job.failed` for a
/// finished job, its JSON as the event's data.
fn announce(engine: &Engine, job: &Job) {
    let event = match job.state {
        JobState::Succeeded | JobState::SucceededWithFailures => "job.completed",
        JobState::Failed => "job.failed",
        JobState::Queued | JobState::Running | JobState::Interrupted => return,
    };
    match serde_json::to_value(job) {
        Ok(data) => engine.webhooks.emit(event, data),
        Err(e) => tracing::warn!(job = %job.id, error = %e, "cannot encode a job for its webhook"),
    }
}

/// The stable code of the index error behind `e`, if an index error caused it (through the
/// ingest pipeline or directly): `store_stalled`, `index_old_format`, ….
pub fn error_code(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|cause| {
        if let Some(index) = cause.downcast_ref::<cairn_index::IndexError>() {
            return Some(index.code());
        }
        match cause.downcast_ref::<cairn_ingest::IngestError>() {
            Some(cairn_ingest::IngestError::Index(index)) => Some(index.code()),
            _ => None,
        }
    })
}

/// Runs `f`, turning a panic into an error, so a bug in one run ends its job as `failed`
/// (with the reason) instead of leaving it `running` and refusing every later job.
fn without_panics<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(anyhow::anyhow!(
            "the run stopped on an internal error ({what}); this is a bug in cairn, please \
             report it; committed work is kept and the job can be started again"
        ))
    })
}

/// Runs a job that is `running` to its end (or until `cancel` is set) and returns it
/// finished. `save` receives each progress change; `durable` marks those worth writing
/// through (at most one a second).
fn run(engine: &Engine, job: Job, save: &(dyn Fn(&Job, bool) + Sync), cancel: &AtomicBool) -> Job {
    let (source, full) = (job.source.clone(), job.full);
    let current = Mutex::new(job);
    let last_persist = Mutex::new(Instant::now());
    let result = without_panics(|| {
        engine.ingest(
            source.as_deref(),
            full,
            &|name, p| {
                let progress = JobProgress {
                    source: Some(name.to_string()),
                    listed: p.listed,
                    processed: p.processed,
                    chunks: p.chunks,
                };
                // In memory on every document; written through at most every second.
                let durable = {
                    let mut t = lock(&last_persist);
                    let due = t.elapsed().as_secs() >= 1;
                    if due {
                        *t = Instant::now();
                    }
                    due
                };
                let mut j = lock(&current);
                j.progress = progress;
                save(&j, durable);
            },
            cancel,
        )
    });
    let mut j = match current.into_inner() {
        Ok(j) => j,
        Err(p) => p.into_inner(),
    };
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
            // A run whose generation the quality gate refused changed nothing: the job
            // failed, and says why.
            let refused: Vec<String> = reports
                .iter()
                .filter_map(|r| {
                    let g = r.gate.as_ref().filter(|g| !g.passed)?;
                    Some(format!("source `{}`: {}", r.source, g.reason))
                })
                .collect();
            j.reports = reports;
            if !refused.is_empty() {
                j.state = JobState::Failed;
                j.error = Some(format!("quality gate: {}", refused.join("; ")));
            } else if j.counts.failed > 0 {
                j.state = JobState::SucceededWithFailures;
            } else {
                j.state = JobState::Succeeded;
            }
        }
        Err(e) => {
            // An operator must act (disk full, index unwritable): say so in the log as well
            // as in the job.
            tracing::error!(job = %j.id, error = %format!("{e:#}"), "reindex job failed");
            j.state = JobState::Failed;
            j.error = Some(format!("{e:#}"));
            j.error_code = error_code(&e).map(str::to_string);
        }
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_error_gives_its_stable_code_through_the_pipeline_and_context() {
        let stalled = cairn_index::IndexError::Stalled {
            operation: "commit a generation",
            secs: 120,
        };
        let through_ingest = anyhow::Error::from(cairn_ingest::IngestError::from(stalled))
            .context("ingesting source `docs`");
        assert_eq!(error_code(&through_ingest), Some("store_stalled"));
        let old = cairn_index::IndexError::OldFormat {
            path: "data/index".into(),
            found: "format 1".into(),
            expected: 2,
        };
        let direct = anyhow::Error::from(old).context("opening the index");
        assert_eq!(error_code(&direct), Some("index_old_format"));
        assert_eq!(error_code(&anyhow::anyhow!("disk full")), None);
    }

    #[test]
    fn a_panicking_run_becomes_an_error_that_says_what_happened() {
        let err = without_panics::<()>(|| panic!("index on fire")).expect_err("an error");
        let text = format!("{err:#}");
        assert!(text.contains("index on fire"), "{text}");
        assert!(text.contains("can be started again"), "{text}");
        let owned = without_panics::<()>(|| panic!("{} documents", 3)).expect_err("an error");
        assert!(format!("{owned:#}").contains("3 documents"));
        assert_eq!(without_panics(|| Ok(7)).expect("no panic"), 7);
        let plain = without_panics::<()>(|| Err(anyhow::anyhow!("disk full"))).expect_err("err");
        assert_eq!(format!("{plain:#}"), "disk full");
    }
}
