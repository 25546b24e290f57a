//! The backend conformance suite (`cairn_index::conformance`) against the embedded index, once
//! on the exact-scan path (tiny corpus, high graph threshold) and once on the graph path.

use cairn_index::conformance::{Opener, embedder};
use cairn_index::{Index, IndexBackend, IndexOptions};

fn opener(exact_below: usize) -> Option<Opener> {
    let dir = tempfile::tempdir().expect("tempdir");
    Some(Box::new(move || {
        let mut options = IndexOptions::new(embedder());
        options.vectors.exact_below = exact_below;
        let index = Index::open(dir.path(), options).expect("open index");
        Box::new(index) as Box<dyn IndexBackend>
    }))
}

mod exact_path {
    cairn_index::conformance_tests!(super::opener(1_000));
}

mod graph_path {
    cairn_index::conformance_tests!(super::opener(1));
}
