//! Feedback on answers: the record a rating leaves (`POST /feedback`), the redb file that keeps
//! one per trace (`state/feedback.redb`, a second rating replaces the first), the rating counts
//! over time buckets of the admin view, and the export of rated answers as golden questions
//! for the reindex quality gate (`cairn feedback export`).
//!
//! Must not: decide who may rate (the HTTP surface checks the caller against the trace), or
//! keep question and answer text the trace store did not keep (the record copies the trace).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Duration, DurationRound, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Feedback records as JSON, by trace id.
const FEEDBACK: TableDefinition<&str, &[u8]> = TableDefinition::new("feedback");

/// The longest `comment`, in characters.
pub const MAX_COMMENT_CHARS: usize = 2000;
/// The most `correct_sources` one rating may name.
pub const MAX_CORRECT_SOURCES: usize = 20;

/// Whether the answer helped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    Up,
    Down,
}

impl Rating {
    pub fn label(self) -> &'static str {
        match self {
            Rating::Up => "up",
            Rating::Down => "down",
        }
    }
}

/// One rating of one answer, with what the admin view and the export need from its trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub trace_id: String,
    pub rating: Rating,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Document ids (`source:external id`) the caller says answer the question.
    #[serde(default)]
    pub correct_sources: Vec<String>,
    /// When the rating was given (RFC 3339, UTC).
    pub at: String,
    /// The key name that rated (the answer's caller).
    pub caller: String,
    /// The thread the answer belongs to, when the rating named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// The caller's access groups: an exported question is asked with them.
    #[serde(default)]
    pub groups: Vec<String>,
    /// When the answer was given (the trace's `at`).
    pub answered_at: String,
    /// The answer's outcome (`answered`, `no_answer`, …).
    pub outcome: String,
    /// Question and answer text: only when the trace kept them (`[traces] record_text`).
    #[serde(default)]
    pub question: Option<String>,
    #[serde(default)]
    pub answer: Option<String>,
    /// Documents the answer cited, in order of first citation.
    #[serde(default)]
    pub cited: Vec<String>,
}

/// The feedback records of one data directory.
pub struct FeedbackStore {
    path: PathBuf,
    db: Database,
}

impl FeedbackStore {
    /// Where a data directory keeps its feedback.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("state").join("feedback.redb")
    }

    /// Opens (or creates) the feedback file `path`. Only one process may hold it: a second
    /// one (the CLI while `cairn serve` runs) is refused with a message saying so.
    pub fn open(path: &Path) -> anyhow::Result<FeedbackStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => anyhow::bail!(
                "{} is held by another cairn process (a running `cairn serve`?): stop it, or \
                 fetch `GET /admin/feedback/export` from it instead",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let store = FeedbackStore {
            path: path.to_path_buf(),
            db,
        };
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    /// Runs `f` on the table in one durable write transaction.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let what = || format!("writing {}", self.path.display());
        let txn = self.db.begin_write().with_context(what)?;
        let out = {
            let mut table = txn.open_table(FEEDBACK).with_context(what)?;
            f(&mut table)?
        };
        txn.commit().with_context(what)?;
        Ok(out)
    }

    /// Stores `feedback` durably, replacing an earlier rating of the same trace; whether one
    /// was replaced.
    pub fn put(&self, feedback: &Feedback) -> anyhow::Result<bool> {
        let bytes = serde_json::to_vec(feedback)?;
        self.write(|t| {
            Ok(t.insert(feedback.trace_id.as_str(), bytes.as_slice())?
                .is_some())
        })
    }

    /// The rating of trace `trace_id`, if any.
    pub fn get(&self, trace_id: &str) -> anyhow::Result<Option<Feedback>> {
        let what = || format!("reading {}", self.path.display());
        let txn = self.db.begin_read().with_context(what)?;
        let table = txn.open_table(FEEDBACK).with_context(what)?;
        let Some(v) = table.get(trace_id).with_context(what)? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(v.value()).with_context(what)?))
    }

    /// Every record, oldest rating first (a record that cannot be read is logged and skipped).
    pub fn all(&self) -> anyhow::Result<Vec<Feedback>> {
        let what = || format!("reading {}", self.path.display());
        let txn = self.db.begin_read().with_context(what)?;
        let table = txn.open_table(FEEDBACK).with_context(what)?;
        let mut out = Vec::new();
        for row in table.iter().with_context(what)? {
            let (k, v) = row.with_context(what)?;
            match serde_json::from_slice::<Feedback>(v.value()) {
                Ok(f) => out.push(f),
                Err(e) => {
                    tracing::warn!(trace_id = k.value(), error = %e, "unreadable feedback record")
                }
            }
        }
        out.sort_by(|a, b| a.at.cmp(&b.at));
        Ok(out)
    }

    /// Erases the question, answer and comment text of the ratings of `trace_ids` (a thread
    /// was deleted); how many records changed.
    pub fn erase_text(&self, trace_ids: &[String]) -> anyhow::Result<usize> {
        self.write(|t| {
            let mut changed = 0;
            for id in trace_ids {
                let Some(bytes) = t.get(id.as_str())?.map(|v| v.value().to_vec()) else {
                    continue;
                };
                let mut f: Feedback = serde_json::from_slice(&bytes)?;
                f.question = None;
                f.answer = None;
                f.comment = None;
                t.insert(id.as_str(), serde_json::to_vec(&f)?.as_slice())?;
                changed += 1;
            }
            Ok(changed)
        })
    }
}

