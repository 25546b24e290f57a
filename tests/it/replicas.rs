//! Two cairn engines ("replicas") over one PostgreSQL index: what one ingests the other serves
//! and answers from, the other's ingest finds nothing to redo (shared source state and content
//! hashes), and a source claimed by one is skipped by the other. Needs `CAIRN_PG_URL` (see
//! `scripts/start-postgres.sh`); without it the test prints a loud SKIPPED block and passes,
//! unless `CAIRN_REQUIRE_PG=1`.
//!
//! The engines are built outside the async runtime: the PostgreSQL client is synchronous, and
//! the server runs it on blocking threads, as it does every index call.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::{self, TestApp};

fn pg_url() -> Option<String> {
    match std::env::var("CAIRN_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CAIRN_REQUIRE_PG").as_deref() != Ok("1"),
                "CAIRN_REQUIRE_PG=1 but CAIRN_PG_URL is not set: run scripts/start-postgres.sh"
            );
            eprintln!(
                "\n======== SKIPPED: PostgreSQL end-to-end test ========\n\
                 CAIRN_PG_URL is not set; run `eval \"$(scripts/start-postgres.sh)\"` first.\n\
                 =====================================================\n"
            );
            None
        }
    }
}

/// Drops the test's schema when the test ends.
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = ::postgres::Client::connect(&self.url, ::postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

#[test]
fn two_replicas_share_one_postgres_index() {
    let Some(url) = pg_url() else { return };
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let schema = Schema {
        url,
        name: format!(
            "e2e_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
    };
    let config = format!(
        "[index]\nbackend = \"postgres\"\n[index.postgres]\nschema = \"{}\"\npool_size = 2\n",
        schema.name
    );
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
