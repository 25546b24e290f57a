//! An index directory written by the format-1 (sled) store is a clear `OldFormat` error naming
//! the fix, never a panic or a silently empty index; a full rebuild can move it aside.

mod common;

use std::fs;
use std::path::Path;

use cairn_index::{Index, IndexError};
use common::*;

/// The layout sled 0.34 leaves in `<index>/store` (its files' contents do not matter: the
/// directory itself is what marks the old format), plus the derived folders beside it.
fn sled_era_index(dir: &Path) {
    fs::create_dir_all(dir.join("store/blobs")).expect("mkdir");
    fs::write(
        dir.join("store/conf"),
        b"segment_size: 524288\nuse_compression: false\n",
    )
    .expect("conf");
    fs::write(dir.join("store/db"), vec![7u8; 4096]).expect("db");
    fs::write(dir.join("store/snap.0000000000001234"), vec![1u8; 64]).expect("snap");
    fs::create_dir_all(dir.join("bm25")).expect("mkdir");
    fs::write(dir.join("committed-generation"), "12").expect("marker");
}

#[test]
fn a_sled_index_is_an_old_format_error_naming_the_fix() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("index");
    sled_era_index(&dir);
    let err = match Index::open(&dir, options(4)) {
        Err(e) => e,
        Ok(_) => panic!("an old-format index opened"),
    };
    assert!(matches!(err, IndexError::OldFormat { .. }), "{err}");
    assert_eq!(err.code(), "index_old_format");
    let msg = err.to_string();
    assert!(
        msg.contains("`cairn ingest --full` rebuilds it from the sources"),
        "{msg}"
    );
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    // Nothing was touched or created.
    assert!(dir.join("store/db").is_file());
    assert!(!dir.join("store.redb").exists());
}

#[test]
fn a_full_rebuild_moves_the_old_index_aside_and_starts_empty() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("index");
    sled_era_index(&dir);
    // An older copy set aside before is replaced.
    fs::create_dir_all(root.path().join("index.old-format/stale")).expect("mkdir");
    let mut o = options(4);
    o.replace_old_format = true;
    let index = Index::open(&dir, o.clone()).expect("open for a rebuild");
    assert_eq!(index.generation(), 0);
    assert_eq!(index.stats().documents, 0);
    put(&index, &cairn_index::conformance::corpus());
    drop(index);
    let aside = root.path().join("index.old-format");
    assert!(aside.join("store/db").is_file());
    assert!(!aside.join("stale").exists());
    assert!(!dir.join("store").exists());
    // The rebuilt index opens normally, and setting aside finds nothing more to move.
    assert_eq!(Index::set_aside_old_format(&dir).expect("set aside"), None);
    let index = Index::open(&dir, options(4)).expect("reopen");
    assert!(index.generation() >= 1);
}

#[test]
fn set_aside_old_format_moves_only_old_formats() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("index");
    drop(open(&dir));
    assert_eq!(Index::set_aside_old_format(&dir).expect("current"), None);
    assert!(dir.join("store.redb").is_file());
    let old = root.path().join("old");
    sled_era_index(&old);
    let aside = Index::set_aside_old_format(&old)
        .expect("set aside")
        .expect("moved");
    assert_eq!(aside, root.path().join("old.old-format"));
    assert!(!old.exists());
}
