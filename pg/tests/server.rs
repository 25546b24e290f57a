//! What is specific to a server-backed index: clear errors when the server is unreachable or
//! lacks pgvector, the embedder manifest, versioned migrations under concurrent start-up,
//! several replicas sharing one index, source claims and admin jobs, and an index dropped on
//! a tokio worker thread.

mod common;

use std::str::FromStr;

use cairn_index::conformance::{
    DocSpec, assert_embedder_mismatch, axis_vector, corpus, doc_ids, embedder, put, request,
};
use cairn_index::{Filter, IndexBackend, IndexError, IndexOptions, SearchMode};
use cairn_pg::{PgIndex, PgOptions, SCHEMA_VERSION};
use common::{Schema, pg_url};

fn open(options: &PgOptions) -> PgIndex {
    PgIndex::open(options, &IndexOptions::new(embedder())).expect("open postgres index")
}

fn backend_message(result: Result<PgIndex, IndexError>) -> String {
    match result {
        Err(IndexError::Backend { backend, message }) => {
            assert_eq!(backend, "postgres");
            message
        }
        Err(e) => panic!("expected a backend error, got {e}"),
        Ok(_) => panic!("expected an error, the index opened"),
    }
}

#[test]
fn unreachable_server_is_a_clear_error_without_the_password() {
    // Port 1 on loopback: nothing listens there, no server needed for this test.
    let mut options = PgOptions::new("postgresql://cairn:hunter2@127.0.0.1:1/corpus");
    options.connect_timeout = std::time::Duration::from_secs(2);
    let message = backend_message(PgIndex::open(&options, &IndexOptions::new(embedder())));
    assert!(
        message.contains("cannot reach PostgreSQL at cairn@127.0.0.1:1/corpus"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn invalid_schema_name_is_refused_before_connecting() {
    let mut options = PgOptions::new("postgresql://cairn@127.0.0.1:1/corpus");
    options.schema = "x; DROP TABLE documents".into();
    let message = backend_message(PgIndex::open(&options, &IndexOptions::new(embedder())));
    assert!(message.contains("schema name"), "{message}");
}

#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn missing_vector_extension_says_how_to_enable_it() {
    let url = pg_url();
    // A database owned by a role that is not a superuser, without the extension: that role
    // may not create it (pgvector is not a trusted extension).
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let role_exists = admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = 'cairn_noext'", &[])
        .expect("query")
        .is_some();
    if !role_exists {
        admin
            .batch_execute("CREATE ROLE cairn_noext LOGIN")
            .expect("create role");
    }
    let db_exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = 'cairn_noext'",
            &[],
        )
        .expect("query")
        .is_some();
    if !db_exists {
        admin
            .batch_execute("CREATE DATABASE cairn_noext OWNER cairn_noext")
            .expect("create database");
    }
    let config = postgres::Config::from_str(&url).expect("url");
    let host = match &config.get_hosts()[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let options = PgOptions::new(format!(
        "postgresql://cairn_noext@{host}:{port}/cairn_noext"
    ));
    let message = backend_message(PgIndex::open(&options, &IndexOptions::new(embedder())));
    assert!(
        message.contains("vector extension is not enabled")
            && message.contains("CREATE EXTENSION vector"),
        "{message}"
    );
}

#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn another_embedder_is_refused_with_both_names() {
    let url = pg_url();
    let schema = Schema::fresh(&url);
    put(&open(&schema.options()), &corpus());
    let mut other = IndexOptions::new(embedder());
    other.embedder.name = "another-model".into();
    assert_embedder_mismatch(PgIndex::open(&schema.options(), &other));
    // The right embedder still opens it, with its data intact.
    assert_eq!(
        open(&schema.options()).stats().expect("stats").documents,
        corpus().len()
    );
}

#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn replicas_starting_together_apply_each_migration_once() {
    let url = pg_url();
    let schema = Schema::fresh(&url);
    let options = schema.options();
    let opened: Vec<PgIndex> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| open(&options))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(opened.len(), 4);
    let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let versions: Vec<i32> = c
        .query(
            &format!(
                "SELECT version FROM {}.schema_version ORDER BY version",
                schema.name
            ),
            &[],
        )
        .expect("query")
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
}

