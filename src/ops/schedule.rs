//! Scheduled source syncs (`[[sources]] refresh = "15m"`): each such source is synced on its
//! own as an ordinary reindex job with `"trigger": "schedule"`, its next run a jittered
//! `refresh` after its last sync.
//!
//! One run at a time: the job store runs at most one job per deployment, so a due source
//! whose turn comes while another job holds the lock is skipped with the reason recorded and
//! tried again a `refresh` later. With the PostgreSQL backend every replica keeps a schedule
//! and reads the same last sync (the shared source state) before starting one, and the shared
//! jobs table admits one queued job, so exactly one replica runs each scheduled sync.
//!
//! Must not: run a sync itself (it queues jobs, which report through their record).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use cairn_ingest::pipeline::Report;

use crate::engine::Engine;
use crate::ops::jobs::{Jobs, StartError, Trigger};

/// How often the schedule is looked at.
const TICK: Duration = Duration::from_millis(500);
/// The most a run is moved by jitter (and at most a tenth of its `refresh`).
const MAX_JITTER: Duration = Duration::from_secs(60);

/// A skipped run: when, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skip {
    pub at: String,
    pub reason: String,
}

/// A source's schedule as `/admin/sources` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleView {
    /// The `refresh` as configured.
    pub refresh: String,
    pub next_run: String,
    /// When the source last finished a sync (scheduled or not), on any replica.
    pub last_run: Option<String>,
    /// The last job this schedule started (or found running for it on another replica).
    pub last_job: Option<String>,
    pub last_skipped: Option<Skip>,
}

struct Entry {
    every: Duration,
    view: ScheduleView,
    next: DateTime<Utc>,
}

/// The schedules of every source with a `refresh`.
pub struct Schedules {
    entries: Mutex<BTreeMap<String, Entry>>,
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A random share of a tenth of `every`, at most [`MAX_JITTER`].
fn jitter(every: Duration) -> Duration {
    (every / 10).min(MAX_JITTER).mul_f64(rand::random::<f64>())
}

/// `t + d`, saturating at the end of time (a `refresh` of centuries must not panic).
fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The next run after a sync (or a skip) at `t`: `every` later, jittered.
fn after(t: DateTime<Utc>, every: Duration) -> DateTime<Utc> {
    plus(plus(t, every), jitter(every))
}

/// When `source` last finished a sync, from its last report (shared by replicas).
fn last_sync(engine: &Engine, source: &str) -> Option<DateTime<Utc>> {
    finished(&engine.last_report(source)?)
}

/// When a sync report's run finished.
pub fn finished(report: &Report) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&report.finished_at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Schedules {
    /// The schedules of `engine`'s sources with a `refresh`, and (on a tokio runtime, when
    /// there are any) the task that starts their jobs; it stops when the returned value, the
    /// engine or the jobs are dropped. Reads nothing (a server-backed source state cannot be
    /// read on a runtime thread).
    pub fn start(engine: &Arc<Engine>, jobs: &Arc<Jobs>) -> Arc<Schedules> {
        let now = Utc::now();
        let mut entries = BTreeMap::new();
        for source in &engine.config.sources {
            let (Some(every), Some(text)) = (source.refresh(), source.refresh_text()) else {
                continue;
            };
            // Due at once: the first look (off the runtime, where the source state may be
            // read) finds the last sync and moves the run after it.
            let next = plus(now, jitter(every));
            let view = ScheduleView {
                refresh: text.to_string(),
                next_run: stamp(next),
                last_run: None,
                last_job: None,
                last_skipped: None,
            };
            entries.insert(source.name().to_string(), Entry { every, view, next });
        }
        let any = !entries.is_empty();
        let this = Arc::new(Schedules {
            entries: Mutex::new(entries),
        });
        if any && let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = (
                Arc::downgrade(&this),
                Arc::downgrade(engine),
                Arc::downgrade(jobs),
            );
            rt.spawn(ticker(weak));
        }
        this
    }

