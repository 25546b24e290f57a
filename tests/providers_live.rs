//! Live vendor smoke tests: only with `--features live-providers`, and then each vendor's test
//! fails without its key variable (filter to the vendors you hold keys for, e.g.
//! `cargo test --features live-providers --test providers_live openai`). They send one tiny
//! request each.
//!
//! `OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `GEMINI_API_KEY`, `MISTRAL_API_KEY`; models can be
//! overridden with `CAIRN_LIVE_<VENDOR>_MODEL`.
#![cfg(feature = "live-providers")]

use std::collections::BTreeMap;

use cairn::providers::config::{BudgetConfig, ProviderConfig, ProviderKind};
use cairn::providers::{ChatRequest, Message, Role, Router};
use tokio_util::sync::CancellationToken;

async fn live(kind: ProviderKind, var: &str, vendor: &str, default_model: &str) {
    let key = std::env::var(var).unwrap_or_else(|_| {
        panic!("live {vendor}: set {var}, or filter the run to the vendors you hold keys for")
    });
    let model = std::env::var(format!("CAIRN_LIVE_{}_MODEL", vendor.to_uppercase()))
        .unwrap_or_else(|_| default_model.to_string());
    let mut p = ProviderConfig::new(vendor, kind, None);
    p.api_key = Some(key);
    p.key_var = Some(var.into());
    let providers = BTreeMap::from([(vendor.to_string(), p)]);
    let routes = BTreeMap::from([("answer".to_string(), vec![(vendor.to_string(), model)])]);
    let r = Router::from_config_with_budget(&providers, &routes, &BudgetConfig::default())
        .expect("router");
    let req = ChatRequest {
        messages: vec![Message {
            role: Role::User,
            content: "Reply with the single word: pong".into(),
        }],
        max_tokens: Some(16),
        ..ChatRequest::default()
    };
    let (resp, info) = r
        .complete("answer", &req, CancellationToken::new())
        .await
        .expect("live call");
    assert!(!resp.text.is_empty());
    assert!(info.usage().output_tokens > 0, "usage reported");
}

#[tokio::test]
async fn openai_live() {
    live(
        ProviderKind::Openai,
        "OPENAI_API_KEY",
        "openai",
        "gpt-4o-mini",
    )
    .await;
}

#[tokio::test]
async fn anthropic_live() {
    live(
        ProviderKind::Anthropic,
        "ANTHROPIC_API_KEY",
        "anthropic",
        "claude-3-5-haiku-latest",
    )
    .await;
}

#[tokio::test]
async fn gemini_live() {
    live(
        ProviderKind::Gemini,
        "GEMINI_API_KEY",
        "gemini",
        "gemini-2.0-flash",
    )
    .await;
}

#[tokio::test]
async fn mistral_live() {
    live(
        ProviderKind::Mistral,
        "MISTRAL_API_KEY",
        "mistral",
        "mistral-small-latest",
    )
    .await;
}
