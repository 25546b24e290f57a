//! A real `cairn serve` process killed with SIGKILL during a reindex job (while documents are
//! written and while batches are committed), and the same server on a data directory that
//! fills up (a small tmpfs) while it writes a generation, then gets space back. The index-level crash tests
//! (`index/tests/crash.rs`) kill a bare writer mid-commit; these add the process around it:
//! the job record, the restart, the rerun and the HTTP side.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use cairn::config::{Config, Overrides};
use cairn::engine::Engine;
use cairn_index::{Filter, SearchMode};

use crate::support::{self, ADMIN, Server};

/// Documents already indexed before the killed runs, and documents those runs add.
const BASELINE: usize = 600;
const ADDED: usize = 1800;
/// Paragraphs per document.
const PARAGRAPHS: usize = 3;

impl Server {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = Self::client()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status();
        let json: Value = resp.json().await.expect("json");
        assert!(status.is_success(), "{path}: {status} {json}");
        json
    }

    async fn reindex(&self) -> String {
        let job = self
            .admin(
                reqwest::Method::POST,
                "/admin/reindex",
                Some(serde_json::json!({"source": "bulk"})),
            )
            .await;
        job["id"].as_str().expect("job id").to_string()
    }

    async fn job(&self, id: &str) -> Value {
        self.admin(reqwest::Method::GET, &format!("/admin/jobs/{id}"), None)
            .await
    }

    /// Starts a reindex of `bulk` and waits until it ended; returns the job.
    async fn reindex_to_end(&self) -> Value {
        let id = self.reindex().await;
        self.wait_job(&id, |j| {
            !matches!(j["state"].as_str(), Some("queued" | "running"))
        })
        .await
    }

    /// Polls the job until `until` holds for it; fails after five minutes.
    async fn wait_job(&self, id: &str, until: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let job = self.job(id).await;
            if until(&job) {
                return job;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "job never reached the wanted state: {job}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The chunk ids of `GET /search` (BM25 and vectors fused) for `q`.
    async fn search(&self, q: &str) -> Vec<String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/search", self.base),
            [("q", q), ("k", "10")],
        )
        .expect("url");
        let resp = Self::client()
            .get(url)
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("search");
        assert!(resp.status().is_success(), "{}", resp.status());
        let json: Value = resp.json().await.expect("json");
        json["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|h| h["chunk_id"].as_str().expect("chunk id").to_string())
            .collect()
    }
}

/// Document `i`: a heading and [`PARAGRAPHS`] short paragraphs, each carrying the document's
/// own word `uniq<i>` and the shared word `corpusword`. Numbers have a fixed width, so every
/// document splits into the same number of chunks.
fn write_doc(dir: &Path, i: usize) {
    let para = |p: usize| {
        format!(
            "Paragraph {p} of uniq{i:05} in the corpusword collection describes item {i:05} plainly."
        )
    };
    let body: Vec<String> = (0..PARAGRAPHS).map(para).collect();
    std::fs::write(
        dir.join(format!("doc{i:05}.md")),
        format!(
            "# Document uniq{i:05} corpusword\n\n{}\n",
            body.join("\n\n")
        ),
    )
    .expect("write doc");
}

/// A config with the hash embedder (fast, no model), small chunks, an admin key and the
/// `bulk` files source under `dir/bulk`; the data directory is `dir/data`.
fn config(dir: &Path) -> PathBuf {
    let bulk = dir.join("bulk");
    std::fs::create_dir_all(&bulk).expect("mkdir bulk");
    support::write_config(
        dir,
        &format!(
            r#"
[embedder]
kind = "hash"
[chunking]
max_tokens = 48
[auth]
anonymous_scopes = []
[[auth.keys]]
name = "admin"
hash = "{}"
scopes = ["admin", "ask", "search"]
burst = 100000
rate_per_minute = 1000000
[[sources]]
name = "bulk"
kind = "files"
path = {bulk:?}
include = ["**/*.md"]
"#,
            cairn::http::auth::hash_key(ADMIN),
        ),
    )
}

