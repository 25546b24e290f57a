//! Threads: the conversations cairn keeps so a bot may send only the new question. Owns their
//! record ([`Thread`], [`ThreadTurn`]), the `[threads]` settings (how long an idle thread lives,
//! how many turns it keeps), where they are kept ([`ThreadStore`]: the redb file of the
//! embedded backend here, PostgreSQL's `threads` table — which every replica shares — in the
//! engine), and [`Threads`], which applies the settings over a store: an expired thread is
//! gone (purged when met, and by a sweep when threads start), a full one drops its oldest turn.
//!
//! Must not: depend on the engine or HTTP (the engine holds this; the surface decides who may
//! see a thread and what a missing one answers).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::section::{Check, ConfigError};
use crate::providers::{Message, Role};

/// `[threads]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawThreads {
    /// How long a thread lives after its last turn (a humantime duration: "30d", "12h").
    pub ttl: String,
    /// Turns a thread keeps; a turn beyond it drops the oldest.
    pub max_turns: usize,
}

impl Default for RawThreads {
    fn default() -> Self {
        RawThreads {
            ttl: "30d".into(),
            max_turns: 50,
        }
    }
}

/// `[threads]` checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadSettings {
    pub ttl: Duration,
    pub max_turns: usize,
}

impl RawThreads {
    /// The settings, or the key that is wrong and why.
    pub fn validate(&self, cx: &Check) -> Result<ThreadSettings, ConfigError> {
        let ttl = humantime::parse_duration(self.ttl.trim()).map_err(|e| {
            cx.key_err(
                "threads.ttl",
                format!(
                    "`{}` is not a duration ({e}); write it like \"30d\" or \"12h\"",
                    self.ttl
                ),
            )
        })?;
        if ttl.is_zero() || chrono::Duration::from_std(ttl).is_err() {
            return Err(cx.key_err(
                "threads.ttl",
                "must be longer than 0 and at most a few thousand years",
            ));
        }
        if self.max_turns == 0 {
            return Err(cx.key_err("threads.max_turns", "must be at least 1"));
        }
        Ok(ThreadSettings {
            ttl,
            max_turns: self.max_turns,
        })
    }
}

/// One answered question of a thread.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadTurn {
    pub question: String,
    pub answer: String,
    pub citations: Vec<Value>,
    pub trace_id: String,
}

/// A stored thread.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Thread {
    /// The caller's key name that started it.
    pub owner: String,
    pub created_at: DateTime<Utc>,
    /// When its last turn was added (its start until then); it expires `ttl` after this.
    #[serde(default)]
    pub last_active: Option<DateTime<Utc>>,
    pub turns: Vec<ThreadTurn>,
}

impl Thread {
    /// A thread `owner` starts now, without turns.
    pub fn new(owner: &str) -> Thread {
        Thread {
            owner: owner.to_string(),
            created_at: Utc::now(),
            last_active: None,
            turns: Vec::new(),
        }
    }

    /// When its last turn was added, or when it started.
    pub fn active_at(&self) -> DateTime<Utc> {
        self.last_active.unwrap_or(self.created_at)
    }

    /// Whether it has been idle for longer than `ttl` at `now`.
    pub fn expired(&self, ttl: Duration, now: DateTime<Utc>) -> bool {
        chrono::Duration::from_std(ttl).is_ok_and(|ttl| now - self.active_at() > ttl)
    }

    /// Appends `turn` at `now`, dropping the oldest turns beyond `max_turns`.
    pub fn push(&mut self, turn: ThreadTurn, max_turns: usize, now: DateTime<Utc>) {
        self.turns.push(turn);
        let over = self.turns.len().saturating_sub(max_turns);
        self.turns.drain(..over);
        self.last_active = Some(now);
    }

