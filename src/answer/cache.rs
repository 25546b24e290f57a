//! The answer cache. Exact hits are keyed on (normalised question, the retrieved chunks with
//! their documents' content hashes, the conversation's turns, the serving provider and model,
//! prompt version), so any reindex that changes the context, and any other conversation,
//! misses by construction. On top, a semantic hit serves a new question
//! whose embedding is within `semantic_min_cosine` of a cached one *and* that retrieved the
//! same chunk set. Because the chunk set comes from the caller's own access-filtered
//! retrieval, a cached answer is never served to a caller who could not see its sources.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::answer::events::{Citation, UsageView};
use crate::config::section::{Check, ConfigError};
use crate::providers::{Message, Role};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCache {
    pub enabled: bool,
    /// Entries kept (least recently used dropped first).
    pub capacity: usize,
    pub ttl_secs: u64,
    /// Cosine similarity of question embeddings for a semantic hit; 1.0 disables it.
    pub semantic_min_cosine: f32,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            enabled: true,
            capacity: 1000,
            ttl_secs: 3600,
            semantic_min_cosine: 0.95,
        }
    }
}

impl RawCache {
    pub fn validate(&self, cx: &Check) -> Result<(), ConfigError> {
        if self.capacity == 0 {
            return Err(cx.key_err(
                "cache.capacity",
                "must be at least 1 (set enabled = false to turn the cache off)",
            ));
        }
        Ok(())
    }
}

/// A cached answer.
#[derive(Debug, Clone)]
pub struct Cached {
    pub answer: String,
    pub citations: Vec<Citation>,
    pub usage: UsageView,
    pub outcome: &'static str,
}

struct Entry {
    value: Cached,
    context_key: String,
    question_vec: Vec<f32>,
    at: Instant,
}

pub struct AnswerCache {
    config: RawCache,
    entries: Mutex<LruCache<String, Entry>>,
}

/// Which kind of hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    Exact,
    Semantic,
}

impl HitKind {
    pub fn label(self) -> &'static str {
        match self {
            HitKind::Exact => "exact",
            HitKind::Semantic => "semantic",
        }
    }
}

/// Lower-cased words joined by single spaces.
pub fn normalise_question(q: &str) -> String {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What an answer depends on besides the question: the context part of the cache key.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    /// (chunk id, content hash of its document) of every chunk given to the model, in order.
    pub chunks: &'a [(String, String)],
    /// The turns before the question, every one of them.
    pub conversation: &'a [Message],
    /// (provider, model) of the target whose answers are stored under this key.
    pub target: (&'a str, &'a str),
    pub prompt_version: &'a str,
}

