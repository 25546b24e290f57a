//! all-MiniLM-L6-v2 end to end: acquisition through `ensure_model`, golden vectors, semantics.
//!
//! The model comes from the user model cache (`models::default_cache_dir`, the same one `cairn`
//! uses), fetched there if needed. When it cannot be obtained these tests FAIL, unless
//! `CAIRN_SKIP_MODEL_TESTS=1` is set, in which case they print a loud skip line and pass.

use std::path::PathBuf;
use std::sync::OnceLock;

use cairn_ingest::Embedder;
use cairn_ingest::embed::MiniLmEmbedder;
use cairn_ingest::models::{self, Progress};

fn cache_dir() -> PathBuf {
    models::default_cache_dir()
}

/// `CAIRN_SKIP_MODEL_TESTS=1` lets a laptop without the model skip these tests loudly; under CI
/// (`CI` set) it is refused, so CI can never count a skipped model test as passed.
fn skip_allowed() -> bool {
    let asked = std::env::var("CAIRN_SKIP_MODEL_TESTS").is_ok_and(|v| v == "1");
    assert!(
        !(asked && std::env::var_os("CI").is_some()),
        "CAIRN_SKIP_MODEL_TESTS=1 is not honoured under CI: the model tests must run"
    );
    asked
}

/// The shared embedder, or `None` when the model is unobtainable and skipping is allowed.
fn embedder() -> Option<&'static MiniLmEmbedder> {
    static EMBEDDER: OnceLock<Result<MiniLmEmbedder, String>> = OnceLock::new();
    let loaded = EMBEDDER.get_or_init(|| {
        let spec = models::minilm_l6_v2();
        let mut log = |p: &Progress| {
            if !matches!(p, Progress::Downloading { .. }) {
                eprintln!("model: {p:?}");
            }
        };
        let files =
            models::ensure_model(&spec, &cache_dir(), &mut log).map_err(|e| e.to_string())?;
        MiniLmEmbedder::load(&files).map_err(|e| e.to_string())
    });
    match loaded {
        Ok(e) => Some(e),
        Err(e) if skip_allowed() => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: all-MiniLM-L6-v2 unavailable and CAIRN_SKIP_MODEL_TESTS=1 !!!!!!!!\n{e}\n"
            );
            None
        }
        Err(e) => {
            panic!("all-MiniLM-L6-v2 unavailable (set CAIRN_SKIP_MODEL_TESTS=1 to skip): {e}")
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

const SENTENCES: [&str; 3] = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Quarterly revenue grew by twelve percent.",
];

#[test]
fn golden_vectors() {
    let Some(e) = embedder() else { return };
    let info = e.info();
    assert_eq!(info.name, "all-MiniLM-L6-v2");
    assert_eq!(info.version, "53aa51172d14");
    assert_eq!(info.dimension, 384);
    let v = e.embed_passages(&SENTENCES).expect("embed");
    for (i, row) in v.iter().enumerate() {
        eprintln!("golden[{i}] = {:?}", &row[..8]);
    }
    eprintln!(
        "cos01 = {} cos02 = {} cos12 = {}",
        cosine(&v[0], &v[1]),
        cosine(&v[0], &v[2]),
        cosine(&v[1], &v[2])
    );
    for row in &v {
        assert_eq!(row.len(), 384);
        let norm = cosine(row, row).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    let golden: [[f32; 8]; 3] = GOLDEN;
    for (row, want) in v.iter().zip(golden) {
        for (got, want) in row.iter().zip(want) {
            assert!(
                (got - want).abs() < 1e-4,
                "got {:?} want {want:?}",
                &row[..8]
            );
        }
    }
    let cos = [
        cosine(&v[0], &v[1]),
        cosine(&v[0], &v[2]),
        cosine(&v[1], &v[2]),
    ];
    for (got, want) in cos.iter().zip(GOLDEN_COS) {
        assert!(
            (got - want).abs() < 1e-4,
            "cosines {cos:?} want {GOLDEN_COS:?}"
        );
    }
}

// Recorded once (first 8 dimensions of each sentence, then cosines 0-1, 0-2, 1-2) from a float64
// numpy re-implementation of the same forward pass, independent of candle; candle agrees to <1e-5.
const GOLDEN: [[f32; 8]; 3] = [
    [
        0.134177, -0.0329, -0.024804, 0.041439, -0.036348, 0.041814, 0.031217, 0.037202,
    ],
    [
        0.075357, 0.01511, 0.012094, 0.06079, -0.004022, 0.056365, -0.027142, -0.002098,
    ],
    [
        0.089042, 0.002117, -0.052243, -0.066734, -0.014047, -0.014082, -0.026275, 0.009938,
    ],
];
const GOLDEN_COS: [f32; 3] = [0.641133, -0.016183, -0.015013];

#[test]
fn batching_matches_one_at_a_time() {
    let Some(e) = embedder() else { return };
    let texts = [
        "short",
        "a somewhat longer passage about refunds, returns and the shipping of damaged goods",
        "medium length text about tea",
    ];
    let batched = e.embed_passages(&texts).expect("embed");
    for (t, b) in texts.iter().zip(&batched) {
        let single = e.embed_query(t).expect("embed");
        let diff = single
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "{t}: max diff {diff}");
    }
}

#[test]
fn similar_sentences_score_higher_than_unrelated() {
    let Some(e) = embedder() else { return };
    let q = e
        .embed_query("How do I get my money back for a broken item?")
        .expect("embed");
    let related = e
        .embed_query("Refunds are issued for products that arrive damaged.")
        .expect("embed");
    let unrelated = e
        .embed_query("The mountain trail is closed during winter storms.")
        .expect("embed");
    let (r, u) = (cosine(&q, &related), cosine(&q, &unrelated));
    assert!(r > u + 0.1, "related {r} unrelated {u}");
}

#[test]
fn long_input_is_truncated_and_tokens_are_counted_exactly() {
    let Some(e) = embedder() else { return };
    let long = "word ".repeat(1000);
    assert_eq!(e.count_tokens(&long), 1000);
    assert_eq!(e.count_tokens("hello world"), 2);
    let v = e.embed_passages(&[long.as_str(), ""]).expect("embed");
    assert_eq!(v.len(), 2);
    assert!(
        v.iter()
            .all(|row| row.len() == 384 && row.iter().all(|x| x.is_finite()))
    );
}
