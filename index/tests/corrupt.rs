//! Damaged files: a truncated or garbled store is a `Corrupt` error naming the file and how to
//! rebuild, never a panic (the store verifies every page's checksum when it opens); a damaged
//! BM25 index is rebuilt from the store.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use cairn_index::{Filter, Index, IndexError, SearchMode};
use common::*;

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir").flatten() {
        if e.file_type().expect("file type").is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

fn build(dir: &Path) {
    let index = open(dir);
    for round in 0..3 {
        let mut w = index.writer();
        for d in 0..60 {
            let id = format!("wiki:{d}");
            let text = format!("round{round} note {d} about lighthouses and tides");
            w.upsert(
                record(&DocSpec::new(&id, &text, d)),
                vec![chunk(&id, 0, &text, axis_vector(d, round as f32 * 0.1))],
            )
            .expect("upsert");
        }
        w.commit().expect("commit");
    }
}

enum Damage {
    Truncate,
    Garble,
}

fn damage(file: &Path, how: &Damage) {
    let mut bytes = fs::read(file).expect("read");
    match how {
        Damage::Truncate => bytes.truncate(bytes.len() / 2),
        Damage::Garble => {
            let start = bytes.len() / 3;
            let end = (start + 64).min(bytes.len());
            for b in &mut bytes[start..end] {
                *b = !*b;
            }
        }
    }
    fs::write(file, bytes).expect("write");
}

/// Opens the damaged copy and, when it opens, searches it: nothing may panic, and an index
/// that opens must serve the last committed round in full.
fn open_damaged(dir: &Path) -> Result<(), IndexError> {
    let index = Index::open(dir, options(4))?;
    for mode in [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid] {
        let mut req = request(
            "round2 lighthouses",
            Some(vec![1.0; DIM]),
            mode,
            Filter::default(),
        );
        req.k = 100;
        let hits = index.search(&req)?;
        assert_eq!(
            hits.len(),
            60,
            "{mode:?} on a damaged copy of {}",
            dir.display()
        );
        assert!(hits.iter().all(|h| h.chunk.text.starts_with("round2 ")));
    }
    Ok(())
}

#[test]
fn damaged_store_files_are_reported_as_corrupt() {
    let root = tempfile::tempdir().expect("tempdir");
    let pristine = root.path().join("pristine");
    build(&pristine);
    // The store is one redb file.
    let store_files = [pristine.join("store.redb")];
    assert!(store_files[0].is_file());
    let mut outcomes = Vec::new();
    for (i, file) in store_files.iter().enumerate() {
        let rel = file.strip_prefix(&pristine).expect("relative");
        if fs::metadata(file).expect("metadata").len() == 0 {
            continue;
        }
        for (j, how) in [Damage::Truncate, Damage::Garble].iter().enumerate() {
            let copy = root.path().join(format!("case-{i}-{j}"));
            copy_dir(&pristine, &copy);
            damage(&copy.join(rel), how);
            match open_damaged(&copy) {
                Ok(()) => outcomes.push(format!("{}: recovered", rel.display())),
                Err(e @ IndexError::Corrupt { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("cairn ingest"), "no rebuild advice: {msg}");
                    assert!(
                        msg.contains(&copy.display().to_string()),
                        "no file named: {msg}"
                    );
                    outcomes.push(format!("{}: corrupt", rel.display()));
                }
                Err(e) => panic!("damaged {} gave a non-Corrupt error: {e}", rel.display()),
            }
        }
    }
    eprintln!("{outcomes:#?}");
}

#[test]
fn damaged_bm25_files_are_rebuilt_from_the_store() {
    let root = tempfile::tempdir().expect("tempdir");
    let pristine = root.path().join("pristine");
    build(&pristine);
    let bm25_files: Vec<PathBuf> = files(&pristine.join("bm25"))
        .into_iter()
        .filter(|f| {
            !f.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("lock"))
        })
        .collect();
    assert!(bm25_files.len() > 2);
    for (i, file) in bm25_files.iter().enumerate() {
        let rel = file.strip_prefix(&pristine).expect("relative");
        for (j, how) in [Damage::Truncate, Damage::Garble].iter().enumerate() {
            let copy = root.path().join(format!("case-{i}-{j}"));
            copy_dir(&pristine, &copy);
            damage(&copy.join(rel), how);
            if let Err(e) = open_damaged(&copy) {
                panic!("damaged {} was not repaired: {e}", rel.display());
            }
        }
    }
}
