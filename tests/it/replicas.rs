//! Two cairn engines ("replicas") over one PostgreSQL index: what one ingests the other serves
//! and answers from, the other's ingest finds nothing to redo (shared source state and content
//! hashes), and a source claimed by one is skipped by the other. Then the same with two real
//! `cairn serve` processes sharing admin jobs, one of them killed mid-job. Needs `CAIRN_PG_URL` (see
//! `scripts/start-postgres.sh`): the tests are `#[ignore]`d with that reason, so a plain
//! `cargo test` lists them as ignored; `--include-ignored` runs them and they fail without it.
//!
//! The engines are built outside the async runtime: the PostgreSQL client is synchronous, and
//! the server runs it on blocking threads, as it does every index call.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::{self, TestApp};

/// The server URL; the tests are `#[ignore]`d with the reason and fail without it when run.
pub(crate) fn pg_url() -> String {
    match std::env::var("CAIRN_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("CAIRN_PG_URL is not set: run `eval \"$(scripts/start-postgres.sh)\"` first"),
    }
}

/// Drops the test's schema when the test ends.
pub(crate) struct Schema {
    url: String,
    name: String,
}

impl Schema {
    /// A schema name no other test (or test process) uses: `<prefix>_<pid>_<n>`.
    pub(crate) fn fresh(url: String, prefix: &str) -> Schema {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Schema {
            url,
            name: format!("{prefix}_{}_{n}", std::process::id()),
        }
    }

    /// A replica's config over this schema, followed by `extra`.
    pub(crate) fn config(&self, extra: &str) -> String {
        format!(
            "[index]\nbackend = \"postgres\"\n[index.postgres]\nschema = \"{}\"\npool_size = 3\n{extra}",
            self.name
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // On a thread of its own: the synchronous client cannot run inside an async test.
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Ok(mut c) = ::postgres::Client::connect(&self.url, ::postgres::NoTls) {
                    let _ =
                        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
                }
            });
        });
    }
}

#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn two_replicas_share_one_postgres_index() {
    let schema = Schema::fresh(pg_url(), "e2e");
    let config = schema.config("");
    // Replica A ingests the sample corpus (TestApp ingests on creation).
    let a = TestApp::with_config(&config);
    let indexed = a.engine.last_report("samples").expect("report").counts;
    assert!(indexed.indexed >= 6, "{indexed:?}");
    // Replica B, with its own data directory, finds the same corpus already indexed.
    let b = TestApp::with_config(&config);
    let again = b.engine.last_report("samples").expect("report").counts;
    assert_eq!((again.indexed, again.unchanged), (0, indexed.indexed));

    // While A holds the source's claim, B's ingest skips it.
    let pg = cairn_pg::PgIndex::open(
        a.engine.config.postgres.as_ref().expect("postgres config"),
        &cairn::engine::index_options(&a.engine.config, a.engine.embedder.info()),
    )
    .expect("open");
    let claim = pg.claim_source("samples").expect("claim").expect("free");
    let reports = b
        .engine
        .ingest(None, false, &|_, _| {}, &AtomicBool::new(false))
        .expect("ingest");
    assert!(reports.is_empty(), "{reports:?}");
    // Asked for that source by name, it says why it cannot run it.
    let e = b
        .engine
        .ingest(Some("samples"), false, &|_, _| {}, &AtomicBool::new(false))
        .expect_err("claimed elsewhere");
    assert!(e.to_string().contains("another cairn process"), "{e:#}");
    drop(claim);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for app in [&a, &b] {
            let json = support::get_json(app, "/search?q=refund%20card&k=3").await;
            assert_eq!(json["hits"][0]["doc_id"], "samples:help-center/refunds.md");
            assert!(
                json["hits"][0]["snippet"]
                    .as_str()
                    .expect("snippet")
                    .contains("<mark>")
            );
        }
        // Asked through B, answered from what A ingested.
        let json = support::ask_refunds(&b).await;
        let answer = json["answer"].as_str().expect("answer");
        assert!(answer.contains("5 business days"), "{answer}");
        assert_eq!(
            json["citations"][0]["doc_id"],
            "samples:help-center/refunds.md"
        );
        let json = support::get_json(&b, "/readyz").await;
        assert_eq!(json["index"]["backend"], "postgres");
    });
}

