//! `cairn ask`: the answer streams to the terminal, then its numbered sources.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::mpsc;

use cairn_index::Filter;

use crate::answer::answer;
use crate::answer::events::{AnswerEvent, AskRequest};
use crate::engine::Engine;
use crate::http::ask::AskResponse;

pub(super) async fn run(
    engine: Arc<Engine>,
    question: String,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let req = AskRequest {
        question,
        filter: Filter::default(),
        top_k: engine.config.retrieval.top_k,
        conversation: Vec::new(),
        // The local operator: only the global daily cap applies.
        budget_key: None,
        thread_id: None,
        agent: None,
    };
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(answer(engine.clone(), req, "cli".to_string(), tx));
    let mut resp = AskResponse::default();
    while let Some(ev) = rx.recv().await {
        if !json {
            match &ev {
                AnswerEvent::Token(t) => {
                    use std::io::Write;
                    print!("{t}");
                    let _ = std::io::stdout().flush();
                }
                AnswerEvent::Error { message, .. } => eprintln!("\n{message}"),
                _ => {}
            }
        }
        resp.apply(ev);
    }
    // The channel closes after the trace was recorded.
    super::serve::flush_traces(engine).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        println!();
        if !resp.citations.is_empty() {
            println!("\nSources:");
            for c in &resp.citations {
                println!(
                    "  [{}] {} — {}",
                    c.n,
                    c.title,
                    c.url.as_deref().unwrap_or(&c.doc_id)
                );
            }
        }
    }
    Ok(if resp.error.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
