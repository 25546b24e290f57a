//! How many interactive answers are in flight, so background work (batches) can give way to
//! them: every interactive run of the pipeline holds an [`Interactive`] guard for its whole
//! length, and a background runner waits in [`AnswerLoad::wait_for_room`] until fewer than its
//! threshold are running.
//!
//! Must not: depend on the engine or the pipeline (the engine holds this).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Which lane an answer runs in: a caller waiting for it, or background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// `/ask`, `/v1/chat/completions`, MCP `ask`, `cairn ask`: counted in [`AnswerLoad`].
    Interactive,
    /// A batch request: not counted; it waits for room before it starts.
    Background,
}

/// The count of interactive answers in flight.
#[derive(Debug, Default)]
pub struct AnswerLoad {
    interactive: AtomicUsize,
    /// Woken whenever an interactive answer ends.
    ended: Notify,
}

/// Held while an interactive answer runs; dropping it ends the answer's count.
pub struct Interactive(Arc<AnswerLoad>);

impl Drop for Interactive {
    fn drop(&mut self) {
        self.0.interactive.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

impl AnswerLoad {
    /// Counts one interactive answer until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Interactive {
        self.interactive.fetch_add(1, Ordering::AcqRel);
        Interactive(self.clone())
    }

    /// Interactive answers in flight now.
    pub fn interactive(&self) -> usize {
        self.interactive.load(Ordering::Acquire)
    }

    /// Returns once at most `threshold` interactive answers are in flight. Rechecks at least
    /// every 50 ms, so a wake-up missed between the check and the wait costs little.
    pub async fn wait_for_room(&self, threshold: usize) {
        while self.interactive() > threshold {
            let ended = self.ended.notified();
            if self.interactive() <= threshold {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), ended).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_waits_until_interactive_answers_leave_room() {
        let load = Arc::new(AnswerLoad::default());
        let first = load.enter();
        let second = load.enter();
        assert_eq!(load.interactive(), 2);
        let waiting = {
            let load = load.clone();
            tokio::spawn(async move { load.wait_for_room(0).await })
        };
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            !waiting.is_finished(),
            "ran while two answers were in flight"
        );
        drop(first);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(!waiting.is_finished(), "ran while one answer was in flight");
        drop(second);
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("room once none is in flight")
            .expect("task");
        assert_eq!(load.interactive(), 0);
    }
}