    /// The turns as conversation messages, at most the newest `max_messages` of them.
    pub fn messages(&self, max_messages: usize) -> Vec<Message> {
        let all: Vec<Message> = self
            .turns
            .iter()
            .flat_map(|t| {
                [
                    Message {
                        role: Role::User,
                        content: t.question.clone(),
                    },
                    Message {
                        role: Role::Assistant,
                        content: t.answer.clone(),
                    },
                ]
            })
            .collect();
        all[all.len().saturating_sub(max_messages)..].to_vec()
    }
}

/// Where threads are kept. Calls block (the caller runs them where blocking is allowed).
pub trait ThreadStore: Send + Sync {
    /// Thread `id`, if stored.
    fn get(&self, id: &str) -> Result<Option<Thread>, String>;
    /// Stores `thread` as `id`, replacing it.
    fn put(&self, id: &str, thread: &Thread) -> Result<(), String>;
    /// Erases thread `id`; whether it was stored.
    fn remove(&self, id: &str) -> Result<bool, String>;
    /// Erases every thread last active before `before`; how many.
    fn purge_idle(&self, before: DateTime<Utc>) -> Result<usize, String>;
}

/// Threads in the data directory's redb file (`state/threads.redb`).
pub struct ThreadFile(cairn_index::ThreadStore);

impl ThreadFile {
    /// Opens (or creates) the thread file `path`.
    pub fn open(path: &Path) -> Result<ThreadFile, String> {
        cairn_index::ThreadStore::open(path)
            .map(ThreadFile)
            .map_err(|e| e.to_string())
    }
}

impl ThreadStore for ThreadFile {
    fn get(&self, id: &str) -> Result<Option<Thread>, String> {
        match self.0.get(id).map_err(|e| e.to_string())? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("thread `{id}` is unreadable: {e}")),
            None => Ok(None),
        }
    }

    fn put(&self, id: &str, thread: &Thread) -> Result<(), String> {
        let bytes = serde_json::to_vec(thread).map_err(|e| e.to_string())?;
        let active = thread.active_at().timestamp_millis();
        self.0.put(id, &bytes, active).map_err(|e| e.to_string())
    }

    fn remove(&self, id: &str) -> Result<bool, String> {
        self.0.remove(id).map_err(|e| e.to_string())
    }

    fn purge_idle(&self, before: DateTime<Utc>) -> Result<usize, String> {
        self.0
            .purge_idle(before.timestamp_millis())
            .map_err(|e| e.to_string())
    }
}

/// How often at most expired threads are swept (when a thread starts); sooner with a shorter
/// `ttl`.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// The threads of a deployment: a store under the `[threads]` settings.
pub struct Threads {
    store: Box<dyn ThreadStore>,
    settings: ThreadSettings,
    /// When expired threads were last swept (`None`: not yet).
    swept: Mutex<Option<Instant>>,
}

impl Threads {
    pub fn new(store: Box<dyn ThreadStore>, settings: ThreadSettings) -> Threads {
        Threads {
            store,
            settings,
            swept: Mutex::new(None),
        }
    }

    /// Thread `id` as `owner` sees it: `None` when it is not stored, has expired (it is
    /// purged then) or belongs to another owner.
    pub fn load(&self, id: &str, owner: &str) -> Result<Option<Thread>, String> {
        let Some(thread) = self.store.get(id)? else {
            return Ok(None);
        };
        if thread.expired(self.settings.ttl, Utc::now()) {
            self.store.remove(id)?;
            return Ok(None);
        }
        Ok((thread.owner == owner).then_some(thread))
    }

    /// A new thread for `owner` (stored with its first turn), with its id; sweeps expired
    /// threads when a sweep is due.
    pub fn start(&self, owner: &str) -> (String, Thread) {
        self.sweep_if_due();
        (uuid::Uuid::new_v4().to_string(), Thread::new(owner))
    }

