//! The schema and its versioned migrations, applied at start-up under an advisory lock (so
//! replicas starting together apply each migration once), plus the pgvector check and the
//! embedder manifest.

use cairn_index::{EmbedderInfo, IndexError};

use crate::PgOptions;
use crate::connect::{backend_error, describe, pg_error, quote_ident, redact_url};

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = 7;

/// Migration `version`'s SQL. Names are unqualified: the migration runs with the schema first
/// on the search path. `{dim}`, `{m}` and `{ef}` are the embedder dimension and HNSW settings.
fn migration(version: i32) -> Option<&'static str> {
    match version {
        1 => Some(
            "CREATE TABLE manifest (
                 singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                 embedder_name text NOT NULL,
                 embedder_version text NOT NULL,
                 dimension integer NOT NULL,
                 generation bigint NOT NULL DEFAULT 0
             );
             CREATE TABLE documents (
                 id text PRIMARY KEY,
                 source text NOT NULL,
                 external_id text NOT NULL,
                 title text NOT NULL,
                 url text,
                 updated_at timestamptz,
                 metadata jsonb NOT NULL,
                 access_groups text[] NOT NULL,
                 content_hash text NOT NULL
             );
             CREATE INDEX documents_source ON documents (source);
             -- Filter columns are copied from the document so both retrievers filter on the
             -- chunk row itself, inside the index scan, without a join.
             CREATE TABLE chunks (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 doc_id text NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
                 ordinal integer NOT NULL,
                 text text NOT NULL,
                 heading_path text[] NOT NULL,
                 page integer,
                 char_start bigint NOT NULL,
                 char_end bigint NOT NULL,
                 source text NOT NULL,
                 metadata jsonb NOT NULL,
                 access_groups text[] NOT NULL,
                 updated_at timestamptz,
                 tsv tsvector NOT NULL,
                 embedding vector({dim}) NOT NULL
             );
             CREATE INDEX chunks_doc ON chunks (doc_id);
             CREATE INDEX chunks_source ON chunks (source);
             CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
             CREATE INDEX chunks_embedding ON chunks
                 USING hnsw (embedding vector_ip_ops) WITH (m = {m}, ef_construction = {ef});",
        ),
        // Sync state (watermarks) and last reports shared by replicas.
        2 => Some(
            "CREATE TABLE source_state (
                 name text PRIMARY KEY,
                 state jsonb NOT NULL,
                 report jsonb,
                 updated_at timestamptz NOT NULL DEFAULT now()
             );",
        ),
        // Admin reindex jobs shared by replicas. `job` is the job as the admin API shows it
        // (progress, counts, per-source reports), stored whole so fields pass through; the
        // columns are what claiming and listing query. At most one job is queued or running.
        3 => Some(
            "CREATE TABLE jobs (
                 id text PRIMARY KEY,
                 source text,
                 state text NOT NULL,
                 owner text,
                 heartbeat timestamptz,
                 created_at timestamptz NOT NULL DEFAULT now(),
                 updated_at timestamptz NOT NULL DEFAULT now(),
                 job jsonb NOT NULL
             );
             CREATE INDEX jobs_created ON jobs (created_at DESC);
             CREATE UNIQUE INDEX jobs_one_active ON jobs ((true))
                 WHERE state IN ('queued', 'running');",
        ),
        // BM25 word ranking (replacing `ts_rank_cd`, which has no inverse document frequency):
        // one posting per (lexeme, chunk) with its term frequency, each chunk's length in
        // lexeme occurrences, and the corpus size and total length in the manifest, which
        // every commit recomputes under its manifest lock. Existing chunks are backfilled
        // from their `tsv`; the GIN index served only the old ranking. Both new indexes cover
        // what the word side reads, so it runs on index-only scans once vacuumed.
        4 => Some(
            "ALTER TABLE chunks ADD COLUMN length integer NOT NULL DEFAULT 0;
             UPDATE chunks SET length = (SELECT coalesce(sum(coalesce(
                 array_length(u.positions, 1), 1)), 0) FROM unnest(tsv) u);
             CREATE TABLE terms (
                 lexeme text NOT NULL,
                 chunk_id bigint NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
                 tf integer NOT NULL,
                 PRIMARY KEY (lexeme, chunk_id) INCLUDE (tf)
             );
             INSERT INTO terms (lexeme, chunk_id, tf)
                 SELECT u.lexeme, c.id, coalesce(array_length(u.positions, 1), 1)
                 FROM chunks c, unnest(c.tsv) u;
             CREATE INDEX terms_chunk ON terms (chunk_id);
             -- What scoring and the usual filters read of a chunk, so the word side reads
             -- postings and this index only (index-only scans), not the wide chunk rows.
             CREATE INDEX chunks_bm25 ON chunks (id) INCLUDE (length, access_groups, source);
             DROP INDEX chunks_tsv;
             ALTER TABLE manifest ADD COLUMN chunk_count bigint NOT NULL DEFAULT 0,
                                  ADD COLUMN total_length bigint NOT NULL DEFAULT 0;
             UPDATE manifest SET chunk_count = (SELECT count(*) FROM chunks),
                                 total_length = (SELECT coalesce(sum(length), 0) FROM chunks);",
        ),
        // Model spend shared by replicas, so the `[budget]` daily caps hold across them and
        // across restarts: US dollars per UTC day (days since the Unix epoch) and bucket
        // (`total`, or a caller's key), only ever incremented.
        5 => Some(
            "CREATE TABLE spend (
                 day bigint NOT NULL,
                 bucket text NOT NULL,
                 usd double precision NOT NULL,
                 PRIMARY KEY (day, bucket)
             );",
        ),
        // Conversation threads shared by replicas, so any replica continues any thread: the
        // record (turns, owner, times) as cairn writes it, and its last activity, which the
        // purge of expired threads reads through its index.
        6 => Some(
            "CREATE TABLE threads (
                 id text PRIMARY KEY,
                 owner text NOT NULL,
                 active_at timestamptz NOT NULL,
                 record jsonb NOT NULL
             );
             CREATE INDEX threads_active ON threads (active_at);",
        ),
        // Batches shared by replicas, so any replica shows, cancels and runs any batch. A
        // batch's `record` is the batch as cairn writes it (counts, cost, owner, groups); the
        // columns are what listing and claiming query. A request's `result` is set once;
        // `claimed_at` is its lease: a claim older than the lease may be taken again.
        7 => Some(
            "CREATE TABLE batches (
                 id text PRIMARY KEY,
                 owner text NOT NULL,
                 state text NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now(),
                 record jsonb NOT NULL
             );
             CREATE INDEX batches_owner ON batches (owner, state);
             CREATE TABLE batch_requests (
                 batch_id text NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
                 n integer NOT NULL,
                 item jsonb NOT NULL,
                 claimed_at timestamptz,
                 result jsonb,
                 PRIMARY KEY (batch_id, n)
             );
             CREATE INDEX batch_requests_open ON batch_requests (batch_id, n)
                 WHERE result IS NULL;",
        ),
        _ => None,
    }
}

