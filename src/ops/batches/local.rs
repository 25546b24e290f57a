//! The batches of one process: the redb store (`state/batches.redb`, see [`super::store`])
//! and the runner's in-memory queue, read from the store at the first claim and fed by
//! submissions. The [`BatchBackend`] used without PostgreSQL.
//!
//! Must not: open the store before a batch is submitted or one is found on disk (a process
//! that never received a batch has no file), or run anything.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::ops::batches::store::{Batch, BatchItem, BatchResult, BatchState, BatchStore};
use crate::ops::batches::{BatchBackend, Claim};

/// A batch whose requests are waiting: the batch as accepted and its requests not started.
struct Waiting {
    batch: Arc<Batch>,
    items: VecDeque<(u32, BatchItem)>,
}

/// The runner's queue: active batches oldest first.
#[derive(Default)]
struct Queue {
    /// Whether active batches were read from the store (once, at the first claim).
    loaded: bool,
    batches: VecDeque<Waiting>,
}

/// The redb store and the queue of one data directory.
pub struct LocalBatches {
    path: PathBuf,
    store: Mutex<Option<Arc<BatchStore>>>,
    queue: Mutex<Queue>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalBatches {
    /// The batches of the store file `path` (opened on first use).
    pub fn new(path: PathBuf) -> LocalBatches {
        LocalBatches {
            path,
            store: Mutex::new(None),
            queue: Mutex::new(Queue::default()),
        }
    }

    /// The store; opened on first use, and created only when `create`.
    fn store(&self, create: bool) -> anyhow::Result<Option<Arc<BatchStore>>> {
        let mut slot = lock(&self.store);
        if let Some(s) = slot.as_ref() {
            return Ok(Some(s.clone()));
        }
        if !create && !self.path.exists() {
            return Ok(None);
        }
        let opened = Arc::new(BatchStore::open(&self.path)?);
        *slot = Some(opened.clone());
        Ok(Some(opened))
    }

    /// Puts a new batch's requests at the end of the queue (unless the queue is yet to be read
    /// from the store, which then finds it there).
    fn enqueue(&self, batch: &Batch, items: Vec<BatchItem>) {
        let mut queue = lock(&self.queue);
        if !queue.loaded {
            return;
        }
        queue.batches.push_back(Waiting {
            batch: Arc::new(batch.clone()),
            items: (0u32..).zip(items).collect(),
        });
    }

    /// Reads the active batches and their requests without a result (the work a previous
    /// run left, or none).
    fn load(&self, queue: &mut Queue) -> anyhow::Result<()> {
        let Some(store) = self.store(false)? else {
            queue.loaded = true;
            return Ok(());
        };
        for batch in store.all()?.into_iter().filter(|b| b.state.active()) {
            let items = store.pending(&batch.id)?;
            tracing::info!(batch = %batch.id, left = items.len(), "resuming a batch");
            queue.batches.push_back(Waiting {
                batch: Arc::new(batch),
                items: items.into(),
            });
        }
        queue.loaded = true;
        Ok(())
    }

    /// Marks `waiting`'s batch running if it is queued; returns the batch as claimed.
    fn start(&self, waiting: &mut Waiting) -> anyhow::Result<Arc<Batch>> {
        let batch = waiting.batch.clone();
        if batch.state == BatchState::Queued
            && let Some(store) = self.store(false)?
        {
            let running = store.update(&batch.id, |b| {
                if b.state == BatchState::Queued {
                    b.state = BatchState::Running;
                }
            })?;
            if let Some(running) = running {
                waiting.batch = Arc::new(running);
            }
        }
        Ok(batch)
    }
}

impl BatchBackend for LocalBatches {
    fn create(&self, batch: &Batch, items: Vec<BatchItem>, limit: usize) -> anyhow::Result<bool> {
        let store = self
            .store(true)?
            .ok_or_else(|| anyhow::anyhow!("no batch store"))?;
        let active = store
            .all()?
            .iter()
            .filter(|b| b.owner == batch.owner && b.state.active())
            .count();
        if active >= limit {
            return Ok(false);
        }
        store.create(batch, &items)?;
        self.enqueue(batch, items);
        Ok(true)
    }

    fn get(&self, id: &str) -> anyhow::Result<Option<Batch>> {
        match self.store(false)? {
            Some(store) => store.get(id),
            None => Ok(None),
        }
    }

    fn results(&self, id: &str) -> anyhow::Result<Vec<BatchResult>> {
        match self.store(false)? {
            Some(store) => store.results(id),
            None => Ok(Vec::new()),
        }
    }

    fn cancel(&self, id: &str) -> anyhow::Result<Option<Batch>> {
        let Some(store) = self.store(false)? else {
            return Ok(None);
        };
        // Off the queue first, so no worker starts one of its requests meanwhile.
        lock(&self.queue).batches.retain(|w| w.batch.id != id);
        store.update(id, super::cancel_active)
    }

    fn claim(&self) -> anyhow::Result<Option<Claim>> {
        let mut queue = lock(&self.queue);
        if !queue.loaded {
            self.load(&mut queue)?;
        }
        while let Some(front) = queue.batches.front_mut() {
            let Some((n, item)) = front.items.pop_front() else {
                queue.batches.pop_front();
                continue;
            };
            let batch = self.start(front)?;
            return Ok(Some(Claim { batch, n, item }));
        }
        Ok(None)
    }

    fn record(&self, id: &str, n: u32, result: &BatchResult) -> anyhow::Result<(Batch, bool)> {
        let store = self
            .store(false)?
            .ok_or_else(|| anyhow::anyhow!("the batch store is gone"))?;
        store.record(id, n, result)
    }
}
