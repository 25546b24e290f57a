//! The cross-encoder's loading and scoring path, on a tiny random BERT this test writes to disk.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use cairn_ingest::rerank::{CrossEncoderReranker, LexicalReranker, Reranker};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config, HiddenAct};
use tokenizers::Tokenizer;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;

const WORDS: [&str; 16] = [
    "refund", "policy", "damaged", "goods", "shipping", "takes", "three", "days", "how", "do", "i",
    "get", "my", "money", "back", "##s",
];

fn tiny_tokenizer() -> Tokenizer {
    // A WordPiece vocabulary file: one token per line, the id is the line number.
    let tmp = tempfile::tempdir().expect("tmp");
    let vocab = tmp.path().join("vocab.txt");
    let lines: Vec<&str> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        .into_iter()
        .chain(WORDS)
        .collect();
    fs::write(&vocab, lines.join("\n") + "\n").expect("vocab");
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .expect("wordpiece");
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .expect("template")
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .expect("template")
        .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
        .build()
        .expect("template");
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::default()))
        .expect("normalizer");
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(post));
    tokenizer
}

fn tiny_config() -> Config {
    Config {
        vocab_size: 4 + WORDS.len(),
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        hidden_act: HiddenAct::Gelu,
        max_position_embeddings: 64,
        type_vocab_size: 2,
        model_type: Some("bert".into()),
        ..Config::default()
    }
}

fn config_json(cfg: &Config, labels: usize) -> String {
    serde_json::json!({
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "id2label": (0..labels).map(|i| (i.to_string(), format!("LABEL_{i}"))).collect::<HashMap<_, _>>(),
    })
    .to_string()
}

/// Creates random weights with Hugging Face's names and writes the three files to `dir`.
fn write_tiny_model(dir: &Path, labels: usize) -> VarMap {
    let cfg = tiny_config();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    BertModel::load(vb.pp("bert"), &cfg).expect("init bert");
    candle_nn::linear(cfg.hidden_size, cfg.hidden_size, vb.pp("bert.pooler.dense"))
        .expect("pooler");
    candle_nn::linear(cfg.hidden_size, labels, vb.pp("classifier")).expect("classifier");
    fs::create_dir_all(dir).expect("mkdir");
    varmap
        .save(dir.join("model.safetensors"))
        .expect("save weights");
    fs::write(dir.join("config.json"), config_json(&cfg, labels)).expect("config");
    tiny_tokenizer()
        .save(dir.join("tokenizer.json"), false)
        .expect("save tokenizer");
    varmap
}

const QUERY: &str = "how do I get my money back";
const PASSAGES: [&str; 4] = [
    "refund policy for damaged goods",
    "shipping takes three days",
    "refunds",
    "money back money back money back",
];

#[test]
fn cross_encoder_loads_from_disk_and_scores_like_the_in_memory_model() {
    for labels in [1, 2] {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("tiny-cross-encoder");
        let varmap = write_tiny_model(&dir, labels);

        let loaded = CrossEncoderReranker::load(&dir).expect("load");
        assert_eq!(loaded.name(), "tiny-cross-encoder");
        let scores = loaded.rerank(QUERY, &PASSAGES).expect("rerank");
        assert_eq!(scores.len(), PASSAGES.len());
        assert!(scores.iter().all(|s| s.is_finite()), "{scores:?}");
        if labels == 2 {
            assert!(
                scores.iter().all(|s| *s <= 0.0),
                "log-probabilities: {scores:?}"
            );
        }
        // Deterministic, independent of batch composition.
        let one = loaded.rerank(QUERY, &PASSAGES[1..2]).expect("rerank");
        assert!((one[0] - scores[1]).abs() < 1e-5, "{one:?} vs {scores:?}");
        // Different passages get different scores (random weights are not constant).
        assert!(
            scores.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-6),
            "{scores:?}"
        );

        let in_memory = CrossEncoderReranker::from_parts(
            "mem",
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            &tiny_config(),
            labels,
            tiny_tokenizer(),
        )
        .expect("from parts");
        let expected = in_memory.rerank(QUERY, &PASSAGES).expect("rerank");
        for (a, b) in scores.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "disk {scores:?} memory {expected:?}");
        }
    }
}

#[test]
fn missing_files_are_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let err = CrossEncoderReranker::load(tmp.path())
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    assert!(
        err.contains("needs config.json, model.safetensors and tokenizer.json"),
        "{err}"
    );
}

#[test]
fn lexical_reranker_needs_no_weights() {
    let s = LexicalReranker
        .rerank("money back", &["get your money back", "shipping"])
        .expect("rerank");
    assert_eq!(s, vec![1.0, 0.0]);
}