/// The context part of the key: a hash of [`KeyParts`], each variable-length part
/// length-prefixed so no two different contexts hash the same bytes.
pub fn context_key(parts: &KeyParts<'_>) -> String {
    fn field(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    let mut h = Sha256::new();
    h.update((parts.chunks.len() as u64).to_le_bytes());
    for (id, version) in parts.chunks {
        field(&mut h, id.as_bytes());
        field(&mut h, version.as_bytes());
    }
    h.update((parts.conversation.len() as u64).to_le_bytes());
    for m in parts.conversation {
        let role: &[u8] = match m.role {
            Role::User => b"user",
            Role::Assistant => b"assistant",
        };
        field(&mut h, role);
        field(&mut h, m.content.as_bytes());
    }
    field(&mut h, parts.target.0.as_bytes());
    field(&mut h, parts.target.1.as_bytes());
    field(&mut h, parts.prompt_version.as_bytes());
    hex::encode(h.finalize())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

impl AnswerCache {
    pub fn new(config: RawCache) -> AnswerCache {
        let cap = NonZeroUsize::new(config.capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        AnswerCache {
            config,
            entries: Mutex::new(LruCache::new(cap)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.config.ttl_secs)
    }

    /// Looks up an answer for this question and context.
    pub fn get(
        &self,
        question: &str,
        question_vec: &[f32],
        context: &str,
    ) -> Option<(Cached, HitKind)> {
        if !self.config.enabled {
            return None;
        }
        let key = format!("{}\u{0}{context}", normalise_question(question));
        let mut entries = match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let ttl = self.ttl();
        if let Some(e) = entries.get(&key) {
            if e.at.elapsed() <= ttl {
                return Some((e.value.clone(), HitKind::Exact));
            }
            entries.pop(&key);
        }
        if self.config.semantic_min_cosine >= 1.0 {
            return None;
        }
        let best = entries
            .iter()
            .filter(|(_, e)| e.context_key == context && e.at.elapsed() <= ttl)
            .map(|(k, e)| (k.clone(), cosine(question_vec, &e.question_vec)))
            .filter(|(_, c)| *c >= self.config.semantic_min_cosine)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let (k, _) = best?;
        entries
            .get(&k)
            .map(|e| (e.value.clone(), HitKind::Semantic))
    }

    pub fn put(&self, question: &str, question_vec: Vec<f32>, context: &str, value: Cached) {
        if !self.config.enabled {
            return;
        }
        let key = format!("{}\u{0}{context}", normalise_question(question));
        let mut entries = match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        entries.put(
            key,
            Entry {
                value,
                context_key: context.to_string(),
                question_vec,
                at: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(text: &str) -> Cached {
        Cached {
            answer: text.into(),
            citations: vec![],
            usage: UsageView {
                input_tokens: 1,
                output_tokens: 1,
                cost_usd: 0.0,
                model: "m".into(),
                provider: "p".into(),
                cache_hit: false,
            },
            outcome: "answered",
        }
    }

    #[test]
    fn exact_semantic_and_context_change() {
        let c = AnswerCache::new(RawCache::default());
        let chunks = [("d#0".to_string(), "h1".to_string())];
        let key = |chunks: &[(String, String)], conversation: &[Message]| {
            context_key(&KeyParts {
                chunks,
                conversation,
                target: ("p", "m"),
                prompt_version: "v1",
            })
        };
        let ctx = key(&chunks, &[]);
        c.put(
            "How long do refunds take?",
            vec![1.0, 0.0],
            &ctx,
            cached("five days"),
        );
        let (v, kind) = c
            .get("how long do REFUNDS take", &[1.0, 0.0], &ctx)
            .expect("exact");
        assert_eq!((v.answer.as_str(), kind), ("five days", HitKind::Exact));
        let (_, kind) = c
            .get("refund duration?", &[0.99, 0.05], &ctx)
            .expect("semantic");
        assert_eq!(kind, HitKind::Semantic);
        assert!(c.get("refund duration?", &[0.0, 1.0], &ctx).is_none());
        // The document changed (new content hash): the context key differs, so no hit at all.
        let changed = key(&[("d#0".into(), "h2".into())], &[]);
        assert!(
            c.get("How long do refunds take?", &[1.0, 0.0], &changed)
                .is_none()
        );
    }

    #[test]
    fn every_part_of_the_context_changes_the_key() {
        let chunks = [("d#0".to_string(), "h1".to_string())];
        let turn = |role, content: &str| Message {
            role,
            content: content.into(),
        };
        let conv = [
            turn(Role::User, "about order 1"),
            turn(Role::Assistant, "ok"),
        ];
        let base = KeyParts {
            chunks: &chunks,
            conversation: &conv,
            target: ("remote", "m"),
            prompt_version: "v1",
        };
        let k = context_key(&base);
        let other_turn = [
            turn(Role::User, "about order 2"),
            turn(Role::Assistant, "ok"),
        ];
        let swapped_roles = [
            turn(Role::Assistant, "about order 1"),
            turn(Role::User, "ok"),
        ];
        // Moving text across the boundary between two turns is another conversation.
        let shifted = [
            turn(Role::User, "about order 1o"),
            turn(Role::Assistant, "k"),
        ];
        for conversation in [&other_turn[..], &swapped_roles, &shifted, &conv[..1], &[]] {
            let changed = context_key(&KeyParts {
                conversation,
                ..base
            });
            assert_ne!(changed, k, "{conversation:?}");
        }
        for target in [("local", "m"), ("remote", "m2")] {
            assert_ne!(context_key(&KeyParts { target, ..base }), k, "{target:?}");
        }
        let v2 = KeyParts {
            prompt_version: "v2",
            ..base
        };
        assert_ne!(context_key(&v2), k);
        assert_eq!(context_key(&KeyParts { ..base }), k);
    }
}