/// Threads are kept in PostgreSQL with that backend: a thread started through replica A
/// continues through replica B (B retrieves the follow-up with A's stored turn), either reads
/// its turns, and erasing it through B erases it for A.
#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn replicas_continue_each_others_threads_through_postgres() {
    use axum::http::StatusCode;
    use serde_json::json;
    let schema = Schema::fresh(pg_url(), "threads");
    let config = schema.config("[traces]\nrecord_text = true\n");
    let a = TestApp::with_config(&config);
    let b = TestApp::with_config(&config);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let first = json!({"question": "I bought something marked final sale.", "stream": false});
        let (status, got) = support::post_as(&a, None, "/ask", first).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        let id = got["thread_id"].as_str().expect("thread_id").to_string();
        let next = json!({"question": "Can I send it back?", "stream": false, "thread_id": id});
        let (status, got) = support::post_as(&b, None, "/ask", next).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert!(
            got["query"]
                .as_str()
                .is_some_and(|q| q.contains("final sale")),
            "B did not continue A's thread: {got}"
        );
        let uri = format!("/threads/{id}");
        let (status, thread) = support::call(&a, None, "GET", &uri).await;
        assert_eq!(status, StatusCode::OK, "{thread}");
        assert_eq!(
            thread["turns"].as_array().map(Vec::len),
            Some(2),
            "{thread}"
        );
        let (status, _) = support::call(&b, None, "DELETE", &uri).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = support::call(&a, None, "GET", &uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    });
}

/// Spend is shared through PostgreSQL: what replica A settles counts against replica B's daily
/// caps (global and per key) once B's copy is refreshed, both replicas' charges add up (they are
/// increments, not totals that overwrite each other), and a replica started on a new data dir (a
/// restart or a replacement) begins the day with everything already spent.
#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn replicas_share_spend_through_postgres() {
    use cairn::providers::cost::Exhausted;
    let schema = Schema::fresh(pg_url(), "spend");
    let config = schema.config("[budget]\ndaily_usd = 1.0\ndaily_usd_per_key = 0.7\n");
    let a = TestApp::with_config(&config);
    let b = TestApp::with_config(&config);
    let (spend_a, spend_b) = (&a.engine.router.budget, &b.engine.router.budget);
    // On a runtime's thread, as the gateway settles (the PostgreSQL client must not run there).
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        spend_a
            .reserve(0.2, Some("key:bot"))
            .expect("room on A")
            .settle(0.6);
    });
    let refresh = cairn::providers::cost::SHARED_SPEND_REFRESH + Duration::from_millis(200);
    std::thread::sleep(refresh);
    let seen = spend_b.spent_today();
    assert!(
        (seen - 0.6).abs() < 1e-9,
        "B sees ${seen} spent, A spent $0.6"
    );
    assert!(
        matches!(
            spend_b.reserve(0.2, Some("key:bot")),
            Err(Exhausted::DailyPerKey { .. })
        ),
        "B let key:bot spend past its cap after it spent $0.6 of $0.7 on A"
    );
    spend_b
        .reserve(0.3, Some("key:hr"))
        .expect("room for another key on B")
        .settle(0.3);
    assert!(
        matches!(spend_b.reserve(0.2, None), Err(Exhausted::Daily { .. })),
        "B let the day's spend pass $1.0 after $0.9 was spent across replicas"
    );
    std::thread::sleep(refresh);
    let total = spend_a.spent_today();
    assert!(
        (total - 0.9).abs() < 1e-9,
        "A sees ${total}, the replicas spent $0.9"
    );

    // A replica that starts now, with no local state, begins the day at $0.9.
    drop(b);
    let c = TestApp::with_config(&config);
    let restarted = c.engine.router.budget.spent_today();
    assert!(
        (restarted - 0.9).abs() < 1e-9,
        "a new replica starts at ${restarted}"
    );
}

/// Articles on the fake knowledge base's first page: more than one index commit's worth
/// (the pipeline commits every 512 documents), so a run stopped on the second page has
/// committed part of the source.
const KB_FIRST_PAGE: usize = 600;
const KB_SECOND_PAGE: usize = 20;

/// A Zendesk-style articles API whose second page, while `hold` is set, tells the test it was
/// asked for (`asked`) and then does not answer: a reindex of it is stuck mid-job for as long
/// as the test wants, with the first page's documents committed.
#[derive(Clone)]
struct FakeKb {
    hold: Arc<AtomicBool>,
    asked: Arc<tokio::sync::Notify>,
}

fn kb_article(n: usize) -> serde_json::Value {
    serde_json::json!({
        "id": n,
        "title": format!("Warehouse procedure {n}"),
        "body": format!("<p>Procedure {n}: pallet code PX{n:05} goes to aisle {}.</p>", n % 37),
        "html_url": format!("https://kb.example/articles/{n}"),
        "updated_at": "2026-01-01T00:00:00Z",
    })
}

