//! The backend conformance suite (`cairn_index::conformance`) against PostgreSQL.

mod common;

cairn_index::conformance_tests!(common::opener());