/// An index written before BM25 (schema version 3: no postings, no chunk lengths, a GIN
/// index for `ts_rank_cd`) is upgraded in place at start-up: migration 4 backfills postings,
/// lengths and corpus statistics from the stored `tsvector`s, so word ranking weighs rare
/// words at once, without a reindex.
#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn a_version_3_index_is_backfilled_for_bm25_on_open() {
    let url = pg_url();
    let schema = Schema::fresh(&url);
    let docs = [
        DocSpec::new("wiki:r1", "report report report for the board", 0),
        DocSpec::new("wiki:r2", "monthly report for the team", 1),
        DocSpec::new("wiki:r3", "yearly report on hiring", 2),
        DocSpec::new("wiki:z", "zebra crossing near the office", 3),
    ];
    put(&open(&schema.options()), &docs);
    // Put the schema back the way version 3 left it.
    let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    c.batch_execute(&format!(
        "SET search_path TO {s};
         DROP TABLE terms;
         ALTER TABLE chunks DROP COLUMN length;
         ALTER TABLE manifest DROP COLUMN chunk_count, DROP COLUMN total_length;
         CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
         DROP TABLE spend;
         DROP TABLE threads;
         DROP TABLE batch_requests;
         DROP TABLE batches;
         DELETE FROM schema_version WHERE version >= 4;",
        s = schema.name
    ))
    .expect("downgrade to version 3");
    let index = open(&schema.options());
    let req = request("report zebra", None, SearchMode::Bm25, Filter::default());
    let ids = doc_ids(&index, &req);
    assert_eq!(ids.first().map(String::as_str), Some("wiki:z"), "{ids:?}");
    assert_eq!(ids.len(), 4, "{ids:?}");
    let row = c
        .query_one(
            &format!(
                "SELECT chunk_count, total_length, (SELECT count(*) FROM {s}.terms),
                        (SELECT max(version) FROM {s}.schema_version)
                 FROM {s}.manifest",
                s = schema.name
            ),
            &[],
        )
        .expect("statistics");
    assert_eq!(row.get::<_, i64>(0), 4);
    assert!(row.get::<_, i64>(1) >= 12, "lengths were backfilled");
    assert!(row.get::<_, i64>(2) >= 12, "postings were backfilled");
    assert_eq!(row.get::<_, i32>(3), SCHEMA_VERSION);
}

/// A commit of 1,000 chunks or more vacuums and analyses the chunk and posting tables, so
/// the word side's index-only scans and the planner see the new rows at once.
#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn a_large_commit_vacuums_the_word_tables() {
    let url = pg_url();
    let schema = Schema::fresh(&url);
    let index = open(&schema.options());
    let texts: Vec<String> = (0..1000).map(|i| format!("bulk document {i}")).collect();
    let ids: Vec<String> = (0..1000).map(|i| format!("wiki:bulk{i}")).collect();
    let specs: Vec<DocSpec<'_>> = ids
        .iter()
        .zip(&texts)
        .map(|(id, text)| DocSpec::new(id, text, 0))
        .collect();
    put(&index, &specs);
    // Statistics may reach the cumulative views a moment after the commit returns.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let vacuumed = loop {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_user_tables
                 WHERE schemaname = $1 AND relname IN ('terms', 'chunks')
                   AND last_vacuum IS NOT NULL AND last_analyze IS NOT NULL",
                &[&schema.name],
            )
            .expect("statistics")
            .get(0);
        if n == 2 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(vacuumed, 2);
}

/// An index whose last reference goes away on a tokio worker thread (a server's background
/// task ending at shutdown) closes its connections without panicking: the synchronous client
/// closes by blocking on a runtime of its own, which must not happen on that thread.
#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn an_index_dropped_on_a_tokio_worker_thread_closes_its_connections() {
    let url = pg_url();
    let schema = Schema::fresh(&url);
    let index = open(&schema.options());
    assert!(
        index.generation().is_ok(),
        "the index answers before the drop"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dropped = runtime.block_on(async { tokio::spawn(async move { drop(index) }).await });
    assert!(dropped.is_ok(), "dropping the index panicked: {dropped:?}");
}

#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn replicas_share_one_index_and_one_generation_sequence() {
    let url = pg_url();
    let schema = Schema::fresh(&url);
    let a = open(&schema.options());
    let b = open(&schema.options());
    let g1 = put(&a, &corpus());
    let req = request(
        "aardvark",
        Some(axis_vector(0, 0.0)),
        SearchMode::Hybrid,
        Filter::default(),
    );
    // Written through one, searched through the other.
    assert_eq!(
        doc_ids(&b, &req).first().map(String::as_str),
        Some("wiki:a")
    );
    let g2 = put(&b, &[DocSpec::new("wiki:z", "zebra", 7)]);
    assert_eq!(g2, g1 + 1);
    assert_eq!(a.generation().expect("generation"), g2);
    // A delete through one is seen by the other in every mode.
    let mut w = b.writer().expect("writer");
    w.delete("wiki:a");
    w.commit().expect("commit");
    cairn_index::conformance::assert_absent(&a, "aardvark", 0, "wiki:a");
}