/// The width of a time bucket of the admin view's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketSize {
    Hour,
    Day,
}

impl BucketSize {
    fn duration(self) -> Duration {
        match self {
            BucketSize::Hour => Duration::hours(1),
            BucketSize::Day => Duration::days(1),
        }
    }
}

/// Ratings given in one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketCounts {
    /// The bucket's start (RFC 3339, UTC).
    pub start: String,
    pub up: u64,
    pub down: u64,
}

/// Ratings per bucket for the `n` buckets ending with the one holding `now`, oldest first
/// (empty buckets included, so a chart's x axis is time).
pub fn buckets(
    all: &[Feedback],
    size: BucketSize,
    n: usize,
    now: DateTime<Utc>,
) -> Vec<BucketCounts> {
    let width = size.duration();
    let Ok(last) = now.duration_trunc(width) else {
        return Vec::new();
    };
    let first = last - width * (n.saturating_sub(1) as i32);
    let mut counts: BTreeMap<DateTime<Utc>, (u64, u64)> =
        (0..n).map(|i| (first + width * i as i32, (0, 0))).collect();
    for f in all {
        let Ok(at) = DateTime::parse_from_rfc3339(&f.at) else {
            continue;
        };
        let Ok(start) = at.with_timezone(&Utc).duration_trunc(width) else {
            continue;
        };
        if let Some(c) = counts.get_mut(&start) {
            match f.rating {
                Rating::Up => c.0 += 1,
                Rating::Down => c.1 += 1,
            }
        }
    }
    counts
        .into_iter()
        .map(|(start, (up, down))| BucketCounts {
            start: start.to_rfc3339(),
            up,
            down,
        })
        .collect()
}

/// What an export wrote and what it left out, and why.
#[derive(Debug, Default, Serialize)]
pub struct Export {
    /// Golden questions, one JSON object per line of the gate's file.
    pub lines: Vec<Value>,
    /// Ratings left out because the trace kept no question text (`[traces] record_text`).
    pub without_question: usize,
    /// Down ratings left out because they name no `correct_sources`, and up ratings of
    /// answers that cited nothing: neither says which document should be found.
    pub without_sources: usize,
}

/// The expected documents a rating teaches: the caller's `correct_sources`, or for a helpful
/// answer (up) the documents it cited.
fn expected_sources(f: &Feedback) -> &[String] {
    match (f.rating, f.correct_sources.is_empty()) {
        (_, false) => &f.correct_sources,
        (Rating::Up, true) => &f.cited,
        (Rating::Down, true) => &[],
    }
}

