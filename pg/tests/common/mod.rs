//! A PostgreSQL for tests: `CAIRN_PG_URL` (see `scripts/start-postgres.sh`), one fresh schema
//! per test, dropped afterwards. The tests that need it are `#[ignore]`d with the reason, so a
//! plain `cargo test` shows them as ignored, never as passed; `--include-ignored` (what
//! `scripts/test.sh` runs) makes them run, and fail without the variable.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_index::conformance::{Opener, embedder};
use cairn_index::{IndexBackend, IndexOptions};
use cairn_pg::{PgIndex, PgOptions};

/// The server URL. These tests are `#[ignore]`d (a plain `cargo test` lists them as ignored
/// with the reason); run with `--include-ignored`, they fail when no server is configured.
pub fn pg_url() -> String {
    match std::env::var("CAIRN_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "CAIRN_PG_URL is not set: run `eval \"$(scripts/start-postgres.sh)\"` first \
             (scripts/test.sh does it)"
        ),
    }
}

/// Drops its schema when dropped.
pub struct Schema {
    pub url: String,
    pub name: String,
}

impl Schema {
    pub fn fresh(url: &str) -> Schema {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let s = Schema {
            url: url.to_string(),
            name,
        };
        s.drop_schema();
        s
    }

    pub fn options(&self) -> PgOptions {
        let mut o = PgOptions::new(self.url.clone());
        o.schema = self.name.clone();
        o.pool_size = 2;
        o
    }

    fn drop_schema(&self) {
        let mut c = postgres::Client::connect(&self.url, postgres::NoTls).expect("connect");
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .expect("drop schema");
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.drop_schema();
        }
    }
}

/// An opener over a fresh schema, for the conformance suite.
pub fn opener() -> Option<Opener> {
    let schema = Schema::fresh(&pg_url());
    Some(Box::new(move || {
        let index = PgIndex::open(&schema.options(), &IndexOptions::new(embedder()))
            .expect("open postgres index");
        Box::new(index) as Box<dyn IndexBackend>
    }))
}