    /// `source`'s schedule, if it has one, with `last_run` as of `last_sync` (when the source
    /// last finished a sync, from its report): the schedule learns of a sync only at its next
    /// turn, so one that ended since (this schedule's own job, a manual one, another
    /// replica's) is taken from there.
    pub fn view(&self, source: &str, last_sync: Option<DateTime<Utc>>) -> Option<ScheduleView> {
        let mut view = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.get(source).map(|e| e.view.clone())?
        };
        if let Some(last) = last_sync.map(stamp)
            && view.last_run.as_ref().is_none_or(|known| *known < last)
        {
            view.last_run = Some(last);
        }
        Some(view)
    }

    /// Starts the job of every due source (blocking: reads job and source state).
    fn tick(&self, engine: &Arc<Engine>, jobs: &Arc<Jobs>) {
        let now = Utc::now();
        let due: Vec<String> = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .filter(|(_, e)| e.next <= now)
                .map(|(name, _)| name.clone())
                .collect()
        };
        for name in due {
            let last = last_sync(engine, &name);
            let turn = run_due(engine, jobs, &name, last);
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = entries.get_mut(&name) {
                entry.view.last_run = last.map(stamp).or(entry.view.last_run.take());
                entry.apply(turn, Utc::now());
            }
        }
    }
}

/// What a due source's turn came to.
enum Turn {
    /// Another replica (or this one) synced it since the schedule was set: the time of that
    /// sync.
    SyncedAt(DateTime<Utc>),
    /// This schedule's job (started here or on another replica) is still queued or running:
    /// looked at again next tick.
    Running(String),
    Started(String),
    Skipped(String),
}

/// Decides and starts a due source's run; `last` is when it last finished a sync.
fn run_due(
    engine: &Arc<Engine>,
    jobs: &Arc<Jobs>,
    name: &str,
    last: Option<DateTime<Utc>>,
) -> Turn {
    let every = engine
        .config
        .sources
        .iter()
        .find(|s| s.name() == name)
        .and_then(|s| s.refresh())
        .unwrap_or(Duration::MAX);
    if let Some(last) = last
        && plus(last, every) > Utc::now()
    {
        return Turn::SyncedAt(last);
    }
    match jobs.start(
        engine.clone(),
        Some(name.to_string()),
        false,
        Trigger::Schedule,
    ) {
        Ok(job) => {
            tracing::info!(source = name, job = %job.id, "scheduled sync started");
            Turn::Started(job.id)
        }
        Err(StartError::Busy(id)) => match jobs.get(&id) {
            Ok(Some(job))
                if job.trigger == Trigger::Schedule && job.source.as_deref() == Some(name) =>
            {
                Turn::Running(id)
            }
            _ => Turn::Skipped(format!(
                "job {id} was queued or running (one job runs at a time); tried again at the next run"
            )),
        },
        Err(StartError::UnknownSource(n)) => Turn::Skipped(format!("no source named `{n}`")),
        Err(StartError::Store(e)) => Turn::Skipped(format!("the job store failed: {e}")),
    }
}

impl Entry {
    /// Sets the next run after a turn, and records it.
    fn apply(&mut self, turn: Turn, now: DateTime<Utc>) {
        match turn {
            Turn::SyncedAt(last) => {
                self.next = after(last, self.every);
            }
            Turn::Running(id) => {
                self.view.last_job = Some(id);
                self.next = plus(now, TICK);
            }
            Turn::Started(id) => {
                self.view.last_job = Some(id);
                self.next = after(now, self.every);
            }
            Turn::Skipped(reason) => {
                tracing::info!(next = %stamp(after(now, self.every)), reason = %reason, "scheduled sync skipped");
                self.view.last_skipped = Some(Skip {
                    at: stamp(now),
                    reason,
                });
                self.next = after(now, self.every);
            }
        }
        self.view.next_run = stamp(self.next);
    }
}

async fn ticker(weak: (Weak<Schedules>, Weak<Engine>, Weak<Jobs>)) {
    loop {
        tokio::time::sleep(TICK).await;
        let (Some(this), Some(engine), Some(jobs)) =
            (weak.0.upgrade(), weak.1.upgrade(), weak.2.upgrade())
        else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || this.tick(&engine, &jobs)).await;
    }
}