/// Turns ratings (oldest first) into golden questions in the quality gate's format
/// (`{"id", "question", "sources", "groups"?}`): one per distinct question, the newest rating
/// of it deciding its sources.
pub fn golden(all: &[Feedback]) -> Export {
    let mut export = Export::default();
    let mut by_question: BTreeMap<&str, Value> = BTreeMap::new();
    for f in all {
        let Some(question) = f.question.as_deref().filter(|q| !q.trim().is_empty()) else {
            export.without_question += 1;
            continue;
        };
        let sources = expected_sources(f);
        if sources.is_empty() {
            export.without_sources += 1;
            continue;
        }
        let mut line = json!({
            "id": format!("feedback:{}", f.trace_id),
            "question": question,
            "sources": sources,
        });
        if !f.groups.is_empty() {
            line["groups"] = json!(f.groups);
        }
        by_question.insert(question, line);
    }
    let mut lines: Vec<Value> = by_question.into_values().collect();
    lines.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    export.lines = lines;
    export
}

impl Export {
    /// The golden file's text: one JSON object per line.
    pub fn jsonl(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rated(id: &str, rating: Rating, at: &str) -> Feedback {
        Feedback {
            trace_id: id.into(),
            rating,
            comment: None,
            correct_sources: Vec::new(),
            at: at.into(),
            caller: "bot".into(),
            thread_id: None,
            groups: Vec::new(),
            answered_at: at.into(),
            outcome: "answered".into(),
            question: Some(format!("question {id}")),
            answer: Some("answer".into()),
            cited: vec!["kb:cited.md".into()],
        }
    }

    #[test]
    fn a_second_rating_replaces_the_first_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = FeedbackStore::path_in(dir.path());
        let store = FeedbackStore::open(&path).expect("open");
        assert!(
            !store
                .put(&rated("t1", Rating::Up, "2026-01-01T00:00:00Z"))
                .expect("put")
        );
        assert!(
            store
                .put(&rated("t1", Rating::Down, "2026-01-01T00:01:00Z"))
                .expect("put")
        );
        drop(store);
        let store = FeedbackStore::open(&path).expect("reopen");
        let all = store.all().expect("all");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].rating, Rating::Down);
        assert_eq!(
            store
                .erase_text(&["t1".into(), "t9".into()])
                .expect("erase"),
            1
        );
        let t1 = store.get("t1").expect("get").expect("kept");
        assert_eq!((t1.question, t1.answer), (None, None));
    }

    #[test]
    fn buckets_count_each_rating_in_its_hour_and_keep_empty_ones() {
        let now = DateTime::parse_from_rfc3339("2026-03-04T10:30:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let all = [
            rated("a", Rating::Up, "2026-03-04T10:05:00Z"),
            rated("b", Rating::Down, "2026-03-04T10:59:59Z"),
            rated("c", Rating::Down, "2026-03-04T08:00:00Z"),
            rated("d", Rating::Up, "2026-03-03T10:00:00Z"),
        ];
        let b = buckets(&all, BucketSize::Hour, 3, now);
        let got: Vec<(&str, u64, u64)> =
            b.iter().map(|c| (c.start.as_str(), c.up, c.down)).collect();
        assert_eq!(
            got,
            [
                ("2026-03-04T08:00:00+00:00", 0, 1),
                ("2026-03-04T09:00:00+00:00", 0, 0),
                ("2026-03-04T10:00:00+00:00", 1, 1),
            ]
        );
    }

    #[test]
    fn golden_takes_corrections_and_cited_sources_and_says_what_it_left_out() {
        let mut down = rated("d", Rating::Down, "2026-01-01T00:00:00Z");
        down.correct_sources = vec!["kb:right.md".into()];
        down.groups = vec!["hr".into()];
        let up = rated("u", Rating::Up, "2026-01-01T00:00:01Z");
        let unhelpful = rated("x", Rating::Down, "2026-01-01T00:00:02Z");
        let mut no_text = rated("n", Rating::Up, "2026-01-01T00:00:03Z");
        no_text.question = None;
        let export = golden(&[down, up, unhelpful, no_text]);
        assert_eq!(export.without_question, 1);
        assert_eq!(export.without_sources, 1);
        assert_eq!(
            export.lines,
            [
                json!({"id": "feedback:d", "question": "question d", "sources": ["kb:right.md"], "groups": ["hr"]}),
                json!({"id": "feedback:u", "question": "question u", "sources": ["kb:cited.md"]}),
            ]
        );
    }
}