/// Opens the data directory in this process (the server is dead) and checks that no document
/// is half-indexed: every stored document has the same number of chunks (`0..n`, `n` taken
/// from the first one) and BM25 finds exactly those for the document's own word; BM25 and the
/// vectors hold no chunk of a document the store lacks. Returns the `bulk` document ids and
/// the generation.
fn check_whole_documents(config: &Path) -> (Vec<String>, u64) {
    let config = Config::load(config, true, &Overrides::default()).expect("config");
    let engine = Engine::open(config).expect("reopen after SIGKILL");
    let index = engine.index.clone();
    let generation = index.generation().expect("generation");
    let ids = index.document_ids("bulk").expect("ids");
    let mut total = 0;
    let mut per_doc = None;
    for id in &ids {
        let chunks = index.chunks_of(id).expect("chunks");
        let ordinals: Vec<u32> = chunks.iter().map(|c| c.ordinal).collect();
        let n = *per_doc.get_or_insert(ordinals.len() as u32);
        assert_eq!(
            ordinals,
            (0..n).collect::<Vec<_>>(),
            "{id}: not all its chunks"
        );
        total += chunks.len();
        let number = id
            .strip_prefix("bulk:doc")
            .and_then(|s| s.strip_suffix(".md"))
            .expect("doc id");
        let mut found: Vec<String> = engine
            .search(
                &format!("uniq{number}"),
                100,
                Filter::default(),
                SearchMode::Bm25,
            )
            .expect("search")
            .into_iter()
            .map(|h| h.chunk_id)
            .collect();
        found.sort();
        let mut expected: Vec<String> = chunks.iter().map(|c| c.chunk_id()).collect();
        expected.sort();
        assert_eq!(found, expected, "{id}: BM25 disagrees with the store");
    }
    let stored: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    for mode in [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid] {
        let bulk_only = Filter {
            sources: vec!["bulk".into()],
            ..Filter::default()
        };
        let hits = engine
            .search("corpusword collection", total + 100, bulk_only, mode)
            .expect("search");
        if mode == SearchMode::Bm25 {
            assert_eq!(hits.len(), total, "BM25 chunk count vs the store");
        }
        for h in hits {
            assert!(
                stored.contains(h.document.id.as_str()),
                "{mode:?}: chunk {} of a document the store lacks",
                h.chunk_id
            );
        }
    }
    (ids, generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_reindex_keeps_every_document_whole_and_the_job_reruns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let bulk = dir.path().join("bulk");
    for i in 0..BASELINE {
        write_doc(&bulk, i);
    }
    // The baseline is indexed by the server's first start (an empty index ingests its sources).
    let server = Server::start(&config);
    server.kill();
    let (baseline, _) = check_whole_documents(&config);
    assert_eq!(baseline.len(), BASELINE);

    for i in BASELINE..BASELINE + ADDED {
        write_doc(&bulk, i);
    }
    // Kill points, as documents processed by the job (the baseline ones come back unchanged):
    // early in the first new batch, and right around later batch commits (every 512 writes).
    let mut interrupted = Vec::new();
    let mut last_generation = 0;
    for kill_at in [BASELINE + 50, BASELINE + 515, BASELINE + 1030] {
        let server = Server::start(&config);
        let id = server.reindex().await;
        server
            .wait_job(&id, |j| {
                j["state"] != "queued"
                    && (j["progress"]["processed"].as_u64().unwrap_or(0) as usize >= kill_at
                        || j["state"] != "running")
            })
            .await;
        server.kill();
        interrupted.push(id);

        let (ids, generation) = check_whole_documents(&config);
        for b in &baseline {
            assert!(
                ids.contains(b),
                "{b} was indexed before the kill and is gone"
            );
        }
        assert!(generation >= last_generation, "generation went back");
        last_generation = generation;
        let restarted = Server::start(&config);
        for id in &interrupted {
            let job = restarted.job(id).await;
            assert_eq!(job["state"], "interrupted", "{job}");
        }
        // The restarted server serves the last committed generation.
        let hits = restarted.search("uniq00007 corpusword").await;
        assert!(hits.iter().any(|c| c.contains("doc00007.md")), "{hits:?}");
        restarted.kill();
    }

    // A rerun completes: every document indexed once, nothing failed.
    let server = Server::start(&config);
    let job = server.reindex_to_end().await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    assert_eq!(job["counts"]["deleted"], 0, "{job}");
    let last = format!("doc{:05}.md", BASELINE + ADDED - 1);
    let hits = server
        .search(&format!("uniq{:05} corpusword", BASELINE + ADDED - 1))
        .await;
    assert!(hits.iter().any(|c| c.contains(&last)), "{hits:?}");
    server.kill();
    let (ids, _) = check_whole_documents(&config);
    assert_eq!(ids.len(), BASELINE + ADDED);
}

/// A tmpfs mounted over a directory for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with `dir/filler`, then frees `leave` bytes of it.
fn fill_disk(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let block = vec![0x5a_u8; 1 << 16];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = f.sync_all();
    f.set_len(written.saturating_sub(leave))
        .expect("truncate filler");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts a small tmpfs as the data directory"]
async fn disk_full_while_writing_a_generation_fails_the_job_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmpfs = Tmpfs::mount(&dir.path().join("data"), "48m")
        .unwrap_or_else(|e| panic!("cannot mount a tmpfs ({e}): this test needs root"));
    let config = config(dir.path());
    let bulk = dir.path().join("bulk");
    for i in 0..BASELINE {
        write_doc(&bulk, i);
    }
    let server = Server::start(&config);
    let queries = [
        "uniq00007 corpusword",
        "password reset link",
        "refund policy",
    ];
    let mut before = Vec::new();
    for q in queries {
        before.push(server.search(q).await);
    }
    assert!(before[0].iter().any(|c| c.contains("doc00007.md")));

    // Almost no room left, and a generation with many new documents to write.
    let filler = fill_disk(&tmpfs.0, 256 << 10);
    for i in BASELINE..BASELINE + ADDED {
        write_doc(&bulk, i);
    }
    let job = server.reindex_to_end().await;
    assert_eq!(job["state"], "failed", "{job}");
    // The error names the part of the index that could not be written and says the disk is
    // full. (Which part fails first varies: the redb store reports `No space left on device`;
    // tantivy reports a killed writer thread, to which cairn adds the free space it finds.)
    let error = job["error"].as_str().unwrap_or("");
    assert!(
        error.contains("ingesting source `bulk`") && error.contains("error"),
        "{job}"
    );
    assert!(
        error.contains("No space left on device") || error.contains("the disk is probably full"),
        "{job}"
    );
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("reindex job failed")
            && l.contains("ingesting source `bulk`")),
        "{log}"
    );
    // The previous generation keeps serving the same results.
    for (q, b) in queries.iter().zip(&before) {
        assert_eq!(&server.search(q).await, b, "{q}");
    }
    let new_doc = format!("uniq{:05} corpusword", BASELINE + ADDED - 1);
    let last = format!("doc{:05}.md", BASELINE + ADDED - 1);
    assert!(
        !server
            .search(&new_doc)
            .await
            .iter()
            .any(|c| c.contains(&last))
    );

    // With space again, the same process writes the new generation: the store reopened
    // itself after the I/O error, so no restart is needed.
    std::fs::remove_file(&filler).expect("remove filler");
    let job = server.reindex_to_end().await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    assert!(
        server
            .search(&new_doc)
            .await
            .iter()
            .any(|c| c.contains(&last)),
        "the rerun in the same process is searchable"
    );
    for (q, b) in queries.iter().zip(&before) {
        assert!(
            !server.search(q).await.is_empty(),
            "after the rerun: {q} ({b:?})"
        );
    }

    // And it was durable: a restarted server serves the new generation.
    server.kill();
    let server = Server::start(&config);
    assert!(
        server
            .search(&new_doc)
            .await
            .iter()
            .any(|c| c.contains(&last)),
        "after restart"
    );
    server.kill();
    drop(tmpfs);
}