#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn one_replica_at_a_time_runs_a_source_and_state_is_shared() {
    let url = pg_url();
    let schema = Schema::fresh(&url);
    let a = open(&schema.options());
    let b = open(&schema.options());
    let claim = a.claim_source("docs").expect("claim").expect("free");
    assert!(b.claim_source("docs").expect("claim").is_none());
    // Another source is independent.
    assert!(b.claim_source("crm").expect("claim").is_some());
    drop(claim);
    assert!(b.claim_source("docs").expect("claim").is_some());

    assert!(b.source_state("docs").expect("state").is_none());
    let state = serde_json::json!({"watermark": "2024-05-01T00:00:00Z"});
    let report = serde_json::json!({"source": "docs"});
    a.put_source_state("docs", &state, &report).expect("put");
    assert_eq!(
        b.source_state("docs").expect("state"),
        Some((state, Some(report)))
    );
}

#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn a_dead_replica_releases_its_claim() {
    let url = pg_url();
    let schema = Schema::fresh(&url);
    let b = open(&schema.options());
    {
        let a = open(&schema.options());
        let claim = a.claim_source("docs").expect("claim").expect("free");
        assert!(b.claim_source("docs").expect("claim").is_none());
        // A crash: the claim's connection closes without an unlock.
        std::mem::forget(claim);
        drop(a);
    }
    end_session_holding(&url, &format!("cairn-source:{}:docs", schema.name));
    assert!(b.claim_source("docs").expect("claim").is_some());
}

/// A leaked connection is still open in this process (forgotten, not closed), so end the
/// session holding advisory lock `key` the way a dead replica's ends: from the server side
/// (waiting until it is gone).
fn end_session_holding(url: &str, key: &str) {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    let ended: Vec<bool> = admin
        .query(
            "WITH k AS (SELECT hashtextextended($1, 0) AS k)
             SELECT pg_terminate_backend(l.pid, 10000) FROM pg_locks l, k
             WHERE l.locktype = 'advisory' AND l.granted
               AND l.classid = ((k.k >> 32) & 4294967295)::oid
               AND l.objid = (k.k & 4294967295)::oid",
            &[&key],
        )
        .expect("terminate")
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ended, [true]);
}

fn job_json(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "state": "queued"})
}

fn set_state(state: &'static str) -> impl Fn(serde_json::Value) -> serde_json::Value {
    move |mut v| {
        v["state"] = state.into();
        v
    }
}

#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn one_job_at_a_time_is_claimed_by_one_replica_and_shown_by_all() {
    let url = pg_url();
    let schema = Schema::fresh(&url);
    let a = open(&schema.options());
    let b = open(&schema.options());
    assert_eq!(
        a.insert_job("j1", Some("docs"), &job_json("j1"))
            .expect("insert"),
        Ok(())
    );
    // A second job is refused while one is queued, naming the active one.
    assert_eq!(
        b.insert_job("j2", None, &job_json("j2")).expect("insert"),
        Err("j1".to_string())
    );
    assert_eq!(b.jobs(10).expect("list"), [job_json("j1")]);

    // A queued row another transaction holds is skipped, not waited for.
    let mut other = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let mut tx = other.transaction().expect("tx");
    tx.query(
        &format!("SELECT id FROM {}.jobs FOR UPDATE", schema.name),
        &[],
    )
    .expect("lock row");
    assert!(
        b.claim_job("b", set_state("running"))
            .expect("claim")
            .is_none()
    );
    tx.rollback().expect("rollback");

    let (claim, running) = a
        .claim_job("a", set_state("running"))
        .expect("claim")
        .expect("queued job");
    assert_eq!((claim.id(), &running["state"]), ("j1", &"running".into()));
    assert!(
        b.claim_job("b", set_state("running"))
            .expect("claim")
            .is_none()
    );
    assert_eq!(b.job("j1").expect("get"), Some(running.clone()));
    assert_eq!(b.active_job().expect("active"), Some(running));
    // Its owner is alive: nothing to interrupt.
    assert!(
        b.interrupt_orphaned_jobs(set_state("interrupted"))
            .expect("check")
            .is_empty()
    );

    let done = serde_json::json!({"id": "j1", "state": "succeeded"});
    assert!(claim.update("succeeded", &done).expect("update"));
    drop(claim);
    assert!(
        b.interrupt_orphaned_jobs(set_state("interrupted"))
            .expect("check")
            .is_empty()
    );
    assert_eq!(b.job("j1").expect("get"), Some(done));
    assert_eq!(b.active_job().expect("active"), None);
    assert_eq!(
        b.insert_job("j2", None, &job_json("j2")).expect("insert"),
        Ok(())
    );
    assert_eq!(a.jobs(1).expect("list")[0]["id"], "j2");
}