/// Makes sure pgvector is usable, creates or upgrades the schema, and checks (or records) the
/// embedder. Safe to run from many replicas at once.
pub fn prepare(
    client: &mut postgres::Client,
    options: &PgOptions,
    embedder: &EmbedderInfo,
) -> Result<(), IndexError> {
    ensure_vector_extension(client, options)?;
    let schema = quote_ident(&options.schema);
    let mut tx = client
        .transaction()
        .map_err(|e| pg_error("starting the migration", &e))?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock(hashtext('cairn-migrate:{name}'));
         CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema}, public;
         CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
        name = options.schema
    ))
    .map_err(|e| pg_error(&format!("creating schema {schema}"), &e))?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .and_then(|r| r.try_get(0))
        .map_err(|e| pg_error("reading schema_version", &e))?;
    if current > SCHEMA_VERSION {
        return Err(backend_error(format!(
            "schema {schema} is at version {current} but this cairn knows versions up to \
             {SCHEMA_VERSION}: upgrade cairn on this replica"
        )));
    }
    for version in current + 1..=SCHEMA_VERSION {
        let Some(sql) = migration(version) else {
            continue;
        };
        let sql = sql
            .replace("{dim}", &embedder.dimension.to_string())
            .replace("{m}", &options.hnsw_m.to_string())
            .replace("{ef}", &options.hnsw_ef_construction.to_string());
        tx.batch_execute(&sql)
            .map_err(|e| pg_error(&format!("applying migration {version} to {schema}"), &e))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .map_err(|e| pg_error("recording the migration", &e))?;
        tracing::info!(schema = %options.schema, version, "applied index schema migration");
    }
    let dimension = i32::try_from(embedder.dimension)
        .map_err(|_| backend_error(format!("dimension {} is too large", embedder.dimension)))?;
    let row = tx
        .query_opt(
            "SELECT embedder_name, embedder_version, dimension FROM manifest",
            &[],
        )
        .map_err(|e| pg_error("reading the manifest", &e))?;
    match row {
        None => {
            tx.execute(
                "INSERT INTO manifest (embedder_name, embedder_version, dimension)
                 VALUES ($1, $2, $3)",
                &[&embedder.name, &embedder.version, &dimension],
            )
            .map_err(|e| pg_error("writing the manifest", &e))?;
        }
        Some(r) => {
            let found = EmbedderInfo {
                name: r.get(0),
                version: r.get(1),
                dimension: usize::try_from(r.get::<_, i32>(2)).unwrap_or(0),
            };
            if &found != embedder {
                return Err(IndexError::EmbedderMismatch {
                    path: format!("postgres {} schema {}", redact_url(&options.url), schema).into(),
                    found: found.to_string(),
                    expected: embedder.to_string(),
                });
            }
        }
    }
    tx.commit()
        .map_err(|e| pg_error("committing the migration", &e))?;
    Ok(())
}

/// The `vector` extension must exist in the database; create it when the server has it and
/// the user may, otherwise say exactly what is missing.
fn ensure_vector_extension(
    client: &mut postgres::Client,
    options: &PgOptions,
) -> Result<(), IndexError> {
    let where_ = redact_url(&options.url);
    let created = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .map_err(|e| pg_error("checking for the vector extension", &e))?;
    if created.is_some() {
        return Ok(());
    }
    let available = client
        .query_opt(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'",
            &[],
        )
        .map_err(|e| pg_error("checking for the vector extension", &e))?;
    if available.is_none() {
        return Err(backend_error(format!(
            "the PostgreSQL server at {where_} does not have the pgvector extension installed; \
             install pgvector 0.8 or newer on the server (or use a managed PostgreSQL that \
             offers it), then run `CREATE EXTENSION vector;` in the database"
        )));
    }
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
        .map_err(|e| {
            let reason = describe(&e);
            backend_error(format!(
                "the vector extension is not enabled in {where_} and this user cannot enable it \
                 ({reason}); run `CREATE EXTENSION vector;` in that database as a superuser or \
                 the database owner"
            ))
        })
}
