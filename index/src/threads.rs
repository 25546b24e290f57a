//! Conversation threads' records: opaque bytes by id in their own redb file next to the index
//! (a thread outlives the index generations a reindex replaces). The server owns their shape.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::IndexError;

type Result<T> = std::result::Result<T, IndexError>;

const THREADS: TableDefinition<&str, &[u8]> = TableDefinition::new("threads");

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

    /// Stores `record` as thread `id` (replacing it), durably.
    pub fn put(&self, id: &str, record: &[u8]) -> Result<()> {
        let err = store_err(&self.path);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut table = txn.open_table(THREADS).map_err(|e| err(e.into()))?;
            table.insert(id, record).map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    /// Erases thread `id`; whether it was stored.
    pub fn remove(&self, id: &str) -> Result<bool> {
        let err = store_err(&self.path);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let removed = {
            let mut table = txn.open_table(THREADS).map_err(|e| err(e.into()))?;
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
        store.put("t1", b"turns").expect("put");
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
}