#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn a_job_whose_replica_died_is_interrupted_by_another() {
    let url = pg_url();
    let schema = Schema::fresh(&url);
    let b = open(&schema.options());
    {
        let a = open(&schema.options());
        a.insert_job("j1", None, &job_json("j1"))
            .expect("insert")
            .expect("free");
        let (claim, _) = a
            .claim_job("a", set_state("running"))
            .expect("claim")
            .expect("queued job");
        assert!(claim.update("running", &job_json("j1")).expect("update"));
        // A crash: the claim's connection is never given back, never unlocked.
        std::mem::forget(claim);
    }
    end_session_holding(&url, &format!("cairn-job:{}:j1", schema.name));
    assert_eq!(
        b.interrupt_orphaned_jobs(set_state("interrupted"))
            .expect("check"),
        ["j1"]
    );
    assert_eq!(
        b.job("j1").expect("get").expect("job")["state"],
        "interrupted"
    );
    // Done once: a second look finds nothing, and a new job may be queued.
    assert!(
        b.interrupt_orphaned_jobs(set_state("interrupted"))
            .expect("check")
            .is_empty()
    );
    assert_eq!(
        b.insert_job("j2", None, &job_json("j2")).expect("insert"),
        Ok(())
    );
}

/// Counts a result into a batch record as cairn does: `done` up, `completed` at `total`.
fn count_one(mut record: serde_json::Value) -> (serde_json::Value, String, bool) {
    let done = record["done"].as_u64().unwrap_or(0) + 1;
    record["done"] = done.into();
    let finished = Some(done) == record["total"].as_u64();
    if finished {
        record["state"] = "completed".into();
    }
    let state = record["state"].as_str().unwrap_or("running").to_string();
    (record, state, finished)
}

/// Two replicas claiming at once get different requests; a claim is not handed out again
/// within its lease but is after it; two replicas recording the same request at once store
/// and count it once; the per-owner limit holds; a finished batch has nothing to claim.
#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn batch_requests_are_claimed_with_a_lease_and_counted_once() {
    use std::time::Duration;
    let url = pg_url();
    let schema = Schema::fresh(&url);
    let a = open(&schema.options());
    let b = open(&schema.options());
    let record = serde_json::json!({"id": "b1", "state": "queued", "total": 2, "done": 0});
    let items = [serde_json::json!({"q": 0}), serde_json::json!({"q": 1})];
    let keys = ("b1", "bot", "queued");
    assert!(a.insert_batch(keys, &record, &items, 1).expect("insert"));
    let refused = b
        .insert_batch(("b2", "bot", "queued"), &record, &items, 1)
        .expect("insert");
    assert!(!refused, "the owner's limit of one active batch was passed");

    let long = Duration::from_secs(600);
    let (ca, cb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.claim_batch_request(long).expect("claim"));
        let tb = s.spawn(|| b.claim_batch_request(long).expect("claim"));
        (ta.join().expect("a"), tb.join().expect("b"))
    });
    let mut claimed = [ca.expect("a claims").n, cb.expect("b claims").n];
    claimed.sort_unstable();
    assert_eq!(claimed, [0, 1]);
    assert!(a.claim_batch_request(long).expect("claim").is_none());
    // With a lease already over, both are free again.
    std::thread::sleep(Duration::from_millis(20));
    let again = b
        .claim_batch_request(Duration::from_millis(1))
        .expect("claim");
    assert_eq!(again.map(|c| c.n), Some(0));

    let result = serde_json::json!({"custom_id": "q0"});
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.record_batch_result(("b1", 0), &result, count_one));
        let tb = s.spawn(|| b.record_batch_result(("b1", 0), &result, count_one));
        (ta.join().expect("a"), tb.join().expect("b"))
    });
    let verdicts = [ra.expect("a").1, rb.expect("b").1];
    assert_eq!(
        verdicts.iter().filter(|v| v.is_some()).count(),
        1,
        "{verdicts:?}"
    );
    let (record, finished) = a
        .record_batch_result(
            ("b1", 1),
            &serde_json::json!({"custom_id": "q1"}),
            count_one,
        )
        .expect("record");
    assert_eq!((record["done"].as_u64(), finished), (Some(2), Some(true)));
    assert_eq!(b.batch_results("b1").expect("results").len(), 2);
    assert!(
        b.claim_batch_request(Duration::ZERO)
            .expect("claim")
            .is_none()
    );
}
