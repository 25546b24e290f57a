//! The backend conformance suite (`cairn_index::conformance`) against PostgreSQL.

mod common;

cairn_index::conformance_tests!(
    common::opener(),
    ignore =
        "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"
);