async fn kb_page(
    axum::extract::State(kb): axum::extract::State<FakeKb>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    if q.get("page").map(String::as_str) == Some("2") {
        if kb.hold.load(Ordering::SeqCst) {
            kb.asked.notify_one();
            while kb.hold.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let articles: Vec<_> = (KB_FIRST_PAGE..KB_FIRST_PAGE + KB_SECOND_PAGE)
            .map(kb_article)
            .collect();
        return axum::Json(serde_json::json!({"articles": articles, "next_page": null}));
    }
    let articles: Vec<_> = (0..KB_FIRST_PAGE).map(kb_article).collect();
    axum::Json(serde_json::json!({"articles": articles, "next_page": "/articles?page=2"}))
}

/// A `cairn serve` process; killed (SIGKILL) when dropped.
struct Replica {
    child: std::process::Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    async fn start(extra: &str) -> Replica {
        let port = support::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = support::write_config(
            dir.path(),
            &format!("[server]\nbind = \"127.0.0.1:{port}\"\n{extra}"),
        );
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--config")
            .arg(&config)
            .args(["-q", "serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("serve.log")).expect("log file"))
            .spawn()
            .expect("start cairn serve");
        let replica = Replica {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let client = reqwest::Client::new();
        for _ in 0..1200 {
            if let Ok(r) = client.get(format!("{}/healthz", replica.base)).send().await
                && r.status().is_success()
            {
                return replica;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(replica.dir.path().join("serve.log"));
        panic!("cairn serve did not come up within 120 s: {log:?}");
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (reqwest::StatusCode, serde_json::Value) {
        let resp = req
            .bearer_auth(support::ADMIN)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        (status, resp.json().await.expect("json body"))
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let (status, json) = self
            .send(reqwest::Client::new().get(format!("{}{path}", self.base)))
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{path}: {json}");
        json
    }

    async fn post(&self, path: &str, body: &str) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(
            reqwest::Client::new()
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// Queues a reindex of `source` and returns the job's id.
    async fn reindex(&self, source: &str) -> String {
        let (status, job) = self
            .post("/admin/reindex", &format!(r#"{{"source":"{source}"}}"#))
            .await;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{job}");
        assert_eq!(job["state"], "queued");
        job["id"].as_str().expect("job id").to_string()
    }

    /// Polls the job until `done` accepts it (a guard against a hang, not a timing check).
    async fn wait_job(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..1200 {
            let job = self.get(&format!("/admin/jobs/{id}")).await;
            if done(&job) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {id} never became {what}");
    }

    async fn documents(&self, source: &str) -> u64 {
        let sources = self.get("/admin/sources").await;
        sources["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .find(|s| s["name"] == source)
            .expect("source listed")["documents"]
            .as_u64()
            .expect("documents")
    }
}

/// Puts one document (source `seed`, in no replica's config) into the schema, as a
/// hash-embedder index. Blocking.
fn seed_index(schema: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let docs = dir.path().join("seed");
    std::fs::create_dir_all(&docs).expect("mkdir");
    std::fs::write(
        docs.join("about.md"),
        "# About\n\nThis shared index was prepared before the replicas started.",
    )
    .expect("write");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[answer]\nprompt = {prompt:?}\n[embedder]\nkind = \"hash\"\n\
             [index]\nbackend = \"postgres\"\n[index.postgres]\nschema = \"{schema}\"\npool_size = 3\n\
             [[sources]]\nname = \"seed\"\nkind = \"files\"\npath = {docs:?}\ninclude = [\"**/*.md\"]\n",
            prompt = support::repo().join("prompts/answer.v1.toml"),
        ),
    )
    .expect("write config");
    let config = cairn::config::Config::load(&config, true, &cairn::config::Overrides::default())
        .expect("config");
    let engine = cairn::engine::Engine::open(config).expect("engine");
    let reports = engine
        .ingest(None, false, &|_, _| {}, &AtomicBool::new(false))
        .expect("ingest");
    assert_eq!(reports[0].counts.indexed, 1, "{reports:?}");
}

/// Two real `cairn serve` processes on different ports over one PostgreSQL: a reindex queued
/// through one is run by whichever claims it and seen by both, both give the same cited
/// answer, and when the replica running a job is killed (SIGKILL) mid-job, the other reports
/// it interrupted and finishing it there gives the whole source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
async fn two_serve_processes_share_jobs_and_survive_a_killed_replica() {
    let url = pg_url();
    let schema = Schema::fresh(url, "serve");
    let kb = FakeKb {
        hold: Arc::new(AtomicBool::new(false)),
        asked: Arc::new(tokio::sync::Notify::new()),
    };
    let kb_addr = support::serve_loopback(
        axum::Router::new()
            .route("/articles", axum::routing::get(kb_page))
            .with_state(kb.clone()),
    )
    .await;

    let extra = format!(
        "[embedder]\nkind = \"hash\"\n\
         [index]\nbackend = \"postgres\"\n[index.postgres]\nschema = \"{schema}\"\npool_size = 4\n\
         [auth]\n[[auth.keys]]\nname = \"admin\"\nhash = \"{hash}\"\nscopes = [\"admin\", \"ask\", \"search\"]\n\
         [[sources]]\nname = \"kb\"\nkind = \"kb_api\"\nurl = \"http://{kb_addr}/articles\"\n\
         timeout_secs = 600\n",
        schema = schema.name,
        hash = cairn::http::auth::hash_key(support::ADMIN),
    );
    // `cairn serve` ingests every source before serving when the index is empty; a seeded
    // index makes the replicas start at once and leaves the ingest to the admin jobs.
    let seed_schema = schema.name.clone();
    tokio::task::spawn_blocking(move || seed_index(&seed_schema))
        .await
        .expect("seed");
    let mut replicas = vec![Replica::start(&extra).await, Replica::start(&extra).await];

    // Ingest through the first; the job is visible through both, and both answer alike.
    let id = replicas[0].reindex("samples").await;
    let job = replicas[1]
        .wait_job(&id, "succeeded", |j| j["state"] == "succeeded")
        .await;
    assert!(
        job["counts"]["indexed"].as_u64().expect("indexed") >= 6,
        "{job}"
    );
    let listed = replicas[0].get("/admin/jobs").await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str(), "{listed}");
    let mut answers = Vec::new();
    for r in &replicas {
        let (status, json) = r
            .post(
                "/ask",
                r#"{"question":"How long do refunds take?","stream":false}"#,
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{json}");
        assert_eq!(
            json["citations"][0]["doc_id"], "samples:help-center/refunds.md",
            "{json}"
        );
        answers.push((json["answer"].clone(), json["citations"].clone()));
    }
    assert_eq!(answers[0], answers[1]);
    assert!(
        answers[0]
            .0
            .as_str()
            .expect("answer")
            .contains("5 business days"),
        "{:?}",
        answers[0]
    );

    // A reindex of the knowledge base gets stuck on its second page, its first committed.
    kb.hold.store(true, Ordering::SeqCst);
    let asked = kb.asked.notified();
    let id = replicas[1].reindex("kb").await;
    tokio::time::timeout(Duration::from_secs(120), asked)
        .await
        .expect("the job reached the second page");
    let job = replicas[0]
        .wait_job(&id, "running with an owner", |j| {
            j["state"] == "running" && j["replica"].is_string()
        })
        .await;
    // A second job is refused while this one runs, through either replica.
    let (status, busy) = replicas[0].post("/admin/reindex", "{}").await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{busy}");
    assert_eq!(busy["error"]["code"], "job_running");

    // Kill the replica that runs it, without letting it clean up.
    let owner_pid: u32 = job["replica"]
        .as_str()
        .and_then(|r| r.split(':').nth(1))
        .and_then(|p| p.parse().ok())
        .expect("replica names its pid");
    let killed = replicas
        .iter()
        .position(|r| r.child.id() == owner_pid)
        .expect("the owner is one of the two replicas");
    drop(replicas.remove(killed));
    let survivor = &replicas[0];
    let job = survivor
        .wait_job(&id, "interrupted", |j| j["state"] == "interrupted")
        .await;
    assert!(
        job["error"]
            .as_str()
            .expect("reason")
            .contains("start it again"),
        "{job}"
    );
    let partial = survivor.documents("kb").await;
    let total = (KB_FIRST_PAGE + KB_SECOND_PAGE) as u64;
    assert!(partial > 0 && partial < total, "{partial} of {total}");

    // Started again on the survivor, it resumes: the committed part is unchanged.
    kb.hold.store(false, Ordering::SeqCst);
    let id = survivor.reindex("kb").await;
    let job = survivor
        .wait_job(&id, "finished", |j| {
            j["state"] != "queued" && j["state"] != "running"
        })
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let counts = &job["counts"];
    let (indexed, unchanged) = (
        counts["indexed"].as_u64().expect("indexed"),
        counts["unchanged"].as_u64().expect("unchanged"),
    );
    assert_eq!((indexed + unchanged, unchanged), (total, partial), "{job}");
    assert_eq!(survivor.documents("kb").await, total);
    let hits = survivor.get("/search?q=PX00610&k=1").await;
    assert_eq!(hits["hits"][0]["doc_id"], "kb:610", "{hits}");
}
