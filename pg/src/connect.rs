//! Connection settings, the connection pool and how PostgreSQL errors are worded for people:
//! every message names the server (never its password) and says what to do.

use std::str::FromStr;
use std::time::Duration;

use cairn_index::IndexError;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use crate::BACKEND;

pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// Runs `work` with the synchronous client on a thread of its own and waits for it: the client
/// blocks on a runtime of its own for every round trip (closing a connection too), which
/// panics on a tokio worker thread — where async callers, and the last reference to an index,
/// can be. `Err` when `work` panicked.
pub fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> std::thread::Result<T> {
    std::thread::scope(|s| s.spawn(work).join())
}
pub type Conn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// How to reach the server and lay out the index in it. `Debug` never shows the password.
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq-style URL (`postgresql://user:password@host:port/db`) or key=value string.
    pub url: String,
    /// The schema holding cairn's tables; several cairn deployments can share a database.
    pub schema: String,
    /// Connections kept by each replica.
    pub pool_size: u32,
    /// How long to wait for a connection (at start-up and from the pool).
    pub connect_timeout: Duration,
    /// HNSW build parameters, used when the index is created.
    pub hnsw_m: u32,
    pub hnsw_ef_construction: u32,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            schema: "cairn".into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            hnsw_m: 16,
            hnsw_ef_construction: 64,
        }
    }
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("hnsw_m", &self.hnsw_m)
            .field("hnsw_ef_construction", &self.hnsw_ef_construction)
            .finish()
    }
}

/// `user@host:port/db` of a connection string, without the password.
pub fn redact_url(url: &str) -> String {
    match postgres::Config::from_str(url) {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    postgres::config::Host::Tcp(s) => s.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "{}@{host}:{port}/{}",
                c.get_user().unwrap_or("?"),
                c.get_dbname().unwrap_or("?")
            )
        }
        Err(_) => "an unparsable URL".into(),
    }
}

/// An [`IndexError::Backend`] with `context` and the server's own words (message, detail,
/// hint) when it sent any.
pub fn pg_error(context: &str, e: &postgres::Error) -> IndexError {
    backend_error(format!("{context}: {}", describe(e)))
}

/// The server's own words for an error (message, detail, hint), or the client-side cause.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => error_chain(e),
    }
}

pub fn backend_error(message: String) -> IndexError {
    IndexError::Backend {
        backend: BACKEND,
        message,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}

/// Per-connection session settings: the schema first on the search path, and HNSW search
/// settings (`iterative_scan` keeps a filtered graph walk going until it has enough rows).
#[derive(Debug)]
struct Session {
    statements: String,
}

impl r2d2::CustomizeConnection<postgres::Client, postgres::Error> for Session {
    fn on_acquire(&self, conn: &mut postgres::Client) -> Result<(), postgres::Error> {
        conn.batch_execute(&self.statements)
    }
}

/// Opens the pool and one connection to prove the server answers.
pub fn pool(options: &PgOptions, ef_search: usize) -> Result<Pool, IndexError> {
    let where_ = redact_url(&options.url);
    let mut config = postgres::Config::from_str(&options.url).map_err(|e| {
        backend_error(format!(
            "the connection URL for {where_} is invalid ({e}); expected postgresql://user:password@host:port/database"
        ))
    })?;
    config.connect_timeout(options.connect_timeout);
    config.application_name("cairn");
    let manager = PostgresConnectionManager::new(config, NoTls);
    let statements = format!(
        "SET search_path TO {}, public; SET hnsw.ef_search = {}; \
         SET hnsw.iterative_scan = strict_order;",
        quote_ident(&options.schema),
        ef_search.clamp(40, 1000)
    );
    r2d2::Pool::builder()
        .max_size(options.pool_size.max(1))
        .min_idle(Some(1))
        .connection_timeout(options.connect_timeout)
        .connection_customizer(Box::new(Session { statements }))
        .build(manager)
        .map_err(|e| {
            backend_error(format!(
                "cannot reach PostgreSQL at {where_} within {:?} ({}); check that the server runs \
                 and the URL (host, port, user, password, database) is right",
                options.connect_timeout,
                error_chain(&e)
            ))
        })
}

/// A connection from the pool, or an error saying the pool could not supply one in time.
pub fn get(pool: &Pool) -> Result<Conn, IndexError> {
    pool.get().map_err(|e| {
        backend_error(format!(
            "no PostgreSQL connection available ({}); the server may be down or overloaded",
            error_chain(&e)
        ))
    })
}

/// Takes the session-level advisory lock named `key` when it is free (`Ok(false)` when another
/// session holds it); `context` says what for, in errors. Held until unlocked or the session
/// ends, so it outlives any transaction it is taken in.
pub fn try_advisory_lock(
    client: &mut impl postgres::GenericClient,
    key: &str,
    context: &str,
) -> Result<bool, IndexError> {
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&key],
        )
        .map_err(|e| pg_error(context, &e))?
        .get(0))
}

/// Releases an advisory lock taken by [`try_advisory_lock`]; a failure is only logged (the
/// lock ends with the session anyway).
pub fn advisory_unlock(client: &mut impl postgres::GenericClient, key: &str) {
    let unlocked = client.query_one(
        "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
        &[&key],
    );
    if let Err(e) = unlocked {
        tracing::warn!(lock = key, error = %describe(&e), "could not release an advisory lock");
    }
}

/// Checks that a schema name is a plain identifier (letters, digits, underscore; not starting
/// with a digit), so it can be spliced into DDL safely.
pub fn check_schema_name(name: &str) -> Result<(), IndexError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(backend_error(format!(
            "schema name {name:?} is not allowed: use lowercase letters, digits and `_`, \
             starting with a letter"
        )))
    }
}

/// A double-quoted identifier (the name is checked by [`check_schema_name`] first).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_url_has_no_password() {
        let r = redact_url("postgresql://cairn:s3cret@db.example:6543/corpus");
        assert_eq!(r, "cairn@db.example:6543/corpus");
        assert!(!redact_url("postgresql://u:pw@h/d").contains("pw"));
        let o = PgOptions::new("postgresql://u:pw@h/d");
        assert!(!format!("{o:?}").contains("pw"));
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(check_schema_name("cairn_prod2").is_ok());
        for bad in ["", "2x", "Cairn", "a-b", "a\"; drop", "a b"] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }
}
