//! Conversation threads' records: opaque bytes by id in their own redb file next to the index
//! (a thread outlives the index generations a reindex replaces), with each thread's last
//! activity (Unix milliseconds) in a second table so expired threads can be purged without reading
//! the records. The server owns their shape and decides when a thread has expired.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::IndexError;

type Result<T> = std::result::Result<T, IndexError>;

const THREADS: TableDefinition<&str, &[u8]> = TableDefinition::new("threads");
/// Thread id → its last activity, Unix milliseconds.
const ACTIVITY: TableDefinition<&str, i64> = TableDefinition::new("thread_activity");

/// The thread records of one data directory.
pub struct ThreadStore {
    path: PathBuf,
    db: Database,
}

fn store_err(path: &Path) -> impl Fn(redb::Error) -> IndexError + '_ {
    move |e| IndexError::Store {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

impl ThreadStore {
    /// Opens (or creates) the thread store file `path`.
    pub fn open(path: &Path) -> Result<ThreadStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| IndexError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let err = store_err(path);
        let db = Database::create(path).map_err(|e| err(e.into()))?;
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        txn.open_table(THREADS).map_err(|e| err(e.into()))?;
        txn.open_table(ACTIVITY).map_err(|e| err(e.into()))?;
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(ThreadStore {
            path: path.to_path_buf(),
            db,
        })
    }

    /// The record of thread `id`, if stored.
    pub fn get(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let err = store_err(&self.path);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(THREADS).map_err(|e| err(e.into()))?;
        let value = table.get(id).map_err(|e| err(e.into()))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Stores `record` as thread `id` (replacing it), last active at `active_ms` (Unix
    /// milliseconds), durably.
    pub fn put(&self, id: &str, record: &[u8], active_ms: i64) -> Result<()> {
        let err = store_err(&self.path);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut table = txn.open_table(THREADS).map_err(|e| err(e.into()))?;
            table.insert(id, record).map_err(|e| err(e.into()))?;
            let mut activity = txn.open_table(ACTIVITY).map_err(|e| err(e.into()))?;
            activity.insert(id, active_ms).map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    /// Erases every thread last active before `before_ms` (Unix milliseconds), in one
    /// transaction; how many.
    pub fn purge_idle(&self, before_ms: i64) -> Result<usize> {
        let err = store_err(&self.path);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let purged = {
            let mut activity = txn.open_table(ACTIVITY).map_err(|e| err(e.into()))?;
            let mut idle = Vec::new();
            for row in activity.iter().map_err(|e| err(e.into()))? {
                let (id, at) = row.map_err(|e| err(e.into()))?;
                if at.value() < before_ms {
                    idle.push(id.value().to_string());
                }
            }
            let mut table = txn.open_table(THREADS).map_err(|e| err(e.into()))?;
            for id in &idle {
                table.remove(id.as_str()).map_err(|e| err(e.into()))?;
                activity.remove(id.as_str()).map_err(|e| err(e.into()))?;
            }
            idle.len()
        };
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(purged)
    }

    /// Erases thread `id`; whether it was stored.
    pub fn remove(&self, id: &str) -> Result<bool> {
        let err = store_err(&self.path);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let removed = {
            let mut table = txn.open_table(THREADS).map_err(|e| err(e.into()))?;
            let mut activity = txn.open_table(ACTIVITY).map_err(|e| err(e.into()))?;
            activity.remove(id).map_err(|e| err(e.into()))?;
            table.remove(id).map_err(|e| err(e.into()))?.is_some()
        };
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_reopening_and_is_gone_once_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("threads.redb");
        let store = ThreadStore::open(&path).expect("open");
        store.put("t1", b"turns", 100).expect("put");
        drop(store);
        let store = ThreadStore::open(&path).expect("reopen");
        assert_eq!(
            store.get("t1").expect("get").as_deref(),
            Some(&b"turns"[..])
        );
        assert!(store.remove("t1").expect("remove"));
        assert!(!store.remove("t1").expect("remove again"));
        assert_eq!(store.get("t1").expect("get"), None);
    }

    #[test]
    fn purging_erases_only_threads_idle_since_before_the_cutoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(&dir.path().join("threads.redb")).expect("open");
        store.put("old", b"a", 100).expect("put");
        store.put("new", b"b", 200).expect("put");
        assert_eq!(store.purge_idle(200).expect("purge"), 1);
        assert_eq!(store.get("old").expect("get"), None);
        assert_eq!(store.get("new").expect("get").as_deref(), Some(&b"b"[..]));
        // A thread written again is active again.
        store.put("new", b"c", 300).expect("put");
        assert_eq!(store.purge_idle(250).expect("purge"), 0);
    }
}