    /// Appends `turn` to thread `id` as stored now (or to `started`, a new thread), within
    /// `[threads] max_turns`. A thread erased or purged while the answer ran stays erased.
    pub fn append(&self, id: &str, started: &Thread, turn: ThreadTurn) -> Result<(), String> {
        let mut thread = match self.store.get(id)? {
            Some(stored) if stored.owner == started.owner => stored,
            None if started.turns.is_empty() => started.clone(),
            _ => return Ok(()),
        };
        thread.push(turn, self.settings.max_turns, Utc::now());
        self.store.put(id, &thread)
    }

    /// Erases thread `id`; whether it was stored.
    pub fn erase(&self, id: &str) -> Result<bool, String> {
        self.store.remove(id)
    }

    /// Purges the threads idle longer than `ttl`, at most every [`SWEEP_EVERY`] (or `ttl`).
    fn sweep_if_due(&self) {
        let every = SWEEP_EVERY.min(self.settings.ttl);
        {
            let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if swept.is_some_and(|at| at.elapsed() < every) {
                return;
            }
            *swept = Some(Instant::now());
        }
        let Ok(ttl) = chrono::Duration::from_std(self.settings.ttl) else {
            return;
        };
        match self.store.purge_idle(Utc::now() - ttl) {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired threads purged"),
            Err(e) => tracing::warn!(error = %e, "purging expired threads failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(q: &str) -> ThreadTurn {
        ThreadTurn {
            question: q.into(),
            answer: format!("answer to {q}"),
            citations: Vec::new(),
            trace_id: format!("trace-{q}"),
        }
    }

    /// Threads in memory.
    #[derive(Default)]
    struct Memory(Mutex<std::collections::HashMap<String, Thread>>);

    impl ThreadStore for Memory {
        fn get(&self, id: &str) -> Result<Option<Thread>, String> {
            Ok(self.0.lock().expect("lock").get(id).cloned())
        }
        fn put(&self, id: &str, thread: &Thread) -> Result<(), String> {
            self.0
                .lock()
                .expect("lock")
                .insert(id.into(), thread.clone());
            Ok(())
        }
        fn remove(&self, id: &str) -> Result<bool, String> {
            Ok(self.0.lock().expect("lock").remove(id).is_some())
        }
        fn purge_idle(&self, before: DateTime<Utc>) -> Result<usize, String> {
            let mut map = self.0.lock().expect("lock");
            let n = map.len();
            map.retain(|_, t| t.active_at() >= before);
            Ok(n - map.len())
        }
    }

    #[test]
    fn a_thread_is_its_owners_and_one_erased_while_an_answer_ran_stays_erased() {
        let settings = ThreadSettings {
            ttl: Duration::from_secs(60),
            max_turns: 10,
        };
        let threads = Threads::new(Box::new(Memory::default()), settings);
        let (id, new) = threads.start("bot");
        threads.append(&id, &new, turn("a")).expect("append");
        let loaded = threads.load(&id, "bot").expect("load").expect("stored");
        assert_eq!(loaded.turns.len(), 1);
        assert_eq!(threads.load(&id, "other").expect("load"), None);
        assert!(threads.erase(&id).expect("erase"));
        threads.append(&id, &loaded, turn("b")).expect("append");
        assert_eq!(threads.load(&id, "bot").expect("load"), None);
    }

    #[test]
    fn a_full_thread_drops_its_oldest_turns_and_expiry_counts_from_the_last_turn() {
        let start = Utc::now();
        let mut t = Thread::new("bot");
        for q in ["a", "b", "c"] {
            t.push(turn(q), 2, start);
        }
        let kept: Vec<&str> = t.turns.iter().map(|t| t.question.as_str()).collect();
        assert_eq!(kept, ["b", "c"]);
        let day = Duration::from_secs(86_400);
        assert!(!t.expired(day, start + chrono::Duration::hours(23)));
        assert!(t.expired(day, start + chrono::Duration::hours(25)));
        t.push(turn("d"), 2, start + chrono::Duration::hours(20));
        assert!(!t.expired(day, start + chrono::Duration::hours(25)));
    }
}
