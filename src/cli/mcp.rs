//! `cairn mcp`: the MCP tools over stdin/stdout, with the scopes and access groups of a
//! configured key (stdout carries only protocol messages; logs go to stderr).

use std::process::ExitCode;
use std::sync::Arc;

use crate::engine::Engine;
use crate::http::auth::Caller;
use crate::http::state::AppState;

pub(super) async fn run(engine: Arc<Engine>, key_name: Option<&str>) -> anyhow::Result<ExitCode> {
    let caller = caller_named(&engine, key_name)?;
    tracing::info!(caller = %caller.name, "mcp: serving on stdio");
    let state = AppState::new(engine.clone())?;
    crate::http::mcp::serve_stdio(state, caller).await?;
    super::serve::flush_traces(engine).await;
    Ok(ExitCode::SUCCESS)
}

/// The caller a stdio session runs as: the key named `key_name`, or the anonymous caller.
fn caller_named(engine: &Engine, key_name: Option<&str>) -> anyhow::Result<Caller> {
    let auth = &engine.config.auth;
    let Some(name) = key_name else {
        return Ok(Caller {
            name: "anonymous".into(),
            scopes: auth
                .anonymous_scopes
                .iter()
                .copied()
                .filter(|s| *s != crate::http::auth::Scope::Admin)
                .collect(),
            groups: Vec::new(),
            anonymous: true,
        });
    };
    let key = auth.keys.iter().find(|k| k.name == name).ok_or_else(|| {
        let names: Vec<&str> = auth.keys.iter().map(|k| k.name.as_str()).collect();
        anyhow::anyhow!(
            "--key-name `{name}`: no `[[auth.keys]]` entry has that name (configured: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    })?;
    Ok(Caller {
        name: key.name.clone(),
        scopes: key.scopes.clone(),
        groups: key.access_groups.clone(),
        anonymous: false,
    })
}
